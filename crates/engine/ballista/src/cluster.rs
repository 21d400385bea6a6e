//! A real Ballista cluster from our binary: the scheduler and executor
//! processes are Ballista's own, started with our functions and object stores
//! registered, and a client session that submits to them.
//!
//! Each executor resolves object stores with its *own* configuration and
//! credential chain (see `fruits_storage::store_for`): the client sends no
//! storage settings, so no secret travels in task properties. With TLS
//! (`crate::tls`), every process proves itself with a certificate of the
//! cluster's CA, and Ballista's servers listen on loopback behind TLS fronts.

use std::net::SocketAddr;
use std::sync::Arc;

use ballista::prelude::{SessionConfigExt, SessionContextExt};
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::ConfigProducer;
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::{SchedulerConfig, TaskDistributionPolicy};
use ballista_scheduler::scheduler_process::start_server;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::tls::{Tls, TlsFiles};
use crate::{register_functions, runtime_env, session_state, EngineOptions, Error};

/// Runs Ballista's scheduler on `listen` until the process ends; with `tls`,
/// Ballista listens on a loopback port behind a TLS front on `listen`.
pub async fn run_scheduler(
    listen: SocketAddr,
    executor_timeout_s: u64,
    opts: &EngineOptions,
    tls: Option<&Tls>,
) -> Result<(), Error> {
    let bind = match tls {
        None => listen,
        // The scheduler announces its bind port to executors, so Ballista
        // takes loopback on the same port and the front the public address.
        Some(tls) => {
            let inner = SocketAddr::new(crate::tls::behind_front(listen)?, listen.port());
            tls.front(listen, inner).await?;
            inner
        }
    };
    let builder_opts = opts.clone();
    let config = SchedulerConfig {
        bind_host: bind.ip().to_string(),
        bind_port: bind.port(),
        external_host: listen.ip().to_string(),
        // Spread tasks over executors rather than filling the first one.
        task_distribution: TaskDistributionPolicy::RoundRobin,
        executor_timeout_seconds: executor_timeout_s,
        expire_dead_executor_interval_seconds: 2,
        no_executors_grace_period_seconds: executor_timeout_s,
        override_session_builder: Some(Arc::new(move |config| session_state(config, &builder_opts))),
        override_create_grpc_client_endpoint: tls.map(Tls::endpoint_override),
        use_tls: tls.is_some(),
        ..Default::default()
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| Error::Cluster(e.to_string()))?;
    start_server(cluster, bind, Arc::new(config))
        .await
        .map_err(|e| Error::Cluster(e.to_string()))
}

/// Where an executor listens and whom it serves.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    pub scheduler: SocketAddr,
    /// Arrow Flight address (results and shuffles); the gRPC port is the next one.
    pub listen: SocketAddr,
    /// Host name other processes use to reach this executor.
    pub external_host: Option<String>,
    /// Tasks run at once.
    pub slots: usize,
    pub engine: EngineOptions,
    /// Mutual TLS with the scheduler, the other executors and clients.
    pub tls: Option<Tls>,
}

