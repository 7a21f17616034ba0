//! Savepoints: a versioned, checksummed snapshot of partition state and input offsets.
//!
//! Layout under `<storageUrl>/<savepoint id>/`: each worker writes `<instance>/partition-<n>.json`
//! for the partitions it owns, then `<instance>/_manifest.json` listing those files with their
//! sizes and SHA-256. The manifest is written last, so a worker that died mid-write leaves no
//! manifest and its files are never read. Restoring reads every manifest under the savepoint,
//! verifies every file, and refuses the savepoint as a whole if anything is missing, corrupt or
//! incompatible: state is never half-loaded. Partitions are independent, so a savepoint written
//! by two workers restores into one or three.

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::changelog::PartitionMeta;
use crate::inventory::{OLDEST_READABLE_STATE_SCHEMA, PartitionState, STATE_SCHEMA_VERSION};

/// Version of the savepoint layout itself (manifest and file envelopes).
pub const FORMAT_VERSION: u32 = 1;
const MANIFEST: &str = "_manifest.json";

/// One partition's snapshot file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionSnapshot {
    pub format_version: u32,
    pub state_schema_version: u32,
    pub partition: i32,
    /// What the state corresponds to: input offsets, bootstrap file hash.
    pub meta: PartitionMeta,
    pub state: PartitionState,
}

/// What one worker wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format_version: u32,
    pub state_schema_version: u32,
    pub savepoint_id: String,
    pub pipeline: String,
    pub instance: String,
    pub created_at_ms: i64,
    /// Partition count of the inputs when the savepoint was taken.
    pub partition_count: usize,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    pub partition: i32,
    /// Relative to the manifest's directory.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// A savepoint written by this worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Written {
    pub id: String,
    /// `--from-savepoint` value that restores it.
    pub location: String,
    pub partitions: Vec<i32>,
    pub bytes: u64,
}

/// A fully verified savepoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub id: String,
    pub pipeline: String,
    pub partition_count: usize,
    pub partitions: BTreeMap<i32, PartitionSnapshot>,
}

#[derive(Debug, Error)]
pub enum SavepointError {
    #[error("savepoint location {url:?} is not a usable storage URL: {detail}")]
    Url { url: String, detail: String },
    #[error("savepoint storage {location}: {source}")]
    Storage {
        location: String,
        source: object_store::Error,
    },
    #[error(
        "savepoint {location} has no manifest: it is incomplete (a worker died while writing it) or the location is wrong"
    )]
    NoManifest { location: String },
    #[error(
        "savepoint file {path} is corrupt: {detail}; take a new savepoint or restore an older one"
    )]
    Corrupt { path: String, detail: String },
    #[error("savepoint {location} is incompatible: {detail}")]
    Incompatible { location: String, detail: String },
    #[error("savepoint {location} is incomplete: no state for partitions {missing:?} of {count}")]
    Incomplete {
        location: String,
        missing: Vec<i32>,
        count: usize,
    },
}

/// Lower-case hex SHA-256, for file checksums and content hashes.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A place savepoints are written to and read from.
#[derive(Debug, Clone)]
pub struct Store {
    store: Arc<dyn ObjectStore>,
    root: Path,
    url: String,
}

