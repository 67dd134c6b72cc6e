//! The gRPC face of the log: each RPC validates its request, calls the log, and turns domain
//! errors into `tonic::Status` in exactly one place ([`status`]).
//!
//! The service holds no state of its own beyond handles: cloning it is cheap.

use std::{collections::VecDeque, pin::Pin, sync::Arc};

use futures_util::{FutureExt, Stream, stream};
use tokio::sync::watch;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    cluster::{Node, Refused},
    encoded::EncodedResponse,
    limits::{Caller, LimitError, SubscriberSlots},
    log::{EventLog, Filter, LogError},
    pb::{self, server::story_service_server::StoryService},
    story::StoryError,
    subscription::{End, Start, Subscription},
    validate::{self, FieldError},
};

/// ListStories page size when the request gives none.
pub const DEFAULT_STORIES_PAGE: usize = 50;
/// The largest ListStories page: whole stories with their facts are large messages.
pub const MAX_STORIES_PAGE: usize = 500;
/// ListEvents page size when the request gives none.
pub const DEFAULT_EVENTS_PAGE: usize = 100;
/// The largest ListEvents page: a page must fit comfortably in one gRPC message.
pub const MAX_EVENTS_PAGE: usize = 1_000;
/// How many events one ListEvents page may scan for matches, so that a sparse filter over a long
/// log answers quickly (with `next_sequence` to continue) instead of holding the read lock.
pub const MAX_EVENTS_SCAN: usize = 100_000;

