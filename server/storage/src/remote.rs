//! Object stores named by URL, for cluster mode: `s3://BUCKET/PREFIX` (credentials, region,
//! endpoint and `AWS_ALLOW_HTTP` from the standard `AWS_*` variables, as `object_store` reads
//! them) or `file:///PATH`.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

use crate::error::StorageError;

/// The object store `url` names, rooted at its prefix.
pub fn object_store_from_url(url: &str) -> Result<Arc<dyn ObjectStore>, StorageError> {
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StorageError::Config(format!("{url:?} names no bucket")));
        }
        let s3 = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()?;
        let prefix = prefix.trim_matches('/');
        return Ok(match prefix.is_empty() {
            true => Arc::new(s3),
            false => Arc::new(Prefixed::new(s3, prefix)),
        });
    }
    if let Some(path) = url.strip_prefix("file://") {
        std::fs::create_dir_all(path)
            .map_err(|e| StorageError::Config(format!("cannot create {path}: {e}")))?;
        return Ok(Arc::new(LocalFileSystem::new_with_prefix(path)?));
    }
    Err(StorageError::Config(format!(
        "object store {url:?}: use s3://BUCKET/PREFIX or file:///PATH"
    )))
}

/// `object_store`'s `PrefixStore`, except that the metadata `get` and `head` return names the
/// object relative to the prefix as listing does (0.13's `PrefixStore` returns the full path
/// there, so DataFusion, which checks a file's `head` location against the table's path, saw
/// no files at all).
#[derive(Debug)]
struct Prefixed<T: ObjectStore> {
    inner: PrefixStore<T>,
    prefix: Path,
}

impl<T: ObjectStore> Prefixed<T> {
    fn new(store: T, prefix: &str) -> Self {
        Prefixed {
            inner: PrefixStore::new(store, prefix.to_string()),
            prefix: Path::from(prefix),
        }
    }
}

impl<T: ObjectStore> std::fmt::Display for Prefixed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Prefixed({})", self.prefix)
    }
}

#[async_trait::async_trait]
impl<T: ObjectStore> ObjectStore for Prefixed<T> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let mut got = self.inner.get_opts(location, options).await?;
        let relative: Option<Path> = got
            .meta
            .location
            .prefix_match(&self.prefix)
            .map(|rest| rest.collect());
        if let Some(relative) = relative {
            got.meta.location = relative;
        }
        Ok(got)
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}
