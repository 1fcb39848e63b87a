//! Resolved references, cached in the registry process.
//!
//! Every scoring call resolves a reference, and the answer changes only when the registry
//! is written. An entry is tagged with the write generation read *before* the database was
//! queried, and every write bumps the generation (in `Registry::audit`, which every write
//! goes through) after it commits; so an entry that may predate the last write made through
//! this process is never used. Writes made through another replica (several registry pods
//! on one PostgreSQL) are seen once an entry is `ttl` old, at the latest.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lakescore_core::wire::ModelVersion;

/// Entries kept before the cache starts over (a bound on memory, not an LRU: the working
/// set of references a deployment scores with is small).
const CAPACITY: usize = 4096;

/// See the module documentation.
#[derive(Debug)]
pub struct ResolveCache {
    generation: AtomicU64,
    ttl: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    generation: u64,
    at: Instant,
    version: ModelVersion,
}

impl ResolveCache {
    /// A cache whose entries live at most `ttl`; `Duration::ZERO` turns it off.
    pub fn new(ttl: Duration) -> Self {
        Self { generation: AtomicU64::new(0), ttl, entries: Mutex::new(HashMap::new()) }
    }

    /// The current write generation: read it before querying the database for an entry.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The cached resolution of `reference`, unless a write or `ttl` has passed since.
    pub fn get(&self, reference: &str) -> Option<ModelVersion> {
        if self.ttl.is_zero() {
            return None;
        }
        let generation = self.generation();
        let entries = self.entries.lock().ok()?;
        let entry = entries.get(reference)?;
        (entry.generation == generation && entry.at.elapsed() < self.ttl).then(|| entry.version.clone())
    }

    /// Remembers `version` for `reference`, read from the database at `generation`.
    pub fn put(&self, reference: &str, generation: u64, version: &ModelVersion) {
        if self.ttl.is_zero() || generation != self.generation() {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= CAPACITY {
                entries.clear();
            }
            entries.insert(reference.to_string(), Entry { generation, at: Instant::now(), version: version.clone() });
        }
    }

    /// A write has committed: every entry read before it is stale.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(v: i64) -> ModelVersion {
        ModelVersion { model: "m".into(), version: v, ..Default::default() }
    }

    #[test]
    fn an_entry_read_before_a_write_is_never_served() {
        let cache = ResolveCache::new(Duration::from_secs(60));
        let before = cache.generation();
        cache.put("m@champion", before, &version(1));
        assert_eq!(cache.get("m@champion").map(|v| v.version), Some(1));
        // A resolve reads generation g, a write commits and bumps it, the resolve then
        // stores what it read: that entry is not used.
        let g = cache.generation();
        cache.invalidate();
        cache.put("m@champion", g, &version(1));
        assert!(cache.get("m@champion").is_none());
        cache.put("m@champion", cache.generation(), &version(2));
        assert_eq!(cache.get("m@champion").map(|v| v.version), Some(2));
    }

    #[test]
    fn entries_expire_and_a_zero_ttl_caches_nothing() {
        let cache = ResolveCache::new(Duration::from_millis(20));
        cache.put("m", cache.generation(), &version(1));
        assert!(cache.get("m").is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert!(cache.get("m").is_none());
        let off = ResolveCache::new(Duration::ZERO);
        off.put("m", off.generation(), &version(1));
        assert!(off.get("m").is_none());
    }
}
