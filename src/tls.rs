//! TLS for the server: a certificate and key in PEM files, and optionally a CA whose client
//! certificates the server requires (mutual TLS). rustls underneath.
//!
//! [`ServerTls`] holds the configuration every new handshake uses, on both faces, and reads the
//! files again when asked ([`ServerTls::reload`], on SIGHUP): a renewed certificate is taken
//! without a restart, connections already open go on with the one they shook hands with, and a
//! file that cannot be used leaves the configuration as it was.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use tokio_rustls::rustls::{
    self, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};

/// The PEM files `serve --tls-cert --tls-key [--tls-client-ca]` names.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// A TLS file that cannot be used, named by the flag that gave it and its path.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {path}: {source}")]
pub struct TlsError {
    /// The flag that named the file.
    pub flag: &'static str,
    /// The file.
    pub path: String,
    /// What failed: reading it, parsing it, or rustls refusing what it holds (a key that is not
    /// the certificate's, say).
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl TlsError {
    fn new(
        flag: &'static str,
        path: &Path,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            flag,
            path: path.display().to_string(),
            source: source.into(),
        }
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::new(flag, path, source))
}

impl TlsFiles {
    /// Reads and checks every file and builds the rustls configuration from them: ALPN `h2`
    /// first, then `http/1.1`, and client certificates verified against the client CA when one
    /// is set, as tonic's own server configures it.
    fn rustls_config(&self) -> Result<ServerConfig, TlsError> {
        // The provider named here, not the process default: nothing in this process installs one.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certificates("--tls-cert", &self.cert)?;
        let key_pem = read("--tls-key", &self.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|error| TlsError::new("--tls-key", &self.key, error))?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::new("--tls-cert", &self.cert, error))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, &provider)?),
        };
        // rustls checks that the key is the certificate's.
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|error| TlsError::new("--tls-key", &self.key, error))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Every certificate in the PEM file `path` (given by `flag`); at least one.
fn certificates(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(flag, path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::new(flag, path, error))?;
    if chain.is_empty() {
        return Err(TlsError::new(flag, path, "no CERTIFICATE in the file"));
    }
    Ok(chain)
}

/// A verifier that admits only client certificates the CA in `ca` signed.
fn client_verifier(
    ca: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let flag = "--tls-client-ca";
    let mut roots = RootCertStore::empty();
    for certificate in certificates(flag, ca)? {
        roots
            .add(certificate)
            .map_err(|error| TlsError::new(flag, ca, error))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|error| TlsError::new(flag, ca, error))
}

