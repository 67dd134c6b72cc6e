//! Building and running the server's two faces: the gRPC port (the StoryService, gRPC health,
//! server reflection v1 and v1alpha, gRPC-Web for browsers) and the HTTP face, both served by
//! [`crate::connections`], and a graceful shutdown that lets every stream on either flush before
//! it ends.

use std::{future::Future, sync::Arc};

use axum::http;
use tokio::{net::TcpListener, sync::watch};
use tonic::{
    server::NamedService,
    service::{RecoverError, Routes},
};
use tower_layer::Layer as _;

use crate::{
    auth::{Authorized, Tokens},
    cluster::Node,
    connections::{self, Connections, Face, FaceConfig, Lifecycle},
    consumers::Consumers,
    cors::Origins,
    deadline::Deadline,
    http::HttpOptions,
    limits::{Limits, SubscriberSlots},
    listen::Accepting,
    log::EventLog,
    pb::{self, server::story_service_server::StoryServiceServer},
    publisher::{Local, Publisher},
    service::Service,
    throttle::{ConnectionBudgets, WASTED_WITHIN, WasteLayer},
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
}

/// How the server guards and limits what clients may do.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// The tokens allowed to call the StoryService; `None` lets anyone call it.
    pub tokens: Option<Arc<Tokens>>,
    /// Serve TLS (and require client certificates, with a client CA); `None`: plaintext.
    pub tls: Option<TlsFiles>,
    /// What one client may take.
    pub limits: Limits,
    /// On a cluster node: the node whose replica `log` is, and the server's publisher
    /// (`crate::publisher`): publishes go through its stream, and health follows it
    /// (NOT_SERVING while it cannot reach JetStream or is catching up). `None`: the server
    /// publishes to `log` itself.
    pub cluster: Option<Arc<Node>>,
    /// The origins whose pages may call over gRPC-Web ([`crate::cors`]).
    pub cors: Origins,
    /// How long connections on either face may stay silent or idle, and how many one address,
    /// and all, may hold ([`crate::connections`]).
    pub lifecycle: Lifecycle,
    /// TLS already loaded (so that SIGHUP can reload it); without it, `tls` is loaded at start.
    pub tls_config: Option<Arc<ServerTls>>,
    /// Where named consumers are kept (with `--data-dir`, the data directory; with `--nats`,
    /// the cluster's bucket); `None`: in memory, or refused on a cluster node.
    pub consumers: Option<Arc<Consumers>>,
    /// The webhook endpoints' states (`serve --webhooks`), shown on their consumers.
    pub webhooks: Option<Arc<crate::webhooks::WebhookStates>>,
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
    // The one place that decides where updates go; everything after calls the publisher.
    let publisher: Arc<dyn Publisher> = match options.cluster.clone() {
        Some(node) => node,
        None => Arc::new(Local::new(log.clone())),
    };
    debug_assert!(
        Arc::ptr_eq(publisher.log(), &log),
        "a cluster node serves its own replica"
    );
    let serving = publisher.serving();
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

    let limits = options.limits;
    // Both faces count their failed accepts, and their connections, in the log's metrics.
    let accept_failures = log.metrics().accept_failures();
    let connections = Connections::new(options.lifecycle.clone(), log.metrics().connections());
    let slots = SubscriberSlots::new(&limits);
    // Named consumers are kept where the caller says (the data directory, the cluster's
    // bucket); otherwise in memory, except on a cluster node: its memory is not the cluster's,
    // and a consumer kept there would be lost with it and unknown to the other nodes.
    let consumers = options.consumers.clone().unwrap_or_else(|| {
        let clock = Arc::new(crate::clock::SystemClock);
        match options.cluster {
            Some(_) => Consumers::unsupported(clock),
            None => Consumers::in_memory(clock),
        }
    });
    let service = Service::new(publisher, stopping_rx.clone(), slots)
        .with_consumers(consumers)
        .with_webhooks(options.webhooks.clone());
    let tls = match (options.tls_config.clone(), &options.tls) {
        (Some(tls), _) => Some(tls),
        (None, Some(files)) => Some(ServerTls::load(files.clone())?),
        (None, None) => None,
    };
    let face = |face, budgets| FaceConfig {
        face,
        keepalive_interval: limits.keepalive_interval,
        keepalive_timeout: limits.keepalive_timeout,
        max_concurrent_streams: Some(limits.max_streams_per_connection),
        max_pending_accept_reset_streams: Some(limits.max_pending_accept_reset_streams),
        max_local_error_reset_streams: Some(limits.max_local_error_reset_streams),
        max_connection_age: limits.max_connection_age,
        tls: tls.clone(),
        budgets,
    };
    let http = http.map(|(listener, http_options)| {
        let router = crate::http::router(service.clone(), http_options);
        // Wasted streams are a gRPC matter: the HTTP face's reads are never paused.
        let config = face(Face::Http, ConnectionBudgets::new(0.0, 0, WASTED_WITHIN));
        let accepting =
            Accepting::new(listener, limits.keepalive_interval, accept_failures.clone());
        connections::serve(
            accepting,
            config,
            connections.clone(),
            router,
            stopping_rx.clone(),
        )
    });
    let http = async move {
        if let Some(http) = http {
            http.await;
        }
    };

    let story_service = StoryServiceServer::new(service)
        .max_decoding_message_size(limits.max_request_bytes)
        .max_encoding_message_size(limits.max_response_bytes);
    // Every connection reads only while it is within its budget of wasted streams.
    let budgets = ConnectionBudgets::new(
        limits.wasted_streams_per_second,
        limits.wasted_streams_burst,
        limits.wasted_stream_window,
    );
    let routes = Routes::new(Authorized::new(story_service, options.tokens))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .prepare();
    // gRPC-Web: a browser's calls, over HTTP/1.1 or HTTP/2, become gRPC calls before they are
    // routed, so tokens and limits apply to them as to any other; CORS answers a browser's
    // preflight before that. Over HTTP/1.1 a connection carries one call at a time, and a call
    // abandoned early closes it: the budget of wasted streams still counts it, on that
    // connection. Outermost, as in tonic's own server: a call's deadline, and errors as statuses.
    let grpc_service = tonic_web::GrpcWebLayer::new().layer(routes);
    let grpc_service = options.cors.grpc_web().layer(grpc_service);
    let grpc_service = WasteLayer::new(budgets.clone()).layer(grpc_service);
    let grpc_service = RecoverError::new(Deadline::new(grpc_service, limits.request_timeout));
    let grpc = connections::serve(
        Accepting::new(listener, limits.keepalive_interval, accept_failures),
        face(Face::Grpc, budgets),
        connections,
        TonicBody(grpc_service),
        stopping_rx,
    );

    let faces = async move { tokio::join!(grpc, http) };
    tokio::pin!(faces);
    tokio::select! {
        _ = &mut faces => return Ok(()),
        () = shutdown => {}
    }
    tracing::info!("shutting down: flushing open streams");
    // First, so that the health task stops following the publisher; then every face stops
    // accepting and asks its connections to finish, and every subscription sends what is left.
    stopping_tx.send_replace(true);
    for name in ["", story_service_name] {
        health
            .set_service_status(name, tonic_health::ServingStatus::NotServing)
            .await;
    }
    log.wake_subscribers();
    // A subscriber that stopped reading never lets its stream drain: past the grace, the
    // connections still open are dropped with this future.
    let grace = limits.shutdown_grace;
    if tokio::time::timeout(grace, faces).await.is_err() {
        tracing::warn!(
            grace_secs = grace.as_secs_f64(),
            "shutdown: streams still open after the grace period are cut off"
        );
    }
    Ok(())
}

/// Hands the gRPC stack its requests with tonic's body type, as tonic's own server does.
#[derive(Debug, Clone)]
struct TonicBody<S>(S);

impl<S> tower_service::Service<http::Request<hyper::body::Incoming>> for TonicBody<S>
where
    S: tower_service::Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        self.0.call(request.map(tonic::body::Body::new))
    }
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
