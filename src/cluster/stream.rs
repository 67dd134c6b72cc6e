//! Reaching the stream: connecting to NATS, creating the stream or checking that an existing one
//! can serve, the `log_id` it gives the log, and the fsync warning.

use std::time::Duration;

use async_nats::{
    Client, ConnectOptions,
    jetstream::{
        self, ErrorCode,
        context::GetStreamErrorKind,
        stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
    },
};
use tokio::sync::watch;

use super::{ClusterError, NatsConfig};

/// How long a JetStream API call may take before it counts as unreachable.
pub const API_TIMEOUT: Duration = Duration::from_secs(5);

/// How long start-up keeps trying to reach the servers before giving up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The subjects a stream named `stream` holds: one per story.
pub fn subjects(stream: &str) -> String {
    format!("{stream}.story.*")
}

/// The subject of one story's events.
pub fn subject(stream: &str, story_id: &str) -> String {
    format!("{stream}.story.{story_id}")
}

/// Refuses a stream name that cannot also name its subjects and its snapshot bucket.
pub fn check_name(stream: &str) -> Result<(), ClusterError> {
    let valid = !stream.is_empty()
        && stream.len() <= 64
        && stream
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(ClusterError::Config(format!(
            "--nats-stream {stream:?}: use 1 to 64 letters, digits, '_' and '-'"
        )))
    }
}

/// Connects to the servers, reconnecting by itself from then on; `connected` follows the
/// connection. Start-up waits at most [`CONNECT_TIMEOUT`] for the first connection.
pub async fn connect(
    config: &NatsConfig,
    connected: watch::Sender<bool>,
) -> Result<Client, ClusterError> {
    let mut state = connected.subscribe();
    let mut options = ConnectOptions::new()
        .name("storywire")
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(API_TIMEOUT))
        .retry_on_initial_connect()
        // Back after a server restart within a second, not the client's default backoff.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(100 * u64::try_from(attempts.min(10)).unwrap_or(10))
        })
        .event_callback(move |event| {
            let connected = connected.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!("NATS: connected");
                        connected.send_replace(true);
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS: disconnected; publishes fail until it is back");
                        connected.send_replace(false);
                    }
                    other => tracing::info!(event = %other, "NATS"),
                }
            }
        });
    if let Some(creds) = &config.creds {
        options = options
            .credentials_file(creds)
            .await
            .map_err(|e| ClusterError::Config(format!("--nats-creds {}: {e}", creds.display())))?;
    }
    if let Some(ca) = &config.ca {
        if !ca.is_file() {
            return Err(ClusterError::Config(format!(
                "--nats-ca {}: no such file",
                ca.display()
            )));
        }
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let client = options
        .connect(config.servers.as_slice())
        .await
        .map_err(|e| ClusterError::Unreachable(e.to_string()))?;
    // With retry_on_initial_connect the client returns at once and connects in the background.
    tokio::time::timeout(CONNECT_TIMEOUT, state.wait_for(|up| *up))
        .await
        .map_err(|_| {
            ClusterError::Unreachable(format!(
                "no NATS server answered within {}s at {}",
                CONNECT_TIMEOUT.as_secs(),
                config.servers.join(",")
            ))
        })?
        .map_err(|_| ClusterError::Unreachable("the NATS client closed".to_owned()))?;
    Ok(client)
}

