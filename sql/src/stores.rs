//! The object stores SQL reads: only inside the worker's storage roots, and read-only.
//!
//! DataFusion asks its registry for a store by scheme and authority (`s3://bucket`,
//! `file://`) and then reads any path in it, so the roots cannot be enforced on the URL it
//! asks with. Every store it gets is wrapped in [`RootedStore`], which checks each path it
//! is asked for (and, for local files, where its symbolic links lead) before the inner store
//! is touched. Listings leave out bookkeeping (`_lakescore.json`, `_errors/`: see [`hidden`]).
//! SQL never writes through these stores: `COPY … TO` goes through the worker's
//! commit protocol (see [`super::copy`]).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::execution::object_store::ObjectStoreRegistry;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult,
};
use url::Url;

use lakescore_lake::Lake;

/// DataFusion's object store registry over the worker's [`lakescore_lake::storage::Storage`].
#[derive(Debug)]
pub(crate) struct RootedStores {
    lake: Arc<Lake>,
}

impl RootedStores {
    pub(crate) fn new(lake: Arc<Lake>) -> Self {
        Self { lake }
    }
}

impl ObjectStoreRegistry for RootedStores {
    fn register_store(&self, url: &Url, _store: Arc<dyn ObjectStore>) -> Option<Arc<dyn ObjectStore>> {
        // Stores come from the worker's configuration only.
        tracing::warn!(%url, "SQL tried to register an object store; ignored");
        None
    }

    fn deregister_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        Err(datafusion::error::DataFusionError::Plan(format!("object stores cannot be removed ({url})")))
    }

    fn get_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        let (inner, prefixes) = self
            .lake
            .storage()
            .rooted_store(url)
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        let local = url.scheme() == "file";
        Ok(Arc::new(RootedStore { inner, prefixes, local, lake: self.lake.clone(), base: url.to_string() }))
    }
}

/// A store that serves reads of paths under its prefixes only.
#[derive(Debug)]
pub(crate) struct RootedStore {
    inner: Arc<dyn ObjectStore>,
    prefixes: Vec<Path>,
    /// A local file system: links are resolved before a path is allowed.
    local: bool,
    lake: Arc<Lake>,
    base: String,
}

impl fmt::Display for RootedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rooted({})", self.inner)
    }
}

/// Whether `path` is bookkeeping rather than data below `prefix`: a part of it starting
/// with `_` or `.` (`_lakescore.json`, `_errors/`, `_SUCCESS`, `.tmp`), the rule Spark,
/// Hive and lakescore's own jobs follow.
fn hidden(prefix: &Path, path: &Path) -> bool {
    match path.prefix_match(prefix) {
        Some(mut below) => below.any(|p| p.as_ref().starts_with('_') || p.as_ref().starts_with('.')),
        None => false,
    }
}

fn refused(path: &Path, why: &str) -> object_store::Error {
    object_store::Error::PermissionDenied { path: path.to_string(), source: why.to_string().into() }
}

impl RootedStore {
    fn check(&self, path: &Path) -> object_store::Result<()> {
        if !self.prefixes.iter().any(|p| p.as_ref().is_empty() || path.prefix_matches(p)) {
            return Err(refused(
                path,
                &format!("{}{path} is outside the storage locations this worker may use", self.base),
            ));
        }
        if self.local && !self.lake.storage().local_path_allowed(path) {
            return Err(refused(
                path,
                &format!(
                    "{}{path} leads through a symbolic link outside the storage locations this worker may use",
                    self.base
                ),
            ));
        }
        Ok(())
    }

    fn read_only(path: &Path) -> object_store::Error {
        refused(path, "SQL does not write to storage directly: use COPY (SELECT …) TO '<prefix>'")
    }

