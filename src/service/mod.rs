//! The gRPC face of the log: each RPC validates its request, calls the log, and turns domain
//! errors into `tonic::Status` in exactly one place ([`status`]).
//!
//! The service holds no state of its own beyond handles: cloning it is cheap.

use std::{net::IpAddr, pin::Pin, sync::Arc};

use futures_util::{Stream, StreamExt as _, stream};
use tokio::sync::watch;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    auth::{ANONYMOUS, Caller},
    clock::SystemClock,
    cluster::{Node, Refused},
    connections::ClientAddress,
    consumers::{ConsumerError, Consumers},
    encoded::EncodedResponse,
    limits::{LimitError, SubscriberSlots},
    log::{EventLog, Filter, LogError},
    metrics::{Format, Metrics, Rpc, SseStalls, Transport},
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
    /// A named consumer's request was refused (see `consumers.rs` for the conversion).
    #[error(transparent)]
    Consumer(ConsumerError),
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
            | StoryError::TooLarge { .. }
            | StoryError::HistoryFull { .. } => Code::FailedPrecondition,
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
        Error::Consumer(consumer) => match consumer {
            ConsumerError::NotFound { .. } => Code::NotFound,
            ConsumerError::FilterTaken { .. } => Code::AlreadyExists,
            ConsumerError::OtherLog { .. } => Code::FailedPrecondition,
            ConsumerError::TooMany { .. } => Code::ResourceExhausted,
            ConsumerError::Storage(_) => Code::Unavailable,
            ConsumerError::Unsupported => Code::Unimplemented,
            ConsumerError::Invalid(_) | ConsumerError::Log(_) => {
                unreachable!("converted to Invalid and Log")
            }
        },
    };
    Status::new(code, message)
}

mod consumers;
mod publish_stream;

use publish_stream::PublishSession;
pub use publish_stream::{PUBLISH_BURST, PublishResponseStream};

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
    /// The named consumers, kept as the log is: in memory unless [`Self::with_consumers`] says.
    consumers: Arc<Consumers>,
    /// The webhook endpoints' states, shown on their consumers (`serve --webhooks`).
    webhooks: Option<Arc<crate::webhooks::WebhookStates>>,
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
            consumers: Consumers::in_memory(Arc::new(SystemClock)),
            webhooks: None,
        }
    }

    /// The service showing each webhook endpoint's state on its consumer.
    pub fn with_webhooks(mut self, webhooks: Option<Arc<crate::webhooks::WebhookStates>>) -> Self {
        self.webhooks = webhooks;
        self
    }

    /// `consumer` with its webhook endpoint's state, if it is an endpoint's.
    fn with_webhook(&self, mut consumer: pb::Consumer) -> pb::Consumer {
        if let Some(webhooks) = &self.webhooks {
            webhooks.fill(&mut consumer);
        }
        consumer
    }

    /// The service keeping named consumers in `consumers` (with `--data-dir`, the data
    /// directory's; with `--nats`, the cluster's bucket); `None` keeps them in memory, or, on a
    /// cluster node, refuses them.
    pub fn with_consumers(mut self, consumers: Option<Arc<Consumers>>) -> Self {
        if let Some(consumers) = consumers {
            self.consumers = consumers;
        }
        self
    }

    /// The id of the log the service serves.
    pub fn log_id(&self) -> &str {
        self.log.log_id()
    }

    /// The newest `max` retained events of `story_id` readers may see, oldest first, and the
    /// sequence a subscription to the story should start from to show them and then what
    /// follows (one past the head when none is retained). For a live page: no scan of the log.
    /// The caller has authorized the read.
    pub fn story_tail(&self, story_id: &str, max: usize) -> (Vec<pb::UpdateEvent>, u64) {
        let head = self.log.head();
        let events = self.log.story_tail(story_id, max);
        let from = events.first().map_or(head + 1, |event| event.sequence);
        (events, from)
    }

    /// Everything the server measures, as text in `format` (`GET /metrics`).
    pub fn encode_metrics(&self, format: Format) -> String {
        self.log.encode_metrics(format)
    }

    /// The handle the HTTP face counts SSE readers cut off for stalling with.
    pub fn sse_stalls(&self) -> SseStalls {
        self.metrics().sse_stalls()
    }

    /// What the server measures, carried by its log.
    fn metrics(&self) -> &Metrics {
        self.log.metrics()
    }

    /// The service of a cluster node: publishes go through `node`'s stream, and everything is
    /// read from its replica.
    pub fn through(mut self, node: Option<Arc<Node>>) -> Self {
        if node.is_some() {
            // A node's memory is not the cluster's: a consumer kept here would be lost with the
            // node and unknown to the others. `with_consumers` gives it the cluster's bucket.
            self.consumers = Consumers::unsupported(Arc::new(SystemClock));
        }
        self.cluster = node;
        self
    }

    /// Publishes one request as `published_by`: through the cluster node's stream, or appended
    /// to the log and answered once acknowledged.
    async fn publish_one(
        &self,
        request: pb::PublishRequest,
        published_by: &str,
    ) -> Result<pb::PublishResponse, Status> {
        if let Some(node) = &self.cluster {
            validate::publish(&request).map_err(status)?;
            return node.publish(request, published_by).await.map_err(status);
        }
        let receipt = publish(&self.log, request, published_by).map_err(status)?;
        // With a data directory, acknowledged means written as the fsync mode says.
        self.log.acknowledged(receipt.sequence).await;
        Ok(receipt)
    }
}

/// Publishes one request, as `published_by` (a token's name), the way the Publish RPC does:
/// validate, then append.
pub fn publish(
    log: &EventLog,
    request: pb::PublishRequest,
    published_by: &str,
) -> Result<pb::PublishResponse, Error> {
    validate::publish(&request)?;
    Ok(log.append(request, published_by)?)
}

