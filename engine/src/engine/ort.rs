//! ONNX Runtime through `ort` (load-dynamic): the primary engine.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynMapValueType, DynValue, TensorElementType, ValueType as OrtValueType};

use super::zipmap::{strip_zipmaps, StrippedZipMap};
use super::{ElemType, Engine, IoInfo, LoadedModel, MapKeys, OutputValue, Tensor, TensorData, ValueType};
pub use crate::config::GraphOptimization;
use crate::error::{Result, ScoreError};

/// The ONNX Runtime release line the worker is built against (ort rc.15, API 31).
pub const REQUIRED_ORT_VERSION: &str = "1.31";

/// Options of the ONNX Runtime engine.
#[derive(Debug, Clone, Default)]
pub struct OrtOptions {
    /// The ONNX Runtime shared library; `None`: see [`find_onnxruntime`].
    pub library: Option<PathBuf>,
    /// Threads one inference call uses (`0`: one per core).
    pub intra_op_threads: usize,
    /// Graph optimization level.
    pub optimization: GraphOptimization,
    /// Bytes ONNX Runtime may allocate for inference (intermediate and output tensors) in
    /// this process, over all sessions; `0`: unbounded. Fixed by the first engine built.
    pub max_inference_bytes: usize,
    /// Whether intra-op threads spin while waiting (see `ScorerConfig::intra_op_spinning`).
    pub intra_op_spinning: bool,
}

/// The ONNX Runtime engine.
pub struct OrtEngine {
    env: ort::environment::Environment,
    options: OrtOptions,
    library: PathBuf,
}

impl std::fmt::Debug for OrtEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtEngine").field("library", &self.library).field("options", &self.options).finish()
    }
}

static ORT_ENV: OnceLock<(PathBuf, ort::environment::Environment)> = OnceLock::new();
static ORT_INIT: Mutex<()> = Mutex::new(());

impl OrtEngine {
    /// Load ONNX Runtime (once per process) and build the engine. Fails with
    /// `FAILED_PRECONDITION` naming the paths tried when no usable library is found, or the
    /// found and required versions when the library is too old.
    pub fn new(options: OrtOptions) -> Result<Self> {
        let (library, env) = match ORT_ENV.get() {
            Some((lib, env)) => (lib.clone(), env.clone()),
            None => {
                let _guard = ORT_INIT.lock().map_err(|_| ScoreError::internal("ORT init lock poisoned"))?;
                if let Some((lib, env)) = ORT_ENV.get() {
                    (lib.clone(), env.clone())
                } else {
                    let lib = find_onnxruntime(options.library.as_deref())?;
                    let env = ort::init_from(&lib)
                        .map_err(|e| {
                            ScoreError::FailedPrecondition(format!(
                                "ONNX Runtime at {} is not usable: {e}. lakescore needs ONNX Runtime {REQUIRED_ORT_VERSION}.x \
                                 (the onnxruntime=={REQUIRED_ORT_VERSION}.1 wheel's capi/libonnxruntime.so.{REQUIRED_ORT_VERSION}.1)",
                                lib.display()
                            ))
                        })?
                        .with_name("lakescore")
                        .with_telemetry(false)
                        .build()
                        .map_err(|e| ScoreError::FailedPrecondition(format!("cannot start ONNX Runtime: {e}")))?;
                    if options.max_inference_bytes > 0 {
                        register_bounded_arena(&env, options.max_inference_bytes).map_err(|e| {
                            ScoreError::FailedPrecondition(format!("cannot bound ONNX Runtime's memory: {e}"))
                        })?;
                    }
                    let _ = ORT_ENV.set((lib.clone(), env.clone()));
                    tracing::info!(library = %lib.display(), "ONNX Runtime loaded");
                    (lib, env)
                }
            }
        };
        if let Some(wanted) = &options.library {
            if wanted != &library {
                tracing::warn!(
                    wanted = %wanted.display(),
                    loaded = %library.display(),
                    "ONNX Runtime was already loaded from another path in this process"
                );
            }
        }
        Ok(Self { env, options, library })
    }

    /// The shared library in use.
    pub fn library(&self) -> &Path {
        &self.library
    }

