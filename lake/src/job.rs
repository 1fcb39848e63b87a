//! Batch jobs: `score-dataset` with [`BatchSettings`], as Azure ML batch endpoints run them
//! and a little past them.
//!
//! - The input is split into units (a file, or `mini_batch_size` row groups of one), scored
//!   `max_concurrency` at a time; a unit that fails with a transient error is retried up to
//!   `max_retries` times, each attempt bounded by `timeout_secs`.
//! - A row the model cannot score (a null feature, a string that does not parse, an engine
//!   error on that row) does not fail its batch: the batch is bisected until the bad rows
//!   are alone, and they are written whole, with an error code and message, under
//!   `<output>/_errors/`. `error_threshold_rows` / `error_threshold_units` decide when the job
//!   as a whole fails. A clean batch costs nothing extra: isolation only starts on an error.
//! - The model reference is resolved once, when the job first starts, and pinned in the
//!   job's record: every unit, retries and resumed runs included, scores with that version.
//! - Each finished unit commits a marker (`_lakescore_jobs/<job>/units/<n>.json`) after its
//!   parts. A run with the same `job_id` skips committed units; the manifest is written once,
//!   last, listing every part. A lock with a heartbeat refuses a second run of a job while one
//!   is alive; a crashed run's lock goes stale and the next run takes over.
//! - Lineage: every part carries the model, version, sha256, job id and input in its Parquet
//!   footer; the manifest maps each input unit to its parts and row counts.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use futures::StreamExt;
use lakescore_proto::{BatchSettings, OutputAction, ScoreCommand};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use lakescore_core::reference::ModelRef;
use lakescore_core::retry::RetryPolicy;
use lakescore_engine::error::{Result, ScoreError};
use lakescore_engine::mapping::ScorePlan;
use lakescore_engine::scorer::{score_chunk, ResolvedModel};
use lakescore_engine::source::Credentials;
use tracing::Instrument;

use crate::lake::{Input, InputFile, Lake, OutputFormat};
use crate::manifest::{Manifest, ManifestModel, UnitCounts, UnitRecord, WrittenFile, FORMAT_JOB, MANIFEST_NAME};
use crate::sink::{Commit, OutputSink};
use crate::storage::Location;

/// How long a job's lock lives without a heartbeat before another run may take it over.
const LOCK_STALE_AFTER: Duration = Duration::from_secs(60);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(15);

/// How long a finished job's outcome stays available to `PollFlightInfo`.
const FINISHED_KEPT: Duration = Duration::from_secs(600);

/// A batch job running on this worker: its progress, a way to stop it, and, once it has
/// finished, how it ended (kept for a while for pollers).
#[derive(Debug, Default)]
pub struct RunningJob {
    cancel: tokio_util::sync::CancellationToken,
    units_total: std::sync::atomic::AtomicU64,
    units_done: std::sync::atomic::AtomicU64,
    rows: std::sync::atomic::AtomicU64,
    outcome: std::sync::Mutex<Option<(std::time::Instant, Result<JobSummary>)>>,
    finished: tokio::sync::Notify,
}

impl RunningJob {
    fn finish(&self, result: Result<JobSummary>) {
        if let Ok(mut outcome) = self.outcome.lock() {
            *outcome = Some((std::time::Instant::now(), result));
        }
        self.finished.notify_waiters();
    }

    /// Units finished (committed earlier included) over all units, once they are known.
    pub fn progress(&self) -> Option<f64> {
        use std::sync::atomic::Ordering::Relaxed;
        let total = self.units_total.load(Relaxed);
        (total > 0).then(|| self.units_done.load(Relaxed) as f64 / total as f64)
    }

    /// Rows scored so far by this run.
    pub fn rows(&self) -> u64 {
        self.rows.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How the job ended; `None` while it runs.
    pub fn outcome(&self) -> Option<Result<JobSummary>> {
        self.outcome.lock().ok().and_then(|o| o.as_ref().map(|(_, r)| r.clone()))
    }

    /// Waits for the end of the job.
    pub async fn wait(&self) -> Result<JobSummary> {
        loop {
            let notified = self.finished.notified();
            if let Some(outcome) = self.outcome() {
                return outcome;
            }
            notified.await;
        }
    }

    /// Asks the job to stop: it removes what it wrote and ends with `CANCELLED`.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }
}

/// The batch jobs of a worker, by output and job id.
#[derive(Debug, Default)]
struct RunningJobs(std::sync::Mutex<std::collections::HashMap<String, Arc<RunningJob>>>);

/// Runs batch jobs on this worker, and keeps the ones running (and finished a short while
/// ago) for polling and cancelling. Owned by the service; the [`Lake`] it scores with does
/// not know jobs exist.
#[derive(Debug)]
pub struct JobManager {
    lake: Arc<Lake>,
    running: RunningJobs,
}

/// A run of a job on this worker: its output, its id and, for a shard, which.
fn job_key(cmd: &ScoreCommand) -> String {
    let shard = cmd.batch.as_ref().filter(|b| b.shard_count > 0).map(|b| (b.shard_index, b.shard_count));
    format!("{}#{}#{shard:?}", cmd.output, cmd.job_id)
}

/// [`BatchSettings`] with their defaults applied.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// Row groups per unit; 0: a file per unit.
    pub mini_batch_size: usize,
    /// Attempts after the first for a unit failing with a transient error.
    pub max_retries: u32,
    /// Longest one attempt of a unit may take.
    pub timeout: Duration,
    /// Units scored at once.
    pub max_concurrency: usize,
    /// Rows in error tolerated; -1: any.
    pub error_threshold_rows: i64,
    /// Failed units tolerated; -1: any.
    pub error_threshold_units: i64,
    /// Write the manifest (counts) only, no scored rows.
    pub summary_only: bool,
    /// `(index, count)`: this run scores only its shard of the units and commits no manifest.
    pub shard: Option<(usize, usize)>,
}

impl JobSettings {
    /// The output action's name, as summaries and manifests give it.
    fn output_action(&self) -> &'static str {
        if self.summary_only {
            "summary_only"
        } else {
            "append_row"
        }
    }

    /// The settings a command asks for, checked, with defaults for what it leaves out.
    pub fn from_proto(b: &BatchSettings) -> Result<Self> {
        let timeout = match b.timeout_secs {
            0.0 => 300.0,
            t if t.is_finite() && t > 0.0 => t,
            t => return Err(ScoreError::InvalidArgument(format!("batch.timeout_secs must be positive, not {t}"))),
        };
        for (name, v) in
            [("error_threshold_rows", b.error_threshold_rows), ("error_threshold_units", b.error_threshold_units)]
        {
            if v.is_some_and(|v| v < -1) {
                return Err(ScoreError::InvalidArgument(format!("batch.{name} must be -1 (any) or at least 0")));
            }
        }
        Ok(Self {
            mini_batch_size: b.mini_batch_size as usize,
            max_retries: b.max_retries.unwrap_or(3),
            timeout: Duration::from_secs_f64(timeout),
            max_concurrency: (b.max_concurrency as usize).clamp(1, 64),
            error_threshold_rows: b.error_threshold_rows.unwrap_or(-1),
            error_threshold_units: b.error_threshold_units.unwrap_or(0),
            summary_only: b.output_action() == OutputAction::SummaryOnly,
            shard: match (b.shard_index, b.shard_count) {
                (_, 0) => None,
                (i, n) if i < n => Some((i as usize, n as usize)),
                (i, n) => {
                    return Err(ScoreError::InvalidArgument(format!(
                        "batch.shard_index {i} is not below batch.shard_count {n}"
                    )))
                }
            },
        })
    }
}

