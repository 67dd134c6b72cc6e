//! `storywire serve`: run the server until SIGINT or SIGTERM.

use std::{
    io::IsTerminal, net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration,
};

use tracing_subscriber::EnvFilter;

use super::CliError;
use crate::{
    auth::Tokens,
    clock::SystemClock,
    cluster::{NatsConfig, Node},
    consumers::Consumers,
    cors::{self, Origins},
    demo,
    http::HttpOptions,
    limits::StoryLimits,
    listen,
    log::EventLog,
    publisher::Publisher as _,
    server::{self, ServerOptions},
    tls::{ServerTls, TlsFiles},
    wal::{self, FsyncMode, WalConfig},
    webhooks::{self, Leases, Webhooks},
};

mod flags;

use flags::{ConnectionArgs, LimitArgs, StoryLimitArgs, at_least_one, check_story_bytes};

/// Where `serve --demo` serves HTTP when --http does not say.
const DEMO_HTTP_PORT: u16 = 8080;

/// Arguments of `storywire serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The address to listen on.
    #[arg(long, env = "STORYWIRE_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// How many events stay readable for catch-up and resumption; older ones are evicted (stories
    /// keep their current state).
    #[arg(long, env = "STORYWIRE_RETAIN_EVENTS", default_value_t = crate::log::DEFAULT_RETAIN_EVENTS,
          value_parser = at_least_one)]
    retain_events: usize,
    /// Open the demo story at start-up, then publish its later updates one every --demo-interval.
    #[arg(long)]
    demo: bool,
    /// Require a bearer token with the right role for every StoryService call; the file has one
    /// `NAME ROLES TOKEN` a line (roles: publish, subscribe, metrics, admin; TOKEN may be
    /// sha256:HEX).
    #[arg(long, env = "STORYWIRE_TOKENS", value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Serve without --tokens on an address beyond loopback, where anyone who can reach it could
    /// publish. Without this flag the server refuses to.
    #[arg(long)]
    allow_anonymous: bool,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// With TLS: require client certificates signed by this CA (mutual TLS).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    story_limits: StoryLimitArgs,
    #[command(flatten)]
    connections: ConnectionArgs,
    /// Keep the log on disk in this directory (a write-ahead log), so that a restart loses
    /// nothing acknowledged. Without it the log lives in memory only.
    #[arg(
        long,
        env = "STORYWIRE_DATA_DIR",
        value_name = "DIR",
        conflicts_with = "nats"
    )]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    nats: NatsArgs,
    /// Also serve HTTP on this address: the stories as JSON and the live event stream as
    /// Server-Sent Events (docs/api.md). Off unless given; --demo turns it on at
    /// 127.0.0.1:8080.
    #[arg(long, env = "STORYWIRE_HTTP", value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// With --tokens: let anyone read over HTTP without a token (a public live page). Publishing
    /// still needs one.
    #[arg(long)]
    public_read: bool,
    /// Let web pages on this origin (scheme://host[:port], or * for any) call from a browser,
    /// over gRPC-Web and HTTP; repeatable. Without it: any origin with --tokens (a call's only
    /// credential is the token it carries), none without (the server then trusts whoever can
    /// reach it, which includes every page open in a browser on this machine).
    #[arg(long, env = "STORYWIRE_CORS_ORIGIN", value_name = "ORIGIN", value_delimiter = ',',
          value_parser = cors::parse_origin)]
    cors_origin: Vec<axum::http::HeaderValue>,
    /// With --tokens: let anyone scrape GET /metrics on the HTTP listener without a token
    /// (--public-read opens it too). Otherwise a scrape needs a token with the metrics (or
    /// admin) role.
    #[arg(long, env = "STORYWIRE_METRICS_PUBLIC")]
    metrics_public: bool,
    /// With --data-dir: when a publish is acknowledged. always: after its record is fsynced
    /// (concurrent publishers share fsyncs); batch: after it is written, fsync every
    /// --fsync-interval-ms, and readers see it after the fsync; never: after it is written,
    /// never fsynced (tests only).
    #[arg(long, value_enum, default_value_t = FsyncMode::Always)]
    fsync: FsyncMode,
    /// With --fsync batch: milliseconds between fsyncs.
    #[arg(long, default_value_t = wal::DEFAULT_BATCH_INTERVAL.as_millis() as u64)]
    fsync_interval_ms: u64,
    /// With --data-dir: start a new segment file past this many bytes.
    #[arg(long, default_value_t = wal::DEFAULT_SEGMENT_BYTES, value_parser = clap::value_parser!(u64).range(64..))]
    segment_bytes: u64,
    /// With --data-dir: if a record in the middle of the log is damaged, cut the log there (the
    /// rest is kept in .broken files) instead of refusing to start.
    #[arg(long)]
    repair: bool,
    /// POST every event matching each endpoint in this JSON file to its URL, signed as Standard
    /// Webhooks says, in order, at least once; each endpoint keeps its position as a named
    /// consumer of its name (docs/configuration.md has the format).
    #[arg(long, env = "STORYWIRE_WEBHOOKS", value_name = "FILE")]
    webhooks: Option<PathBuf>,
    /// Seconds between the demo's live updates.
    #[arg(long, default_value_t = demo::DEFAULT_INTERVAL.as_secs_f64(), requires = "demo")]
    demo_interval: f64,
}

