//! The HTTP face (`serve --http ADDR`): the read side of the StoryService as proto3 JSON, and
//! Subscribe as Server-Sent Events, for browsers, live pages and plain HTTP tools.
//!
//! Every endpoint calls the same [`Service`] the gRPC server runs, in process, so validation,
//! limits and error messages are the gRPC ones; an error is JSON with the gRPC code's name and
//! message, under the matching HTTP status (`error`).
//!
//! - `GET /v1/stories?tag=&status=&page_size=&page_token=`: ListStories.
//! - `GET /v1/stories/{id}?as_of_version=`: GetStory.
//! - `GET /v1/stories/{id}/ninjs?as_of_version=`: the story as an IPTC ninjs item
//!   ([`crate::ninjs`]).
//! - `GET /v1/events?from_sequence=&story=&tag=&log_id=`: Subscribe as SSE (`events`).
//! - `GET /` and `GET /stories/{id}`: the live page (`page`).
//! - `GET /metrics`: what the server measures, for Prometheus (`metrics`).
//!
//! Responses are gzipped for a client that asks (`Accept-Encoding: gzip`), except the event
//! streams, and pages on the origins [`crate::cors`] allows may read them from a browser.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::{ConnectInfo, FromRequestParts, Path, RawQuery, State},
    http::{HeaderMap, header, request::Parts},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Map, Value};
use tonic::{Request, Status};
use tower_http::compression::{CompressionLayer, predicate::DefaultPredicate};

use crate::{
    auth::{Caller, Tokens},
    connections::ClientAddress,
    cors::Origins,
    pb::{self, server::story_service_server::StoryService},
    service::Service,
};

mod error;
mod escape;
mod events;
mod frames;
mod metrics;
mod page;
mod sse;

/// Who may read over HTTP.
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// The tokens of the gRPC server: a read needs one with the subscribe role...
    pub tokens: Option<Arc<Tokens>>,
    /// ...unless anyone may read (`--public-read`: a public live page). Never anything else.
    pub public_read: bool,
    /// The origins whose pages may read from a browser ([`crate::cors`]).
    pub cors: Origins,
    /// Anyone may scrape `GET /metrics` (`--metrics-public`; `--public-read` opens it too).
    pub metrics_public: bool,
}

/// What every handler shares.
#[derive(Debug, Clone)]
struct App {
    /// The StoryService, as the gRPC server runs it.
    service: Service,
    /// Who may read.
    options: HttpOptions,
    /// The SSE frames of the newest events, shared by every reader.
    frames: Arc<frames::Frames>,
}

/// The HTTP routes over `service`.
pub fn router(service: Service, options: HttpOptions) -> Router {
    let cors = options.cors.http();
    // tower-http's default predicate leaves out `text/event-stream`: a compressor holds what it
    // is given until it has enough to compress, and an event must reach the page when it
    // happens. It leaves out bodies under 32 bytes too, which gzip would only make longer.
    let compression = CompressionLayer::new().compress_when(DefaultPredicate::new());
    let app = App {
        service,
        options,
        frames: Arc::default(),
    };
    // Event streams are never compressed, so they are not wrapped for it either: the wrapper
    // would only pass each frame through, once per delivery.
    let events = Router::new()
        .route("/v1/events", get(events::events))
        .with_state(app.clone())
        .layer(axum::middleware::from_fn(error::refusals_as_json));
    Router::new()
        .route("/", get(page::index))
        .route("/stories/{id}", get(page::story))
        .route("/v1/stories", get(list_stories))
        .route("/v1/stories/{id}", get(get_story))
        .route("/v1/stories/{id}/ninjs", get(get_ninjs))
        .route("/metrics", get(metrics::metrics))
        .with_state(app)
        .layer(axum::middleware::from_fn(error::refusals_as_json))
        .layer(compression)
        .merge(events)
        .layer(cors)
}

impl App {
    /// Checks the request's bearer token for a read, as the gRPC server would for `method`;
    /// names the caller when a token was given.
    fn authorize(&self, headers: &HeaderMap, method: &str) -> Result<Option<Caller>, Status> {
        let Some(tokens) = &self.options.tokens else {
            return Ok(None);
        };
        let authorization = headers.get(header::AUTHORIZATION);
        if self.options.public_read && authorization.is_none() {
            return Ok(None);
        }
        tokens.check(
            &format!("/storywire.v1.StoryService/{method}"),
            authorization,
        )
    }

