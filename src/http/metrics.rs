//! `GET /metrics`: what the server measures ([`crate::metrics`]), as OpenMetrics text when the
//! scraper asks for it (Prometheus does, in its `Accept` header) and in the Prometheus text format
//! otherwise (curl, older scrapers).
//!
//! With `--tokens` a scrape needs a token with the `metrics` role (or `admin`), unless
//! `--metrics-public` or `--public-read` opens it; a token that is given must still be right.
//! The `metrics` role reads nothing else, so the token a Prometheus server keeps in its
//! configuration can neither read nor publish stories.

use axum::{
    extract::State,
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
};
use tonic::Status;

use super::{App, error};
use crate::{auth::Role, metrics::Format};

/// `GET /metrics`.
pub(super) async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Err(status) = authorize(&app, &headers) {
        return error::response(&status);
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok());
    let format = Format::from_accept(accept);
    let text = app.service.encode_metrics(format);
    ([(header::CONTENT_TYPE, format.content_type())], text).into_response()
}

/// Checks the request's bearer token for a scrape.
fn authorize(app: &App, headers: &HeaderMap) -> Result<(), Status> {
    let Some(tokens) = &app.options.tokens else {
        return Ok(());
    };
    let authorization = headers.get(header::AUTHORIZATION);
    let open = app.options.metrics_public || app.options.public_read;
    if open && authorization.is_none() {
        return Ok(());
    }
    tokens
        .check_role(Role::Metrics, "GET /metrics", authorization)
        .map(drop)
}
