//! A batch job whose output is a Delta table: the table's log is the job's record.
//!
//! - Finished units are committed in groups: every `job_commit_interval` (10 s) or
//!   [`COMMIT_UNITS`] units, whichever comes first, and at the end. A Delta log takes a handful of commits a
//!   second on an object store, so a job spread over many workers makes a few commits per
//!   worker and minute, not one per unit. A crash loses at most the units of the group not
//!   committed yet: their parts are invisible to readers and removed by the next run.
//! - Each commit records, per unit, the application transaction `lakescore-job:<job>:u<unit>`
//!   at the job's generation. A unit the table records already (an earlier run, another
//!   shard, a run that took the lock over) is dropped from the commit and its files
//!   removed, so each row is in the table once whatever crashes; delta-rs's conflict check
//!   refuses a commit racing another that records the same unit, and the group is tried
//!   again without it. Units commit out of order across workers: an app id per unit, rather
//!   than one per job with the unit as its version, is what lets the table tell which units
//!   it has.
//! - The job ends with a commit of no files that records `lakescore-job:<job>` at the
//!   generation, and the job's summary (its manifest, less the file list the log has).
//! - A job that fails over its thresholds or is cancelled removes the units it committed in
//!   one commit and moves the job to its next generation (`lakescore-job:<job>:generation`),
//!   so that a later run of the same id scores every unit again.
//! - Every commit carries the run's lock epoch (`lakescore-job:<job>:lock`, one per shard),
//!   and a run's first commit is that epoch alone, made before it reads the table or
//!   removes anything: from then on the run it took over from can commit nothing. Every
//!   commit checks the job's generation too: a run or shard still at a removed generation
//!   commits nothing.

use std::collections::HashSet;

use deltalake_core::kernel::Transaction;
use futures::TryStreamExt;
use serde_json::Value;

use lakescore_engine::error::{Result, ScoreError};

use crate::delta::{self, Outcome, TableCommit, TableVersion, TxnWatch};
use crate::manifest::{Manifest, UnitRecord, WrittenFile};
use crate::sink::remove_files;
use crate::storage::Location;

/// Units committed together at most.
pub(super) const COMMIT_UNITS: usize = 256;

/// The app id of the job's end.
pub(super) fn job_app(job_id: &str) -> String {
    format!("lakescore-job:{job_id}")
}

fn unit_app(job_id: &str, unit: usize) -> String {
    format!("lakescore-job:{job_id}:u{unit}")
}

fn generation_app(job_id: &str) -> String {
    format!("lakescore-job:{job_id}:generation")
}

/// The app id of a run's lock epoch: one per shard, as the leases are.
pub(super) fn lock_app(job_id: &str, shard: Option<(usize, usize)>) -> String {
    match shard {
        Some((i, n)) => format!("lakescore-job:{job_id}:lock-{i}-of-{n}"),
        None => format!("lakescore-job:{job_id}:lock"),
    }
}

/// The first commit of a run: its lock epoch, and no files (the table created with
/// `schema` when there is none). Refused when a later run holds the job.
pub(super) async fn fence(
    out: &Location,
    schema: &arrow::datatypes::SchemaRef,
    lineage: &serde_json::Map<String, Value>,
    job_id: &str,
    lock: &str,
    epoch: i64,
) -> Result<()> {
    let mut lineage = lineage.clone();
    lineage.insert("lock".into(), serde_json::json!({"app_id": lock, "epoch": epoch}));
    let spec = TableCommit { lineage, fence: Some(Transaction::new(lock, epoch)), ..Default::default() };
    let version = match delta::commit_files(out, schema, &[], &spec, None).await? {
        Outcome::Version(v) => Some(v),
        Outcome::AlreadyCommitted(_) => None,
    };
    tracing::info!(job_id, lock, epoch, ?version, "the run's lock epoch is in the table");
    Ok(())
}

/// What a run of a job knows of its table: the generation, and what the table has of it.
#[derive(Debug, Default)]
pub(super) struct TableJob {
    /// The job's generation (1, and one more after each removal).
    pub generation: i64,
    /// The job's summary when it is complete at this generation.
    pub done: Option<Manifest>,
    /// The units committed at this generation, by unit number.
    pub units: Vec<UnitRecord>,
    /// The application transactions of the table as read, for the commits to come.
    pub watch: TxnWatch,
}

