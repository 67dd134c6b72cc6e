//! Building and running the gRPC server: the StoryService, gRPC health, server reflection (v1 and
//! v1alpha), gRPC-Web for browsers on the same port, and a graceful shutdown that lets every
//! stream flush before it ends.

use std::{future::Future, sync::Arc};

use tokio::{net::TcpListener, sync::watch};
use tokio_stream::StreamExt as _;
use tonic::{server::NamedService, transport::Server};

use crate::{
    auth::{Authorized, Tokens},
    cluster::Node,
    cors::Origins,
    http::HttpOptions,
    limits::{Limits, SubscriberSlots},
    listen::Accepting,
    log::EventLog,
    pb::{self, server::story_service_server::StoryServiceServer},
    service::Service,
    throttle::{ConnectionBudgets, WasteLayer},
    tls::{ServerTls, TlsFiles},
};

/// The failures that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The descriptor set for reflection could not be loaded (a build problem).
    #[error("building gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The TLS files could not be read.
    #[error("TLS: {0}")]
    TlsFiles(#[from] crate::tls::TlsError),
    /// The transport failed while serving.
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// How the server guards and limits what clients may do.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// The tokens allowed to call the StoryService; `None` lets anyone call it.
    pub tokens: Option<Arc<Tokens>>,
    /// Serve TLS (and require client certificates, with a client CA); `None`: plaintext.
    pub tls: Option<TlsFiles>,
    /// The TLS configuration both faces' new handshakes take, which SIGHUP reloads from the
    /// files of `tls`; `None`: plaintext.
    pub tls_config: Option<Arc<ServerTls>>,
    /// What one client may take.
    pub limits: Limits,
    /// On a cluster node: the node whose replica `log` is. Publishes go through its stream,
    /// and health follows it (NOT_SERVING while it cannot reach JetStream or is catching up).
    pub cluster: Option<Arc<Node>>,
    /// The origins whose pages may call over gRPC-Web ([`crate::cors`]).
    pub cors: Origins,
}

/// Serves `log` on `listener` until `shutdown` completes.
///
/// On shutdown the health status turns NOT_SERVING, every open Subscribe stream sends the events
/// up to the head and then ends with UNAVAILABLE, in-flight unary calls finish, and only then does
/// this return; or, at the latest, once `limits.shutdown_grace` has passed, leaving the
/// connections still open (a subscriber that stopped reading) to end with the runtime. The binary
/// and the tests both call this function.
pub async fn run(
    listener: TcpListener,
    log: Arc<EventLog>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    run_with_http(listener, None, log, options, shutdown).await
}

