//! `fruits bench cluster`: the same featurize job on a local Ballista cluster of
//! 1, then 2 (…) executors, in one run: images/s, the speed-up, and each
//! executor's peak resident memory.
//!
//! The scheduler and executors are real processes of the `fruits` binary on
//! 127.0.0.1, started and stopped here for each row.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fruits_pipeline::{FeaturizeJob, NoProgress, Progress};

use crate::process::peak_rss_mib;
use crate::Error;

#[derive(Debug, Clone)]
pub struct ClusterBenchOptions {
    /// The `fruits` binary that runs the scheduler and executors.
    pub binary: PathBuf,
    pub input: String,
    pub output: String,
    pub executors: Vec<usize>,
    pub slots: usize,
    pub limit: Option<usize>,
    pub input_size: Option<u32>,
    pub rows_per_task: usize,
    pub model_dir: PathBuf,
    pub precision: fruits_backbone::Precision,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterRow {
    pub executors: usize,
    pub images: usize,
    pub wall_s: f64,
    pub images_per_s: f64,
    /// Peak resident set of each executor process, MiB.
    pub executor_peak_rss_mib: Vec<f64>,
}

pub async fn run(opts: &ClusterBenchOptions) -> Result<Vec<ClusterRow>, Error> {
    let mut rows = Vec::new();
    for &n in &opts.executors {
        rows.push(one(opts, n).await?);
    }
    Ok(rows)
}

async fn one(opts: &ClusterBenchOptions, executors: usize) -> Result<ClusterRow, Error> {
    let port = free_port();
    let mut procs = vec![spawn(
        &opts.binary,
        &["scheduler", "--listen", &format!("127.0.0.1:{port}")],
    )?];
    wait_listening(port)?;
    for _ in 0..executors {
        let listen = free_pair();
        let args = [
            "executor",
            "--scheduler",
            &format!("127.0.0.1:{port}"),
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--slots",
            &opts.slots.to_string(),
            "--model-dir",
            &opts.model_dir.display().to_string(),
        ];
        procs.push(spawn_executor(&opts.binary, &args)?);
    }
    let job = FeaturizeJob {
        input: opts.input.clone(),
        output: format!("{}/executors-{executors}", opts.output.trim_end_matches('/')),
        limit: opts.limit,
        input_size: opts.input_size,
        model_dir: opts.model_dir.clone(),
        precision: opts.precision,
        rows_per_task: opts.rows_per_task,
        parallelism: executors * opts.slots,
        cluster: Some(format!("df://127.0.0.1:{port}")),
        sorted: false,
        views: None,
        backgrounds: None,
        only: None,
        max_object_bytes: fruits_pipeline::featurize::MAX_OBJECT_BYTES,
        incremental: None,
    };
    let progress: Arc<dyn Progress> = Arc::new(NoProgress);
    let started = Instant::now();
    let result = fruits_pipeline::featurize::run(&job, &progress).await;
    let wall_s = started.elapsed().as_secs_f64();
    let executor_peak_rss_mib = procs[1..].iter().map(|p| peak_rss_mib(p.id())).collect();
    drop(procs);
    let summary = result?;
    Ok(ClusterRow {
        executors,
        images: summary.objects_listed,
        wall_s,
        images_per_s: summary.objects_listed as f64 / wall_s,
        executor_peak_rss_mib,
    })
}

/// A child process killed when dropped.
struct Killed(Child);

impl Killed {
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(binary: &Path, args: &[&str]) -> Result<Killed, Error> {
    Command::new(binary)
        .args(args)
        .env("FRUITS_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Killed)
        .map_err(|e| Error::Setup(format!("cannot start {}: {e}", binary.display())))
}

/// Starts an executor and returns once it says it has registered with the
/// scheduler (Ballista's own log line), so every row starts with all its
/// executors, however long they take to start.
fn spawn_executor(binary: &Path, args: &[&str]) -> Result<Killed, Error> {
    let mut child = Command::new(binary)
        .args(args)
        .env("FRUITS_LOG", "error,ballista_executor::executor_server=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Setup(format!("cannot start {}: {e}", binary.display())))?;
    let stderr = child.stderr.take().expect("piped");
    let executor = Killed(child);
    let (registered, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Reads to the end, so the executor never blocks on a full pipe.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Executor registration succeed") {
                let _ = registered.send(());
            }
        }
    });
    wait.recv_timeout(Duration::from_secs(60))
        .map_err(|_| Error::Setup("an executor did not register with the scheduler within 60 s".into()))?;
    Ok(executor)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or(0, |a| a.port())
}

/// A port whose successor is free too: an executor takes both.
fn free_pair() -> u16 {
    loop {
        let port = free_port();
        if TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

fn wait_listening(port: u16) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(Error::Setup(format!("nothing listens on 127.0.0.1:{port} after 30 s")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