/// Who publishes what `request` carries: its token's name, or [`ANONYMOUS`].
fn publisher<T>(request: &Request<T>) -> Arc<str> {
    request
        .extensions()
        .get::<Caller>()
        .map_or_else(|| ANONYMOUS.into(), |caller| caller.name.clone())
}

/// The address a request counts against for the per-address limits: the [`ClientAddress`] the
/// serving loop (or the HTTP face) put in its extensions, or else the peer's own.
fn client_address<T>(request: &Request<T>) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ClientAddress>()
        .map(|client| client.0)
        .or_else(|| request.remote_addr().map(|peer| peer.ip()))
}

/// `items`, ended with the status [`Caller::revoked`] gives once a reload of the tokens file
/// takes away the token it was opened with; the subscription, and its slot, go with it.
fn until_revoked(
    items: impl Stream<Item = Result<EncodedResponse, Status>> + Send + 'static,
    caller: Option<Caller>,
) -> SubscribeStream {
    let Some(caller) = caller else {
        return Box::pin(items);
    };
    let revoked: Pin<Box<dyn Future<Output = Status> + Send>> =
        Box::pin(async move { caller.revoked().await });
    let open = Some((Box::pin(items), revoked));
    Box::pin(stream::unfold(open, |open| async move {
        let (mut items, mut revoked) = open?;
        tokio::select! {
            // The revocation first: a subscriber catching up always has an item ready.
            biased;
            status = &mut revoked => Some((Err(status), None)),
            item = items.next() => Some((item?, Some((items, revoked)))),
        }
    }))
}

/// The stream type Subscribe returns.
pub type SubscribeStream =
    Pin<Box<dyn Stream<Item = Result<EncodedResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl StoryService for Service {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let published_by = publisher(&request);
        let answer = self.publish_one(request.into_inner(), &published_by).await;
        let (code, duplicate) = match &answer {
            Ok(receipt) => (Code::Ok, receipt.duplicate),
            Err(status) => (status.code(), false),
        };
        self.metrics().published(Rpc::Publish, code, duplicate);
        answer.map(Response::new)
    }

    type PublishStreamStream = PublishResponseStream;

    async fn publish_stream(
        &self,
        request: Request<Streaming<pb::PublishStreamRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let session = PublishSession::new(
            publisher(&request),
            request.extensions().get::<Caller>().cloned(),
            request.into_inner(),
            self.log.clone(),
            self.cluster.clone(),
            self.shutdown.clone(),
        );
        Ok(Response::new(session.responses()))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let slot = self
            .slots
            .take(caller.as_ref(), client_address(&request))
            .map_err(status)?;
        let transport = request
            .extensions()
            .get::<Transport>()
            .copied()
            .unwrap_or(Transport::Grpc);
        let request = request.into_inner();
        let heartbeat = validate::subscribe(&request).map_err(status)?;
        self.log.check_log_id(&request.log_id).map_err(status)?;
        // The consumer's reader lock lives as long as the stream: one reader at a time.
        let attached = match request.consumer.as_str() {
            "" => None,
            _ => Some(self.attach_consumer(&request, caller.as_ref()).await?),
        };
        // A consumer starts after its position, which belongs to its log.
        let (from, named_log) = match &attached {
            Some(attached) => (Some(attached.from), true),
            None => (request.from_sequence, !request.log_id.is_empty()),
        };
        let start = match from {
            _ if request.snapshot => Start::Snapshot,
            None => Start::Live,
            Some(from) => {
                match (self.log.check_position(from), &self.cluster) {
                    // A replica behind the stream: the position may be on the stream already.
                    (Err(LogError::BeyondHead { .. }), Some(node)) => {
                        node.reach(from, named_log).await.map_err(status)?
                    }
                    (checked, _) => checked.map_err(status)?,
                }
                Start::From(from)
            }
        };
        let filter = match &attached {
            Some(attached) => attached.filter.clone(),
            None => Filter::new(&request.story_ids, &request.tags),
        };
        let subscription = Subscription::new(
            self.log.clone(),
            filter,
            start,
            heartbeat,
            self.shutdown.clone(),
        );
        // The slot lives as long as the stream, and so does its count in the metrics.
        let open = self.metrics().subscriber_opened(transport);
        let items = stream::unfold(
            (subscription, slot, open, attached),
            |(mut subscription, slot, open, attached)| async move {
                let item = subscription.next().await?;
                Some((item.map_err(status), (subscription, slot, open, attached)))
            },
        );
        Ok(Response::new(until_revoked(items, caller)))
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
            next_sequence: batch.end.next,
            head_sequence: batch.end.head,
            log_id: self.log.log_id().to_owned(),
            first_retained_sequence: batch.end.first_retained,
        }))
    }

    async fn create_consumer(
        &self,
        request: Request<pb::CreateConsumerRequest>,
    ) -> Result<Response<pb::CreateConsumerResponse>, Status> {
        self.create_consumer_rpc(request).await
    }

    async fn get_consumer(
        &self,
        request: Request<pb::GetConsumerRequest>,
    ) -> Result<Response<pb::GetConsumerResponse>, Status> {
        self.get_consumer_rpc(request).await
    }

    async fn list_consumers(
        &self,
        _request: Request<pb::ListConsumersRequest>,
    ) -> Result<Response<pb::ListConsumersResponse>, Status> {
        self.list_consumers_rpc().await
    }

    async fn delete_consumer(
        &self,
        request: Request<pb::DeleteConsumerRequest>,
    ) -> Result<Response<pb::DeleteConsumerResponse>, Status> {
        self.delete_consumer_rpc(request).await
    }

    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        self.ack_rpc(request).await
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
