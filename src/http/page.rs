//! The newsroom's live page: `GET /` lists the stories, `GET /stories/{id}` follows one live.
//!
//! The server renders the page's frame, the story's headline and status, and its schema.org
//! `LiveBlogPosting` JSON-LD (so crawlers read it without JavaScript); the page's script
//! (`page.js`, embedded in the binary with `page.css`) renders the facts, sources, notes and the
//! feed of updates from `/v1/stories/{id}` and keeps them live with an EventSource on
//! `/v1/events`, showing when it is live, reconnecting, or the story has ended.

use axum::{
    extract::{Path, State},
    http::{HeaderMap, header},
    response::{Html, IntoResponse, Response},
};
use chrono::{DateTime, SecondsFormat, Utc};
use pbjson_types::Timestamp;
use serde_json::{Value, json};
use tonic::Status;

use super::{App, error, escape};
use crate::{
    narration::Narrator,
    pb::{self, server::story_service_server::StoryService},
};

/// The page's stylesheet.
const CSS: &str = include_str!("page.css");

/// The page's script.
const SCRIPT: &str = include_str!("page.js");

/// How many of a story's newest updates the page shows when it opens (its feed, from the
/// story's retained events, then live) and the JSON-LD lists.
const FEED_UPDATES: usize = 100;

