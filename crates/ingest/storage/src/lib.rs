//! Storage: where the images and the results are, and how to reach them.
//!
//! The image lake and every job output are read and written through
//! `object_store`, local files included (`file://`), so that S3 is
//! configuration, not code. Supported: local paths, `file://`, `s3://` (any
//! S3-protocol server), `gs://` (Google Cloud Storage) and `az://` (Azure Blob
//! Storage; also `azure://`, `abfs://`, `abfss://`).
//!
//! - [`ObjectUri`]: one object, written `scheme://authority/path` (local files are
//!   `file:///abs/path`). This string is what the `path` column holds, and what an
//!   executor reads bytes from.
//! - [`Location`]: a folder or prefix to list or write under, from a URI or a
//!   plain path.
//! - [`list_images`]: a paginated, streaming listing of the image files below a
//!   location, each labelled with its parent folder's name (the Fruits-360 layout
//!   `<root>/<split>/<class>/<image>.jpg`): the ingest stage.
//! - [`store_for`]: one store per `scheme://authority`, each configured the way
//!   its cloud's tools are (environment, config file, credential chain), with
//!   retries.
//! - [`Fault`]: what went wrong, by kind, in plain words; [`redact`] scrubs
//!   secrets from any text meant for people.
//! - [`restrict_to`]: the prefixes this process may open (executors and
//!   the scheduler run plans they are sent); every store refuses the rest.
//!
//! Must not depend on an engine, a model or an image decoder: it moves bytes.

mod fault;
mod guard;
mod paged;
mod store;

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use url::Url;

pub use fault::Fault;
pub use guard::restrict_to;
pub use store::{redact, retry_config, store_for};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("'{0}' is not a valid location: {1}")]
    InvalidUri(String, String),
    #[error("unsupported storage scheme '{0}' (use a path, file://, s3://, gs:// or az://)")]
    UnsupportedScheme(String),
    #[error("storage configuration: {0}")]
    Config(String),
    #[error("{uri}: {}", store::describe(cause))]
    Store { uri: String, cause: object_store::Error },
    /// One entry of a listing could not be listed (a symbolic link loop, a
    /// folder that cannot be read); the listing goes on past it.
    #[error("{uri}: {reason}")]
    Unlisted { uri: String, reason: String },
}

impl Error {
    /// True when retrying cannot help: missing object or bucket, no
    /// permission, a bad URI or configuration.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Store { cause, .. } => Fault::of(cause).is_permanent(),
            _ => true,
        }
    }

    /// True when the object does not exist (vanished, or never there).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::Store {
                cause: object_store::Error::NotFound { .. },
                ..
            }
        )
    }

    /// A put that was to create the object found one there.
    pub fn is_already_exists(&self) -> bool {
        matches!(
            self,
            Error::Store {
                cause: object_store::Error::AlreadyExists { .. },
                ..
            }
        )
    }

    /// A conditional put whose condition did not hold.
    pub fn is_precondition(&self) -> bool {
        matches!(
            self,
            Error::Store {
                cause: object_store::Error::Precondition { .. },
                ..
            }
        )
    }

    /// The store does not offer the operation (e.g. a conditional replace).
    pub fn is_not_implemented(&self) -> bool {
        matches!(
            self,
            Error::Store {
                cause: object_store::Error::NotImplemented { .. },
                ..
            }
        )
    }
}

/// The image file extensions we list, compared case-insensitively.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

pub fn is_image_name(name: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(_, ext)| IMAGE_EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext)))
}

/// A folder or prefix in a store.
#[derive(Debug, Clone)]
pub struct Location {
    /// `scheme://authority`, e.g. `file://` or `s3://bucket`.
    pub root: String,
    pub prefix: Path,
    pub store: Arc<dyn ObjectStore>,
}

impl Location {
    /// Parses a URI (`s3://bucket/prefix`, `file:///dir`) or a local path
    /// (relative paths are made absolute; the folder need not exist yet).
    pub fn parse(uri: &str) -> Result<Self, Error> {
        let url = to_url(uri)?;
        let root = root_of(&url);
        let prefix = Path::from_url_path(url.path()).map_err(|e| Error::InvalidUri(uri.into(), e.to_string()))?;
        let store = store_for(&url)?;
        Ok(Self { root, prefix, store })
    }

