//! The flags of `storywire serve` that limit what one client, and one story, may take, and the
//! parsers of their values.

use std::time::Duration;

use crate::{
    connections::{self, Lifecycle, TrustedProxies},
    limits::{Limits, StoryLimits},
};

/// The limits on what one client may take (see [`Limits`] for why each default).
#[derive(Debug, clap::Args)]
pub(super) struct LimitArgs {
    /// The largest request message accepted, in bytes (beyond: OUT_OF_RANGE, as tonic reports it).
    #[arg(long, default_value_t = Limits::default().max_request_bytes)]
    max_request_bytes: usize,
    /// The largest response message sent, in bytes.
    #[arg(long, default_value_t = Limits::default().max_response_bytes)]
    max_response_bytes: usize,
    /// Streams one HTTP/2 connection may hold open at once.
    #[arg(long, default_value_t = Limits::default().max_streams_per_connection)]
    max_streams_per_connection: u32,
    /// Open subscriptions in total (RESOURCE_EXHAUSTED beyond).
    #[arg(long, default_value_t = Limits::default().max_subscribers)]
    max_subscribers: usize,
    /// Open subscriptions per token, with --tokens (RESOURCE_EXHAUSTED beyond).
    #[arg(long, default_value_t = Limits::default().max_subscribers_per_token)]
    max_subscribers_per_token: usize,
    /// Open subscriptions per client address, over gRPC, gRPC-Web and SSE together; an IPv6
    /// /64 counts as one address (RESOURCE_EXHAUSTED, 429 over HTTP, beyond). 0: no limit.
    #[arg(long, default_value_t = Limits::default().max_subscribers_per_ip)]
    max_subscribers_per_ip: usize,
    /// Seconds between keepalive pings on an idle connection.
    #[arg(long, default_value_t = Limits::default().keepalive_interval.as_secs())]
    keepalive_interval_secs: u64,
    /// Seconds a keepalive ping may go unanswered before the connection is closed.
    #[arg(long, default_value_t = Limits::default().keepalive_timeout.as_secs())]
    keepalive_timeout_secs: u64,
    /// Seconds a call may take to produce its response (streams: to open).
    #[arg(long, default_value_t = Limits::default().request_timeout.as_secs())]
    request_timeout_secs: u64,
    /// Close connections older than this many seconds, gracefully; 0: never.
    #[arg(long, default_value_t = 0)]
    max_connection_age_secs: u64,
    /// Streams a client may open and reset before the server reads them.
    #[arg(long, default_value_t = Limits::default().max_pending_accept_reset_streams)]
    max_pending_accept_reset_streams: usize,
    /// Streams the server may reset for a client's errors before it closes the connection.
    #[arg(long, default_value_t = Limits::default().max_local_error_reset_streams)]
    max_local_error_reset_streams: usize,
    /// Streams one connection may waste per second: reset by the client before any answer,
    /// within --wasted-stream-window of the call starting (answers, refusals and deadlines never
    /// count). Past the
    /// budget the server stops reading that connection until it refills. 0: no limit.
    #[arg(long, default_value_t = Limits::default().wasted_streams_per_second,
          value_parser = per_second)]
    max_wasted_streams_per_second: f64,
    /// Seconds shutdown (SIGTERM, SIGINT) waits for open streams to drain; past it, connections
    /// still open (a subscriber that stopped reading) are cut off and the process exits.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().shutdown_grace.as_secs_f64(),
          value_parser = seconds)]
    shutdown_grace: f64,
    /// Streams one connection may waste at once before --max-wasted-streams-per-second applies.
    #[arg(long, default_value_t = Limits::default().wasted_streams_burst)]
    wasted_streams_burst: u32,
    /// Seconds after a call starts within which its stream, reset unanswered, counts as wasted.
    /// Deadlines shorter than this that expire count too.
    #[arg(long, value_name = "SECONDS", default_value_t = Limits::default().wasted_stream_window.as_secs_f64(),
          value_parser = positive_seconds)]
    wasted_stream_window: f64,
}

impl From<LimitArgs> for Limits {
    fn from(args: LimitArgs) -> Self {
        Self {
            max_request_bytes: args.max_request_bytes,
            max_response_bytes: args.max_response_bytes,
            max_streams_per_connection: args.max_streams_per_connection,
            max_subscribers: args.max_subscribers,
            max_subscribers_per_token: args.max_subscribers_per_token,
            max_subscribers_per_ip: args.max_subscribers_per_ip,
            keepalive_interval: Duration::from_secs(args.keepalive_interval_secs.max(1)),
            keepalive_timeout: Duration::from_secs(args.keepalive_timeout_secs.max(1)),
            request_timeout: Duration::from_secs(args.request_timeout_secs.max(1)),
            max_connection_age: (args.max_connection_age_secs > 0)
                .then(|| Duration::from_secs(args.max_connection_age_secs)),
            max_pending_accept_reset_streams: args.max_pending_accept_reset_streams,
            max_local_error_reset_streams: args.max_local_error_reset_streams,
            wasted_streams_per_second: args.max_wasted_streams_per_second,
            wasted_streams_burst: args.wasted_streams_burst,
            wasted_stream_window: Duration::from_secs_f64(args.wasted_stream_window),
            shutdown_grace: Duration::from_secs_f64(args.shutdown_grace),
        }
    }
}

