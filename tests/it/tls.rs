//! TLS and mutual TLS, with certificates made fresh for each test: a client that trusts the CA
//! talks to the server end to end, and a plaintext client or one that trusts another CA does not;
//! with a client CA the server admits only certificates that CA signed; a browser's gRPC-Web call
//! is answered over TLS; and the `storywire` binary serves and calls over https.

use crate::process;
use crate::support;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
};

use process::{Running, curl, run, storywire};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use storywire::{
    cli::with_causes,
    pb::{self, story_service_client::StoryServiceClient},
    server::ServerOptions,
    tls::TlsFiles,
};
use support::*;
use tonic::{
    codegen::{Service as _, http},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

/// A CA and what it signed, as PEM files in a directory of their own, removed when dropped.
///
/// - `ca.pem`: the CA every trusting party is given.
/// - `server.pem`, `server.key`: the server, for `localhost` and 127.0.0.1, signed by the CA.
/// - `client.pem`, `client.key`: a client identity signed by the CA.
/// - `stranger-ca.pem`, `stranger.pem`, `stranger.key`: another CA, and a client identity it
///   signed, which the server has never heard of.
///
/// tests/it/webhooks.rs uses them for an https receiver.
pub(crate) struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    /// Makes the certificates in a new directory under the system's temp directory, named for
    /// this process (unique among running processes) and a count of the directories it has made.
    pub(crate) fn new() -> Self {
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "storywire-tls-{}-{}",
            std::process::id(),
            MADE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the certificates' directory");
        let certificates = Self { dir };

        let ca = authority("storywire test CA");
        certificates.write("ca.pem", &ca.pem());
        let server = leaf(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca,
        );
        certificates.write_identity("server", server);
        let client = leaf(&[], ExtendedKeyUsagePurpose::ClientAuth, &ca);
        certificates.write_identity("client", client);

        let stranger_ca = authority("some other CA");
        certificates.write("stranger-ca.pem", &stranger_ca.pem());
        let stranger = leaf(&[], ExtendedKeyUsagePurpose::ClientAuth, &stranger_ca);
        certificates.write_identity("stranger", stranger);
        certificates
    }

    /// The path of one of the files.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The path of one of the files, as a command-line argument.
    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// The contents of one of the files.
    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).expect("read a certificate file")
    }

    /// The server's files, requiring client certificates from `client_ca` when it is given.
    pub(crate) fn server_files(&self, client_ca: Option<&str>) -> TlsFiles {
        TlsFiles {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: client_ca.map(|name| self.path(name)),
        }
    }

    /// A client identity (`client` or `stranger`) as tonic takes it.
    fn identity(&self, name: &str) -> Identity {
        Identity::from_pem(
            self.read(&format!("{name}.pem")),
            self.read(&format!("{name}.key")),
        )
    }

    /// Client settings that trust the CA in the file `ca`.
    fn trusting(&self, ca: &str) -> ClientTlsConfig {
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.read(ca)))
    }

    /// Client settings that trust `ca.pem` and present the identity `name` (for mutual TLS).
    fn presenting(&self, name: &str) -> ClientTlsConfig {
        self.trusting("ca.pem").identity(self.identity(name))
    }

    fn write(&self, name: &str, pem: &str) {
        std::fs::write(self.path(name), pem).expect("write a certificate file");
    }

    fn write_identity(&self, name: &str, (cert, key): (String, String)) {
        self.write(&format!("{name}.pem"), &cert);
        self.write(&format!("{name}.key"), &key);
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A self-signed CA named `name`.
fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::new()).expect("no names to check");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("generate the CA's key");
    CertifiedIssuer::self_signed(params, key).expect("sign the CA")
}

/// A certificate for `names` and `purpose` signed by `ca`, and its key: both as PEM.
fn leaf(
    names: &[&str],
    purpose: ExtendedKeyUsagePurpose,
    ca: &CertifiedIssuer<'static, KeyPair>,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
    let mut params = CertificateParams::new(names).expect("valid names");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("storywire test {purpose:?}"));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![purpose];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("generate a key");
    let cert = params.signed_by(&key, ca).expect("sign a certificate");
    (cert.pem(), key.serialize_pem())
}

