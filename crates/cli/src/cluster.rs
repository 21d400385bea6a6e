//! `fruits scheduler` and `fruits executor`: Ballista's own processes, started
//! from our binary with our functions registered.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

use anyhow::Context;
use fruits_engine::cluster::{run_executor, run_scheduler, ExecutorOptions};
use fruits_engine::tls::{Tls, TlsFiles};
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
    #[command(flatten)]
    tls: TlsArgs,
}

/// Mutual TLS between the cluster's processes. Clients (`--cluster`) take
/// the same three settings from FRUITS_TLS_CA, FRUITS_TLS_CERT, FRUITS_TLS_KEY.
#[derive(clap::Args)]
pub struct TlsArgs {
    /// The cluster's CA certificate (PEM): peers must present a certificate
    /// it signed. With --tls-cert and --tls-key the cluster speaks mutual TLS.
    #[arg(long, env = "FRUITS_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<std::path::PathBuf>,
    /// This process's certificate (PEM), signed by the CA, for the DNS name `fruits-cluster`.
    #[arg(long, env = "FRUITS_TLS_CERT", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "FRUITS_TLS_KEY", requires_all = ["tls_ca", "tls_cert"])]
    tls_key: Option<std::path::PathBuf>,
}

impl TlsArgs {
    fn load(&self) -> anyhow::Result<Option<Tls>> {
        let (Some(ca), Some(cert), Some(key)) = (&self.tls_ca, &self.tls_cert, &self.tls_key) else {
            tracing::warn!("no TLS: anyone who reaches this process's ports is trusted; keep them on a private network or set --tls-ca, --tls-cert and --tls-key");
            return Ok(None);
        };
        let files = TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        };
        Ok(Some(Tls::load(&files)?))
    }
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
    #[command(flatten)]
    tls: TlsArgs,
}

pub async fn scheduler(args: SchedulerArgs) -> anyhow::Result<ExitCode> {
    args.allow.apply("scheduler")?;
    let tls = args.tls.load()?;
    tracing::info!(listen = %args.listen, tls = tls.is_some(), "starting the scheduler");
    let opts = EngineOptions::new(fruits_backbone::default_model_dir());
    run_scheduler(args.listen, args.executor_timeout, &opts, tls.as_ref()).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn executor(args: ExecutorArgs) -> anyhow::Result<ExitCode> {
    args.allow.apply("executor")?;
    let tls = args.tls.load()?;
    let model_dir = args.model.resolve();
    // Fail at start, not at the first task, if this machine has no usable model.
    // Both installed precisions: a job may run either.
    let fp32 = fruits_backbone::Backbone::shared(&model_dir, fruits_backbone::Precision::Fp32)?;
    fp32.ready()?;
    if fp32.manifest().int8.is_some() {
        fruits_backbone::Backbone::shared(&model_dir, fruits_backbone::Precision::Int8)?.ready()?;
    }
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
        tls,
    };
    tracing::info!(scheduler = %scheduler, listen = %args.listen, slots, "starting an executor");
    run_executor(&opts).await?;
    Ok(ExitCode::SUCCESS)
}
