//! One port for HTTPS and plain HTTP.
//!
//! kubectl (client-go) sends credentials only over TLS, while curl, scripts and controllers on the same host are
//! happiest with plain HTTP on loopback. [`DualListener`] accepts both on one address: it peeks at the first byte of
//! each connection (a TLS handshake starts with `0x16`, an HTTP request with a letter), completes the TLS handshake
//! in a task of its own (a slow or silent client never holds up the others; it gets [`HANDSHAKE_TIMEOUT`]) and hands
//! every ready connection to axum. The peer address reaches handlers as `ConnectInfo<Peer>`.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
pub use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

/// The longest a client may take to start and finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections accepted but not yet served.
const BACKLOG: usize = 1024;
const TLS_HANDSHAKE: u8 = 0x16;

fn invalid(what: &str, error: &dyn std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {error}"))
}

/// The server configuration for PEM files of a certificate chain and its private key.
pub fn server_config_from_files(cert_pem: &Path, key_pem: &Path) -> io::Result<Arc<ServerConfig>> {
    let read = |path: &Path| std::fs::read(path).map_err(|error| invalid(&path.display().to_string(), &error));
    server_config(&read(cert_pem)?, &read(key_pem)?)
}

/// The server configuration for a PEM certificate chain and private key (aws-lc-rs, HTTP/1.1).
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> io::Result<Arc<ServerConfig>> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid("certificate", &error))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| invalid("private key", &error))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| invalid("tls", &error))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| invalid("certificate and key", &error))?;
    // HTTP/1.1 only: the server speaks HTTP/1 (watches are long-lived chunked responses)
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A connection's remote address, as handlers see it (`ConnectInfo<Peer>`).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, DualListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, DualListener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

/// A plain or a TLS connection.
pub enum Connection {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, context: &mut Context<'_>, buffer: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_read(context, buffer),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_read(context, buffer),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, context: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_write(context, data),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_write(context, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_flush(context),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(context),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Plain(stream) => Pin::new(stream).poll_shutdown(context),
            Connection::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(context),
        }
    }
}

/// Serves TLS (when configured) and plain HTTP on one TCP listener; see the module documentation.
pub struct DualListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(Connection, SocketAddr)>,
}

impl DualListener {
    /// Takes over `listener`; without `tls` every connection is plain. The accepting task ends when this listener
    /// is dropped.
    pub fn new(listener: TcpListener, tls: Option<Arc<ServerConfig>>) -> io::Result<DualListener> {
        let local = listener.local_addr()?;
        let (sender, ready) = mpsc::channel(BACKLOG);
        let acceptor = tls.map(TlsAcceptor::from);
        tokio::spawn(accept_loop(listener, acceptor, sender));
        Ok(DualListener { local, ready })
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    ready: mpsc::Sender<(Connection, SocketAddr)>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = ready.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // out of file descriptors and the like: wait instead of spinning
                    tracing::warn!(error = %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Some(acceptor) = acceptor.clone() else {
            if ready.send((Connection::Plain(stream), peer)).await.is_err() {
                return;
            }
            continue;
        };
        let ready = ready.clone();
        tokio::spawn(async move {
            let connection = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                let mut first = [0u8; 1];
                let peeked = stream.peek(&mut first).await?;
                if peeked == 1 && first[0] == TLS_HANDSHAKE {
                    Ok::<_, io::Error>(Connection::Tls(Box::new(acceptor.accept(stream).await?)))
                } else {
                    Ok(Connection::Plain(stream))
                }
            })
            .await;
            match connection {
                Ok(Ok(connection)) => {
                    let _ = ready.send((connection, peer)).await;
                }
                Ok(Err(error)) => tracing::debug!(error = %error, %peer, "connection dropped before its first request"),
                Err(_) => tracing::debug!(%peer, "connection sent nothing in time"),
            }
        });
    }
}

impl Listener for DualListener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // the accepting task ended: nothing more will come
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}
