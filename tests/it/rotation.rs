//! Rotation without a restart, against the binary: on SIGHUP `storywire serve` reads its tokens
//! file, and its TLS certificate and key, again. A new token works at once and a removed one is
//! refused; streams opened with a removed token (Subscribe over gRPC, gRPC-Web and SSE, and
//! PublishStream) end with UNAUTHENTICATED within seconds (a token that loses the role:
//! PERMISSION_DENIED) while the others go on; a file that cannot be used is refused with a log
//! line naming it, and the tokens or the certificate in force stay.

use crate::process;
use crate::support;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use process::{HttpServer, Pipe, Running, storywire};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use storywire::pb::{self, story_service_client::StoryServiceClient, subscribe_response::Item};
use support::{
    TempDir, grpc_web,
    http1::{EventStream, get},
    open, publish,
};
use tokio_rustls::{
    TlsConnector,
    rustls::{self, ClientConfig, RootCertStore, pki_types::ServerName},
};
use tonic::{
    Code, Request, Status, Streaming,
    transport::{Certificate, Channel, ClientTlsConfig},
};

const DESK: &str = "desk-token-0123456789";
const OLD: &str = "old-reader-token-0123456789";
const KEPT: &str = "kept-reader-token-0123456789";
const NEW: &str = "new-reader-token-0123456789";

/// How soon a stream must end once its token is revoked: the issue's "within a few seconds".
const FEW_SECONDS: Duration = Duration::from_secs(5);

/// A server whose tokens file the test rewrites.
struct Rotating {
    server: HttpServer,
    tokens: PathBuf,
    _dir: TempDir,
}

impl Rotating {
    /// `storywire serve --tokens FILE --http` with the desk's publish token and the readers
    /// `OLD` and `KEPT`.
    async fn start() -> Self {
        let dir = TempDir::new("rotation");
        let tokens = dir.0.join("tokens");
        write_tokens(&tokens, &[OLD, KEPT]);
        let file = tokens.display().to_string();
        let server = HttpServer::start(&["--tokens", &file]).await;
        Self {
            server,
            tokens,
            _dir: dir,
        }
    }

    /// Sends SIGHUP and reads the log up to the line saying how it went (`tokens reloaded` or
    /// `tokens file refused`); returns that line.
    async fn hangup(&mut self, outcome: &str) -> String {
        self.server.process.hangup().await;
        let lines = self.server.process.read_until(Pipe::Stderr, outcome).await;
        for line in &lines {
            for secret in [DESK, OLD, KEPT, NEW] {
                assert!(!line.contains(secret), "a token in the log: {line}");
            }
        }
        lines.last().expect("the line read last").clone()
    }

    fn grpc_address(&self) -> SocketAddr {
        self.server.grpc["http://".len()..]
            .parse()
            .expect("an address")
    }
}

/// Writes a tokens file: the desk's publish token and each of `readers` with the subscribe role.
fn write_tokens(path: &std::path::Path, readers: &[&str]) {
    write_tokens_with_roles(
        path,
        &readers
            .iter()
            .map(|r| (*r, "subscribe"))
            .collect::<Vec<_>>(),
    );
}

/// Writes a tokens file: the desk's publish token and each of `readers` with its roles.
fn write_tokens_with_roles(path: &std::path::Path, readers: &[(&str, &str)]) {
    let mut text = format!("desk publish {DESK}\n");
    for (n, (reader, roles)) in readers.iter().enumerate() {
        text.push_str(&format!("reader-{n} {roles} {reader}\n"));
    }
    std::fs::write(path, text).expect("write the tokens file");
}

/// `message` with `token` as its bearer token.
fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}").parse().expect("ASCII");
    request.metadata_mut().insert("authorization", value);
    request
}

/// The code ListStories answers with `token`.
async fn list_with(client: &mut StoryServiceClient<Channel>, token: &str) -> Code {
    let request = with_token(pb::ListStoriesRequest::default(), token);
    match client.list_stories(request).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// Publishes `request` with the desk's token; its sequence.
async fn publish_as_desk(
    client: &mut StoryServiceClient<Channel>,
    request: pb::PublishRequest,
) -> u64 {
    let request = with_token(request, DESK);
    client
        .publish(request)
        .await
        .expect("publish")
        .into_inner()
        .sequence
}

/// Publishes a note (story "story" must be open) with the desk's token; its sequence.
async fn publish_note(client: &mut StoryServiceClient<Channel>, text: &str) -> u64 {
    publish_as_desk(client, support::note("story", text)).await
}

/// The status a Subscribe stream ends with, which must come within [`FEW_SECONDS`].
async fn ended(stream: &mut Streaming<pb::SubscribeResponse>) -> Status {
    let end = async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return status,
            }
        }
    };
    tokio::time::timeout(FEW_SECONDS, end)
        .await
        .expect("the stream ends within a few seconds")
}

