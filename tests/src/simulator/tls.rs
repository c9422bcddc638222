//! `https://web.whatsapp.com/` on loopback: a self-signed certificate made at start, and a
//! TLS-accepting listener for axum. Chromium reaches it with
//! `--host-resolver-rules=MAP web.whatsapp.com 127.0.0.1:<port>` and trusts it with
//! `--ignore-certificate-errors-spki-list=<base64 SHA-256 of the certificate's SubjectPublicKeyInfo>`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rcgen::PublicKeyData;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The host the page is served as.
pub const HOST: &str = "web.whatsapp.com";

/// A certificate for [`HOST`] and the pin Chromium needs to accept it.
pub struct Identity {
    pub acceptor: TlsAcceptor,
    /// Base64 of the SHA-256 of the certificate's SubjectPublicKeyInfo.
    pub spki_pin: String,
}

pub fn identity() -> io::Result<Identity> {
    let certified = rcgen::generate_simple_self_signed(vec![HOST.to_string()])
        .map_err(|e| io::Error::other(format!("generating the certificate for {HOST}: {e}")))?;
    let spki = certified.signing_key.subject_public_key_info();
    let spki_pin = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&spki));
    let cert: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| io::Error::other(format!("TLS versions: {e}")))?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .map_err(|e| io::Error::other(format!("TLS certificate: {e}")))?;
    Ok(Identity { acceptor: TlsAcceptor::from(Arc::new(config)), spki_pin })
}

/// Accepts TCP connections and completes their TLS handshakes in the background, so one slow
/// or broken client never holds up the others.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    _accept: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let accept = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::debug!("simulator TLS accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!("simulator TLS handshake from {peer}: {e}"),
                        Err(_) => tracing::debug!("simulator TLS handshake from {peer} timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { local, ready, _accept: accept })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self._accept.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task ended (only when aborted): nothing will come any more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
