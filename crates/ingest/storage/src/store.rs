//! Object stores: one per `scheme://authority`, configured the AWS way.
//!
//! S3 settings come from, in order of precedence:
//! 1. the environment, with AWS names (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!    `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, …);
//! 2. the `[s3]` table of the config file (`$FRUITS_STORAGE_CONFIG`, else
//!    `~/.config/fruits/storage.toml`), whose keys are the same names in lower
//!    case (`aws_endpoint_url = "http://127.0.0.1:9000"`);
//! 3. the standard credential chain of `object_store` when no key is given
//!    (web identity, ECS task role, EC2 instance metadata).
//!
//! Transient errors are retried with exponential back-off; a store that does
//! not answer fails within seconds, not minutes. Secrets are never printed:
//! [`redact`] scrubs them from any text meant for people.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::list::PaginatedListStore;
use object_store::local::LocalFileSystem;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};
use url::Url;

use crate::fault::Fault;
use crate::Error;

/// Environment variables and config keys whose values are secrets.
const SECRET_KEYS: &[&str] = &["aws_secret_access_key", "aws_session_token", "aws_access_key_id"];

/// The process's store for `url`'s scheme and authority, created on first use.
pub fn store_for(url: &Url) -> Result<Arc<dyn ObjectStore>, Error> {
    let store = stores_for(url)?.store;
    Ok(crate::guard::guard(
        &format!("{}://{}", url.scheme(), url.authority()),
        store,
    ))
}

/// The paginated listing of `url`'s store where it has one (S3): the one way
/// to list past a key `object_store` cannot represent, see `list_images`.
/// None in a process limited by `restrict_to`, whose listings go through the
/// guarded store.
pub fn paged_for(url: &Url) -> Result<Option<Arc<dyn PaginatedListStore>>, Error> {
    if crate::guard::is_restricted() {
        return Ok(None);
    }
    Ok(stores_for(url)?.paged)
}

/// One store, seen through the traits the crate uses.
#[derive(Clone)]
struct Stores {
    store: Arc<dyn ObjectStore>,
    paged: Option<Arc<dyn PaginatedListStore>>,
}

fn stores_for(url: &Url) -> Result<Stores, Error> {
    static STORES: OnceLock<Mutex<HashMap<String, Stores>>> = OnceLock::new();
    let root = format!("{}://{}", url.scheme(), url.authority());
    let mut stores = STORES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(found) = stores.get(&root) {
        return Ok(found.clone());
    }
    let made = match url.scheme() {
        // Automatic cleanup removes folders left empty by deletes (e.g. scratch space).
        "file" => Stores {
            store: Arc::new(LocalFileSystem::new().with_automatic_cleanup(true)),
            paged: None,
        },
        "s3" | "s3a" => {
            let s3 = Arc::new(
                s3_builder(url)?
                    .build()
                    .map_err(|e| Error::Config(redact(&e.to_string())))?,
            );
            Stores {
                store: s3.clone(),
                paged: Some(s3),
            }
        }
        other => return Err(Error::UnsupportedScheme(other.into())),
    };
    stores.insert(root, made.clone());
    Ok(made)
}

fn s3_builder(url: &Url) -> Result<AmazonS3Builder, Error> {
    let mut builder = AmazonS3Builder::from_env().with_url(url.as_str());
    for (key, value) in config_file()?.s3 {
        if std::env::var_os(key.to_ascii_uppercase()).is_none() {
            let key: AmazonS3ConfigKey = key
                .parse()
                .map_err(|_| Error::Config(format!("unknown S3 setting '{key}' in the storage config")))?;
            builder = builder.with_config(key, value);
        }
    }
    Ok(builder
        .with_retry(retry_config())
        .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout), "5s")
        .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "120s"))
}

/// Up to 5 retries, 100 ms doubling to 2 s, and never more than 20 s in all.
pub fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 5,
        retry_timeout: Duration::from_secs(20),
    }
}

#[derive(Debug, Default, Clone, serde::Deserialize)]
struct ConfigFile {
    #[serde(default)]
    s3: HashMap<String, String>,
}

/// The storage config file, read once; absent is fine, unreadable is an error.
fn config_file() -> Result<ConfigFile, Error> {
    static FILE: OnceLock<Result<ConfigFile, String>> = OnceLock::new();
    FILE.get_or_init(|| {
        let explicit = std::env::var_os("FRUITS_STORAGE_CONFIG").map(std::path::PathBuf::from);
        let default = std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".config/fruits/storage.toml"));
        let Some(path) = explicit.clone().or(default) else {
            return Ok(ConfigFile::default());
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => {
                return Ok(ConfigFile::default())
            }
            Err(e) => return Err(format!("cannot read the storage config {}: {e}", path.display())),
        };
        toml::from_str(&text)
            .map_err(|e| format!("storage config {} is not valid TOML: {}", path.display(), e.message()))
    })
    .clone()
    .map_err(Error::Config)
}

/// Replaces every known secret value in `text` with `[redacted]`.
pub fn redact(text: &str) -> String {
    let mut secrets: Vec<String> = SECRET_KEYS
        .iter()
        .filter_map(|k| std::env::var(k.to_ascii_uppercase()).ok())
        .collect();
    if let Ok(file) = config_file() {
        secrets.extend(SECRET_KEYS.iter().filter_map(|k| file.s3.get(*k).cloned()));
    }
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(secret.as_str(), "[redacted]");
    }
    out
}

/// A storage error in plain words, on one line, without secrets: what a person
/// can act on (wrong endpoint, missing bucket, credentials), not the raw chain.
pub fn describe(e: &object_store::Error) -> String {
    let plain = Fault::of(e)
        .plain()
        .unwrap_or_else(|| e.to_string().lines().next().unwrap_or("").to_string());
    redact(&plain)
}
