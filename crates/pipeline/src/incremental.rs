//! Content-addressed features: which rows of earlier results a featurize
//! job may use again, and reading them back.
//!
//! Every feature (and error) row says what it was made from: the object's
//! `etag` and `size` as listed, the sha256 of the bytes the executor read, and
//! the computation (model sha256, precision, input side, preprocessing
//! version). A job into an output that holds a committed result (or given
//! another result with `--from`) reads those identity columns (a few bytes
//! per row, not the features) and, as it lists, sorts each object into:
//! *unchanged* (a row with the same path, etag and size exists: carried
//! over), *new* or *changed* (featurized). Paths of the last result that are
//! not listed any more are *deleted*: their rows are not carried.
//!
//! Resume is the same mechanism: a job writes each group of tasks as soon as
//! it is done, as complete files in `features/` and `errors/` that no
//! `_SUCCESS` lists yet. When it dies, the next job into that output finds
//! those files (every data file there that the committed `_SUCCESS` does not
//! list) and uses their rows like a committed result's: only what was not
//! finished is featurized again. A file that cannot be read, or was computed
//! otherwise, is simply not used (and removed at the next commit).
//!
//! An error row is carried only when the bytes were read (its `sha256` is
//! set: the image itself is bad, and the same bytes fail the same way); an
//! object that could not be read is tried again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::UInt64Type;
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::file::metadata::KeyValue;
use fruits_backbone::Precision;
use fruits_output::ObjectReader;
use fruits_storage::{ImageEntry, Location, ObjectUri};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};

use crate::Error;

/// How a feature row was computed: rows with equal computations and equal
/// input bytes are equal, bit for bit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Computation {
    pub model_sha256: String,
    pub precision: Precision,
    pub input_size: u32,
    /// [`fruits_preprocess::VERSION`].
    pub preprocess: u32,
}

const MODEL_SHA256: &str = "fruits.model_sha256";
const INPUT_SIZE: &str = "fruits.input_size";
const PRECISION: &str = "fruits.precision";
const PREPROCESS: &str = "fruits.preprocess";

impl Computation {
    /// The Parquet key-value metadata that records it in every data file.
    pub fn metadata(&self, model: &str) -> Vec<KeyValue> {
        vec![
            KeyValue::new("fruits.model".into(), model.to_string()),
            KeyValue::new(MODEL_SHA256.into(), self.model_sha256.clone()),
            KeyValue::new(INPUT_SIZE.into(), self.input_size.to_string()),
            KeyValue::new(PRECISION.into(), self.precision.to_string()),
            KeyValue::new(PREPROCESS.into(), self.preprocess.to_string()),
        ]
    }

    /// Whether a data file's metadata says it was computed this way.
    fn made_it(&self, metadata: Option<&Vec<KeyValue>>) -> bool {
        let value = |key: &str| {
            metadata?
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.clone())
        };
        value(MODEL_SHA256).as_deref() == Some(self.model_sha256.as_str())
            && value(INPUT_SIZE) == Some(self.input_size.to_string())
            && value(PRECISION) == Some(self.precision.to_string())
            && value(PREPROCESS) == Some(self.preprocess.to_string())
    }
}

/// Where a job may find rows made earlier.
#[derive(Debug, Clone, Default)]
pub struct Incremental {
    /// Another committed result to take unchanged rows from; `None`: the
    /// job's own output.
    pub from: Option<String>,
}

/// What happened to each listed object, and to the last result's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    /// Not in the last result: featurized.
    pub new: usize,
    /// In the last result with other bytes (or computed otherwise): featurized.
    pub changed: usize,
    /// In the last result, same bytes and computation: carried over.
    pub unchanged: usize,
    /// Finished by an earlier job that did not commit: carried over.
    pub resumed: usize,
    /// In the last result, not listed any more: dropped.
    pub deleted: usize,
    /// Why nothing of the last result could be used, when nothing could.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recomputed_all: Option<String>,
}