/// A TLS server in this process on 127.0.0.1, requiring client certificates signed by the CA in
/// `client_ca` when it is given.
async fn tls_server(certificates: &Certificates, client_ca: Option<&str>) -> TestServer {
    TestServer::with_options(ServerOptions {
        tls: Some(certificates.server_files(client_ca)),
        ..Default::default()
    })
    .await
}

/// The server's https:// URL with `host` (`127.0.0.1` or `localhost`) and its port.
fn https_url(server: &TestServer, host: &str) -> String {
    format!("https://{host}:{}", server.address.port())
}

/// Connects to `url` with `tls` (none: plaintext) and lists the stories: the first call is where
/// a refused client certificate shows, since under TLS 1.3 the server judges it after the
/// client has finished its side of the handshake. Any failure comes back as text, with its causes.
async fn list_stories(url: String, tls: Option<ClientTlsConfig>) -> Result<Vec<pb::Story>, String> {
    let mut endpoint = Endpoint::from_shared(url).expect("a valid URL");
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).expect("valid TLS settings");
    }
    let channel = within("a connection", endpoint.connect())
        .await
        .map_err(|e| with_causes(&e))?;
    let request = pb::ListStoriesRequest::default();
    let response = within(
        "list_stories",
        StoryServiceClient::new(channel).list_stories(request),
    )
    .await
    .map_err(|status| with_causes(&status))?;
    Ok(response.into_inner().stories)
}

/// Connects over TLS with `tls`, expecting it to work.
async fn tls_client(url: String, tls: ClientTlsConfig) -> StoryServiceClient<Channel> {
    StoryServiceClient::new(tls_channel(url, tls).await)
}

/// A TLS connection to `url`, trusting what `tls` trusts.
async fn tls_channel(url: String, tls: ClientTlsConfig) -> Channel {
    let endpoint = Endpoint::from_shared(url)
        .expect("a valid URL")
        .tls_config(tls)
        .expect("valid TLS settings");
    within("a TLS connection", endpoint.connect())
        .await
        .expect("connect over TLS")
}

#[tokio::test]
async fn a_client_trusting_the_ca_publishes_and_subscribes_over_tls() {
    let certificates = Certificates::new();
    let server = tls_server(&certificates, None).await;
    let url = https_url(&server, "127.0.0.1");
    let mut subscriber = tls_client(url.clone(), certificates.trusting("ca.pem")).await;
    let mut publisher = tls_client(url, certificates.trusting("ca.pem")).await;

    let mut stream = subscribe(&mut subscriber, from(1)).await;
    let (before, _) = until_caught_up(&mut stream).await;
    assert!(before.is_empty(), "a new log: {before:?}");
    let published = publish(&mut publisher, open("election", &["politics"])).await;
    let event = next_event(&mut stream).await;
    assert_eq!(event.sequence, published.sequence);
    assert_eq!(event.story_id, "election");

    drop(stream);
    server.stop().await;
}

#[tokio::test]
async fn a_grpc_web_call_is_answered_over_tls_on_http2_as_browsers_negotiate_it() {
    // The server offers only h2 in ALPN (tonic's TLS), which every browser speaks.
    let certificates = Certificates::new();
    let server = tls_server(&certificates, None).await;
    let url = https_url(&server, "127.0.0.1");
    let mut publisher = tls_client(url.clone(), certificates.trusting("ca.pem")).await;
    publish(&mut publisher, open("election", &[])).await;

    let mut channel = tls_channel(url, certificates.trusting("ca.pem")).await;
    let message = pb::GetStoryRequest {
        story_id: "election".to_owned(),
        as_of_version: None,
    };
    let mut request = http::Request::post("/storywire.v1.StoryService/GetStory");
    for (name, value) in grpc_web::HEADERS {
        request = request.header(name, value);
    }
    let body = tonic::body::Body::new(http_body_util::Full::new(grpc_web::frame(&message)));
    let request = request.body(body).expect("a request");
    within(
        "the channel to be ready",
        std::future::poll_fn(|cx| channel.poll_ready(cx)),
    )
    .await
    .expect("ready");
    let response = within("a gRPC-Web call", channel.call(request))
        .await
        .expect("an answer");
    let mut answer = grpc_web::Response::new(response);
    assert_eq!(answer.version, http::Version::HTTP_2);
    assert_eq!(answer.header("content-type"), Some(grpc_web::CONTENT_TYPE));
    let found: pb::GetStoryResponse = answer.message().await;
    assert_eq!(found.story.expect("a story").id, "election");
    assert_eq!(answer.status().await.0, "0");
    server.stop().await;
}