/// The job as the table at `out` records it (nothing when there is no table yet).
pub(super) async fn read(out: &Location, job_id: &str) -> Result<TableJob> {
    let Some(table) = delta::open(out, &TableVersion::Latest).await? else {
        return Ok(TableJob { generation: 1, ..Default::default() });
    };
    let read_version = table.version().map(|v| v as i64);
    let state = table.snapshot().map_err(|e| delta::delta_error(e, &out.url))?;
    let log = table.log_store();
    let version_of = |app: String| {
        let (state, log) = (state, log.clone());
        async move { state.transaction_version(log.as_ref(), app).await.map_err(|e| delta::delta_error(e, &out.url)) }
    };
    let generation = version_of(generation_app(job_id)).await?.unwrap_or(1);
    let complete = version_of(job_app(job_id)).await?.is_some_and(|g| g >= generation);
    let watch = TxnWatch { scanned: None, seen: Default::default() };
    let mut job = TableJob { generation, done: None, units: Vec::new(), watch };
    let commits: Vec<_> = table.history(None).try_collect().await.map_err(|e| delta::delta_error(e, &out.url))?;
    for commit in commits {
        let Some(lineage) = commit.info.get("lakescore") else { continue };
        if lineage["job_id"].as_str() != Some(job_id) || lineage["generation"].as_i64() != Some(generation) {
            continue;
        }
        if complete && job.done.is_none() {
            if let Some(manifest) = lineage.get("job").and_then(|m| serde_json::from_value(m.clone()).ok()) {
                job.done = Some(manifest);
            }
        }
        let files = files_of(out, lineage);
        let units = lineage.get("units").and_then(Value::as_array).cloned().unwrap_or_default();
        for unit in units {
            let Ok(mut record) = serde_json::from_value::<UnitRecord>(unit) else { continue };
            let prefix = format!("part-{job_id}-u{:05}-", record.unit);
            record.files = files.iter().filter(|f| f.path.starts_with(&prefix)).cloned().collect();
            job.units.push(record);
        }
    }
    job.units.sort_by_key(|r| r.unit);
    job.units.dedup_by_key(|r| r.unit);
    // The commits read: the units they record are known; later commits are read by the
    // watch as the run commits.
    for r in &job.units {
        job.watch.seen.insert(unit_app(job_id, r.unit), generation);
    }
    job.watch.scanned = read_version;
    Ok(job)
}

/// The files a commit's lineage lists (the sink records them).
fn files_of(out: &Location, lineage: &Value) -> Vec<WrittenFile> {
    let listed: Vec<WrittenFile> = lineage
        .get("files")
        .and_then(|f| serde_json::from_value::<Vec<WrittenFile>>(f.clone()).ok())
        .unwrap_or_default();
    listed
        .into_iter()
        .map(|mut f| {
            f.url = out.url_of(&object_store::path::Path::from_iter(
                out.path.parts().chain(std::iter::once(f.path.as_str().into())),
            ));
            f
        })
        .collect()
}

/// What one run of a job commits with.
#[derive(Debug, Clone, Copy)]
pub(super) struct Committer<'a> {
    pub out: &'a Location,
    pub schema: &'a arrow::datatypes::SchemaRef,
    pub lineage: &'a serde_json::Map<String, Value>,
    pub job_id: &'a str,
    pub generation: i64,
    /// The app id of the run's lock ([`lock_app`]) and its epoch.
    pub lock: &'a str,
    pub epoch: i64,
}

