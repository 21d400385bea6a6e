//! Listing a prefix page by page where one bad key must not end the listing.
//!
//! S3 allows keys that `object_store` cannot represent as a path (`a//b.jpg`,
//! a `.` or `..` segment); its listing then fails the whole page of up to
//! 1,000 keys, and the page's continuation token with it. Here a failed page
//! is asked for again in halves, from after the last key listed, down to the
//! one bad key; that key becomes an [`Error::Unlisted`] item (when its name
//! is an image's), and the listing goes on after it with full pages again.
//! Cost: at most about twenty small requests per bad key.

use std::sync::Arc;

use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::ObjectMeta;
use tokio::sync::mpsc::Sender;

use crate::{is_image_name, Error};

/// Keys per request, as S3 lists at most.
const PAGE: usize = 1000;

/// Sends every object under `prefix` to `tx`, and one `Err` per bad key; a
/// failure of the store itself is sent last.
pub async fn list(
    store: Arc<dyn PaginatedListStore>,
    root: String,
    prefix: Path,
    tx: Sender<Result<ObjectMeta, Error>>,
) {
    let prefix = match prefix.as_ref() {
        "" => None,
        p => Some(format!("{p}/")),
    };
    let mut after: Option<String> = None;
    let mut token: Option<String> = None;
    let mut page = PAGE;
    loop {
        let opts = PaginatedListOptions {
            // S3 ignores start-after once it follows a continuation token.
            offset: token.is_none().then(|| after.clone()).flatten(),
            page_token: token.clone(),
            max_keys: Some(page),
            ..PaginatedListOptions::default()
        };
        match store.list_paginated(prefix.as_deref(), opts).await {
            Ok(listed) => {
                for meta in listed.result.objects {
                    after = Some(meta.location.to_string());
                    if tx.send(Ok(meta)).await.is_err() {
                        return;
                    }
                }
                match listed.page_token {
                    Some(next) => token = Some(next),
                    None => return,
                }
            }
            Err(object_store::Error::InvalidPath { source }) if page > 1 => {
                tracing::debug!("a listing page holds a bad key ({source}): listing it in halves");
                (page, token) = (page / 2, None);
            }
            Err(object_store::Error::InvalidPath { source }) => {
                let Some(key) = bad_key(&source) else {
                    let _ = tx
                        .send(Err(store_error(&root, object_store::Error::InvalidPath { source })))
                        .await;
                    return;
                };
                if is_image_name(key.rsplit('/').next().unwrap_or("")) {
                    let reason = format!("a key object_store cannot use as a path ({source}): not read");
                    let uri = format!("{root}/{key}");
                    if tx.send(Err(Error::Unlisted { uri, reason })).await.is_err() {
                        return;
                    }
                }
                (after, token, page) = (Some(key), None, PAGE);
            }
            Err(e) => {
                let _ = tx.send(Err(store_error(&root, e))).await;
                return;
            }
        }
    }
}

/// The key a path error is about.
fn bad_key(e: &object_store::path::Error) -> Option<String> {
    match e {
        object_store::path::Error::EmptySegment { path } | object_store::path::Error::BadSegment { path, .. } => {
            Some(path.clone())
        }
        _ => None,
    }
}

fn store_error(root: &str, cause: object_store::Error) -> Error {
    Error::Store {
        uri: root.to_string(),
        cause,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use object_store::list::PaginatedListResult;
    use object_store::ListResult;

    use super::*;

    /// S3's paging as the S3 client sees it: sorted keys, `max-keys`,
    /// `start-after`, continuation tokens, and a whole page refused when one
    /// of its keys is not a valid path (S3 itself is the moto test's).
    struct S3Pages {
        keys: Vec<String>,
        requests: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl PaginatedListStore for S3Pages {
        async fn list_paginated(
            &self,
            prefix: Option<&str>,
            opts: PaginatedListOptions,
        ) -> object_store::Result<PaginatedListResult> {
            self.requests.fetch_add(1, Ordering::Relaxed);
            let keys: Vec<&String> = self
                .keys
                .iter()
                .filter(|k| k.starts_with(prefix.unwrap_or("")))
                .collect();
            let start = match (&opts.page_token, &opts.offset) {
                (Some(token), _) => token.parse().unwrap(),
                (None, Some(after)) => keys.iter().position(|k| *k > after).unwrap_or(keys.len()),
                (None, None) => 0,
            };
            let end = (start + opts.max_keys.unwrap_or(PAGE)).min(keys.len());
            let objects = keys[start..end]
                .iter()
                .map(|k| {
                    Ok(ObjectMeta {
                        location: Path::parse(k.as_str())?,
                        last_modified: Default::default(),
                        size: 1,
                        e_tag: None,
                        version: None,
                    })
                })
                .collect::<object_store::Result<_>>()?;
            Ok(PaginatedListResult {
                result: ListResult {
                    common_prefixes: Vec::new(),
                    objects,
                },
                page_token: (end < keys.len()).then(|| end.to_string()),
            })
        }
    }

    #[tokio::test]
    async fn bad_keys_among_thousands_are_errors_and_every_other_key_is_listed_once() {
        let mut keys: Vec<String> = (0..2500).map(|i| format!("lake/c{}/{i:05}.jpg", i % 3)).collect();
        keys.extend(["lake/c1//double.jpg", "lake/c2/../up.jpg", "lake/c2/./notes.txt"].map(String::from));
        keys.push("elsewhere/x.jpg".into());
        keys.sort();
        let store = Arc::new(S3Pages {
            keys,
            requests: AtomicUsize::new(0),
        });
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let task = tokio::spawn(list(store.clone(), "s3://b".into(), Path::from("lake"), tx));
        let (mut listed, mut errors) = (Vec::new(), Vec::new());
        while let Some(item) = rx.recv().await {
            match item {
                Ok(meta) => listed.push(meta.location.to_string()),
                Err(e) => errors.push(e.to_string()),
            }
        }
        task.await.unwrap();
        let mut unique = listed.clone();
        unique.sort();
        unique.dedup();
        assert_eq!((listed.len(), unique.len()), (2500, 2500), "every good key once");
        assert_eq!(
            errors.len(),
            2,
            "the two bad image keys; the bad text file is not an image: {errors:?}"
        );
        assert!(
            errors[0].starts_with("s3://b/lake/c1//double.jpg: a key object_store cannot use"),
            "{errors:?}"
        );
        assert!(errors[1].starts_with("s3://b/lake/c2/../up.jpg"), "{errors:?}");
        // 3 full pages, and at most 2 × log2(1000) more per bad key (the
        // text file's too): far from one request per key.
        let requests = store.requests.load(Ordering::Relaxed);
        assert!(requests <= 4 + 3 * 2 * 10, "{requests} requests");
    }
}
