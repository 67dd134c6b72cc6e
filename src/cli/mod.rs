//! The `storywire` command: `serve`, and the client subcommands that talk to a server.
//!
//! Each subcommand lives in its own file with its arguments and its `run`. Client subcommands
//! print for people by default and proto3 JSON with `--json`, one item a line; the long runs of
//! `publish` and `subscribe --from` show their progress on stderr where a person watches it.

/// Prints a line on stdout. Unlike `println!` it returns an error instead of panicking when stdout
/// is closed (piped into `head`, say); `main` treats that as a quiet end.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod consumers;
mod health;
mod progress;
mod publish;
mod serve;
mod stories;
mod subscribe;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand};
use tonic::{
    Status,
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::{limits::DEFAULT_MAX_RESPONSE_BYTES, pb::story_service_client::StoryServiceClient};

/// The server clients talk to when neither `--server` nor `STORYWIRE_SERVER` says otherwise: the
/// address `serve` listens on by default.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";
/// How long a client waits for a connection before it reports the server unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a PEM certificate begins; a --ca file without one holds nothing to trust.
const PEM_CERTIFICATE: &[u8] = b"-----BEGIN CERTIFICATE-----";

/// A StoryService client as [`Connect::client`] makes it: sending the token, if any.
type StoryClient = StoryServiceClient<InterceptedService<Channel, BearerToken>>;

/// What a subcommand can fail with: printed once, at the edge, with exit code 1.
type CliError = Box<dyn std::error::Error + Send + Sync>;

/// storywire: live story updates over gRPC.
#[derive(Debug, Parser)]
#[command(name = "storywire", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (add --demo for the seed story and its live updates).
    Serve(Box<serve::Args>),
    /// Publish updates: JSON Lines of PublishRequest (proto3 JSON), from a file or stdin.
    Publish(publish::Args),
    /// Watch updates arrive, in order; resumes by itself after a dropped connection.
    Subscribe(subscribe::Args),
    /// Show one story's current state (or its state as of a version).
    Story(stories::StoryArgs),
    /// List stories.
    Stories(stories::ListArgs),
    /// Check that the server is serving: exit 0 when it is.
    Health(health::Args),
    /// List, show, create or delete the named consumers the server keeps for pipelines.
    Consumers(consumers::Args),
}

/// Where a client subcommand connects, and as whom.
#[derive(Debug, Clone, clap::Args)]
pub struct Connect {
    /// The server's address.
    #[arg(long, env = "STORYWIRE_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// The bearer token to send, for a server started with --tokens.
    #[arg(long, env = "STORYWIRE_TOKEN", hide_env_values = true)]
    pub token: Option<Secret>,
    /// For an https:// server: the CA certificate (PEM) that signed the server's certificate.
    /// Required with https://, since this build trusts no platform roots.
    #[arg(long, env = "STORYWIRE_CA", value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// For an https:// server that requires client certificates (mutual TLS): this client's
    /// certificate chain (PEM); needs --key.
    #[arg(long, env = "STORYWIRE_CERT", value_name = "PEM", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, env = "STORYWIRE_KEY", value_name = "PEM", requires = "cert")]
    pub key: Option<PathBuf>,
}

