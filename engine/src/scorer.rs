//! The transport-independent core: resolve + load models, plan, score streams of batches.
//! Lake I/O (`lakescore-lake`) and the transports (`lakescore-flight`, `lakescore-sql`) are
//! layers over it.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use lakescore_proto::ScoreCommand;
use tracing::Instrument;

use crate::cache::{ModelCache, ModelHandle};
use crate::config::{Backend, ScorerConfig};
use crate::engine::trees::TreesEngine;
use crate::engine::Engine;
use crate::error::{Result, ScoreError};
use crate::mapping::{PlanOptions, ScorePlan};
use crate::metrics::ScoreMeter;
use crate::source::{model_source_from_url, Credentials, HttpSourceOptions, ModelSource, ModelVersion, VersionStatus};
use lakescore_core::reference::ModelRef;

/// A model resolved for one request and loaded.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    /// The reference as given.
    pub reference: String,
    /// The version record.
    pub version: ModelVersion,
    /// The loaded model.
    pub handle: Arc<ModelHandle>,
    /// Whether it came from the cache.
    pub cached: bool,
    /// Where its scoring is counted.
    pub meter: ScoreMeter,
}

/// The engine `config.backend` selects: `ort`: ONNX Runtime or an error; `trees`: the native
/// engine alone; `tract`: tract; `auto`: the native engine for the graphs it fully
/// covers, ONNX Runtime for the rest when its library loads, else tract with a loud warning
/// (models with other `ai.onnx.ml` operators are then refused with `FAILED_PRECONDITION`
/// naming why ONNX Runtime is missing). A build without the `ort` or `tract` feature answers
/// for that engine as for a missing library.
pub fn engine_for(config: &ScorerConfig) -> Result<Arc<dyn Engine>> {
    let trees = |fallback: Arc<dyn Engine>| -> Arc<dyn Engine> {
        Arc::new(TreesEngine::new(Some(fallback), config.intra_op_threads))
    };
    match config.backend {
        Backend::Ort => ort_engine(config),
        Backend::Trees => {
            tracing::info!("backend trees: tree ensembles and linear models run natively; other models are refused");
            Ok(Arc::new(TreesEngine::new(None, config.intra_op_threads)))
        }
        Backend::Tract => {
            tracing::info!("backend tract: models run on tract-onnx; models with ai.onnx.ml operators are refused");
            tract_engine(None)
        }
        Backend::Auto => match ort_engine(config) {
            Ok(engine) => Ok(trees(engine)),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "ONNX RUNTIME IS NOT AVAILABLE: falling back to the tract engine (pure Rust). Tree ensembles and \
                     linear models run on the native engine and plain tensor models on tract; models with other \
                     ai.onnx.ml operators (scalers, encoders, SVMs) are refused with FAILED_PRECONDITION. Install onnxruntime 1.31 or set \
                     --onnxruntime-lib to serve them"
                );
                match tract_engine(Some(e.message())) {
                    Ok(tract) => Ok(trees(tract)),
                    Err(_) => Ok(Arc::new(TreesEngine::new(None, config.intra_op_threads))),
                }
            }
        },
    }
}

#[cfg(feature = "ort")]
fn ort_engine(config: &ScorerConfig) -> Result<Arc<dyn Engine>> {
    use crate::engine::ort::{OrtEngine, OrtOptions};
    let engine = OrtEngine::new(OrtOptions {
        library: config.onnxruntime_lib.clone(),
        intra_op_threads: config.intra_op_threads,
        optimization: config.graph_optimization,
        max_inference_bytes: config.max_inference_bytes,
        intra_op_spinning: config.intra_op_spinning,
    })?;
    Ok(Arc::new(engine))
}

#[cfg(not(feature = "ort"))]
fn ort_engine(_: &ScorerConfig) -> Result<Arc<dyn Engine>> {
    Err(ScoreError::FailedPrecondition("this build of the worker has no ONNX Runtime engine (feature `ort`)".into()))
}

/// tract; as the fallback for ONNX Runtime when `missing_ort` says why that is missing.
#[cfg(feature = "tract")]
fn tract_engine(missing_ort: Option<&str>) -> Result<Arc<dyn Engine>> {
    use crate::engine::tract::TractEngine;
    Ok(match missing_ort {
        Some(why) => Arc::new(TractEngine::fallback(why)),
        None => Arc::new(TractEngine::new()),
    })
}

#[cfg(not(feature = "tract"))]
fn tract_engine(_: Option<&str>) -> Result<Arc<dyn Engine>> {
    Err(ScoreError::FailedPrecondition("this build of the worker has no tract engine (feature `tract`)".into()))
}

