//! Object stores: one per `scheme://authority`, each configured the way its
//! cloud's own tools are.
//!
//! | scheme | store | environment | config table |
//! |---|---|---|---|
//! | `s3://`, `s3a://` | S3 or any S3-protocol server | `AWS_*` | `[s3]` |
//! | `gs://` | Google Cloud Storage | `GOOGLE_*` | `[gcs]` |
//! | `az://`, `azure://`, `abfs[s]://` | Azure Blob Storage (Azurite too) | `AZURE_*` | `[azure]` |
//!
//! Settings come from, in order of precedence:
//! 1. the environment, with the cloud's names (`AWS_ACCESS_KEY_ID`,
//!    `AWS_ENDPOINT_URL`, `GOOGLE_APPLICATION_CREDENTIALS`,
//!    `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`,
//!    `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_USE_EMULATOR`, …);
//! 2. the table of the config file (`$FRUITS_STORAGE_CONFIG`, else
//!    `~/.config/fruits/storage.toml`), whose keys are the same names in lower
//!    case (`aws_endpoint_url = "http://127.0.0.1:9000"`);
//! 3. the cloud's credential chain in `object_store` when no key is given:
//!    S3 web identity, ECS task role, EC2 instance metadata; Google's
//!    application default credentials (`gcloud auth application-default
//!    login`), then the GCE metadata server; Azure workload identity, the
//!    Azure CLI when `AZURE_USE_AZURE_CLI` is set, then managed identity.
//!
//! Transient errors are retried with exponential back-off; a store that does
//! not answer fails within seconds, not minutes. Secrets are never printed:
//! [`redact`] scrubs them from any text meant for people.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::list::PaginatedListStore;
use object_store::local::LocalFileSystem;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};
use url::Url;

use crate::fault::Fault;
use crate::Error;

/// Settings whose values are secrets, by their canonical names: an alias
/// (`AZURE_STORAGE_ACCESS_KEY`, `account_key`) is known by the name it stands for.
const SECRET_KEYS: &[&str] = &[
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "google_service_account_key",
    "azure_storage_account_key",
    "azure_storage_sas_key",
    "azure_storage_client_secret",
    "azure_storage_token",
    "azure_fabric_session_token",
];

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
        "s3" | "s3a" => paged(
            s3_builder(url, &config_file()?)?
                .build()
                .map_err(|e| build_error(&root, "AWS_*", "s3", e))?,
        ),
        "gs" => paged(
            gcs_builder(url, &config_file()?)?
                .build()
                .map_err(|e| build_error(&root, "GOOGLE_*", "gcs", e))?,
        ),
        "az" | "azure" | "abfs" | "abfss" => paged(
            azure_builder(url, &config_file()?)?
                .build()
                .map_err(|e| build_error(&root, "AZURE_*", "azure", e))?,
        ),
        other => return Err(Error::UnsupportedScheme(other.into())),
    };
    stores.insert(root, made.clone());
    Ok(made)
}

/// A store that cannot be built from its settings, said with where the
/// settings come from.
fn build_error(root: &str, env: &str, table: &str, e: object_store::Error) -> Error {
    let reason = match e {
        object_store::Error::Generic { source, .. } => source.to_string(),
        other => other.to_string(),
    };
    Error::Config(redact(&format!(
        "{root}: {reason} (settings: the {env} variables or the [{table}] table of the storage config)"
    )))
}

/// A cloud store, seen as both a store and a paginated listing.
fn paged<S: ObjectStore + PaginatedListStore>(store: S) -> Stores {
    let store = Arc::new(store);
    Stores {
        store: store.clone(),
        paged: Some(store),
    }
}

fn s3_builder(url: &Url, file: &ConfigFile) -> Result<AmazonS3Builder, Error> {
    let builder = AmazonS3Builder::from_env()
        .with_url(url.as_str())
        .with_retry(retry_config());
    configure(
        builder,
        &file.s3,
        "s3",
        |b, k, v| b.with_config(k, v),
        AmazonS3ConfigKey::Client,
    )
}

fn gcs_builder(url: &Url, file: &ConfigFile) -> Result<GoogleCloudStorageBuilder, Error> {
    let builder = GoogleCloudStorageBuilder::from_env()
        .with_url(url.as_str())
        .with_retry(retry_config());
    configure(
        builder,
        &file.gcs,
        "gcs",
        |b, k, v| b.with_config(k, v),
        GoogleConfigKey::Client,
    )
}

fn azure_builder(url: &Url, file: &ConfigFile) -> Result<MicrosoftAzureBuilder, Error> {
    let builder = MicrosoftAzureBuilder::from_env()
        .with_url(url.as_str())
        .with_retry(retry_config());
    configure(
        builder,
        &file.azure,
        "azure",
        |b, k, v| b.with_config(k, v),
        AzureConfigKey::Client,
    )
}