/// A data file whose rows may be used again.
#[derive(Debug, Clone)]
pub struct Source {
    pub uri: ObjectUri,
    pub store: Arc<dyn ObjectStore>,
    /// `features` or `errors`.
    pub dir: &'static str,
    pub rows: usize,
    /// Listed by a committed `_SUCCESS` (else left by a job that died).
    pub committed: bool,
    /// Its rows are in path order.
    pub sorted: bool,
    /// The sha256 of its bytes, when a `_SUCCESS` recorded it.
    pub sha256: Option<String>,
}

/// A row that may be used again: the object it was made from, and where it is.
#[derive(Debug, Clone)]
struct Row {
    etag: Option<String>,
    size: u64,
    source: usize,
}

/// The rows earlier results hold, by path, and what this job keeps of them.
#[derive(Debug, Default)]
pub struct Known {
    pub sources: Vec<Source>,
    rows: HashMap<String, Row>,
    /// Every path of the last committed result, usable or not.
    previous: HashSet<String>,
    /// Listed paths that were in `previous`.
    seen_previous: usize,
    /// Per source, the paths this job carries from it.
    pub keep: Vec<HashSet<String>>,
    pub changes: Changes,
}

/// What the listing does with one object.
pub enum Fate {
    Carry,
    Featurize,
}

impl Known {
    /// The rows of the committed result at `from` (or `out`) and of the
    /// uncommitted files a dead job left in `out`, made by `computation`.
    pub async fn read(
        out: &Location,
        incremental: &Incremental,
        computation: &Computation,
        committed: &CommittedFiles,
    ) -> Result<Self, Error> {
        let mut known = Known::default();
        let previous = match &incremental.from {
            Some(from) => match CommittedFiles::read(&Location::parse(from)?).await? {
                found @ CommittedFiles { files: Some(_) } => found,
                // Asked for by name: a typo must not silently recompute everything.
                CommittedFiles { files: None } => {
                    return Err(Error::NotFeatures(format!(
                        "{from}: no committed result (_SUCCESS) to take rows from"
                    )))
                }
            },
            None => committed.clone(),
        };
        let mut usable = 0;
        // A dead job's rows first: they are newer than the committed ones.
        for (dir, uri) in leftovers(out, committed).await? {
            usable += known.add(out, dir, uri, false, None, computation).await?;
        }
        let Some(previous) = previous.files else {
            known.changes.recomputed_all = Some("no committed result to start from".into());
            known.keep = vec![HashSet::new(); known.sources.len()];
            return Ok(known);
        };
        let from = previous.location;
        let mut from_previous = 0;
        for (dir, uri, sha256) in previous.listed {
            from_previous += known.add(&from, dir, uri, true, sha256, computation).await?;
        }
        usable += from_previous;
        if from_previous == 0 && !known.previous.is_empty() {
            known.changes.recomputed_all = Some(
                "the last result was computed otherwise (model, precision, input size or preprocessing) \
                 or before rows carried their identity"
                    .into(),
            );
        }
        known.keep = vec![HashSet::new(); known.sources.len()];
        tracing::info!(
            usable,
            sources = known.sources.len(),
            "rows of earlier results that may be used again"
        );
        Ok(known)
    }