    /// A listing: the prefix is checked, and so is every object listed (a link inside a
    /// root can lead out of it).
    fn checked_listing(
        &self,
        prefix: Option<&Path>,
        list: BoxStream<'static, object_store::Result<ObjectMeta>>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let root = Path::default();
        let prefix = prefix.unwrap_or(&root).clone();
        if let Err(e) = self.check(&prefix) {
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        let local = self.local;
        let lake = self.lake.clone();
        let base = self.base.clone();
        list.try_filter(move |meta| futures::future::ready(!hidden(&prefix, &meta.location)))
            .map(move |meta| {
                let meta = meta?;
                if !local || lake.storage().local_path_allowed(&meta.location) {
                    Ok(meta)
                } else {
                    Err(refused(
                        &meta.location,
                        &format!(
                            "{base}{} leads through a symbolic link outside the storage locations this worker may use",
                            meta.location
                        ),
                    ))
                }
            })
            .boxed()
    }
}

#[async_trait::async_trait]
impl ObjectStore for RootedStore {
    async fn put_opts(&self, location: &Path, _: PutPayload, _: PutOptions) -> object_store::Result<PutResult> {
        Err(Self::read_only(location))
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(Self::read_only(location))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.check(location)?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.check(location)?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        locations.map(|l| Err(Self::read_only(&l?))).boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.checked_listing(prefix, self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.checked_listing(prefix, self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let root = Path::default();
        let under = prefix.unwrap_or(&root);
        self.check(under)?;
        let mut listed = self.inner.list_with_delimiter(prefix).await?;
        listed.common_prefixes.retain(|p| !hidden(under, p));
        listed.objects.retain(|o| !hidden(under, &o.location));
        Ok(listed)
    }

    async fn copy_opts(&self, _: &Path, to: &Path, _: CopyOptions) -> object_store::Result<()> {
        Err(Self::read_only(to))
    }
}

/// Tables named by URL in a query (`SELECT * FROM 's3://lake/tx/'`): the location is checked
/// against the storage roots first, so that a location outside them is refused by name
/// (DataFusion's own factory would report it as a missing table), and a table that cannot
/// be read says why.
pub(crate) struct RootedUrlTables {
    lake: Arc<Lake>,
    /// The session's state, once the session exists (the factory is part of it).
    state: std::sync::OnceLock<Box<dyn Fn() -> Option<datafusion::execution::SessionState> + Send + Sync>>,
}

impl fmt::Debug for RootedUrlTables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootedUrlTables").finish()
    }
}

impl RootedUrlTables {
    /// `ctx` with URL tables read through the roots.
    pub(crate) fn enable(
        lake: Arc<Lake>,
        ctx: datafusion::prelude::SessionContext,
    ) -> datafusion::prelude::SessionContext {
        let factory = Arc::new(Self { lake, state: std::sync::OnceLock::new() });
        let inner = ctx.state().catalog_list().clone();
        let catalogs = Arc::new(datafusion::catalog::DynamicFileCatalog::new(inner, factory.clone()));
        let ctx: datafusion::prelude::SessionContext =
            ctx.into_state_builder().with_catalog_list(catalogs).build().into();
        let weak = ctx.state_weak_ref();
        let _ = factory.state.set(Box::new(move || weak.upgrade().map(|s| s.read().clone())));
        ctx
    }
}

#[async_trait::async_trait]
impl datafusion::catalog::UrlTableFactory for RootedUrlTables {
    async fn try_new(
        &self,
        name: &str,
    ) -> datafusion::error::Result<Option<Arc<dyn datafusion::catalog::TableProvider>>> {
        use datafusion::datasource::listing::{
            ListingTable, ListingTableConfig, ListingTableConfigExt, ListingTableUrl,
        };
        // Only names that are locations; any other missing table stays "not found".
        if !(name.contains("://") || name.starts_with('/')) {
            return Ok(None);
        }
        let (url, at) = crate::delta::split_version(name)?;
        let loc = self
            .lake
            .storage()
            .locate(url, "table")
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        let state = self
            .state
            .get()
            .and_then(|get| get())
            .ok_or_else(|| datafusion::error::DataFusionError::Internal("the SQL session is gone".into()))?;
        // A Delta table is read as its log says (its live files only), not as the files of
        // a prefix.
        let is_table = lakescore_lake::delta::is_table(&loc)
            .await
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        if is_table {
            return Ok(Some(Arc::new(crate::delta::DeltaSqlTable::open(&self.lake, url, at, &state).await?)));
        }
        if at != lakescore_lake::delta::TableVersion::Latest {
            return Err(datafusion::error::DataFusionError::Plan(format!(
                "{url} is not a Delta table: ?version= and ?timestamp= are for Delta tables"
            )));
        }
        let url = ListingTableUrl::parse(name)?;
        let config = ListingTableConfig::new(url)
            .infer_options(&state)
            .await?
            .infer_partitions_from_path(&state)
            .await?
            .infer_schema(&state)
            .await?;
        Ok(Some(Arc::new(ListingTable::try_new(config)?)))
    }
}
