//! `GET /v1/events`: Subscribe as Server-Sent Events.
//!
//! - Each update is an unnamed SSE event (EventSource's `message`) whose `id:` is its sequence
//!   and whose `data:` is the `UpdateEvent` in proto3 JSON.
//! - The other items are named events with their message as data: `started` (first, with the
//!   `log_id`), `story`, `caught_up`, and `checkpoint` (which also carries an `id:`, so that a
//!   filtered subscription resumes past events it did not need).
//! - Idle streams get SSE comments as heartbeats.
//! - A stream that ends in error sends a last named event `end` with the error JSON.
//! - Each event's frame is encoded once and shared by every reader ([`super::frames`]); a reader
//!   that stops taking its bytes is cut off ([`super::sse`]).
//!
//! A browser's EventSource resumes after a dropped connection by itself: it sends the last `id:`
//! as `Last-Event-ID`, which this endpoint takes as `from_sequence` = that + 1 (over any
//! `from_sequence` in the URL, which was for the first connection). The log it came
//! from travels beside it: the response sets a cookie naming the `log_id`, which the browser
//! sends back when it reconnects, so a `Last-Event-ID` from another log (a server restarted
//! without `--data-dir`) is refused with FAILED_PRECONDITION as gRPC refuses it. Clients
//! without cookies pass `log_id` in the query.

use axum::{
    body::Body,
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};
use serde_json::Value;
use tonic::Status;

use super::{App, Peer, error, parse, query_object, sse::EventBody};
use crate::{metrics::Transport, pb, pb::server::story_service_server::StoryService};

/// The cookie that names the log a browser's `Last-Event-ID` belongs to.
pub const LOG_COOKIE: &str = "storywire_log_id";

/// `GET /v1/events`.
pub(super) async fn events(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    match subscribe(&app, peer, &headers, query.as_deref()).await {
        Ok(response) => response,
        Err(status) => error::response(&status),
    }
}

/// Opens the subscription the request describes, or says why not.
async fn subscribe(
    app: &App,
    peer: Peer,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Response, Status> {
    let caller = app.authorize(headers, "Subscribe")?;
    let mut object = query_object(
        query,
        &[("story", "story_ids"), ("tag", "tags")],
        &["story_ids", "tags"],
    );
    // A browser sends Last-Event-ID only when it reconnects: it is newer than the URL's
    // from_sequence, which the page gave once, for its first connection.
    if let Some(last) = headers.get("last-event-id") {
        let last: u64 = last
            .to_str()
            .ok()
            .and_then(|last| last.trim().parse().ok())
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "Last-Event-ID {last:?} is not a sequence; reconnect without it"
                ))
            })?;
        // The sequence after the greatest there can be is past any head: refused as gRPC
        // refuses a from_sequence beyond the head, never wrapped round to the start of the log.
        let from = last.checked_add(1).ok_or_else(|| {
            Status::out_of_range(format!(
                "Last-Event-ID {last} is the last sequence there can be, beyond the head; \
                 reconnect without it"
            ))
        })?;
        object.insert("from_sequence".to_owned(), Value::String(from.to_string()));
    }
    if !object.contains_key("log_id")
        && let Some(log_id) = cookie(headers, LOG_COOKIE)
    {
        object.insert("log_id".to_owned(), Value::String(log_id));
    }
    let request: pb::SubscribeRequest = parse(object)?;
    let mut request = app.request(request, caller);
    peer.mark(&mut request);
    request.extensions_mut().insert(Transport::Sse);
    let items = app.service.subscribe(request).await?.into_inner();
    let body = EventBody::new(items, app.frames.clone(), app.service.sse_stalls());
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::new(body),
    )
        .into_response();
    let cookie = format!(
        "{LOG_COOKIE}={}; Path=/v1/events; HttpOnly; SameSite=Strict",
        app.service.log_id()
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// The value of cookie `name` in the request, if it sent one.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}
