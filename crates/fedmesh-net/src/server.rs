//! What a domain node's and governance's long-lived gRPC servers share: transport settings,
//! message bounds, and a clean stop when `shutdown` resolves.

use std::future::Future;

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
