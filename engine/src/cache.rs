//! Loaded models, cached by artifact sha256 in an LRU bounded in bytes. Concurrent first
//! requests for one model load it once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::engine::probe::{probe_outputs, ResolvedOutput};
use crate::engine::{Engine, LoadedModel};
use crate::error::{Result, ScoreError};
use crate::metrics;
use crate::source::{Credentials, ModelSource, ModelVersion};

/// A loaded model with what the mapping layer needs to know about its outputs.
pub struct ModelHandle {
    /// The artifact's sha256.
    pub sha256: String,
    /// The engine that loaded it.
    pub engine: &'static str,
    /// The runnable model.
    pub model: Box<dyn LoadedModel>,
    /// Per-row output shapes (from a probe run at load time).
    pub outputs: Vec<ResolvedOutput>,
    /// Whether the model defines what a missing value is
    /// ([`crate::engine::defines_missing_values`]).
    pub defines_missing: bool,
    /// How long fetching + loading took.
    pub load_time: Duration,
    /// Artifact size in bytes (the cache's cost of this entry).
    pub size: u64,
}

impl std::fmt::Debug for ModelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelHandle")
            .field("sha256", &self.sha256)
            .field("engine", &self.engine)
            .field("outputs", &self.outputs)
            .field("defines_missing", &self.defines_missing)
            .field("size", &self.size)
            .finish()
    }
}

struct Entry {
    cell: Arc<OnceCell<Arc<ModelHandle>>>,
    last_used: u64,
}

/// See the module documentation.
pub struct ModelCache {
    engine: Arc<dyn Engine>,
    source: Arc<dyn ModelSource>,
    capacity_bytes: u64,
    inner: Mutex<(HashMap<String, Entry>, u64)>,
}

impl std::fmt::Debug for ModelCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelCache")
            .field("engine", &self.engine.name())
            .field("capacity_bytes", &self.capacity_bytes)
            .finish()
    }
}

impl ModelCache {
    /// A cache holding at most `capacity_bytes` of artifacts (at least the model in use).
    pub fn new(engine: Arc<dyn Engine>, source: Arc<dyn ModelSource>, capacity_bytes: u64) -> Self {
        Self { engine, source, capacity_bytes, inner: Mutex::new((HashMap::new(), 0)) }
    }

    /// The model source.
    pub fn source(&self) -> &Arc<dyn ModelSource> {
        &self.source
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    fn cell(&self, sha256: &str) -> Result<Arc<OnceCell<Arc<ModelHandle>>>> {
        let mut guard = self.inner.lock().map_err(|_| ScoreError::internal("model cache lock poisoned"))?;
        let (map, tick) = &mut *guard;
        *tick += 1;
        let now = *tick;
        let entry = map
            .entry(sha256.to_ascii_lowercase())
            .or_insert_with(|| Entry { cell: Arc::new(OnceCell::new()), last_used: now });
        entry.last_used = now;
        Ok(entry.cell.clone())
    }

    /// The loaded model for a resolved version: from the cache, or fetched (with the
    /// caller's credentials), verified and loaded. Returns whether it was cached.
    pub async fn get(&self, version: &ModelVersion, creds: &Credentials) -> Result<(Arc<ModelHandle>, bool)> {
        let cell = self.cell(&version.sha256)?;
        if let Some(handle) = cell.get() {
            metrics::cache_lookup(true);
            return Ok((handle.clone(), true));
        }
        metrics::cache_lookup(false);
        let mut loaded_here = false;
        let started = Instant::now();
        let handle = cell
            .get_or_try_init(|| async {
                loaded_here = true;
                let bytes = self.source.fetch(version, creds).await?;
                let engine = self.engine.clone();
                let sha256 = version.sha256.to_ascii_lowercase();
                let size = bytes.len() as u64;
                let what = version.pinned_reference();
                let handle = tokio::task::spawn_blocking(move || -> Result<ModelHandle> {
                    let defines_missing = crate::engine::defines_missing_values(&bytes);
                    let model = engine
                        .load(bytes)
                        .map_err(|e| e.context(format!("loading model {what} with engine {}", engine.name())))?;
                    let outputs = probe_outputs(model.as_ref());
                    Ok(ModelHandle {
                        sha256,
                        engine: model.engine(),
                        model,
                        outputs,
                        defines_missing,
                        load_time: started.elapsed(),
                        size,
                    })
                })
                .await??;
                tracing::info!(
                    model = %version.pinned_reference(),
                    sha256 = %version.sha256,
                    engine = handle.engine,
                    load_ms = handle.load_time.as_millis() as u64,
                    "model loaded"
                );
                Ok::<_, ScoreError>(Arc::new(handle))
            })
            .await
            .inspect_err(|_| {
                if loaded_here {
                    metrics::model_load(self.engine.name(), started.elapsed(), false);
                }
            })?
            .clone();
        if loaded_here {
            metrics::model_load(handle.engine, handle.load_time, true);
            self.evict(&handle.sha256);
        }
        Ok((handle, !loaded_here))
    }

    /// Drop least-recently-used loaded models (never `keep`) until the cache fits.
    fn evict(&self, keep: &str) {
        let Ok(mut guard) = self.inner.lock() else { return };
        let (map, _) = &mut *guard;
        loop {
            let total: u64 = map.values().filter_map(|e| e.cell.get()).map(|h| h.size).sum();
            if total <= self.capacity_bytes {
                metrics::cache_size(map.values().filter(|e| e.cell.get().is_some()).count(), total);
                return;
            }
            let victim = map
                .iter()
                .filter(|(k, e)| k.as_str() != keep && e.cell.get().is_some())
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => {
                    tracing::info!(sha256 = %k, "model evicted from the cache");
                    metrics::cache_eviction();
                    map.remove(&k);
                }
                None => return,
            }
        }
    }