/// How long a connection may stay silent or idle, and how many one address, and all, may hold
/// (see [`crate::connections`] for why each default).
#[derive(Debug, clap::Args)]
pub(super) struct ConnectionArgs {
    /// Seconds a connection, on either face, may take to send a complete request head (HTTP/1.1)
    /// or its preface and first request (HTTP/2), TLS handshake included; and, on HTTP/1.1,
    /// each next request head once it has started. Past it, the connection is closed.
    #[arg(long, value_name = "SECS", default_value_t = connections::DEFAULT_HEADER_TIMEOUT.as_secs_f64(),
          value_parser = positive_seconds)]
    header_timeout: f64,
    /// Seconds a connection with no request or stream in flight stays open (an open Subscribe
    /// or SSE stream is in flight); then it is closed (HTTP/2: with GOAWAY).
    #[arg(long, value_name = "SECS", default_value_t = connections::DEFAULT_IDLE_TIMEOUT.as_secs_f64(),
          value_parser = positive_seconds)]
    idle_timeout: f64,
    /// Open connections over both faces; past it a new one is closed at once. Default: the
    /// open-files limit less what the server keeps for its own files (5% and 64).
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    max_connections: Option<usize>,
    /// Open connections from one client address over both faces; past it a new one is closed
    /// at once. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = connections::DEFAULT_MAX_CONNECTIONS_PER_IP)]
    max_connections_per_ip: usize,
    /// A reverse proxy or CDN (address or CIDR range) whose Forwarded / X-Forwarded-For headers
    /// name the client for the per-address limits; repeatable. Nobody else's are believed.
    #[arg(long, value_name = "CIDR", value_parser = connections::parse_cidr)]
    trusted_proxy: Vec<(std::net::IpAddr, u8)>,
}

impl ConnectionArgs {
    /// The rules, with `--max-connections` derived from `open_files_limit` when not given.
    pub(super) fn lifecycle(&self, open_files_limit: Option<u64>) -> Lifecycle {
        Lifecycle {
            header_timeout: Duration::from_secs_f64(self.header_timeout),
            idle_timeout: Duration::from_secs_f64(self.idle_timeout),
            max_connections: self.max_connections.unwrap_or_else(|| {
                connections::default_max_connections(open_files_limit.unwrap_or(1024))
            }),
            max_connections_per_ip: self.max_connections_per_ip,
            trusted_proxies: TrustedProxies::new(self.trusted_proxy.clone()),
        }
    }
}

/// What one story may hold (see [`StoryLimits`] for why each default). Beyond each, a publish is
/// FAILED_PRECONDITION; events already in the log are never refused.
#[derive(Debug, clap::Args)]
pub(super) struct StoryLimitArgs {
    /// Facts one story may hold.
    #[arg(long, default_value_t = StoryLimits::default().max_facts_per_story)]
    max_facts_per_story: usize,
    /// Context notes one story may hold.
    #[arg(long, default_value_t = StoryLimits::default().max_notes_per_story)]
    max_notes_per_story: usize,
    /// Attributions one fact may gather, over its report and status changes.
    #[arg(long, default_value_t = StoryLimits::default().max_attributions_per_fact)]
    max_attributions_per_fact: usize,
    /// A story's size as a protobuf message, in bytes; at most half of --max-response-bytes. Its
    /// history of corrections and status changes may take it a quarter further.
    #[arg(long, default_value_t = StoryLimits::default().max_story_bytes)]
    max_story_bytes: usize,
}

impl From<StoryLimitArgs> for StoryLimits {
    fn from(args: StoryLimitArgs) -> Self {
        Self {
            max_facts_per_story: args.max_facts_per_story,
            max_notes_per_story: args.max_notes_per_story,
            max_attributions_per_fact: args.max_attributions_per_fact,
            max_story_bytes: args.max_story_bytes,
        }
    }
}

/// Refuses a story size limit the server could not send: a story goes whole into one response
/// (GetStory, a ListStories page, a Subscribe snapshot), which needs room beside it.
pub(super) fn check_story_bytes(story: &StoryLimits, limits: &Limits) -> Result<(), String> {
    if story.max_story_bytes > limits.max_response_bytes / 2 {
        return Err(format!(
            "--max-story-bytes {} is more than half of --max-response-bytes {}: a story is sent whole in one response, which needs room beside it; lower the one or raise the other",
            story.max_story_bytes, limits.max_response_bytes
        ));
    }
    Ok(())
}

/// Parses a count that must be at least 1.
pub(super) fn at_least_one(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(count) => Ok(count),
        Err(e) => Err(e.to_string()),
    }
}

/// Parses a duration in seconds: 0 or more, finite, at most a day.
fn seconds(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(seconds) if (0.0..=86_400.0).contains(&seconds) => Ok(seconds),
        Ok(_) => Err("must be between 0 and 86400 seconds".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// Parses a duration in seconds that must be more than 0 (at most a day).
fn positive_seconds(value: &str) -> Result<f64, String> {
    match seconds(value)? {
        0.0 => Err("must be more than 0 seconds".to_owned()),
        seconds => Ok(seconds),
    }
}

/// Parses a rate: 0 (off), or from one a day (0.0000116) up.
fn per_second(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(rate) if rate == 0.0 || (rate.is_finite() && rate >= 1.0 / 86_400.0) => Ok(rate),
        Ok(_) => Err("must be 0 (no limit) or at least one a day (0.0000116)".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}