    fn threads(&self) -> usize {
        if self.options.intra_op_threads > 0 {
            self.options.intra_op_threads
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        }
    }
}

/// Registers one CPU arena for the whole process, capped at `max_bytes`, that every session
/// allocates from (`with_env_allocators`): a run that needs more fails with an error (see
/// [`ort_err`]) instead of growing until the kernel kills the worker and every other
/// caller's stream with it. ort has no safe wrapper for arena settings, hence the raw API.
/// `arena_extend_strategy` 1 grows by what is requested, not by doubling, so the cap is not
/// overshot by a power of two. Initializers, and kernels' own scratch allocations, are not
/// counted: the bound is on the tensors a run creates.
fn register_bounded_arena(env: &ort::environment::Environment, max_bytes: usize) -> ort::Result<()> {
    use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
    use ort::AsPointer;
    let api = ort::api();
    let keys: [*const std::ffi::c_char; 2] = [c"max_mem".as_ptr(), c"arena_extend_strategy".as_ptr()];
    let values: [usize; 2] = [max_bytes, 1];
    let mut config: *mut ort::sys::OrtArenaCfg = std::ptr::null_mut();
    // SAFETY: two keys and two values, as passed; `config` is written by the call and
    // released below (the environment keeps its own copy of the settings).
    unsafe { ort::Error::result_from_status((api.CreateArenaCfgV2)(keys.as_ptr(), values.as_ptr(), 2, &mut config))? };
    let registered =
        MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Arena, MemoryType::Default).and_then(|info| {
            // SAFETY: the environment and memory info are alive for the call; `config` is valid.
            unsafe {
                ort::Error::result_from_status((api.CreateAndRegisterAllocator)(
                    env.ptr().cast_mut(),
                    info.ptr(),
                    config,
                ))
            }
        });
    // SAFETY: created above, released once.
    unsafe { (api.ReleaseArenaCfg)(config) };
    registered
}

/// ONNX Runtime's words when the arena registered by [`register_bounded_arena`] (or the
/// system) refuses an allocation.
fn out_of_memory(e: &ort::Error) -> bool {
    let m = e.message();
    m.contains("Available memory of") || m.contains("Failed to allocate memory")
}

fn ort_err(what: &str) -> impl Fn(ort::Error) -> ScoreError + '_ {
    move |e| match e.code() {
        ort::error::ErrorCode::InvalidArgument => ScoreError::InvalidArgument(format!("{what}: {e}")),
        _ if out_of_memory(&e) => ScoreError::ResourceExhausted(format!(
            "{what}: the model needs more memory than the worker allows for inference (max_inference_bytes): {e}"
        )),
        _ => ScoreError::Internal(format!("{what}: {e}")),
    }
}

impl Engine for OrtEngine {
    fn name(&self) -> &'static str {
        "ort"
    }

    fn load(&self, model: bytes::Bytes) -> Result<Box<dyn LoadedModel>> {
        // Serve ZipMap outputs from their probability tensor (see `zipmap`); if the
        // rewritten model does not load, the original is served as it is.
        if let Some((rewritten, stripped)) = strip_zipmaps(&model) {
            match self.session(&rewritten) {
                Ok(session) => return Ok(Box::new(OrtModel::new(session, &stripped))),
                Err(e) => tracing::warn!(error = %e, "model without ZipMap does not load; serving it unchanged"),
            }
        }
        Ok(Box::new(OrtModel::new(self.session(&model)?, &[])))
    }
}