/// [`run`], and with `http` also the HTTP face ([`crate::http`]) on its own listener, over the
/// same service: it stops taking requests at shutdown, and its event streams end with the gRPC
/// ones.
pub async fn run_with_http(
    listener: TcpListener,
    http: Option<(TcpListener, HttpOptions)>,
    log: Arc<EventLog>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let story_service_name = <StoryServiceServer<Service> as NamedService>::NAME;
    let (stopping_tx, stopping_rx) = watch::channel(false);
    let serving = match &options.cluster {
        Some(node) => node.serving(),
        None => watch::channel(true).1,
    };
    let status = if *serving.borrow() {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for name in ["", story_service_name] {
        health.set_service_status(name, status).await;
    }
    tokio::spawn(report_health(health.clone(), serving, stopping_rx.clone()));

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    // The sender stays here; each subscription holds a receiver and ends when it turns true.
    let mut stopping = stopping_rx.clone();
    let http_stopping = stopping_rx.clone();
    let limits = options.limits;
    // Both faces count their failed accepts in the log's metrics.
    let accept_failures = log.metrics().accept_failures();
    let slots = SubscriberSlots::new(&limits);
    let service = Service::new(log.clone(), stopping_rx, slots).through(options.cluster.clone());
    if let Some((listener, http_options)) = http {
        let router = crate::http::router(service.clone(), http_options);
        let failures = accept_failures.clone();
        let mut stopping = http_stopping;
        tokio::spawn(async move {
            let served = axum::serve(
                Accepting::new(listener, limits.keepalive_interval, failures),
                // The peer's address, for the per-address limits.
                router.into_make_service_with_connect_info::<crate::connections::ClientAddress>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stopping.wait_for(|stopping| *stopping).await;
            })
            .await;
            if let Err(error) = served {
                tracing::error!(%error, "HTTP: serving stopped");
            }
        });
    }
    let story_service = StoryServiceServer::new(service)
        .max_decoding_message_size(limits.max_request_bytes)
        .max_encoding_message_size(limits.max_response_bytes);

    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: flushing open streams");
        // First, so that the health task stops following the cluster node.
        stopping_tx.send_replace(true);
        for name in ["", story_service_name] {
            health
                .set_service_status(name, tonic_health::ServingStatus::NotServing)
                .await;
        }
        log.wake_subscribers();
    };

    // Every connection reads only while it is within its budget of wasted streams.
    let budgets = ConnectionBudgets::new(
        limits.wasted_streams_per_second,
        limits.wasted_streams_burst,
    );
    let incoming = {
        let budgets = budgets.clone();
        Accepting::new(listener, limits.keepalive_interval, accept_failures)
            .into_stream()
            .map(move |(tcp, peer)| Ok::<_, std::io::Error>(budgets.throttle(tcp, Some(peer))))
    };

    // The builder's TCP settings (tcp_nodelay, tcp_keepalive) apply only to listeners tonic
    // binds itself; with an incoming stream of our own, `Accepting` sets them.
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .max_concurrent_streams(limits.max_streams_per_connection)
        .timeout(limits.request_timeout)
        .http2_max_pending_accept_reset_streams(Some(limits.max_pending_accept_reset_streams))
        .http2_max_local_error_reset_streams(Some(limits.max_local_error_reset_streams));
    if let Some(age) = limits.max_connection_age {
        builder = builder.max_connection_age(age);
    }
    if let Some(tls) = &options.tls {
        builder = builder.tls_config(tls.server_config()?)?;
    }
    // gRPC-Web: a browser's calls, over HTTP/1.1 or HTTP/2, become gRPC calls before they are
    // routed, so tokens and limits apply to them as to any other; CORS answers a browser's
    // preflight before that. Over HTTP/1.1 a connection carries one call at a time, and a call
    // abandoned early closes it: the budget of wasted streams still counts it, on that
    // connection.
    let serve = builder
        .accept_http1(true)
        .layer(WasteLayer::new(budgets))
        .layer(options.cors.grpc_web())
        .layer(tonic_web::GrpcWebLayer::new())
        .add_service(Authorized::new(story_service, options.tokens))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, signal);
    // tonic's graceful shutdown waits for every connection with no deadline, and a subscriber
    // that stopped reading never lets its stream drain.
    let grace = limits.shutdown_grace;
    let grace_over = async move {
        // The sender lives in `signal`, inside `serve`, which this races against.
        let _ = stopping.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = serve => served?,
        () = grace_over => {
            // Dropping the server stops accepting; the connections still open end when the
            // caller's runtime does, which the binary ends right after closing the log.
            tracing::warn!(grace_secs = grace.as_secs_f64(),
                "shutdown: streams still open after the grace period are cut off");
        }
    }
    Ok(())
}

/// Keeps the health status of the server (`""`) and of the StoryService at what `serving` says,
/// until shutdown begins (which turns both NOT_SERVING for good).
async fn report_health(
    health: tonic_health::server::HealthReporter,
    mut serving: watch::Receiver<bool>,
    mut stopping: watch::Receiver<bool>,
) {
    let story_service_name = <StoryServiceServer<Service> as NamedService>::NAME;
    loop {
        let status = if *serving.borrow_and_update() {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        if *stopping.borrow() {
            return;
        }
        for name in ["", story_service_name] {
            health.set_service_status(name, status).await;
        }
        tokio::select! {
            changed = serving.changed() => if changed.is_err() { return },
            _ = stopping.wait_for(|stopping| *stopping) => return,
        }
    }
}
