//! Who may call what: named bearer tokens with roles, checked before any StoryService method runs.
//!
//! The tokens file (`serve --tokens FILE`) has one token a line, `NAME ROLES TOKEN`, where ROLES is
//! a comma-separated list of `publish`, `subscribe`, `metrics` and `admin`, and TOKEN is the
//! secret itself or `sha256:` and its hex digest. Only SHA-256 digests are kept in memory; a
//! presented token is hashed and compared against every digest in constant time. Tokens are
//! never logged.
//!
//! The file is read again on SIGHUP ([`Tokens::reload`]): every holder of the shared [`Tokens`]
//! sees the new set at once, and a stream opened with a token the file no longer holds ends
//! ([`Caller::revoked`]).
//!
//! Health and reflection stay open: [`Authorized`] wraps only the StoryService. The HTTP face
//! checks the same tokens ([`Tokens::check_role`]), `GET /metrics` with the `metrics` role.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    task::Poll,
};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tonic::{
    Status,
    codegen::{BoxFuture, Service, http},
    server::NamedService,
};

/// Who an event is published by when the server takes no tokens; no token may take the name.
pub const ANONYMOUS: &str = "anonymous";

/// Plaintext tokens shorter than this are refused: they could be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Publish and PublishStream.
    Publish,
    /// Subscribe, GetStory, ListStories and ListEvents.
    Subscribe,
    /// Named consumers: CreateConsumer, GetConsumer, ListConsumers, DeleteConsumer, Ack, and
    /// Subscribe with `consumer` (which needs `subscribe` too). A pipeline's token:
    /// `subscribe,consume`.
    Consume,
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
            "consume" => Some(Self::Consume),
            "metrics" => Some(Self::Metrics),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
            Self::Consume => "consume",
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
    /// The tokens were not read from a file, so there is none to read again.
    #[error("the tokens were not read from a file")]
    NoFile,
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

/// The known tokens, shared by every check on both faces; a reload replaces them in place.
#[derive(Debug)]
pub struct Tokens {
    /// The file they were read from, read again by [`Tokens::reload`]; `None` when parsed from
    /// text.
    path: Option<PathBuf>,
    /// The tokens in force. A reload swaps in a new list whole; a check clones the `Arc` and
    /// lets go of the lock before it compares anything.
    known: RwLock<Arc<Vec<Token>>>,
    /// Counts the reloads that put a new list in `known`. Every stream opened with a token
    /// watches it ([`Caller::revoked`]); this end stays here.
    reloads: watch::Sender<u64>,
}