/// The scoring worker's core. Cheap to share (`Arc<Scorer>`).
pub struct Scorer {
    config: ScorerConfig,
    cache: ModelCache,
    /// Cancelled when the process stops waiting for in-flight work (see [`Scorer::cancel_streams`]).
    shutdown: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorer").field("cache", &self.cache).finish()
    }
}

/// A stream of record batches or errors.
pub type BatchStream = BoxStream<'static, Result<RecordBatch>>;

impl Scorer {
    /// Build from configuration: the model source from `model_source`, the engine that
    /// `backend` selects (see [`engine_for`]).
    pub fn from_config(config: ScorerConfig) -> Result<Self> {
        if config.model_source.is_empty() {
            return Err(ScoreError::invalid("no model source configured (registry URL or dir:///path)"));
        }
        let source = model_source_from_url(
            &config.model_source,
            HttpSourceOptions { timeout: config.registry_timeout, max_artifact_bytes: config.max_artifact_bytes },
        )?;
        let engine = engine_for(&config)?;
        Self::with_parts(config, source, engine)
    }

    /// Build from explicit parts (another model source or engine).
    pub fn with_parts(config: ScorerConfig, source: Arc<dyn ModelSource>, engine: Arc<dyn Engine>) -> Result<Self> {
        let cache = ModelCache::new(engine, source, config.model_cache_bytes);
        Ok(Self { config, cache, shutdown: tokio_util::sync::CancellationToken::new() })
    }

    /// Ends every scoring stream in flight, now and later, with `UNAVAILABLE`: for a
    /// shutdown whose grace period is over. Writes of scored rows take their error path
    /// (partial files removed, nothing committed), so nothing half-written is left behind.
    pub fn cancel_streams(&self) {
        self.shutdown.cancel();
    }

    /// The configuration.
    pub fn config(&self) -> &ScorerConfig {
        &self.config
    }

    /// The model cache.
    pub fn cache(&self) -> &ModelCache {
        &self.cache
    }

    /// Resolve a reference with the caller's credentials and load the model.
    pub async fn resolve_model(&self, reference: &str, creds: &Credentials) -> Result<ResolvedModel> {
        let model_ref = ModelRef::parse(reference)?;
        let version = self.cache.source().resolve(&model_ref, creds).await?;
        if version.status == VersionStatus::Archived {
            return Err(ScoreError::FailedPrecondition(format!("model {} is archived", version.pinned_reference())));
        }
        let (handle, cached) = self.cache.get(&version, creds).await?;
        let meter = ScoreMeter::new(&version.model, handle.engine);
        Ok(ResolvedModel { reference: reference.to_string(), version, handle, cached, meter })
    }

    /// Plan scoring of batches of `schema` with `model` as `cmd` says.
    pub fn plan(&self, model: &ResolvedModel, cmd: &ScoreCommand, schema: SchemaRef) -> Result<Arc<ScorePlan>> {
        let mut metadata = HashMap::new();
        metadata.insert("lakescore.model".to_string(), model.version.model.clone());
        metadata.insert("lakescore.version".to_string(), model.version.version.to_string());
        metadata.insert("lakescore.sha256".to_string(), model.version.sha256.clone());
        let options = PlanOptions { metadata, model_defines_missing: model.handle.defines_missing };
        let plan = ScorePlan::new(cmd, schema, model.handle.model.inputs(), &model.handle.outputs, options)?;
        Ok(Arc::new(plan))
    }

    fn chunk_rows(&self, cmd: &ScoreCommand, plan: &ScorePlan) -> usize {
        if let Some(fixed) = plan.fixed_rows() {
            return fixed;
        }
        let configured = self.config.inference_batch_rows.max(1);
        match cmd.batch_size as usize {
            0 => configured,
            n => n.min(configured),
        }
    }

    /// Score a stream of batches (all of `plan`'s input schema): same rows, same order.
    /// Batches are checked against the size limits, split / merged to the inference batch
    /// size, and scored on blocking threads with two chunks in flight.
    pub fn score_stream<S>(
        &self,
        model: &ResolvedModel,
        plan: Arc<ScorePlan>,
        cmd: &ScoreCommand,
        input: S,
    ) -> BatchStream
    where
        S: Stream<Item = Result<RecordBatch>> + Send + 'static,
    {
        let max_rows = self.config.max_batch_rows;
        let max_bytes = self.config.max_batch_bytes;
        let check_plan = plan.clone();
        let checked = input.map(move |b| {
            let b = b?;
            if b.num_rows() > max_rows {
                return Err(ScoreError::ResourceExhausted(format!(
                    "a batch of {} rows is over the worker's limit of {max_rows} rows",
                    b.num_rows()
                )));
            }
            let bytes = batch_bytes(&b);
            if bytes > max_bytes {
                return Err(ScoreError::ResourceExhausted(format!(
                    "a batch of {bytes} bytes is over the worker's limit of {max_bytes} bytes"
                )));
            }
            check_plan.check_batch(&b)?;
            Ok(b)
        });
        let chunks = Rechunk::new(Box::pin(checked), plan.input_schema().clone(), self.chunk_rows(cmd, &plan));
        let model = Arc::new(model.clone());
        let name = format!("{}:{}", model.version.model, model.version.version);
        let scored = chunks
            .map(move |chunk| {
                let model = model.clone();
                let plan = plan.clone();
                let name = name.clone();
                async move {
                    let chunk = chunk?;
                    tokio::task::spawn_blocking(move || score_chunk(&model, &plan, &chunk)).await?.map_err(|e| {
                        // Which model ran out of its memory bound, for the caller and the log.
                        match e {
                            ScoreError::ResourceExhausted(_) => e.context(format!("model {name}")),
                            e => e,
                        }
                    })
                }
            })
            .buffered(2)
            .boxed();
        until_cancelled(scored, self.shutdown.clone())
    }
}