    /// Number of loaded models in the cache.
    pub fn loaded(&self) -> usize {
        self.inner.lock().map(|g| g.0.values().filter(|e| e.cell.get().is_some()).count()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use bytes::Bytes;

    use super::*;
    use crate::engine::{IoInfo, OutputValue, Tensor};
    use crate::source::sha256_hex;
    use lakescore_core::reference::ModelRef;

    struct CountingEngine(AtomicUsize);

    struct Dummy;

    impl LoadedModel for Dummy {
        fn engine(&self) -> &'static str {
            "counting"
        }
        fn inputs(&self) -> &[IoInfo] {
            &[]
        }
        fn outputs(&self) -> &[IoInfo] {
            &[]
        }
        fn run(&self, _: Vec<(String, Tensor)>) -> Result<Vec<OutputValue>> {
            Ok(Vec::new())
        }
    }

    impl Engine for CountingEngine {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn load(&self, _model: Bytes) -> Result<Box<dyn LoadedModel>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
            Ok(Box::new(Dummy))
        }
    }

    struct Source;

    #[async_trait]
    impl ModelSource for Source {
        async fn resolve(&self, r: &ModelRef, _: &Credentials) -> Result<ModelVersion> {
            let body = r.name.repeat(100);
            Ok(ModelVersion {
                model: r.name.clone(),
                version: 1,
                sha256: sha256_hex(body.as_bytes()),
                size: body.len() as i64,
                ..Default::default()
            })
        }
        async fn fetch(&self, v: &ModelVersion, _: &Credentials) -> Result<Bytes> {
            Ok(Bytes::from(v.model.repeat(100)))
        }
        fn describe(&self) -> String {
            "test".into()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_requests_load_once_and_the_lru_is_bounded() {
        let engine = Arc::new(CountingEngine(AtomicUsize::new(0)));
        // Room for two 100-byte models.
        let cache = Arc::new(ModelCache::new(engine.clone(), Arc::new(Source), 250));
        let creds = Credentials::none();
        let a = Source.resolve(&ModelRef::parse("a").unwrap(), &creds).await.unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (cache, a) = (cache.clone(), a.clone());
                tokio::spawn(async move { cache.get(&a, &Credentials::none()).await.map(|(h, _)| h.sha256.clone()) })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), a.sha256);
        }
        assert_eq!(engine.0.load(Ordering::SeqCst), 1);

        for name in ["b", "a", "c"] {
            let v = Source.resolve(&ModelRef::parse(name).unwrap(), &creds).await.unwrap();
            cache.get(&v, &creds).await.unwrap();
        }
        // b was the least recently used when c came in.
        assert_eq!(cache.loaded(), 2);
        assert_eq!(engine.0.load(Ordering::SeqCst), 3);
        let (_, cached) = cache.get(&a, &creds).await.unwrap();
        assert!(cached);
        let b = Source.resolve(&ModelRef::parse("b").unwrap(), &creds).await.unwrap();
        let (_, cached) = cache.get(&b, &creds).await.unwrap();
        assert!(!cached);
    }
}
