//! The histogram behind every `storywire_*_seconds` and `*_events` histogram: whole numbers
//! observed with two relaxed atomic additions in a shard per thread, added up only when scraped
//! (prometheus-client's own histogram takes a mutex on every observation).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::MetricType,
};

/// Bucket bounds of the histograms in seconds, kept in nanoseconds: from 100 µs (an fsync on a
/// fast SSD, a delivery to a subscriber at the head) to 10 s (past which an alert has long fired).
const SECONDS_BOUNDS_NS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Bucket bounds of the subscriber lag, in events: 0 (at the head) by powers of four up to the
/// default retention (1,000,000), beyond which a subscriber has been evicted.
const EVENTS_BOUNDS: [u64; 12] = [
    0, 1, 4, 16, 64, 256, 1_024, 4_096, 16_384, 65_536, 262_144, 1_048_576,
];

/// How many shards a histogram spreads its observations over: threads pick one each, so that
/// the runtime's workers rarely write the same cache line. More than the cores of most hosts;
/// each shard costs 256 bytes.
const SHARDS: usize = 16;

/// The most bounds a histogram may have (`+Inf` is one more bucket).
const MAX_BOUNDS: usize = 16;

/// A duration in whole nanoseconds, saturating (at 584 years).
pub(super) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// A histogram of whole numbers (nanoseconds, events) that observes with two relaxed atomic
/// additions and no lock: each thread adds to its own shard, and a scrape adds the shards up.
///
/// A scrape reads the shards while others add to them, so its sum may be an observation ahead of
/// or behind its count; the count and the buckets always agree, as the count is their total.
/// Cloning shares the counts.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    /// The buckets' upper bounds, inclusive, ascending; a last bucket takes the rest (`+Inf`).
    bounds: &'static [u64],
    /// How many observed units make one exposed unit (1e9 for nanoseconds as seconds).
    per_unit: f64,
    /// The counts, a shard per group of threads.
    shards: Box<[Shard]>,
}

/// One thread group's counts, on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    /// Observations per bucket (not cumulative); `[bounds.len()]` is `+Inf`.
    buckets: [AtomicU64; MAX_BOUNDS + 1],
    /// The observations' sum, in observed units.
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram with buckets up to each of `bounds` (at most 16, ascending), of values
    /// exposed divided by `per_unit`.
    fn new(bounds: &'static [u64], per_unit: f64) -> Self {
        assert!(bounds.len() <= MAX_BOUNDS, "at most {MAX_BOUNDS} bounds");
        assert!(bounds.is_sorted(), "bounds ascend");
        Self(Arc::new(HistogramInner {
            bounds,
            per_unit,
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }))
    }

    /// A histogram of durations observed in nanoseconds and exposed in seconds.
    pub(super) fn seconds() -> Self {
        Self::new(&SECONDS_BOUNDS_NS, 1e9)
    }

    /// A histogram of counts of events (a subscriber's lag).
    pub(super) fn events() -> Self {
        Self::new(&EVENTS_BOUNDS, 1.0)
    }

    /// Observes `value` (in the histogram's unit: nanoseconds, or events).
    pub fn observe(&self, value: u64) {
        let inner = &*self.0;
        let bucket = inner.bounds.partition_point(|&bound| bound < value);
        let shard = &inner.shards[shard_index()];
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        shard.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Observes a duration, in nanoseconds.
    pub fn observe_duration(&self, duration: Duration) {
        self.observe(nanos(duration));
    }

    /// The count of observations, their sum in the exposed unit, and per bucket (upper bound in
    /// the exposed unit, count; not cumulative), added up over the shards.
    pub(super) fn totals(&self) -> (u64, f64, Vec<(f64, u64)>) {
        let inner = &*self.0;
        let mut counts = vec![0u64; inner.bounds.len() + 1];
        let mut sum = 0u64;
        for shard in inner.shards.iter() {
            for (count, bucket) in counts.iter_mut().zip(&shard.buckets) {
                *count += bucket.load(Ordering::Relaxed);
            }
            sum = sum.wrapping_add(shard.sum.load(Ordering::Relaxed));
        }
        let buckets = inner
            .bounds
            .iter()
            .map(|&bound| bound as f64 / inner.per_unit)
            .chain([f64::INFINITY])
            .zip(counts.iter().copied())
            .collect();
        (counts.iter().sum(), sum as f64 / inner.per_unit, buckets)
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (count, sum, buckets) = self.totals();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The shard the current thread adds to: threads take shards in turn as they first observe.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|shard| *shard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_value_in_the_first_bucket_that_holds_it() {
        let histogram = Histogram::new(&EVENTS_BOUNDS, 1.0);
        for value in [0, 0, 1, 2, 4, 5, 2_000_000] {
            histogram.observe(value);
        }
        let (count, sum, buckets) = histogram.totals();
        assert_eq!(count, 7);
        assert_eq!(sum, 2_000_012.0);
        let counts: Vec<u64> = buckets.iter().map(|&(_, count)| count).collect();
        assert_eq!(counts, [2, 1, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(buckets.last().map(|&(bound, _)| bound), Some(f64::INFINITY));
    }

    #[test]
    fn observations_from_many_threads_all_count() {
        let histogram = Histogram::seconds();
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..1_000 {
                        histogram.observe_duration(Duration::from_millis(3));
                    }
                });
            }
        });
        let (count, sum, buckets) = histogram.totals();
        assert_eq!(count, 8_000);
        assert!((sum - 24.0).abs() < 1e-9, "{sum}");
        assert_eq!(buckets[5], (0.005, 8_000));
    }
}