/// Reads a Subscribe stream, which must go on, up to the event at `sequence`.
async fn receives(stream: &mut Streaming<pb::SubscribeResponse>, sequence: u64) {
    loop {
        let item = support::within("the stream's next item", stream.message())
            .await
            .expect("the stream goes on")
            .expect("still open")
            .item;
        if let Some(Item::Event(event)) = item
            && event.sequence == sequence
        {
            return;
        }
    }
}

#[tokio::test]
async fn after_sighup_a_new_token_works_and_a_removed_one_is_refused() {
    let mut rotating = Rotating::start().await;
    let http = rotating.server.http;
    let mut client = rotating.server.client().await;
    assert_eq!(list_with(&mut client, OLD).await, Code::Ok);
    assert_eq!(list_with(&mut client, NEW).await, Code::Unauthenticated);

    write_tokens(&rotating.tokens, &[NEW, KEPT]);
    rotating.hangup("tokens reloaded").await;

    assert_eq!(list_with(&mut client, NEW).await, Code::Ok);
    assert_eq!(list_with(&mut client, KEPT).await, Code::Ok);
    assert_eq!(list_with(&mut client, OLD).await, Code::Unauthenticated);
    // The HTTP face checks the same tokens.
    let bearer = |token: &str| format!("Bearer {token}");
    let new = get(http, "/v1/stories", &[("authorization", &bearer(NEW))]).await;
    assert_eq!(new.status, 200, "{new:?}");
    let old = get(http, "/v1/stories", &[("authorization", &bearer(OLD))]).await;
    assert_eq!(old.status, 401, "{old:?}");
    assert_eq!(old.json()["code"], "UNAUTHENTICATED");
}

#[tokio::test]
async fn streams_opened_with_a_removed_token_end_unauthenticated_and_the_others_go_on() {
    let mut rotating = Rotating::start().await;
    let http = rotating.server.http;
    let mut client = rotating.server.client().await;
    publish_as_desk(&mut client, open("story", &[])).await;

    let subscribe = pb::SubscribeRequest::default;
    let mut grpc_old = client
        .subscribe(with_token(subscribe(), OLD))
        .await
        .expect("a stream with the old token")
        .into_inner();
    let mut grpc_kept = client
        .subscribe(with_token(subscribe(), KEPT))
        .await
        .expect("a stream with the kept token")
        .into_inner();
    let old_header = format!("Bearer {OLD}");
    let mut sse_old = EventStream::open(http, "/v1/events", &[("authorization", &old_header)])
        .await
        .expect("an SSE stream with the old token");
    sse_old
        .until(|event| event.event.as_deref() == Some("caught_up"))
        .await;
    let path = "/storywire.v1.StoryService/Subscribe";
    let headers = [("authorization", old_header.as_str())];
    let mut web_old = grpc_web::call(rotating.grpc_address(), path, &subscribe(), &headers).await;
    let started: pb::SubscribeResponse = web_old.message().await;
    assert!(
        matches!(started.item, Some(Item::Started(_))),
        "{started:?}"
    );

    write_tokens(&rotating.tokens, &[KEPT]);
    rotating.hangup("tokens reloaded").await;

    let ended = ended(&mut grpc_old).await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("revoked"), "{ended:?}");

    let end = tokio::time::timeout(
        FEW_SECONDS,
        sse_old.until(|event| event.event.as_deref() == Some("end")),
    )
    .await
    .expect("the SSE stream ends within a few seconds");
    let end = end.last().expect("the end event").json();
    assert_eq!(end["code"], "UNAUTHENTICATED", "{end}");
    assert!(
        sse_old.next().await.is_none(),
        "nothing after the end event"
    );

    let (code, message) = tokio::time::timeout(FEW_SECONDS, async {
        loop {
            match web_old.next().await.expect("a frame before the body ends") {
                grpc_web::Frame::Message(_) => continue,
                grpc_web::Frame::Trailers(trailers) => return trailers,
            }
        }
    })
    .await
    .map(|trailers| {
        let find = |name: &str| {
            trailers
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, v)| v.clone())
        };
        (find("grpc-status"), find("grpc-message"))
    })
    .expect("the gRPC-Web stream ends within a few seconds");
    assert_eq!(code.as_deref(), Some("16"), "UNAUTHENTICATED: {message:?}");

    // The stream with a token still in the file goes on.
    let sequence = publish_note(&mut client, "After the rotation").await;
    receives(&mut grpc_kept, sequence).await;
}

