//! The HTTP face (`serve --http`) of the real binary: the stories as the same proto3 JSON grpcurl
//! prints, errors as JSON with the gRPC code and message, Subscribe as Server-Sent Events that a
//! browser resumes with `Last-Event-ID`, and the same tokens as gRPC; JSON gzipped for a client
//! that asks while events are never held back, and reads from pages on the origins CORS allows.

use crate::process;
use crate::support;

use std::time::Duration;

use process::HttpServer as Server;
use storywire::pb;
use support::{
    change_mut,
    http1::{EventStream, get, get_gzip, options},
    open, report,
};

/// How soon a live event must arrive once published. Publishing and reading are loopback round
/// trips of milliseconds; a compressor holding events back would hold this one until kilobytes
/// more came, or the stream ended: far longer.
const PROMPTLY: Duration = Duration::from_secs(5);

/// Writes a tokens file with a reader's token into a new directory; returns the directory.
fn reader_tokens(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("storywire-http-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    std::fs::write(
        dir.join("tokens"),
        "reader subscribe reader-token-0123456789\n",
    )
    .expect("a tokens file");
    dir
}

/// `value` as proto3 JSON, the way the server writes it.
fn json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).expect("JSON")
}

#[tokio::test]
async fn stories_are_the_json_grpc_gives_and_errors_carry_its_code_and_message() {
    let server = Server::start(&[]).await;
    let mut client = server.client().await;
    for story in ["alpha", "beta"] {
        client
            .publish(open(story, &["politics"]))
            .await
            .expect("open");
    }
    client.publish(report("alpha", "f1")).await.expect("report");

    let listed = get(server.http, "/v1/stories?page_size=1&tag=politics", &[]).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(listed.headers["content-type"], "application/json");
    let expected = client
        .list_stories(pb::ListStoriesRequest {
            page_size: 1,
            tag: "politics".to_owned(),
            ..Default::default()
        })
        .await
        .expect("ListStories")
        .into_inner();
    assert_eq!(listed.json(), json(&expected));
    assert_eq!(listed.json()["nextPageToken"], "alpha");

    let story = get(server.http, "/v1/stories/alpha?as_of_version=1", &[]).await;
    let expected = client
        .get_story(pb::GetStoryRequest {
            story_id: "alpha".to_owned(),
            as_of_version: Some(1),
        })
        .await
        .expect("GetStory")
        .into_inner();
    assert_eq!(story.json(), json(&expected));
    assert_eq!(story.json()["story"]["version"], "1");

    // The ninjs item is the one the library maps from the story and its events.
    let ninjs = get(server.http, "/v1/stories/alpha/ninjs", &[]).await;
    assert_eq!(ninjs.status, 200, "{ninjs:?}");
    let current = client
        .get_story(pb::GetStoryRequest {
            story_id: "alpha".to_owned(),
            as_of_version: None,
        })
        .await
        .expect("GetStory")
        .into_inner()
        .story
        .expect("a story");
    assert_eq!(ninjs.json(), storywire::ninjs::to_ninjs(&current));
    assert_eq!(ninjs.json()["uri"], "urn:storywire:story:alpha");
    assert_eq!(ninjs.json()["version"], "2");

    let missing = get(server.http, "/v1/stories/nope", &[]).await;
    let status = client
        .get_story(pb::GetStoryRequest {
            story_id: "nope".to_owned(),
            as_of_version: None,
        })
        .await
        .expect_err("no such story");
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.json(),
        serde_json::json!({"code": "NOT_FOUND", "message": status.message()})
    );
    let invalid = get(server.http, "/v1/stories?page_size=many", &[]).await;
    assert_eq!(invalid.status, 400);
    assert_eq!(invalid.json()["code"], "INVALID_ARGUMENT");
    assert!(
        invalid.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("page_size")),
        "{invalid:?}"
    );
}