    /// Reads one file's identity columns; returns how many of its rows may be used.
    async fn add(
        &mut self,
        at: &Location,
        dir: &'static str,
        uri: ObjectUri,
        committed: bool,
        sha256: Option<String>,
        computation: &Computation,
    ) -> Result<usize, Error> {
        let ids = match read_identities(at, &uri, computation).await {
            Ok(ids) => ids,
            // A dead job's file that cannot be read was never finished, and a
            // damaged file of the last result is no reason to stop: neither is
            // used, and their images are featurized again.
            Err(e) if !committed => {
                tracing::warn!("not resuming from {uri}: {e}");
                return Ok(0);
            }
            Err(e) => {
                tracing::warn!("cannot read {uri} of the last result ({e}): its images are featurized again");
                return Ok(0);
            }
        };
        if committed {
            self.previous.extend(ids.paths.iter().cloned());
        }
        if !ids.made_here {
            return Ok(0);
        }
        let source = self.sources.len();
        let mut usable = 0;
        for (k, path) in ids.paths.iter().enumerate() {
            // An error row is used only when the bytes were read: the image is bad.
            if dir == "errors" && ids.sha256[k].is_none() {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = self.rows.entry(path.clone()) {
                slot.insert(Row {
                    etag: ids.etags[k].clone(),
                    size: ids.sizes[k],
                    source,
                });
                usable += 1;
            }
        }
        self.sources.push(Source {
            uri,
            store: Arc::clone(&at.store),
            dir,
            rows: ids.paths.len(),
            committed,
            sorted: ids.paths.windows(2).all(|w| w[0] <= w[1]),
            sha256,
        });
        Ok(usable)
    }

    /// Counts an object listed but refused (too large, or a key that cannot
    /// be read): an error row again, not a deleted one.
    pub fn refused(&mut self, path: &str) {
        self.seen_previous += usize::from(self.previous.contains(path));
    }

    /// Decides what the job does with a listed object, and counts it.
    pub fn fate(&mut self, entry: &ImageEntry) -> Fate {
        let path = entry.uri.to_string();
        let was_there = self.previous.contains(&path);
        self.seen_previous += usize::from(was_there);
        let row = self
            .rows
            .get(&path)
            .filter(|r| r.etag.is_some() && r.etag == entry.etag && r.size == entry.size);
        match row {
            Some(row) => {
                if self.sources[row.source].committed {
                    self.changes.unchanged += 1;
                } else {
                    self.changes.resumed += 1;
                }
                self.keep[row.source].insert(path);
                Fate::Carry
            }
            None if was_there => {
                self.changes.changed += 1;
                Fate::Featurize
            }
            None => {
                self.changes.new += 1;
                Fate::Featurize
            }
        }
    }

    /// Ends the listing: what was in the last result and is not listed any more.
    pub fn finish_listing(&mut self) {
        self.changes.deleted = self.previous.len() - self.seen_previous;
        if self.changes.resumed > 0 {
            self.changes.recomputed_all = None;
        }
    }

    /// Rows carried over.
    pub fn carried(&self) -> usize {
        self.keep.iter().map(HashSet::len).sum()
    }
}

/// The last committed result's data files, with their sha256 where recorded.
#[derive(Debug, Clone, Default)]
pub struct CommittedFiles {
    pub files: Option<Previous>,
}

#[derive(Debug, Clone)]
pub struct Previous {
    pub location: Location,
    pub listed: Vec<(&'static str, ObjectUri, Option<String>)>,
    pub uris: HashSet<String>,
}

impl CommittedFiles {
    /// Reads `_SUCCESS` at `at`; none there is no previous result.
    pub async fn read(at: &Location) -> Result<Self, Error> {
        let summary: serde_json::Value = match fruits_output::read_committed(at).await {
            Ok(s) => s,
            Err(fruits_output::Error::Storage(e)) if e.is_not_found() => return Ok(Self::default()),
            Err(e) => return Err(e.into()),
        };
        let digests: HashMap<String, String> = summary["lineage"]["files"]
            .as_array()
            .map(|files| {
                files
                    .iter()
                    .filter_map(|f| Some((file_name(f["uri"].as_str()?)?, f["sha256"].as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let mut listed = Vec::new();
        let mut uris = HashSet::new();
        for dir in ["features", "errors"] {
            for uri in fruits_output::committed_files(at, dir).await? {
                let sha = file_name(&uri).and_then(|n| digests.get(&n).cloned());
                uris.insert(uri.clone());
                listed.push((dir, ObjectUri::parse(&uri)?, sha));
            }
        }
        Ok(Self {
            files: Some(Previous {
                location: at.clone(),
                listed,
                uris,
            }),
        })
    }
}

/// `dir/name` of a data file's URI: how a file is matched (see
/// `fruits_output::committed_files`).
fn file_name(uri: &str) -> Option<String> {
    let (folder, name) = uri.rsplit_once('/')?;
    Some(format!("{}/{name}", folder.rsplit('/').next()?))
}

/// The data files under `out/features/` and `out/errors/` that the committed
/// result does not list: what a job that died left.
async fn leftovers(out: &Location, committed: &CommittedFiles) -> Result<Vec<(&'static str, ObjectUri)>, Error> {
    let listed = committed.files.as_ref().map(|p| &p.uris);
    let mut found = Vec::new();
    for dir in ["features", "errors"] {
        for uri in fruits_output::list_dir(out, dir).await? {
            let name = uri.to_string();
            if name.ends_with(".parquet") && !listed.is_some_and(|l| l.contains(&name)) {
                found.push((dir, uri));
            }
        }
    }
    found.sort_by_key(|(_, u)| u.to_string());
    Ok(found)
}

/// A data file's identity columns.
struct Identities {
    made_here: bool,
    paths: Vec<String>,
    etags: Vec<Option<String>>,
    sizes: Vec<u64>,
    sha256: Vec<Option<String>>,
}

async fn read_identities(at: &Location, uri: &ObjectUri, computation: &Computation) -> Result<Identities, Error> {
    let builder = ObjectReader::new(Arc::clone(&at.store), uri.path.clone())
        .builder()
        .await?;
    let made_here = computation.made_it(builder.metadata().file_metadata().key_value_metadata());
    let schema = builder.schema().clone();
    let wanted = ["path", "etag", "size", "sha256"];
    let indices: Vec<usize> = wanted.iter().filter_map(|c| schema.index_of(c).ok()).collect();
    let complete = indices.len() == wanted.len();
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
    let batches: Vec<RecordBatch> = builder.with_projection(mask).build()?.try_collect().await?;
    let mut ids = Identities {
        made_here: made_here && complete,
        paths: Vec::new(),
        etags: Vec::new(),
        sizes: Vec::new(),
        sha256: Vec::new(),
    };
    for b in &batches {
        let column = |name: &str| b.column_by_name(name);
        let paths = column("path").map(|c| c.as_string::<i32>().clone());
        ids.paths
            .extend(paths.iter().flat_map(|p| p.iter().map(|s| s.unwrap_or("").to_string())));
        if !complete {
            continue;
        }
        let strings = |name: &str| -> Vec<Option<String>> {
            let c = column(name).expect("projected").as_string::<i32>();
            c.iter().map(|s| s.map(str::to_string)).collect()
        };
        ids.etags.extend(strings("etag"));
        ids.sha256.extend(strings("sha256"));
        let sizes = column("size").expect("projected").as_primitive::<UInt64Type>();
        ids.sizes.extend(sizes.iter().map(|s| s.unwrap_or(u64::MAX)));
    }
    Ok(ids)
}

/// The rows of `source` whose path is in `keep` (all with `None`), batch by batch.
pub fn carried_rows(
    source: &Source,
    keep: Option<Arc<HashSet<String>>>,
) -> futures::stream::BoxStream<'static, Result<RecordBatch, Error>> {
    let reader = ObjectReader::new(Arc::clone(&source.store), source.uri.path.clone());
    futures::stream::once(async move {
        let stream = reader.builder().await?.build()?;
        Ok::<_, Error>(stream.map(move |batch| {
            let batch = batch?;
            let Some(keep) = &keep else { return Ok(batch) };
            let paths: &StringArray = batch
                .column_by_name("path")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .expect("data files have a path column");
            let mask: BooleanArray = paths
                .iter()
                .map(|p| Some(p.is_some_and(|p| keep.contains(p))))
                .collect();
            Ok(filter_record_batch(&batch, &mask)?)
        }))
    })
    .try_flatten()
    .boxed()
}
