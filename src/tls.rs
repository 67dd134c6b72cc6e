//! TLS for the server: a certificate and key in PEM files, and optionally a CA whose client
//! certificates the server requires (mutual TLS). rustls underneath, through tonic.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

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

/// A PEM file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {path}: {source}")]
pub struct TlsError {
    /// The flag that named the file.
    pub flag: &'static str,
    /// The file.
    pub path: String,
    /// What failed.
    pub source: std::io::Error,
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError {
        flag,
        path: path.display().to_string(),
        source,
    })
}

impl TlsFiles {
    /// The server's TLS configuration from the files.
    pub fn server_config(&self) -> Result<ServerTlsConfig, TlsError> {
        let identity = Identity::from_pem(
            read("--tls-cert", &self.cert)?,
            read("--tls-key", &self.key)?,
        );
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(Certificate::from_pem(read("--tls-client-ca", ca)?));
        }
        Ok(config)
    }
}

/// The server's TLS configuration for new handshakes on both faces, read from [`TlsFiles`] and
/// read again by [`ServerTls::reload`]: connections already open keep the certificate they
/// started with.
#[derive(Debug)]
pub struct ServerTls {
    /// Where the PEM files are.
    files: TlsFiles,
    /// The configuration new handshakes use.
    current: std::sync::RwLock<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>,
}

impl ServerTls {
    /// Reads the files.
    pub fn load(files: TlsFiles) -> Result<std::sync::Arc<Self>, TlsError> {
        let config = rustls_config(&files)?;
        Ok(std::sync::Arc::new(Self {
            files,
            current: std::sync::RwLock::new(config),
        }))
    }

    /// Reads the files again; on any error the configuration in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = rustls_config(&self.files)?;
        *self.current.write().expect("TLS lock poisoned") = config;
        Ok(())
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> std::sync::Arc<tokio_rustls::rustls::ServerConfig> {
        self.current.read().expect("TLS lock poisoned").clone()
    }
}

/// A rustls configuration from the files: ALPN offers `h2`, then `http/1.1`.
fn rustls_config(
    files: &TlsFiles,
) -> Result<std::sync::Arc<tokio_rustls::rustls::ServerConfig>, TlsError> {
    use tokio_rustls::rustls::{
        self, RootCertStore,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    };
    let invalid = |flag: &'static str, path: &Path, error: String| TlsError {
        flag,
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, error),
    };
    let chain = CertificateDer::pem_slice_iter(&read("--tls-cert", &files.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("--tls-cert", &files.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(invalid(
            "--tls-cert",
            &files.cert,
            "no certificate in the file".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&read("--tls-key", &files.key)?)
        .map_err(|e| invalid("--tls-key", &files.key, e.to_string()))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("--tls-cert", &files.cert, e.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&read("--tls-client-ca", ca)?) {
                let cert = cert.map_err(|e| invalid("--tls-client-ca", ca, e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| invalid("--tls-client-ca", ca, e.to_string()))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(std::sync::Arc::new(roots), provider)
                    .build()
                    .map_err(|e| invalid("--tls-client-ca", ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| invalid("--tls-key", &files.key, e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(config))
}
