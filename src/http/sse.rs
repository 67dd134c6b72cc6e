//! The body of an event stream: a subscription's items as shared SSE frames ([`Frames`]), a
//! comment when idle, and an end for a reader that has stopped taking its bytes.
//!
//! HTTP/1.1 has no flow control of its own: hyper queues what the body yields while the socket
//! cannot take it, until it holds about 400 KiB, and only then stops asking the body for more;
//! once it has stopped asking, the body cannot even end the stream. So the body hands frames
//! over in pieces of at most [`PIECE_BYTES`], and keeps at most [`MAX_UNWRITTEN_BYTES`] (and
//! [`MAX_UNWRITTEN_PIECES`]) handed over and not yet written to the socket: each piece tells the
//! body when hyper drops it, written. hyper then always has room, so it asks the body again
//! whenever the body's timer wakes it; when the oldest unwritten piece has waited
//! [`STALLED_AFTER`], the body ends the stream with an error, which closes the connection, and
//! counts it (`storywire_sse_stalled_total`). A reader that reads never waits that long: its
//! pieces leave as fast as the socket takes them. A stalled reader holds at most those few
//! pieces of frames (shared with every other reader while they are new) and the rest of one
//! frame. EventSource reconnects by itself with `Last-Event-ID`, so a reader cut off while, say,
//! its train was in a tunnel resumes with nothing lost. Over HTTP/2 the stream's flow-control
//! window bounds the same thing, as it does for gRPC's Subscribe.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::frames::{Frames, KEEP_ALIVE_FRAME, end_frame};
use crate::{metrics::SseStalls, service::SubscribeStream};

/// How often an idle stream sends a comment, so that proxies and browsers keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How long the oldest frame handed to the connection may wait to be written before the reader
/// counts as stalled and is cut off. The kernel's socket buffers (hundreds of KiB on a busy
/// stream) fill first, so this runs only once the reader has stopped reading altogether; a
/// reader on a slow network still drains them within it.
pub const STALLED_AFTER: Duration = Duration::from_secs(30);

/// The largest piece of a frame handed to the connection at once: an event's frame is usually
/// about 1 KiB and handed over whole; a large one goes in pieces, so that no single piece can
/// fill hyper's queue.
const PIECE_BYTES: usize = 16 * 1024;

/// How many bytes may be handed to the connection and not yet written: well under the 400 KiB
/// at which hyper stops asking the body for more (so the body can still end a stalled stream),
/// and enough to keep a catch-up's writes batched.
const MAX_UNWRITTEN_BYTES: usize = 64 * 1024;

/// How many pieces may be handed over and not yet written: hyper stops asking the body for more
/// at 16 queued buffers.
const MAX_UNWRITTEN_PIECES: usize = 8;

/// A subscription's event stream as a response body.
pub struct EventBody {
    /// The subscription's items; `None` once the stream has ended.
    items: Option<SubscribeStream>,
    /// The frames every reader of this server shares.
    frames: Arc<Frames>,
    /// Counts the frames hyper has dropped (written), and wakes the body when it does while the
    /// body waits for room. The other half is in each frame handed over ([`Written`]).
    written: Arc<WrittenFrames>,
    /// The rest of the frame being handed over, piece by piece.
    rest: Bytes,
    /// How many pieces have been handed over.
    handed: u64,
    /// When each piece not yet known written was handed over, and its size, oldest first.
    unwritten: VecDeque<(Instant, usize)>,
    /// The bytes of the pieces in `unwritten`.
    unwritten_bytes: usize,
    /// When the last frame was handed over, for the keep-alive.
    last_handed: Instant,
    /// Fires when a keep-alive may be due, and to look for a stalled reader; reset lazily, so
    /// that a busy stream costs the timer wheel nothing per event.
    timer: Pin<Box<Sleep>>,
    /// Counts the readers cut off for stalling.
    stalls: SseStalls,
}

/// What the frames handed over report back.
#[derive(Debug, Default)]
struct WrittenFrames {
    /// Frames dropped by the connection, written to the socket (or the connection gone).
    count: AtomicU64,
    /// The body's task, woken when a frame is written; registered only while the body waits for
    /// room.
    waker: AtomicWaker,
}

/// The owner of one frame handed to the connection: dropped when the connection has written it.
struct Written {
    frame: Bytes,
    written: Arc<WrittenFrames>,
}

impl AsRef<[u8]> for Written {
    fn as_ref(&self) -> &[u8] {
        &self.frame
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        self.written.count.fetch_add(1, Ordering::Release);
        self.written.waker.wake();
    }
}

/// A reader that stopped taking its bytes: the body's error, which makes the connection close.
#[derive(Debug, thiserror::Error)]
#[error("the reader has taken no bytes for {STALLED_AFTER:?}; the event stream is cut off")]
pub struct Stalled;

