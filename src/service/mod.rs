//! The gRPC face of the log: each RPC validates its request, calls the log, and turns domain
//! errors into `tonic::Status` in exactly one place ([`status`]).
//!
//! The service holds no state of its own beyond handles: cloning it is cheap.

use std::{net::IpAddr, pin::Pin, sync::Arc};

use futures_util::{Stream, StreamExt as _, stream};
use tokio::sync::watch;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::{
    auth::{ANONYMOUS, Caller},
    clock::SystemClock,
    connections::ClientAddress,
    consumers::Consumers,
    encoded::EncodedResponse,
    limits::SubscriberSlots,
    log::{EventLog, Filter},
    metrics::{Format, Metrics, Rpc, SseStalls, Transport},
    pb::{self, server::story_service_server::StoryService},
    publisher::Publisher,
    subscription::{Start, Subscription},
    validate,
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

mod consumers;
mod publish_stream;
mod status;

use publish_stream::PublishSession;
pub use publish_stream::{PUBLISH_BURST, PublishResponseStream};
pub use status::{Error, status};

/// The StoryService over one shared log.
#[derive(Debug, Clone)]
pub struct Service {
    /// Where publishes go, and whether a position to resume from is in reach: the log itself,
    /// or a cluster node's stream ([`crate::publisher`]). The service does not know which.
    publisher: Arc<dyn Publisher>,
    /// The log every RPC reads from: the publisher's.
    log: Arc<EventLog>,
    /// Becomes true when the server starts shutting down; each subscription watches it to flush
    /// and end. The sender belongs to the server.
    shutdown: watch::Receiver<bool>,
    /// Open subscriptions against their limits; each stream holds a slot until it ends.
    slots: Arc<SubscriberSlots>,
    /// The named consumers, kept as the log is: in memory unless [`Self::with_consumers`] says.
    consumers: Arc<Consumers>,
    /// The webhook endpoints' states, shown on their consumers (`serve --webhooks`).
    webhooks: Option<Arc<crate::webhooks::WebhookStates>>,
}

impl Service {
    /// A service publishing through `publisher` and reading its log, whose streams end when
    /// `shutdown` turns true, holding at most what `slots` allows.
    pub(crate) fn new(
        publisher: Arc<dyn Publisher>,
        shutdown: watch::Receiver<bool>,
        slots: Arc<SubscriberSlots>,
    ) -> Self {
        Self {
            log: publisher.log().clone(),
            publisher,
            shutdown,
            slots,
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
    /// directory's; with `--nats`, the cluster's bucket) instead of its own memory.
    pub fn with_consumers(mut self, consumers: Arc<Consumers>) -> Self {
        self.consumers = consumers;
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

    /// Publishes one request as `published_by`: validated, then through the publisher, and
    /// answered once acknowledged.
    async fn publish_one(
        &self,
        request: pb::PublishRequest,
        published_by: &str,
    ) -> Result<pb::PublishResponse, Status> {
        validate::publish(&request).map_err(status)?;
        self.publisher
            .publish(request, published_by)
            .await
            .map_err(status)
    }
}

/// Publishes one request to `log`, as `published_by` (a token's name), the way the Publish RPC
/// does on a server whose log is its own: validate, then append; without waiting for the
/// journal's acknowledgement (for the demo, and tests that build a log before serving it).
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
            self.publisher.clone(),
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
                self.publisher
                    .reach(from, named_log)
                    .await
                    .map_err(status)?;
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
