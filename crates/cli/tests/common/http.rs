//! A running `fruits serve` and a bare HTTP/1.1 client over a TCP socket: the
//! tests need to send what no well-behaved client would (a 100 MB declared
//! body, a stalled upload), so they speak the protocol themselves.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::fruits;

/// `fruits serve` in a child process, killed on drop.
pub struct Server {
    pub addr: SocketAddr,
    /// The admin listener, when started with `--admin-listen`.
    pub admin: Option<SocketAddr>,
    pub child: Child,
    /// Every line it logged so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

pub const ADMIN_TOKEN: &str = "test-admin-token-7f3a";

impl Server {
    pub fn start(model: &Path, extra: &[&str]) -> Self {
        let mut child = fruits()
            .args(["serve", "--listen", "127.0.0.1:0", "--model"])
            .arg(model)
            .args(extra)
            .env("FRUITS_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("FRUITS_LOG", "warn,fruits=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("reload) on http://") {
                    let _ = tx.send(format!("admin {}", line[at + 18..].trim()));
                }
                if let Some(at) = line.find("listening on http://") {
                    let _ = tx.send(line[at + 20..].trim().to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut admin = None;
        let addr = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("the server did not start: {:?}", log.lock().unwrap()));
            match line.strip_prefix("admin ") {
                Some(a) => admin = Some(a.parse().unwrap()),
                None => break line,
            }
        };
        // The admin line follows the public one.
        if extra.contains(&"--admin-listen") && admin.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("the admin listener's line");
            admin = Some(line.strip_prefix("admin ").expect("an admin line").parse().unwrap());
        }
        Self {
            addr: addr.parse().unwrap(),
            admin,
            child,
            log,
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        self.send("GET", path, &[], b"")
    }

    pub fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        request(self.addr, method, path, headers, body)
    }

    /// A request to the admin listener (`--admin-listen`).
    pub fn admin(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        request(
            self.admin.expect("started with --admin-listen"),
            method,
            path,
            headers,
            b"",
        )
    }

    pub fn post_image(&self, path: &str, content_type: &str, body: &[u8]) -> Reply {
        self.send("POST", path, &[("content-type", content_type)], body)
    }

    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        stream
    }

    /// A connection from another loopback address (`127.0.0.2`, say):
    /// another client, as the service sees it.
    pub fn connect_from(&self, local: std::net::IpAddr) -> TcpStream {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&SocketAddr::new(local, 0).into()).unwrap();
        socket.connect(&self.addr.into()).unwrap();
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        stream
    }

    /// A JPEG upload to `/v1/identify` of which only the first `sent` bytes
    /// have gone out: a request in flight, to finish with `write_all`.
    /// Sends the head and the first `sent` bytes of an upload, and returns
    /// once the service counts the photo in progress.
    pub fn begin_upload(&self, jpeg: &[u8], sent: usize) -> TcpStream {
        let before = self.photos_in_progress();
        let stream = start_upload(self.connect(), jpeg, sent);
        let start = Instant::now();
        while self.photos_in_progress() <= before {
            assert!(start.elapsed() < Duration::from_secs(30), "the upload never began");
            std::thread::sleep(Duration::from_millis(10));
        }
        stream
    }

    /// The `fruits_identify_in_flight` gauge of `/metrics`.
    pub fn photos_in_progress(&self) -> i64 {
        let metrics = match self.admin {
            Some(_) => self.admin("GET", "/metrics", &[]),
            None => self.get("/metrics"),
        }
        .text();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("fruits_identify_in_flight "))
            .and_then(|v| v.trim().parse().ok())
            .expect("/metrics has fruits_identify_in_flight")
    }

    /// Polls `/readyz` until `done` holds for its JSON.
    pub fn wait_ready(&self, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let r = self.get("/readyz").json();
            if done(&r) {
                return r;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "readyz never became {r}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends on `stream` the head of a JPEG upload to `/v1/identify` and its
/// first `sent` bytes (all of them to finish it); returns the stream to
/// read the reply from, or to go on with.
pub fn start_upload(mut stream: TcpStream, jpeg: &[u8], sent: usize) -> TcpStream {
    write_head(
        &mut stream,
        "POST",
        "/v1/identify",
        &[("content-type", "image/jpeg")],
        Some(jpeg.len()),
    );
    stream.write_all(&jpeg[..sent]).unwrap();
    stream
}

/// One request on a new connection.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write_head(&mut stream, method, path, headers, Some(body.len()));
    stream.write_all(body).unwrap();
    read_reply(stream)
}

/// Writes a request head; `None` length sends no Content-Length.
pub fn write_head(stream: &mut TcpStream, method: &str, path: &str, headers: &[(&str, &str)], length: Option<usize>) {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(n) = length {
        head.push_str(&format!("content-length: {n}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts a JSON error of this status and code.
    pub fn assert_error(&self, status: u16, code: &str) {
        let json = self.json();
        assert_eq!((self.status, json["code"].as_str()), (status, Some(code)), "{json}");
        assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()), "{json}");
    }
}

/// Reads a whole reply (the server closes the connection: `connection: close`).
pub fn read_reply(stream: TcpStream) -> Reply {
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        let _ = reader.read_to_end(&mut body);
    }
    Reply { status, headers, body }
}

/// A multipart/form-data body with one file field.
pub fn multipart(field: &str, filename: &str, content_type: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "----fruits-test-boundary-5b1d";
    let mut body = format!(
        "--{boundary}\r\ncontent-disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\ncontent-type: {content_type}\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
