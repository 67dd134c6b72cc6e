//! The body of an event stream: a subscription's items as shared SSE frames ([`Frames`]), a
//! comment when idle, and an end for a reader that has stopped taking its bytes.
//!
//! HTTP/1.1 has no flow control of its own: hyper takes whatever frames the body yields into its
//! write queue while the socket cannot take them, so a reader that never reads would hold every
//! event sent to it. So the body lets at most [`MAX_UNWRITTEN`] frames be handed over and not yet
//! written to the socket (each frame tells the body when hyper drops it, written), and when the
//! oldest of them has waited [`STALLED_AFTER`], it ends the stream with an error, which closes
//! the connection, and counts it (`storywire_sse_stalled_total`). A reader that reads never waits
//! that long: its frames leave as fast as the socket takes them. EventSource reconnects by itself
//! with `Last-Event-ID`, so a reader cut off while, say, its train was in a tunnel resumes with
//! nothing lost. Over HTTP/2 the stream's flow-control window bounds the same thing, as it does for
//! gRPC's Subscribe.

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
/// reader on a slow network still drains them within it. Checked when the idle timer fires, so
/// a stalled reader is cut off between this and this plus [`KEEP_ALIVE`] after its frame was
/// handed over.
pub const STALLED_AFTER: Duration = Duration::from_secs(30);

/// How many frames may be handed to the connection and not yet written. hyper queues up to 16
/// buffers before it stops asking the body for more, and the body must still be asked (to end
/// the stream) when a reader stalls; a few are enough to keep a catch-up's writes batched.
const MAX_UNWRITTEN: usize = 4;

/// A subscription's event stream as a response body.
pub struct EventBody {
    /// The subscription's items; `None` once the stream has ended.
    items: Option<SubscribeStream>,
    /// The frames every reader of this server shares.
    frames: Arc<Frames>,
    /// Counts the frames hyper has dropped (written), and wakes the body when it does. The other
    /// half is in each frame handed over ([`Written`]).
    written: Arc<WrittenFrames>,
    /// How many frames have been handed over.
    handed: u64,
    /// When each frame not yet known written was handed over, oldest first.
    unwritten: VecDeque<Instant>,
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
    /// The body's task, woken when a frame is written.
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
            handed: 0,
            unwritten: VecDeque::new(),
            last_handed: now,
            timer: Box::pin(tokio::time::sleep_until(now + KEEP_ALIVE)),
            stalls,
        }
    }

    /// Hands `frame` to the connection, keeping track of when it is written.
    fn hand_over(&mut self, frame: Bytes) -> Poll<Option<Result<Frame<Bytes>, Stalled>>> {
        let now = Instant::now();
        self.handed += 1;
        self.unwritten.push_back(now);
        self.last_handed = now;
        let written = Arc::clone(&self.written);
        let tracked = Bytes::from_owner(Written { frame, written });
        Poll::Ready(Some(Ok(Frame::data(tracked))))
    }

    /// Forgets the frames written since the last look; returns since when the oldest frame still
    /// unwritten has waited, if any.
    fn oldest_unwritten(&mut self) -> Option<Instant> {
        let written = self.written.count.load(Ordering::Acquire);
        let outstanding = self.handed.saturating_sub(written) as usize;
        while self.unwritten.len() > outstanding {
            self.unwritten.pop_front();
        }
        self.unwritten.front().copied()
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
        this.written.waker.register(cx.waker());
        loop {
            if this.items.is_none() {
                return Poll::Ready(None);
            }
            let oldest = this.oldest_unwritten();
            if oldest.is_some_and(|since| since.elapsed() >= STALLED_AFTER) {
                this.items = None;
                this.stalls.stalled();
                return Poll::Ready(Some(Err(Stalled)));
            }
            if this.unwritten.len() < MAX_UNWRITTEN
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
                        return Poll::Ready(None);
                    }
                    Poll::Pending => {}
                }
            }
            // Nothing to send, or too much unwritten: wait for an item, a write, or the timer.
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            let keep_alive_due = this.last_handed + KEEP_ALIVE;
            if now >= keep_alive_due && this.unwritten.len() < MAX_UNWRITTEN {
                this.timer.as_mut().reset(now + KEEP_ALIVE);
                return this.hand_over(Bytes::from_static(KEEP_ALIVE_FRAME));
            }
            // Fired early (the stream was busy) or blocked on writes: look again at the next
            // moment something can be due.
            let stall_due = oldest.map_or(keep_alive_due, |since| since + STALLED_AFTER);
            let next = keep_alive_due
                .min(stall_due)
                .max(now + Duration::from_millis(1));
            this.timer.as_mut().reset(next);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.items.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