#[tokio::test]
async fn the_event_stream_resumes_from_last_event_id_and_refuses_another_log() {
    let server = Server::start(&[]).await;
    let mut client = server.client().await;
    client.publish(open("alpha", &[])).await.expect("open");
    client.publish(report("alpha", "f1")).await.expect("report");

    let mut stream = EventStream::open(server.http, "/v1/events?from_sequence=1", &[])
        .await
        .expect("an event stream");
    assert_eq!(stream.headers["content-type"], "text/event-stream");
    let cookie = stream.headers["set-cookie"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    let started = stream.next().await.expect("started");
    assert_eq!(started.event.as_deref(), Some("started"));
    let log_id = started.json()["logId"]
        .as_str()
        .expect("a log_id")
        .to_owned();
    assert!(
        cookie.starts_with(&format!("storywire_log_id={log_id};")),
        "{cookie}"
    );

    let read = stream
        .until(|e| e.event.as_deref() == Some("caught_up"))
        .await;
    let ids: Vec<_> = read.iter().filter_map(|e| e.id.clone()).collect();
    assert_eq!(ids, ["1", "2"]);
    assert_eq!(read[1].json()["headline"], "Fact f1 reported");
    // Live: an update published over gRPC arrives as the next event.
    client.publish(report("alpha", "f2")).await.expect("report");
    let live = stream.next().await.expect("a live event");
    assert_eq!(live.id.as_deref(), Some("3"));
    assert_eq!(live.json()["sequence"], "3");

    // A browser reconnecting sends the last id and the cookie: it resumes right after.
    let cookie_header = format!("storywire_log_id={log_id}");
    let mut resumed = EventStream::open(
        server.http,
        "/v1/events",
        &[("last-event-id", "2"), ("cookie", &cookie_header)],
    )
    .await
    .expect("a resumed stream");
    resumed.next().await.expect("started");
    let read = resumed
        .until(|e| e.event.as_deref() == Some("caught_up"))
        .await;
    let ids: Vec<_> = read.iter().filter_map(|e| e.id.clone()).collect();
    assert_eq!(ids, ["3"], "no gap and no duplicate");

    // An id from another log is refused as gRPC refuses it.
    let refused = EventStream::open(
        server.http,
        "/v1/events",
        &[
            ("last-event-id", "2"),
            ("cookie", "storywire_log_id=another-log"),
        ],
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["code"], "FAILED_PRECONDITION");
    assert!(refused.body.contains("another-log"), "{refused:?}");
}

#[tokio::test]
async fn http_reads_need_the_tokens_grpc_needs_unless_reading_is_public() {
    let dir = std::env::temp_dir().join(format!("storywire-http-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        "reader subscribe reader-token-0123456789\nwriter publish writer-token-0123456789\n",
    )
    .expect("a tokens file");
    let tokens = tokens.to_str().expect("UTF-8");

    let guarded = Server::start(&["--tokens", tokens]).await;
    let anonymous = get(guarded.http, "/v1/stories", &[]).await;
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert_eq!(anonymous.json()["code"], "UNAUTHENTICATED");
    let writer = get(
        guarded.http,
        "/v1/stories",
        &[("authorization", "Bearer writer-token-0123456789")],
    )
    .await;
    assert_eq!(writer.status, 403, "{writer:?}");
    let reader = get(
        guarded.http,
        "/v1/stories",
        &[("authorization", "Bearer reader-token-0123456789")],
    )
    .await;
    assert_eq!(reader.status, 200, "{reader:?}");
    let events = EventStream::open(guarded.http, "/v1/events", &[]).await;
    assert_eq!(events.err().map(|reply| reply.status), Some(401));

    let public = Server::start(&["--tokens", tokens, "--public-read"]).await;
    assert_eq!(get(public.http, "/v1/stories", &[]).await.status, 200);
    assert!(
        EventStream::open(public.http, "/v1/events", &[])
            .await
            .is_ok()
    );
    // A token that is given must still be right.
    let wrong = get(
        public.http,
        "/v1/stories",
        &[("authorization", "Bearer wrong")],
    )
    .await;
    assert_eq!(wrong.status, 401, "{wrong:?}");
    // Publishing still needs a token.
    let refused = public
        .client()
        .await
        .publish(open("alpha", &[]))
        .await
        .expect_err("no anonymous publish");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    drop((guarded.process, public.process));
    std::fs::remove_dir_all(&dir).expect("remove the tokens");
}

#[tokio::test]
async fn the_live_page_lists_stories_and_carries_the_storys_json_ld_safely() {
    let server = Server::start(&[]).await;
    let mut client = server.client().await;
    let mut opening = open("alpha", &[]);
    if let pb::change::Kind::StoryOpened(opened) = change_mut(&mut opening) {
        opened.headline = "Talks </script><b>resume</b> & end".to_owned();
    }
    client.publish(opening).await.expect("open");
    client.publish(report("alpha", "f1")).await.expect("report");

    let index = get(server.http, "/", &[]).await;
    assert_eq!(index.status, 200);
    assert!(
        index
            .body
            .contains(r#"<a class="story-link" href="/stories/alpha">"#),
        "{}",
        index.body
    );
    assert!(
        index
            .body
            .contains("Talks &lt;/script&gt;&lt;b&gt;resume&lt;/b&gt; &amp; end")
    );

    let page = get(server.http, "/stories/alpha", &[]).await;
    assert_eq!(page.status, 200);
    assert!(
        !page.body.contains("<b>resume</b>"),
        "the headline is escaped"
    );
    let start = page
        .body
        .find(r#"<script type="application/ld+json" id="jsonld">"#)
        .expect("JSON-LD");
    let rest = &page.body[start..];
    let text = &rest[rest.find('>').expect("tag end") + 1..rest.find("</script>").expect("end")];
    let jsonld: serde_json::Value = serde_json::from_str(text).expect("JSON-LD parses");
    assert_eq!(jsonld["@type"], "LiveBlogPosting");
    assert_eq!(jsonld["headline"], "Talks </script><b>resume</b> & end");
    let updates = jsonld["liveBlogUpdate"].as_array().expect("updates");
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[0]["headline"], "Fact f1 reported", "newest first");
    assert!(jsonld.get("coverageEndTime").is_none(), "still developing");

    let missing = get(server.http, "/stories/nope", &[]).await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn the_live_page_opens_on_the_story_s_newest_hundred_updates_without_scanning_from_one() {
    // The log keeps 150 events: the first ones, and the story's opening, are evicted.
    let server = Server::start(&["--retain-events", "150"]).await;
    let mut client = server.client().await;
    client.publish(open("alpha", &[])).await.expect("open");
    client.publish(open("other", &[])).await.expect("open");
    let mut last = 0;
    for i in 0..200 {
        let story = if i % 2 == 0 { "alpha" } else { "other" };
        let note = support::note(story, &format!("Update {i}"));
        last = client
            .publish(note)
            .await
            .expect("note")
            .into_inner()
            .sequence;
    }
    assert_eq!(last, 202);
    // alpha's events are the odd sequences from 3; the retained ones run from 53 to 201: 75.
    let page = get(server.http, "/stories/alpha", &[]).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains(r#"data-from-sequence="53""#),
        "the feed starts at alpha's oldest retained event: {}",
        &page.body[..page.body.find("<h1").unwrap_or(0)]
    );
    let start = page.body.find(r#"id="jsonld">"#).expect("JSON-LD") + r#"id="jsonld">"#.len();
    let text = &page.body[start..start + page.body[start..].find("</script>").expect("end")];
    let jsonld: serde_json::Value = serde_json::from_str(text).expect("JSON-LD parses");
    let updates = jsonld["liveBlogUpdate"].as_array().expect("updates");
    assert_eq!(updates.len(), 75);
    assert_eq!(updates[0]["headline"], "Update 198", "newest first");

    // With more than a hundred retained, the newest hundred.
    for i in 0..60 {
        let note = support::note("alpha", &format!("More {i}"));
        client.publish(note).await.expect("note");
    }
    let page = get(server.http, "/stories/alpha", &[]).await;
    let from: u64 = page
        .body
        .split(r#"data-from-sequence=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse().ok())
        .expect("data-from-sequence");
    // alpha's newest hundred: the 60 just published (203..=262) and the newest 40 before them.
    assert_eq!(from, 201 - 2 * 39);
}

#[tokio::test]
async fn json_is_gzipped_for_a_client_that_asks_and_events_are_never_held_back() {
    let server = Server::start(&[]).await;
    let mut client = server.client().await;
    client.publish(open("alpha", &[])).await.expect("open");

    let plain = get(server.http, "/v1/stories/alpha", &[]).await;
    assert!(plain.headers.get("content-encoding").is_none(), "{plain:?}");
    let (gzipped, was_gzipped) = get_gzip(server.http, "/v1/stories/alpha").await;
    assert!(was_gzipped, "{gzipped:?}");
    assert_eq!(gzipped.status, 200);
    assert_eq!(gzipped.json(), plain.json());

    let mut stream = EventStream::open(
        server.http,
        "/v1/events?from_sequence=1",
        &[("accept-encoding", "gzip")],
    )
    .await
    .expect("an event stream");
    assert!(
        stream.headers.get("content-encoding").is_none(),
        "events are sent as they are: {:?}",
        stream.headers
    );
    stream
        .until(|e| e.event.as_deref() == Some("caught_up"))
        .await;
    client.publish(report("alpha", "f1")).await.expect("report");
    let live = tokio::time::timeout(PROMPTLY, stream.next())
        .await
        .expect("the live event arrives promptly")
        .expect("a live event");
    assert_eq!(live.id.as_deref(), Some("2"));
}

#[tokio::test]
async fn pages_on_the_origins_cors_allows_may_read() {
    let page = "https://live.news.example";
    let preflight_headers = [
        ("origin", page),
        ("access-control-request-method", "GET"),
        ("access-control-request-headers", "authorization"),
    ];
    let dir = reader_tokens("cors");
    let tokens = dir.join("tokens");
    let guarded = Server::start(&["--tokens", tokens.to_str().expect("UTF-8")]).await;
    let preflight = options(guarded.http, "/v1/stories", &preflight_headers).await;
    assert_eq!(preflight.status, 200, "{preflight:?}");
    assert_eq!(preflight.headers["access-control-allow-origin"], "*");
    assert_eq!(preflight.headers["access-control-allow-methods"], "GET");
    let allowed = preflight.headers["access-control-allow-headers"]
        .to_str()
        .expect("ASCII")
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");
    let read = get(
        guarded.http,
        "/v1/stories",
        &[
            ("origin", page),
            ("authorization", "Bearer reader-token-0123456789"),
        ],
    )
    .await;
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(read.headers["access-control-allow-origin"], "*");

    // Without tokens, only the origins named: the server answers, the browser refuses.
    let anonymous = Server::start(&[]).await;
    let read = get(anonymous.http, "/v1/stories", &[("origin", page)]).await;
    assert_eq!(read.status, 200);
    assert!(
        read.headers.get("access-control-allow-origin").is_none(),
        "{read:?}"
    );
    let named = Server::start(&["--cors-origin", page]).await;
    let read = get(named.http, "/v1/stories", &[("origin", page)]).await;
    assert_eq!(read.headers["access-control-allow-origin"], page);
    drop((guarded.process, anonymous.process, named.process));
    std::fs::remove_dir_all(&dir).expect("remove the tokens");
}
