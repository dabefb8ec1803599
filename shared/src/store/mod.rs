//! Object store construction from the config's URL: `file:///abs/path` (the embedded default,
//! a [`local::LocalStore`]), `s3://bucket/prefix` (S3 or any S3 API such as moto), `memory://`
//! (unit tests).

pub mod local;

use std::path::PathBuf;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;

use crate::config::StoreConfig;

/// What a store URL points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    File(PathBuf),
    S3 { bucket: String, prefix: String },
    Memory,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{url:?} is not a store URL (file:///abs/path, s3://bucket/prefix or memory://): {reason}"
    )]
    BadUrl { url: String, reason: String },
    #[error("cannot create store directory {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open object store {url}: {source}")]
    Open {
        url: String,
        source: object_store::Error,
    },
}

impl StoreLocation {
    pub fn parse(url: &str) -> Result<StoreLocation, StoreError> {
        let bad = |reason: &str| StoreError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        match parsed.scheme() {
            "file" => {
                if parsed.host_str().is_some_and(|h| !h.is_empty()) {
                    return Err(bad("a file URL has no host; use file:///absolute/path"));
                }
                let path = parsed
                    .to_file_path()
                    .map_err(|_| bad("not an absolute path"))?;
                Ok(StoreLocation::File(path))
            }
            "s3" => {
                let bucket = parsed
                    .host_str()
                    .filter(|b| b.len() >= 3)
                    .ok_or_else(|| bad("the bucket name needs 3 or more characters"))?;
                let prefix = parsed.path().trim_matches('/').to_string();
                Ok(StoreLocation::S3 {
                    bucket: bucket.to_string(),
                    prefix,
                })
            }
            "memory" => Ok(StoreLocation::Memory),
            other => Err(bad(&format!("unsupported scheme {other:?}"))),
        }
    }
}

/// Opens the configured store. A `file://` directory is created when missing.
pub fn open_store(config: &StoreConfig) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let (root, prefix) = open_store_root(config)?;
    if prefix.is_empty() {
        Ok(root)
    } else {
        Ok(Arc::new(PrefixStore::new(root, prefix.as_str())))
    }
}

/// The configured store without its key prefix, and that prefix (`s3://bucket/prefix`:
/// the bucket's store and `prefix`; empty for the others). For readers that address files by
/// URL (DataFusion's listing tables): object_store's `PrefixStore::head` returns the location
/// with the prefix left on, which such a reader then fails to match against the URL it asked
/// for, so they are given the bare store and prefixed paths instead.
pub fn open_store_root(config: &StoreConfig) -> Result<(Arc<dyn ObjectStore>, String), StoreError> {
    let open_err = |source| StoreError::Open {
        url: config.url.clone(),
        source,
    };
    match StoreLocation::parse(&config.url)? {
        StoreLocation::File(path) => {
            std::fs::create_dir_all(&path).map_err(|source| StoreError::CreateDir {
                path: path.display().to_string(),
                source,
            })?;
            // Durable puts and compare-and-swap updates (see `local`).
            let fs = local::LocalStore::new(&path).map_err(open_err)?;
            Ok((Arc::new(fs), String::new()))
        }
        StoreLocation::S3 { bucket, prefix } => {
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(&bucket)
                .with_allow_http(config.allow_http);
            if let Some(endpoint) = &config.endpoint {
                // S3 APIs other than AWS (moto, MinIO) want path-style requests.
                b = b
                    .with_endpoint(endpoint)
                    .with_virtual_hosted_style_request(false);
            }
            b = b.with_region(config.region.as_deref().unwrap_or("us-east-1"));
            if let Some(key) = &config.access_key_id {
                b = b.with_access_key_id(key.expose());
            }
            if let Some(secret) = &config.secret_access_key {
                b = b.with_secret_access_key(secret.expose());
            }
            let s3 = b.build().map_err(open_err)?;
            Ok((Arc::new(s3), prefix))
        }
        StoreLocation::Memory => Ok((Arc::new(InMemory::new()), String::new())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!(
            StoreLocation::parse("file:///var/lib/tributary").ok(),
            Some(StoreLocation::File("/var/lib/tributary".into()))
        );
        assert_eq!(
            StoreLocation::parse("s3://lake/tributary/prod/").ok(),
            Some(StoreLocation::S3 {
                bucket: "lake".into(),
                prefix: "tributary/prod".into()
            })
        );
        assert_eq!(
            StoreLocation::parse("memory://").ok(),
            Some(StoreLocation::Memory)
        );
        for bad in [
            "/var/lib",
            "file://host/x",
            "s3://ab/x",
            "gs://bucket/x",
            "not a url",
        ] {
            assert!(
                StoreLocation::parse(bad).is_err(),
                "{bad} should be rejected"
            );
        }
    }

    #[tokio::test]
    async fn file_store_is_created_and_round_trips() {
        use object_store::ObjectStoreExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("nested/store");
        let config = StoreConfig {
            url: format!("file://{}", root.display()),
            ..StoreConfig::default()
        };
        let store = open_store(&config).expect("open");
        let path = object_store::path::Path::from("a/b.txt");
        store
            .put(&path, bytes::Bytes::from_static(b"hi").into())
            .await
            .expect("put");
        assert!(root.join("a/b.txt").exists());
    }
}