impl EventBody {
    /// The body of a stream of `items`, framed with `frames`.
    pub fn new(items: SubscribeStream, frames: Arc<Frames>, stalls: SseStalls) -> Self {
        let now = Instant::now();
        Self {
            items: Some(items),
            frames,
            written: Arc::default(),
            rest: Bytes::new(),
            handed: 0,
            unwritten: VecDeque::new(),
            unwritten_bytes: 0,
            last_handed: now,
            timer: Box::pin(tokio::time::sleep_until(now + KEEP_ALIVE)),
            stalls,
        }
    }

    /// Hands `frame` to the connection (its first piece now, the rest as room allows), keeping
    /// track of when each piece is written.
    fn hand_over(&mut self, frame: Bytes) -> Poll<Option<Result<Frame<Bytes>, Stalled>>> {
        self.rest = frame;
        self.next_piece()
    }

    /// Hands the next piece of the frame being handed over to the connection.
    fn next_piece(&mut self) -> Poll<Option<Result<Frame<Bytes>, Stalled>>> {
        let piece = self.rest.split_to(self.rest.len().min(PIECE_BYTES));
        let now = Instant::now();
        self.handed += 1;
        self.unwritten.push_back((now, piece.len()));
        self.unwritten_bytes += piece.len();
        self.last_handed = now;
        let written = Arc::clone(&self.written);
        let tracked = Bytes::from_owner(Written {
            frame: piece,
            written,
        });
        Poll::Ready(Some(Ok(Frame::data(tracked))))
    }

    /// Whether another piece may be handed over now.
    fn has_room(&self) -> bool {
        self.unwritten.len() < MAX_UNWRITTEN_PIECES && self.unwritten_bytes < MAX_UNWRITTEN_BYTES
    }

    /// Forgets the pieces written since the last look; returns since when the oldest piece still
    /// unwritten has waited, if any.
    fn oldest_unwritten(&mut self) -> Option<Instant> {
        let written = self.written.count.load(Ordering::Acquire);
        let outstanding = self.handed.saturating_sub(written) as usize;
        while self.unwritten.len() > outstanding {
            if let Some((_, bytes)) = self.unwritten.pop_front() {
                self.unwritten_bytes -= bytes;
            }
        }
        self.unwritten.front().map(|&(since, _)| since)
    }
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = Stalled;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Stalled>>> {
        let this = &mut *self;
        loop {
            if this.items.is_none() && this.rest.is_empty() {
                return Poll::Ready(None);
            }
            let oldest = this.oldest_unwritten();
            if oldest.is_some_and(|since| since.elapsed() >= STALLED_AFTER) {
                this.items = None;
                this.rest = Bytes::new();
                this.stalls.stalled();
                return Poll::Ready(Some(Err(Stalled)));
            }
            if this.has_room() && !this.rest.is_empty() {
                return this.next_piece();
            }
            if this.has_room()
                && let Some(items) = this.items.as_mut()
            {
                match items.as_mut().poll_next(cx) {
                    Poll::Ready(Some(Ok(item))) => {
                        let frame = this.frames.frame(item);
                        return this.hand_over(frame);
                    }
                    Poll::Ready(Some(Err(status))) => {
                        this.items = None;
                        return this.hand_over(end_frame(&status));
                    }
                    Poll::Ready(None) => {
                        this.items = None;
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            // Too much unwritten: wait for a write too. Only then: a wake-up for every frame
            // written would poll the connection once more per delivery for nothing.
            if !this.has_room() {
                this.written.waker.register(cx.waker());
                this.oldest_unwritten();
                if this.has_room() {
                    continue;
                }
            }
            // Wait for an item, a write (above), or the timer.
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            let keep_alive_due = this.last_handed + KEEP_ALIVE;
            let can_keep_alive = this.has_room() && this.rest.is_empty();
            if can_keep_alive && now >= keep_alive_due {
                this.timer.as_mut().reset(now + KEEP_ALIVE);
                return this.hand_over(Bytes::from_static(KEEP_ALIVE_FRAME));
            }
            // Fired early (the stream was busy) or blocked on writes: look again at the next
            // moment something can be due.
            let stall_due = oldest.map(|since| since + STALLED_AFTER);
            let next = match (can_keep_alive, stall_due) {
                (true, Some(stall_due)) => keep_alive_due.min(stall_due),
                (true, None) => keep_alive_due,
                (false, Some(stall_due)) => stall_due,
                (false, None) => now + KEEP_ALIVE,
            };
            this.timer
                .as_mut()
                .reset(next.max(now + Duration::from_millis(1)));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.items.is_none() && self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
