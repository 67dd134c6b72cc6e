//! The `storywire` command: `serve`, and the client subcommands that talk to a server.
//!
//! Each subcommand lives in its own file with its arguments and its `run`. Client subcommands
//! print for people by default and proto3 JSON with `--json`, one item a line.

/// Prints a line on stdout. Unlike `println!` it returns an error instead of panicking when stdout
/// is closed (piped into `head`, say); `main` treats that as a quiet end.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod format;
mod health;
mod publish;
mod serve;
mod stories;
mod subscribe;

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use tonic::{
    Status,
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};

use crate::pb::story_service_client::StoryServiceClient;

/// The server clients talk to when neither `--server` nor `STORYWIRE_SERVER` says otherwise: the
/// address `serve` listens on by default.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";
/// How long a client waits for a connection before it reports the server unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
    Serve(serve::Args),
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
    /// Run the load benchmark against storywire and a bare tonic baseline (docs/benchmarks.md).
    Bench(crate::bench::Args),
    /// The bench's bare tonic baseline server (started by `bench`).
    #[command(hide = true)]
    BenchBare {
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
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
    /// A channel to the server. Connects lazily: the first call reports an unreachable server.
    fn channel(&self) -> Result<Channel, CliError> {
        let endpoint = Endpoint::from_shared(self.server.clone())
            .map_err(|e| format!("--server {:?} is not a valid URL: {e}", self.server))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        Ok(endpoint.connect_lazy())
    }

    /// A StoryService client for the server, sending the token if there is one.
    fn client(
        &self,
    ) -> Result<StoryServiceClient<InterceptedService<Channel, BearerToken>>, CliError> {
        let token = match &self.token {
            Some(Secret(token)) => Some(
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| "--token: a token must be printable ASCII")?,
            ),
            None => None,
        };
        Ok(StoryServiceClient::with_interceptor(
            self.channel()?,
            BearerToken(token),
        ))
    }
}

/// Parses the command line and runs it. Returns the process's exit code.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Publish(args) => publish::run(args).await,
        Command::Subscribe(args) => subscribe::run(args).await,
        Command::Story(args) => stories::run_story(args).await,
        Command::Stories(args) => stories::run_list(args).await,
        Command::Health(args) => health::run(args).await,
        Command::Bench(args) => crate::bench::run(args)
            .await
            .map(|()| ExitCode::SUCCESS)
            .map_err(CliError::from),
        Command::BenchBare { listen } => bench_bare(listen).await,
    };
    outcome.unwrap_or_else(|error| {
        let closed_stdout = error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe);
        if closed_stdout {
            // The reader went away (`storywire subscribe | head -3`): nothing left to do.
            return ExitCode::SUCCESS;
        }
        eprintln!("error: {error}");
        ExitCode::FAILURE
    })
}

/// Runs the bench's bare baseline server, announcing its address on stderr as `serve` does.
async fn bench_bare(listen: std::net::SocketAddr) -> Result<ExitCode, CliError> {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("STORYWIRE_BARE_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("bare listening address={}", listener.local_addr()?);
    crate::bench::bare::serve(listener).await?;
    Ok(ExitCode::SUCCESS)
}

/// A status as a person reads it: `NOT_FOUND: story x not found; ...`.
fn describe(status: &Status) -> String {
    format!("{}: {}", code_name(status.code()), status.message())
}

/// The canonical upper-case name of a gRPC code, as grpcurl and the gRPC docs print it.
fn code_name(code: tonic::Code) -> String {
    let camel = format!("{code:?}");
    let mut name = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// Prints a message as one line of proto3 JSON.
fn print_json<T: serde::Serialize>(message: &T) -> Result<(), CliError> {
    say!("{}", serde_json::to_string(message)?)?;
    Ok(())
}