/// The server's TLS configuration, which the files can replace while the server runs.
///
/// Shared (in an `Arc`) by the accept loops of both faces, which take [`ServerTls::current`]
/// for each new handshake, and by the SIGHUP handler, which calls [`ServerTls::reload`].
pub struct ServerTls {
    /// Where the configuration comes from, read again on each reload.
    files: TlsFiles,
    /// The configuration for new handshakes. Replaced whole by a reload that succeeds; the
    /// lock is held only to clone or swap the `Arc`, so a handshake never waits on file I/O.
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Reads the files; fails, naming the flag and the file, if any cannot be used.
    pub fn load(files: TlsFiles) -> Result<Arc<ServerTls>, TlsError> {
        let config = files.rustls_config()?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(Arc::new(config)),
        }))
    }

    /// Reads the files again and, if they can all be used, makes them the configuration for
    /// new handshakes. On an error the configuration in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Arc::new(self.files.rustls_config()?);
        *self.current.write().expect("TLS config lock poisoned") = config;
        Ok(())
    }

    /// The configuration for a new handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .expect("TLS config lock poisoned")
            .clone()
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    use tokio_rustls::{
        TlsAcceptor, TlsConnector,
        rustls::{ClientConfig, pki_types::ServerName},
    };

    use super::*;

    /// A directory of PEM files, removed when dropped: a CA (`ca.pem`) and the server's
    /// certificate and key, which a test writes and rewrites.
    struct Files {
        dir: PathBuf,
        ca: CertifiedIssuer<'static, KeyPair>,
    }

    impl Files {
        fn new() -> Self {
            static MADE: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "storywire-tls-unit-{}-{}",
                std::process::id(),
                MADE.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).expect("a directory");
            let mut params = CertificateParams::new(Vec::new()).expect("no names");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "test CA");
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
            let key = KeyPair::generate().expect("a CA key");
            let ca = CertifiedIssuer::self_signed(params, key).expect("a CA");
            std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write the CA");
            Self { dir, ca }
        }

        /// Writes a new certificate for `localhost`, signed by the CA, and its key; returns the
        /// certificate as DER, to compare with what a client is shown.
        fn issue(&self) -> Vec<u8> {
            let params = CertificateParams::new(vec!["localhost".to_owned()]).expect("names");
            let key = KeyPair::generate().expect("a key");
            let cert = params.signed_by(&key, &self.ca).expect("a certificate");
            self.write("server.pem", &cert.pem());
            self.write("server.key", &key.serialize_pem());
            cert.der().to_vec()
        }

        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.dir.join(name), text).expect("write a file");
        }

        fn tls_files(&self, client_ca: bool) -> TlsFiles {
            TlsFiles {
                cert: self.dir.join("server.pem"),
                key: self.dir.join("server.key"),
                client_ca: client_ca.then(|| self.dir.join("ca.pem")),
            }
        }

        /// Shakes hands with `server` as a client that trusts the CA and offers h2 and
        /// http/1.1; the certificate it was shown and the protocol agreed.
        async fn handshake(
            &self,
            server: Arc<ServerConfig>,
        ) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
            let mut roots = RootCertStore::empty();
            roots.add(self.ca.der().clone()).expect("the CA");
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut client = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            client.alpn_protocols = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
            let (client_io, server_io) = tokio::io::duplex(64 * 1024);
            let name = ServerName::try_from("localhost").expect("a name");
            let (client, server) = tokio::join!(
                TlsConnector::from(Arc::new(client)).connect(name, client_io),
                TlsAcceptor::from(server).accept(server_io),
            );
            let (client, _server) = (client?, server?);
            let connection = client.get_ref().1;
            let shown = connection.peer_certificates().expect("a certificate")[0].to_vec();
            Ok((
                shown,
                connection.alpn_protocol().unwrap_or_default().to_vec(),
            ))
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[tokio::test]
    async fn a_client_is_shown_the_certificate_and_agrees_on_h2() {
        let files = Files::new();
        let issued = files.issue();
        let tls = ServerTls::load(files.tls_files(false)).expect("load");
        let (shown, protocol) = files.handshake(tls.current()).await.expect("handshake");
        assert_eq!(shown, issued);
        // The server's order wins: h2 although the client listed http/1.1 first.
        assert_eq!(protocol, b"h2");
        assert_eq!(tls.current().alpn_protocols, [&b"h2"[..], b"http/1.1"]);
    }

    #[tokio::test]
    async fn after_a_reload_new_handshakes_get_the_new_certificate() {
        let files = Files::new();
        let first = files.issue();
        let tls = ServerTls::load(files.tls_files(false)).expect("load");
        let before = tls.current();
        let second = files.issue();
        assert_eq!(
            files.handshake(tls.current()).await.expect("handshake").0,
            first
        );
        tls.reload().expect("reload");
        assert_eq!(
            files.handshake(tls.current()).await.expect("handshake").0,
            second
        );
        // A configuration taken before the reload (an open connection's) is unchanged.
        assert_eq!(files.handshake(before).await.expect("handshake").0, first);
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_used_is_refused_naming_it_and_the_old_config_stays() {
        let files = Files::new();
        let issued = files.issue();
        let tls = ServerTls::load(files.tls_files(false)).expect("load");
        let cert_pem = std::fs::read_to_string(files.dir.join("server.pem")).expect("read");

        files.write("server.pem", "not a certificate\n");
        let error = tls.reload().expect_err("no certificate").to_string();
        assert!(
            error.contains("--tls-cert") && error.contains("server.pem"),
            "{error}"
        );

        // A key that is not the certificate's, as when a renewal has written one file of two.
        files.write("server.pem", &cert_pem);
        let other = KeyPair::generate().expect("a key");
        files.write("server.key", &other.serialize_pem());
        let error = tls.reload().expect_err("a mismatched key").to_string();
        assert!(
            error.contains("--tls-key") && error.contains("server.key"),
            "{error}"
        );

        std::fs::remove_file(files.dir.join("server.key")).expect("remove the key");
        let error = tls.reload().expect_err("no key").to_string();
        assert!(
            error.contains("--tls-key") && error.contains("server.key"),
            "{error}"
        );
        assert!(!error.contains("PRIVATE KEY-----"), "{error}");

        assert_eq!(
            files.handshake(tls.current()).await.expect("handshake").0,
            issued
        );
        let error = ServerTls::load(files.tls_files(false)).expect_err("no key");
        assert_eq!(error.flag, "--tls-key");
    }

    #[tokio::test]
    async fn with_a_client_ca_a_client_without_a_certificate_is_refused() {
        let files = Files::new();
        files.issue();
        let tls = ServerTls::load(files.tls_files(true)).expect("load");
        files
            .handshake(tls.current())
            .await
            .expect_err("no client certificate");
        files.write("ca.pem", "");
        let error = tls.reload().expect_err("an empty CA file").to_string();
        assert!(error.contains("--tls-client-ca"), "{error}");
    }
}
