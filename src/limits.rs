//! The numbers that bound what one client can take from the server and what one story may hold,
//! with their defaults, and the subscriber slots that enforce two of them.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv6Addr},
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
    /// The client's address holds its limit of subscriptions.
    #[error(
        "address {address} already holds its limit of {max} subscriptions (--max-subscribers-per-ip); try again later"
    )]
    SubscribersPerAddress {
        /// The address, as the limit counts it.
        address: AddressKey,
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
    /// Open subscriptions in total: about 3.5 KiB each while idle and about 25 KiB for one whose
    /// reader has stopped (docs/benchmarks.md, "Catch-up and memory", and
    /// docs/benchmarks/2026-11-30-abuse.md), so the default holds at most about 1.2 GiB.
    pub max_subscribers: usize,
    /// Open subscriptions per token (with `--tokens`), so one client cannot take every slot.
    pub max_subscribers_per_token: usize,
    /// Open subscriptions per client address (an IPv6 /64 counts as one), over gRPC, gRPC-Web
    /// and SSE together, so that one host cannot take every slot; 0: no limit. 1,000 leaves an
    /// office or a carrier-grade NAT, where many readers share one address, room for a live
    /// page each, while one host takes at most a fiftieth of the default `max_subscribers`, and
    /// what 1,000 stalled readers hold (SECURITY.md) is far from what the server can give.
    pub max_subscribers_per_ip: usize,
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
    /// answer, within `wasted_stream_window` of the call starting. Answers,
    /// refusals included, and deadlines never count. Past its budget the server stops reading
    /// that connection until the budget allows another (`crate::throttle`); 0 turns this off.
    /// An honest client resets next to nothing that fast; 10 a second keeps a connection that
    /// resets streams in a loop to a few hundredths of a core (docs/benchmarks/2026-11-30-abuse.md,
    /// "Abuse: what a well-behaved client felt with the first budget").
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
    /// How soon after its call starts a stream ended unanswered counts as wasted: 50 ms
    /// (`crate::throttle::WASTED_WITHIN`), longer than a reset sent on purpose takes and shorter
    /// than any deadline a client means. A deadline shorter than this that expires counts.
    pub wasted_stream_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: 1024 * 1024,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_streams_per_connection: 4_096,
            max_subscribers: 50_000,
            max_subscribers_per_token: 10_000,
            max_subscribers_per_ip: 1_000,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connection_age: None,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1_024,
            wasted_streams_per_second: 10.0,
            wasted_streams_burst: 20,
            wasted_stream_window: crate::throttle::WASTED_WITHIN,
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

/// Where a subscription comes from, as the per-address limit counts it: an IPv4 address, or the
/// /64 an IPv6 address belongs to. One IPv6 host is routinely given a whole /64 (SLAAC, privacy
/// addresses), so counting each address apart would let one host have as many as it liked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressKey(IpAddr);

impl AddressKey {
    /// The key `address` counts against (an IPv4-mapped IPv6 address as its IPv4 one).
    pub fn of(address: IpAddr) -> Self {
        match address {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => Self(IpAddr::V6(Ipv6Addr::from_bits(
                    v6.to_bits() & !u128::from(u64::MAX),
                ))),
            },
        }
    }
}

impl fmt::Display for AddressKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Counts open subscriptions against the limits: the one place every face's subscriptions
/// (gRPC, gRPC-Web, SSE) are counted. Shared by every Subscribe call.
#[derive(Debug)]
pub struct SubscriberSlots {
    /// The limit in total.
    max_total: usize,
    /// The limit per token.
    max_per_token: usize,
    /// The limit per client address ([`AddressKey`]); 0: none.
    max_per_address: usize,
    /// Open subscriptions.
    open: Mutex<Open>,
}

/// The subscriptions open, counted each way a limit needs. A count that falls to 0 is removed,
/// so the maps hold only the tokens and addresses holding a subscription.
#[derive(Debug, Default)]
struct Open {
    /// In total.
    total: usize,
    /// By token name.
    by_token: HashMap<Arc<str>, usize>,
    /// By client address.
    by_address: HashMap<AddressKey, usize>,
}