impl Store {
    /// Opens `url` (`file:///dir`, or another scheme `object_store` was built with).
    pub fn open(url: &str) -> Result<Self, SavepointError> {
        let bad = |detail: String| SavepointError::Url {
            url: url.to_owned(),
            detail,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        // Remote stores take their credentials and endpoint from the standard AWS_* variables;
        // the local filesystem ignores them.
        let options = std::env::vars()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v));
        let (store, root) =
            object_store::parse_url_opts(&parsed, options).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            store: Arc::from(store),
            root,
            url: url.trim_end_matches('/').to_owned(),
        })
    }

    fn storage_err(&self, location: &Path) -> impl Fn(object_store::Error) -> SavepointError {
        let location = location.to_string();
        move |source| SavepointError::Storage {
            location: location.clone(),
            source,
        }
    }

    /// Writes this worker's partitions of savepoint `id`.
    pub async fn write(
        &self,
        id: &str,
        pipeline: &str,
        instance: &str,
        partition_count: usize,
        created_at_ms: i64,
        partitions: &BTreeMap<i32, (PartitionMeta, PartitionState)>,
    ) -> Result<Written, SavepointError> {
        let dir = self.root.clone().join(id).join(instance);
        let mut files = Vec::new();
        let mut total = 0u64;
        for (partition, (meta, state)) in partitions {
            let snapshot = PartitionSnapshot {
                format_version: FORMAT_VERSION,
                state_schema_version: STATE_SCHEMA_VERSION,
                partition: *partition,
                meta: meta.clone(),
                state: state.clone(),
            };
            let bytes = serde_json::to_vec(&snapshot).map_err(|e| SavepointError::Corrupt {
                path: format!("partition-{partition}.json"),
                detail: e.to_string(),
            })?;
            let name = format!("partition-{partition}.json");
            let path = dir.clone().join(name.as_str());
            files.push(FileEntry {
                partition: *partition,
                path: name,
                bytes: bytes.len() as u64,
                sha256: sha256_hex(&bytes),
            });
            total += bytes.len() as u64;
            self.store
                .put(&path, bytes.into())
                .await
                .map_err(self.storage_err(&path))?;
        }
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            state_schema_version: STATE_SCHEMA_VERSION,
            savepoint_id: id.to_owned(),
            pipeline: pipeline.to_owned(),
            instance: instance.to_owned(),
            created_at_ms,
            partition_count,
            files,
        };
        let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| SavepointError::Corrupt {
            path: MANIFEST.to_owned(),
            detail: e.to_string(),
        })?;
        let path = dir.join(MANIFEST);
        self.store
            .put(&path, bytes.into())
            .await
            .map_err(self.storage_err(&path))?;
        Ok(Written {
            id: id.to_owned(),
            location: format!("{}/{id}", self.url),
            partitions: partitions.keys().copied().collect(),
            bytes: total,
        })
    }
}