impl OrtEngine {
    fn session(&self, model: &[u8]) -> Result<Session> {
        let level = match self.options.optimization {
            GraphOptimization::Disable => GraphOptimizationLevel::Disable,
            GraphOptimization::Basic => GraphOptimizationLevel::Level1,
            GraphOptimization::Extended => GraphOptimizationLevel::Level2,
            GraphOptimization::All => GraphOptimizationLevel::All,
        };
        let failed = |e: ort::Error| ScoreError::FailedPrecondition(format!("ONNX Runtime cannot load the model: {e}"));
        Session::builder(&self.env)
            .map_err(failed)?
            .with_optimization_level(level)
            .map_err(|e| failed(e.into()))?
            .with_intra_threads(self.threads())
            .map_err(|e| failed(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| failed(e.into()))?
            // The process-wide arena, bounded by max_inference_bytes, when one is registered.
            .with_env_allocators()
            .map_err(|e| failed(e.into()))?
            .with_intra_op_spinning(self.options.intra_op_spinning)
            .map_err(|e| failed(e.into()))?
            .commit_from_memory(model)
            .map_err(failed)
    }
}

struct OrtModel {
    session: Mutex<Session>,
    inputs: Vec<IoInfo>,
    /// The outputs as the original model declares them (ZipMap outputs as seq(map)).
    outputs: Vec<IoInfo>,
    /// Per output: the session output to read, and the class labels when it stands for a
    /// stripped ZipMap.
    sources: Vec<(String, Option<MapKeys>)>,
}

impl OrtModel {
    fn new(session: Session, stripped: &[StrippedZipMap]) -> Self {
        let inputs = session.inputs().iter().map(|o| io_info(o.name(), o.dtype())).collect();
        let mut outputs = Vec::new();
        let mut sources = Vec::new();
        for o in session.outputs() {
            match stripped.iter().find(|z| z.tensor == o.name()) {
                Some(z) => {
                    outputs.push(IoInfo {
                        name: z.output.clone(),
                        info: ValueType::SeqMap {
                            key: match z.keys {
                                MapKeys::Int64(_) => ElemType::Int64,
                                MapKeys::String(_) => ElemType::String,
                            },
                            value: ElemType::Float32,
                        },
                    });
                    sources.push((o.name().to_string(), Some(z.keys.clone())));
                }
                None => {
                    outputs.push(io_info(o.name(), o.dtype()));
                    sources.push((o.name().to_string(), None));
                }
            }
        }
        Self { session: Mutex::new(session), inputs, outputs, sources }
    }
}

fn elem_type(t: &TensorElementType) -> ElemType {
    match t {
        TensorElementType::Float32 => ElemType::Float32,
        TensorElementType::Float64 => ElemType::Float64,
        TensorElementType::Int32 => ElemType::Int32,
        TensorElementType::Int64 => ElemType::Int64,
        TensorElementType::Bool => ElemType::Bool,
        TensorElementType::String => ElemType::String,
        other => ElemType::Other(format!("{other}")),
    }
}

fn io_info(name: &str, dtype: &OrtValueType) -> IoInfo {
    let info = match dtype {
        OrtValueType::Tensor { ty, shape, .. } => {
            ValueType::Tensor { elem: elem_type(ty), shape: shape.iter().map(|d| (*d >= 0).then_some(*d)).collect() }
        }
        OrtValueType::Sequence(inner) => match inner.as_ref() {
            OrtValueType::Map { key, value } => ValueType::SeqMap { key: elem_type(key), value: elem_type(value) },
            other => ValueType::Other { description: format!("seq({other})") },
        },
        other => ValueType::Other { description: format!("{other}") },
    };
    IoInfo { name: name.to_string(), info }
}

fn to_ort_value(name: &str, tensor: Tensor) -> Result<DynValue> {
    let what = format!("model input '{name}'");
    let shape = tensor.shape;
    let value = match tensor.data {
        TensorData::Float32(v) => ort::value::Tensor::from_array((shape, v)).map(|t| t.into_dyn()),
        TensorData::Float64(v) => ort::value::Tensor::from_array((shape, v)).map(|t| t.into_dyn()),
        TensorData::Int32(v) => ort::value::Tensor::from_array((shape, v)).map(|t| t.into_dyn()),
        TensorData::Int64(v) => ort::value::Tensor::from_array((shape, v)).map(|t| t.into_dyn()),
        TensorData::Bool(v) => ort::value::Tensor::from_array((shape, v)).map(|t| t.into_dyn()),
        TensorData::String(v) => {
            if let Some(row) = v.iter().position(|s| s.contains('\0')) {
                return Err(ScoreError::InvalidArgument(format!(
                    "{what}: string at row {row} contains a NUL character"
                )));
            }
            ort::value::Tensor::from_string_array((shape, &v[..])).map(|t| t.into_dyn())
        }
    };
    value.map_err(ort_err(&what))
}

fn dims(shape: &[i64]) -> Vec<usize> {
    shape.iter().map(|d| (*d).max(0) as usize).collect()
}

fn from_ort_value(name: &str, value: &DynValue) -> Result<OutputValue> {
    let what = format!("model output '{name}'");
    let err = ort_err(&what);
    match value.dtype() {
        OrtValueType::Tensor { ty, .. } => {
            let (shape, data) = match ty {
                TensorElementType::Float32 => {
                    let (s, d) = value.try_extract_tensor::<f32>().map_err(&err)?;
                    (dims(s), TensorData::Float32(d.to_vec()))
                }
                TensorElementType::Float64 => {
                    let (s, d) = value.try_extract_tensor::<f64>().map_err(&err)?;
                    (dims(s), TensorData::Float64(d.to_vec()))
                }
                TensorElementType::Int32 => {
                    let (s, d) = value.try_extract_tensor::<i32>().map_err(&err)?;
                    (dims(s), TensorData::Int32(d.to_vec()))
                }
                TensorElementType::Int64 => {
                    let (s, d) = value.try_extract_tensor::<i64>().map_err(&err)?;
                    (dims(s), TensorData::Int64(d.to_vec()))
                }
                TensorElementType::Bool => {
                    let (s, d) = value.try_extract_tensor::<bool>().map_err(&err)?;
                    (dims(s), TensorData::Bool(d.to_vec()))
                }
                TensorElementType::String => {
                    let (s, d) = value.try_extract_strings().map_err(&err)?;
                    (dims(s), TensorData::String(d))
                }
                other => {
                    return Err(ScoreError::FailedPrecondition(format!(
                        "{what} has element type {other}, which lakescore cannot return"
                    )))
                }
            };
            Ok(OutputValue::Tensor(Tensor { shape, data }))
        }
        OrtValueType::Sequence(inner) => match inner.as_ref() {
            OrtValueType::Map { key, value: val } => {
                let maps = value.try_extract_sequence::<DynMapValueType>().map_err(&err)?;
                let rows = maps.len();
                match (key, val) {
                    (TensorElementType::Int64, TensorElementType::Float32) => {
                        let kv: Vec<Vec<(i64, f32)>> = maps
                            .iter()
                            .map(|m| m.try_extract_key_values::<i64, f32>())
                            .collect::<std::result::Result<_, _>>()
                            .map_err(&err)?;
                        let (keys, values) = align_rows(&what, kv)?;
                        Ok(OutputValue::SeqMap {
                            keys: MapKeys::Int64(keys),
                            values: TensorData::Float32(values),
                            rows,
                        })
                    }
                    (TensorElementType::String, TensorElementType::Float32) => {
                        let kv: Vec<Vec<(String, f32)>> = maps
                            .iter()
                            .map(|m| m.try_extract_key_values::<String, f32>())
                            .collect::<std::result::Result<_, _>>()
                            .map_err(&err)?;
                        let (keys, values) = align_rows(&what, kv)?;
                        Ok(OutputValue::SeqMap {
                            keys: MapKeys::String(keys),
                            values: TensorData::Float32(values),
                            rows,
                        })
                    }
                    (TensorElementType::Int64, TensorElementType::Float64) => {
                        let kv: Vec<Vec<(i64, f64)>> = maps
                            .iter()
                            .map(|m| m.try_extract_key_values::<i64, f64>())
                            .collect::<std::result::Result<_, _>>()
                            .map_err(&err)?;
                        let (keys, values) = align_rows(&what, kv)?;
                        Ok(OutputValue::SeqMap {
                            keys: MapKeys::Int64(keys),
                            values: TensorData::Float64(values),
                            rows,
                        })
                    }
                    (TensorElementType::String, TensorElementType::Float64) => {
                        let kv: Vec<Vec<(String, f64)>> = maps
                            .iter()
                            .map(|m| m.try_extract_key_values::<String, f64>())
                            .collect::<std::result::Result<_, _>>()
                            .map_err(&err)?;
                        let (keys, values) = align_rows(&what, kv)?;
                        Ok(OutputValue::SeqMap {
                            keys: MapKeys::String(keys),
                            values: TensorData::Float64(values),
                            rows,
                        })
                    }
                    (k, v) => Err(ScoreError::FailedPrecondition(format!(
                        "{what} is seq(map({k}, {v})), which lakescore cannot return"
                    ))),
                }
            }
            other => {
                Err(ScoreError::FailedPrecondition(format!("{what} is seq({other}), which lakescore cannot return")))
            }
        },
        other => Err(ScoreError::FailedPrecondition(format!("{what} is {other}, which lakescore cannot return"))),
    }
}

/// Turn per-row key/value lists into (keys of the first row, row-major values), checking
/// that every row has the same keys (reordering when a row lists them differently).
fn align_rows<K: Clone + PartialEq, V: Copy>(what: &str, rows: Vec<Vec<(K, V)>>) -> Result<(Vec<K>, Vec<V>)> {
    let Some(first) = rows.first() else {
        return Ok((Vec::new(), Vec::new()));
    };
    let keys: Vec<K> = first.iter().map(|(k, _)| k.clone()).collect();
    let mut values = Vec::with_capacity(rows.len() * keys.len());
    for (i, row) in rows.iter().enumerate() {
        if row.len() != keys.len() {
            return Err(ScoreError::Internal(format!(
                "{what}: row {i} has {} keys, row 0 has {}",
                row.len(),
                keys.len()
            )));
        }
        if row.iter().zip(&keys).all(|((k, _), want)| k == want) {
            values.extend(row.iter().map(|(_, v)| *v));
        } else {
            for want in &keys {
                let v = row
                    .iter()
                    .find(|(k, _)| k == want)
                    .map(|(_, v)| *v)
                    .ok_or_else(|| ScoreError::Internal(format!("{what}: row {i} has other keys than row 0")))?;
                values.push(v);
            }
        }
    }
    Ok((keys, values))
}

impl LoadedModel for OrtModel {
    fn engine(&self) -> &'static str {
        "ort"
    }

