//! The `file://` store, made fit for the commit protocols that run on it (the archive's
//! `_state`, the batch manifests and lock).
//!
//! object_store's `LocalFileSystem` neither syncs what it writes nor supports
//! `PutMode::Update`. Here every put is durable before it returns (the file's data, then the
//! directory entry of its rename), so a state file written after the data files it commits can
//! never survive a power loss that the data files do not; and an update is a compare-and-swap:
//! under an exclusive `flock` of the object's directory, the current e-tag is compared with the
//! expected one before the new content is renamed into place. The lock is advisory and local,
//! so this holds for processes sharing one machine's filesystem (not NFS), which is what a
//! `file://` store is for. Hand-written because no store crate offers either on a local disk.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path as FsPath, PathBuf};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
    UpdateVersion,
};

/// A durable, compare-and-swap capable local directory store.
#[derive(Debug)]
pub struct LocalStore {
    inner: LocalFileSystem,
}

impl LocalStore {
    /// A store rooted at `root`, which must exist.
    pub fn new(root: &FsPath) -> Result<Self> {
        Ok(LocalStore {
            inner: LocalFileSystem::new_with_prefix(root)?,
        })
    }
}

impl std::fmt::Display for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Durable({})", self.inner)
    }
}

fn io_error(path: &FsPath, source: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalStore",
        source: format!("{}: {source}", path.display()).into(),
    }
}

/// Writes `payload` next to `dest` and moves it into place durably: data synced, then linked
/// (`create`: fails if `dest` exists) or renamed over `dest`, then the directory synced.
fn write_durably(dest: &FsPath, payload: &PutPayload, create: bool) -> Result<()> {
    let dir = dest
        .parent()
        .ok_or_else(|| io_error(dest, std::io::Error::other("no parent directory")))?;
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    // object_store's own staging suffix: listings skip `name#<digits>` files.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let mut n = std::process::id()
        .wrapping_mul(100_003)
        .wrapping_add(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let (mut file, staging) = loop {
        let mut s = dest.as_os_str().to_owned();
        s.push(format!("#{n}"));
        let staging = PathBuf::from(s);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staging)
        {
            Ok(f) => break (f, staging),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n = n.wrapping_add(1),
            Err(e) => return Err(io_error(&staging, e)),
        }
    };
    let result = (|| {
        for chunk in payload.iter() {
            file.write_all(chunk).map_err(|e| io_error(&staging, e))?;
        }
        file.sync_all().map_err(|e| io_error(&staging, e))?;
        drop(file);
        if create {
            std::fs::hard_link(&staging, dest).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    object_store::Error::AlreadyExists {
                        path: dest.display().to_string(),
                        source: e.into(),
                    }
                } else {
                    io_error(dest, e)
                }
            })?;
            let _ = std::fs::remove_file(&staging);
        } else {
            std::fs::rename(&staging, dest).map_err(|e| io_error(dest, e))?;
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(dir, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    result
}

/// The e-tag `LocalFileSystem` reports for a file, read the way it reads it.
fn current_etag(inner: &LocalFileSystem, location: &Path) -> Result<Option<String>> {
    let path = inner.path_to_filesystem(location)?;
    match std::fs::metadata(&path) {
        Ok(m) => Ok(Some(etag_of(&m))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(&path, e)),
    }
}

/// Same scheme as object_store's local e-tags (inode, mtime in µs, size, in hex), so e-tags
/// from `get`/`head` and from puts here compare equal.
fn etag_of(m: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::SystemTime::UNIX_EPOCH).ok())
        .unwrap_or_default()
        .as_micros();
    format!("{:x}-{mtime:x}-{:x}", m.ino(), m.len())
}