/// `stream`, ended by an `UNAVAILABLE` error once `cancel` fires (never silently: a stream
/// that just stopped would let a writer commit a partial result).
fn until_cancelled(stream: BatchStream, cancel: tokio_util::sync::CancellationToken) -> BatchStream {
    futures::stream::unfold(Some((stream, cancel)), |state| async move {
        let (mut stream, cancel) = state?;
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Some((
                Err(ScoreError::Unavailable(
                    "the worker is shutting down and its grace period is over: the job was cancelled \
                     (any partial output removed); retry on another worker"
                        .into(),
                )),
                None,
            )),
            item = stream.next() => item.map(|item| (item, Some((stream, cancel)))),
        }
    })
    .boxed()
}

/// Drives `stream` in a task of its own, up to `ahead` items ahead of the consumer, so that
/// its work (decoding, scoring, a query) runs while the consumer handles the items before.
/// A consumer that stops (drops the returned stream) drops `stream` at once, as if it had
/// been polled directly: a client that goes away cancels its query or scoring.
pub fn run_ahead<T: Send + 'static>(mut stream: BoxStream<'static, T>, ahead: usize) -> BoxStream<'static, T> {
    let (tx, rx) = tokio::sync::mpsc::channel(ahead.max(1));
    tokio::spawn(
        async move {
            loop {
                let item = tokio::select! {
                    _ = tx.closed() => break,
                    item = stream.next() => item,
                };
                let Some(item) = item else { break };
                if tx.send(item).await.is_err() {
                    break;
                }
            }
        }
        .in_current_span(),
    );
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

/// Bytes of a batch's rows themselves. Columns decoded from one IPC message share its
/// buffer, so per-array buffer capacities would count that whole buffer once per column.
pub fn batch_bytes(batch: &RecordBatch) -> usize {
    batch.columns().iter().map(|c| array_bytes(&c.to_data())).sum()
}

/// An array's bytes: its slice's, as arrow counts them, plus the data buffers of string and
/// binary views, which arrow's count leaves out (whole buffers: at least the slice's data).
fn array_bytes(data: &arrow::array::ArrayData) -> usize {
    data.get_slice_memory_size().unwrap_or_else(|_| data.get_buffer_memory_size()) + view_data_bytes(data)
}

/// The lengths of the view data buffers in `data` and its children.
fn view_data_bytes(data: &arrow::array::ArrayData) -> usize {
    let layout = arrow::array::layout(data.data_type());
    let own: usize = match layout.variadic {
        true => data.buffers().iter().skip(layout.buffers.len()).map(|b| b.len()).sum(),
        false => 0,
    };
    own + data.child_data().iter().map(view_data_bytes).sum::<usize>()
}

/// Score one chunk (blocking), counted in the model's meter.
pub fn score_chunk(model: &ResolvedModel, plan: &ScorePlan, chunk: &RecordBatch) -> Result<RecordBatch> {
    if chunk.num_rows() == 0 {
        return Ok(plan.empty_output());
    }
    let started = Instant::now();
    let handle = &model.handle;
    // Only a model that takes columns has them looked up: the others always get the tensor.
    let columns = if handle.model.takes_columns() { plan.float_columns(chunk) } else { None };
    let outputs = match columns {
        Some(columns) => handle.model.run_columns(&columns, chunk.num_rows())?,
        None => handle.model.run(plan.feeds(chunk)?)?,
    };
    let scored = plan.assemble(chunk, outputs)?;
    model.meter.record(chunk.num_rows(), started.elapsed());
    Ok(scored)
}

/// Splits / merges a stream of batches into chunks of `target` rows, without waiting for
/// more input when the inner stream is not ready (so a client that waits for each answer
/// before sending more is never stalled).
struct Rechunk {
    inner: Pin<Box<dyn Stream<Item = Result<RecordBatch>> + Send>>,
    schema: SchemaRef,
    target: usize,
    buf: VecDeque<RecordBatch>,
    buffered: usize,
    done: bool,
}

