//! What a domain node's and governance's long-lived gRPC servers share: transport settings,
//! message bounds, and a clean stop when `shutdown` resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::{MeshIdentity, NetError};

use tonic::transport::Server;

/// The largest message either side accepts: a batch of activations of a few hundred thousand
/// rows, never a whole dataset (batches bound every message).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// HTTP/2 flow-control windows: large enough that a batch's tensors never wait for a window
/// update (the default 64 KiB costs extra round trips at a few batches in flight).
pub const WINDOW_BYTES: u32 = 8 * 1024 * 1024;

/// How long a stopping server waits for open streams (a job's last batch, a peer that has
/// not closed its connection) before it closes anyway.
pub const GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// HTTP/2 keepalive: a peer that vanishes without closing its connection (a partition, a
/// crashed host) is noticed within two intervals instead of never.
pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a peer may take over its TLS handshake before the connection is dropped.
pub const HANDSHAKE: Duration = Duration::from_secs(10);

/// Binds `address`, naming it when it cannot.
pub async fn listen(address: SocketAddr) -> Result<TcpListener, NetError> {
    TcpListener::bind(address)
        .await
        .map_err(|error| NetError::Listen { address, error })
}

/// The connections `listener` accepts, once each has completed a mutual-TLS handshake as
/// `identity` (the mesh CA's clients only). A refused handshake — a certificate from another
/// CA, none at all, plain HTTP — is logged at WARN with the peer's address, so that an operator
/// sees who was turned away and why. Ends when the server stops taking connections.
pub fn tls_incoming(
    listener: TcpListener,
    identity: &MeshIdentity,
) -> Result<ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>>, NetError> {
    let acceptor = TlsAcceptor::from(identity.rustls_server_config()?);
    let (accepted, incoming) = mpsc::channel(16);
    let name = identity.name.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                connection = listener.accept() => match connection {
                    Ok(connection) => connection,
                    Err(e) => {
                        // Out of descriptors, say: wait, rather than spin.
                        tracing::warn!("`{name}` cannot accept a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = accepted.closed() => break,
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, accepted, name) = (acceptor.clone(), accepted.clone(), name.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = accepted.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!("`{name}` refused a TLS connection from {peer}: {e}")
                    }
                    Err(_) => tracing::warn!(
                        "`{name}` dropped a connection from {peer}: no TLS handshake within {} s",
                        HANDSHAKE.as_secs()
                    ),
                }
            });
        }
    });
    Ok(ReceiverStream::new(incoming))
}

/// A server with fedmesh's transport settings (no Nagle, keepalive, large windows).
pub fn builder() -> Server {
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE))
        .initial_stream_window_size(WINDOW_BYTES)
        .initial_connection_window_size(WINDOW_BYTES)
}

/// A shutdown signal that two parties can wait for: the server, to stop accepting and drain,
/// and a timer that ends the draining after [`GRACE`].
pub struct Stopping(tokio::sync::watch::Receiver<bool>);

impl Stopping {
    pub fn after(shutdown: impl Future<Output = ()> + Send + 'static) -> Self {
        let (tell, told) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = tell.send(true);
        });
        Self(told)
    }

    pub fn signal(&self) -> impl Future<Output = ()> + use<> {
        let mut told = self.0.clone();
        async move {
            let _ = told.wait_for(|stop| *stop).await;
        }
    }

    pub async fn grace_over(&self) {
        self.signal().await;
        tokio::time::sleep(GRACE).await;
        tracing::warn!(
            "streams still open {} s after the stop signal: closing them",
            GRACE.as_secs()
        );
    }
}
