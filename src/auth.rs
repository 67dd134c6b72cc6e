//! Who may call what: named bearer tokens with roles, checked before any StoryService method runs.
//!
//! The tokens file (`serve --tokens FILE`) has one token a line, `NAME ROLES TOKEN`, where ROLES is
//! a comma-separated list of `publish`, `subscribe`, `metrics` and `admin`, and TOKEN is the
//! secret itself or `sha256:` and its hex digest. Only SHA-256 digests are kept in memory; a
//! presented token is hashed and compared against every digest in constant time. Tokens are
//! never logged.
//!
//! Health and reflection stay open: [`Authorized`] wraps only the StoryService. The HTTP face
//! checks the same tokens ([`Tokens::check_role`]), `GET /metrics` with the `metrics` role.

use std::{path::Path, sync::Arc, task::Poll};

use crate::limits::Caller;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{
    Status,
    codegen::{BoxFuture, Service, http},
    server::NamedService,
};

/// Plaintext tokens shorter than this are refused: they could be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Publish and PublishStream.
    Publish,
    /// Subscribe, GetStory, ListStories and ListEvents.
    Subscribe,
    /// `GET /metrics` on the HTTP face, and nothing else: a scraper's token, which cannot read
    /// or publish stories.
    Metrics,
    /// Everything.
    Admin,
}

impl Role {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "publish" => Some(Self::Publish),
            "subscribe" => Some(Self::Subscribe),
            "metrics" => Some(Self::Metrics),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
            Self::Metrics => "metrics",
            Self::Admin => "admin",
        }
    }
}

/// Why a tokens file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// A line is malformed (the message never contains the token).
    #[error("tokens file line {line}: {reason}")]
    Line {
        /// The 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The file names no token at all.
    #[error("the tokens file holds no token: nobody could call the StoryService")]
    Empty,
}

/// One known token.
#[derive(Debug)]
struct Token {
    /// Who holds it, for messages, logs and per-token limits.
    name: Arc<str>,
    /// SHA-256 of the secret.
    digest: [u8; 32],
    /// What it allows.
    roles: Vec<Role>,
}

/// The known tokens.
#[derive(Debug)]
pub struct Tokens {
    tokens: Vec<Token>,
}

impl Tokens {
    /// Reads a tokens file.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses the contents of a tokens file.
    pub fn parse(text: &str) -> Result<Self, TokensError> {
        let mut tokens: Vec<Token> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line_number = index + 1;
            let error = |reason: String| TokensError::Line {
                line: line_number,
                reason,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, roles, secret] = fields[..] else {
                return Err(error("expected NAME ROLES TOKEN".to_owned()));
            };
            if name == crate::service::ANONYMOUS {
                return Err(error(format!(
                    "the name {name:?} is kept for events published without a token; name the token otherwise"
                )));
            }
            let roles = roles
                .split(',')
                .map(|role| {
                    Role::parse(role).ok_or_else(|| {
                        error(format!(
                            "unknown role {role:?}: use publish, subscribe, metrics or admin"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let digest = match secret.strip_prefix("sha256:") {
                Some(hex) => parse_digest(hex)
                    .ok_or_else(|| error("sha256: needs 64 hex digits".to_owned()))?,
                None if secret.len() < MIN_TOKEN_LEN => {
                    return Err(error(format!(
                        "the token of {name} is shorter than {MIN_TOKEN_LEN} characters"
                    )));
                }
                None => Sha256::digest(secret.as_bytes()).into(),
            };
            if tokens.iter().any(|t| &*t.name == name) {
                return Err(error(format!("{name} is named twice")));
            }
            if tokens.iter().any(|t| bool::from(t.digest.ct_eq(&digest))) {
                return Err(error(format!("the token of {name} is already another's")));
            }
            tokens.push(Token {
                name: name.into(),
                digest,
                roles,
            });
        }
        if tokens.is_empty() {
            return Err(TokensError::Empty);
        }
        Ok(Self { tokens })
    }

    /// The token matching `secret`. Every known digest is compared, in constant time, so the
    /// time taken says nothing about which token (or how much of one) matched.
    fn find(&self, secret: &str) -> Option<&Token> {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut found = None;
        for token in &self.tokens {
            if bool::from(token.digest.ct_eq(&digest)) {
                found = Some(token);
            }
        }
        found
    }

    /// Checks a request's `authorization` header for `path`; `Ok` lets it through, naming the
    /// caller when a token was needed.
    pub fn check(
        &self,
        path: &str,
        authorization: Option<&http::HeaderValue>,
    ) -> Result<Option<Caller>, Status> {
        let Some(needed) = required_role(path) else {
            return Ok(None);
        };
        let method = path.rsplit('/').next().unwrap_or(path);
        self.check_role(needed, method, authorization)
    }

    /// Checks a request's `authorization` header for `what` (a method's or an endpoint's name),
    /// which needs the role `needed` (or admin); `Ok` names the caller.
    pub fn check_role(
        &self,
        needed: Role,
        what: &str,
        authorization: Option<&http::HeaderValue>,
    ) -> Result<Option<Caller>, Status> {
        let secret = authorization
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, secret) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| secret.trim())
            })
            .ok_or_else(|| {
                Status::unauthenticated(
                    "authorization: missing; send `authorization: Bearer <token>`",
                )
            })?;
        let token = self
            .find(secret)
            .ok_or_else(|| Status::unauthenticated("authorization: unknown token"))?;
        if token.roles.contains(&needed) || token.roles.contains(&Role::Admin) {
            Ok(Some(Caller {
                name: token.name.clone(),
            }))
        } else {
            let held: Vec<&str> = token.roles.iter().map(|r| r.name()).collect();
            Err(Status::permission_denied(format!(
                "token {} has the roles [{}]; {what} needs {}",
                token.name,
                held.join(", "),
                needed.name()
            )))
        }
    }
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(digest)
}

/// The role a request path needs: `None` for anything outside the StoryService (health and
/// reflection stay open), and admin for a StoryService method this server does not know.
pub fn required_role(path: &str) -> Option<Role> {
    let method = path.strip_prefix("/storywire.v1.StoryService/")?;
    Some(match method {
        "Publish" | "PublishStream" => Role::Publish,
        "Subscribe" | "GetStory" | "ListStories" | "ListEvents" => Role::Subscribe,
        _ => Role::Admin,
    })
}

/// A gRPC service that lets a request through only if its token allows the method; with no tokens
/// it lets everything through.
#[derive(Debug, Clone)]
pub struct Authorized<S> {
    /// The service behind the check.
    inner: S,
    /// The known tokens; `None` when the server runs without `--tokens`.
    tokens: Option<Arc<Tokens>>,
}

impl<S> Authorized<S> {
    /// Guards `inner` with `tokens` (or nothing, for `None`).
    pub fn new(inner: S, tokens: Option<Arc<Tokens>>) -> Self {
        Self { inner, tokens }
    }
}

impl<S: NamedService> NamedService for Authorized<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Authorized<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let verdict = match &self.tokens {
            Some(tokens) => tokens.check(
                request.uri().path(),
                request.headers().get(http::header::AUTHORIZATION),
            ),
            None => Ok(None),
        };
        match verdict {
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                Box::pin(self.inner.call(request))
            }
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}