impl Rechunk {
    fn new(inner: Pin<Box<dyn Stream<Item = Result<RecordBatch>> + Send>>, schema: SchemaRef, target: usize) -> Self {
        Self { inner, schema, target: target.max(1), buf: VecDeque::new(), buffered: 0, done: false }
    }

    fn take(&mut self, n: usize) -> Result<RecordBatch> {
        let mut parts = Vec::new();
        let mut need = n;
        while need > 0 {
            let Some(front) = self.buf.pop_front() else { break };
            let rows = front.num_rows();
            if rows <= need {
                need -= rows;
                parts.push(front);
            } else {
                parts.push(front.slice(0, need));
                self.buf.push_front(front.slice(need, rows - need));
                need = 0;
            }
        }
        self.buffered -= n - need;
        if parts.len() == 1 {
            return Ok(parts.remove(0));
        }
        Ok(arrow::compute::concat_batches(&self.schema, &parts)?)
    }
}

impl Stream for Rechunk {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.buffered >= this.target {
                let n = this.target;
                return Poll::Ready(Some(this.take(n)));
            }
            if this.done {
                if this.buffered > 0 {
                    let n = this.buffered;
                    return Poll::Ready(Some(this.take(n)));
                }
                return Poll::Ready(None);
            }
            match this.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(b))) => {
                    if b.num_rows() > 0 {
                        this.buffered += b.num_rows();
                        this.buf.push_back(b);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    this.buf.clear();
                    this.buffered = 0;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => this.done = true,
                Poll::Pending => {
                    if this.buffered > 0 {
                        let n = this.buffered;
                        return Poll::Ready(Some(this.take(n)));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use futures::TryStreamExt;

    fn batch(schema: &SchemaRef, range: std::ops::Range<i64>) -> RecordBatch {
        RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from_iter_values(range))]).unwrap()
    }

    #[tokio::test]
    async fn rechunk_splits_and_merges_in_order() {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let input = vec![
            Ok(batch(&schema, 0..3)),
            Ok(batch(&schema, 3..3)),
            Ok(batch(&schema, 3..10)),
            Ok(batch(&schema, 10..11)),
        ];
        let out: Vec<RecordBatch> =
            Rechunk::new(Box::pin(futures::stream::iter(input)), schema.clone(), 4).try_collect().await.unwrap();
        let sizes: Vec<usize> = out.iter().map(|b| b.num_rows()).collect();
        assert_eq!(sizes, vec![4, 4, 3]);
        let all: Vec<i64> = out
            .iter()
            .flat_map(|b| {
                let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().clone();
                (0..a.len()).map(move |i| a.value(i))
            })
            .collect();
        assert_eq!(all, (0..11).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn run_ahead_keeps_order_and_drops_its_stream_when_the_consumer_goes() {
        let items: Vec<i32> = run_ahead(futures::stream::iter(0..100).boxed(), 3).collect().await;
        assert_eq!(items, (0..100).collect::<Vec<_>>());

        // A stream that never yields (a query still computing) is dropped as soon as its
        // consumer is, not at its next item.
        struct DropFlag(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for DropFlag {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = DropFlag(dropped.clone());
        let pending = futures::stream::pending::<i32>().map(move |i| {
            let _ = &flag;
            i
        });
        let consumer = run_ahead(pending.boxed(), 2);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!dropped.load(std::sync::atomic::Ordering::SeqCst), "dropped while its consumer was there");
        drop(consumer);
        for _ in 0..100 {
            if dropped.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the stream outlived its consumer by a second");
    }

    #[tokio::test]
    async fn cancelled_streams_end_with_unavailable() {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let cancel = tokio_util::sync::CancellationToken::new();
        // A stream that yields one batch, then waits forever (a client that went quiet).
        let input = futures::stream::iter(vec![Ok(batch(&schema, 0..3))]).chain(futures::stream::pending()).boxed();
        let mut stream = until_cancelled(input, cancel.clone());
        assert_eq!(stream.next().await.map(|b| b.map(|b| b.num_rows())), Some(Ok(3)));
        cancel.cancel();
        let end = stream.next().await.expect("an error item, not a silent end");
        assert!(matches!(end, Err(ScoreError::Unavailable(_))), "{end:?}");
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn rechunk_stops_at_the_first_error() {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let input = vec![Ok(batch(&schema, 0..3)), Err(ScoreError::invalid("boom")), Ok(batch(&schema, 0..3))];
        let out: Vec<Result<RecordBatch>> =
            Rechunk::new(Box::pin(futures::stream::iter(input)), schema, 100).collect().await;
        assert_eq!(out.len(), 1);
        assert!(out[0].is_err());
    }
}