#[tokio::test]
async fn a_malformed_tokens_file_is_refused_naming_it_and_the_old_tokens_stay() {
    let mut rotating = Rotating::start().await;
    let mut client = rotating.server.client().await;
    publish_as_desk(&mut client, open("story", &[])).await;
    let mut stream = client
        .subscribe(with_token(pb::SubscribeRequest::default(), OLD))
        .await
        .expect("a stream with the old token")
        .into_inner();

    // A line cut short, as an editor's half-saved file might leave it.
    std::fs::write(
        &rotating.tokens,
        format!("desk publish {DESK}\nreader-0 subscribe\n"),
    )
    .expect("write the tokens file");
    let line = rotating.hangup("tokens file refused").await;
    let file = rotating.tokens.display().to_string();
    assert!(line.contains(&file), "the log line names the file: {line}");
    assert!(line.contains("line 2"), "and the line at fault: {line}");

    assert_eq!(list_with(&mut client, OLD).await, Code::Ok);
    assert_eq!(list_with(&mut client, KEPT).await, Code::Ok);
    // The stream opened with the old token goes on.
    let sequence = publish_note(&mut client, "After the refused reload").await;
    receives(&mut stream, sequence).await;

    // A file that cannot be read at all is refused the same way.
    std::fs::remove_file(&rotating.tokens).expect("remove the tokens file");
    let line = rotating.hangup("tokens file refused").await;
    assert!(line.contains(&file), "the log line names the file: {line}");
    assert_eq!(list_with(&mut client, OLD).await, Code::Ok);
}

#[tokio::test]
async fn a_stream_whose_token_loses_its_role_ends_permission_denied() {
    let mut rotating = Rotating::start().await;
    let mut client = rotating.server.client().await;
    let mut stream = client
        .subscribe(with_token(pb::SubscribeRequest::default(), OLD))
        .await
        .expect("a stream with the old token")
        .into_inner();
    write_tokens_with_roles(&rotating.tokens, &[(OLD, "publish"), (KEPT, "subscribe")]);
    rotating.hangup("tokens reloaded").await;
    let ended = ended(&mut stream).await;
    assert_eq!(ended.code(), Code::PermissionDenied, "{ended:?}");
    assert!(
        ended.message().contains("Subscribe needs subscribe"),
        "{ended:?}"
    );
}

/// A CA for the server's certificates.
fn authority() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::new()).expect("no names");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().expect("a CA key");
    CertifiedIssuer::self_signed(params, key).expect("a CA")
}

/// Writes a new certificate for `localhost` signed by `ca`, and its key, as `server.pem` and
/// `server.key` in `dir`; returns the certificate as DER.
fn issue(dir: &TempDir, ca: &CertifiedIssuer<'static, KeyPair>) -> Vec<u8> {
    let params = CertificateParams::new(vec!["localhost".to_owned()]).expect("names");
    let key = KeyPair::generate().expect("a key");
    let cert = params.signed_by(&key, ca).expect("a certificate");
    std::fs::write(dir.0.join("server.pem"), cert.pem()).expect("write the certificate");
    std::fs::write(dir.0.join("server.key"), key.serialize_pem()).expect("write the key");
    cert.der().to_vec()
}