impl Committer<'_> {
    /// Commit `units` (finished, with their files) in one commit; those the table records
    /// already are left out and their files removed. Answers the units this commit added.
    pub(super) async fn commit_units(&self, units: Vec<UnitRecord>, watch: &mut TxnWatch) -> Result<Vec<usize>> {
        let mut units = units;
        let mut attempts = 0;
        while !units.is_empty() {
            attempts += 1;
            let mut lineage = self.lineage.clone();
            lineage.insert("generation".into(), self.generation.into());
            let listed: Vec<Value> = units
                .iter()
                .map(|r| {
                    let mut unit = serde_json::to_value(r).unwrap_or_default();
                    if let Some(fields) = unit.as_object_mut() {
                        // The files are the commit's own (listed once, under `files`).
                        fields.remove("files");
                    }
                    unit
                })
                .collect();
            lineage.insert("units".into(), listed.into());
            let files: Vec<WrittenFile> = units.iter().flat_map(|r| r.files.iter().cloned()).collect();
            lineage.insert("files".into(), serde_json::to_value(&files).map_err(ScoreError::internal)?);
            let spec = TableCommit {
                lineage,
                txns: units.iter().map(|r| Transaction::new(unit_app(self.job_id, r.unit), self.generation)).collect(),
                fence: Some(Transaction::new(self.lock, self.epoch)),
                guards: vec![self.generation_guard()],
                ..Default::default()
            };
            match delta::commit_files(self.out, self.schema, &files, &spec, Some(watch)).await {
                Ok(Outcome::Version(version)) => {
                    tracing::info!(job_id = self.job_id, version, units = units.len(), "units committed");
                    for r in &units {
                        watch.seen.insert(unit_app(self.job_id, r.unit), self.generation);
                    }
                    return Ok(units.iter().map(|r| r.unit).collect());
                }
                Ok(Outcome::AlreadyCommitted(apps)) => {
                    let apps: HashSet<String> = apps.into_iter().collect();
                    let (done, rest): (Vec<UnitRecord>, Vec<UnitRecord>) =
                        units.into_iter().partition(|r| apps.contains(&unit_app(self.job_id, r.unit)));
                    for r in &done {
                        tracing::warn!(
                            job_id = self.job_id,
                            unit = r.unit,
                            "unit found committed already; its files here removed"
                        );
                        remove_files(self.out, &r.files).await;
                    }
                    units = rest;
                }
                // A concurrent commit of one of these units: read what it recorded, and again.
                Err(ScoreError::Unavailable(why)) if attempts < 5 => {
                    tracing::warn!(job_id = self.job_id, error = %why, "units' commit lost a race; trying again");
                    tokio::time::sleep(std::time::Duration::from_millis(50 << attempts)).await;
                }
                Err(e) => {
                    // Unless the commit landed after all (its answer lost on the way).
                    if !delta::references_any(self.out, &files).await {
                        for r in &units {
                            remove_files(self.out, &r.files).await;
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(Vec::new())
    }

    /// The job's last commit: no files, the job's end recorded and its summary.
    pub(super) async fn commit_end(&self, manifest: &Manifest, watch: &mut TxnWatch) -> Result<Option<i64>> {
        let mut lineage = self.lineage.clone();
        lineage.insert("generation".into(), self.generation.into());
        let mut summary = manifest.clone();
        summary.files.clear();
        summary.inputs.clear();
        lineage.insert("job".into(), serde_json::to_value(&summary).map_err(ScoreError::internal)?);
        let spec = TableCommit {
            lineage,
            txns: vec![Transaction::new(job_app(self.job_id), self.generation)],
            fence: Some(Transaction::new(self.lock, self.epoch)),
            guards: vec![self.generation_guard()],
            ..Default::default()
        };
        match delta::commit_files(self.out, self.schema, &[], &spec, Some(watch)).await? {
            Outcome::Version(v) => Ok(Some(v)),
            Outcome::AlreadyCommitted(_) => Ok(None),
        }
    }

    /// Remove what the job committed at its generation (`files`) and move it to the next
    /// generation.
    pub(super) async fn remove(&self, files: &[WrittenFile]) -> Result<()> {
        let mut lineage = self.lineage.clone();
        lineage.insert("generation".into(), self.generation.into());
        lineage.insert("removed".into(), "the job failed or was cancelled: its rows were taken out".into());
        let txns = vec![
            Transaction::new(generation_app(self.job_id), self.generation + 1),
            Transaction::new(self.lock, self.epoch),
        ];
        delta::remove_files(self.out, files, lineage, txns, &Transaction::new(self.lock, self.epoch)).await.map(|_| ())
    }

    /// The job's generation, which a commit checks the table has not moved past.
    fn generation_guard(&self) -> Transaction {
        Transaction::new(generation_app(self.job_id), self.generation)
    }
}