impl Args {
    /// The NATS servers of `--nats`; empty for a server that keeps its own log. Read by
    /// tests/it/compose.rs, which parses deploy/compose.yaml's command lines with this parser.
    pub fn nats_servers(&self) -> &[String] {
        &self.nats.nats
    }
}

/// Runs the server; returns when a shutdown signal has been handled and every stream has ended.
pub async fn run(args: Args) -> Result<ExitCode, CliError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let shutdown = shutdown_signal().map_err(|e| format!("cannot watch SIGINT/SIGTERM: {e}"))?;
    let tokens = match &args.tokens {
        Some(path) => Some(Arc::new(Tokens::load(path)?)),
        None => None,
    };
    check_exposure(args.listen, tokens.is_some(), args.allow_anonymous)?;
    // Checked before anything starts, so that a mistake in it stops the server at once.
    let endpoints = args
        .webhooks
        .as_deref()
        .map(webhooks::load)
        .transpose()
        .map_err(|e| e.to_string())?;
    let http_address = args.http.or(args
        .demo
        .then(|| SocketAddr::from(([127, 0, 0, 1], DEMO_HTTP_PORT))));
    if let Some(address) = http_address.filter(|address| !address.ip().is_loopback()) {
        check_exposure(address, tokens.is_some(), args.allow_anonymous)?;
    }
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert,
            key,
            client_ca: args.tls_client_ca,
        }),
        _ => None,
    };
    // Read the TLS files now, so that a bad one stops start-up before it says it listens; SIGHUP
    // reads them again.
    let tls_config = tls.clone().map(ServerTls::load).transpose()?;
    // Before the server says it listens: SIGHUP's default action would end the process.
    reload_on_hangup(tokens.clone(), tls_config.clone())
        .map_err(|e| format!("cannot watch SIGHUP: {e}"))?;
    let cors = Origins::from_flags(args.cors_origin, tokens.is_some());
    tracing::info!(origins = %cors, "browsers: pages on these origins may call (CORS)");
    let mut options = ServerOptions {
        tokens,
        tls,
        tls_config,
        limits: args.limits.into(),
        cluster: None,
        consumers: None,
        webhooks: None,
        cors,
        lifecycle: Default::default(),
    };
    let story_limits = StoryLimits::from(args.story_limits);
    check_story_bytes(&story_limits, &options.limits)?;
    let interval = Duration::try_from_secs_f64(args.demo_interval)
        .map_err(|e| format!("--demo-interval {}: {e}", args.demo_interval))?;
    let retain = args.retain_events;
    // On a cluster: which node delivers each webhook endpoint.
    let mut leases = None;
    let log = match (&args.data_dir, args.nats.config()) {
        (_, Some(nats)) => {
            if args.demo {
                return Err("--demo cannot be combined with --nats: the demo story belongs to a node of its own".into());
            }
            let node = Node::start(&nats, retain, Arc::new(SystemClock))
                .await
                .map_err(|e| format!("--nats: {e}"))?;
            let log = node.log().clone();
            // Every node serves every consumer: they are kept in the cluster, beside the stream.
            let (context, stream, replicas) = node.jetstream();
            let consumers = Consumers::shared(context, stream, replicas, Arc::new(SystemClock));
            options.consumers = Some(consumers);
            if endpoints.is_some() {
                leases = Some(
                    Leases::open(context, stream, replicas)
                        .await
                        .map_err(|e| format!("--nats: {e}"))?,
                );
            }
            options.cluster = Some(node);
            log
        }
        (Some(dir), None) => {
            let config = WalConfig {
                dir: dir.clone(),
                fsync: args.fsync,
                batch_interval: Duration::from_millis(args.fsync_interval_ms.max(1)),
                segment_bytes: args.segment_bytes,
                repair: args.repair,
            };
            let log = EventLog::open(retain, Arc::new(SystemClock), &config)
                .map_err(|e| format!("cannot open the log in {}: {e}", dir.display()))?;
            // The consumers' positions are kept beside the log, and as durably.
            let consumers = Consumers::open(dir, Arc::new(SystemClock))
                .map_err(|e| format!("cannot open the consumers in {}: {e}", dir.display()))?;
            options.consumers = Some(consumers);
            log
        }
        (None, None) => {
            if args.repair {
                return Err("--repair needs --data-dir".into());
            }
            // Named here (the service would make the same) so that the webhooks share it.
            options.consumers = Some(Consumers::in_memory(Arc::new(SystemClock)));
            Arc::new(EventLog::new(retain, Arc::new(SystemClock)))
        }
    };
    log.set_story_limits(story_limits);
    // Every reader's connection is a descriptor: take what the hard limit allows before the
    // first reader comes.
    let open_files = crate::descriptors::raise_open_files_limit()
        .inspect_err(|error| tracing::warn!(%error, "cannot raise the open-files limit"))
        .ok();
    options.lifecycle = args.connections.lifecycle(open_files);
    let listener =
        listen::bind(args.listen).map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(
        %address,
        log_id = log.log_id(),
        retain_events = log.retain_events(),
        backlog = listen::granted_backlog(),
        open_files,
        max_connections = options.lifecycle.max_connections,
        max_connections_per_ip = options.lifecycle.max_connections_per_ip,
        "storywire listening"
    );

    // Kept until the server has stopped; dropping it stops every deliverer.
    let webhooks = match (endpoints, &options.consumers) {
        (Some(endpoints), Some(consumers)) => {
            Some(Webhooks::start(endpoints, log.clone(), consumers.clone(), leases).await?)
        }
        _ => None,
    };
    options.webhooks = webhooks.as_ref().map(Webhooks::states);

    let replay = if args.demo {
        demo::publish_seed(&log)?;
        tracing::info!(
            head = log.head(),
            "demo: seed story published; try `storywire subscribe --from 1`"
        );
        let log = log.clone();
        Some(tokio::spawn(async move {
            if let Err(error) = demo::replay_live(&log, interval).await {
                tracing::error!(%error, "demo: replay stopped");
            }
        }))
    } else {
        None
    };

    let http = match http_address {
        Some(address) => {
            let listener = match listen::bind(address) {
                Ok(listener) => listener,
                // The demo's own default may be taken: any free port will do for a demo.
                Err(e) if args.http.is_none() && e.kind() == std::io::ErrorKind::AddrInUse => {
                    tracing::warn!(%address, "demo: the HTTP port is taken; using a free one");
                    listen::bind(SocketAddr::new(address.ip(), 0))?
                }
                Err(e) => return Err(format!("--http: cannot listen on {address}: {e}").into()),
            };
            let bound = listener.local_addr()?;
            let page = if args.demo {
                format!("http://{bound}/stories/{}", demo::STORY_ID)
            } else {
                format!("http://{bound}/")
            };
            let page = if options.tls.is_some() {
                page.replacen("http://", "https://", 1)
            } else {
                page
            };
            tracing::info!(address = %bound, %page, "storywire HTTP listening");
            if options.tls.is_none() && options.tokens.is_some() && !bound.ip().is_loopback() {
                tracing::warn!(
                    address = %bound,
                    "--http listens beyond loopback in plain text with --tokens: bearer tokens \
                     would cross the network in clear; give --tls-cert and --tls-key (the HTTP \
                     face then serves HTTPS), or put a TLS proxy in front"
                );
            }
            let http_options = HttpOptions {
                tokens: options.tokens.clone(),
                public_read: args.public_read,
                cors: options.cors.clone(),
                metrics_public: args.metrics_public,
            };
            Some((listener, http_options))
        }
        None => None,
    };
    server::run_with_http(listener, http, log.clone(), options, shutdown).await?;
    if let Some(webhooks) = webhooks {
        webhooks.stop().await;
    }
    // With a data directory: write and sync what is left before exiting.
    log.close();
    if let Some(replay) = replay {
        replay.abort();
    }
    tracing::info!("storywire stopped");
    Ok(ExitCode::SUCCESS)
}

