//! The store stage: how a job writes its results to object storage, and the
//! commit rule that makes a result all-or-nothing.
//!
//! Layout: `OUTPUT/features/*.parquet`, `OUTPUT/errors/*.parquet`, `OUTPUT/_SUCCESS`,
//! and `OUTPUT/_LEASE` while a job runs.
//!
//! Rule: a result is complete if and only if `_SUCCESS` exists, and then it is
//! exactly the files `_SUCCESS` lists: readers read those ([`committed_files`]),
//! never a whole folder. A job (1) takes the output's [`Lease`], so that no
//! other job writes there meanwhile, (2) writes its data files under names
//! that carry its job id, beside the last result's, (3) replaces `_SUCCESS`
//! in one put, (4) deletes the files the new `_SUCCESS` does not list, (5)
//! releases the lease. Until (3), readers see the last result, whole; a
//! crash at any step leaves either the last result or the new one committed,
//! plus unlisted files the next run deletes.
//!
//! `_SUCCESS` holds the job's typed summary as JSON: [`commit`] writes it and
//! [`read_committed`] reads it back into the same type.
//!
//! Must not depend on an engine: it writes Arrow batches it is given (Arrow
//! and Parquet come through `datafusion`'s re-exports only, so the tree holds
//! one version of each), through `object_store`.

mod lease;
mod parts;
mod read;

pub use lease::{this_process, Holder, Lease, LEASE, TTL};
pub use parts::{DataFile, Dataset, PartWriter, WRITE_CHUNK};
pub use read::ObjectReader;

use std::sync::Arc;

use fruits_storage::{Location, ObjectUri};
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] fruits_storage::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// `_SUCCESS` is there but does not hold what the reader expects.
    #[error("{uri} is not the summary expected here: {cause}")]
    Summary { uri: String, cause: String },
    /// Another job holds the output's lease.
    #[error(
        "{output} is in use by job {job} ({process}), whose lease runs {seconds_left} s more and is renewed while it runs: \
         two jobs into one output would delete each other's files, so this one stops; wait for that job to end or write elsewhere"
    )]
    Busy {
        output: String,
        job: String,
        process: String,
        seconds_left: u64,
    },
    /// This job's lease ran out and it cannot be sure the output is its own.
    #[error("job {job} lost its lease on {output} ({why}): nothing more is written, the result is not committed")]
    LeaseLost { output: String, job: String, why: String },
}

pub const SUCCESS: &str = "_SUCCESS";
/// Rows per data file before a new one is started.
pub const ROWS_PER_FILE: usize = 50_000;

/// Every object under `out/dir`, committed or not.
pub async fn list_dir(out: &Location, dir: &str) -> Result<Vec<ObjectUri>, Error> {
    let folder = out.child(dir);
    let listed: Vec<_> = out
        .store
        .list(Some(&folder.path))
        .try_collect()
        .await
        .map_err(|e| folder.err(e))?;
    Ok(listed
        .into_iter()
        .map(|meta| ObjectUri {
            root: out.root.clone(),
            path: meta.location,
        })
        .collect())
}

/// Deletes every object under `out/dir` whose URI is not in `keep`.
pub async fn remove_stale(out: &Location, dir: &str, keep: &[String]) -> Result<usize, Error> {
    let mut removed = 0;
    for uri in list_dir(out, dir).await? {
        if !keep.contains(&uri.to_string()) {
            out.store.delete(&uri.path).await.map_err(|e| uri.err(e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Writes `_SUCCESS` (the job's summary as JSON) in one put: the act that
/// switches readers from the last result to this one.
pub async fn commit<S: Serialize>(out: &Location, summary: &S) -> Result<(), Error> {
    let marker = out.child(SUCCESS);
    let json = serde_json::to_vec_pretty(summary).expect("a summary serializes");
    put(&out.store, &marker, json).await
}

/// Reads the summary a committed job left in `_SUCCESS`; no `_SUCCESS` is a
/// storage error (not found): the folder is not a complete result.
pub async fn read_committed<S: DeserializeOwned>(out: &Location) -> Result<S, Error> {
    let marker = out.child(SUCCESS);
    let get = out.store.get(&marker.path).await.map_err(|e| marker.err(e))?;
    let bytes = get.bytes().await.map_err(|e| marker.err(e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Summary {
        uri: marker.to_string(),
        cause: e.to_string(),
    })
}

/// The files of `out/dir/` that `out/_SUCCESS` lists, as URIs under `out`:
/// what a reader reads. A file is matched by its folder and name, so a
/// committed output that was copied or moved elsewhere still reads whole.
pub async fn committed_files(out: &Location, dir: &str) -> Result<Vec<String>, Error> {
    let summary: serde_json::Value = read_committed(out).await?;
    let mut listed = Vec::new();
    collect_strings(&summary["files"], &mut listed);
    let marker = out.child(SUCCESS).to_string();
    if summary.get("files").is_none() {
        return Err(Error::Summary {
            uri: marker,
            cause: "it lists no files".into(),
        });
    }
    Ok(listed
        .into_iter()
        .filter_map(|uri| {
            let (folder, name) = uri.rsplit_once('/')?;
            let parent = folder.rsplit('/').next()?;
            (parent == dir && !name.is_empty()).then(|| out.child(&format!("{dir}/{name}")).to_string())
        })
        .collect())
}

fn collect_strings(value: &serde_json::Value, into: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => into.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_strings(v, into)),
        serde_json::Value::Object(map) => map.values().for_each(|v| collect_strings(v, into)),
        _ => {}
    }
}

/// Puts small bytes at `uri` (manifests, markers).
pub async fn put(store: &Arc<dyn ObjectStore>, uri: &ObjectUri, bytes: Vec<u8>) -> Result<(), Error> {
    store
        .put(&uri.path, PutPayload::from(bytes))
        .await
        .map_err(|e| uri.err(e))?;
    Ok(())
}

/// Deletes every object under `prefix`. Best effort: scratch left behind is
/// harmless, so failures are logged, not returned.
pub async fn remove_prefix(out: &Location, prefix: &ObjectUri) {
    let listed: Vec<_> = match out.store.list(Some(&prefix.path)).try_collect().await {
        Ok(l) => l,
        // Said in plain words, secrets redacted, like every storage error.
        Err(e) => return tracing::warn!("cannot list for cleanup: {}", prefix.err(e)),
    };
    for meta in listed {
        if let Err(e) = out.store.delete(&meta.location).await {
            let uri = ObjectUri {
                root: out.root.clone(),
                path: meta.location.clone(),
            };
            tracing::warn!("cannot delete for cleanup: {}", uri.err(e));
        }
    }
}

#[cfg(test)]
mod tests;