#[tokio::test]
async fn over_tls_a_connection_past_its_budget_of_wasted_streams_waits_and_others_do_not() {
    let certificates = Certificates::new();
    let server = TestServer::with_options(ServerOptions {
        tls: Some(certificates.server_files(None)),
        limits: waste_budget(2),
        ..Default::default()
    })
    .await;
    let url = https_url(&server, "127.0.0.1");
    let mut neighbour = tls_client(url.clone(), certificates.trusting("ca.pem")).await;
    publish(&mut neighbour, open("story", &[])).await;
    let wasteful = tls_channel(url, certificates.trusting("ca.pem")).await;
    // Three calls cancelled before any answer: past a burst of 2, so the server stops reading
    // this connection.
    waste_by_cancelling(&wasteful, 3).await;
    assert!(
        !answered_alongside(&StoryServiceClient::new(wasteful), &mut neighbour).await,
        "the paused connection's publish must still wait"
    );
}

#[tokio::test]
async fn a_plaintext_client_cannot_talk_to_a_tls_server() {
    let certificates = Certificates::new();
    let server = tls_server(&certificates, None).await;

    let plaintext = list_stories(server.url(), None).await;
    assert!(plaintext.is_err(), "plaintext got through: {plaintext:?}");
    // The same server answers a client that speaks TLS: the refusal was about plaintext.
    let tls = list_stories(
        https_url(&server, "127.0.0.1"),
        Some(certificates.trusting("ca.pem")),
    )
    .await;
    assert_eq!(tls.expect("TLS gets through"), Vec::new());
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_refuses_the_server() {
    let certificates = Certificates::new();
    let server = tls_server(&certificates, None).await;

    let refused = list_stories(
        https_url(&server, "127.0.0.1"),
        Some(certificates.trusting("stranger-ca.pem")),
    )
    .await
    .expect_err("a server signed by an unknown CA is refused");
    assert!(refused.contains("UnknownIssuer"), "{refused}");
}

#[tokio::test]
async fn mutual_tls_admits_only_client_certificates_the_ca_signed() {
    let certificates = Certificates::new();
    let server = tls_server(&certificates, Some("ca.pem")).await;
    let url = https_url(&server, "localhost");

    let signed = certificates.presenting("client");
    let admitted = list_stories(url.clone(), Some(signed)).await;
    assert_eq!(
        admitted.expect("a CA-signed client is admitted"),
        Vec::new()
    );

    let anonymous = list_stories(url.clone(), Some(certificates.trusting("ca.pem"))).await;
    assert!(
        anonymous.is_err(),
        "no client certificate got through: {anonymous:?}"
    );

    let stranger = certificates.presenting("stranger");
    let stranger = list_stories(url, Some(stranger)).await;
    assert!(
        stranger.is_err(),
        "a certificate from an unknown CA got through: {stranger:?}"
    );
}

#[tokio::test]
async fn the_cli_reads_stories_and_health_over_https_with_its_ca() {
    let certificates = Certificates::new();
    let server = tls_server(&certificates, None).await;
    let url = https_url(&server, "localhost");
    let mut publisher = tls_client(url.clone(), certificates.trusting("ca.pem")).await;
    publish(&mut publisher, open("election", &["politics"])).await;
    let ca = certificates.arg("ca.pem");

    let stories = run(storywire(&["stories", "--server", &url, "--ca", &ca])).await;
    assert!(stories.success().starts_with("election  v1"), "{stories}");

    let mut from_environment = storywire(&["story", "election", "--server", &url]);
    from_environment.env("STORYWIRE_CA", &ca);
    assert!(
        run(from_environment)
            .await
            .success()
            .contains("The election story")
    );

    // By address too: the server's certificate names 127.0.0.1 as well as localhost.
    let by_address = https_url(&server, "127.0.0.1");
    let health = run(storywire(&["health", "--server", &by_address, "--ca", &ca])).await;
    assert_eq!(health.success(), "SERVING\n");

    let without_ca = run(storywire(&["stories", "--server", &url])).await;
    let stderr = without_ca.failure(1);
    assert!(
        stderr.starts_with("error: --server https://localhost:") && stderr.contains("--ca PEM"),
        "{without_ca}"
    );
    assert_eq!(without_ca.stdout, "", "{without_ca}");

    let missing = certificates.arg("no-such-ca.pem");
    let unreadable = run(storywire(&["stories", "--server", &url, "--ca", &missing])).await;
    assert!(
        unreadable
            .failure(1)
            .starts_with(&format!("error: --ca {missing}: ")),
        "{unreadable}"
    );

    let not_a_certificate = certificates.arg("server.key");
    let wrong_file = run(storywire(&[
        "stories",
        "--server",
        &url,
        "--ca",
        &not_a_certificate,
    ]))
    .await;
    assert_eq!(
        wrong_file.failure(1),
        format!("error: --ca {not_a_certificate}: no PEM certificate in it\n")
    );

    let stranger_ca = certificates.arg("stranger-ca.pem");
    let untrusted = run(storywire(&[
        "stories",
        "--server",
        &url,
        "--ca",
        &stranger_ca,
    ]))
    .await;
    assert!(
        untrusted.failure(1).starts_with("error: UNAVAILABLE"),
        "{untrusted}"
    );
}

#[tokio::test]
async fn the_cli_refuses_tls_flags_for_a_plaintext_server() {
    let certificates = Certificates::new();
    let server = TestServer::start().await;
    let url = server.url();
    let ca = certificates.arg("ca.pem");
    let (cert, key) = (
        certificates.arg("client.pem"),
        certificates.arg("client.key"),
    );

    let with_ca = run(storywire(&["stories", "--server", &url, "--ca", &ca])).await;
    assert_eq!(
        with_ca.failure(1),
        format!("error: --ca needs an https:// server, not {url}\n")
    );
    let with_identity = run(storywire(&[
        "stories", "--server", &url, "--cert", &cert, "--key", &key,
    ]))
    .await;
    assert!(
        with_identity
            .failure(1)
            .starts_with("error: --cert needs an https:// server"),
        "{with_identity}"
    );
    // Each of --cert and --key needs the other (clap's usage error: exit code 2).
    let alone = run(storywire(&["stories", "--server", &url, "--cert", &cert])).await;
    assert!(alone.failure(2).contains("--key"), "{alone}");

    // Without the flags, plaintext works as it always has.
    assert_eq!(
        run(storywire(&["health", "--server", &url]))
            .await
            .success(),
        "SERVING\n"
    );
}

#[tokio::test]
async fn the_cli_presents_its_client_certificate_for_mutual_tls() {
    let certificates = Certificates::new();
    let server = tls_server(&certificates, Some("ca.pem")).await;
    let url = https_url(&server, "localhost");
    let signed = certificates.presenting("client");
    let mut publisher = tls_client(url.clone(), signed).await;
    publish(&mut publisher, open("election", &["politics"])).await;
    let ca = certificates.arg("ca.pem");
    let (cert, key) = (
        certificates.arg("client.pem"),
        certificates.arg("client.key"),
    );

    let admitted = run(storywire(&[
        "stories", "--server", &url, "--ca", &ca, "--cert", &cert, "--key", &key,
    ]))
    .await;
    assert!(admitted.success().starts_with("election  v1"), "{admitted}");

    let mut from_environment = storywire(&["health", "--server", &url]);
    from_environment
        .env("STORYWIRE_CA", &ca)
        .env("STORYWIRE_CERT", &cert)
        .env("STORYWIRE_KEY", &key);
    assert_eq!(run(from_environment).await.success(), "SERVING\n");

    let anonymous = run(storywire(&["stories", "--server", &url, "--ca", &ca])).await;
    assert!(anonymous.failure(1).starts_with("error: "), "{anonymous}");
    assert_eq!(anonymous.stdout, "", "{anonymous}");

    let (cert, key) = (
        certificates.arg("stranger.pem"),
        certificates.arg("stranger.key"),
    );
    let stranger = run(storywire(&[
        "stories", "--server", &url, "--ca", &ca, "--cert", &cert, "--key", &key,
    ]))
    .await;
    assert!(stranger.failure(1).starts_with("error: "), "{stranger}");
    assert_eq!(stranger.stdout, "", "{stranger}");
}

#[tokio::test]
async fn serve_with_tls_answers_the_cli_over_https_and_exits_zero_on_sigterm() {
    let certificates = Certificates::new();
    let (cert, key) = (
        certificates.arg("server.pem"),
        certificates.arg("server.key"),
    );
    let mut server = Running::spawn(storywire(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]));
    let (address, _) = server.listening_address().await;

    let url = format!("https://localhost:{}", address.port());
    let ca = certificates.arg("ca.pem");
    let health = run(storywire(&["health", "--server", &url, "--ca", &ca])).await;
    assert_eq!(health.success(), "SERVING\n");
    let plaintext = run(storywire(&[
        "health",
        "--server",
        &format!("http://{address}"),
    ]))
    .await;
    // A TLS alert where HTTP/2 frames were expected: h2 says INTERNAL rather than UNAVAILABLE.
    assert!(plaintext.failure(1).starts_with("error: "), "{plaintext}");

    server.stop_cleanly().await;
}

