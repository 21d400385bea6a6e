//! The consumer service: an HTTP API and a mobile web page that name the
//! fruit in a photo and tell what to know about it.
//!
//! - [`api`]: routes, the upload path, the OpenAPI document;
//! - [`error`]: every failure as `{"error", "code"}`; domain errors become HTTP here only;
//! - [`answer`]: the JSON types of the answers (the wire format);
//! - [`identify`]: one photo to ranked fruits, several views of a photo, regions
//!   (knows nothing of HTTP);
//! - `views`: where the model looks in a photo (pixel geometry);
//! - [`model`]: the model bundle and its hot reload;
//! - [`limits`]: body, pixel, time, concurrency and per-client limits; who a client is;
//! - `connections`: the accept loop, connection cap, header timeout, bounded shutdown;
//! - [`metrics`]: Prometheus counters;
//!
//! Must not depend on an engine (DataFusion, Ballista) nor on the pipeline:
//! a photo is one batch through the same preprocessing and backbone as the
//! jobs, loaded from a model bundle.
//!
//! Photos live in memory for the time of their request only: they are never
//! written anywhere, and logs carry routes, statuses and timings, never bodies
//! or file names.

pub mod answer;
pub mod api;
mod connections;
pub mod error;
pub mod identify;
pub mod limits;
pub mod metrics;
pub mod model;
mod views;

#[cfg(test)]
mod fuzz;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fruits_catalog::Catalog;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;

pub use limits::{Cidr, Limits};
pub use model::{Model, ModelSource};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot load the model: {0}")]
    Model(#[from] fruits_bundle::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the server stopped: {0}")]
    Serve(std::io::Error),
}

/// How to run the service.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub limits: Limits,
    /// Bearer token of `POST /v1/admin/reload`; the endpoint is off without one.
    pub admin_token: Option<String>,
    /// Proxies whose `X-Forwarded-For` names the client (none by default).
    pub trusted_proxies: Vec<Cidr>,
    /// A second listener for `/metrics`, full `/readyz` and the reload
    /// endpoint; with it, the public listener serves none of them.
    pub admin_listen: Option<SocketAddr>,
}

/// What every request shares.
pub struct AppState {
    pub model: model::ModelSlot,
    pub source: ModelSource,
    pub catalog: &'static Catalog,
    pub limits: Limits,
    pub rate: limits::RateLimiter,
    pub in_flight: Semaphore,
    /// Each client's share of `in_flight`.
    pub places: limits::Places,
    pub trusted_proxies: Vec<Cidr>,
    pub workers: Arc<Semaphore>,
    pub metrics: metrics::Metrics,
    pub admin_token: Option<String>,
    pub draining: AtomicBool,
    reloading: tokio::sync::Mutex<()>,
}

impl AppState {
    pub fn new(model: Model, source: ModelSource, config: &Config) -> Self {
        let limits = config.limits;
        Self {
            model: model::ModelSlot::new(model),
            source,
            catalog: Catalog::embedded(),
            limits,
            rate: limits::RateLimiter::new(limits.rate_per_second, limits.burst),
            in_flight: Semaphore::new(limits.in_flight.max(1)),
            places: limits::Places::new(limits.in_flight_per_client),
            trusted_proxies: config.trusted_proxies.clone(),
            workers: Arc::new(Semaphore::new(limits.workers.max(1))),
            metrics: metrics::Metrics::default(),
            admin_token: config.admin_token.clone().filter(|t| !t.is_empty()),
            draining: AtomicBool::new(false),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// Loads the bundle again and swaps it in; on failure the old model stays.
    pub async fn reload(&self) -> Result<String, String> {
        let _one_at_a_time = self.reloading.lock().await;
        match Model::load(&self.source).await {
            Ok(model) => {
                let id = model.id.clone();
                self.model.replace(model);
                self.metrics.reload(true);
                tracing::info!(model = id, "model reloaded");
                Ok(id)
            }
            Err(e) => {
                self.metrics.reload(false);
                tracing::warn!("model reload failed, the previous model keeps answering: {e}");
                Err(format!("the previous model keeps answering: {e}"))
            }
        }
    }
}

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    /// The admin listener's address, when there is one.
    pub admin_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
    listeners: Vec<Listening>,
}

/// One listener's stop signal and its task.
type Listening = (oneshot::Sender<()>, JoinHandle<Result<(), Error>>);

impl Running {
    /// Stops accepting, lets requests in flight finish for up to the
    /// shutdown grace, and waits that long at most.
    pub async fn stop(self) -> Result<(), Error> {
        self.state.draining.store(true, Ordering::Relaxed);
        let mut tasks = Vec::new();
        for (stop, task) in self.listeners {
            let _ = stop.send(());
            tasks.push(task);
        }
        for task in tasks {
            task.await.unwrap_or(Ok(()))?;
        }
        Ok(())
    }
}

/// Loads the model and starts serving in the background: the public
/// listener, and the admin one if configured.
pub async fn start(config: Config, source: ModelSource) -> Result<Running, Error> {
    let model = Model::load(&source).await?;
    tracing::info!(
        model = model.id,
        classes = model.classes(),
        threshold = model.threshold,
        threshold_source = model.threshold_source,
        "model loaded"
    );
    let public = bind(config.listen).await?;
    let admin = match config.admin_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let addr = public.local_addr().map_err(Error::Serve)?;
    let admin_addr = admin
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()
        .map_err(Error::Serve)?;
    let state = Arc::new(AppState::new(model, source, &config));
    let mut listeners = Vec::new();
    let public_routes = match admin {
        Some(admin) => {
            listeners.push(listen(admin, api::admin_router(state.clone()), &state));
            api::public_router(state.clone())
        }
        None => api::router(state.clone()),
    };
    listeners.push(listen(public, public_routes, &state));
    Ok(Running {
        addr,
        admin_addr,
        state,
        listeners,
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

fn listen(listener: TcpListener, routes: axum::Router, state: &Arc<AppState>) -> Listening {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(connections::serve(listener, routes, state.clone(), stopped));
    (stop, task)
}

/// `fruits serve`: serves until SIGTERM or Ctrl-C, finishing the requests in
/// flight within the shutdown grace, and reloads the model on SIGHUP. Work
/// still running after the grace (a photo being decoded on a blocking
/// thread) is the caller's to abandon: end the runtime with a timeout.
pub async fn serve(config: Config, source: ModelSource) -> Result<(), Error> {
    let running = start(config, source).await?;
    tracing::info!("listening on http://{}", running.addr);
    if let Some(admin) = running.admin_addr {
        tracing::info!("admin (metrics, readiness, reload) on http://{admin}");
    }
    let state = running.state.clone();
    let reloader = tokio::spawn(async move {
        let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the model");
            let _ = state.reload().await;
        }
    });
    shutdown_signal().await;
    tracing::info!(grace = ?running.state.limits.shutdown_grace, "shutting down: finishing the requests in flight");
    reloader.abort();
    running.stop().await
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate => {},
    }
}
