//! The distributed engine: Apache DataFusion Ballista sessions with the
//! product's functions registered.
//!
//! The embedded default is Ballista's standalone mode: a scheduler and an
//! executor started inside this process, talking gRPC over loopback, so the job
//! takes the same code path (planning, serialisation, tasks, shuffles) as on a
//! cluster. Our functions must be known on both sides: on the client, to plan,
//! and on the executor, which rebuilds plans by function name.

pub mod cluster;

use std::path::PathBuf;
use std::sync::Arc;

use ballista::prelude::{SessionConfigExt, SessionContextExt};
use datafusion::error::DataFusionError;
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{FunctionRegistry, SessionState, SessionStateBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::ObjectStore;
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start the in-process engine: {0}")]
    Start(String),
    #[error("cluster: {0}")]
    Cluster(String),
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

/// Every function the product adds to the engine.
pub fn functions(opts: &EngineOptions) -> Vec<datafusion::logical_expr::ScalarUDF> {
    vec![fruits_featurize::udf(opts.model_dir.clone()), fruits_pca::udf::udf()]
}

/// Every aggregate function the product adds: the partial PCA fit.
pub fn aggregate_functions() -> Vec<datafusion::logical_expr::AggregateUDF> {
    vec![fruits_pca::udaf::udaf()]
}

/// Every object-store URL the engine meets (manifests, outputs) resolves
/// through `fruits_dataset::store_for`: the same configuration, credential
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
        fruits_dataset::store_for(url).map_err(|e| DataFusionError::External(Box::new(e)))
    }
}

/// A runtime whose object stores are [`Stores`].
pub fn runtime_env() -> Result<Arc<RuntimeEnv>, Error> {
    Ok(RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(Stores))
        .build_arc()?)
}