#[tokio::test]
async fn serve_with_an_unreadable_tls_file_stops_before_it_listens() {
    let missing =
        std::env::temp_dir().join(format!("storywire-no-such-{}.pem", std::process::id()));
    let missing = missing.to_string_lossy().into_owned();
    let finished = run(storywire(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &missing,
        "--tls-key",
        &missing,
    ]))
    .await;
    let stderr = finished.failure(1);
    assert!(
        stderr.contains(&format!("--tls-cert {missing}")),
        "{finished}"
    );
    assert!(!stderr.contains("storywire listening"), "{finished}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_face_serves_https_over_http2_and_http1_with_the_grpc_certificate() {
    let certificates = Certificates::new();
    let (cert, key, ca) = (
        certificates.arg("server.pem"),
        certificates.arg("server.key"),
        certificates.arg("ca.pem"),
    );
    let mut server = process::HttpServer::start(&["--tls-cert", &cert, "--tls-key", &key]).await;
    let grpc = server.grpc.replacen("http://", "https://", 1);
    let mut client = tls_client(grpc, certificates.trusting("ca.pem")).await;
    client.publish(open("tls", &[])).await.expect("open");
    let base = format!("https://127.0.0.1:{}", server.http.port());

    // JSON over HTTP/2 (ALPN h2) and over HTTP/1.1, with the certificate the gRPC port has.
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = curl(&[
            flag,
            "--cacert",
            &ca,
            "--write-out",
            "\n%{http_version}",
            &format!("{base}/v1/stories"),
        ])
        .await;
        let (body, negotiated) = out.rsplit_once('\n').expect("a version line");
        assert_eq!(negotiated, version, "{out}");
        let stories: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(stories["stories"][0]["id"], "tls", "{body}");
    }

    // A live event over SSE on HTTP/2.
    let mut command = tokio::process::Command::new("curl");
    command.args([
        "--silent",
        "--no-buffer",
        "--http2",
        "--include",
        "--cacert",
        &ca,
        "--max-time",
        "20",
        &format!("{base}/v1/events?story=tls"),
    ]);
    let mut events = Running::spawn(command);
    events.read_until(process::Pipe::Stdout, "HTTP/2 200").await;
    events
        .read_until(process::Pipe::Stdout, "event: caught_up")
        .await;
    client
        .publish(note("tls", "over h2"))
        .await
        .expect("publish");
    events.read_until(process::Pipe::Stdout, "over h2").await;
    server.process.stop_cleanly().await;
}