/// The stream, created if missing (file storage, `replicas`, one subject per story, at most
/// `retain` messages), or checked if it exists: a stream that cannot serve is refused, naming
/// the difference.
pub async fn ensure(
    context: &jetstream::Context,
    config: &NatsConfig,
    retain: usize,
) -> Result<stream::Stream, ClusterError> {
    let wanted = stream::Config {
        name: config.stream.clone(),
        subjects: vec![subjects(&config.stream)],
        storage: StorageType::File,
        num_replicas: usize::from(config.replicas),
        max_messages: i64::try_from(retain).unwrap_or(i64::MAX),
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        // A deleted message would be a hole in every replica; purging is the operator's call.
        deny_delete: true,
        deny_purge: true,
        description: Some("storywire: the log of record of a storywire cluster".to_owned()),
        ..Default::default()
    };
    let mut stream = match context.get_stream(&config.stream).await {
        Ok(stream) => stream,
        Err(error)
            if matches!(error.kind(), GetStreamErrorKind::JetStream(e)
                if e.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            match context.create_stream(wanted).await {
                Ok(stream) => {
                    tracing::info!(stream = %config.stream, replicas = config.replicas,
                        max_messages = retain, "NATS: created the stream");
                    stream
                }
                // Another node created it first: use theirs, if it can serve.
                Err(create) => context.get_stream(&config.stream).await.map_err(|_| {
                    ClusterError::Stream(format!(
                        "cannot create stream {} with {} replicas (--nats-replicas): {create}",
                        config.stream, config.replicas
                    ))
                })?,
            }
        }
        Err(error) => {
            return Err(ClusterError::Unreachable(format!(
                "JetStream: stream {}: {error}",
                config.stream
            )));
        }
    };
    let info = stream
        .info()
        .await
        .map_err(|e| ClusterError::Unreachable(format!("JetStream stream info: {e}")))?;
    check(&config.stream, &info.config)?;
    Ok(stream)
}

/// Refuses a stream whose configuration would evict or reorder behind the replicas' backs.
pub fn check(name: &str, config: &stream::Config) -> Result<(), ClusterError> {
    let owned = subjects(name);
    let mut differences = Vec::new();
    if config.subjects != [owned.clone()] {
        differences.push(format!(
            "its subjects are {:?}, not exactly [{owned:?}]",
            config.subjects
        ));
    }
    if config.storage != StorageType::File {
        differences.push(
            "it keeps messages in memory, not in files: a restart of its servers loses the log"
                .to_owned(),
        );
    }
    if config.retention != RetentionPolicy::Limits {
        differences.push(format!(
            "its retention is {:?}, not limits",
            config.retention
        ));
    }
    if config.discard != DiscardPolicy::Old {
        differences.push("it discards new messages when full, not old ones".to_owned());
    }
    if config.max_messages <= 0 {
        differences.push(
            "it has no max_msgs: the replicas' retention follows the stream's max_msgs".to_owned(),
        );
    }
    if config.max_bytes > 0 || !config.max_age.is_zero() || config.max_messages_per_subject > 0 {
        differences.push(
            "it evicts by bytes, age or messages per subject: only max_msgs may evict".to_owned(),
        );
    }
    if config.mirror.is_some() || config.sources.as_ref().is_some_and(|s| !s.is_empty()) {
        differences.push("it is a mirror or has sources".to_owned());
    }
    if config.sealed {
        differences.push("it is sealed".to_owned());
    }
    if !config.deny_delete {
        differences.push(
            "it lets single messages be deleted, which would leave holes (deny_delete)".to_owned(),
        );
    }
    if config.persist_mode == Some(stream::PersistenceMode::Async) {
        differences.push(
            "its persist_mode is async: it acknowledges before storing, and may lose acknowledged events"
                .to_owned(),
        );
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(ClusterError::Stream(format!(
            "stream {name} cannot hold a storywire log: {}",
            differences.join("; ")
        )))
    }
}

/// The log's id: the stream's name and its creation time, the same on every node and new when
/// the stream is deleted and created again. Lowercase, so it can prefix event ids.
pub fn log_id(name: &str, info: &stream::Info) -> String {
    format!(
        "{}-{}",
        name.to_ascii_lowercase().replace('_', "-"),
        info.created.unix_timestamp_nanos()
    )
}

/// Says loudly, at start-up, that acknowledged events are only as safe as the servers' fsync:
/// JetStream's default syncs every two minutes, and a crash of the servers together can lose
/// what they acknowledged in between. The servers' setting is visible only to the system
/// account, so the node cannot confirm it and always asks.
pub fn warn_about_fsync() {
    tracing::warn!(
        "NATS: storywire cannot confirm that the JetStream servers fsync before acknowledging. \
         JetStream's default (sync_interval 2m) can lose acknowledged events when servers crash \
         together. For a newsroom's log of record run every server with \
         `jetstream {{ sync_interval: always }}` (docs/cluster.md)"
    );
}
