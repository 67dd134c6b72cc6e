//! Which web pages may call the server from a browser (CORS): one rule for both listeners, the
//! gRPC-Web calls on the gRPC port and the reads of the HTTP face.
//!
//! CORS guards what a browser sends by itself: cookies, HTTP authentication, client
//! certificates, and its place on the network. storywire's credential is a bearer token, which a
//! page sends only if its own code holds it, and no response here allows credentials, so with
//! `--tokens` a page on any origin can do no more than the token it holds allows, as any other
//! client could. Without `--tokens` the credential *is* the place on the network (loopback, by
//! default), and every page a person has open in a browser on that machine is there too:
//! allowing any origin would let any of them publish to, or read, a developer's local server.
//! Hence the default, [`Origins::default_for`]: any origin with tokens, none without, and
//! `--cors-origin` to name others.

use std::{fmt, time::Duration};

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The request headers a gRPC-Web client sends: the framing (`content-type`, `x-grpc-web`),
/// its name (`x-user-agent`), a deadline (`grpc-timeout`) and the bearer token.
const GRPC_WEB_REQUEST_HEADERS: [&str; 5] = [
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "authorization",
];

/// The response headers a gRPC-Web client must read: an error comes "trailers-only", its status
/// in the headers, which a browser hides from a page on another origin unless they are exposed.
/// (A status after messages comes inside the body, which the page always reads.)
const GRPC_WEB_RESPONSE_HEADERS: [&str; 3] =
    ["grpc-status", "grpc-message", "grpc-status-details-bin"];

/// How long a browser may reuse a preflight's answer. A gRPC-Web page preflights every method it
/// calls, so this saves a round trip per method; an origin taken off the list can reuse its
/// cached permission no longer than this (each response still carries its own
/// Access-Control-Allow-Origin, which the browser checks too).
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The origins whose pages may call the server (`serve --cors-origin`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Origins {
    /// No page on another origin: a browser refuses the call (the default without tokens).
    #[default]
    None,
    /// A page on any origin (`*`; the default with tokens).
    Any,
    /// Pages on these origins, as a browser writes them (`https://news.example`).
    Only(Vec<HeaderValue>),
}

impl Origins {
    /// The rule with no `--cors-origin`: any origin when every StoryService call needs a token,
    /// none when the server trusts whoever can reach it (see the module's docs for why).
    pub fn default_for(tokens: bool) -> Self {
        if tokens { Self::Any } else { Self::None }
    }

    /// The rule from the `--cors-origin` values (each checked by [`parse_origin`]): any origin
    /// if one is `*`, else exactly those; the default for `tokens` when none is given.
    pub fn from_flags(given: Vec<HeaderValue>, tokens: bool) -> Self {
        if given.is_empty() {
            Self::default_for(tokens)
        } else if given.iter().any(|origin| origin == "*") {
            Self::Any
        } else {
            Self::Only(given)
        }
    }

    /// CORS for gRPC-Web on the gRPC port: POST with the headers grpc-web clients send, and the
    /// status headers exposed.
    pub fn grpc_web(&self) -> CorsLayer {
        self.layer()
            .allow_methods([Method::POST])
            .allow_headers(GRPC_WEB_REQUEST_HEADERS.map(HeaderName::from_static))
            .expose_headers(GRPC_WEB_RESPONSE_HEADERS.map(HeaderName::from_static))
    }

    /// CORS for the HTTP face: its reads (GET), with a bearer token, and `Last-Event-ID` for an
    /// event stream a page resumes through `fetch` (EventSource sends it by itself).
    pub fn http(&self) -> CorsLayer {
        self.layer().allow_methods([Method::GET]).allow_headers([
            header::AUTHORIZATION,
            HeaderName::from_static("last-event-id"),
        ])
    }

    /// What both listeners share: the origins, and how long a preflight holds.
    fn layer(&self) -> CorsLayer {
        let origins = match self {
            Self::None => AllowOrigin::list([]),
            Self::Any => AllowOrigin::any(),
            Self::Only(origins) => AllowOrigin::list(origins.iter().cloned()),
        };
        CorsLayer::new()
            .allow_origin(origins)
            .max_age(PREFLIGHT_MAX_AGE)
    }
}

impl fmt::Display for Origins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Any => f.write_str("any"),
            Self::Only(origins) => {
                let names: Vec<&str> = origins.iter().filter_map(|o| o.to_str().ok()).collect();
                f.write_str(&names.join(" "))
            }
        }
    }
}

/// Parses one `--cors-origin`: `*`, or an origin as a browser sends it in the `Origin` header,
/// `scheme://host[:port]`. A path (a trailing `/` included) is refused, since no browser sends
/// one and the origin would then never match; scheme and host are lowercased, as browsers send
/// them.
pub fn parse_origin(value: &str) -> Result<HeaderValue, String> {
    if value == "*" {
        return Ok(HeaderValue::from_static("*"));
    }
    let refuse = |why: &str| {
        Err(format!(
            "{value:?} is not an origin: {why}; write it as a browser sends it, scheme://host[:port] (e.g. https://news.example), or * for any"
        ))
    };
    let Some((scheme, authority)) = value.split_once("://") else {
        return refuse("no scheme");
    };
    if scheme.is_empty() || authority.is_empty() {
        return refuse("no scheme or no host");
    }
    if authority.contains(['/', '?', '#']) {
        return refuse("it has a path");
    }
    if authority.contains('@') {
        return refuse("it has user information");
    }
    let origin = value.to_ascii_lowercase();
    if origin.parse::<axum::http::Uri>().is_err() {
        return refuse("it does not parse as scheme://host[:port]");
    }
    HeaderValue::from_str(&origin).or_else(|_| refuse("it is not a valid header value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_is_taken_as_a_browser_writes_it() {
        assert_eq!(
            parse_origin("https://News.Example:8443"),
            Ok(HeaderValue::from_static("https://news.example:8443"))
        );
        assert_eq!(parse_origin("*"), Ok(HeaderValue::from_static("*")));
        for wrong in [
            "news.example",
            "https://news.example/",
            "https://news.example/app",
            "https://user@news.example",
            "https://",
            "://news.example",
        ] {
            assert!(parse_origin(wrong).is_err(), "{wrong} accepted");
        }
    }

    #[test]
    fn without_a_flag_any_origin_only_with_tokens() {
        assert_eq!(Origins::from_flags(Vec::new(), true), Origins::Any);
        assert_eq!(Origins::from_flags(Vec::new(), false), Origins::None);
        let named = vec![HeaderValue::from_static("http://localhost:5173")];
        assert_eq!(
            Origins::from_flags(named.clone(), false),
            Origins::Only(named.clone())
        );
        let with_star = vec![named[0].clone(), HeaderValue::from_static("*")];
        assert_eq!(Origins::from_flags(with_star, true), Origins::Any);
    }
}