/// The certificate a new TLS connection to `address` is shown, by a client trusting `ca`.
async fn shown_certificate(address: SocketAddr, ca: &CertifiedIssuer<'static, KeyPair>) -> Vec<u8> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).expect("the CA");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let name = ServerName::try_from("localhost").expect("a name");
    let tls = support::within(
        "a TLS handshake",
        TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("a TLS handshake");
    tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec()
}

/// A gRPC client of the server at `address` over TLS, trusting `ca`.
async fn client_over_tls(
    address: SocketAddr,
    ca: &CertifiedIssuer<'static, KeyPair>,
) -> StoryServiceClient<Channel> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem()));
    let endpoint = Channel::from_shared(format!("https://localhost:{}", address.port()))
        .expect("a URL")
        .tls_config(tls)
        .expect("TLS settings");
    let channel = support::within("a TLS connection", endpoint.connect()).await;
    StoryServiceClient::new(channel.expect("connect over TLS"))
}

#[tokio::test]
async fn on_sighup_new_handshakes_get_the_new_certificate_and_files_that_cannot_be_used_are_refused()
 {
    let dir = TempDir::new("rotation-tls");
    let ca = authority();
    let first = issue(&dir, &ca);
    let (cert, key) = (dir.0.join("server.pem"), dir.0.join("server.key"));
    let (cert_arg, key_arg) = (cert.display().to_string(), key.display().to_string());
    let mut server = Running::spawn(storywire(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert_arg,
        "--tls-key",
        &key_arg,
    ]));
    let (address, _) = server.listening_address().await;
    assert_eq!(shown_certificate(address, &ca).await, first);

    // A renewal caught between its two files: a new key beside the old certificate.
    let other = KeyPair::generate().expect("a key");
    std::fs::write(&key, other.serialize_pem()).expect("write the key");
    server.hangup().await;
    let lines = server.read_until(Pipe::Stderr, "TLS files refused").await;
    let refused = lines.last().expect("the line");
    assert!(
        refused.contains(&format!("--tls-key {key_arg}")),
        "{refused}"
    );
    assert!(!refused.contains("PRIVATE KEY"), "{refused}");
    assert_eq!(shown_certificate(address, &ca).await, first);

    // A connection opened before the renewal goes on with the certificate it shook hands with.
    let mut before = client_over_tls(address, &ca).await;
    publish(&mut before, open("story", &[])).await;

    // Both files written: read again, and new handshakes get the new certificate.
    let second = issue(&dir, &ca);
    server.hangup().await;
    server
        .read_until(Pipe::Stderr, "TLS certificate and key reloaded")
        .await;
    assert_eq!(shown_certificate(address, &ca).await, second);
    publish(
        &mut before,
        support::note("story", "Over the old handshake"),
    )
    .await;
    let mut after = client_over_tls(address, &ca).await;
    publish(&mut after, support::note("story", "Over a new one")).await;
    server.stop_cleanly().await;
}

#[tokio::test]
async fn a_publish_stream_opened_with_a_removed_token_ends_unauthenticated_and_publishes_no_more() {
    let mut rotating = Rotating::start().await;
    let mut client = rotating.server.client().await;
    publish_as_desk(&mut client, open("story", &[])).await;
    // A second publisher, whose token is then taken back.
    write_tokens_with_roles(&rotating.tokens, &[(OLD, "publish"), (KEPT, "subscribe")]);
    rotating.hangup("tokens reloaded").await;
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let requests = tokio_stream::wrappers::ReceiverStream::new(receiver);
    let mut answers = client
        .publish_stream(with_token(requests, OLD))
        .await
        .expect("a PublishStream with the old token")
        .into_inner();
    let message = |text: &str| pb::PublishStreamRequest {
        request: Some(support::note("story", text)),
    };
    sender.send(message("Before")).await.expect("send");
    let first = support::within("the first answer", answers.message())
        .await
        .expect("an answer")
        .expect("the stream goes on");
    assert!(
        matches!(
            first.result,
            Some(pb::publish_stream_response::Result::Accepted(_))
        ),
        "{first:?}"
    );

    write_tokens(&rotating.tokens, &[KEPT]);
    rotating.hangup("tokens reloaded").await;
    let ended = tokio::time::timeout(FEW_SECONDS, answers.message())
        .await
        .expect("the stream ends within a few seconds")
        .expect_err("ended with a status");
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    // Whatever it still sends is not published: the story holds its opening and "Before".
    let _ = sender.send(message("After")).await;
    let story = client
        .get_story(with_token(
            pb::GetStoryRequest {
                story_id: "story".into(),
                as_of_version: None,
            },
            KEPT,
        ))
        .await
        .expect("the story")
        .into_inner()
        .story
        .expect("a story");
    assert_eq!(story.version, 2, "{story:?}");
}