/// One unit of work: a file, or some of its row groups.
#[derive(Debug, Clone)]
struct Unit {
    index: usize,
    file: InputFile,
    row_groups: Option<Vec<usize>>,
}

/// The pinned model of a job (`_lakescore_jobs/<job>/job.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobRecord {
    reference: String,
    name: String,
    version: i64,
    sha256: String,
    /// A Delta input's version, read by every run and shard of the job: units are indexes
    /// into its files, which another version would number otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input_version: Option<i64>,
}

/// `cmd` reading the input version `record` pinned, unless the command picks one itself.
fn pinned_input(cmd: &ScoreCommand, record: &JobRecord) -> Option<ScoreCommand> {
    match record.input_version {
        Some(v) if cmd.input_version.is_none() && cmd.input_timestamp.is_empty() => {
            Some(ScoreCommand { input_version: Some(v), ..cmd.clone() })
        }
        _ => None,
    }
}

/// What a batch job answers and records in its manifest.
#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    /// The job id.
    pub job_id: String,
    /// URL of the manifest (empty for a Delta table).
    pub manifest: String,
    /// A Delta table output: its URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// The table version that ended the job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_version: Option<i64>,
    /// Model name.
    pub model: String,
    /// The version every unit scored with.
    pub version: i64,
    /// Its artifact's sha256.
    pub sha256: String,
    /// Rows scored.
    pub rows: u64,
    /// Rows set aside under `_errors/`.
    pub error_rows: u64,
    /// Units of work.
    pub units: u64,
    /// Units that failed every attempt.
    pub failed_units: u64,
    /// Units that needed more than one attempt.
    pub retried_units: u64,
    /// Units found committed by an earlier run of the same job.
    pub resumed_units: u64,
    /// URLs of the data files.
    pub files: Vec<String>,
    /// Bytes of data files.
    pub bytes: u64,
    /// `append_row` or `summary_only`.
    pub output_action: &'static str,
}

/// Unit counts of a run that its records alone do not give.
struct Totals {
    units: u64,
    failed_units: u64,
    resumed_units: u64,
}

impl JobSummary {
    /// The summary of `records` (a shard's, or the whole job's).
    fn of(
        job_id: &str,
        pinned: &JobRecord,
        records: &[&UnitRecord],
        totals: Totals,
        settings: &JobSettings,
        manifest: String,
    ) -> Self {
        let files: Vec<&WrittenFile> = records.iter().flat_map(|r| r.files.iter()).collect();
        JobSummary {
            job_id: job_id.to_string(),
            manifest,
            table: None,
            table_version: None,
            model: pinned.name.clone(),
            version: pinned.version,
            sha256: pinned.sha256.clone(),
            rows: records.iter().map(|r| r.rows).sum(),
            error_rows: records.iter().map(|r| r.error_rows).sum(),
            units: totals.units,
            failed_units: totals.failed_units,
            retried_units: records.iter().filter(|r| r.attempts > 1).count() as u64,
            resumed_units: totals.resumed_units,
            files: files.iter().map(|f| f.url.clone()).collect(),
            bytes: files.iter().map(|f| f.bytes).sum(),
            output_action: settings.output_action(),
        }
    }
}

async fn read_json<T: for<'de> Deserialize<'de>>(loc: &Location, rel: &str) -> Result<Option<T>> {
    match loc.store.get(&loc.child(rel)).await {
        Ok(got) => {
            let bytes = got.bytes().await.map_err(|e| ScoreError::from_store(e, format!("reading {rel}")))?;
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ScoreError::DataLoss(format!("{} is not valid: {e}", loc.url_of(&loc.child(rel)))))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(ScoreError::from_store(e, format!("reading {}", loc.url_of(&loc.child(rel))))),
    }
}

async fn write_json<T: Serialize>(loc: &Location, rel: &str, value: &T, mode: PutMode) -> Result<()> {
    let body = serde_json::to_vec_pretty(value).map_err(ScoreError::internal)?;
    let path = loc.child(rel);
    loc.store
        .put_opts(&path, PutPayload::from(body), PutOptions { mode, ..Default::default() })
        .await
        .map(|_| ())
        .map_err(|e| match e {
            object_store::Error::AlreadyExists { .. } => {
                ScoreError::FailedPrecondition(format!("{} exists already", loc.url_of(&path)))
            }
            e => ScoreError::from_store(e, format!("writing {}", loc.url_of(&path))),
        })
}

/// The job's lock, a lease made only of objects created exclusively (`PutMode::Create`,
/// which local files, S3, Azure and GCS all do; a store without it refuses the job):
///
/// - `lease/<epoch>`: taken by the run that creates it (the holder's host and pid inside);
///   two runs taking a free or stale lock over at once cannot both create the same epoch.
/// - `lease/<epoch>.<beat>`: the holder's heartbeats, each created anew.
/// - `lease/<epoch>.released`: given back.
///
/// A lock is stale when its last heartbeat is older than [`LOCK_STALE_AFTER`] by the store's
/// own clock (a probe object's modification time): no two machines' clocks are compared.
/// Every commit of a Delta output carries the epoch, so a run whose lock was taken over
/// cannot commit once the new holder has; a Parquet output's manifest is written only
/// after the holder checks that no later epoch exists.
struct JobLock {
    loc: Location,
    dir: String,
    epoch: i64,
    heartbeat: tokio::task::JoinHandle<()>,
}

/// What the `lease/` directory of a job holds.
#[derive(Debug, Default)]
struct Lease {
    /// The highest epoch, its latest heartbeat (or the epoch object itself) and whether it
    /// was given back.
    top: Option<(i64, ObjectMeta, bool)>,
}

impl JobLock {
    fn dir(job_id: &str, shard: Option<(usize, usize)>) -> String {
        match shard {
            Some((i, n)) => format!("_lakescore_jobs/{job_id}/lease-{i}-of-{n}"),
            None => format!("_lakescore_jobs/{job_id}/lease"),
        }
    }

    async fn read(loc: &Location, dir: &str) -> Result<Lease> {
        let listed =
            loc.store.list_with_delimiter(Some(&loc.child(dir))).await.map(|l| l.objects).or_else(|e| match e {
                object_store::Error::NotFound { .. } => Ok(Vec::new()),
                e => Err(ScoreError::from_store(e, format!("reading the job lock under {}", loc.url))),
            })?;
        let mut lease = Lease::default();
        for meta in listed {
            let Some(name) = meta.location.filename().map(str::to_string) else { continue };
            let (epoch, rest) = name.split_once('.').map_or((name.as_str(), None), |(e, r)| (e, Some(r)));
            let Ok(epoch) = epoch.parse::<i64>() else { continue };
            let released = rest == Some("released");
            let newer = match &lease.top {
                None => true,
                Some((top, seen, _)) => epoch > *top || (epoch == *top && meta.last_modified >= seen.last_modified),
            };
            let was_released = lease.top.as_ref().is_some_and(|(top, _, r)| *top == epoch && *r);
            if newer {
                lease.top = Some((epoch, meta, released || was_released));
            } else if released {
                if let Some(top) = lease.top.as_mut().filter(|t| t.0 == epoch) {
                    top.2 = true;
                }
            }
        }
        Ok(lease)
    }

