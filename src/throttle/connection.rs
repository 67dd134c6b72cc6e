//! Enforcing the budget: each accepted connection wrapped so that it stops reading while it is
//! past its budget.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Instant,
};

use tokio::io::{AsyncRead, ReadBuf};
use tonic::transport::server::Connected;

use super::{Account, IN_DEBT_READ};

/// An accepted connection that stops reading while it is past its budget. Writes (the responses
/// to what it already sent) go on.
#[derive(Debug)]
pub struct Throttled<IO> {
    /// The connection.
    pub(super) io: IO,
    /// `None` when the budgets are off or the peer's address is unknown.
    pub(super) account: Option<Arc<Account>>,
    /// The timer a paused read waits on.
    pub(super) pause: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the last read, made while in debt, gave way instead of reading.
    pub(super) gave_way: bool,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Throttled<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(account) = this
            .account
            .as_ref()
            .filter(|account| !account.never_wasted())
        else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        let mut now = Instant::now();
        while let Some(resume) = account.paused_until(now) {
            let resume = tokio::time::Instant::from_std(resume);
            let pause = this
                .pause
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(resume)));
            if pause.deadline() != resume {
                pause.as_mut().reset(resume);
            }
            ready!(pause.as_mut().poll(cx));
            now = Instant::now();
        }
        if !account.in_debt(now) {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        // A connection still earning back what it wasted reads in small slices, giving way to
        // every other task in between, so that what piled up in its socket while it was paused
        // cannot hold a worker thread for milliseconds at a time.
        this.gave_way = !this.gave_way;
        if this.gave_way {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let mut slice = [0; IN_DEBT_READ];
        let mut limited = ReadBuf::new(&mut slice[..buf.remaining().min(IN_DEBT_READ)]);
        ready!(Pin::new(&mut this.io).poll_read(cx, &mut limited))?;
        buf.put_slice(limited.filled());
        Poll::Ready(Ok(()))
    }
}

crate::write_through::write_through!(Throttled);

impl<IO> Drop for Throttled<IO> {
    fn drop(&mut self) {
        if let Some(account) = &self.account {
            let mut open = account.budgets.open.lock().expect("accounts lock poisoned");
            // Unless a new connection from the same address and port has taken the key since.
            if open
                .get(&account.peer)
                .is_some_and(|a| Arc::ptr_eq(a, account))
            {
                open.remove(&account.peer);
            }
        }
    }
}

impl<IO: Connected> Connected for Throttled<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}