/// One taken slot; dropping it (when the stream ends) gives it back.
#[derive(Debug)]
pub struct Slot {
    /// The slots it came from.
    slots: Arc<SubscriberSlots>,
    /// The token it counts against, if any.
    caller: Option<Arc<str>>,
    /// The address it counts against, if the limit is on and the address known.
    address: Option<AddressKey>,
}

impl SubscriberSlots {
    /// Slots for what `limits` allow: `max_subscribers` in all, `max_subscribers_per_token` for
    /// each token, `max_subscribers_per_ip` for each client address (0: no such limit).
    pub fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Self {
            max_total: limits.max_subscribers,
            max_per_token: limits.max_subscribers_per_token,
            max_per_address: limits.max_subscribers_per_ip,
            open: Mutex::new(Open::default()),
        })
    }

    /// Takes a slot for `caller` from `address`, or says which limit is reached: the address's
    /// own first, then the token's, then the server's, so that a client is told of the limit
    /// that is its own when it has reached one.
    pub fn take(
        self: &Arc<Self>,
        caller: Option<&Caller>,
        address: Option<IpAddr>,
    ) -> Result<Slot, LimitError> {
        let address = address
            .filter(|_| self.max_per_address > 0)
            .map(AddressKey::of);
        let mut open = self.open.lock().expect("slots lock poisoned");
        if let Some(address) = address
            && open.by_address.get(&address).copied().unwrap_or(0) >= self.max_per_address
        {
            return Err(LimitError::SubscribersPerAddress {
                address,
                max: self.max_per_address,
            });
        }
        if let Some(caller) = caller
            && open.by_token.get(&caller.name).copied().unwrap_or(0) >= self.max_per_token
        {
            return Err(LimitError::SubscribersPerToken {
                name: caller.name.clone(),
                max: self.max_per_token,
            });
        }
        if open.total >= self.max_total {
            return Err(LimitError::Subscribers {
                max: self.max_total,
            });
        }
        open.total += 1;
        if let Some(caller) = caller {
            *open.by_token.entry(caller.name.clone()).or_insert(0) += 1;
        }
        if let Some(address) = address {
            *open.by_address.entry(address).or_insert(0) += 1;
        }
        Ok(Slot {
            slots: self.clone(),
            caller: caller.map(|c| c.name.clone()),
            address,
        })
    }
}

/// Takes one from `key`'s count, removing it at 0.
fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(held) = counts.get_mut(key) {
        *held -= 1;
        if *held == 0 {
            counts.remove(key);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("slots lock poisoned");
        open.total -= 1;
        if let Some(name) = &self.caller {
            release(&mut open.by_token, name);
        }
        if let Some(address) = &self.address {
            release(&mut open.by_address, address);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(address: &str) -> String {
        AddressKey::of(address.parse().expect("an address")).to_string()
    }

    #[test]
    fn an_ipv6_host_counts_as_its_64_and_an_ipv4_mapped_address_as_its_ipv4_one() {
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    }

    #[test]
    fn a_slot_given_back_frees_its_address_count() {
        let limits = Limits {
            max_subscribers: 10,
            max_subscribers_per_ip: 1,
            ..Limits::default()
        };
        let slots = SubscriberSlots::new(&limits);
        let here: IpAddr = "2001:db8::1".parse().expect("an address");
        let same_64: IpAddr = "2001:db8::2".parse().expect("an address");
        let slot = slots.take(None, Some(here)).expect("the first");
        let refused = slots.take(None, Some(same_64)).expect_err("the same /64");
        assert!(refused.to_string().contains("2001:db8::/64"), "{refused}");
        drop(slot);
        let _again = slots.take(None, Some(same_64)).expect("given back");
        assert!(slots.open.lock().expect("lock").by_address.len() == 1);
    }
}