    /// The store's time now: the modification time of an object created for the purpose.
    async fn store_now(loc: &Location, dir: &str) -> Result<chrono::DateTime<chrono::Utc>> {
        let probe = loc.child(&format!("{dir}/probe-{}", uuid::Uuid::new_v4().simple()));
        loc.store
            .put(&probe, PutPayload::from_static(b"{}"))
            .await
            .map_err(|e| ScoreError::from_store(e, format!("reading the store's clock under {}", loc.url)))?;
        let head = loc.store.head(&probe).await.map_err(|e| ScoreError::from_store(e, "the clock probe"));
        let _ = loc.store.delete(&probe).await;
        Ok(head?.last_modified)
    }

    async fn acquire(loc: &Location, job_id: &str, shard: Option<(usize, usize)>) -> Result<Self> {
        let dir = Self::dir(job_id, shard);
        let lease = Self::read(loc, &dir).await?;
        let epoch = match &lease.top {
            None => 1,
            Some((top, _, true)) => top + 1,
            Some((top, latest, false)) => {
                let age = Self::store_now(loc, &dir).await?.signed_duration_since(latest.last_modified);
                let age = age.to_std().unwrap_or_default();
                // A holder on this host whose process is gone died with the lock held: no
                // need to wait for the lock to go stale.
                let holder: Option<serde_json::Value> =
                    read_json(loc, &format!("{dir}/{top:010}")).await.ok().flatten();
                let dead_here = holder.as_ref().is_some_and(|h| {
                    h["host"].as_str() == Some(host_name().as_str())
                        && h["pid"].as_u64().is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
                });
                if age < LOCK_STALE_AFTER && !dead_here {
                    return Err(ScoreError::Locked(format!(
                        "job {job_id} is already running (its lock {} was renewed {}s ago); a crashed run's lock \
                         is taken over after {}s",
                        loc.url_of(&loc.child(&dir)),
                        age.as_secs(),
                        LOCK_STALE_AFTER.as_secs()
                    )));
                }
                tracing::warn!(
                    job_id,
                    epoch = top,
                    age_secs = age.as_secs(),
                    "taking over the lock of a run that stopped"
                );
                top + 1
            }
        };
        let body = serde_json::json!({"job_id": job_id, "epoch": epoch, "host": host_name(),
                                      "pid": std::process::id(), "at": chrono::Utc::now().to_rfc3339()});
        match write_json(loc, &format!("{dir}/{epoch:010}"), &body, PutMode::Create).await {
            Ok(()) => {}
            Err(ScoreError::FailedPrecondition(_)) => {
                return Err(ScoreError::Locked(format!(
                    "job {job_id}: another run took its lock (epoch {epoch}) at the same moment"
                )))
            }
            Err(e) => return Err(e),
        }
        let (hb_loc, hb_dir, id) = (loc.clone(), dir.clone(), job_id.to_string());
        let heartbeat = tokio::spawn(async move {
            let mut beat: u64 = 0;
            loop {
                tokio::time::sleep(HEARTBEAT_EVERY).await;
                beat += 1;
                let path = format!("{hb_dir}/{epoch:010}.{beat:010}");
                if let Err(e) = write_json(&hb_loc, &path, &serde_json::json!({"beat": beat}), PutMode::Create).await {
                    tracing::warn!(job_id = %id, error = %e, "renewing a job lock failed");
                    continue;
                }
                if beat > 1 {
                    let _ = hb_loc.store.delete(&hb_loc.child(&format!("{hb_dir}/{epoch:010}.{:010}", beat - 1))).await;
                }
                if let Ok(Lease { top: Some((top, _, _)) }) = Self::read(&hb_loc, &hb_dir).await {
                    if top > epoch {
                        tracing::error!(job_id = %id, epoch, taken_by = top, "this run's job lock was taken over");
                        return;
                    }
                }
            }
        });
        Ok(Self { loc: loc.clone(), dir, epoch, heartbeat })
    }

    /// Refuses when a later run took the lock over (before a commit no epoch fences).
    async fn check(&self, job_id: &str) -> Result<()> {
        match Self::read(&self.loc, &self.dir).await?.top {
            Some((top, _, _)) if top > self.epoch => Err(ScoreError::Locked(format!(
                "job {job_id}: this run's lock (epoch {}) was taken over by a later run (epoch {top}); it commits nothing",
                self.epoch
            ))),
            _ => Ok(()),
        }
    }

    /// Give the lock back for good: the job is complete, and a complete job is answered
    /// from its record (manifest or table) without locking, so its lease goes.
    async fn retire(self) {
        self.heartbeat.abort();
        if let Ok(listed) = self.loc.store.list_with_delimiter(Some(&self.loc.child(&self.dir))).await {
            for meta in listed.objects {
                let _ = self.loc.store.delete(&meta.location).await;
            }
        }
    }

    async fn release(self) {
        self.heartbeat.abort();
        let released = format!("{}/{:010}.released", self.dir, self.epoch);
        let _ = write_json(&self.loc, &released, &serde_json::json!({}), PutMode::Create).await;
        if let Ok(listed) = self.loc.store.list_with_delimiter(Some(&self.loc.child(&self.dir))).await {
            let mine = format!("{:010}.", self.epoch);
            for meta in listed.objects {
                let name = meta.location.filename().unwrap_or_default();
                let beat = name.strip_prefix(&mine).is_some_and(|rest| rest != "released");
                let older = name.split('.').next().and_then(|e| e.parse::<i64>().ok()).is_some_and(|e| e < self.epoch);
                if beat || older {
                    let _ = self.loc.store.delete(&meta.location).await;
                }
            }
        }
    }
}

impl Drop for JobLock {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// The job's failure when its rows or units in error are over the thresholds.
fn over_threshold(
    settings: &JobSettings,
    job_id: &str,
    out: &Location,
    error_rows: u64,
    failed_units: u64,
) -> Option<ScoreError> {
    let over_rows = settings.error_threshold_rows >= 0 && error_rows > settings.error_threshold_rows as u64;
    let over_units = settings.error_threshold_units >= 0 && failed_units > settings.error_threshold_units as u64;
    (over_rows || over_units).then(|| {
        ScoreError::FailedPrecondition(format!(
            "job {job_id} stopped: {error_rows} rows in error (error_threshold_rows {}) and {failed_units} failed \
             units (error_threshold_units {}); the rows in error are under {}",
            settings.error_threshold_rows,
            settings.error_threshold_units,
            out.url_of(&out.child("_errors"))
        ))
    })
}

/// This machine's name, to tell a lock held by a dead process here from one held elsewhere.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

/// Whether a failed attempt is worth another: storage or registry trouble, a timeout, an
/// engine failure; not input that will fail the same way again.
fn transient(e: &ScoreError) -> bool {
    matches!(e, ScoreError::Unavailable(_) | ScoreError::Internal(_) | ScoreError::Cancelled(_))
}

/// What every unit of one run of a job is scored with and written to.
#[derive(Clone, Copy)]
struct JobRun<'a> {
    cmd: &'a ScoreCommand,
    settings: &'a JobSettings,
    model: &'a ResolvedModel,
    manifest_model: &'a ManifestModel,
    input: &'a Input,
    out: &'a Location,
    job_id: &'a str,
    /// The run's lock epoch: in its parts' names, so that runs never write or remove each
    /// other's files.
    epoch: i64,
    /// A Delta output: what each unit's commit records.
    table: Option<TableRun<'a>>,
}