/// Where a node of a cluster keeps its log: a NATS JetStream stream (docs/cluster.md).
#[derive(Debug, clap::Args)]
struct NatsArgs {
    /// Keep the log in a NATS JetStream stream shared by every node started with the same
    /// servers and stream: comma-separated server URLs. Excludes --data-dir.
    #[arg(
        long,
        env = "STORYWIRE_NATS",
        value_name = "URLS",
        value_delimiter = ','
    )]
    nats: Vec<String>,
    /// With --nats: the stream's name; its subjects are `<NAME>.story.<story_id>`.
    #[arg(long, env = "STORYWIRE_NATS_STREAM", value_name = "NAME", default_value = crate::cluster::DEFAULT_STREAM,
          requires = "nats")]
    nats_stream: String,
    /// With --nats: how many JetStream servers keep the stream when this node creates it (1, 3
    /// or 5; an existing stream keeps its own).
    #[arg(long, default_value_t = crate::cluster::DEFAULT_REPLICAS, requires = "nats",
          value_parser = clap::value_parser!(u8).range(1..=5))]
    nats_replicas: u8,
    /// With --nats: a NATS credentials file (JWT and NKey seed) to connect with.
    #[arg(
        long,
        env = "STORYWIRE_NATS_CREDS",
        value_name = "FILE",
        requires = "nats"
    )]
    nats_creds: Option<PathBuf>,
    /// With --nats: trust this CA (PEM) for the servers' TLS certificates.
    #[arg(long, env = "STORYWIRE_NATS_CA", value_name = "PEM", requires = "nats")]
    nats_ca: Option<PathBuf>,
}

