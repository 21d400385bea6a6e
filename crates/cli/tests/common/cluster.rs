//! A real Ballista cluster for tests: `fruits scheduler` and `fruits executor`
//! processes on 127.0.0.1, killed when dropped.
//!
//! Tests wait on what the processes say, never on the clock: each executor's
//! log (Ballista's own info lines) is read as it comes, so a test can wait
//! until an executor has registered or has finished a task, on a machine of
//! any speed.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::fruits;
use super::s3::free_port;

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What an executor has said so far.
#[derive(Debug, Default, Clone, Copy)]
pub struct Events {
    pub registered: bool,
    pub tasks_started: usize,
    pub tasks_finished: usize,
}

/// An executor process and the events read from its log.
pub struct Executor {
    pub proc: Proc,
    events: Arc<(Mutex<Events>, Condvar)>,
}

impl Executor {
    /// Waits (up to a minute) until `done` holds for this executor's events.
    pub fn wait_for(&self, what: &str, done: impl Fn(&Events) -> bool) {
        let (lock, changed) = &*self.events;
        let events = lock.lock().unwrap();
        let (events, timeout) = changed
            .wait_timeout_while(events, Duration::from_secs(60), |e| !done(e))
            .unwrap();
        assert!(!timeout.timed_out(), "executor never {what}: {:?}", *events);
    }

    pub fn events(&self) -> Events {
        *self.events.0.lock().unwrap()
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the process: its tasks wait, and
    /// so does whatever the scheduler assigned it.
    pub fn signal(&self, signal: &str) {
        let pid = self.proc.0.id().to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }
}

/// Reads an executor's log lines into its events until the process ends.
fn watch(stderr: std::process::ChildStderr) -> Arc<(Mutex<Events>, Condvar)> {
    let events = Arc::new((Mutex::new(Events::default()), Condvar::new()));
    let shared = events.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let (lock, changed) = &*shared;
            let mut e = lock.lock().unwrap();
            if line.contains("Executor registration succeed") {
                e.registered = true;
            } else if line.contains("Execute task") {
                e.tasks_started += 1;
            } else if line.contains("Finished task") {
                e.tasks_finished += 1;
            } else {
                continue;
            }
            changed.notify_all();
        }
    });
    events
}

pub struct Cluster {
    pub port: u16,
    pub scheduler: Proc,
    pub executors: Vec<Executor>,
    /// Extra arguments of every executor.
    executor_args: Vec<String>,
    /// The address the scheduler and the executors listen on.
    host: &'static str,
}

/// A port whose successor is free too (an executor takes both).
fn free_pair() -> u16 {
    loop {
        let port = free_port();
        if TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

pub fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Cluster {
    /// One scheduler and `executors` executors of `slots` task slots each.
    pub fn start(executors: usize, slots: usize) -> Self {
        Self::start_with(executors, slots, &[])
    }

    /// [`Cluster::start`] with extra arguments for the scheduler and every executor.
    pub fn start_with(executors: usize, slots: usize, extra: &[String]) -> Self {
        Self::start_on(executors, slots, extra, "127.0.0.1")
    }

    /// [`Cluster::start_with`], every process listening on `host` (behind
    /// TLS fronts, Ballista's own servers take 127.0.0.1, same ports).
    pub fn start_on(executors: usize, slots: usize, extra: &[String], host: &'static str) -> Self {
        static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = STARTING.lock().unwrap_or_else(|p| p.into_inner());
        let port = free_port();
        let scheduler = fruits()
            .args([
                "scheduler",
                "--listen",
                &format!("{host}:{port}"),
                "--executor-timeout",
                "10",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut cluster = Self {
            port,
            scheduler: Proc(scheduler),
            executors: Vec::new(),
            executor_args: extra.to_vec(),
            host,
        };
        wait_listening(port);
        for _ in 0..executors {
            cluster.add_executor(slots);
        }
        cluster
    }

    /// Starts an executor and returns once the scheduler has registered it.
    pub fn add_executor(&mut self, slots: usize) -> &Executor {
        let listen = free_pair();
        let mut child = fruits()
            .args(["executor", "--scheduler", &format!("{}:{}", self.host, self.port)])
            .args([
                "--listen",
                &format!("{}:{listen}", self.host),
                "--slots",
                &slots.to_string(),
            ])
            .args(&self.executor_args)
            // Ballista's executor says when it has registered and finished a task.
            .env("FRUITS_LOG", "warn,ballista_executor::executor_server=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let events = watch(child.stderr.take().unwrap());
        self.executors.push(Executor {
            proc: Proc(child),
            events,
        });
        let executor = self.executors.last().unwrap();
        executor.wait_for("registered", |e| e.registered);
        executor
    }

    pub fn url(&self) -> String {
        format!("df://{}:{}", self.host, self.port)
    }
}
