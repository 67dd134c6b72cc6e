//! Building and running the gRPC server: the StoryService, gRPC health, server reflection (v1 and
//! v1alpha), and a graceful shutdown that lets every stream flush before it ends.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{server::NamedService, transport::Server};

use crate::{
    auth::{Authorized, Tokens},
    log::EventLog,
    pb::{self, server::story_service_server::StoryServiceServer},
    service::Service,
};

/// How often an idle HTTP/2 connection is pinged, so that a peer that vanished without closing
/// (a laptop lid, a dropped NAT entry) is noticed and its streams are freed.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keepalive ping may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The failures that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The descriptor set for reflection could not be loaded (a build problem).
    #[error("building gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed while serving.
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// How the server guards and limits what clients may do.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// The tokens allowed to call the StoryService; `None` lets anyone call it.
    pub tokens: Option<Arc<Tokens>>,
}

/// Serves `log` on `listener` until `shutdown` completes.
///
/// On shutdown the health status turns NOT_SERVING, every open Subscribe stream sends the events
/// up to the head and then ends with UNAVAILABLE, in-flight unary calls finish, and only then does
/// this return. The binary and the tests both call this function.
pub async fn run(
    listener: TcpListener,
    log: Arc<EventLog>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let story_service_name = <StoryServiceServer<Service> as NamedService>::NAME;
    health
        .set_service_status(story_service_name, tonic_health::ServingStatus::Serving)
        .await;

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    // The sender stays here; each subscription holds a receiver and ends when it turns true.
    let (stopping_tx, stopping_rx) = watch::channel(false);
    let service = Service::new(log.clone(), stopping_rx);

    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: flushing open streams");
        for name in ["", story_service_name] {
            health
                .set_service_status(name, tonic_health::ServingStatus::NotServing)
                .await;
        }
        stopping_tx.send_replace(true);
        log.wake_subscribers();
    };

    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(Authorized::new(
            StoryServiceServer::new(service),
            options.tokens,
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
        .await?;
    Ok(())
}