/// What the units of a job writing a Delta table commit with.
#[derive(Clone, Copy)]
struct TableRun<'a> {
    generation: i64,
    epoch: i64,
    /// The app id of the run's lock (one per shard).
    lock: &'a str,
    lineage: &'a serde_json::Map<String, serde_json::Value>,
    /// The table's columns, as the job writes them.
    schema: Option<&'a arrow::datatypes::SchemaRef>,
}

impl<'a> TableRun<'a> {
    /// What commits the run's units to the table at `out`, with columns `schema`.
    fn committer<'b>(
        &self,
        out: &'b Location,
        job_id: &'b str,
        schema: &'b arrow::datatypes::SchemaRef,
    ) -> table::Committer<'b>
    where
        'a: 'b,
    {
        table::Committer {
            out,
            schema,
            lineage: self.lineage,
            job_id,
            generation: self.generation,
            lock: self.lock,
            epoch: self.epoch,
        }
    }
}

/// A batch's rows scored where they can be, and the rows that cannot, with their error.
struct Isolated {
    scored: Vec<RecordBatch>,
    bad: Vec<(u32, ScoreError)>,
}

/// Scores `batch`; on an error that can be a row's own, splits it in halves until the
/// failing rows are alone. Rows come out in their input order.
fn score_isolating(model: &ResolvedModel, plan: &ScorePlan, batch: &RecordBatch, offset: u32, out: &mut Isolated) {
    match score_chunk(model, plan, batch) {
        Ok(scored) => out.scored.push(scored),
        Err(e) if !matches!(e, ScoreError::InvalidArgument(_) | ScoreError::Internal(_)) => {
            // Not a row's fault (memory, cancellation): every row of the batch gets it.
            for row in 0..batch.num_rows() as u32 {
                out.bad.push((offset + row, e.clone()));
            }
        }
        Err(e) if batch.num_rows() <= 1 => {
            if batch.num_rows() == 1 {
                out.bad.push((offset, e));
            }
        }
        Err(_) => {
            let half = batch.num_rows() / 2;
            score_isolating(model, plan, &batch.slice(0, half), offset, out);
            score_isolating(model, plan, &batch.slice(half, batch.num_rows() - half), offset + half as u32, out);
        }
    }
}

/// The error rows of a batch: the whole input row, its row number in the unit, the error's
/// code and message.
fn error_rows(batch: &RecordBatch, bad: &[(u32, ScoreError)], first_row: u64) -> Result<RecordBatch> {
    let indices = UInt32Array::from_iter_values(bad.iter().map(|(i, _)| *i));
    let mut columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| arrow::compute::take(c, &indices, None))
        .collect::<std::result::Result<_, _>>()?;
    let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
    columns.push(Arc::new(arrow::array::UInt64Array::from_iter_values(
        bad.iter().map(|(i, _)| first_row + u64::from(*i)),
    )));
    fields.push(Arc::new(Field::new("_row", DataType::UInt64, false)));
    columns.push(Arc::new(StringArray::from_iter_values(bad.iter().map(|(_, e)| format!("{:?}", e.code())))));
    fields.push(Arc::new(Field::new("_error_code", DataType::Utf8, false)));
    columns.push(Arc::new(StringArray::from_iter_values(bad.iter().map(|(_, e)| e.message().to_string()))));
    fields.push(Arc::new(Field::new("_error_message", DataType::Utf8, false)));
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

impl JobManager {
    /// The job manager of a worker's lake.
    pub fn new(lake: Arc<Lake>) -> Self {
        Self { lake, running: RunningJobs::default() }
    }

    /// Starts the batch job `cmd` in the background: what `score-dataset`, `PollFlightInfo`
    /// and `CancelFlightInfo` share. A run of the same job still going here is joined when
    /// `join` (a poller), refused otherwise (a second submission); a finished one is run again
    /// (which answers at once when the job is complete).
    pub fn start_job(
        self: &Arc<Self>,
        cmd: ScoreCommand,
        settings: JobSettings,
        creds: Credentials,
        join: bool,
    ) -> Result<Arc<RunningJob>> {
        let key = job_key(&cmd);
        let mut jobs = self.running.0.lock().map_err(|_| ScoreError::internal("the job table lock is poisoned"))?;
        jobs.retain(|_, j| {
            j.outcome.lock().ok().is_none_or(|o| o.as_ref().is_none_or(|(at, _)| at.elapsed() < FINISHED_KEPT))
        });
        if let Some(job) = jobs.get(&key).filter(|j| j.outcome().is_none()) {
            if join {
                return Ok(job.clone());
            }
            return Err(ScoreError::Locked(format!(
                "job {} is already running on this worker: follow it with PollFlightInfo, or stop it with \
                 CancelFlightInfo",
                cmd.job_id
            )));
        }
        let job = Arc::new(RunningJob::default());
        jobs.insert(key, job.clone());
        drop(jobs);
        let (manager, running) = (self.clone(), job.clone());
        metrics::gauge!("lakescore_jobs_running").increment(1.0);
        tokio::spawn(async move {
            let result = manager.run_job(&cmd, &settings, &creds, &running).await;
            let outcome = if result.is_ok() { "succeeded" } else { "failed" };
            metrics::counter!("lakescore_jobs_finished_total", "outcome" => outcome).increment(1);
            metrics::gauge!("lakescore_jobs_running").decrement(1.0);
            running.finish(result);
        });
        Ok(job)
    }

    /// Every run of the job `cmd` names (shards included) still going on this worker.
    pub fn running_jobs(&self, cmd: &ScoreCommand) -> Vec<Arc<RunningJob>> {
        let prefix = format!("{}#{}#", cmd.output, cmd.job_id);
        let Ok(jobs) = self.running.0.lock() else { return Vec::new() };
        jobs.iter().filter(|(k, j)| k.starts_with(&prefix) && j.outcome().is_none()).map(|(_, j)| j.clone()).collect()
    }

    /// The job `cmd` names, if it runs (or ran lately) on this worker.
    pub fn find_job(&self, cmd: &ScoreCommand) -> Option<Arc<RunningJob>> {
        self.running.0.lock().ok()?.get(&job_key(cmd)).cloned()
    }

    /// `score-dataset` with batch settings: see the module documentation.
    pub async fn run_job(
        &self,
        cmd: &ScoreCommand,
        settings: &JobSettings,
        creds: &Credentials,
        job: &RunningJob,
    ) -> Result<JobSummary> {
        if cmd.job_id.is_empty() {
            return Err(ScoreError::invalid("a batch job needs a job_id (it names the job for resume and locking)"));
        }
        let job_id = crate::lake::job_id(cmd)?;
        // A summary-only job writes no rows: its record is a manifest, wherever it goes.
        let (out, format) = if settings.summary_only {
            let out = self.lake.output_location(cmd)?;
            if crate::delta::is_table(&out).await? {
                return Err(ScoreError::FailedPrecondition(format!(
                    "a summary-only job records its summary as a _lakescore.json manifest, and {} is a Delta \
                     table: give the job an output of its own",
                    out.url
                )));
            }
            (out, OutputFormat::Parquet)
        } else {
            self.lake.output_target(cmd).await?
        };
        match format {
            OutputFormat::Parquet => {
                if let Some(done) = read_json::<Manifest>(&out, MANIFEST_NAME).await? {
                    if done.job_id != job_id {
                        return Err(ScoreError::FailedPrecondition(format!(
                            "output {} holds another output already (its manifest names job {}): a job never \
                             writes over a manifest it did not write; give this job another output",
                            out.url, done.job_id
                        )));
                    }
                    return self.completed_job(cmd, settings, creds, &out, &job_id, done).await;
                }
            }
            OutputFormat::Delta => {
                if let Some(done) = table::read(&out, &job_id).await?.done {
                    return self.completed_job(cmd, settings, creds, &out, &job_id, done).await;
                }
            }
        }
        let lock = JobLock::acquire(&out, &job_id, settings.shard).await?;
        let result = self.run_job_locked(cmd, settings, creds, &out, &job_id, job, format, &lock).await;
        if result.is_ok() && settings.shard.is_none() {
            lock.retire().await;
        } else {
            lock.release().await;
        }
        result
    }

