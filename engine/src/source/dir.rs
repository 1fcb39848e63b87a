//! A local directory of ONNX files as a model source (`dir:///path`): offline scoring
//! without a registry, and the source the end-to-end tests use.
//!
//! Layout, per model `NAME`:
//! - `DIR/NAME.onnx`: a model with one version, 1; or
//! - `DIR/NAME/1.onnx`, `DIR/NAME/2.onnx`, …: versions (latest = highest), with optional
//!   `DIR/NAME/aliases.json` = `{"champion": 2}`.
//!
//! Credentials are not checked: whoever can reach the worker can score every model in
//! the directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::{sha256_hex, verify_sha256, Credentials, ModelSource, ModelVersion};
use crate::error::{Result, ScoreError};
use lakescore_core::reference::{ModelRef, VersionSelector};

type HashCache = HashMap<PathBuf, (u64, Option<SystemTime>, String)>;

/// See the module documentation.
#[derive(Debug)]
pub struct DirModelSource {
    root: PathBuf,
    /// (path, size, mtime) -> sha256, so that a large model is hashed once.
    hashes: Arc<Mutex<HashCache>>,
}

impl DirModelSource {
    /// A source reading models under `root` (which must exist).
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        if !root.is_dir() {
            return Err(ScoreError::invalid(format!("model directory {} does not exist", root.display())));
        }
        Ok(Self { root, hashes: Arc::new(Mutex::new(HashMap::new())) })
    }

    fn version_path(&self, name: &str, version: i64) -> Option<PathBuf> {
        let dir = self.root.join(name);
        if dir.is_dir() {
            let p = dir.join(format!("{version}.onnx"));
            return p.is_file().then_some(p);
        }
        let single = self.root.join(format!("{name}.onnx"));
        (version == 1 && single.is_file()).then_some(single)
    }

    fn versions(&self, name: &str) -> Result<Vec<i64>> {
        let dir = self.root.join(name);
        if dir.is_dir() {
            let mut out = Vec::new();
            let entries = std::fs::read_dir(&dir)
                .map_err(|e| ScoreError::Unavailable(format!("reading {}: {e}", dir.display())))?;
            for entry in entries.flatten() {
                let file_name = entry.file_name();
                let Some(stem) = file_name.to_str().and_then(|n| n.strip_suffix(".onnx")) else {
                    continue;
                };
                if let Ok(v) = stem.parse::<i64>() {
                    if v >= 1 {
                        out.push(v);
                    }
                }
            }
            out.sort_unstable();
            Ok(out)
        } else if self.root.join(format!("{name}.onnx")).is_file() {
            Ok(vec![1])
        } else {
            Ok(Vec::new())
        }
    }

    fn alias(&self, name: &str, alias: &str) -> Result<Option<i64>> {
        let path = self.root.join(name).join("aliases.json");
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ScoreError::Unavailable(format!("reading {}: {e}", path.display()))),
        };
        let map: HashMap<String, i64> = serde_json::from_slice(&text)
            .map_err(|e| ScoreError::Internal(format!("{} is not {{alias: version}}: {e}", path.display())))?;
        Ok(map.get(alias).copied())
    }
}

/// (size, sha256) of a file, cached by (path, size, mtime).
fn hash_of(hashes: &Mutex<HashCache>, path: &Path) -> Result<(u64, String)> {
    let meta =
        std::fs::metadata(path).map_err(|e| ScoreError::Unavailable(format!("reading {}: {e}", path.display())))?;
    let key = (meta.len(), meta.modified().ok());
    if let Ok(cache) = hashes.lock() {
        if let Some((len, mtime, sha)) = cache.get(path) {
            if (*len, *mtime) == key {
                return Ok((*len, sha.clone()));
            }
        }
    }
    let bytes = std::fs::read(path).map_err(|e| ScoreError::Unavailable(format!("reading {}: {e}", path.display())))?;
    let sha = sha256_hex(&bytes);
    if let Ok(mut cache) = hashes.lock() {
        cache.insert(path.to_path_buf(), (key.0, key.1, sha.clone()));
    }
    Ok((bytes.len() as u64, sha))
}

#[async_trait]
impl ModelSource for DirModelSource {
    async fn resolve(&self, reference: &ModelRef, _creds: &Credentials) -> Result<ModelVersion> {
        // The name was validated by ModelRef::parse ([a-z0-9][a-z0-9._-]*), so it cannot
        // escape the root directory.
        let name = reference.name.clone();
        let not_found = || ScoreError::NotFound(format!("model {reference} not found"));
        let version = match &reference.selector {
            VersionSelector::Latest => *self.versions(&name)?.last().ok_or_else(not_found)?,
            VersionSelector::Version(v) => *v,
            VersionSelector::Alias(a) => self.alias(&name, a)?.ok_or_else(not_found)?,
        };
        let path = self.version_path(&name, version).ok_or_else(not_found)?;
        let hashes = self.hashes.clone();
        let (size, sha256) = tokio::task::spawn_blocking(move || hash_of(&hashes, &path)).await??;
        // The directory knows no signature, owner or tags: the worker reads the signature
        // from the model itself when it loads it.
        Ok(ModelVersion { model: name, version, sha256, size: size as i64, ..Default::default() })
    }

    async fn fetch(&self, version: &ModelVersion, _creds: &Credentials) -> Result<Bytes> {
        let path = self
            .version_path(&version.model, version.version)
            .ok_or_else(|| ScoreError::NotFound(format!("model {} not found", version.pinned_reference())))?;
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| ScoreError::Unavailable(format!("reading {}: {e}", path.display())))?;
        verify_sha256(&bytes, &version.sha256, &version.pinned_reference())?;
        Ok(Bytes::from(bytes))
    }

    fn describe(&self) -> String {
        format!("dir://{}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn resolves_single_files_versions_and_aliases() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("single.onnx"), b"one").unwrap();
        std::fs::create_dir(dir.path().join("multi")).unwrap();
        std::fs::write(dir.path().join("multi/1.onnx"), b"v1").unwrap();
        std::fs::write(dir.path().join("multi/3.onnx"), b"v3").unwrap();
        std::fs::write(dir.path().join("multi/aliases.json"), br#"{"champion": 1}"#).unwrap();
        let src = DirModelSource::new(dir.path()).unwrap();
        let c = Credentials::none();

        let v = src.resolve(&ModelRef::parse("single").unwrap(), &c).await.unwrap();
        assert_eq!((v.version, v.size), (1, 3));
        assert_eq!(src.fetch(&v, &c).await.unwrap().as_ref(), b"one");

        let v = src.resolve(&ModelRef::parse("multi").unwrap(), &c).await.unwrap();
        assert_eq!(v.version, 3);
        assert_eq!(v.sha256, sha256_hex(b"v3"));
        let v = src.resolve(&ModelRef::parse("multi@champion").unwrap(), &c).await.unwrap();
        assert_eq!(src.fetch(&v, &c).await.unwrap().as_ref(), b"v1");

        for missing in ["nope", "multi:2", "multi@other", "single:2"] {
            let err = src.resolve(&ModelRef::parse(missing).unwrap(), &c).await.unwrap_err();
            assert!(matches!(err, ScoreError::NotFound(_)), "{missing}: {err:?}");
        }

        // A file changed under the worker's feet is detected, not served.
        let v = src.resolve(&ModelRef::parse("single").unwrap(), &c).await.unwrap();
        std::fs::write(dir.path().join("single.onnx"), b"two").unwrap();
        assert!(matches!(src.fetch(&v, &c).await, Err(ScoreError::DataLoss(_))));
    }
}
