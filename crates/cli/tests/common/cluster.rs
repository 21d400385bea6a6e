//! A real Ballista cluster for tests: `fruits scheduler` and `fruits executor`
//! processes on 127.0.0.1, killed when dropped.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
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

pub struct Cluster {
    pub port: u16,
    pub scheduler: Proc,
    pub executors: Vec<Proc>,
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
        static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = STARTING.lock().unwrap_or_else(|p| p.into_inner());
        let port = free_port();
        let scheduler = fruits()
            .args([
                "scheduler",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--executor-timeout",
                "10",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut cluster = Self {
            port,
            scheduler: Proc(scheduler),
            executors: Vec::new(),
        };
        wait_listening(port);
        for _ in 0..executors {
            cluster.add_executor(slots);
        }
        // Registration happens right after the executor starts listening.
        std::thread::sleep(Duration::from_millis(1500));
        cluster
    }

    pub fn add_executor(&mut self, slots: usize) {
        let listen = free_pair();
        let child = fruits()
            .args(["executor", "--scheduler", &format!("127.0.0.1:{}", self.port)])
            .args([
                "--listen",
                &format!("127.0.0.1:{listen}"),
                "--slots",
                &slots.to_string(),
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.executors.push(Proc(child));
        wait_listening(listen);
    }

    pub fn url(&self) -> String {
        format!("df://127.0.0.1:{}", self.port)
    }
}
