//! Errors over HTTP: the gRPC status a call failed with, as JSON (`{"code": "NOT_FOUND",
//! "message": "..."}`) under the HTTP status that matches its code; and the refusals axum makes
//! by itself (an unknown route, a method a route does not take, a path it cannot extract) turned
//! into the same JSON ([`refusals_as_json`]).

use axum::{
    body::Body,
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tonic::{Code, Status};

use crate::codes::code_name;

/// The HTTP status for a gRPC code, as gRPC-HTTP gateways map them (Google's API guidelines).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The error body: the code's name as gRPC spells it, and the status's message.
pub fn body(status: &Status) -> serde_json::Value {
    body_of(status.code(), status.message())
}

/// What a 429 tells the client to wait before it tries again (`Retry-After`, in seconds). A
/// subscription slot frees when another reader leaves, which the server cannot foresee; 10 s
/// keeps clients that obey from coming back in a storm, and is short beside a live story.
pub const RETRY_AFTER_SECS: u32 = 10;

/// An error response for `status`; a full limit (RESOURCE_EXHAUSTED, 429) says when to retry.
pub fn response(status: &Status) -> Response {
    let mut response = (
        http_status(status.code()),
        [(header::CONTENT_TYPE, "application/json")],
        body(status).to_string(),
    )
        .into_response();
    if status.code() == Code::ResourceExhausted {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    response
}

/// The most of a refusal's own text [`refusals_as_json`] reads for its message. axum's refusals
/// are a sentence; anything longer is not one of them and is cut off.
const REFUSAL_TEXT_BYTES: usize = 4 * 1024;

/// Gives every error response that is not already JSON (or a page for a browser) the JSON error
/// body: axum answers an unknown route (404) and a method a route does not take (405) with an
/// empty body, and a path it cannot extract (such as invalid UTF-8 in an id) with plain text.
/// The HTTP status and headers (such as a 405's `Allow`) stay; the message is axum's text, or
/// says what was asked when axum gave none.
pub(super) async fn refusals_as_json(request: Request, next: Next) -> Response {
    let asked = format!("{} {}", request.method(), request.uri().path());
    let response = next.run(request).await;
    let status = response.status();
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_none_or(|value| value.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, REFUSAL_TEXT_BYTES)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let reason = status.canonical_reason().unwrap_or("refused");
    let message = if text.is_empty() {
        format!("{asked}: {reason}")
    } else {
        format!("{asked}: {text}")
    };
    let body = body_of(code_for(status), &message).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

/// The gRPC code for an HTTP error status that no gRPC call produced: the inverse of
/// [`http_status`] where it has one, and the nearest code where it does not.
fn code_for(status: StatusCode) -> Code {
    match status.as_u16() {
        400 | 414 | 415 | 431 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        405 | 501 => Code::Unimplemented,
        408 | 504 => Code::DeadlineExceeded,
        409 => Code::Aborted,
        413 | 429 => Code::ResourceExhausted,
        499 => Code::Cancelled,
        503 => Code::Unavailable,
        400..=499 => Code::FailedPrecondition,
        _ => Code::Internal,
    }
}

/// The error body for `code` and `message`.
fn body_of(code: Code, message: &str) -> serde_json::Value {
    serde_json::json!({
        "code": code_name(code),
        "message": message,
    })
}
