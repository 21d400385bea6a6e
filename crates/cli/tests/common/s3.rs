//! A real S3-protocol server for tests: moto's server mode on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// Credentials the tests hand to `fruits`; the secret must never be printed.
pub const KEY_ID: &str = "AKIAFRUITSTESTKEY42";
pub const SECRET: &str = "fruitsSecretValue-DoNotPrint-8f3a";

pub struct S3Server {
    pub port: u16,
    child: Child,
}

impl S3Server {
    pub fn start() -> Self {
        Self::start_on(None)
    }

    /// Starts again on the same port (moto keeps nothing: the buckets are gone).
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self = Self::start_on(Some(self.port));
    }

    fn start_on(port: Option<u16>) -> Self {
        // One start at a time: a port is free only until someone binds it.
        static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = STARTING.lock().unwrap_or_else(|p| p.into_inner());
        let port = port.unwrap_or_else(free_port);
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server starts (pip install 'moto[server]')");
        let server = Self { port, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http(port, "GET / HTTP/1.1").is_none() {
            assert!(Instant::now() < deadline, "moto did not start on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The AWS environment `fruits` gets.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// Creates a bucket (moto accepts an unsigned `PUT /bucket`).
    pub fn create_bucket(&self, bucket: &str) {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            conn,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "create bucket: {reply}");
    }

    /// Puts `bytes` under `key` as it is, unsigned: keys a client library
    /// refuses to write (`a//b.jpg`, `.` and `..` segments), as S3 accepts.
    pub fn put_raw_key(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let path = key.replace(' ', "%20");
        write!(
            conn,
            "PUT /{bucket}/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            bytes.len()
        )
        .unwrap();
        conn.write_all(bytes).unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "put {key}: {reply}");
    }

    /// From now on every request must carry a key id known to moto's IAM
    /// (its `reset-auth` switch); the tests' own key is not one.
    pub fn enforce_auth(&self) {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            conn,
            "POST /moto-api/reset-auth HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: 1\r\nConnection: close\r\n\r\n0"
        )
        .unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "reset-auth: {reply}");
    }

    /// A store client for uploading and checking, configured explicitly.
    pub fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        let s3 = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id(KEY_ID)
            .with_secret_access_key(SECRET)
            .build()
            .unwrap();
        Arc::new(s3)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP request without a body; the reply, or `None` if nothing answers.
fn http(port: u16, request_line: &str) -> Option<String> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        conn,
        "{request_line}\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).ok()?;
    reply.starts_with("HTTP/").then_some(reply)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs async store calls from a synchronous test.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Puts the first `per_class` shared images of each class under
/// `prefix/<class>/` in `store`; returns their URIs, written `root/key`
/// (`root` is e.g. `s3://lake`).
pub fn upload_classes(
    store: &Arc<dyn ObjectStore>,
    root: &str,
    prefix: &str,
    classes: &[&str],
    per_class: usize,
) -> std::collections::HashSet<String> {
    let mut uploaded = std::collections::HashSet::new();
    for class in classes {
        for image in super::class_images(class).into_iter().take(per_class) {
            let key = format!("{prefix}/{class}/{}", image.file_name().unwrap().to_str().unwrap());
            put(store, &key, std::fs::read(&image).unwrap());
            uploaded.insert(format!("{root}/{key}"));
        }
    }
    uploaded
}

pub fn put(store: &Arc<dyn ObjectStore>, key: &str, bytes: Vec<u8>) {
    block_on(store.put(&Path::from(key), PutPayload::from(bytes))).unwrap();
}

pub fn delete(store: &Arc<dyn ObjectStore>, key: &str) {
    block_on(store.delete(&Path::from(key))).unwrap();
}

pub fn get(store: &Arc<dyn ObjectStore>, key: &str) -> bytes::Bytes {
    block_on(async { store.get(&Path::from(key)).await.unwrap().bytes().await.unwrap() })
}

/// Keys under `prefix`, sorted.
pub fn list(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let mut keys: Vec<String> = block_on(store.list(Some(&Path::from(prefix))).try_collect::<Vec<_>>())
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .collect();
    keys.sort();
    keys
}