impl Tokens {
    /// Reads a tokens file.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let mut tokens = Self::parse(&read(path)?)?;
        tokens.path = Some(path.to_owned());
        Ok(tokens)
    }

    /// Reads the file again and, if it is valid, puts its tokens in force for every check from
    /// now on, and ends the streams whose token it no longer holds (or no longer allows their
    /// call); returns how many tokens it holds. On an error the tokens in force stay.
    pub fn reload(&self) -> Result<usize, TokensError> {
        let path = self.path.as_deref().ok_or(TokensError::NoFile)?;
        let fresh = Self::parse_tokens(&read(path)?)?;
        let count = fresh.len();
        *self.known.write().expect("tokens lock poisoned") = Arc::new(fresh);
        self.reloads.send_modify(|reloads| *reloads += 1);
        Ok(count)
    }

    /// The file the tokens were read from, if they were.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Parses the contents of a tokens file.
    pub fn parse(text: &str) -> Result<Self, TokensError> {
        Ok(Self {
            path: None,
            known: RwLock::new(Arc::new(Self::parse_tokens(text)?)),
            reloads: watch::channel(0).0,
        })
    }

    /// The tokens of a tokens file's contents.
    fn parse_tokens(text: &str) -> Result<Vec<Token>, TokensError> {
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
            if name == ANONYMOUS {
                return Err(error(format!(
                    "the name {name:?} is kept for events published without a token; name the token otherwise"
                )));
            }
            let roles = roles
                .split(',')
                .map(|role| {
                    Role::parse(role).ok_or_else(|| {
                        error(format!(
                            "unknown role {role:?}: use publish, subscribe, consume, metrics or admin"
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
        Ok(tokens)
    }

    /// The tokens in force.
    fn known(&self) -> Arc<Vec<Token>> {
        self.known.read().expect("tokens lock poisoned").clone()
    }

    /// Checks a request's `authorization` header for `path`; `Ok` lets it through, naming the
    /// caller when a token was needed.
    pub fn check(
        self: &Arc<Self>,
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
        self: &Arc<Self>,
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
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let name = self.admit(&digest, needed, what).map_err(Refused::status)?;
        Ok(Some(Caller {
            name,
            digest,
            needed,
            what: what.into(),
            tokens: self.clone(),
        }))
    }

    /// The name of the token whose digest is `digest`, if it is in force and allows `needed`.
    /// Every known digest is compared, in constant time, so the time taken says nothing about
    /// which token (or how much of one) matched.
    fn admit(&self, digest: &[u8; 32], needed: Role, what: &str) -> Result<Arc<str>, Refused> {
        let known = self.known();
        let mut found = None;
        for token in known.iter() {
            if bool::from(token.digest.ct_eq(digest)) {
                found = Some(token);
            }
        }
        let token = found.ok_or(Refused::Unknown)?;
        if token.roles.contains(&needed) || token.roles.contains(&Role::Admin) {
            Ok(token.name.clone())
        } else {
            let held: Vec<&str> = token.roles.iter().map(|r| r.name()).collect();
            Err(Refused::Role(format!(
                "token {} has the roles [{}]; {what} needs {}",
                token.name,
                held.join(", "),
                needed.name()
            )))
        }
    }
}

/// Why a token was not admitted.
enum Refused {
    /// No token in force has its digest.
    Unknown,
    /// It lacks the role: the message says which it has and which was needed.
    Role(String),
}

impl Refused {
    fn status(self) -> Status {
        match self {
            Self::Unknown => Status::unauthenticated("authorization: unknown token"),
            Self::Role(message) => Status::permission_denied(message),
        }
    }
}

/// The contents of the tokens file at `path`.
fn read(path: &Path) -> Result<String, TokensError> {
    std::fs::read_to_string(path).map_err(|source| TokensError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Who is calling, as the authorization check found: put in the request's extensions.
#[derive(Clone)]
pub struct Caller {
    /// The token's name.
    pub name: Arc<str>,
    /// The SHA-256 of the token it presented, checked again after each reload.
    digest: [u8; 32],
    /// The role its call needed.
    needed: Role,
    /// The call, for the message when the role is taken away.
    what: Arc<str>,
    /// The tokens that admitted it, whose reloads it watches.
    tokens: Arc<Tokens>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The name only: a digest of a secret has no business in a log line.
        f.debug_struct("Caller")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Caller {
    /// Whether the caller's token also allows `role` (or is admin), for a call whose request
    /// asks for more than its method does (`what` names it in the PERMISSION_DENIED message).
    pub fn allows(&self, role: Role, what: &str) -> Result<(), Status> {
        self.tokens
            .admit(&self.digest, role, what)
            .map(|_| ())
            .map_err(Refused::status)
    }

    /// Completes once a reload of the tokens file has taken the caller's token away
    /// (UNAUTHENTICATED) or the role its call needed (PERMISSION_DENIED), with the status a
    /// stream it opened ends with. Pending for as long as the token still allows the call.
    pub async fn revoked(&self) -> Status {
        // Subscribed before the check, so that a reload between the two is not missed.
        let mut reloads = self.tokens.reloads.subscribe();
        loop {
            match self.tokens.admit(&self.digest, self.needed, &self.what) {
                Ok(_) => {}
                Err(Refused::Unknown) => {
                    return Status::unauthenticated(format!(
                        "authorization: token {} was revoked",
                        self.name
                    ));
                }
                Err(refused) => return refused.status(),
            }
            if reloads.changed().await.is_err() {
                // The sender lives in `tokens`, which this holds: never.
                return std::future::pending().await;
            }
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
        "CreateConsumer" | "GetConsumer" | "ListConsumers" | "DeleteConsumer" | "Ack" => {
            Role::Consume
        }
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