/// Runs a Ballista executor registered with the scheduler until the process
/// ends; with TLS, Ballista's two servers listen on loopback, same ports,
/// behind TLS fronts on the `listen` address.
pub async fn run_executor(opts: &ExecutorOptions) -> Result<(), Error> {
    let registry_state = session_state(SessionConfig::new_with_ballista(), &opts.engine)?;
    let bind_host = match &opts.tls {
        None => opts.listen.ip(),
        Some(tls) => front_executor(tls, opts.listen).await?,
    };
    let endpoint_override = opts.tls.as_ref().map(Tls::endpoint_override);
    let task_config = endpoint_override.clone().map(|f| -> ConfigProducer {
        Arc::new(move || {
            SessionConfig::new_with_ballista()
                .with_ballista_use_tls(true)
                .with_ballista_override_create_grpc_client_endpoint(f.clone())
        })
    });
    let config = ExecutorProcessConfig {
        bind_host: bind_host.to_string(),
        port: opts.listen.port(),
        grpc_port: opts.listen.port() + 1,
        // Behind TLS fronts Ballista binds loopback: it must announce the fronts' address.
        external_host: opts
            .external_host
            .clone()
            .or_else(|| opts.tls.as_ref().map(|_| opts.listen.ip().to_string())),
        scheduler_host: opts.scheduler.ip().to_string(),
        scheduler_port: opts.scheduler.port(),
        vcores: opts.slots,
        print_thread_info: false,
        // Dead-executor detection on the scheduler waits for missed heartbeats.
        executor_heartbeat_interval_seconds: 5,
        override_function_registry: Some(Arc::new(BallistaFunctionRegistry::from(&registry_state))),
        override_runtime_producer: Some(Arc::new(|_| {
            runtime_env().map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
        })),
        override_config_producer: task_config,
        override_create_grpc_client_endpoint: endpoint_override,
        ..Default::default()
    };
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| Error::Cluster(e.to_string()))
}

/// TLS fronts on both executor ports of `listen`; returns where Ballista
/// binds instead (loopback, same ports, so that the ports it announces are
/// the fronts').
async fn front_executor(tls: &Tls, listen: SocketAddr) -> Result<std::net::IpAddr, Error> {
    let loopback = crate::tls::behind_front(listen)?;
    for port in [listen.port(), listen.port() + 1] {
        tls.front(SocketAddr::new(listen.ip(), port), SocketAddr::new(loopback, port))
            .await?;
    }
    Ok(loopback)
}

/// A client session that submits jobs to the scheduler at `url` (`df://host:port`).
pub async fn remote(url: &str, opts: &EngineOptions) -> Result<SessionContext, Error> {
    let parsed = url::Url::parse(url)
        .ok()
        .filter(|u| u.scheme() == "df" && u.host_str().is_some());
    let Some(parsed) = parsed else {
        return Err(Error::Cluster(format!(
            "'{url}' is not a scheduler address: use df://HOST:PORT"
        )));
    };
    probe(
        url,
        parsed.host_str().unwrap_or_default(),
        parsed.port().unwrap_or(50050),
    )
    .await?;
    let mut config = SessionConfig::new_with_ballista()
        .with_target_partitions(opts.parallelism)
        .with_ballista_job_name("fruits");
    if let Some(files) = TlsFiles::from_env()? {
        let tls = Tls::load(&files)?;
        config = config
            .with_ballista_use_tls(true)
            .with_ballista_override_create_grpc_client_endpoint(tls.endpoint_override());
    }
    let state = session_state(config, opts)?;
    let ctx = SessionContext::remote_with_state(url, state)
        .await
        .map_err(|e| unreachable(url, &e.to_string()))?;
    register_functions(&ctx, opts);
    Ok(ctx)
}

/// Fails within seconds, in plain words, when nothing listens at the scheduler's address.
async fn probe(url: &str, host: &str, port: u16) -> Result<(), Error> {
    let connect = tokio::net::TcpStream::connect((host, port));
    match tokio::time::timeout(std::time::Duration::from_secs(5), connect).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(unreachable(url, "Connection refused")),
        Ok(Err(e)) if e.to_string().contains("lookup") => Err(unreachable(url, "dns error")),
        Ok(Err(e)) => Err(unreachable(url, &e.to_string())),
        Err(_) => Err(unreachable(url, "timed out")),
    }
}

/// The scheduler could not be used: say why in plain words.
pub fn unreachable(url: &str, raw: &str) -> Error {
    let why = if raw.contains("Connection refused") {
        "connection refused: is `fruits scheduler` running there?"
    } else if raw.contains("dns error") {
        "unknown host"
    } else if raw.contains("timed out") || raw.contains("deadline") {
        "no answer"
    } else {
        raw.lines().next().unwrap_or(raw)
    };
    Error::Cluster(format!("cannot reach the scheduler at {url}: {why}"))
}
