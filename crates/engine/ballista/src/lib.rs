//! The distributed engine: Apache DataFusion Ballista sessions with the
//! product's functions registered.
//!
//! The embedded default is Ballista's standalone mode: a scheduler and an
//! executor started inside this process, talking gRPC over loopback, so the job
//! takes the same code path (planning, serialisation, tasks, shuffles) as on a
//! cluster. Our functions must be known on both sides: on the client, to plan,
//! and on the executor, which rebuilds plans by function name.
//!
//! The only crate that knows Ballista. It must not hold product logic: the
//! functions are `fruits-functions`', the jobs `fruits-pipeline`'s.

pub mod cluster;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;

use ballista::prelude::{SessionConfigExt, SessionContextExt};
use datafusion::error::DataFusionError;
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{FunctionRegistry, SessionState, SessionStateBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use fruits_functions::aggregate_functions;
use object_store::ObjectStore;
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start the in-process engine: {0}")]
    Start(String),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("cluster TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

/// What an engine session needs to know.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Model directory on the executors' machine (here: this machine).
    pub model_dir: PathBuf,
    /// Tasks run at once by the in-process executor.
    pub parallelism: usize,
}

impl EngineOptions {
    pub fn new(model_dir: PathBuf) -> Self {
        Self {
            model_dir,
            parallelism: cores(),
        }
    }
}

/// This machine's cores (2 if unknown): the default for task slots and partitions.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The one place that chooses the engine: a client of the cluster at
/// `cluster` (`df://host:port`), or without one the in-process engine.
/// Either way the session has our functions registered and runs the same plans.
pub async fn session(opts: &EngineOptions, cluster: Option<&str>) -> Result<SessionContext, Error> {
    match cluster {
        None => in_process(opts).await,
        Some(url) => cluster::remote(url, opts).await,
    }
}

/// A Ballista standalone session (scheduler and executor in this process).
pub async fn in_process(opts: &EngineOptions) -> Result<SessionContext, Error> {
    let config = SessionConfig::new_with_ballista()
        .with_target_partitions(opts.parallelism)
        .with_ballista_standalone_parallelism(opts.parallelism)
        .with_ballista_job_name("fruits");
    let state = session_state(config, opts)?;
    let ctx = SessionContext::standalone_with_state(state)
        .await
        .map_err(|e| Error::Start(e.to_string()))?;
    register_functions(&ctx, opts);
    Ok(ctx)
}

/// A session state with our runtime and functions, for any role (client,
/// scheduler, executor).
pub(crate) fn session_state(config: SessionConfig, opts: &EngineOptions) -> datafusion::error::Result<SessionState> {
    let runtime = runtime_env().map_err(|e| DataFusionError::External(Box::new(e)))?;
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .build();
    for udf in functions(opts) {
        state.register_udf(Arc::new(udf))?;
    }
    for udaf in aggregate_functions() {
        state.register_udaf(Arc::new(udaf))?;
    }
    Ok(state)
}

/// The context Ballista returns is a fresh one: our functions are registered
/// again on it, for planning.
pub(crate) fn register_functions(ctx: &SessionContext, opts: &EngineOptions) {
    for udf in functions(opts) {
        ctx.register_udf(udf);
    }
    for udaf in aggregate_functions() {
        ctx.register_udaf(udaf);
    }
}

/// Every scalar function the product adds to the engine (`fruits-functions`).
fn functions(opts: &EngineOptions) -> Vec<datafusion::logical_expr::ScalarUDF> {
    fruits_functions::scalar_functions(opts.model_dir.clone())
}

/// Every object-store URL the engine meets (manifests, outputs) resolves
/// through `fruits_storage::store_for`: the same configuration, credential
/// chain and retries as the rest of the product, on the client and on every
/// executor, each with its own credentials.
#[derive(Debug, Default)]
pub struct Stores;

impl ObjectStoreRegistry for Stores {
    /// Stores come from configuration, not registration: nothing is replaced.
    fn register_store(&self, _url: &Url, _store: Arc<dyn ObjectStore>) -> Option<Arc<dyn ObjectStore>> {
        None
    }

    fn get_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        fruits_storage::store_for(url).map_err(|e| DataFusionError::External(Box::new(e)))
    }
}

/// A runtime whose object stores are [`Stores`].
pub fn runtime_env() -> Result<Arc<RuntimeEnv>, Error> {
    Ok(RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(Stores))
        .build_arc()?)
}

#[cfg(test)]
mod tests {
    use datafusion::execution::FunctionRegistry;

    use super::*;

    fn opts() -> EngineOptions {
        // The backbone is loaded only when `featurize` runs, never here.
        EngineOptions {
            model_dir: std::env::temp_dir().join("fruits-no-model"),
            parallelism: 2,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_cluster_means_the_in_process_engine_with_every_function() {
        let ctx = session(&opts(), None).await.unwrap();
        for name in ["featurize", "pca_project"] {
            assert!(ctx.udf(name).is_ok(), "{name} is registered");
        }
        assert!(ctx.udaf("pca_moments").is_ok());
        let rows: usize = ctx
            .sql("SELECT 1 AS one")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(rows, 1, "the in-process engine runs a query");
    }

    #[tokio::test]
    async fn a_cluster_address_is_checked_and_probed_before_use() {
        let err = session(&opts(), Some("http://127.0.0.1:1")).await.err().unwrap();
        assert!(err.to_string().contains("use df://HOST:PORT"), "{err}");
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let err = session(&opts(), Some("df://127.0.0.1:1")).await.err().unwrap();
        assert!(
            err.to_string()
                .contains("cannot reach the scheduler at df://127.0.0.1:1: connection refused"),
            "{err}"
        );
    }
}