    /// The URI of `relative` (slash-separated) below this location.
    pub fn child(&self, relative: &str) -> ObjectUri {
        let mut path = self.prefix.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            path = path.join(part);
        }
        ObjectUri {
            root: self.root.clone(),
            path,
        }
    }

    /// This location written as a URI.
    pub fn uri(&self) -> String {
        ObjectUri {
            root: self.root.clone(),
            path: self.prefix.clone(),
        }
        .to_string()
    }
}

/// One object: store root plus path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectUri {
    pub root: String,
    pub path: Path,
}

impl std::fmt::Display for ObjectUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.root, self.path)
    }
}

impl ObjectUri {
    /// Parses what [`Display`](std::fmt::Display) wrote.
    pub fn parse(uri: &str) -> Result<Self, Error> {
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| Error::InvalidUri(uri.into(), "no scheme".into()))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let path = Path::parse(path).map_err(|e| Error::InvalidUri(uri.into(), e.to_string()))?;
        Ok(Self {
            root: format!("{scheme}://{authority}"),
            path,
        })
    }

    /// A command-line argument: a URI, or a local path (made absolute).
    pub fn from_arg(arg: &str) -> Result<Self, Error> {
        if arg.contains("://") {
            return Self::parse(arg);
        }
        let abs = absolute(arg)?;
        let path = Path::from_absolute_path(&abs).map_err(|e| Error::InvalidUri(arg.into(), e.to_string()))?;
        Ok(Self {
            root: "file://".into(),
            path,
        })
    }

    pub fn store(&self) -> Result<Arc<dyn ObjectStore>, Error> {
        store_for(&to_url(&format!("{}/", self.root))?)
    }

    /// Reads the whole object.
    pub async fn read(&self) -> Result<Bytes, Error> {
        let store = self.store()?;
        let get = store.get(&self.path).await.map_err(|e| self.err(e))?;
        get.bytes().await.map_err(|e| self.err(e))
    }

    pub fn err(&self, source: object_store::Error) -> Error {
        Error::Store {
            uri: self.to_string(),
            cause: source,
        }
    }

    /// Name of the folder holding the object: the class label.
    pub fn parent_name(&self) -> Option<String> {
        let parts: Vec<_> = self.path.parts().collect();
        (parts.len() >= 2).then(|| parts[parts.len() - 2].as_ref().to_string())
    }
}

/// One listed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    pub uri: ObjectUri,
    pub label: String,
    pub size: u64,
    /// What the store says identifies this version of the object (S3's
    /// ETag; for a local file its inode, modification time and size): a
    /// different tag means the bytes may have changed.
    pub etag: Option<String>,
}

/// The names of the folders directly under `location`, sorted (one
/// delimited listing: cheap on any store, whatever the folders hold).
pub async fn list_folders(location: &Location) -> Result<Vec<String>, Error> {
    let listing = location
        .store
        .list_with_delimiter(Some(&location.prefix))
        .await
        .map_err(|cause| Error::Store {
            uri: location.uri(),
            cause,
        })?;
    let mut names: Vec<String> = listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(String::from))
        .collect();
    names.sort();
    Ok(names)
}

/// Every image under `location`, read whole, in URI order: for small sets
/// read as one (the photographs training scenes are composed on). The first
/// fault ends it.
pub async fn read_images(location: &Location) -> Result<Vec<(ObjectUri, Bytes)>, Error> {
    let mut entries: Vec<ImageEntry> = list_images(location).try_collect().await?;
    entries.sort_by_key(|e| e.uri.to_string());
    let mut files = Vec::with_capacity(entries.len());
    for entry in entries {
        let bytes = entry.uri.read().await?;
        files.push((entry.uri, bytes));
    }
    Ok(files)
}

