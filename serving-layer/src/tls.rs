//! HTTPS: `serving.tls_cert` and `serving.tls_key` loaded into rustls (ring provider), and a
//! listener that hands `axum::serve` connections whose TLS handshake is already done.
//!
//! Implementing axum's own [`Listener`] keeps `axum::serve` in charge of connections and
//! graceful shutdown for HTTP and HTTPS alike; a separate server crate (axum-server) would be
//! a second serving loop to keep in step, and its rustls feature defaults to aws-lc-rs.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take over its handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS setting that cannot be used; the message names the config key and the file, and ends
/// with the library's words (kept out of `source()` so a `{:#}` chain does not repeat them).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("serving.tls_cert: cannot read certificates from {path}: {cause}")]
    Cert {
        path: PathBuf,
        cause: rustls::pki_types::pem::Error,
    },
    #[error("serving.tls_cert: no certificate in {path} (expected PEM `BEGIN CERTIFICATE`)")]
    NoCert { path: PathBuf },
    #[error("serving.tls_key: cannot read a private key from {path}: {cause}")]
    Key {
        path: PathBuf,
        cause: rustls::pki_types::pem::Error,
    },
    #[error("serving.tls_key: {path} cannot serve serving.tls_cert {cert}: {cause}")]
    Config {
        path: PathBuf,
        cert: PathBuf,
        cause: rustls::Error,
    },
}

/// Reads the certificate chain and its key, and checks that they belong together.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|cause| TlsError::Cert {
            path: cert.to_path_buf(),
            cause,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert {
            path: cert.to_path_buf(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|cause| TlsError::Key {
        path: key.to_path_buf(),
        cause,
    })?;
    let config_error = |cause| TlsError::Config {
        path: key.to_path_buf(),
        cert: cert.to_path_buf(),
        cause,
    };
    // The provider is chosen here, not process-wide, so nothing depends on which rustls
    // features other crates of the build enable.
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(config_error)?;
    // axum is built with HTTP/1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts TCP connections and runs each handshake in its own task (bounded by
/// [`HANDSHAKE_TIMEOUT`]), so a slow or silent client never holds up the others. It owns the
/// socket and the handshakes: when `axum::serve` drops it on shutdown, the port closes and the
/// handshakes under way are aborted at once.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<(Handshake, SocketAddr)>,
}

type Handshake = Result<io::Result<TlsStream<TcpStream>>, tokio::time::error::Elapsed>;

impl TlsListener {
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> TlsListener {
        TlsListener {
            tcp,
            acceptor,
            handshakes: JoinSet::new(),
        }
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    // Cancel-safe, as `axum::serve` needs (it selects over this and its shutdown signal): both
    // `TcpListener::accept` and `JoinSet::join_next` are, and nothing else is awaited between
    // a connection arriving and being kept.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let acceptor = self.acceptor.clone();
                        self.handshakes.spawn(async move {
                            let tls = tokio::time::timeout(
                                HANDSHAKE_TIMEOUT,
                                acceptor.accept(stream),
                            )
                            .await;
                            (tls, peer)
                        });
                    }
                    Err(e) => accept_error(e).await,
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    match done {
                        Ok((Ok(Ok(tls)), peer)) => return (tls, peer),
                        // A client that does not trust the certificate ends here: routine.
                        Ok((Ok(Err(e)), peer)) => {
                            tracing::debug!(%peer, error = %e, "tls handshake failed")
                        }
                        Ok((Err(_), peer)) => tracing::debug!(%peer, "tls handshake timed out"),
                        Err(e) => tracing::warn!(error = %e, "tls handshake task failed"),
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// As axum does for plain TCP: a failed connection is skipped; anything else (e.g. out of file
/// descriptors) is logged and waited out, rather than spinning.
async fn accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_name_their_config_key() {
        let dir = std::env::temp_dir().join(format!("tributary-tls-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let empty = dir.join("empty.pem");
        let _ = std::fs::write(&empty, "not a pem file\n");
        let missing = dir.join("missing.pem");
        let err = |r: Result<TlsAcceptor, TlsError>| r.err().map(|e| e.to_string());

        let e = err(acceptor(&empty, &empty)).unwrap_or_default();
        assert!(e.starts_with("serving.tls_cert: no certificate"), "{e}");
        let e = err(acceptor(&missing, &empty)).unwrap_or_default();
        assert!(e.starts_with("serving.tls_cert: cannot read"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