    fn inputs(&self) -> &[IoInfo] {
        &self.inputs
    }

    fn outputs(&self) -> &[IoInfo] {
        &self.outputs
    }

    fn run(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<OutputValue>> {
        let mut values: Vec<(String, SessionInputValue<'static>)> = Vec::with_capacity(inputs.len());
        for (name, tensor) in inputs {
            let v = to_ort_value(&name, tensor)?;
            values.push((name, v.into()));
        }
        // Take the output values out of the session's result and release the session, so
        // that the next batch can run while this one's outputs are converted.
        let values: Vec<DynValue> = {
            let mut session = self.session.lock().map_err(|_| ScoreError::internal("model session lock poisoned"))?;
            let mut outputs = session.run(values).map_err(ort_err("ONNX Runtime run failed"))?;
            self.sources
                .iter()
                .map(|(name, _)| {
                    outputs
                        .remove(name)
                        .ok_or_else(|| ScoreError::Internal(format!("ONNX Runtime returned no output '{name}'")))
                })
                .collect::<Result<_>>()?
        };
        self.outputs
            .iter()
            .zip(&self.sources)
            .zip(&values)
            .map(|((io, (_, keys)), value)| {
                let out = from_ort_value(&io.name, value)?;
                match (keys, out) {
                    (None, out) => Ok(out),
                    (Some(keys), OutputValue::Tensor(Tensor { shape, data: TensorData::Float32(values) }))
                        if shape.len() == 2 && shape[1] == keys.len() =>
                    {
                        Ok(OutputValue::SeqMap {
                            keys: keys.clone(),
                            values: TensorData::Float32(values),
                            rows: shape[0],
                        })
                    }
                    (Some(_), _) => Err(ScoreError::Internal(format!(
                        "model output '{}': the ZipMap input is not a [N, classes] float tensor",
                        io.name
                    ))),
                }
            })
            .collect()
    }
}

/// Find the ONNX Runtime shared library, without downloading anything:
/// 1. `explicit` (`--onnxruntime-lib`);
/// 2. `LAKESCORE_ONNXRUNTIME_LIB`, then `ORT_DYLIB_PATH`;
/// 3. a project-local install: `./lakescore-data/onnxruntime/`, then next to the executable
///    (`<exe dir>/` and `<exe dir>/onnxruntime/`);
/// 4. the `onnxruntime` package of `$VIRTUAL_ENV/bin/python`, then of `python3` on `PATH`.
///
/// A directory anywhere above is searched for `libonnxruntime.so*` (`.dylib`, `.dll`).
pub fn find_onnxruntime(explicit: Option<&Path>) -> Result<PathBuf> {
    let mut tried: Vec<String> = Vec::new();
    let mut candidates: Vec<(String, PathBuf)> = Vec::new();
    if let Some(p) = explicit {
        candidates.push(("--onnxruntime-lib".into(), p.to_path_buf()));
    }
    for var in ["LAKESCORE_ONNXRUNTIME_LIB", "ORT_DYLIB_PATH"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            candidates.push((var.into(), PathBuf::from(v)));
        }
    }
    // An explicitly named library must be that one: no silent fallback.
    if let Some((origin, path)) = candidates.first() {
        return library_in(path).ok_or_else(|| {
            ScoreError::FailedPrecondition(format!("no ONNX Runtime library at {} (from {origin})", path.display()))
        });
    }
    candidates.push(("project".into(), PathBuf::from("lakescore-data/onnxruntime")));
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        candidates.push(("next to the binary".into(), dir.clone()));
        candidates.push(("next to the binary".into(), dir.join("onnxruntime")));
    }
    for (_, path) in &candidates {
        if let Some(lib) = library_in(path) {
            return Ok(lib);
        }
        tried.push(path.display().to_string());
    }
    let mut pythons: Vec<PathBuf> = Vec::new();
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        pythons.push(PathBuf::from(venv).join("bin").join("python"));
    }
    pythons.push(PathBuf::from("python3"));
    for python in pythons {
        let out = std::process::Command::new(&python)
            .args(["-c", "import os, onnxruntime; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))"])
            .stderr(std::process::Stdio::null())
            .output();
        if let Ok(out) = out {
            if out.status.success() {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if let Some(lib) = library_in(&dir) {
                    return Ok(lib);
                }
                tried.push(dir.display().to_string());
                continue;
            }
        }
        tried.push(format!("the onnxruntime package of {}", python.display()));
    }
    Err(ScoreError::FailedPrecondition(format!(
        "ONNX Runtime {REQUIRED_ORT_VERSION}.x not found; set --onnxruntime-lib / LAKESCORE_ONNXRUNTIME_LIB / \
         ORT_DYLIB_PATH to libonnxruntime.so.{REQUIRED_ORT_VERSION}.1, or `pip install onnxruntime=={REQUIRED_ORT_VERSION}.1`. \
         Tried: {}",
        tried.join(", ")
    )))
}

