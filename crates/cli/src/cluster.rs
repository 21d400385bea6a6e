//! `fruits scheduler` and `fruits executor`: Ballista's own processes, started
//! from our binary with our functions registered.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

use anyhow::Context;
use fruits_engine::cluster::{run_executor, run_scheduler, ExecutorOptions};
use fruits_engine::EngineOptions;

use crate::ModelDirArg;

#[derive(clap::Args)]
pub struct SchedulerArgs {
    /// Address to listen on (gRPC for clients and executors).
    #[arg(long, default_value = "127.0.0.1:50050")]
    listen: SocketAddr,
    /// Seconds without a heartbeat (executors send one every 5 s) before an
    /// executor is declared lost and its tasks are run again elsewhere.
    #[arg(long, default_value_t = 30)]
    executor_timeout: u64,
    #[command(flatten)]
    allow: AllowArg,
}

/// What a cluster process may open.
#[derive(clap::Args)]
pub struct AllowArg {
    /// A prefix (URI or local path) this process may open: the inputs and
    /// outputs of the jobs it serves (with their scratch folders). Repeatable,
    /// or comma-separated in FRUITS_ALLOW_PREFIX. Every other object, local
    /// file included, is refused. Unset: whatever this machine's storage
    /// settings reach, and a warning says so.
    #[arg(long = "allow-prefix", env = "FRUITS_ALLOW_PREFIX", value_delimiter = ',')]
    prefixes: Vec<String>,
}

impl AllowArg {
    /// Limits this process's stores; call before anything is opened.
    fn apply(&self, role: &str) -> anyhow::Result<()> {
        if self.prefixes.is_empty() {
            tracing::warn!("this {role} opens any object or local file its storage settings reach, for any plan it is sent: set --allow-prefix");
            return Ok(());
        }
        fruits_storage::restrict_to(&self.prefixes)?;
        tracing::info!(prefixes = ?self.prefixes, "this {role} opens objects under these prefixes only");
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct ExecutorArgs {
    /// The scheduler's HOST:PORT.
    #[arg(long)]
    scheduler: String,
    /// Arrow Flight address for results and shuffles; gRPC listens on the next port.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Host name the scheduler and other executors use to reach this one [default: the --listen IP].
    #[arg(long)]
    external_host: Option<String>,
    /// Tasks run at once [default: number of cores].
    #[arg(long)]
    slots: Option<usize>,
    #[command(flatten)]
    model: ModelDirArg,
    #[command(flatten)]
    allow: AllowArg,
}

pub async fn scheduler(args: SchedulerArgs) -> anyhow::Result<ExitCode> {
    args.allow.apply("scheduler")?;
    tracing::info!(listen = %args.listen, "starting the scheduler");
    let opts = EngineOptions::new(fruits_backbone::default_model_dir());
    run_scheduler(args.listen, args.executor_timeout, &opts).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn executor(args: ExecutorArgs) -> anyhow::Result<ExitCode> {
    args.allow.apply("executor")?;
    let model_dir = args.model.resolve();
    // Fail at start, not at the first task, if this machine has no usable model.
    fruits_backbone::Backbone::shared(&model_dir)?;
    let scheduler = args
        .scheduler
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve the scheduler address '{}'", args.scheduler))?
        .next()
        .with_context(|| format!("'{}' resolves to no address", args.scheduler))?;
    let slots = args.slots.unwrap_or_else(fruits_engine::cores);
    let opts = ExecutorOptions {
        scheduler,
        listen: args.listen,
        external_host: args.external_host,
        slots,
        engine: EngineOptions {
            model_dir,
            parallelism: slots,
        },
    };
    tracing::info!(scheduler = %scheduler, listen = %args.listen, slots, "starting an executor");
    run_executor(&opts).await?;
    Ok(ExitCode::SUCCESS)
}