fn put_blocking(
    inner: &LocalFileSystem,
    location: &Path,
    payload: &PutPayload,
    mode: &PutMode,
) -> Result<PutResult> {
    let dest = inner.path_to_filesystem(location)?;
    match mode {
        PutMode::Overwrite => write_durably(&dest, payload, false)?,
        PutMode::Create => write_durably(&dest, payload, true)?,
        PutMode::Update(UpdateVersion { e_tag, .. }) => {
            let dir = dest
                .parent()
                .ok_or_else(|| io_error(&dest, std::io::Error::other("no parent directory")))?;
            let lock = File::open(dir).map_err(|e| io_error(dir, e))?;
            lock.lock().map_err(|e| io_error(dir, e))?;
            let current = current_etag(inner, location)?;
            if current.is_none() || current != *e_tag {
                return Err(object_store::Error::Precondition {
                    path: location.to_string(),
                    source: format!(
                        "expected e-tag {e_tag:?}, found {}",
                        current.as_deref().unwrap_or("no object")
                    )
                    .into(),
                });
            }
            write_durably(&dest, payload, false)?;
            // The lock is released when `lock` is dropped, after the rename is durable.
        }
    }
    Ok(PutResult {
        e_tag: current_etag(inner, location)?,
        version: None,
    })
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let inner = self.inner.clone();
        let location = location.clone();
        tokio::task::spawn_blocking(move || put_blocking(&inner, &location, &payload, &opts.mode))
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "LocalStore",
                source: Box::new(e),
            })?
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;

    use super::*;

    #[tokio::test]
    async fn update_is_a_compare_and_swap_and_puts_are_listed_without_staging_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path()).expect("store");
        let p = Path::from("a/state.json");
        let v1 = store
            .put_opts(&p, "one".into(), PutMode::Create.into())
            .await
            .expect("create");
        assert!(matches!(
            store.put_opts(&p, "x".into(), PutMode::Create.into()).await,
            Err(object_store::Error::AlreadyExists { .. })
        ));
        let head = store.head(&p).await.expect("head");
        assert_eq!(head.e_tag, v1.e_tag, "put and head agree on the e-tag");
        let stale = UpdateVersion {
            e_tag: v1.e_tag.clone(),
            version: None,
        };
        let v2 = store
            .put_opts(&p, "two".into(), PutMode::Update(stale.clone()).into())
            .await
            .expect("update from the current version");
        assert_ne!(v2.e_tag, v1.e_tag);
        assert!(matches!(
            store
                .put_opts(&p, "three".into(), PutMode::Update(stale).into())
                .await,
            Err(object_store::Error::Precondition { .. })
        ));
        let missing = UpdateVersion {
            e_tag: Some("x".into()),
            version: None,
        };
        assert!(matches!(
            store
                .put_opts(
                    &Path::from("a/none"),
                    "n".into(),
                    PutMode::Update(missing).into()
                )
                .await,
            Err(object_store::Error::Precondition { .. })
        ));
        let body = store
            .get(&p)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        assert_eq!(&body[..], b"two");
        use futures::TryStreamExt;
        let listed: Vec<ObjectMeta> = store.list(None).try_collect().await.expect("list");
        assert_eq!(listed.len(), 1, "{listed:?}");
    }

    #[tokio::test]
    async fn concurrent_updates_from_one_version_let_exactly_one_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = std::sync::Arc::new(LocalStore::new(dir.path()).expect("store"));
        let p = Path::from("lock.json");
        let v = store
            .put_opts(&p, "0".into(), PutMode::Create.into())
            .await
            .expect("create");
        let version = UpdateVersion {
            e_tag: v.e_tag,
            version: None,
        };
        let attempts = (0..8).map(|i| {
            let (store, p, version) = (store.clone(), p.clone(), version.clone());
            tokio::spawn(async move {
                store
                    .put_opts(&p, format!("{i}").into(), PutMode::Update(version).into())
                    .await
                    .is_ok()
            })
        });
        let wins = futures::future::join_all(attempts)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(true)))
            .count();
        assert_eq!(wins, 1);
    }
}