/// `path` itself when it is a file, else the best ONNX Runtime library inside the directory.
fn library_in(path: &Path) -> Option<PathBuf> {
    if path.is_file() {
        return Some(path.to_path_buf());
    }
    let entries = std::fs::read_dir(path).ok()?;
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                let lib = n.starts_with("libonnxruntime.so")
                    || (n.starts_with("libonnxruntime") && n.ends_with(".dylib"))
                    || n == "onnxruntime.dll";
                lib && !n.contains("providers")
            })
        })
        .filter(|p| p.is_file())
        .collect();
    // Prefer the most specific name (libonnxruntime.so.1.31.1 over libonnxruntime.so).
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_library_in_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(library_in(dir.path()), None);
        std::fs::write(dir.path().join("libonnxruntime_providers_shared.so"), b"").unwrap();
        assert_eq!(library_in(dir.path()), None);
        std::fs::write(dir.path().join("libonnxruntime.so.1.31.1"), b"").unwrap();
        assert_eq!(library_in(dir.path()), Some(dir.path().join("libonnxruntime.so.1.31.1")));
    }

    #[test]
    fn aligns_zipmap_rows() {
        let rows = vec![vec![(0i64, 0.25f32), (1, 0.75)], vec![(1, 0.5), (0, 0.5)]];
        let (k, v) = align_rows("o", rows).unwrap();
        assert_eq!(k, vec![0, 1]);
        assert_eq!(v, vec![0.25, 0.75, 0.5, 0.5]);
        assert!(align_rows("o", vec![vec![(0i64, 1f32)], vec![(2, 1.0)]]).is_err());
    }
}
