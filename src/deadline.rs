//! A gRPC call's deadline on the server: the shorter of the client's `grpc-timeout` and
//! `--request-timeout`, by which the call must have produced its response (for a stream: opened).
//! Past it the call ends with CANCELLED "Timeout expired", as tonic's own server says it.
//!
//! tonic applies this inside its transport; storywire serves connections itself
//! ([`crate::connections`]), so it applies the same rule here.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::http::{HeaderMap, Request};
use tonic::Status;

/// [`tower_service::Service`] middleware that bounds each call by its deadline.
#[derive(Debug, Clone)]
pub(crate) struct Deadline<S> {
    /// The calls.
    inner: S,
    /// `--request-timeout`.
    server_timeout: Duration,
}

impl<S> Deadline<S> {
    /// `inner`, each call bounded by `server_timeout` or the client's shorter deadline.
    pub(crate) fn new(inner: S, server_timeout: Duration) -> Self {
        Self {
            inner,
            server_timeout,
        }
    }
}

impl<S, B> tower_service::Service<Request<B>> for Deadline<S>
where
    S: tower_service::Service<Request<B>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let timeout = grpc_timeout(request.headers()).map_or(self.server_timeout, |client| {
            client.min(self.server_timeout)
        });
        let call = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(answer) => answer.map_err(Into::into),
                Err(_) => Err(Status::cancelled("Timeout expired").into()),
            }
        })
    }
}

/// The `grpc-timeout` header's duration: up to 8 digits and a unit (H, M, S, m, u, n), as
/// gRPC over HTTP/2 defines it; `None` when absent or malformed.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_reads_every_unit_and_refuses_the_malformed() {
        let parse = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            grpc_timeout(&headers)
        };
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse("123456789S"), None);
        assert_eq!(parse("5x"), None);
        assert_eq!(parse("S"), None);
    }
}
