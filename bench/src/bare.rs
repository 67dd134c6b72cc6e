//! The baseline: a bare tonic server as one would write it by hand, with nothing of storywire's
//! but its wire types. PublishStream stamps a sequence and broadcasts; Subscribe streams every
//! broadcast event. No log, no story rules, no catch-up, and a subscriber that lags behind the
//! broadcast buffer silently loses events (the bench counts them as gaps).

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use futures_util::{Stream, StreamExt};
use storywire::pb::{
    self, story_service_server::StoryService, story_service_server::StoryServiceServer,
};
use tokio::{net::TcpListener, sync::broadcast};
use tokio_stream::wrappers::BroadcastStream;
use tonic::{
    Request, Response, Status, Streaming,
    transport::{Server, server::TcpIncoming},
};

use crate::error::Result;

/// Events the broadcast keeps for lagging subscribers before they lose some: large, so that the
/// baseline drops only under real overload.
const BROADCAST_CAPACITY: usize = 65_536;

/// The bare server's state, shared by every call: clones share the channel and the counter.
#[derive(Clone)]
struct Bare {
    /// Fans every published event out to every subscriber; each receiver clones what it takes.
    events: broadcast::Sender<pb::SubscribeResponse>,
    /// The last sequence stamped, so subscribers can count gaps.
    sequence: Arc<AtomicU64>,
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl StoryService for Bare {
    async fn publish(
        &self,
        _: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        Err(Status::unimplemented("the bare server only streams"))
    }

    type PublishStreamStream = Boxed<pb::PublishStreamResponse>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<pb::PublishStreamRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let bare = self.clone();
        let responses = request.into_inner().map(move |message| {
            let request = message?.request.unwrap_or_default();
            let sequence = bare.sequence.fetch_add(1, Ordering::Relaxed) + 1;
            let event = pb::UpdateEvent {
                sequence,
                event_id: request.event_id.clone(),
                story_id: request.story_id,
                story_version: sequence,
                headline: request.headline,
                occurred_at: request.occurred_at,
                recorded_at: request.occurred_at,
                change: request.change,
                // As storywire stamps an event published without a token.
                published_by: storywire::auth::ANONYMOUS.into(),
            };
            let item = pb::subscribe_response::Item::Event(event);
            // No receivers is fine: nobody is listening yet.
            let _ = bare.events.send(pb::SubscribeResponse { item: Some(item) });
            let receipt = pb::PublishResponse {
                sequence,
                story_version: sequence,
                event_id: request.event_id,
                duplicate: false,
                recorded_at: None,
            };
            Ok(pb::PublishStreamResponse {
                result: Some(pb::publish_stream_response::Result::Accepted(receipt)),
            })
        });
        Ok(Response::new(Box::pin(responses)))
    }

    type SubscribeStream = Boxed<pb::SubscribeResponse>;

    async fn subscribe(
        &self,
        _: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let received = BroadcastStream::new(self.events.subscribe());
        // A lagged receiver skips what it missed, as a bare broadcast server does.
        let events = received.filter_map(|item| async move { item.ok().map(Ok) });
        Ok(Response::new(Box::pin(events)))
    }

    async fn get_story(
        &self,
        _: Request<pb::GetStoryRequest>,
    ) -> Result<Response<pb::GetStoryResponse>, Status> {
        Err(Status::unimplemented("the bare server only streams"))
    }

    async fn list_stories(
        &self,
        _: Request<pb::ListStoriesRequest>,
    ) -> Result<Response<pb::ListStoriesResponse>, Status> {
        Err(Status::unimplemented("the bare server only streams"))
    }

    async fn list_events(
        &self,
        _: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        Err(Status::unimplemented("the bare server only streams"))
    }

    async fn create_consumer(
        &self,
        _: Request<pb::CreateConsumerRequest>,
    ) -> Result<Response<pb::CreateConsumerResponse>, Status> {
        Err(Status::unimplemented("the bare server only streams"))
    }

    async fn get_consumer(
        &self,
        _: Request<pb::GetConsumerRequest>,
    ) -> Result<Response<pb::GetConsumerResponse>, Status> {
        Err(Status::unimplemented("the bare server only streams"))
    }

    async fn list_consumers(
        &self,
        _: Request<pb::ListConsumersRequest>,
    ) -> Result<Response<pb::ListConsumersResponse>, Status> {
        Err(Status::unimplemented("the bare server only streams"))
    }

    async fn delete_consumer(
        &self,
        _: Request<pb::DeleteConsumerRequest>,
    ) -> Result<Response<pb::DeleteConsumerResponse>, Status> {
        Err(Status::unimplemented("the bare server only streams"))
    }

    async fn ack(&self, _: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        Err(Status::unimplemented("the bare server only streams"))
    }
}

/// Runs the baseline on `listen` until the process is stopped, announcing its address on stderr
/// as `storywire serve` does, so that the bench reads both the same way. `STORYWIRE_BARE_LOG`
/// (an EnvFilter) turns on tonic's and hyper's logs, for when the baseline misbehaves.
pub async fn run(listen: SocketAddr) -> Result<()> {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("STORYWIRE_BARE_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    // storywire's backlog, so that a storm of connects meets the same kernel queue.
    let listener = storywire::listen::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    let address = listener.local_addr()?;
    eprintln!("bare listening address={address}");
    Ok(serve(listener).await?)
}

/// Serves the bare baseline on `listener` until the process is stopped.
pub async fn serve(listener: TcpListener) -> Result<(), tonic::transport::Error> {
    let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
    let bare = Bare {
        events,
        sequence: Arc::new(AtomicU64::new(0)),
    };
    Server::builder()
        .add_service(StoryServiceServer::new(bare))
        .serve_with_incoming(accepting(listener))
        .await
}

/// The connections `listener` accepts, each with Nagle's algorithm off. With an incoming stream
/// of its own tonic ignores the builder's `tcp_nodelay`, and a small response written while the
/// client delays its ACK would then wait up to 40 ms: a stall in the baseline's figures that is
/// the socket's, not tonic's.
fn accepting(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::accepting;

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut incoming = accepting(listener);
        let _client = TcpStream::connect(address).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