/// Streams every image below `location`, page by page as the store lists
/// them. A local folder is walked here, not by `object_store`, whose local
/// listing ends at its first fault: one symbolic link loop would silently
/// drop the rest. Here each fault is an [`Error::Unlisted`] item and the walk
/// goes on.
pub fn list_images(location: &Location) -> BoxStream<'static, Result<ImageEntry, Error>> {
    if location.root == "file://" {
        return list_local(location);
    }
    let root = location.root.clone();
    let listing = match paged_store(location) {
        Some(paged) => {
            let (tx, rx) = tokio::sync::mpsc::channel(1024);
            tokio::spawn(paged::list(paged, root.clone(), location.prefix.clone(), tx));
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }).boxed()
        }
        None => {
            let (store, prefix, root) = (location.store.clone(), location.prefix.clone(), root.clone());
            futures::stream::once(async move { store.list(Some(&prefix)) })
                .flatten()
                .map(move |item| {
                    item.map_err(|cause| Error::Store {
                        uri: root.clone(),
                        cause,
                    })
                })
                .boxed()
        }
    };
    listing
        .filter_map(move |item| {
            let root = root.clone();
            async move {
                let meta = match item {
                    Ok(meta) => meta,
                    Err(e) => return Some(Err(e)),
                };
                let name = meta.location.filename().unwrap_or("");
                if !is_image_name(name) {
                    return None;
                }
                let uri = ObjectUri {
                    root,
                    path: meta.location,
                };
                let label = uri.parent_name()?;
                Some(Ok(ImageEntry {
                    uri,
                    label,
                    size: meta.size,
                    etag: meta.e_tag,
                }))
            }
        })
        .boxed()
}

/// The paginated listing of a location's store, when it has one (S3).
fn paged_store(location: &Location) -> Option<Arc<dyn object_store::list::PaginatedListStore>> {
    let url = Url::parse(&location.root).ok()?;
    store::paged_for(&url).ok().flatten()
}

/// [`list_images`] for a local folder: a walk following symbolic links, in
/// file name order, on a blocking thread, sent through a bounded channel.
fn list_local(location: &Location) -> BoxStream<'static, Result<ImageEntry, Error>> {
    let dir = std::path::PathBuf::from(format!("/{}", location.prefix.as_ref()));
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::task::spawn_blocking(move || {
        let walk = walkdir::WalkDir::new(&dir).follow_links(true).sort_by_file_name();
        for entry in walk {
            let item = match entry {
                Ok(e) if e.file_type().is_file() => match local_image(&e) {
                    Some(item) => item,
                    None => continue,
                },
                Ok(_) => continue,
                // A folder that does not exist lists nothing, as on a store.
                Err(e)
                    if e.depth() == 0 && e.io_error().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) =>
                {
                    break
                }
                Err(e) => Err(unlisted(&e)),
            };
            if tx.blocking_send(item).is_err() {
                break;
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }).boxed()
}

/// The listing item of one local file: `None` if it is not an image by name.
fn local_image(entry: &walkdir::DirEntry) -> Option<Result<ImageEntry, Error>> {
    let name = entry.file_name().to_str().unwrap_or("");
    if !is_image_name(name) {
        return None;
    }
    let path = match Path::from_absolute_path(entry.path()) {
        Ok(path) => path,
        Err(e) => {
            return Some(Err(Error::Unlisted {
                uri: format!("file://{}", entry.path().display()),
                reason: format!("not a usable object path: {e}"),
            }))
        }
    };
    let (size, etag) = match entry.metadata() {
        Ok(m) => (m.len(), local_etag(&m)),
        Err(e) => return Some(Err(unlisted(&e))),
    };
    let uri = ObjectUri {
        root: "file://".into(),
        path,
    };
    let label = uri.parent_name()?;
    Some(Ok(ImageEntry {
        uri,
        label,
        size,
        etag: Some(etag),
    }))
}

/// A local file's version tag, as `object_store`'s local store makes it:
/// inode, modification time (µs) and size, in hex. A file rewritten or
/// replaced gets another; one only read keeps it.
fn local_etag(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    let micros = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_micros());
    format!("{:x}-{micros:x}-{:x}", meta.ino(), meta.len())
}