    /// A run of a job whose manifest is committed: the same job (model, input and output
    /// action) answers its committed summary and writes nothing, so that an orchestrator
    /// retrying a task whose job had in fact finished succeeds; another job under the same
    /// id is refused, naming what differs.
    async fn completed_job(
        &self,
        cmd: &ScoreCommand,
        settings: &JobSettings,
        creds: &Credentials,
        out: &Location,
        job_id: &str,
        done: Manifest,
    ) -> Result<JobSummary> {
        let url = out.url_of(&out.child(MANIFEST_NAME));
        let other = |what: String| {
            ScoreError::FailedPrecondition(format!(
                "job {job_id} is complete at {url} as another job: {what}; give this job another job_id"
            ))
        };
        let (Some(done_action), Some(counts)) = (done.output_action.as_deref(), done.units.as_ref()) else {
            return Err(other("the manifest there was not written by a batch job".into()));
        };
        if !done.input.is_empty() && done.input != cmd.input {
            return Err(other(format!("it scored input {}, not {}", done.input, cmd.input)));
        }
        let action = settings.output_action();
        if done_action != action {
            return Err(other(format!("its output action was {done_action}, not {action}")));
        }
        // The caller must still be allowed to read the model the job scored with.
        let pinned = format!("{}:{}", done.model.name, done.model.version);
        let model = self.lake.scorer().cache().source().resolve(&ModelRef::parse(&pinned)?, creds).await?;
        if model.sha256 != done.model.sha256 {
            return Err(other(format!(
                "it scored with {pinned} (sha256 {}), which the registry now has as sha256 {}",
                done.model.sha256, model.sha256
            )));
        }
        if cmd.model != done.model.reference {
            let asked = self.lake.scorer().cache().source().resolve(&ModelRef::parse(&cmd.model)?, creds).await?;
            if asked.sha256 != done.model.sha256 {
                return Err(other(format!(
                    "it scored with {pinned} (from '{}'), and '{}' is {}:{}",
                    done.model.reference, cmd.model, asked.model, asked.version
                )));
            }
        }
        tracing::info!(job_id, manifest = %url, "job already complete: its committed summary answers");
        let files = done.files.iter().map(|f| f.url.clone()).collect();
        let table = done.table.clone();
        Ok(JobSummary {
            job_id: job_id.to_string(),
            manifest: if table.is_some() { String::new() } else { url },
            table,
            table_version: done.table_version,
            model: done.model.name,
            version: done.model.version,
            sha256: done.model.sha256,
            rows: done.rows,
            error_rows: done.error_rows.unwrap_or(0),
            units: counts.total,
            failed_units: counts.failed,
            retried_units: counts.retried,
            resumed_units: counts.resumed,
            files,
            bytes: done.bytes,
            output_action: action,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_job_locked(
        &self,
        cmd: &ScoreCommand,
        settings: &JobSettings,
        creds: &Credentials,
        out: &Location,
        job_id: &str,
        job: &RunningJob,
        format: OutputFormat,
        lock: &JobLock,
    ) -> Result<JobSummary> {
        let epoch = lock.epoch;
        use std::sync::atomic::Ordering::Relaxed;
        let job_dir = format!("_lakescore_jobs/{job_id}");
        // One model version and one input version for the whole job, resumed runs included.
        let (record, input) = match read_json::<JobRecord>(out, &format!("{job_dir}/job.json")).await? {
            Some(r) => {
                let input = self.lake.input(pinned_input(cmd, &r).as_ref().unwrap_or(cmd)).await?;
                (r, input)
            }
            None => {
                let model = self.lake.scorer().resolve_model(&cmd.model, creds).await?;
                let input = self.lake.input(cmd).await?;
                let r = JobRecord {
                    reference: cmd.model.clone(),
                    name: model.version.model.clone(),
                    version: model.version.version,
                    sha256: model.version.sha256.clone(),
                    input_version: input.table_version,
                };
                // Shards starting at once agree on one version: the first record wins.
                match write_json(out, &format!("{job_dir}/job.json"), &r, PutMode::Create).await {
                    Ok(()) => (r, input),
                    Err(ScoreError::FailedPrecondition(_)) => {
                        let r = read_json::<JobRecord>(out, &format!("{job_dir}/job.json"))
                            .await?
                            .ok_or_else(|| ScoreError::internal("the job record vanished"))?;
                        let input = match pinned_input(cmd, &r) {
                            Some(pinned) if r.input_version != input.table_version => self.lake.input(&pinned).await?,
                            _ => input,
                        };
                        (r, input)
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let model = self.lake.scorer().resolve_model(&format!("{}:{}", record.name, record.version), creds).await?;
        if model.version.sha256 != record.sha256 {
            return Err(ScoreError::FailedPrecondition(format!(
                "job {job_id} scores with {}:{} (sha256 {}), but the registry now has {} for it",
                record.name, record.version, record.sha256, model.version.sha256
            )));
        }
        let units = self.units(&input, settings.mini_batch_size).await?;

        let mut records: Vec<Option<UnitRecord>> = vec![None; units.len()];
        let mut resumed = 0u64;
        // A Delta output's log records the units committed; a Parquet output's markers do.
        let mut committed: std::collections::HashSet<usize> = Default::default();
        let manifest_model = ManifestModel {
            reference: record.reference.clone(),
            name: record.name.clone(),
            version: record.version,
            sha256: record.sha256.clone(),
            engine: model.handle.engine.to_string(),
        };
        let lineage = crate::lake::lineage(&manifest_model, cmd, input.table_version, job_id, creds);
        let lock_app = table::lock_app(job_id, settings.shard);
        let mut run = JobRun {
            cmd,
            settings,
            model: &model,
            manifest_model: &manifest_model,
            input: &input,
            out,
            job_id,
            epoch,
            table: None,
        };
        // A Delta output has one set of columns: the first unit that plans gives them, and a
        // unit whose rows would have others fails as a unit (it cannot be committed).
        let mut schema: Option<arrow::datatypes::SchemaRef> = None;
        let (generation, mut watch) = match format {
            OutputFormat::Delta => {
                schema = self.output_schema(&run, &units).await.ok().map(|s| crate::delta::table_schema(&s));
                // The run's epoch in the table before anything is read or removed: from here
                // on a run this one took over from can commit nothing, so what the table
                // says is committed stays all there is.
                if let Some(schema) = &schema {
                    table::fence(out, schema, &lineage, job_id, &lock_app, epoch).await?;
                }
                let found = table::read(out, job_id).await?;
                for r in found.units.into_iter().filter(|r| r.unit < units.len() && r.failed.is_none()) {
                    resumed += 1;
                    committed.insert(r.unit);
                    let unit = r.unit;
                    records[unit] = Some(r);
                }
                (found.generation, found.watch)
            }
            OutputFormat::Parquet => {
                for u in &units {
                    let marker = format!("{job_dir}/units/{:05}.json", u.index);
                    if let Some(r) = read_json::<UnitRecord>(out, &marker).await? {
                        if r.failed.is_none() {
                            resumed += 1;
                            records[u.index] = Some(r);
                        }
                    }
                }
                (0, crate::delta::TxnWatch::default())
            }
        };
        job.units_total.store(units.len() as u64, Relaxed);
        job.units_done.store(resumed, Relaxed);
        // Parts an earlier, crashed run left of units it never committed: found in one listing.
        let leftovers = self.units_with_parts(out, job_id).await;
        let mine = |u: &Unit| settings.shard.is_none_or(|(i, n)| u.index % n == i);
        let pending: Vec<Unit> = units.iter().filter(|u| records[u.index].is_none() && mine(u)).cloned().collect();
        let mut error_rows: u64 = records.iter().flatten().map(|r| r.error_rows).sum();
        let mut failed_units = 0u64;
        let mut outcome: Result<()> = Ok(());
        if format == OutputFormat::Delta {
            run.table =
                Some(TableRun { generation, epoch, lock: &lock_app, lineage: &lineage, schema: schema.as_ref() });
        }
        let run = run;
        let mut running = futures::stream::iter(pending.into_iter().map(|unit| {
            let run = &run;
            let leftover = leftovers.contains(&unit.index);
            async move {
                if leftover {
                    self.remove_unit_parts(out, job_id, unit.index, None).await;
                }
                let result = self.run_unit(run, &unit).await;
                (unit, result)
            }
        }))
        .buffer_unordered(settings.max_concurrency);
        let mut cancelled = false;
        // A Delta output's finished units, waiting for their group's commit.
        let mut to_commit: Vec<UnitRecord> = Vec::new();
        let mut last_commit = std::time::Instant::now();
        let mut schema = schema.clone();
        loop {
            let next = tokio::select! {
                biased;
                _ = job.cancel.cancelled() => {
                    cancelled = true;
                    break;
                }
                next = running.next() => next,
            };
            let Some((unit, record)) = next else { break };
            match format {
                OutputFormat::Parquet => {
                    write_json(out, &format!("{job_dir}/units/{:05}.json", unit.index), &record, PutMode::Overwrite)
                        .await?
                }
                OutputFormat::Delta if record.failed.is_none() => {
                    to_commit.push(record.clone());
                    let interval = self.lake.scorer().config().job_commit_interval;
                    if to_commit.len() >= table::COMMIT_UNITS || last_commit.elapsed() >= interval {
                        let group = std::mem::take(&mut to_commit);
                        if let Err(e) =
                            self.commit_group(&run, &units, &mut schema, group, &mut watch, &mut committed).await
                        {
                            drop(running);
                            self.remove_uncommitted(out, job_id, settings.shard, epoch, &committed).await;
                            return Err(e);
                        }
                        last_commit = std::time::Instant::now();
                    }
                }
                OutputFormat::Delta => {}
            }
            job.units_done.fetch_add(1, Relaxed);
            job.rows.fetch_add(record.rows, Relaxed);
            metrics::counter!("lakescore_job_units_total").increment(1);
            lakescore_core::failpoint::hit("job.after_unit").await;
            error_rows += record.error_rows;
            if let Some(why) = &record.failed {
                failed_units += 1;
                tracing::warn!(job_id, unit = unit.index, input = %record.input, error = %why, "a unit failed every attempt");
            }
            records[unit.index] = Some(record);
            // Shards only score; the run that commits judges the whole job.
            if settings.shard.is_none() {
                if let Some(e) = over_threshold(settings, job_id, out, error_rows, failed_units) {
                    outcome = Err(e);
                    break;
                }
            }
        }
        drop(running);
        if outcome.is_ok() && !cancelled && !to_commit.is_empty() {
            let group = std::mem::take(&mut to_commit);
            if let Err(e) = self.commit_group(&run, &units, &mut schema, group, &mut watch, &mut committed).await {
                self.remove_uncommitted(out, job_id, settings.shard, epoch, &committed).await;
                return Err(e);
            }
        }
        if outcome.is_ok() && settings.shard.is_none() {
            // Units committed by earlier runs or shards count too.
            if let Some(e) = over_threshold(settings, job_id, out, error_rows, failed_units) {
                outcome = Err(e);
            }
        }
        let records: Vec<UnitRecord> = records.into_iter().flatten().collect();
        if cancelled {
            // Units still running were dropped with their writers: their parts go too, as do
            // those of units waiting for a commit.
            if format == OutputFormat::Delta {
                self.remove_uncommitted(out, job_id, settings.shard, epoch, &committed).await;
                let done: Vec<UnitRecord> = records.iter().filter(|r| committed.contains(&r.unit)).cloned().collect();
                self.remove_job_output(out, &done, &job_dir, &run).await?;
                return Err(ScoreError::Cancelled(format!("job {job_id} was cancelled; its rows were taken out")));
            }
            let leftovers = self.units_with_parts(out, job_id).await;
            for unit in leftovers {
                self.remove_unit_parts(out, job_id, unit, None).await;
            }
            self.remove_job_output(out, &records, &job_dir, &run).await?;
            return Err(ScoreError::Cancelled(format!("job {job_id} was cancelled; its partial output was removed")));
        }
        if let Some((index, count)) = settings.shard {
            // A shard commits its units only; the run without shards writes the manifest.
            outcome?;
            let mine: Vec<&UnitRecord> = records.iter().filter(|r| r.unit % count == index).collect();
            let totals = Totals { units: mine.len() as u64, failed_units, resumed_units: resumed };
            return Ok(JobSummary::of(job_id, &record, &mine, totals, settings, String::new()));
        }
        if let Err(e) = outcome {
            // Deterministic: a re-run would stop the same way. Nothing of the job's output
            // stays (the error rows do, to be looked at).
            if format == OutputFormat::Delta {
                self.remove_uncommitted(out, job_id, settings.shard, epoch, &committed).await;
                let done: Vec<UnitRecord> = records.iter().filter(|r| committed.contains(&r.unit)).cloned().collect();
                self.remove_job_output(out, &done, &job_dir, &run).await?;
                return Err(e);
            }
            self.remove_job_output(out, &records, &job_dir, &run).await?;
            return Err(e);
        }

        // Every unit is accounted for: the manifest, last.
        let files: Vec<&WrittenFile> = records.iter().flat_map(|r| r.files.iter()).collect();
        let all: Vec<&UnitRecord> = records.iter().collect();
        let totals = Totals { units: units.len() as u64, failed_units, resumed_units: resumed };
        let manifest_url = match format {
            OutputFormat::Parquet => out.url_of(&out.child(MANIFEST_NAME)),
            OutputFormat::Delta => String::new(),
        };
        let mut summary = JobSummary::of(job_id, &record, &all, totals, settings, manifest_url);
        let mut manifest = Manifest::new(FORMAT_JOB, job_id, &manifest_model, files.into_iter().cloned().collect());
        // A summary-only job scored rows it wrote no file for: the counts are the summary's.
        manifest.rows = summary.rows;
        manifest.bytes = summary.bytes;
        manifest.input = cmd.input.clone();
        manifest.output_action = Some(summary.output_action.to_string());
        manifest.error_rows = Some(summary.error_rows);
        manifest.units = Some(UnitCounts {
            total: summary.units,
            failed: summary.failed_units,
            retried: summary.retried_units,
            resumed: summary.resumed_units,
        });
        manifest.inputs = records.clone();
        match format {
            OutputFormat::Parquet => {
                lock.check(job_id).await?;
                // Created, never written over: what a job finds at its output is not its own
                // (checked when it started) unless this very run wrote it.
                write_json(out, MANIFEST_NAME, &manifest, PutMode::Create).await?;
                for r in &records {
                    let _ = out.store.delete(&out.child(&format!("{job_dir}/units/{:05}.json", r.unit))).await;
                }
            }
            OutputFormat::Delta => {
                let schema = match schema {
                    Some(s) => s,
                    None => self.output_schema(&run, &units).await?,
                };
                manifest.table = Some(out.url.to_string());
                let committer = table::Committer {
                    out,
                    schema: &schema,
                    lineage: &lineage,
                    job_id,
                    generation,
                    lock: &lock_app,
                    epoch,
                };
                summary.table = Some(out.url.to_string());
                summary.table_version = committer.commit_end(&manifest, &mut watch).await?;
            }
        }
        let _ = out.store.delete(&out.child(&format!("{job_dir}/job.json"))).await;
        tracing::info!(
            job_id,
            rows = summary.rows,
            error_rows,
            units = summary.units,
            failed_units,
            "batch job committed"
        );
        Ok(summary)
    }

    /// The units of `files`: each file, or runs of `mini_batch_size` row groups.
    async fn units(&self, input: &Input, mini_batch_size: usize) -> Result<Vec<Unit>> {
        let mut units = Vec::new();
        for file in input.files.iter().cloned() {
            if mini_batch_size == 0 {
                units.push(Unit { index: units.len(), file, row_groups: None });
                continue;
            }
            let groups = match self.row_group_count(&input.loc, &file.meta).await {
                Ok(n) => n,
                // A file whose footer does not read is one unit, which fails on its own.
                Err(_) => {
                    units.push(Unit { index: units.len(), file, row_groups: None });
                    continue;
                }
            };
            for start in (0..groups.max(1)).step_by(mini_batch_size) {
                let rg: Vec<usize> = (start..(start + mini_batch_size).min(groups)).collect();
                units.push(Unit { index: units.len(), file: file.clone(), row_groups: Some(rg) });
            }
        }
        Ok(units)
    }

    async fn row_group_count(&self, input: &Location, file: &ObjectMeta) -> Result<usize> {
        use parquet::arrow::async_reader::AsyncFileReader;
        let mut reader = crate::storage::ObjectReader::new(input.store.clone(), file);
        let meta = reader.get_metadata(None).await?;
        Ok(meta.num_row_groups())
    }

    /// One unit, with its retries ([`RetryPolicy::units`]): never an `Err` (a unit that fails
    /// every attempt is a failed unit of the job, recorded as such).
    async fn run_unit(&self, run: &JobRun<'_>, unit: &Unit) -> UnitRecord {
        let JobRun { settings, input, out, job_id, .. } = *run;
        let url = input.loc.url_of(&unit.file.meta.location);
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let attempt = || {
            let (attempts, url) = (&attempts, &url);
            async move {
                let attempt = attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                if attempt > 1 {
                    // Leftovers of the failed attempt (a timeout drops its sinks mid-file; each
                    // attempt names its parts apart, so a late removal never meets this one's).
                    self.remove_unit_parts(out, job_id, unit.index, Some(run.epoch)).await;
                }
                lakescore_core::failpoint::hit("job.before_unit").await;
                match tokio::time::timeout(settings.timeout, self.score_unit(run, unit, attempt)).await {
                    Ok(result) => result,
                    Err(_) => Err(ScoreError::Unavailable(format!(
                        "unit {} ({url}) took longer than {}s",
                        unit.index,
                        settings.timeout.as_secs_f64()
                    ))),
                }
            }
        };
        let span = tracing::warn_span!("unit", job_id, unit = unit.index);
        let policy = RetryPolicy::units(settings.max_retries as usize);
        let result = policy.retry("unit failed", transient, attempt).instrument(span).await;
        let attempts = attempts.load(std::sync::atomic::Ordering::SeqCst);
        match result {
            Ok(mut record) => {
                record.attempts = attempts;
                record
            }
            Err(e) => {
                self.remove_unit_parts(out, job_id, unit.index, Some(run.epoch)).await;
                UnitRecord {
                    unit: unit.index,
                    input: url,
                    row_groups: unit.row_groups.clone(),
                    rows: 0,
                    error_rows: 0,
                    files: Vec::new(),
                    error_file: None,
                    attempts,
                    failed: Some(e.to_string()),
                }
            }
        }
    }

    /// The name prefix of one attempt's parts: `<job>-u<unit>-e<epoch>-a<attempt>`.
    fn attempt_prefix(job_id: &str, unit: usize, epoch: i64, attempt: u32) -> String {
        format!("{}-e{epoch}-a{attempt}", Self::unit_prefix(job_id, unit))
    }

    fn unit_prefix(job_id: &str, unit: usize) -> String {
        format!("{job_id}-u{unit:05}")
    }

    /// The units of `job_id` that have parts (data or error rows) under `out`.
    async fn units_with_parts(&self, out: &Location, job_id: &str) -> std::collections::HashSet<usize> {
        let prefix = format!("part-{job_id}-u");
        let mut units = std::collections::HashSet::new();
        for dir in [out.path.clone(), out.child("_errors")] {
            let listed = out.store.list_with_delimiter(Some(&dir)).await.map(|l| l.objects).unwrap_or_default();
            for meta in &listed {
                let unit =
                    meta.location.filename().and_then(|n| n.strip_prefix(&prefix)).and_then(|rest| rest.get(..5));
                if let Some(n) = unit.and_then(|u| u.parse().ok()) {
                    units.insert(n);
                }
            }
        }
        units
    }

    /// Removes what unfinished attempts of `unit` left (data parts and error rows): those of
    /// the run of lock `epoch`, or of every run.
    async fn remove_unit_parts(&self, out: &Location, job_id: &str, unit: usize, epoch: Option<i64>) {
        let run = epoch.map(|e| format!("e{e}-")).unwrap_or_default();
        let prefix = format!("part-{}-{run}", Self::unit_prefix(job_id, unit));
        for dir in [out.path.clone(), out.child("_errors")] {
            let listed = out.store.list_with_delimiter(Some(&dir)).await.map(|l| l.objects).unwrap_or_default();
            for meta in listed.iter().filter(|m| m.location.filename().is_some_and(|n| n.starts_with(&prefix))) {
                let _ = out.store.delete(&meta.location).await;
            }
        }
    }

    /// Commit a group of a Delta output's finished units (see [`table`]).
    async fn commit_group(
        &self,
        run: &JobRun<'_>,
        units: &[Unit],
        schema: &mut Option<arrow::datatypes::SchemaRef>,
        group: Vec<UnitRecord>,
        watch: &mut crate::delta::TxnWatch,
        committed: &mut std::collections::HashSet<usize>,
    ) -> Result<()> {
        let Some(t) = run.table else { return Ok(()) };
        let schema = match schema {
            Some(s) => s.clone(),
            None => {
                let s = self.output_schema(run, units).await?;
                *schema = Some(s.clone());
                s
            }
        };
        let committer = t.committer(run.out, run.job_id, &schema);
        // Units found committed by another run count as committed: their rows are in once.
        let units: Vec<usize> = group.iter().map(|r| r.unit).collect();
        committer.commit_units(group, watch).await?;
        committed.extend(units);
        Ok(())
    }

    /// Removes the parts this run wrote of a Delta output's units that it did not commit (a
    /// dropped attempt's, or a group's that will not be), unless the table has them (a
    /// commit whose answer was lost). Other runs' and shards' parts are theirs.
    async fn remove_uncommitted(
        &self,
        out: &Location,
        job_id: &str,
        shard: Option<(usize, usize)>,
        epoch: i64,
        committed: &std::collections::HashSet<usize>,
    ) {
        let Ok(found) = table::read(out, job_id).await else {
            return; // the table cannot say what it has: parts left over harm no reader
        };
        let in_table: std::collections::HashSet<usize> = found.units.iter().map(|r| r.unit).collect();
        for unit in self.units_with_parts(out, job_id).await {
            let mine = shard.is_none_or(|(i, n)| unit % n == i);
            if !committed.contains(&unit) && !in_table.contains(&unit) && mine {
                self.remove_unit_parts(out, job_id, unit, Some(epoch)).await;
            }
        }
    }

    /// Removes what the job committed: a Parquet output's parts and markers, or a Delta
    /// output's units, in one commit that also moves the job to its next generation.
    async fn remove_job_output(
        &self,
        out: &Location,
        records: &[UnitRecord],
        job_dir: &str,
        run: &JobRun<'_>,
    ) -> Result<()> {
        if let Some(t) = &run.table {
            // What the table has of the job at this generation (every run's and shard's
            // units, as committed), not this run's records: a unit another run committed
            // has that run's files.
            let found = table::read(out, run.job_id).await?;
            let files: Vec<WrittenFile> = found.units.iter().flat_map(|r| r.files.iter().cloned()).collect();
            // The schema only matters to a table that does not exist, which has nothing to remove.
            let schema = std::sync::Arc::new(arrow::datatypes::Schema::empty());
            t.committer(out, run.job_id, &schema).remove(&files).await?;
            let _ = out.store.delete(&out.child(&format!("{job_dir}/job.json"))).await;
            return Ok(());
        }
        for r in records {
            for f in &r.files {
                let _ = out.store.delete(&out.child(&f.path)).await;
            }
            let _ = out.store.delete(&out.child(&format!("{job_dir}/units/{:05}.json", r.unit))).await;
        }
        let _ = out.store.delete(&out.child(&format!("{job_dir}/job.json"))).await;
        Ok(())
    }

    /// The job's output columns (what the table is created with): the plan of the first
    /// unit's file that plans (a corrupt file is a failed unit, not the job's schema).
    async fn output_schema(&self, run: &JobRun<'_>, units: &[Unit]) -> Result<arrow::datatypes::SchemaRef> {
        let mut last = ScoreError::NotFound(format!("job {}: its input has no file", run.job_id));
        for unit in units {
            let planned = async {
                let partition = run.input.partition(&unit.file);
                let row_groups = unit.row_groups.clone();
                let scored =
                    self.lake.open_scored(run.model, run.cmd, &run.input.loc, &unit.file.meta, row_groups, partition);
                let (plan, _) = scored.await?;
                Ok::<_, ScoreError>(plan.output_schema().clone())
            };
            match planned.await {
                Ok(schema) => return Ok(schema),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn score_unit(&self, run: &JobRun<'_>, unit: &Unit, attempt: u32) -> Result<UnitRecord> {
        let JobRun { cmd, settings, model, manifest_model, input, out, job_id, .. } = *run;
        let url = input.loc.url_of(&unit.file.meta.location);
        let partition = input.partition(&unit.file);
        let (plan, batches) =
            self.lake.open_scored(model, cmd, &input.loc, &unit.file.meta, unit.row_groups.clone(), partition).await?;
        if let Some(expected) = run.table.and_then(|t| t.schema) {
            crate::delta::check_schema(expected, plan.output_schema(), &out.url)
                .map_err(|e| e.context(format!("input file {url}")))?;
        }
        let lineage = vec![
            ("lakescore.model".to_string(), manifest_model.name.clone()),
            ("lakescore.version".to_string(), manifest_model.version.to_string()),
            ("lakescore.sha256".to_string(), manifest_model.sha256.clone()),
            ("lakescore.job_id".to_string(), job_id.to_string()),
            ("lakescore.input".to_string(), url.clone()),
            (
                "lakescore.row_groups".to_string(),
                unit.row_groups.as_ref().map(|g| format!("{g:?}")).unwrap_or_else(|| "all".into()),
            ),
            ("lakescore.scored_at".to_string(), chrono::Utc::now().to_rfc3339()),
        ];
        let unit_id = Self::attempt_prefix(job_id, unit.index, run.epoch, attempt);
        // Both sinks commit their parts only: the job's manifest lists them once every unit
        // is done. An error drops them, which removes what they wrote.
        let parts = if run.table.is_some() { Commit::TableParts } else { Commit::Parts };
        let mut sink = (!settings.summary_only).then(|| {
            self.lake
                .sink(out.clone(), unit_id.clone(), plan.output_schema().clone(), manifest_model.clone(), parts)
                .with_metadata(lineage.clone())
        });
        let errors_loc = Location { path: out.child("_errors"), ..out.clone() };
        let mut errors: Option<OutputSink> = None;
        let (mut rows, mut bad_rows, mut seen) = (0u64, 0u64, 0u64);
        // Decoding, inference and writing overlap, as in the other scoring paths: the next
        // batch is read and scored while this one is written.
        let (model_s, plan_s) = (Arc::new(model.clone()), plan.clone());
        let mut scored_batches = batches
            .map(move |batch| {
                let (model, plan) = (model_s.clone(), plan_s.clone());
                async move {
                    let batch = batch?;
                    plan.check_batch(&batch)?;
                    let scoring = batch.clone();
                    let isolated = tokio::task::spawn_blocking(move || {
                        let mut out = Isolated { scored: Vec::new(), bad: Vec::new() };
                        score_isolating(&model, &plan, &scoring, 0, &mut out);
                        out
                    })
                    .await?;
                    Ok::<_, ScoreError>((batch, isolated))
                }
            })
            .buffered(2);
        while let Some(item) = scored_batches.next().await {
            let (batch, isolated) = item?;
            for scored in &isolated.scored {
                rows += scored.num_rows() as u64;
                if let Some(sink) = sink.as_mut() {
                    sink.write(scored).await?;
                }
            }
            if !isolated.bad.is_empty() {
                let rejected = error_rows(&batch, &isolated.bad, seen)?;
                bad_rows += rejected.num_rows() as u64;
                let sink = errors.get_or_insert_with(|| {
                    self.lake
                        .sink(
                            errors_loc.clone(),
                            unit_id.clone(),
                            rejected.schema(),
                            manifest_model.clone(),
                            Commit::Parts,
                        )
                        .with_metadata(lineage.clone())
                });
                sink.write(&rejected).await?;
            }
            seen += batch.num_rows() as u64;
        }
        let error_file = match errors {
            Some(sink) => sink.commit().await?.files.into_iter().next().map(|f| f.url),
            None => None,
        };
        let mut record = UnitRecord {
            unit: unit.index,
            input: url,
            row_groups: unit.row_groups.clone(),
            rows,
            error_rows: bad_rows,
            files: Vec::new(),
            error_file,
            attempts: attempt,
            failed: None,
        };
        if let Some(sink) = sink {
            record.files = sink.commit().await?.files;
        }
        Ok(record)
    }
}

mod table;

#[cfg(test)]
mod tests;