/// `GET /`: every story, newest page first.
pub(super) async fn index(State(app): State<App>, headers: HeaderMap) -> Response {
    let answer = async {
        let caller = app.authorize(&headers, "ListStories")?;
        let request = pb::ListStoriesRequest {
            page_size: 500,
            ..Default::default()
        };
        app.service
            .list_stories(app.request(request, caller))
            .await
            .map(tonic::Response::into_inner)
    };
    let page = match answer.await {
        Ok(page) => page,
        Err(status) => return error_page(&status, &headers),
    };
    let mut items = String::new();
    for story in &page.stories {
        items.push_str(&format!(
            r#"<li><a class="story-link" href="/stories/{id}"><span class="status status-{status}">{status_word}</span> {headline}</a><span class="updated">{updated}</span></li>"#,
            id = escape::html(&story.id),
            status = status_class(story.status),
            status_word = status_word(story.status),
            headline = escape::html(&story.headline),
            updated = escape::html(&time(story.updated_at.as_ref())),
        ));
    }
    if items.is_empty() {
        items.push_str(r#"<li class="empty">No stories yet.</li>"#);
    }
    let body = format!(
        r#"<header class="masthead"><a href="/">storywire</a><span>Live stories</span></header>
<main class="index"><h1>Stories</h1><ul class="stories">{items}</ul></main>"#
    );
    Html(document("storywire: live stories", &body, "")).into_response()
}

/// `GET /stories/{id}`: one story, live.
pub(super) async fn story(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let answer = async {
        let caller = app.authorize(&headers, "GetStory")?;
        let story = app
            .service
            .get_story(app.request(
                pb::GetStoryRequest {
                    story_id: id.clone(),
                    as_of_version: None,
                },
                caller,
            ))
            .await?
            .into_inner()
            .story
            .unwrap_or_default();
        let (events, from) = app.service.story_tail(&id, FEED_UPDATES);
        Ok::<_, Status>((story, events, from))
    };
    let (story, events, from) = match answer.await {
        Ok(found) => found,
        Err(status) => return error_page(&status, &headers),
    };
    let jsonld = escape::script_json(&live_blog_posting(&story, &events));
    let body = format!(
        r#"<header class="masthead"><a href="/">storywire</a><span id="live-state" data-state="connecting" role="status">Connecting…</span></header>
<main class="story" data-story-id="{id}" data-from-sequence="{from}"{lang}>
  <p class="kicker"><span id="story-status" class="status status-{status}">{status_word}</span> <span id="tags"></span></p>
  <p id="status-reason" class="status-reason">{status_reason}</p>
  <h1 id="headline">{headline}</h1>
  <p id="summary" class="summary">{summary}</p>
  <p class="meta">Updated <time id="updated">{updated}</time></p>
  <div class="columns">
    <section class="facts-section"><h2>What we know</h2><ul id="facts"></ul>
      <h2>Context</h2><ul id="context"></ul></section>
    <section class="feed-section"><h2>Latest updates</h2><ol id="updates" reversed></ol></section>
  </div>
</main>
<noscript><p class="noscript">This page updates live with JavaScript; the story's state is at <a href="/v1/stories/{id}">/v1/stories/{id}</a>.</p></noscript>"#,
        id = escape::html(&story.id),
        status = status_class(story.status),
        status_word = status_word(story.status),
        lang = if story.language.is_empty() {
            String::new()
        } else {
            format!(r#" lang="{}""#, escape::html(&story.language))
        },
        status_reason = escape::html(
            story
                .status_history
                .last()
                .map_or("", |revision| revision.reason.as_str())
        ),
        headline = escape::html(&story.headline),
        summary = escape::html(&story.summary),
        updated = escape::html(&time(story.updated_at.as_ref())),
    );
    let head = format!(r#"<script type="application/ld+json" id="jsonld">{jsonld}</script>"#);
    Html(document(&story.headline, &body, &head)).into_response()
}

/// The story as a schema.org `LiveBlogPosting`, one `BlogPosting` per update (the newest
/// [`FEED_UPDATES`]), newest first.
pub fn live_blog_posting(story: &pb::Story, events: &[pb::UpdateEvent]) -> Value {
    let mut narrator = Narrator::default();
    let mut updates: Vec<Value> = events
        .iter()
        .map(|event| {
            let body = event
                .kind()
                .map(|kind| narrator.change(&event.story_id, kind))
                .unwrap_or_default();
            json!({
                "@type": "BlogPosting",
                "headline": event.headline,
                "datePublished": iso(event.occurred_at.as_ref()),
                "articleBody": body,
            })
        })
        .collect();
    updates.reverse();
    updates.truncate(FEED_UPDATES);
    let mut posting = json!({
        "@context": "https://schema.org",
        "@type": "LiveBlogPosting",
        "@id": format!("/stories/{}", story.id),
        "headline": story.headline,
        "description": story.summary,
        "datePublished": iso(story.created_at.as_ref()),
        "dateModified": iso(story.updated_at.as_ref()),
        "coverageStartTime": iso(story.created_at.as_ref()),
        "keywords": story.tags,
        "liveBlogUpdate": updates,
    });
    if !story.language.is_empty() {
        posting["inLanguage"] = json!(story.language);
    }
    let ended = story.status != i32::from(pb::StoryStatus::Developing);
    if ended {
        posting["coverageEndTime"] = json!(iso(story.updated_at.as_ref()));
    }
    posting
}

/// A whole HTML document.
fn document(title: &str, body: &str, head: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{CSS}</style>
{head}
</head><body>
{body}
<script>{SCRIPT}</script>
</body></html>
"#,
        title = escape::html(title),
    )
}

/// A page saying why the request failed, under the status's HTTP code, for a browser (whose
/// `Accept` names `text/html`); for any other client the JSON error every refusal has.
fn error_page(status: &Status, headers: &HeaderMap) -> Response {
    let browser = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|accept| accept.to_str().ok())
        .any(|accept| accept.contains("text/html"));
    if !browser {
        return error::response(status);
    }
    let body = format!(
        r#"<header class="masthead"><a href="/">storywire</a></header>
<main class="error"><h1>{code}</h1><p>{message}</p></main>"#,
        code = escape::html(&format!("{:?}", status.code())),
        message = escape::html(status.message()),
    );
    (
        error::http_status(status.code()),
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        document("storywire", &body, ""),
    )
        .into_response()
}

/// A story status as a CSS class suffix.
fn status_class(status: i32) -> &'static str {
    match pb::StoryStatus::try_from(status) {
        Ok(pb::StoryStatus::Concluded) => "concluded",
        Ok(pb::StoryStatus::Withdrawn) => "withdrawn",
        _ => "developing",
    }
}

/// A story status in words.
fn status_word(status: i32) -> &'static str {
    match pb::StoryStatus::try_from(status) {
        Ok(pb::StoryStatus::Concluded) => "Concluded",
        Ok(pb::StoryStatus::Withdrawn) => "Withdrawn",
        _ => "Developing",
    }
}

/// A timestamp as RFC 3339 (`2019-01-03T08:00:00Z`), or empty.
fn iso(timestamp: Option<&Timestamp>) -> String {
    timestamp
        .and_then(|ts| DateTime::<Utc>::try_from(*ts).ok())
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// A timestamp for people (`2019-01-03 08:00 UTC`).
fn time(timestamp: Option<&Timestamp>) -> String {
    timestamp
        .and_then(|ts| DateTime::<Utc>::try_from(*ts).ok())
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}