    /// A request for the service, carrying the caller as the gRPC server's does.
    fn request<T>(&self, message: T, caller: Option<Caller>) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(caller) = caller {
            request.extensions_mut().insert(caller);
        }
        request
    }
}

/// The address a request counts against for the per-address limits: the [`ClientAddress`] the
/// serving loop put in the request, or else the peer's own (axum's `ConnectInfo`, for a router
/// served by `axum::serve`); `None` when it is served with neither.
#[derive(Debug, Clone, Copy)]
struct Peer(Option<ClientAddress>);

impl Peer {
    /// Puts the address in a request for the service, where the gRPC server's serving loop puts
    /// it, for the limits to count.
    fn mark<T>(self, request: &mut Request<T>) {
        if let Some(address) = self.0 {
            request.extensions_mut().insert(address);
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let extensions = &parts.extensions;
        let address = extensions.get::<ClientAddress>().copied().or_else(|| {
            extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(peer)| ClientAddress(peer.ip()))
        });
        Ok(Self(address))
    }
}

/// The query string as a JSON object for a request message: each parameter named in `repeated`
/// becomes a list of every value it was given, each `renamed` one takes its message field's
/// name, and every other takes its last value. proto3 JSON then parses it (numbers and enum
/// names from strings), so an invalid value is refused naming its field.
fn query_object(
    query: Option<&str>,
    renamed: &[(&str, &str)],
    repeated: &[&str],
) -> Map<String, Value> {
    let mut object = Map::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let field = renamed
            .iter()
            .find(|(from, _)| *from == name)
            .map_or(name.as_ref(), |(_, to)| to);
        let value = Value::String(value.into_owned());
        if repeated.contains(&field) {
            if let Value::Array(values) = object
                .entry(field.to_owned())
                .or_insert_with(|| Value::Array(Vec::new()))
            {
                values.push(value);
            }
        } else {
            object.insert(field.to_owned(), value);
        }
    }
    object
}

/// Parses a request message from a query object, refusing what proto3 JSON refuses.
fn parse<T: serde::de::DeserializeOwned>(object: Map<String, Value>) -> Result<T, Status> {
    serde_json::from_value(Value::Object(object.clone())).map_err(|error| {
        // The error does not say which parameter: find the first that fails on its own.
        let field = object.iter().find_map(|(name, value)| {
            let alone = Map::from_iter([(name.clone(), value.clone())]);
            serde_json::from_value::<T>(Value::Object(alone))
                .is_err()
                .then_some(name)
        });
        match field {
            Some(field) => Status::invalid_argument(format!("query parameter {field}: {error}")),
            None => Status::invalid_argument(format!("query: {error}")),
        }
    })
}

/// A message as the proto3 JSON grpcurl and the CLI print.
fn json<T: serde::Serialize>(message: &T) -> Response {
    match serde_json::to_vec(message) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => error::response(&Status::internal(format!("encoding JSON: {e}"))),
    }
}

/// `GET /v1/stories`: ListStories.
async fn list_stories(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let answer = async {
        let caller = app.authorize(&headers, "ListStories")?;
        let request: pb::ListStoriesRequest = parse(query_object(query.as_deref(), &[], &[]))?;
        app.service
            .list_stories(app.request(request, caller))
            .await
            .map(tonic::Response::into_inner)
    };
    match answer.await {
        Ok(page) => json(&page),
        Err(status) => error::response(&status),
    }
}

/// `GET /v1/stories/{id}`: GetStory.
async fn get_story(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    match app.story(id, &headers, query.as_deref()).await {
        Ok(story) => json(&story),
        Err(status) => error::response(&status),
    }
}

/// `GET /v1/stories/{id}/ninjs`: the story as an IPTC ninjs item, as `storywire story ID
/// --ninjs` prints it.
async fn get_ninjs(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    match app.story(id, &headers, query.as_deref()).await {
        Ok(found) => json(&crate::ninjs::to_ninjs(&found.story.unwrap_or_default())),
        Err(status) => error::response(&status),
    }
}

impl App {
    /// GetStory of story `id` with the query's parameters (`as_of_version`).
    async fn story(
        &self,
        id: String,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<pb::GetStoryResponse, Status> {
        let caller = self.authorize(headers, "GetStory")?;
        let mut object = query_object(query, &[], &[]);
        object.insert("story_id".to_owned(), Value::String(id));
        let request: pb::GetStoryRequest = parse(object)?;
        let found = self
            .service
            .get_story(self.request(request, caller))
            .await?
            .into_inner();
        Ok(found)
    }
}