/// Adds to a builder made from the environment the settings of its config
/// table that the environment leaves unset, then the timeouts. The three
/// clouds' builders share no trait, so `set` is each one's `with_config`.
fn configure<B, K>(
    mut builder: B,
    table: &HashMap<String, String>,
    name: &str,
    set: impl Fn(B, K, String) -> B,
    client: impl Fn(ClientConfigKey) -> K,
) -> Result<B, Error>
where
    K: std::str::FromStr + AsRef<str>,
{
    for (key, value) in file_settings::<K>(table, name)? {
        builder = set(builder, key, value);
    }
    builder = set(builder, client(ClientConfigKey::ConnectTimeout), CONNECT_TIMEOUT.into());
    Ok(set(builder, client(ClientConfigKey::Timeout), REQUEST_TIMEOUT.into()))
}

/// A store that does not answer fails within seconds, not minutes.
const CONNECT_TIMEOUT: &str = "5s";
const REQUEST_TIMEOUT: &str = "120s";

/// The settings of one config table that the environment does not set:
/// the environment wins, as it does for each cloud's own tools.
fn file_settings<K>(table: &HashMap<String, String>, name: &str) -> Result<Vec<(K, String)>, Error>
where
    K: std::str::FromStr + AsRef<str>,
{
    let in_env = |key: &str| std::env::var_os(key.to_ascii_uppercase()).is_some();
    let mut settings = Vec::new();
    for (key, value) in table {
        let parsed: K = key.parse().map_err(|_| {
            Error::Config(format!(
                "unknown setting '{key}' in the [{name}] table of the storage config"
            ))
        })?;
        if !in_env(key) && !in_env(parsed.as_ref()) {
            settings.push((parsed, value.clone()));
        }
    }
    Ok(settings)
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

/// The storage config file: one table of settings per kind of store.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    s3: HashMap<String, String>,
    #[serde(default)]
    gcs: HashMap<String, String>,
    #[serde(default)]
    azure: HashMap<String, String>,
}

impl ConfigFile {
    /// The values of the settings that are secrets.
    fn secrets(&self) -> Vec<String> {
        fn of<K: std::str::FromStr + AsRef<str>>(table: &HashMap<String, String>) -> Vec<String> {
            table
                .iter()
                .filter(|(name, _)| is_secret::<K>(name))
                .map(|(_, value)| value.clone())
                .collect()
        }
        let mut secrets = of::<AmazonS3ConfigKey>(&self.s3);
        secrets.extend(of::<GoogleConfigKey>(&self.gcs));
        secrets.extend(of::<AzureConfigKey>(&self.azure));
        secrets
    }
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
        toml::from_str(&text).map_err(|e| format!("storage config {} is not valid: {}", path.display(), e.message()))
    })
    .clone()
    .map_err(Error::Config)
}

/// Replaces every known secret value in `text` with `[redacted]`.
pub fn redact(text: &str) -> String {
    let mut secrets: Vec<String> = std::env::vars()
        .filter(|(name, _)| is_secret_env(name))
        .map(|(_, value)| value)
        .collect();
    if let Ok(file) = config_file() {
        secrets.extend(file.secrets());
    }
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(secret.as_str(), "[redacted]");
    }
    out
}

/// Whether a setting of a store whose keys are `K` holds a secret.
fn is_secret<K: std::str::FromStr + AsRef<str>>(name: &str) -> bool {
    name.to_ascii_lowercase()
        .parse::<K>()
        .is_ok_and(|key| SECRET_KEYS.contains(&key.as_ref()))
}

/// Whether an environment variable holds a secret of one of our stores.
fn is_secret_env(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("aws_") {
        is_secret::<AmazonS3ConfigKey>(&lower)
    } else if lower.starts_with("google_") {
        is_secret::<GoogleConfigKey>(&lower)
    } else if lower.starts_with("azure_") {
        is_secret::<AzureConfigKey>(&lower)
    } else {
        false
    }
}