/// Every failure a client can cause, before it becomes a `Status`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The log refused the request.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A subscription ended.
    #[error(transparent)]
    End(#[from] End),
    /// A limit on what one client may take.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// A cluster node could not publish through its stream.
    #[error(transparent)]
    Cluster(#[from] Refused),
}

impl Error {
    /// The request field at fault and what is wrong with it, for the errors that are the
    /// request's own (INVALID_ARGUMENT): the BadRequest detail of Publish and the `field` of a
    /// PublishStream rejection both come from here.
    fn violation(&self) -> Option<(String, String)> {
        match self {
            Self::Invalid(invalid) => Some((invalid.field.clone(), invalid.description.clone())),
            Self::Log(LogError::ReservedEventId { .. }) => {
                Some(("event_id".to_owned(), self.to_string()))
            }
            _ => None,
        }
    }
}

impl From<StoryError> for Error {
    fn from(error: StoryError) -> Self {
        Self::Log(error.into())
    }
}

/// The one mapping from domain errors to gRPC status codes. The message is the error's own text,
/// which names the field, id or sequence at fault.
pub fn status(error: impl Into<Error>) -> Status {
    // A subscription that ends on a log error reports it like any other log error.
    let error = match error.into() {
        Error::End(End::Log(log)) | Error::Cluster(Refused::Log(log)) => Error::Log(log),
        other => other,
    };
    let message = error.to_string();
    if let Some((field, description)) = error.violation() {
        let details = ErrorDetails::with_bad_request_violation(field, description);
        return Status::with_error_details(Code::InvalidArgument, message, details);
    }
    let code = match &error {
        Error::Invalid(_) | Error::Log(LogError::ReservedEventId { .. }) => {
            unreachable!("a violation, answered above")
        }
        Error::Log(LogError::Story(story)) => match story {
            StoryError::AlreadyOpened { .. } => Code::AlreadyExists,
            StoryError::NotFound { .. } => Code::NotFound,
            StoryError::UnknownFact { .. }
            | StoryError::FactAlreadyReported { .. }
            | StoryError::Withdrawn { .. } => Code::FailedPrecondition,
            // Not RESOURCE_EXHAUSTED: a full story stays full (facts, notes and attributions never
            // leave), so retrying cannot help until the story or the limit changes; and, like
            // the story rules above, it is a conflict with the story's state, which the wasted-
            // streams budget does not charge to the publisher's connection.
            StoryError::TooManyFacts { .. }
            | StoryError::TooManyNotes { .. }
            | StoryError::TooManyAttributions { .. }
            | StoryError::TooLarge { .. } => Code::FailedPrecondition,
            StoryError::NoChange => Code::InvalidArgument,
        },
        Error::Log(log) => match log {
            LogError::Story(_) | LogError::ReservedEventId { .. } => {
                unreachable!("matched above")
            }
            LogError::EventIdReused { .. } => Code::AlreadyExists,
            LogError::VersionMismatch { .. } => Code::Aborted,
            LogError::LogIdMismatch { .. } => Code::FailedPrecondition,
            LogError::NotRetained { .. }
            | LogError::BeyondHead { .. }
            | LogError::VersionBeyondStory { .. }
            | LogError::HistoryNotRetained { .. } => Code::OutOfRange,
        },
        Error::End(End::ShuttingDown) => Code::Unavailable,
        Error::Limit(_) => Code::ResourceExhausted,
        Error::Cluster(Refused::Unavailable(_)) => Code::Unavailable,
        Error::Cluster(Refused::Contended(_)) => Code::Aborted,
        // As tonic refuses a request over --max-request-bytes.
        Error::Cluster(Refused::TooLarge(_)) => Code::OutOfRange,
        Error::End(End::Log(_)) | Error::Cluster(Refused::Log(_)) => {
            unreachable!("flattened above")
        }
    };
    Status::new(code, message)
}

/// The StoryService over one shared log.
#[derive(Debug, Clone)]
pub struct Service {
    /// The log every RPC reads or appends to.
    log: Arc<EventLog>,
    /// Becomes true when the server starts shutting down; each subscription watches it to flush
    /// and end. The sender belongs to the server.
    shutdown: watch::Receiver<bool>,
    /// Open subscriptions against their limits; each stream holds a slot until it ends.
    slots: Arc<SubscriberSlots>,
    /// On a cluster node: where publishes go (the log is its replica of the stream).
    cluster: Option<Arc<Node>>,
}

impl Service {
    /// A service over `log` whose streams end when `shutdown` turns true, holding at most what
    /// `slots` allows.
    pub fn new(
        log: Arc<EventLog>,
        shutdown: watch::Receiver<bool>,
        slots: Arc<SubscriberSlots>,
    ) -> Self {
        Self {
            log,
            shutdown,
            slots,
            cluster: None,
        }
    }

    /// The id of the log the service serves.
    pub fn log_id(&self) -> &str {
        self.log.log_id()
    }

    /// The service of a cluster node: publishes go through `node`'s stream, and everything is
    /// read from its replica.
    pub fn through(mut self, node: Option<Arc<Node>>) -> Self {
        self.cluster = node;
        self
    }
}

/// Publishes one request the way the Publish RPC does: validate, then append.
pub fn publish(log: &EventLog, request: pb::PublishRequest) -> Result<pb::PublishResponse, Error> {
    validate::publish(&request)?;
    Ok(log.append(request)?)
}

/// The most PublishStream messages answered together: those already received when the first is
/// read go into one append under one lock and one wake-up of subscribers. Enough to amortise the
/// lock at a pipeline's full rate; few enough that one burst holds the lock only briefly.
pub const PUBLISH_BURST: usize = 256;

/// Settles the shape of a burst of PublishStream messages: for each message its error, if it
/// has one, and the valid requests in order.
fn check_burst(
    messages: Vec<pb::PublishStreamRequest>,
) -> (Vec<Option<Error>>, Vec<pb::PublishRequest>) {
    let mut checked: Vec<Option<Error>> = Vec::with_capacity(messages.len());
    let mut valid = Vec::with_capacity(messages.len());
    for message in messages {
        let outcome = match message.request {
            Some(request) => validate::publish(&request).map(|()| request),
            None => Err(FieldError {
                field: "request".to_owned(),
                description: "is required: each message carries one PublishRequest".to_owned(),
            }),
        };
        match outcome {
            Ok(request) => {
                valid.push(request);
                checked.push(None);
            }
            Err(invalid) => checked.push(Some(invalid.into())),
        }
    }
    (checked, valid)
}

/// The responses to a burst, in order: each message's shape error, or the outcome of its
/// request, taken in order from `outcomes`.
fn burst_responses(
    checked: Vec<Option<Error>>,
    outcomes: Vec<Result<pb::PublishResponse, Error>>,
) -> VecDeque<pb::PublishStreamResponse> {
    let mut outcomes = outcomes.into_iter();
    checked
        .into_iter()
        .map(|invalid| {
            let outcome = match invalid {
                Some(error) => Err(error),
                None => outcomes.next().expect("one outcome per valid request"),
            };
            publish_response(outcome)
        })
        .collect()
}

/// Publishes a burst of PublishStream messages in order, each accepted or rejected on its own.
fn publish_burst(
    log: &EventLog,
    messages: Vec<pb::PublishStreamRequest>,
) -> VecDeque<pb::PublishStreamResponse> {
    let (checked, valid) = check_burst(messages);
    let outcomes = log
        .append_all(valid)
        .into_iter()
        .map(|outcome| outcome.map_err(Error::from))
        .collect();
    burst_responses(checked, outcomes)
}

/// Publishes a burst through a cluster node's stream: requests to different stories are sent in
/// order and in flight together (each story's condition in the stream is independent of the
/// others'); a request to a story already in flight waits for it. Answered in request order.
async fn publish_burst_through(
    node: &Node,
    messages: Vec<pb::PublishStreamRequest>,
) -> VecDeque<pb::PublishStreamResponse> {
    let (checked, valid) = check_burst(messages);
    let mut outcomes = Vec::with_capacity(valid.len());
    let mut requests = valid.into_iter().peekable();
    while requests.peek().is_some() {
        let mut stories = std::collections::HashSet::new();
        let mut run = Vec::new();
        while let Some(request) = requests.next_if(|r| !stories.contains(&r.story_id)) {
            stories.insert(request.story_id.clone());
            run.push(request);
        }
        let published = node.publish_in_order(run).await;
        outcomes.extend(
            published
                .into_iter()
                .map(|outcome| outcome.map_err(Error::from)),
        );
    }
    burst_responses(checked, outcomes)
}

/// A PublishStream response: the receipt, or what Publish would have failed with.
fn publish_response(outcome: Result<pb::PublishResponse, Error>) -> pb::PublishStreamResponse {
    use pb::publish_stream_response::Result as Outcome;
    let result = match outcome {
        Ok(receipt) => Outcome::Accepted(receipt),
        Err(error) => {
            let field = error
                .violation()
                .map(|(field, _)| field)
                .unwrap_or_default();
            let status = status(error);
            Outcome::Rejected(pb::PublishError {
                code: status.code().into(),
                message: status.message().to_owned(),
                field,
            })
        }
    };
    pb::PublishStreamResponse {
        result: Some(result),
    }
}

/// One PublishStream call: its incoming messages, answered in order.
struct PublishSession {
    /// The client's messages.
    requests: Streaming<pb::PublishStreamRequest>,
    /// The log they are published to.
    log: Arc<EventLog>,
    /// On a cluster node: the stream they are published through instead.
    cluster: Option<Arc<Node>>,
    /// Becomes true when the server starts shutting down. The sender belongs to the server.
    shutdown: watch::Receiver<bool>,
    /// Responses to a burst, not yet sent.
    answered: VecDeque<pb::PublishStreamResponse>,
    /// How the stream ends once `answered` is sent: `Some(Err)` with an error, `Some(Ok)` when
    /// the client finished; `None` while it goes on.
    end: Option<Result<(), Status>>,
}

impl PublishSession {
    /// The response to the next message; `None` once the client has finished.
    ///
    /// At shutdown the session stops taking messages and ends with UNAVAILABLE: every message
    /// already answered is in the log, and the rest can be resent (safely, with their event_ids)
    /// once the server is back.
    async fn next(&mut self) -> Option<Result<pb::PublishStreamResponse, Status>> {
        loop {
            if let Some(response) = self.answered.pop_front() {
                return Some(Ok(response));
            }
            match self.end.take() {
                Some(Err(status)) => {
                    self.end = Some(Ok(()));
                    return Some(Err(status));
                }
                Some(Ok(())) => {
                    self.end = Some(Ok(()));
                    return None;
                }
                None => {}
            }
            let first = tokio::select! {
                biased;
                _ = self.shutdown.wait_for(|stopping| *stopping) => Err(status(End::ShuttingDown)),
                next = self.requests.message() => next,
            };
            let mut burst = Vec::new();
            let mut next = first;
            loop {
                match next {
                    Ok(Some(message)) => burst.push(message),
                    Ok(None) => self.end = Some(Ok(())),
                    Err(status) => self.end = Some(Err(status)),
                }
                if self.end.is_some() || burst.len() == PUBLISH_BURST {
                    break;
                }
                // Take what has already arrived, without waiting for more.
                match self.requests.message().now_or_never() {
                    Some(more) => next = more,
                    None => break,
                }
            }
            if let Some(node) = &self.cluster {
                // Answered once acknowledged by JetStream and applied here.
                self.answered = publish_burst_through(node, burst).await;
                continue;
            }
            self.answered = publish_burst(&self.log, burst);
            // With a data directory, acknowledged means written as the fsync mode says: wait
            // for the burst's newest.
            let newest = self
                .answered
                .iter()
                .filter_map(|response| match &response.result {
                    Some(pb::publish_stream_response::Result::Accepted(receipt)) => {
                        Some(receipt.sequence)
                    }
                    _ => None,
                });
            if let Some(newest) = newest.max() {
                self.log.acknowledged(newest).await;
            }
        }
    }
}

/// The stream type PublishStream returns.
pub type PublishResponseStream =
    Pin<Box<dyn Stream<Item = Result<pb::PublishStreamResponse, Status>> + Send + 'static>>;

/// The stream type Subscribe returns.
pub type SubscribeStream =
    Pin<Box<dyn Stream<Item = Result<EncodedResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl StoryService for Service {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        if let Some(node) = &self.cluster {
            let request = request.into_inner();
            validate::publish(&request).map_err(status)?;
            let receipt = node.publish(request).await.map_err(status)?;
            return Ok(Response::new(receipt));
        }
        let receipt = publish(&self.log, request.into_inner()).map_err(status)?;
        // With a data directory, acknowledged means written as the fsync mode says.
        self.log.acknowledged(receipt.sequence).await;
        Ok(Response::new(receipt))
    }

    type PublishStreamStream = PublishResponseStream;

    async fn publish_stream(
        &self,
        request: Request<Streaming<pb::PublishStreamRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let session = PublishSession {
            requests: request.into_inner(),
            log: self.log.clone(),
            cluster: self.cluster.clone(),
            shutdown: self.shutdown.clone(),
            answered: VecDeque::new(),
            end: None,
        };
        let responses = stream::unfold(session, |mut session| async move {
            let response = session.next().await?;
            Some((response, session))
        });
        Ok(Response::new(Box::pin(responses)))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let slot = self
            .slots
            .take(request.extensions().get::<Caller>())
            .map_err(status)?;
        let request = request.into_inner();
        let heartbeat = validate::subscribe(&request).map_err(status)?;
        self.log.check_log_id(&request.log_id).map_err(status)?;
        let start = match request.from_sequence {
            _ if request.snapshot => Start::Snapshot,
            None => Start::Live,
            Some(from) => {
                self.log.check_position(from).map_err(status)?;
                Start::From(from)
            }
        };
        let filter = Filter::new(&request.story_ids, &request.tags);
        let subscription = Subscription::new(
            self.log.clone(),
            filter,
            start,
            heartbeat,
            self.shutdown.clone(),
        );
        // The slot lives as long as the stream.
        let items = stream::unfold(
            (subscription, slot),
            |(mut subscription, slot)| async move {
                let item = subscription.next().await?;
                Some((item.map_err(status), (subscription, slot)))
            },
        );
        Ok(Response::new(Box::pin(items)))
    }

    async fn get_story(
        &self,
        request: Request<pb::GetStoryRequest>,
    ) -> Result<Response<pb::GetStoryResponse>, Status> {
        let request = request.into_inner();
        validate::get_story(&request).map_err(status)?;
        // The log answers only with state readers may see: nothing a crash could take back.
        let story = self
            .log
            .story(&request.story_id, request.as_of_version)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetStoryResponse { story: Some(story) }))
    }

    async fn list_stories(
        &self,
        request: Request<pb::ListStoriesRequest>,
    ) -> Result<Response<pb::ListStoriesResponse>, Status> {
        let request = request.into_inner();
        validate::list_stories(&request).map_err(status)?;
        let limit = page_size(request.page_size, DEFAULT_STORIES_PAGE, MAX_STORIES_PAGE);
        let (stories, more) = self
            .log
            .list_stories(&request.page_token, limit, &request.tag, request.status)
            .await;
        let next_page_token = match stories.last() {
            Some(last) if more => last.id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListStoriesResponse {
            stories,
            next_page_token,
        }))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let request = request.into_inner();
        validate::filter(&request.story_ids, &request.tags).map_err(status)?;
        self.log.check_log_id(&request.log_id).map_err(status)?;
        let limit = page_size(request.page_size, DEFAULT_EVENTS_PAGE, MAX_EVENTS_PAGE);
        let filter = Filter::new(&request.story_ids, &request.tags);
        let batch = self
            .log
            .read_from(request.from_sequence, &filter, limit, MAX_EVENTS_SCAN)
            .map_err(status)?;
        Ok(Response::new(pb::ListEventsResponse {
            events: batch.events.iter().map(|entry| entry.event()).collect(),
            next_sequence: batch.next,
            head_sequence: batch.head,
            log_id: self.log.log_id().to_owned(),
            first_retained_sequence: batch.first_retained,
        }))
    }
}

/// A requested page size: `default` for 0, capped at `max`.
fn page_size(requested: u32, default: usize, max: usize) -> usize {
    match usize::try_from(requested) {
        Ok(0) => default,
        Ok(size) => size.min(max),
        Err(_) => max,
    }
}
