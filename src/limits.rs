//! The numbers that bound what one client can take from the server and what one story may hold,
//! with their defaults, and the subscriber slots that enforce two of them.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::auth::Caller;

/// A limit a new subscription would break. The service maps both to RESOURCE_EXHAUSTED.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The server holds its limit of subscriptions.
    #[error("the server already holds its limit of {max} subscriptions; try again later")]
    Subscribers {
        /// The limit.
        max: usize,
    },
    /// The caller's token holds its limit of subscriptions.
    #[error("token {name} already holds its limit of {max} subscriptions")]
    SubscribersPerToken {
        /// The token's name.
        name: Arc<str>,
        /// The limit.
        max: usize,
    },
}

/// The largest response message a server sends by default (`--max-response-bytes`), in bytes.
/// The CLI accepts responses this large, so that it can read anything a server with the default
/// sends; gRPC clients accept 4 MiB unless told otherwise.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// What the server lets clients take. Each has a `serve` flag; the defaults are documented there
/// and in SECURITY.md.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest request message accepted, in bytes: well above any valid request (a headline is
    /// 200 characters, a statement 2,000, 50 attributions), far below what could strain memory.
    pub max_request_bytes: usize,
    /// The largest response message sent, in bytes: a page of whole stories stays far below it.
    pub max_response_bytes: usize,
    /// Streams one HTTP/2 connection may hold open at once.
    pub max_streams_per_connection: u32,
    /// Open subscriptions in total: about 7 KiB each while idle and about 25 KiB for one whose
    /// reader has stopped (docs/benchmarks.md), so the default holds at most about 1.2 GiB.
    pub max_subscribers: usize,
    /// Open subscriptions per token (with `--tokens`), so one client cannot take every slot.
    pub max_subscribers_per_token: usize,
    /// How often idle connections are pinged, so dead peers are noticed.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// How long a call may take to produce its response (for streams: to open).
    pub request_timeout: Duration,
    /// Connections older than this are closed gracefully; `None`: never.
    pub max_connection_age: Option<Duration>,
    /// Streams a client may open and reset before the server reads them (hyper's guard against
    /// rapid reset floods).
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server may reset for a client's protocol errors before closing the connection.
    pub max_local_error_reset_streams: usize,
    /// Streams one connection may waste per second, over time: reset by the client before any
    /// answer, within 50 ms of the call starting (`crate::throttle::WASTED_WITHIN`). Answers,
    /// refusals included, and deadlines never count. Past its budget the server stops reading
    /// that connection until the budget allows another (`crate::throttle`); 0 turns this off.
    /// An honest client resets next to nothing that fast; 10 a second keeps a connection that
    /// resets streams in a loop to a few hundredths of a core (docs/benchmarks.md).
    pub wasted_streams_per_second: f64,
    /// How long shutdown waits for open streams and calls to finish after it starts. A
    /// subscriber that stopped reading never drains its stream, and without a deadline it would
    /// hold the process (and the write-ahead log) open forever; 10 s lets every reader that is
    /// reading receive the rest, and is less than the 30 s a container manager waits before
    /// SIGKILL. Past it, connections still open are cut off.
    pub shutdown_grace: Duration,
    /// Streams one connection may waste at once before the rate applies: room for a client that
    /// cancels a few calls right after making them now and then.
    pub wasted_streams_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: 1024 * 1024,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_streams_per_connection: 4_096,
            max_subscribers: 50_000,
            max_subscribers_per_token: 10_000,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connection_age: None,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1_024,
            wasted_streams_per_second: 10.0,
            wasted_streams_burst: 20,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// What one story may hold. Facts, context notes and attributions are never evicted (retention
/// drops events, and every story keeps its state), and a story is sent whole as one message
/// (GetStory, a ListStories page, a Subscribe snapshot), so without these a story would grow until
/// no client could read it. Each has a `serve` flag; SECURITY.md lists them.
///
/// Only new requests are held to them: events already in the log, replayed at start-up or folded
/// again for `as_of_version`, are never refused, even after a limit was lowered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoryLimits {
    /// Facts in one story. A story followed for weeks reports a few hundred facts (the demo story
    /// five); past a thousand the news belongs in a follow-up story. Every change to a fact finds
    /// it by id in a scan of the story's facts, so this also bounds that work.
    pub max_facts_per_story: usize,
    /// Context notes in one story: background, fewer than facts in any real story; the same
    /// headroom as facts.
    pub max_notes_per_story: usize,
    /// Attributions gathered by one fact, over its report and status changes. One change carries
    /// at most 50 ([`crate::validate::MAX_LIST_LEN`]); copy credits a fact to a handful of
    /// sources. 200 is four changes carrying the most each may.
    pub max_attributions_per_fact: usize,
    /// A story's size as a protobuf message, in bytes. 3 MiB keeps a story at the limit, sent
    /// whole, under the 4 MiB every gRPC client accepts by default (grpcurl, tonic, grpc-go,
    /// grpc-java), so no reader has to raise its limit to read any story; and under a fifth of
    /// the 16 MiB response limit, so a ListStories page that carries one still has room for more.
    /// A story of 1,000 facts of typical length (a few hundred bytes each) is well under it.
    pub max_story_bytes: usize,
}

impl Default for StoryLimits {
    fn default() -> Self {
        Self {
            max_facts_per_story: 1_000,
            max_notes_per_story: 1_000,
            max_attributions_per_fact: 200,
            max_story_bytes: 3 * 1024 * 1024,
        }
    }
}

/// Counts open subscriptions against the limits. Shared by every Subscribe call.
#[derive(Debug)]
pub struct SubscriberSlots {
    /// The limit in total.
    max_total: usize,
    /// The limit per token.
    max_per_token: usize,
    /// Open subscriptions: in total, and by token name.
    open: Mutex<(usize, HashMap<Arc<str>, usize>)>,
}

/// One taken slot; dropping it (when the stream ends) gives it back.
#[derive(Debug)]
pub struct Slot {
    /// The slots it came from.
    slots: Arc<SubscriberSlots>,
    /// The token it counts against, if any.
    caller: Option<Arc<str>>,
}

impl SubscriberSlots {
    /// Slots for at most `max_total` subscriptions, `max_per_token` for each token.
    pub fn new(max_total: usize, max_per_token: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_token,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// Takes a slot for `caller`, or says which limit is reached.
    pub fn take(self: &Arc<Self>, caller: Option<&Caller>) -> Result<Slot, LimitError> {
        let mut open = self.open.lock().expect("slots lock poisoned");
        if open.0 >= self.max_total {
            return Err(LimitError::Subscribers {
                max: self.max_total,
            });
        }
        if let Some(caller) = caller {
            let held = open.1.get(&caller.name).copied().unwrap_or(0);
            if held >= self.max_per_token {
                return Err(LimitError::SubscribersPerToken {
                    name: caller.name.clone(),
                    max: self.max_per_token,
                });
            }
            *open.1.entry(caller.name.clone()).or_insert(0) += 1;
        }
        open.0 += 1;
        Ok(Slot {
            slots: self.clone(),
            caller: caller.map(|c| c.name.clone()),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("slots lock poisoned");
        open.0 -= 1;
        if let Some(name) = &self.caller
            && let Some(held) = open.1.get_mut(name)
        {
            *held -= 1;
            if *held == 0 {
                open.1.remove(name);
            }
        }
    }
}