fn unlisted(e: &walkdir::Error) -> Error {
    let (path, reason) = walk_fault(e);
    Error::Unlisted {
        uri: format!("file://{path}"),
        reason,
    }
}

/// The path of a walk's fault, and why.
fn walk_fault(walk: &walkdir::Error) -> (String, String) {
    let path = walk.path().map_or_else(String::new, |p| p.display().to_string());
    let reason = match (walk.loop_ancestor(), walk.io_error()) {
        (Some(ancestor), _) => format!(
            "a symbolic link loop (it leads back to {}): not followed",
            ancestor.display()
        ),
        (None, Some(io)) => format!("cannot be listed: {io}"),
        (None, None) => walk.to_string(),
    };
    (path, reason)
}

fn to_url(uri: &str) -> Result<Url, Error> {
    if uri.contains("://") {
        return Url::parse(uri).map_err(|e| Error::InvalidUri(uri.into(), e.to_string()));
    }
    let path = absolute(uri)?;
    Url::from_directory_path(&path).map_err(|_| Error::InvalidUri(uri.into(), "not an absolute path".into()))
}

/// Absolute, with `.` and `..` resolved lexically (symbolic links are kept, so
/// paths stay the ones the user gave).
fn absolute(path: &str) -> Result<std::path::PathBuf, Error> {
    use std::path::Component;
    let abs = std::path::absolute(path).map_err(|e| Error::InvalidUri(path.into(), e.to_string()))?;
    let mut out = std::path::PathBuf::new();
    for part in abs.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

fn root_of(url: &Url) -> String {
    format!("{}://{}", url.scheme(), url.authority())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_matched_case_insensitively() {
        assert!(is_image_name("a.JPG") && is_image_name("b.jpeg") && is_image_name("c.Png"));
        assert!(!is_image_name("notes.txt") && !is_image_name("jpg") && !is_image_name("x.webp.bak"));
    }

    #[test]
    fn object_uris_round_trip_with_spaces() {
        let uri = ObjectUri::parse("file:///data/Training/Apple Braeburn 1/0_100.jpg").unwrap();
        assert_eq!(uri.root, "file://");
        assert_eq!(uri.parent_name().as_deref(), Some("Apple Braeburn 1"));
        assert_eq!(uri.to_string(), "file:///data/Training/Apple Braeburn 1/0_100.jpg");
        let s3 = ObjectUri::parse("s3://bucket/a/b/c.png").unwrap();
        assert_eq!((s3.root.as_str(), s3.path.as_ref()), ("s3://bucket", "a/b/c.png"));
    }

    #[test]
    fn relative_paths_are_made_absolute_and_normalised() {
        let uri = ObjectUri::from_arg("a/../b/./c.jpg").unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(uri.to_string(), format!("file://{}/b/c.jpg", cwd.display()));
    }

    #[tokio::test]
    async fn listing_finds_images_recursively_with_labels() {
        let dir = tempfile::tempdir().unwrap();
        for (folder, file) in [
            ("Banana 1", "1.jpg"),
            ("Banana 1", "2.JPEG"),
            ("Lemon 1", "x.png"),
            ("Lemon 1", "notes.txt"),
        ] {
            std::fs::create_dir_all(dir.path().join("Training").join(folder)).unwrap();
            std::fs::write(dir.path().join("Training").join(folder).join(file), b"x").unwrap();
        }
        let location = Location::parse(dir.path().to_str().unwrap()).unwrap();
        let mut found: Vec<(String, String)> = list_images(&location)
            .map_ok(|e| (e.label, e.uri.path.filename().unwrap().to_string()))
            .try_collect()
            .await
            .unwrap();
        found.sort();
        let expected = [("Banana 1", "1.jpg"), ("Banana 1", "2.JPEG"), ("Lemon 1", "x.png")];
        assert_eq!(found, expected.map(|(a, b)| (a.to_string(), b.to_string())));
        let one = location.child("Training/Banana 1/1.jpg");
        assert_eq!(one.read().await.unwrap().as_ref(), b"x");
        assert!(location
            .child("Training/none.jpg")
            .read()
            .await
            .unwrap_err()
            .is_not_found());
    }
}