/// A secret given on the command line: its Debug output never shows it.
#[derive(Clone)]
pub struct Secret(String);

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Adds `authorization: Bearer <token>` to every call, when there is a token.
#[derive(Clone)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl Connect {
    /// A channel to the server, over TLS for an https:// URL. Connects lazily: the first call
    /// reports an unreachable server or a failed handshake; a missing or unreadable PEM file is
    /// reported here.
    fn channel(&self) -> Result<Channel, CliError> {
        let mut endpoint = Endpoint::from_shared(self.server.clone())
            .map_err(|e| format!("--server {:?} is not a valid URL: {e}", self.server))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(tls) = self.tls_config(&endpoint)? {
            // tonic's error says only "transport error"; the reason (a key rustls cannot parse,
            // say) is its source.
            endpoint = endpoint.tls_config(tls).map_err(|e| {
                let reason = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
                format!("the PEM files of --ca, --cert, --key: {reason}")
            })?;
        }
        Ok(endpoint.connect_lazy())
    }

    /// The TLS settings for `endpoint`: `None` for http://, which must then have no TLS flags.
    fn tls_config(&self, endpoint: &Endpoint) -> Result<Option<ClientTlsConfig>, CliError> {
        let uri = endpoint.uri();
        let flags = [
            ("--ca", &self.ca),
            ("--cert", &self.cert),
            ("--key", &self.key),
        ];
        if uri.scheme_str() != Some("https") {
            if let Some((flag, _)) = flags.iter().find(|(_, path)| path.is_some()) {
                return Err(format!("{flag} needs an https:// server, not {}", self.server).into());
            }
            return Ok(None);
        }
        // tonic finds platform roots only with a feature this build leaves out (tls-native-roots),
        // so the CA must be named: without it every certificate would be refused, less clearly.
        let ca_path = self.ca.as_deref().ok_or_else(|| {
            format!(
                "--server {} needs --ca PEM (or STORYWIRE_CA): the CA certificate that signed \
                 the server's certificate (this build does not read the platform's roots)",
                self.server
            )
        })?;
        let ca = read_pem("--ca", ca_path)?;
        // rustls skips what it cannot parse, which would leave nothing to trust and a handshake
        // failing with "unknown issuer"; say what is wrong instead.
        if !ca
            .windows(PEM_CERTIFICATE.len())
            .any(|w| w == PEM_CERTIFICATE)
        {
            return Err(format!("--ca {}: no PEM certificate in it", ca_path.display()).into());
        }
        // Strip the brackets of an IPv6 literal: the name checked is the address itself.
        let host = uri.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name(host)
            .timeout(CONNECT_TIMEOUT);
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            tls = tls.identity(Identity::from_pem(
                read_pem("--cert", cert)?,
                read_pem("--key", key)?,
            ));
        }
        Ok(Some(tls))
    }

    /// A StoryService client for the server, sending the token if there is one.
    fn client(&self) -> Result<StoryClient, CliError> {
        let token = match &self.token {
            Some(Secret(token)) => Some(
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| "--token: a token must be printable ASCII")?,
            ),
            None => None,
        };
        // gRPC clients refuse responses over 4 MiB by default; a server sends up to 16 MiB unless
        // told otherwise (a large story, a page of stories), and the CLI must read all of it.
        Ok(
            StoryServiceClient::with_interceptor(self.channel()?, BearerToken(token))
                .max_decoding_message_size(DEFAULT_MAX_RESPONSE_BYTES),
        )
    }
}

/// The contents of the PEM file given as `flag`; an error names the flag and the path.
fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()).into())
}

/// Parses the command line and runs it. Returns the process's exit code.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Serve(args) => serve::run(*args).await,
        Command::Publish(args) => publish::run(args).await,
        Command::Subscribe(args) => subscribe::run(args).await,
        Command::Story(args) => stories::run_story(args).await,
        Command::Stories(args) => stories::run_list(args).await,
        Command::Health(args) => health::run(args).await,
        Command::Consumers(args) => consumers::run(args).await,
    };
    outcome.unwrap_or_else(|error| {
        let closed_stdout = error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe);
        if closed_stdout {
            // The reader went away (`storywire subscribe | head -3`): nothing left to do.
            return ExitCode::SUCCESS;
        }
        eprintln!("error: {}", with_causes(error.as_ref()));
        ExitCode::FAILURE
    })
}

/// A status as a person reads it: `NOT_FOUND: story x not found; ...`, with the transport's
/// reason when it has one ("transport error" alone says nothing).
fn describe(status: &Status) -> String {
    let text = format!(
        "{}: {}",
        crate::codes::code_name(status.code()),
        status.message()
    );
    and_causes(text, std::error::Error::source(status))
}

/// An error and the chain of its causes, as one line joined with ": ", leaving out a cause whose
/// text the line already holds. The CLI's errors and the tests' messages use it.
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    and_causes(error.to_string(), error.source())
}

/// `text`, then `cause` and each cause beneath it that `text` does not already say.
fn and_causes(mut text: String, mut cause: Option<&(dyn std::error::Error + 'static)>) -> String {
    while let Some(error) = cause {
        let more = error.to_string();
        if !text.contains(&more) {
            text.push_str(&format!(": {more}"));
        }
        cause = error.source();
    }
    text
}

/// Prints a message as one line of proto3 JSON.
fn print_json<T: serde::Serialize>(message: &T) -> Result<(), CliError> {
    say!("{}", serde_json::to_string(message)?)?;
    Ok(())
}
