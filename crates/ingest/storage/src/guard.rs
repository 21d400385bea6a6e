//! What a process may open: after [`restrict_to`], every store
//! [`store_for`](crate::store_for) hands out refuses any path outside the
//! allowed prefixes: reads, writes, listings and deletes alike. An executor
//! runs the plans it is sent; this keeps such a plan from reading the
//! executor's own secrets (an external table over
//! `file:///etc/fruits/storage.toml`) or objects of other prefixes its
//! credentials reach.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions,
};

use crate::Error;

/// What a refusal says, and how it is recognised when relayed as text.
pub(crate) const REFUSAL: &str = "outside the prefixes this process may open";

/// The prefixes this process may open, as `(scheme://authority, path)`;
/// unset: everything its configuration reaches.
static ALLOWED: OnceLock<Vec<(String, Path)>> = OnceLock::new();

/// Limits every store of this process to `prefixes` (URIs or local paths):
/// call it once, before the first store is made.
pub fn restrict_to(prefixes: &[String]) -> Result<(), Error> {
    let mut allowed = Vec::new();
    for prefix in prefixes {
        let location = crate::Location::parse(prefix)?;
        allowed.push((location.root, location.prefix));
    }
    ALLOWED
        .set(allowed)
        .map_err(|_| Error::Config("the allowed prefixes are set once, at start-up".into()))
}

pub(crate) fn is_restricted() -> bool {
    ALLOWED.get().is_some()
}

/// `store` as this process may use it: itself when nothing is restricted.
pub(crate) fn guard(root: &str, store: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
    match ALLOWED.get() {
        None => store,
        Some(all) => {
            let allowed = all.iter().filter(|(r, _)| r == root).map(|(_, p)| p.clone()).collect();
            limited(root, store, allowed)
        }
    }
}

fn limited(root: &str, inner: Arc<dyn ObjectStore>, allowed: Vec<Path>) -> Arc<dyn ObjectStore> {
    Arc::new(Guarded {
        inner,
        root: root.to_string(),
        allowed,
    })
}

/// A store that opens only paths under its allowed prefixes.
#[derive(Debug)]
struct Guarded {
    inner: Arc<dyn ObjectStore>,
    root: String,
    allowed: Vec<Path>,
}

impl Guarded {
    fn check(&self, path: &Path) -> object_store::Result<()> {
        if self.allowed.iter().any(|p| path.prefix_matches(p)) {
            return Ok(());
        }
        Err(object_store::Error::PermissionDenied {
            path: format!("{}/{path}", self.root),
            source: format!("{REFUSAL} ({}): see --allow-prefix", self.allowed_list()).into(),
        })
    }

    fn allowed_list(&self) -> String {
        match self.allowed.is_empty() {
            true => format!("none under {}", self.root),
            false => self
                .allowed
                .iter()
                .map(|p| format!("{}/{p}", self.root))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// A listing is allowed under an allowed prefix only.
    fn check_prefix(&self, prefix: Option<&Path>) -> object_store::Result<()> {
        self.check(prefix.unwrap_or(&Path::default()))
    }
}

impl fmt::Display for Guarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} limited to {}", self.inner, self.allowed_list())
    }
}

#[async_trait]
impl ObjectStore for Guarded {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.check(location)?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.check(location)?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let guard = Guarded {
            inner: Arc::clone(&self.inner),
            root: self.root.clone(),
            allowed: self.allowed.clone(),
        };
        let checked = locations
            .map(move |path| path.and_then(|p| guard.check(&p).map(|()| p)))
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        match self.check_prefix(prefix) {
            Ok(()) => self.inner.list(prefix),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        match self.check_prefix(prefix) {
            Ok(()) => self.inner.list_with_offset(prefix, offset),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.check_prefix(prefix)?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.check(from)?;
        self.check(to)?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        self.check(from)?;
        self.check(to)?;
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use object_store::local::LocalFileSystem;
    use object_store::ObjectStoreExt;

    use super::*;

    #[tokio::test]
    async fn a_limited_store_opens_its_prefixes_only() {
        let dir = tempfile::tempdir().unwrap();
        let base = Path::from_absolute_path(dir.path()).unwrap();
        let (inside, outside) = (
            base.clone().join("lake").join("a.jpg"),
            base.clone().join("secrets.toml"),
        );
        let local: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new());
        local.put(&outside, PutPayload::from_static(b"key = 1")).await.unwrap();
        let store = limited("file://", local, vec![base.clone().join("lake")]);

        store.put(&inside, PutPayload::from_static(b"x")).await.unwrap();
        assert_eq!(store.get(&inside).await.unwrap().bytes().await.unwrap().as_ref(), b"x");
        let listed: Vec<_> = store.list(Some(&base.clone().join("lake"))).collect().await;
        assert_eq!(listed.len(), 1);

        let refused = store.get(&outside).await.unwrap_err().to_string();
        assert!(
            refused.contains("secrets.toml") && refused.contains("outside the prefixes"),
            "{refused}"
        );
        assert!(store.put(&outside, PutPayload::from_static(b"")).await.is_err());
        assert!(
            store.copy(&inside, &outside).await.is_err(),
            "no copy out of the prefixes"
        );
        assert!(store.delete(&outside).await.is_err());
        // The parent of an allowed prefix, or everything, is not listed.
        for prefix in [Some(&base), None] {
            let first = store.list(prefix).next().await.unwrap();
            assert!(first.unwrap_err().to_string().contains("outside the prefixes"));
        }
        // A prefix is a folder, not the start of a name.
        let sibling = base.clone().join("lake-other").join("b.jpg");
        assert!(store.put(&sibling, PutPayload::from_static(b"")).await.is_err());
    }
}
