//! A real Azure Blob Storage emulator for tests: Microsoft's Azurite (from
//! npm, `tests/azurite`) on 127.0.0.1, with an account and key of our own.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::ObjectStore;

/// The storage account the tests create; its key must never be printed.
pub const ACCOUNT: &str = "fruitslake";
/// Base64 of 32 bytes, as Azure account keys are.
pub const KEY: &str = "ZnJ1aXRzLWF6dXJlLWtleS1kby1ub3QtcHJpbnQtNDI=";

pub struct Azurite {
    pub port: u16,
    child: Child,
}

fn azurite_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/azurite")
}

impl Azurite {
    pub fn start() -> Self {
        let bin = azurite_dir().join("node_modules/.bin/azurite-blob");
        assert!(
            bin.exists(),
            "{} is missing: npm ci --prefix crates/cli/tests/azurite (scripts/test does)",
            bin.display()
        );
        static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = STARTING.lock().unwrap_or_else(|p| p.into_inner());
        let port = super::s3::free_port();
        let child = Command::new(bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--inMemoryPersistence", "--silent", "--skipApiVersionCheck"])
            .env("AZURITE_ACCOUNTS", format!("{ACCOUNT}:{KEY}"))
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("azurite-blob starts");
        let server = Self { port, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "Azurite did not start on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// What a user sets to point `fruits` at Azurite: the emulator switch,
    /// its address, and the account's name and key.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
            ("AZURITE_BLOB_STORAGE_URL", format!("http://127.0.0.1:{}", self.port)),
            ("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT.into()),
            ("AZURE_STORAGE_ACCOUNT_KEY", KEY.into()),
        ]
    }

    /// Creates a container: object_store has no call for it, so this is
    /// Azure's REST call, signed with the account key (Shared Key).
    pub fn create_container(&self, container: &str) {
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        let version = "2021-08-06";
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n\
             /{ACCOUNT}/{ACCOUNT}/{container}\nrestype:container"
        );
        let key = base64::engine::general_purpose::STANDARD.decode(KEY).unwrap();
        let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key), to_sign.as_bytes());
        let signature = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
        let reply = super::http::request(
            ([127, 0, 0, 1], self.port).into(),
            "PUT",
            &format!("/{ACCOUNT}/{container}?restype=container"),
            &[
                ("x-ms-date", &date),
                ("x-ms-version", version),
                ("authorization", &format!("SharedKey {ACCOUNT}:{signature}")),
            ],
            b"",
        );
        assert_eq!(reply.status, 201, "create container {container}: {}", reply.text());
    }

    /// A store client for uploading and checking, configured explicitly.
    pub fn store(&self, container: &str) -> Arc<dyn ObjectStore> {
        let azure = MicrosoftAzureBuilder::new()
            .with_account(ACCOUNT)
            .with_access_key(KEY)
            .with_container_name(container)
            .with_endpoint(format!("http://127.0.0.1:{}/{ACCOUNT}", self.port))
            .with_allow_http(true)
            .build()
            .unwrap();
        Arc::new(azure)
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
