//! Errors over HTTP: the gRPC status a call failed with, as JSON (`{"code": "NOT_FOUND",
//! "message": "..."}`) under the HTTP status that matches its code.

use axum::{
    http::{HeaderValue, StatusCode, header},
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
    serde_json::json!({
        "code": code_name(status.code()),
        "message": status.message(),
    })
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