/// A storage error in plain words, on one line, without secrets: what a person
/// can act on (wrong endpoint, missing bucket, credentials), not the raw chain.
pub fn describe(e: &object_store::Error) -> String {
    let plain = Fault::of(e)
        .plain()
        .unwrap_or_else(|| e.to_string().lines().next().unwrap_or("").to_string());
    redact(&plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> ConfigFile {
        toml::from_str(text).unwrap()
    }

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    /// A service account key that needs no token server: what a GCS
    /// emulator is given (`disable_oauth`), here pointing at `base`.
    fn offline_key(base: &str) -> String {
        format!(
            r#"{{"private_key": "", "private_key_id": "", "client_email": "", "gcs_base_url": "{base}", "disable_oauth": true}}"#
        )
    }

    #[test]
    fn gcs_settings_come_from_the_gcs_table_with_timeouts_and_build_a_store_per_bucket() {
        let key = offline_key("http://127.0.0.1:9");
        let config = file(&format!(
            "[gcs]\ngoogle_service_account_key = '{key}'\nbase_url = 'http://127.0.0.1:9'\n"
        ));
        let builder = gcs_builder(&url("gs://fruit-lake/raw"), &config).unwrap();
        assert_eq!(builder.get_config_value(&GoogleConfigKey::ServiceAccountKey), Some(key));
        assert_eq!(
            builder.get_config_value(&GoogleConfigKey::BaseUrl).as_deref(),
            Some("http://127.0.0.1:9"),
            "an alias (base_url) is the setting it stands for"
        );
        assert_eq!(
            builder
                .get_config_value(&GoogleConfigKey::Client(ClientConfigKey::ConnectTimeout))
                .as_deref(),
            Some(CONNECT_TIMEOUT)
        );
        let store = builder.build().unwrap();
        assert_eq!(
            store.to_string(),
            "GoogleCloudStorage(fruit-lake)",
            "the bucket is the URL's"
        );
    }

    #[test]
    fn azure_settings_come_from_the_azure_table_and_the_url_names_the_container() {
        let config = file(
            "[azure]\naccount_name = 'fruitsacct'\naccount_key = 'c2VjcmV0LWtleS1ieXRlcw=='\n\
             azure_storage_use_emulator = 'true'\n",
        );
        for (uri, container) in [
            ("az://lake/raw", "lake"),
            ("azure://lake/raw", "lake"),
            ("abfss://lake@fruitsacct.dfs.core.windows.net/raw", "lake"),
        ] {
            let builder = azure_builder(&url(uri), &config).unwrap();
            assert_eq!(
                builder.get_config_value(&AzureConfigKey::AccessKey).as_deref(),
                Some("c2VjcmV0LWtleS1ieXRlcw==")
            );
            let store = builder.build().unwrap();
            assert_eq!(
                store.to_string(),
                format!("MicrosoftAzure {{ account: fruitsacct, container: {container} }}"),
                "{uri}"
            );
        }
    }

    #[test]
    fn an_unknown_setting_or_table_is_a_clear_error() {
        let typo = file("[gcs]\nbucket_nam = 'x'\n");
        let Err(Error::Config(message)) = gcs_builder(&url("gs://b/p"), &typo) else {
            panic!("a misspelled setting is refused");
        };
        assert_eq!(
            message,
            "unknown setting 'bucket_nam' in the [gcs] table of the storage config"
        );
        let wrong_cloud = file("[azure]\naws_secret_access_key = 'x'\n");
        assert!(azure_builder(&url("az://c/p"), &wrong_cloud).is_err());
        let error = toml::from_str::<ConfigFile>("[gsc]\nbucket = 'x'\n").unwrap_err();
        assert!(error.message().contains("unknown field `gsc`"), "{}", error.message());
    }

    #[test]
    fn secrets_are_known_by_the_setting_they_stand_for() {
        let config = file(
            "[s3]\naws_secret_access_key = 's3-secret'\naws_region = 'eu-west-1'\n\
             [gcs]\nservice_account_key = 'gcs-key-json'\ngoogle_service_account = '/keys/sa.json'\n\
             [azure]\naccount_key = 'az-account-key'\nazure_storage_sas_key = 'az-sas'\n\
             client_secret = 'az-client-secret'\naccount_name = 'fruitsacct'\n",
        );
        let mut secrets = config.secrets();
        secrets.sort();
        assert_eq!(
            secrets,
            [
                "az-account-key",
                "az-client-secret",
                "az-sas",
                "gcs-key-json",
                "s3-secret"
            ]
        );
        assert!(is_secret_env("AZURE_STORAGE_ACCESS_KEY"), "an alias of the account key");
        assert!(is_secret_env("GOOGLE_SERVICE_ACCOUNT_KEY"));
        assert!(is_secret_env("AWS_SESSION_TOKEN"));
        assert!(!is_secret_env("AZURE_STORAGE_ACCOUNT_NAME"));
        assert!(!is_secret_env("GOOGLE_APPLICATION_CREDENTIALS"), "a path, not a secret");
        assert!(!is_secret_env("PATH"));
    }

    #[test]
    fn other_schemes_are_refused() {
        assert!(matches!(
            stores_for(&url("ftp://host/x")),
            Err(Error::UnsupportedScheme(s)) if s == "ftp"
        ));
    }
}