/// Reads and verifies the savepoint at `location` (as returned in [`Written::location`]).
pub async fn load(location: &str) -> Result<Loaded, SavepointError> {
    let store = Store::open(location)?;
    let listing = store
        .store
        .list_with_delimiter(Some(&store.root))
        .await
        .map_err(store.storage_err(&store.root))?;
    let mut manifests = Vec::new();
    for dir in listing.common_prefixes {
        let path = dir.clone().join(MANIFEST);
        match store.store.get(&path).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(store.storage_err(&path))?;
                let m: Manifest =
                    serde_json::from_slice(&bytes).map_err(|e| SavepointError::Corrupt {
                        path: path.to_string(),
                        detail: e.to_string(),
                    })?;
                manifests.push((dir, m));
            }
            // A worker that died before its manifest: its files are ignored, and the coverage
            // check below refuses the savepoint if they were needed.
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store.storage_err(&path)(e)),
        }
    }
    let Some((_, first)) = manifests.first() else {
        return Err(SavepointError::NoManifest {
            location: location.to_owned(),
        });
    };
    let (id, pipeline, count) = (
        first.savepoint_id.clone(),
        first.pipeline.clone(),
        first.partition_count,
    );
    let incompatible = |detail: String| SavepointError::Incompatible {
        location: location.to_owned(),
        detail,
    };
    let mut partitions = BTreeMap::new();
    for (dir, m) in &manifests {
        let readable = OLDEST_READABLE_STATE_SCHEMA..=STATE_SCHEMA_VERSION;
        if m.format_version != FORMAT_VERSION || !readable.contains(&m.state_schema_version) {
            return Err(incompatible(format!(
                "{} was written with format {} / state schema {}, this worker reads {FORMAT_VERSION} / {OLDEST_READABLE_STATE_SCHEMA} to {STATE_SCHEMA_VERSION}",
                m.instance, m.format_version, m.state_schema_version
            )));
        }
        if m.savepoint_id != id || m.pipeline != pipeline || m.partition_count != count {
            return Err(incompatible(format!(
                "manifests disagree: {} says savepoint {} of pipeline {} with {} partitions, {} says {id} of {pipeline} with {count}",
                m.instance, m.savepoint_id, m.pipeline, m.partition_count, first.instance
            )));
        }
        for f in &m.files {
            let path = dir.clone().join(f.path.as_str());
            let corrupt = |detail: String| SavepointError::Corrupt {
                path: path.to_string(),
                detail,
            };
            let bytes = store
                .store
                .get(&path)
                .await
                .map_err(store.storage_err(&path))?
                .bytes()
                .await
                .map_err(store.storage_err(&path))?;
            if bytes.len() as u64 != f.bytes {
                return Err(corrupt(format!(
                    "{} bytes, the manifest says {}",
                    bytes.len(),
                    f.bytes
                )));
            }
            if sha256_hex(&bytes) != f.sha256 {
                return Err(corrupt("its SHA-256 does not match the manifest".into()));
            }
            let snap: PartitionSnapshot =
                serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
            if snap.partition != f.partition {
                return Err(corrupt(format!(
                    "holds partition {}, the manifest says {}",
                    snap.partition, f.partition
                )));
            }
            if partitions.insert(snap.partition, snap).is_some() {
                return Err(incompatible(format!(
                    "partition {} is written by more than one worker",
                    f.partition
                )));
            }
        }
    }
    let missing: Vec<i32> = (0..count)
        .filter_map(|p| i32::try_from(p).ok())
        .filter(|p| !partitions.contains_key(p))
        .collect();
    if !missing.is_empty() {
        return Err(SavepointError::Incomplete {
            location: location.to_owned(),
            missing,
            count,
        });
    }
    Ok(Loaded {
        id,
        pipeline,
        partition_count: count,
        partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::KeyState;

    fn state_with(key: &str) -> PartitionState {
        let mut s = PartitionState::default();
        s.keys.insert(
            key.to_owned(),
            KeyState {
                last_update_ms: Some(1),
                ..KeyState::default()
            },
        );
        s
    }

    fn parts(ps: &[i32]) -> BTreeMap<i32, (PartitionMeta, PartitionState)> {
        ps.iter()
            .map(|p| {
                let meta = PartitionMeta {
                    offsets: BTreeMap::from([("order-events".into(), i64::from(*p) * 10)]),
                    ..PartitionMeta::default()
                };
                (*p, (meta, state_with(&format!("P{p}"))))
            })
            .collect()
    }

    fn temp_root(name: &str) -> (std::path::PathBuf, String) {
        let dir = std::env::temp_dir().join(format!(
            "kartflow-sp-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let url = format!("file://{}", dir.display());
        (dir, url)
    }

    #[tokio::test]
    async fn two_writers_restore_as_one_savepoint() {
        let (_dir, url) = temp_root("two");
        let store = Store::open(&url).expect("store");
        let a = store
            .write("sp-1", "shop", "worker-a", 3, 5, &parts(&[0, 2]))
            .await
            .expect("a writes");
        store
            .write("sp-1", "shop", "worker-b", 3, 5, &parts(&[1]))
            .await
            .expect("b writes");
        let loaded = load(&a.location).await.expect("loads");
        assert_eq!(loaded.id, "sp-1");
        assert_eq!(loaded.partition_count, 3);
        assert_eq!(loaded.partitions.len(), 3);
        let p1 = &loaded.partitions[&1];
        assert_eq!(p1.meta.offsets["order-events"], 10);
        assert!(p1.state.keys.contains_key("P1"));
    }

    #[tokio::test]
    async fn truncated_file_is_refused() {
        let (dir, url) = temp_root("trunc");
        let store = Store::open(&url).expect("store");
        let w = store
            .write("sp-2", "shop", "w", 1, 5, &parts(&[0]))
            .await
            .expect("writes");
        let file = dir.join("sp-2/w/partition-0.json");
        let bytes = std::fs::read(&file).expect("read");
        std::fs::write(&file, &bytes[..bytes.len() / 2]).expect("truncate");
        let err = load(&w.location).await.expect_err("refused");
        assert!(matches!(err, SavepointError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("partition-0.json"), "{err}");
    }

    #[tokio::test]
    async fn missing_partitions_and_manifests_are_refused() {
        let (dir, url) = temp_root("missing");
        let store = Store::open(&url).expect("store");
        let w = store
            .write("sp-3", "shop", "w", 2, 5, &parts(&[0]))
            .await
            .expect("writes");
        let err = load(&w.location).await.expect_err("partition 1 missing");
        assert!(
            matches!(&err, SavepointError::Incomplete { missing, .. } if missing == &vec![1]),
            "{err}"
        );
        std::fs::remove_file(dir.join("sp-3/w/_manifest.json")).expect("rm manifest");
        let err = load(&w.location).await.expect_err("no manifest");
        assert!(matches!(err, SavepointError::NoManifest { .. }), "{err}");
    }

    #[tokio::test]
    async fn incompatible_versions_are_refused() {
        let (dir, url) = temp_root("version");
        let store = Store::open(&url).expect("store");
        let w = store
            .write("sp-4", "shop", "w", 1, 5, &parts(&[0]))
            .await
            .expect("writes");
        let path = dir.join("sp-4/w/_manifest.json");
        let text = std::fs::read_to_string(&path).expect("manifest");
        let current = format!("\"stateSchemaVersion\": {STATE_SCHEMA_VERSION}");
        assert!(text.contains(&current), "{text}");
        let text = text.replace(&current, "\"stateSchemaVersion\": 99");
        std::fs::write(&path, text).expect("write manifest");
        let err = load(&w.location).await.expect_err("incompatible");
        assert!(err.to_string().contains("state schema 99"), "{err}");
    }
}