impl NatsArgs {
    /// The cluster configuration, when --nats is given.
    fn config(&self) -> Option<NatsConfig> {
        let servers: Vec<String> = self
            .nats
            .iter()
            .map(|url| url.trim().to_owned())
            .filter(|url| !url.is_empty())
            .collect();
        (!servers.is_empty()).then(|| NatsConfig {
            servers,
            stream: self.nats_stream.clone(),
            replicas: self.nats_replicas,
            creds: self.nats_creds.clone(),
            ca: self.nats_ca.clone(),
        })
    }
}

/// Refuses to serve anonymously beyond loopback unless told to: a forged update on a live story
/// is worse than an outage.
fn check_exposure(listen: SocketAddr, tokens: bool, allow_anonymous: bool) -> Result<(), String> {
    if tokens {
        tracing::info!("StoryService calls need a bearer token");
    } else if listen.ip().is_loopback() {
        tracing::info!("no --tokens: anyone on this machine may call the StoryService");
    } else if allow_anonymous {
        tracing::warn!(%listen, "no --tokens and --allow-anonymous: anyone who can reach this address may publish");
    } else {
        return Err(format!(
            "refusing to listen on {listen} without --tokens: anyone who can reach it could publish. Give --tokens FILE, listen on loopback, or pass --allow-anonymous to accept that"
        ));
    }
    Ok(())
}

/// Reads the tokens file and the TLS certificate and key again on each SIGHUP, so that a token
/// is revoked and a renewed certificate taken without a restart (which would drop every reader).
/// A file that cannot be used is refused with an error naming it, and what is in force stays.
///
/// The handler is installed when this is called, before the server says it listens.
fn reload_on_hangup(
    tokens: Option<Arc<Tokens>>,
    tls: Option<Arc<ServerTls>>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            reload(tokens.as_deref(), tls.as_deref());
        }
    });
    Ok(())
}

/// One reload, logged: what was read again, or why a file was refused.
fn reload(tokens: Option<&Tokens>, tls: Option<&ServerTls>) {
    if tokens.is_none() && tls.is_none() {
        tracing::info!("SIGHUP: no --tokens and no TLS; nothing to read again");
    }
    if let Some(tokens) = tokens {
        let file = tokens.path().map(|path| path.display().to_string());
        let file = file.unwrap_or_default();
        match tokens.reload() {
            Ok(count) => tracing::info!(
                %file,
                tokens = count,
                "SIGHUP: tokens reloaded; streams opened with a token no longer in the file end"
            ),
            Err(error) => tracing::error!(
                %file,
                %error,
                "SIGHUP: tokens file refused; the tokens in force stay"
            ),
        }
    }
    if let Some(tls) = tls {
        let cert = tls.files().cert.display().to_string();
        match tls.reload() {
            Ok(()) => tracing::info!(
                %cert,
                "SIGHUP: TLS certificate and key reloaded; new connections use them"
            ),
            Err(error) => tracing::error!(
                %error,
                "SIGHUP: TLS files refused; the certificate in force stays"
            ),
        }
    }
}

/// A future that completes on SIGINT (Ctrl-C) or SIGTERM (what `docker stop` and systemd send).
///
/// Both handlers are installed when this is called, not when the future is first polled, so a
/// signal that arrives right after the server says it is listening still shuts it down cleanly.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
