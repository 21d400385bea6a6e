//! Accepting connections: HTTP/1 over TCP under the connection limits
//! ([`Limits::connections`], [`Limits::header_timeout`]), and an end within
//! a bounded grace period.
//!
//! axum's own `serve` has no timer: a client could hold a connection open
//! forever by never finishing its request head, and nothing capped how
//! many did. Here hyper gets a timer, so a head (or the next request on an
//! idle keep-alive connection) must arrive within the header timeout; the
//! read buffer is capped, so an idle connection costs at most 64 KiB; and
//! connections over the cap are closed as soon as they are accepted, before
//! any of their bytes are read.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tower::ServiceExt;

use crate::{AppState, Error};

/// Largest read buffer of one connection: a request head must fit in it.
const READ_BUFFER: usize = 64 * 1024;

/// Serves `router` on `listener` until `stop` fires; then stops accepting,
/// lets requests in flight finish for up to the shutdown grace, and returns
/// (whatever is still running is abandoned with the process).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    state: Arc<AppState>,
    stop: oneshot::Receiver<()>,
) -> Result<(), Error> {
    let limits = state.limits;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(READ_BUFFER);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.connections));
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            state.metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            router.clone().oneshot(request.map(Body::new))
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection closed: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?limits.shutdown_grace,
            "requests still in flight after the shutdown grace period: ending anyway"
        );
    }
    Ok(())
}
