//! One job at a time per output: a lease object, `OUTPUT/_LEASE`, created
//! only if absent (`PutMode::Create`: `If-None-Match: *` on S3, a hard link
//! on a local disk), renewed while the job runs, deleted when it ends.
//!
//! A second job that finds a live lease refuses at once, naming the holder.
//! A lease whose holder stopped renewing expires after its time to live; on
//! the holder's own machine, a lease whose process is gone is taken over at
//! once (a killed client need not block its rerun for a minute).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fruits_storage::Location;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use crate::Error;

pub const LEASE: &str = "_LEASE";
/// How long a lease lives without renewal; jobs renew at a third of it.
pub const TTL: Duration = Duration::from_secs(60);

/// What `_LEASE` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub job: String,
    /// `host:pid` of the process that runs the job.
    pub process: String,
    /// Seconds since the Unix epoch.
    pub expires: u64,
}

impl Holder {
    fn seconds_left(&self) -> u64 {
        self.expires.saturating_sub(now())
    }

    /// Expired, or held by a process of this machine that no longer runs.
    fn is_stale(&self) -> bool {
        self.seconds_left() == 0 || process_is_gone(&self.process)
    }
}

/// A lease this process holds on an output.
#[derive(Debug)]
pub struct Lease {
    out: Location,
    holder: Holder,
    ttl: Duration,
    /// The version last written, when the store reports one.
    version: Option<UpdateVersion>,
}

impl Lease {
    /// Takes the lease on `out` for `job`, or says who holds it.
    pub async fn take(out: &Location, job: &str, ttl: Duration) -> Result<Self, Error> {
        let mut lease = Self {
            out: out.clone(),
            holder: Holder {
                job: job.into(),
                process: this_process(),
                expires: 0,
            },
            ttl,
            version: None,
        };
        match lease.put(PutMode::Create).await {
            Ok(()) => return Ok(lease),
            Err(Error::Storage(e)) if e.is_already_exists() => {}
            Err(Error::Storage(e)) if e.is_not_implemented() => {
                tracing::warn!(output = %out.uri(), "this store cannot create an object only if absent: concurrent jobs into this output are not detected");
                return Ok(lease);
            }
            Err(e) => return Err(e),
        }
        let (current, version) = lease.read().await?;
        if !current.is_stale() {
            return Err(busy(out, &current));
        }
        tracing::warn!(output = %out.uri(), job = %current.job, process = %current.process, "taking over a stale lease");
        lease.take_over(version).await?;
        Ok(lease)
    }

    /// Replaces a stale lease: only if it is still the one read (S3), else
    /// by deleting it and creating ours (a local disk has no conditional
    /// replace; the loser of that race gets `Busy`).
    async fn take_over(&mut self, version: UpdateVersion) -> Result<(), Error> {
        match self.put(PutMode::Update(version)).await {
            Err(Error::Storage(e)) if e.is_not_implemented() => {
                let marker = self.out.child(LEASE);
                match self.out.store.delete(&marker.path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(marker.err(e).into()),
                }
                self.put_or_busy(PutMode::Create).await
            }
            Err(Error::Storage(e)) if e.is_precondition() => Err(busy(&self.out, &self.read().await?.0)),
            other => other,
        }
    }

    async fn put_or_busy(&mut self, mode: PutMode) -> Result<(), Error> {
        match self.put(mode).await {
            Err(Error::Storage(e)) if e.is_already_exists() => Err(busy(&self.out, &self.read().await?.0)),
            other => other,
        }
    }

    /// Pushes the expiry a time to live ahead; fails with `LeaseLost` when
    /// another job holds the output now (ours expired meanwhile).
    pub async fn renew(&mut self) -> Result<(), Error> {
        let (current, version) = match self.read().await {
            Ok(read) => read,
            Err(Error::Storage(e)) if e.is_not_found() => return Err(self.lost("the lease was deleted")),
            Err(e) => return Err(e),
        };
        if current.job != self.holder.job {
            return Err(self.lost(&format!("job {} ({}) holds it now", current.job, current.process)));
        }
        match self.put(PutMode::Update(version)).await {
            Err(Error::Storage(e)) if e.is_not_implemented() => self.put(PutMode::Overwrite).await,
            Err(Error::Storage(e)) if e.is_precondition() => Err(self.lost("it changed while being renewed")),
            other => other,
        }
    }

    /// Deletes the lease if it is still ours. Best effort: a lease left
    /// behind expires, so failures are logged, not returned.
    pub async fn release(self) {
        match self.read().await {
            Ok((current, _)) if current.job == self.holder.job => {
                let marker = self.out.child(LEASE);
                if let Err(e) = self.out.store.delete(&marker.path).await {
                    tracing::warn!("cannot release the lease: {}", marker.err(e));
                }
            }
            Ok(_) => tracing::warn!(output = %self.out.uri(), "the lease was taken over before the job ended"),
            Err(e) => tracing::warn!("cannot read the lease to release it: {e}"),
        }
    }

    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    async fn put(&mut self, mode: PutMode) -> Result<(), Error> {
        self.holder.expires = now() + self.ttl.as_secs();
        let marker = self.out.child(LEASE);
        let body = serde_json::to_vec_pretty(&self.holder).expect("a lease serializes");
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let put = self
            .out
            .store
            .put_opts(&marker.path, PutPayload::from(body), opts)
            .await
            .map_err(|e| marker.err(e))?;
        self.version = Some(UpdateVersion {
            e_tag: put.e_tag,
            version: put.version,
        });
        Ok(())
    }

    async fn read(&self) -> Result<(Holder, UpdateVersion), Error> {
        let marker = self.out.child(LEASE);
        let get = self.out.store.get(&marker.path).await.map_err(|e| marker.err(e))?;
        let version = UpdateVersion {
            e_tag: get.meta.e_tag.clone(),
            version: get.meta.version.clone(),
        };
        let bytes = get.bytes().await.map_err(|e| marker.err(e))?;
        let holder = serde_json::from_slice(&bytes).map_err(|e| Error::Summary {
            uri: marker.to_string(),
            cause: e.to_string(),
        })?;
        Ok((holder, version))
    }

    fn lost(&self, why: &str) -> Error {
        Error::LeaseLost {
            output: self.out.uri(),
            job: self.holder.job.clone(),
            why: why.into(),
        }
    }
}

fn busy(out: &Location, holder: &Holder) -> Error {
    Error::Busy {
        output: out.uri(),
        job: holder.job.clone(),
        process: holder.process.clone(),
        seconds_left: holder.seconds_left(),
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// This process as `host:pid`.
pub fn this_process() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "localhost".into());
    format!("{}:{}", host.trim(), std::process::id())
}

/// A `host:pid` of this machine whose process has ended. Another machine's
/// processes cannot be seen: those leases end by expiry only.
fn process_is_gone(process: &str) -> bool {
    let Some((host, pid)) = process.rsplit_once(':') else {
        return false;
    };
    let this = this_process();
    let this_host = this.rsplit_once(':').map_or("", |(h, _)| h);
    host == this_host
        && pid
            .parse::<u32>()
            .is_ok_and(|pid| pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists())
}
