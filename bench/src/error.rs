//! The bench's one error type: what stopped a run, from the sockets up or from the run's own
//! checks (a gap, a server that would not start).

/// Why a run, a case or the bench failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The run's own finding, in words: a server that did not listen, a stream that ended early.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("gRPC: {0}")]
    Status(#[from] tonic::Status),
    #[error("connect: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("a task of the run: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(transparent)]
    JetStream(#[from] storywire_testkit::nats::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("latency histogram: {0}")]
    Histogram(#[from] hdrhistogram::AdditionError),
}

impl From<String> for Error {
    fn from(reason: String) -> Self {
        Self::Failed(reason)
    }
}

impl From<&str> for Error {
    fn from(reason: &str) -> Self {
        Self::Failed(reason.to_owned())
    }
}

/// What every fallible function of the bench returns.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `Err(Error::Failed(format!(...)))`, for the run's own findings.
macro_rules! failed {
    ($($reason:tt)*) => {
        Err($crate::error::Error::Failed(format!($($reason)*)))
    };
}
pub(crate) use failed;
