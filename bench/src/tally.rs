//! What a reader saw, whatever carried it (gRPC, NATS, SSE): every sequence once and in order,
//! or the gaps and duplicates; and each event's latency from the publisher's stamp.

use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use storywire::pb;
use tokio::time::Instant;

use crate::{
    error::Result,
    report::{histogram, record},
};

/// What one stream delivered against what it should have: every sequence from its first, once,
/// in order. Counts only, for cases with thousands of streams and no latency to keep.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sequences {
    /// The sequence expected next: one past the highest seen.
    pub next: u64,
    /// Events received.
    pub events: u64,
    /// Sequences skipped, counted by how far each jump went past the next expected one, and
    /// those missing at the end ([`Self::end_at`]).
    pub gaps: u64,
    /// Events at or below a sequence already seen.
    pub duplicates: u64,
}

impl Sequences {
    /// A stream whose first event should be `first`.
    pub fn starting_at(first: u64) -> Self {
        Self {
            next: first,
            ..Self::default()
        }
    }

    /// Counts the event `sequence`, just received; false if it was a duplicate.
    pub fn see(&mut self, sequence: u64) -> bool {
        self.events += 1;
        if sequence < self.next {
            self.duplicates += 1;
            return false;
        }
        self.gaps += sequence - self.next;
        self.next = sequence + 1;
        true
    }

    /// The stream should have reached `last`: what it has not received up to it counts as gaps.
    pub fn end_at(&mut self, last: u64) {
        if last >= self.next {
            self.gaps += last + 1 - self.next;
            self.next = last + 1;
        }
    }
}

/// What one subscriber saw.
pub struct Received {
    /// Events received, gaps and duplicates.
    pub sequences: Sequences,
    /// End-to-end latency, receipt minus the publisher's send stamp, in microseconds.
    pub latency: Histogram<u64>,
    /// When the last event arrived.
    pub last_at: Option<Instant>,
}

/// One subscriber's count of the events it was sent, whatever carried them (gRPC, NATS, SSE):
/// sequences for gaps and duplicates, the publisher's stamp for latency.
pub struct Tally {
    /// What it has seen so far.
    received: Received,
    /// The sequence of the last event expected.
    last: u64,
}

impl Tally {
    /// A subscriber expecting the events from `first` to `last`.
    pub fn new(first: u64, last: u64) -> Self {
        Self {
            received: Received {
                sequences: Sequences::starting_at(first),
                latency: histogram(),
                last_at: None,
            },
            last,
        }
    }

    /// Counts `event`, just received; true once the last expected event has arrived.
    pub fn count(&mut self, event: &pb::UpdateEvent) -> bool {
        let received = &mut self.received;
        received.last_at = Some(Instant::now());
        if !received.sequences.see(event.sequence) {
            return false;
        }
        if let Some(sent) = event.occurred_at.and_then(|t| {
            let nanos = u64::try_from(t.nanos).ok()?;
            let secs = u64::try_from(t.seconds).ok()?;
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
        }) {
            let elapsed = SystemTime::now().duration_since(sent).unwrap_or_default();
            record(&mut received.latency, elapsed);
        }
        event.sequence >= self.last
    }

    /// What the subscriber saw; one that stopped short of the last event missed the rest, and
    /// those count as gaps too.
    pub fn finish(mut self) -> Received {
        self.received.sequences.end_at(self.last);
        self.received
    }
}

/// Every subscriber's gaps and duplicates, summed.
pub fn misses(all: &[Received]) -> (u64, u64) {
    all.iter().fold((0, 0), |(gaps, duplicates), r| {
        (gaps + r.sequences.gaps, duplicates + r.sequences.duplicates)
    })
}

/// Every subscriber's latency in one histogram, and the events delivered to all of them.
pub fn pooled(all: &[Received]) -> Result<(Histogram<u64>, u64)> {
    let mut latency = histogram();
    for received in all {
        latency.add(&received.latency)?;
    }
    Ok((latency, all.iter().map(|r| r.sequences.events).sum()))
}

#[cfg(test)]
mod tests {
    use super::Sequences;

    #[test]
    fn a_stream_in_order_has_no_gap_and_no_duplicate() {
        let mut stream = Sequences::starting_at(1_001);
        for sequence in 1_001..=2_050 {
            stream.see(sequence);
        }
        stream.end_at(2_050);
        assert_eq!(
            (stream.events, stream.gaps, stream.duplicates),
            (1_050, 0, 0)
        );
    }

    #[test]
    fn skipped_repeated_and_missing_sequences_are_counted() {
        // Starts one late (a gap), repeats 3 and goes back to 2 (two duplicates), jumps from 3
        // to 6 (two gaps), and stops at 6 of 8 (two more).
        let mut stream = Sequences::starting_at(1);
        for sequence in [2, 3, 3, 2, 6] {
            stream.see(sequence);
        }
        stream.end_at(8);
        assert_eq!((stream.events, stream.gaps, stream.duplicates), (5, 5, 2));
        // A stream already past its last has nothing missing.
        let mut stream = Sequences::starting_at(1);
        stream.see(1);
        stream.end_at(0);
        assert_eq!(stream.gaps, 0);
    }
}
