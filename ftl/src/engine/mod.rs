//! The build engine: resolve the base, plan, look keys up, build only the
//! misses in the sandbox, compose, push or export, verify, report.
//!
//! The engine knows no language: the caller hands it its plugins.

mod base;
mod disk;
mod package_cache;
mod probe;
pub use package_cache::Promoted;
pub use probe::gc_memos;
pub mod regcache;
mod report;
mod sandboxed;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ftl_cache::{Cache, CacheEntry};
use ftl_registry_client::{
    BlobAction, BytesSource, Client, FileSource, Platform, PushBlob, PushProgress, PushRequest,
    Reference,
};

use crate::image::{
    compose, ComposeInput, ConfigOverrides, ImageLayer, LayerOrigin, ManifestFormat,
};
use crate::layer::{write_layer_to_store, LayerSettings, OCI_LAYER_GZIP};
use crate::plugin::*;
use crate::source::SourceTree;

pub use base::{BaseImage, BaseLowers, RemoteBlobSource};

/// Unpacks base image `reference`'s layers as a build's steps get them,
/// into `cache_dir` (the blob store `cache`'s root): each layer once into
/// `layers/<digest>` as root (downloads, inflates and extracts overlapped,
/// layers in parallel), else one merged tree `rootfs/<digest>`. For
/// benchmarks and tools; a build does this only when a step runs.
pub async fn unpack_base(
    client: &Client,
    cache: &Cache,
    cache_dir: &Path,
    reference: &Reference,
    platform: &Platform,
) -> Result<BaseLowers, EngineError> {
    let base = BaseImage::resolve(client, reference, platform, cache).await?;
    let rootfs = base::LazyRootfs::new(
        client.clone(),
        cache.clone(),
        cache_dir.to_path_buf(),
        base,
        None,
    );
    rootfs.lowers().await
}
pub use disk::{
    human_bytes, reclaim as reclaim_volumes, DiskLimits, DEFAULT_CACHE_BYTES, DEFAULT_SCRATCH_BYTES,
};
pub use report::{
    BuildReport, LayerReport, LayerSource, StepRun, StepSandbox, Stopped, Timing, VerifyReport,
    REPORT_SCHEMA, STOP_GRACE,
};
pub use sandboxed::SandboxRuntime;

/// Runs build steps and verification in a sandbox on a root filesystem.
/// The CLI backs it with ftl's embedded sandbox or an external OCI runtime.
pub trait StepRuntime: Send + Sync {
    /// Runs one command on `rootfs` (mounted read-only); kills it and
    /// returns an error soon after `cancel` is set.
    fn run(
        &self,
        rootfs: &Path,
        request: &ExecRequest,
        cancel: &CancelFlag,
    ) -> Result<ExecOutput, PluginError>;

    /// Starts `request` on `rootfs` as container `id` that outlives this
    /// process, unless one of that id is already running (then `false`);
    /// its output goes to `log`. See [`Exec::start_resident`].
    fn start_resident(
        &self,
        rootfs: &Path,
        request: &ExecRequest,
        id: &str,
        log: &Path,
    ) -> Result<bool, PluginError> {
        let _ = (rootfs, id, log);
        Err(PluginError::new(format!(
            "`{}`: this runtime cannot keep a step running between builds",
            request.label
        )))
    }

    /// The host ids the root of this runtime's steps maps to (`None`: the
    /// caller's own ids). A root filesystem the engine assembles for a
    /// step (verification's overlay) is made to read as owned by that root.
    fn id_range(&self) -> Option<ftl_sandbox::IdRange>;

    /// Starts the image's process on `rootfs` (writable copy) with the host
    /// network and waits for it to answer, as `check` says; stops it and
    /// returns [`EngineError::Cancelled`] soon after `cancel` is set.
    fn verify(
        &self,
        rootfs: &Path,
        app: &AppProcess,
        check: &VerifySpec,
        cancel: &CancelFlag,
    ) -> Result<VerifyReport, EngineError>;
}

/// The process a built image runs, from its config.
#[derive(Debug, Clone)]
pub struct AppProcess {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub user: Option<String>,
    /// The port the app is started with in `PORT` and probed on: the
    /// lowest TCP port of the image's `ExposedPorts`, else 8080 (as Cloud
    /// Run and App Engine do).
    pub port: u16,
}

/// `PORT` when an image declares none.
pub const DEFAULT_PORT: u16 = 8080;

/// The lowest TCP port of a config's `ExposedPorts` (`"8080/tcp"`, `"9000"`).
fn declared_port(config: &serde_json::Value) -> Option<u16> {
    config["config"]["ExposedPorts"]
        .as_object()?
        .keys()
        .filter_map(|k| match k.split_once('/') {
            Some((p, proto)) if proto.eq_ignore_ascii_case("tcp") => p.parse().ok(),
            Some(_) => None,
            None => k.parse().ok(),
        })
        .filter(|&p| p != 0)
        .min()
}

/// How to verify a built image.
#[derive(Debug, Clone)]
pub struct VerifySpec {
    /// Run this instead of waiting for HTTP; success is exit status 0.
    pub command: Option<Vec<String>>,
    /// How long to wait for an answer.
    pub timeout: Duration,
    /// The path to GET.
    pub path: String,
}

/// Build-time settings handed to steps that reach the network: the CA
/// bundle (mounted read-only, never in a layer, config or key) and proxy
/// variables.
#[derive(Debug, Clone, Default)]
pub struct BuildEnv {
    pub ca_bundle: Option<PathBuf>,
    pub proxy_env: Vec<(String, String)>,
    /// TCP endpoints egress steps may reach although their range is
    /// blocked (the proxies of `proxy_env`, package mirrors on the host's
    /// loopback or a private network).
    pub egress_allow: Vec<std::net::SocketAddr>,
}

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Root of the local cache (blobs, keys, rootfs, probes).
    pub cache_dir: PathBuf,
    pub layer: LayerSettings,
    /// How long entries of unpinned inputs live.
    pub unpinned_ttl: Duration,
    pub build_env: BuildEnv,
    /// The size limits of the directories steps write.
    pub disk: DiskLimits,
}

/// Where the image goes.
#[derive(Debug, Clone)]
pub enum Output {
    Registry(Reference),
    OciLayout { path: PathBuf, tag: String },
    DockerArchive { path: PathBuf, tag: String },
}

/// One build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub source: PathBuf,
    pub base: Reference,
    pub platform: Platform,
    pub output: Output,
    /// More tags for a registry output, in the output's repository: set,
    /// with the output's own tag, only once the manifest is in place (and,
    /// with `verify`, once the image passed). Empty for exports.
    pub tags: Vec<String>,
    /// `None` or `auto`: detect; `generic`: no language.
    pub language: Option<String>,
    pub options: BuildOptions,
    pub overrides: ConfigOverrides,
    pub format: ManifestFormat,
    /// The registry cache repository; `None` disables the registry tier.
    pub cache_repo: Option<Reference>,
    /// Skip cache lookups (results are still recorded).
    pub no_cache: bool,
    pub verify: Option<VerifySpec>,
    /// Set by the caller to stop the build: the sandboxed step running is
    /// killed and no other starts (a service's cancel).
    pub cancel: CancelFlag,
    /// The package-cache scope of this build: builds with another scope
    /// never read or write the same persistent package caches (`ftl serve`
    /// sets the token's name); `None` is the machine's default scope.
    pub cache_scope: Option<String>,
}

/// A build's cancellation, shared between the caller and the build.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<std::sync::atomic::AtomicBool>);

impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What went wrong in a build.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error(transparent)]
    Registry(#[from] Box<ftl_registry_client::Error>),
    #[error("{0}")]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Layer(#[from] crate::layer::LayerStoreError),
    #[error(transparent)]
    Cache(#[from] ftl_cache::CacheError),
    #[error(transparent)]
    Unpack(#[from] crate::rootfs::UnpackError),
    #[error(transparent)]
    Compose(#[from] crate::image::ComposeError),
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    #[error("unknown language `{0}`; use one of: {1}")]
    UnknownLanguage(String, String),
    #[error("base image {base}: {message}")]
    Base { base: String, message: String },
    #[error("verification failed: {message}\n{output}")]
    Verify { message: String, output: String },
    #[error("the sandbox failed: {0}")]
    Sandbox(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The request itself cannot be built (a flag combination).
    #[error("{0}")]
    Request(String),
    /// [`BuildRequest::cancel`] was set: the running step or verification
    /// was stopped and what it made removed.
    #[error("the build was cancelled")]
    Cancelled,
}

impl EngineError {
    /// A short, stable name of the error's kind, for machine-readable
    /// reports (`ftl build --json`, `ftl serve`'s records).
    pub fn kind(&self) -> &'static str {
        match self {
            EngineError::Source(_) => "source",
            EngineError::Registry(_) => "registry",
            EngineError::Plugin(_) => "plugin",
            EngineError::Layer(_) => "layer",
            EngineError::Cache(_) => "cache",
            EngineError::Unpack(_) => "unpack",
            EngineError::Compose(_) => "compose",
            EngineError::Export(_) => "export",
            EngineError::UnknownLanguage(..) => "unknown-language",
            EngineError::Base { .. } => "base",
            EngineError::Verify { .. } => "verify",
            EngineError::Sandbox(_) => "sandbox",
            EngineError::Internal(_) => "internal",
            EngineError::Request(_) => "request",
            EngineError::Cancelled => "cancelled",
        }
    }
}

impl From<ftl_registry_client::Error> for EngineError {
    fn from(e: ftl_registry_client::Error) -> Self {
        EngineError::Registry(Box::new(e))
    }
}

/// Progress events for the CLI (libraries never print).
#[derive(Debug, Clone)]
pub enum Event {
    PhaseStarted(&'static str),
    PhaseFinished(&'static str, Duration),
    /// A plan was made.
    Planned {
        language: String,
        layers: usize,
    },
    /// A layer's cache outcome.
    Layer {
        name: String,
        source: LayerSource,
    },
    /// A build step starts (`pip install`, ...).
    StepStarted(String),
    StepFinished(String, Duration),
    /// Something the user should know (an input that was ignored).
    Warning(String),
}

/// Receives [`Event`]s and push progress.
pub trait Observer: Send + Sync {
    fn event(&self, _event: &Event) {}
    /// Progress of blob uploads.
    fn push_progress(&self) -> Arc<dyn PushProgress> {
        Arc::new(ftl_registry_client::NoProgress)
    }
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// The build engine.
pub struct Engine {
    client: Client,
    cache: Cache,
    settings: EngineSettings,
    runtime: Arc<dyn StepRuntime>,
    plugins: Vec<Arc<dyn LanguagePlugin>>,
}

struct Timer {
    timings: Mutex<Vec<(String, u64)>>,
}

impl Timer {
    fn record(&self, phase: &str, d: Duration) {
        self.timings
            .lock()
            .expect("not poisoned")
            .push((phase.to_string(), d.as_millis() as u64));
    }
}

/// A layer of the plan with its cache outcome.
struct Resolved {
    planned: PlannedLayer,
    source: LayerSource,
    /// The layer's entry: under the planned key, or under its
    /// [`build_root_key`] when that key holds a marker.
    entry: Option<CacheEntry>,
    /// Local blob file when present.
    path: Option<PathBuf>,
    /// The planned key holds a marker: this key's layers vary by build
    /// root, so the layer is looked up and recorded under its
    /// [`build_root_key`].
    by_build_root: bool,
}

/// A layer built for a miss, as recorded.
struct Built {
    /// Its index in the plan.
    index: usize,
    entry: CacheEntry,
    /// Its blob.
    path: PathBuf,
    /// The marker recorded under the planned key when the layer went under
    /// its [`build_root_key`].
    marker: Option<CacheEntry>,
}

/// The input a root-dependent layer's key adds: the base image it was
/// built on.
const BUILD_ROOT: &str = "build_root";

/// The key a [root-dependent](LayerContents::root_dependent) layer of
/// `key` is recorded under when built on the base `base_digest`.
fn build_root_key(key: &crate::key::CacheKey, base_digest: &str) -> crate::key::CacheKey {
    key.with_input(BUILD_ROOT, serde_json::json!(base_digest))
}

impl Engine {
    pub fn new(
        client: Client,
        settings: EngineSettings,
        runtime: Arc<dyn StepRuntime>,
        plugins: Vec<Arc<dyn LanguagePlugin>>,
    ) -> Result<Self, EngineError> {
        let cache = Cache::open(&settings.cache_dir)?;
        // Volumes of builds that were killed.
        let reclaimed = disk::reclaim(&settings.cache_dir);
        if !reclaimed.is_empty() {
            tracing::info!(count = reclaimed.len(), "removed volumes of killed builds");
        }
        Ok(Engine {
            client,
            cache,
            settings,
            runtime,
            plugins,
        })
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The plugin for `language` over `source` ([`crate::detect::choose`]).
    fn choose_plugin(
        &self,
        language: Option<&str>,
        source: &SourceTree,
        settings: &BTreeMap<String, String>,
    ) -> Result<Arc<dyn LanguagePlugin>, EngineError> {
        let names: Vec<&str> = settings.keys().map(String::as_str).collect();
        Ok(crate::detect::choose(
            &self.plugins,
            language,
            source,
            &names,
        )?)
    }

    /// Runs one build.
    pub async fn build(
        &self,
        req: &BuildRequest,
        observer: Arc<dyn Observer>,
    ) -> Result<BuildReport, EngineError> {
        let started = Instant::now();
        // Tags are checked before anything is built.
        match &req.output {
            Output::Registry(target) => {
                tag_references(target, &req.tags)?;
            }
            _ if !req.tags.is_empty() => {
                return Err(EngineError::Request(
                    "more tags apply to a registry output only".into(),
                ))
            }
            _ => {}
        }
        let requests_before = self.client.request_count();
        let timer = Arc::new(Timer {
            timings: Mutex::new(Vec::new()),
        });
        macro_rules! phase {
            ($name:literal, $e:expr) => {{
                observer.event(&Event::PhaseStarted($name));
                let t = Instant::now();
                let r = $e;
                observer.event(&Event::PhaseFinished($name, t.elapsed()));
                timer.record($name, t.elapsed());
                r
            }};
        }

        // 1. The base: manifest and config only.
        let base = phase!(
            "resolve",
            base::BaseImage::resolve(&self.client, &req.base, &req.platform, &self.cache).await
        )?;
        let source_dir = req.source.clone();
        let source = phase!(
            "scan",
            tokio::task::spawn_blocking(move || SourceTree::scan(&source_dir))
                .await
                .map_err(join_err)?
        )?;
        let plugin = self.choose_plugin(req.language.as_deref(), &source, &req.options.settings)?;

        let rootfs = Arc::new(base::LazyRootfs::new(
            self.client.clone(),
            self.cache.clone(),
            self.settings.cache_dir.clone(),
            base.clone(),
            self.runtime.id_range(),
        ));
        let exec = Arc::new(SandboxExec {
            runtime: self.runtime.clone(),
            rootfs: rootfs.clone(),
            build_env: self.settings.build_env.clone(),
            base_env: base.info.env(),
            handle: tokio::runtime::Handle::current(),
            observer: observer.clone(),
            cache_dir: self.settings.cache_dir.clone(),
            client: self.client.clone(),
            cache: self.cache.clone(),
            platform: req.platform.clone(),
            images: Mutex::new(HashMap::new()),
            steps: Mutex::new(Vec::new()),
            cancel: req.cancel.clone(),
            leases: Mutex::new(HashMap::new()),
            scope_suffix: scope_suffix(req.cache_scope.as_deref()),
            output_suffix: output_suffix(&req.output),
            package_caches: Mutex::new(HashMap::new()),
            disk: self.settings.disk,
            bounds: disk::Bounds::new(self.settings.cache_dir.join("persistent")),
            layer_table: Mutex::new(Vec::new()),
            cache_repo: req.cache_repo.clone(),
            unpacked: Mutex::new(Vec::new()),
        });
        let probe_exec = Arc::new(probe::ProbeExec::new(
            exec.clone(),
            self.settings.cache_dir.join("probes-v1"),
            base.info.manifest_digest.clone(),
            self.client.clone(),
            req.cache_repo.clone(),
            tokio::runtime::Handle::current(),
            probe::Memos {
                dir: self.settings.cache_dir.join("memos-v1"),
                scope: req.cache_scope.clone(),
                no_cache: req.no_cache,
                ttl: self.settings.unpinned_ttl,
                pending: Mutex::new(Vec::new()),
            },
        ));

        // 2. Plan.
        let base_info = Arc::new(base.info.clone());
        let source = Arc::new(source);
        let options = Arc::new(req.options.clone());
        let mut plan = {
            let (plugin, source, base_info, options, probe_exec) = (
                plugin.clone(),
                source.clone(),
                base_info.clone(),
                options.clone(),
                probe_exec.clone(),
            );
            phase!(
                "plan",
                tokio::task::spawn_blocking(move || plugin.plan(&PlanContext {
                    source: &source,
                    base: &base_info,
                    options: &options,
                    exec: probe_exec.as_ref()
                }))
                .await
                .map_err(join_err)?
            )?
        };
        // The layer writer's settings (mtime from SOURCE_DATE_EPOCH, gzip
        // level) change every layer's bytes: they are part of every key.
        // The defaults are left out so keys made under them stay valid.
        if self.settings.layer != LayerSettings::default() {
            let layer = serde_json::json!({
                "mtime": self.settings.layer.mtime,
                "gzip_level": self.settings.layer.level,
            });
            for l in &mut plan.layers {
                l.key = l.key.with_input("layer_writer", layer.clone());
            }
        }
        // A layer built in one cache scope (an `ftl serve` token) is never
        // served to another: what a build's steps produce can depend on
        // more than its key names (a base of the tenant's choosing with
        // the same interpreter, another package of the same pip run), so
        // the key index is per scope too. Blobs are still shared by digest.
        if let Some(scope) = &req.cache_scope {
            for l in &mut plan.layers {
                l.key = l.key.with_input("cache_scope", serde_json::json!(scope));
            }
        }
        // What every plugin's image gets from the source: app.yaml's
        // env_variables; and how the source was read.
        app_yaml_config(&source, &mut plan)?;
        plan.warnings
            .splice(0..0, source.warnings().iter().cloned());
        observer.event(&Event::Planned {
            language: plugin.id().to_string(),
            layers: plan.layers.len(),
        });
        for w in &plan.warnings {
            observer.event(&Event::Warning(w.clone()));
        }

        // 3. Look keys up: local index, then the registry cache.
        let mut resolved = phase!(
            "lookup",
            self.lookup(&plan, req, &base.info.manifest_digest).await
        )?;
        for r in &resolved {
            if r.source != LayerSource::Built {
                observer.event(&Event::Layer {
                    name: r.planned.name.clone(),
                    source: r.source,
                });
            }
        }

        // 4. Build the misses, step by step. A step may unpack layers
        // that exist already (Exec::layers).
        *exec.layer_table.lock().expect("not poisoned") = resolved
            .iter()
            .map(|r| r.entry.as_ref().map(|e| (e.digest.clone(), r.path.clone())))
            .collect();
        let misses: Vec<usize> = resolved
            .iter()
            .enumerate()
            .filter(|(_, r)| r.source == LayerSource::Built)
            .map(|(i, _)| i)
            .collect();
        let mut built_entries: Vec<(CacheEntry, PathBuf)> = Vec::new();
        let mut markers: Vec<CacheEntry> = Vec::new();
        let plan = Arc::new(plan);
        if !misses.is_empty() {
            let by_build_root: Vec<usize> = misses
                .iter()
                .copied()
                .filter(|&i| resolved[i].by_build_root)
                .collect();
            let entries = phase!(
                "build",
                self.build_misses(
                    plan.clone(),
                    &misses,
                    &by_build_root,
                    source.clone(),
                    base_info.clone(),
                    options.clone(),
                    exec.clone(),
                    &observer
                )
                .await
            )?;
            for Built {
                index: i,
                entry,
                path,
                marker,
            } in entries
            {
                observer.event(&Event::Layer {
                    name: resolved[i].planned.name.clone(),
                    source: LayerSource::Built,
                });
                resolved[i].entry = Some(entry.clone());
                resolved[i].path = Some(path.clone());
                built_entries.push((entry, path));
                markers.extend(marker);
            }
        }
        probe_exec.flush_to_registry().await;
        let steps = std::mem::take(&mut *exec.steps.lock().expect("not poisoned"));
        let report = self
            .finish(
                req,
                &base,
                &plan,
                plugin.id(),
                resolved,
                built_entries,
                markers,
                &rootfs,
                &timer,
                observer,
                started,
                requests_before,
                steps,
            )
            .await?;
        // Only a build that pushed (or exported) and verified adds to the
        // shared package caches: one that fails or is cancelled later
        // leaves nothing there.
        if !req.cancel.is_cancelled() {
            tokio::task::spawn_blocking(move || exec.promote_package_caches())
                .await
                .map_err(join_err)?;
        }
        Ok(report)
    }

    /// Looks every planned key up: the local index, then the registry
    /// cache. A key holding a marker is looked up again under its
    /// [`build_root_key`] for this base (local, then registry); a miss
    /// there is a miss.
    async fn lookup(
        &self,
        plan: &LayerPlan,
        req: &BuildRequest,
        base_digest: &str,
    ) -> Result<Vec<Resolved>, EngineError> {
        let mut out = Vec::with_capacity(plan.layers.len());
        let mut remote_wanted = Vec::new();
        for (i, planned) in plan.layers.iter().enumerate() {
            let mut r = Resolved {
                planned: planned.clone(),
                source: LayerSource::Built,
                entry: None,
                path: None,
                by_build_root: false,
            };
            if !req.no_cache {
                let mut entry = self.cache.keys.get(&planned.key.hex)?;
                if entry.as_ref().is_some_and(CacheEntry::is_marker) {
                    r.by_build_root = true;
                    let key = build_root_key(&planned.key, base_digest);
                    entry = self.cache.keys.get(&key.hex)?.filter(|e| !e.is_marker());
                }
                if let Some(entry) = entry {
                    self.local_hit(&mut r, entry);
                }
                if r.entry.is_none() && req.cache_repo.is_some() {
                    remote_wanted.push(i);
                }
            }
            out.push(r);
        }
        let Some(repo) = &req.cache_repo else {
            return Ok(out);
        };
        let key_of = |r: &Resolved| {
            if r.by_build_root {
                build_root_key(&r.planned.key, base_digest).hex
            } else {
                r.planned.key.hex.clone()
            }
        };
        let keys: Vec<String> = remote_wanted.iter().map(|&i| key_of(&out[i])).collect();
        let found = join_bounded(
            keys.iter().map(|k| regcache::lookup(&self.client, repo, k)),
            8,
        )
        .await;
        // Markers found in the registry lead to their layers' keys: the
        // local index first, then a second round of registry lookups.
        let mut again = Vec::new();
        for (i, hit) in remote_wanted.into_iter().zip(found) {
            match hit {
                Some(e) if e.is_marker() && !out[i].by_build_root => {
                    out[i].by_build_root = true;
                    if let Some(e) = self.cache.keys.get(&key_of(&out[i]))? {
                        self.local_hit(&mut out[i], e);
                    }
                    if out[i].entry.is_none() {
                        again.push(i);
                    }
                }
                Some(e) if !e.is_marker() => self.registry_hit(&mut out[i], e),
                _ => {}
            }
        }
        let keys: Vec<String> = again.iter().map(|&i| key_of(&out[i])).collect();
        let found = join_bounded(
            keys.iter().map(|k| regcache::lookup(&self.client, repo, k)),
            8,
        )
        .await;
        for (i, hit) in again.into_iter().zip(found) {
            if let Some(e) = hit.filter(|e| !e.is_marker()) {
                self.registry_hit(&mut out[i], e);
            }
        }
        Ok(out)
    }

    /// `r` is served by the local index's `entry` when its blob is here.
    fn local_hit(&self, r: &mut Resolved, entry: CacheEntry) {
        if entry.is_marker() {
            return;
        }
        if let Ok(path) = self.cache.blobs.get(&entry.digest) {
            r.source = LayerSource::LocalCache;
            r.path = Some(path);
            r.entry = Some(entry);
        }
    }

    /// `r` is served by the registry cache's `entry`.
    fn registry_hit(&self, r: &mut Resolved, entry: CacheEntry) {
        // The bytes stay in the registry: the push mounts them. (A local
        // blob of the same digest, if any, is used for exports and
        // verification.)
        r.path = self.cache.blobs.get(&entry.digest).ok();
        r.source = LayerSource::RegistryCache;
        r.entry = Some(entry);
    }

    /// Builds the layers at `misses`, step by step, and records each in the
    /// local index: under its planned key, or, when it is
    /// [root-dependent](LayerContents::root_dependent) or its planned key
    /// holds a marker already (`by_build_root`), under its
    /// [`build_root_key`] with a marker under the planned key.
    #[allow(clippy::too_many_arguments)]
    async fn build_misses(
        &self,
        plan: Arc<LayerPlan>,
        misses: &[usize],
        by_build_root: &[usize],
        source: Arc<SourceTree>,
        base_info: Arc<BaseInfo>,
        options: Arc<BuildOptions>,
        exec: Arc<SandboxExec>,
        observer: &Arc<dyn Observer>,
    ) -> Result<Vec<Built>, EngineError> {
        let mut by_step: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for &i in misses {
            by_step.entry(plan.layers[i].step).or_default().push(i);
        }
        let mut out = Vec::new();
        for (step, wanted) in by_step {
            let (plan2, source, base_info, options, exec) = (
                plan.clone(),
                source.clone(),
                base_info.clone(),
                options.clone(),
                exec.clone(),
            );
            let settings = self.settings.clone();
            let cache = self.cache.clone();
            let wanted2 = wanted.clone();
            let by_build_root = by_build_root.to_vec();
            let label = plan.layers[wanted[0]].name.clone();
            observer.event(&Event::StepStarted(label.clone()));
            let t = Instant::now();
            let results = tokio::task::spawn_blocking(
                move || -> Result<Vec<Built>, EngineError> {
                    // The step's outputs live on a volume of their own.
                    let tmp = settings.cache_dir.join("tmp");
                    let scratch = if plan2.steps[step].writes_scratch() {
                        disk::Scratch::new(
                            &tmp,
                            "step-",
                            settings.disk.scratch_bytes,
                            &exec.bounds,
                        )?
                    } else {
                        disk::Scratch::plain(&tmp, "step-", &exec.bounds)?
                    };
                    let ctx = StepContext {
                        source: &source,
                        base: &base_info,
                        options: &options,
                        exec: exec.as_ref(),
                        scratch: scratch.path(),
                    };
                    let contents = plan2.steps[step].build(&wanted2, &ctx)?;
                    // A cancelled build's step may have finished: nothing
                    // of it reaches the cache.
                    if exec.cancel.is_cancelled() {
                        return Err(EngineError::Plugin(PluginError::new(
                            "the build was cancelled",
                        )));
                    }
                    let mut got: HashMap<usize, LayerContents> = contents.into_iter().collect();
                    let mut written = Vec::new();
                    for &i in &wanted2 {
                        let layer = &plan2.layers[i];
                        let c = got.remove(&i).ok_or_else(|| {
                            PluginError::new(format!(
                                "the plugin produced no contents for layer `{}`",
                                layer.name
                            ))
                        })?;
                        let digests = write_layer_to_store(&c, settings.layer, &cache.blobs)?;
                        let now = ftl_cache::now_secs();
                        let expires = (!layer.pinned).then(|| now + settings.unpinned_ttl.as_secs());
                        let vary = c.root_dependent || by_build_root.contains(&i);
                        let key = if vary {
                            build_root_key(&layer.key, &base_info.manifest_digest)
                        } else {
                            layer.key.clone()
                        };
                        let entry = CacheEntry {
                            key: key.hex,
                            digest: digests.digest.clone(),
                            diff_id: digests.diff_id,
                            size: digests.size,
                            media_type: OCI_LAYER_GZIP.to_string(),
                            created: now,
                            expires,
                            name: layer.name.clone(),
                            inputs: key.canonical,
                            varies_by: None,
                        };
                        cache.keys.put(&entry)?;
                        // The layer first, then the marker that leads to it.
                        let marker = vary.then(|| {
                            CacheEntry::marker(
                                &layer.key.hex,
                                &layer.key.canonical,
                                &layer.name,
                                BUILD_ROOT,
                                now,
                                expires,
                            )
                        });
                        if let Some(m) = &marker {
                            tracing::debug!(layer = %layer.name, "the layer depends on its build root; recorded for this base only");
                            cache.keys.put(m)?;
                        }
                        let path = cache.blobs.get(&digests.digest)?;
                        if let Some(slot) =
                            exec.layer_table.lock().expect("not poisoned").get_mut(i)
                        {
                            *slot = Some((entry.digest.clone(), Some(path.clone())));
                        }
                        written.push(Built {
                            index: i,
                            entry,
                            path,
                            marker,
                        });
                    }
                    Ok(written)
                },
            )
            .await
            .map_err(join_err)??;
            observer.event(&Event::StepFinished(label, t.elapsed()));
            out.extend(results);
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        req: &BuildRequest,
        base: &BaseImage,
        plan: &LayerPlan,
        language: &str,
        resolved: Vec<Resolved>,
        built: Vec<(CacheEntry, PathBuf)>,
        markers: Vec<CacheEntry>,
        rootfs: &Arc<base::LazyRootfs>,
        timer: &Arc<Timer>,
        observer: Arc<dyn Observer>,
        started: Instant,
        requests_before: u64,
        steps: Vec<StepRun>,
    ) -> Result<BuildReport, EngineError> {
        // 5. Compose.
        let cache_registry = req
            .cache_repo
            .as_ref()
            .map(|r| (r.registry().to_string(), r.repository().to_string()));
        let layers: Vec<ImageLayer> = resolved
            .iter()
            .map(|r| {
                let e = r.entry.as_ref().expect("every layer resolved or built");
                let origin = match (&r.path, &cache_registry) {
                    (Some(p), _) => LayerOrigin::Local { path: p.clone() },
                    (None, Some((registry, repository))) => LayerOrigin::Remote {
                        registry: registry.clone(),
                        repository: repository.clone(),
                    },
                    (None, None) => unreachable!("a registry hit needs a cache repository"),
                };
                ImageLayer {
                    digest: e.digest.clone(),
                    diff_id: e.diff_id.clone(),
                    size: e.size,
                    media_type: e.media_type.clone(),
                    origin,
                    created_by: Some(r.planned.created_by.clone()),
                }
            })
            .collect();
        let composed = compose(&ComposeInput {
            base_config: &base.config_bytes,
            base_layers: &base.layers,
            base_name: &base.info.reference,
            base_digest: &base.info.manifest_digest,
            layers: &layers,
            patch: &plan.config,
            overrides: &req.overrides,
            format: req.format,
            created: self.settings.layer.mtime,
        })?;

        // 6. Output, and 7. verify. With verification the image is pushed
        // by digest only, verified, and only then tagged; an export is
        // verified before anything is written. A failed verification
        // leaves every tag (and any file at the output's path) as it was.
        let mut push_actions: HashMap<String, (String, u64)> = HashMap::new();
        let mut tags: Vec<String> = Vec::new();
        let mut verify = None;
        let image = match &req.output {
            Output::Registry(target) => {
                let tagged = tag_references(target, &req.tags)?;
                let t = Instant::now();
                observer.event(&Event::PhaseStarted("push"));
                let report = self
                    .push(target, &tagged, &composed, base, req, observer.clone())
                    .await?;
                for b in &report.blobs {
                    let (action, bytes) = match &b.action {
                        BlobAction::Present => ("present".to_string(), 0),
                        BlobAction::Mounted { .. } => ("mounted".to_string(), 0),
                        BlobAction::Uploaded { bytes } => ("uploaded".to_string(), *bytes),
                    };
                    push_actions.insert(b.digest.to_string(), (action, bytes));
                }
                if let Some(repo) = &req.cache_repo {
                    let mount_from = (repo.registry() == target.registry())
                        .then(|| target.repository().to_string());
                    regcache::record(&self.client, repo, built, mount_from).await;
                    regcache::record_markers(&self.client, repo, markers).await;
                }
                observer.event(&Event::PhaseFinished("push", t.elapsed()));
                timer.record("push", t.elapsed());
                if let Some(spec) = &req.verify {
                    // Verification reads only our layers' blobs.
                    let blobs = self.local_blobs(&composed, base, false).await?;
                    verify = Some(
                        self.verify_phase(
                            &composed,
                            base,
                            rootfs,
                            spec,
                            &req.cancel,
                            &blobs,
                            timer,
                            &observer,
                        )
                        .await?,
                    );
                    let t = Instant::now();
                    observer.event(&Event::PhaseStarted("tag"));
                    let manifest = Bytes::from(composed.manifest.clone());
                    let media_type = composed.format.manifest_type().into();
                    for r in &tagged {
                        self.client
                            .put_manifest(r, manifest.clone(), &media_type)
                            .await?;
                    }
                    observer.event(&Event::PhaseFinished("tag", t.elapsed()));
                    timer.record("tag", t.elapsed());
                }
                tags = tagged.iter().map(target_name).collect();
                format!("{}@{}", target_name(target), composed.manifest_digest)
            }
            Output::OciLayout { path, tag } => {
                let (blobs, verified) = self
                    .verify_export(&composed, base, rootfs, req, timer, &observer)
                    .await?;
                verify = verified;
                let t = Instant::now();
                observer.event(&Event::PhaseStarted("export"));
                let (image, path2, tag2) = (composed.clone(), path.clone(), tag.clone());
                tokio::task::spawn_blocking(move || {
                    crate::export::write_oci_layout(&image, &path2, &tag2, |d| blobs[d].clone())
                })
                .await
                .map_err(join_err)??;
                observer.event(&Event::PhaseFinished("export", t.elapsed()));
                timer.record("export", t.elapsed());
                format!(
                    "oci:{}:{}@{}",
                    path.display(),
                    tag,
                    composed.manifest_digest
                )
            }
            Output::DockerArchive { path, tag } => {
                let (blobs, verified) = self
                    .verify_export(&composed, base, rootfs, req, timer, &observer)
                    .await?;
                verify = verified;
                let t = Instant::now();
                observer.event(&Event::PhaseStarted("export"));
                let docker = if req.format == ManifestFormat::Docker {
                    composed.clone()
                } else {
                    compose(&ComposeInput {
                        base_config: &base.config_bytes,
                        base_layers: &base.layers,
                        base_name: &base.info.reference,
                        base_digest: &base.info.manifest_digest,
                        layers: &layers,
                        patch: &plan.config,
                        overrides: &req.overrides,
                        format: ManifestFormat::Docker,
                        created: self.settings.layer.mtime,
                    })?
                };
                let (path2, tag2) = (path.clone(), tag.clone());
                tokio::task::spawn_blocking(move || {
                    crate::export::write_docker_archive(&docker, &path2, &tag2, |d| {
                        blobs[d].clone()
                    })
                })
                .await
                .map_err(join_err)??;
                observer.event(&Event::PhaseFinished("export", t.elapsed()));
                timer.record("export", t.elapsed());
                format!(
                    "docker-archive:{}:{}@{}",
                    path.display(),
                    tag,
                    composed.manifest_digest
                )
            }
        };

        // 8. Report.
        let mut layer_reports = Vec::new();
        for l in &base.layers {
            let (push, bytes) = push_actions
                .get(&l.digest)
                .cloned()
                .map(|(a, b)| (Some(a), b))
                .unwrap_or((None, 0));
            layer_reports.push(LayerReport {
                name: "base".into(),
                digest: l.digest.clone(),
                size: l.size,
                source: LayerSource::Base,
                push,
                bytes_uploaded: bytes,
            });
        }
        for (r, l) in resolved.iter().zip(&layers) {
            let (push, bytes) = push_actions
                .get(&l.digest)
                .cloned()
                .map(|(a, b)| (Some(a), b))
                .unwrap_or((None, 0));
            layer_reports.push(LayerReport {
                name: r.planned.name.clone(),
                digest: l.digest.clone(),
                size: l.size,
                source: r.source,
                push,
                bytes_uploaded: bytes,
            });
        }
        let mut timings: Vec<report::Timing> = timer
            .timings
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(phase, ms)| report::Timing {
                phase: phase.clone(),
                ms: *ms,
            })
            .collect();
        timings.push(report::Timing {
            phase: "total".into(),
            ms: started.elapsed().as_millis() as u64,
        });
        Ok(BuildReport {
            schema: report::REPORT_SCHEMA,
            image,
            digest: composed.manifest_digest.clone(),
            tags,
            platform: ftl_registry_client::platform_string(&req.platform),
            base: base.info.reference.clone(),
            base_digest: base.info.manifest_digest.clone(),
            layers_built: layer_reports
                .iter()
                .filter(|l| l.source == LayerSource::Built)
                .count(),
            // Every blob uploaded: the layers and the config.
            bytes_uploaded: push_actions.values().map(|(_, bytes)| bytes).sum(),
            layers: layer_reports,
            timings,
            registry_requests: self.client.request_count() - requests_before,
            steps,
            language: language.to_string(),
            plan: plan.notes.clone(),
            warnings: plan
                .warnings
                .iter()
                .cloned()
                .chain(verify.as_ref().and_then(VerifyReport::warning))
                .collect(),
            verify,
        })
    }

    /// Pushes the image's blobs and manifest. Without verification the
    /// manifest goes under `tagged` at once; with it, by digest only (the
    /// caller tags it once verified).
    async fn push(
        &self,
        target: &Reference,
        tagged: &[Reference],
        image: &crate::image::ComposedImage,
        base: &BaseImage,
        req: &BuildRequest,
        observer: Arc<dyn Observer>,
    ) -> Result<ftl_registry_client::PushReport, EngineError> {
        // An unchanged rebuild costs one manifest check. A registry that
        // cannot be reached or refuses us fails here, once, not again for
        // every blob.
        let head = match self.client.head_manifest(target).await {
            Ok(head) => head,
            Err(
                e @ (ftl_registry_client::Error::Transport { .. }
                | ftl_registry_client::Error::Timeout { .. }
                | ftl_registry_client::Error::Tls { .. }
                | ftl_registry_client::Error::Unauthorized { .. }
                | ftl_registry_client::Error::Token { .. }),
            ) => return Err(e.into()),
            Err(_) => None,
        };
        // Other tags than the target's own are not checked: they are
        // PUT again (one request each).
        let others_set = tagged.len() <= usize::from(target.tag().is_some());
        if let Some(head) = head {
            if head.digest.to_string() == image.manifest_digest && others_set {
                let blobs = image
                    .layers
                    .iter()
                    .map(|l| ftl_registry_client::BlobReport {
                        digest: l.digest.parse().expect("valid"),
                        size: l.size,
                        action: BlobAction::Present,
                    })
                    .collect();
                return Ok(ftl_registry_client::PushReport {
                    reference: target.clone(),
                    manifest_digest: head.digest,
                    blobs,
                    bytes_uploaded: 0,
                    requests: 1,
                });
            }
        }
        let mut blobs = Vec::new();
        for l in &image.layers {
            let (source, mount_from): (
                Option<Arc<dyn ftl_registry_client::BlobSource>>,
                Vec<String>,
            ) = match &l.origin {
                LayerOrigin::Base {
                    registry,
                    repository,
                } => {
                    if registry == target.registry() {
                        (None, vec![repository.clone()])
                    } else {
                        // Another registry: the bytes must travel; stream them.
                        (
                            Some(Arc::new(RemoteBlobSource::new(
                                self.client.clone(),
                                base.reference.clone(),
                                &l.digest,
                            ))),
                            vec![],
                        )
                    }
                }
                LayerOrigin::Local { path } => {
                    let mounts = req
                        .cache_repo
                        .iter()
                        .filter(|r| r.registry() == target.registry())
                        .map(|r| r.repository().to_string())
                        .collect();
                    (Some(Arc::new(FileSource(path.clone()))), mounts)
                }
                LayerOrigin::Remote {
                    registry,
                    repository,
                } => {
                    if registry == target.registry() {
                        (None, vec![repository.clone()])
                    } else {
                        let repo = req
                            .cache_repo
                            .clone()
                            .expect("remote layers come from the cache repository");
                        (
                            Some(Arc::new(RemoteBlobSource::new(
                                self.client.clone(),
                                repo,
                                &l.digest,
                            ))),
                            vec![],
                        )
                    }
                }
            };
            blobs.push(PushBlob {
                digest: l.digest.parse().expect("valid digest"),
                size: l.size,
                media_type: l.media_type.as_str().into(),
                source,
                mount_from,
            });
        }
        blobs.push(PushBlob {
            digest: image.config_digest.parse().expect("valid digest"),
            size: image.config.len() as u64,
            media_type: image.format.config_type().into(),
            source: Some(Arc::new(BytesSource(Bytes::from(image.config.clone())))),
            mount_from: vec![],
        });
        let digest: ftl_registry_client::Digest =
            image.manifest_digest.parse().expect("valid digest");
        // The target as given (its digest, if it names one, is checked by
        // the push) and the other tags with it; or, to be verified first,
        // by digest alone.
        let (push_to, extra_tags) = if req.verify.is_none() {
            let others = tagged
                .iter()
                .filter_map(|r| r.tag())
                .filter(|t| Some(*t) != target.tag())
                .map(String::from)
                .collect();
            (target.clone(), others)
        } else {
            (target.by_digest(digest), Vec::new())
        };
        let report = self
            .client
            .push(
                PushRequest {
                    target: push_to,
                    blobs,
                    manifest: Bytes::from(image.manifest.clone()),
                    manifest_media_type: image.format.manifest_type().into(),
                    extra_tags,
                },
                observer.push_progress(),
            )
            .await?;
        Ok(report)
    }

    /// Every layer's bytes as a local file (for exports and verification;
    /// base layers only `with_base`): base layers and registry-cache hits
    /// are downloaded into the blob store once.
    async fn local_blobs(
        &self,
        image: &crate::image::ComposedImage,
        base: &BaseImage,
        with_base: bool,
    ) -> Result<HashMap<String, PathBuf>, EngineError> {
        let mut out = HashMap::new();
        for l in &image.layers {
            let path = match &l.origin {
                LayerOrigin::Local { path } => path.clone(),
                LayerOrigin::Base { .. } if !with_base => continue,
                LayerOrigin::Base { .. } => {
                    base::fetch_blob(&self.client, &self.cache, &base.reference, &l.digest).await?
                }
                LayerOrigin::Remote {
                    registry,
                    repository,
                } => {
                    let repo = Reference::parse(&format!("{registry}/{repository}"))?;
                    base::fetch_blob(&self.client, &self.cache, &repo, &l.digest).await?
                }
            };
            out.insert(l.digest.clone(), path);
        }
        Ok(out)
    }

    /// [`Self::verify`] as the build's `verify` phase.
    #[allow(clippy::too_many_arguments)]
    /// An export's blobs, local, and its verification (when asked for),
    /// before anything of it is written.
    async fn verify_export(
        &self,
        image: &crate::image::ComposedImage,
        base: &BaseImage,
        rootfs: &Arc<base::LazyRootfs>,
        req: &BuildRequest,
        timer: &Timer,
        observer: &Arc<dyn Observer>,
    ) -> Result<(HashMap<String, PathBuf>, Option<VerifyReport>), EngineError> {
        let blobs = self.local_blobs(image, base, true).await?;
        let verified = match &req.verify {
            Some(spec) => Some(
                self.verify_phase(
                    image,
                    base,
                    rootfs,
                    spec,
                    &req.cancel,
                    &blobs,
                    timer,
                    observer,
                )
                .await?,
            ),
            None => None,
        };
        Ok((blobs, verified))
    }

    #[allow(clippy::too_many_arguments)]
    async fn verify_phase(
        &self,
        image: &crate::image::ComposedImage,
        base: &BaseImage,
        rootfs: &Arc<base::LazyRootfs>,
        spec: &VerifySpec,
        cancel: &CancelFlag,
        blobs: &HashMap<String, PathBuf>,
        timer: &Timer,
        observer: &Arc<dyn Observer>,
    ) -> Result<VerifyReport, EngineError> {
        observer.event(&Event::PhaseStarted("verify"));
        let t = Instant::now();
        let report = self.verify(image, base, rootfs, spec, cancel, blobs).await;
        observer.event(&Event::PhaseFinished("verify", t.elapsed()));
        timer.record("verify", t.elapsed());
        report
    }

    async fn verify(
        &self,
        image: &crate::image::ComposedImage,
        base: &BaseImage,
        rootfs: &Arc<base::LazyRootfs>,
        spec: &VerifySpec,
        cancel: &CancelFlag,
        blobs: &HashMap<String, PathBuf>,
    ) -> Result<VerifyReport, EngineError> {
        let base_lowers = rootfs.lowers().await?;
        let cancel = cancel.clone();
        // The base's blobs, only for a copy where overlayfs is unavailable.
        let (client, cache, handle) = (
            self.client.clone(),
            self.cache.clone(),
            tokio::runtime::Handle::current(),
        );
        let (base_ref, base_digests): (Reference, Vec<String>) = (
            base.reference.clone(),
            base.layers.iter().map(|l| l.digest.clone()).collect(),
        );
        let base_blobs = move || {
            handle.block_on(async {
                let mut out = Vec::new();
                for d in &base_digests {
                    out.push(base::fetch_blob(&client, &cache, &base_ref, d).await?);
                }
                Ok(out)
            })
        };
        let ours: Vec<PathBuf> = image.layers[base.layers.len()..]
            .iter()
            .map(|l| blobs[&l.digest].clone())
            .collect();
        let config: serde_json::Value = serde_json::from_slice(&image.config)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        let app = app_process(&config, spec)?;
        let runtime = self.runtime.clone();
        let spec = spec.clone();
        let scratch_root = self.settings.cache_dir.join("tmp");
        let ids = runtime.id_range();
        let limit = self.settings.disk.scratch_bytes;
        tokio::task::spawn_blocking(move || -> Result<VerifyReport, EngineError> {
            let scratch = tempfile::Builder::new()
                .prefix("verify-")
                .tempdir_in(&scratch_root)
                .map_err(|e| {
                    EngineError::Internal(format!("cannot create {}: {e}", scratch_root.display()))
                })?;
            // What the app writes to its root (the overlay's upper
            // directory) goes to a volume of its own.
            let rw = disk::verify_volume(scratch.path(), limit);
            let root = base::image_rootfs(
                &base_lowers,
                &ours,
                scratch.path(),
                ids.as_ref(),
                &base_blobs,
            )?;
            // Cancelled while the root was made: the app never starts.
            let result = if cancel.is_cancelled() {
                Err(EngineError::Cancelled)
            } else {
                runtime.verify(root.path(), &app, &spec, &cancel)
            };
            drop(root);
            let result = result.map_err(|e| disk::explain_full_root(rw.as_ref(), e));
            drop(rw);
            result
        })
        .await
        .map_err(join_err)?
    }
}

/// Every tag a registry output gets, as references: the target's own tag
/// first (none when it names a digest only), then `tags` in order, each
/// once.
fn tag_references(target: &Reference, tags: &[String]) -> Result<Vec<Reference>, EngineError> {
    let mut out: Vec<Reference> = Vec::new();
    for tag in target
        .tag()
        .into_iter()
        .chain(tags.iter().map(String::as_str))
    {
        let r = target.with_tag(tag)?;
        if !out.contains(&r) {
            out.push(r);
        }
    }
    Ok(out)
}

fn target_name(r: &Reference) -> String {
    match r.tag() {
        Some(t) => format!("{}/{}:{}", r.registry(), r.repository(), t),
        None => format!("{}/{}", r.registry(), r.repository()),
    }
}

fn join_err(e: tokio::task::JoinError) -> EngineError {
    EngineError::Internal(format!("a build task failed: {e}"))
}

/// Runs futures with at most `n` at once, keeping their order.
async fn join_bounded<F: std::future::Future>(
    futs: impl Iterator<Item = F>,
    n: usize,
) -> Vec<F::Output> {
    use futures_util::StreamExt;
    futures_util::stream::iter(futs).buffered(n).collect().await
}

/// app.yaml's `env_variables` into the plan's env (over the plugin's), and
/// a warning that its `handlers` have no place in an image.
fn app_yaml_config(source: &SourceTree, plan: &mut LayerPlan) -> Result<(), EngineError> {
    let Some(app) = crate::app::AppYaml::read(source)? else {
        return Ok(());
    };
    for (k, v) in app.env_variables {
        plan.config.env.retain(|(name, _)| *name != k);
        plan.config.env.push((k, v));
    }
    if let Some(line) = app.handlers {
        plan.warnings.push(format!(
            "app.yaml:{line}: `handlers:` is ignored: App Engine routes requests and serves \
             static files by it, an image has no place for it (the app itself must serve them)"
        ));
    }
    Ok(())
}

/// The process of an image from its config.
fn app_process(config: &serde_json::Value, spec: &VerifySpec) -> Result<AppProcess, EngineError> {
    let c = &config["config"];
    let list = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let args = match &spec.command {
        Some(cmd) => cmd.clone(),
        None => {
            let mut a = list(&c["Entrypoint"]);
            a.extend(list(&c["Cmd"]));
            a
        }
    };
    if args.is_empty() {
        return Err(EngineError::Verify {
            message: "the image has no entrypoint or cmd to start".into(),
            output: "set one with --entrypoint, or give --verify-cmd".into(),
        });
    }
    let env = list(&c["Env"])
        .into_iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    Ok(AppProcess {
        args,
        env,
        cwd: c["WorkingDir"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("/")
            .to_string(),
        user: c["User"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(String::from),
        port: declared_port(config).unwrap_or(DEFAULT_PORT),
    })
}

/// The `Exec` plugins get: runs requests on the base rootfs through the
/// runtime, unpacking the rootfs on first use, and hands network steps the
/// build-time CA bundle and proxy settings.
pub(crate) struct SandboxExec {
    runtime: Arc<dyn StepRuntime>,
    rootfs: Arc<base::LazyRootfs>,
    build_env: BuildEnv,
    /// The base image's env, applied before the request's.
    base_env: Vec<(String, String)>,
    handle: tokio::runtime::Handle,
    observer: Arc<dyn Observer>,
    /// For [`Exec::persistent_dir`] and builder images' rootfs.
    cache_dir: PathBuf,
    client: Client,
    cache: Cache,
    platform: Platform,
    /// Builder images ([`StepRoot::Image`]) by reference: rootfs and env.
    images: Mutex<HashMap<String, BuilderImage>>,
    /// What ran, for the report.
    steps: Mutex<Vec<StepRun>>,
    /// The build's cancellation: steps are killed when it is set.
    cancel: CancelFlag,
    /// Leases of the persistent directories this build uses, by name.
    leases: Mutex<HashMap<String, ftl_cache::dirs::Lease>>,
    /// Appended to persistent directories' names: the build's cache scope.
    scope_suffix: String,
    /// 16 hex digits of the build's output (the image's repository, the
    /// layout's or archive's path): what names [`CacheTrust::AddOnly`]
    /// caches.
    output_suffix: String,
    /// This build's views of shared package caches, by name.
    package_caches: Mutex<HashMap<String, package_cache::CacheView>>,
    /// The size limits of the directories steps write.
    disk: DiskLimits,
    /// Which of the directories steps write are size-limited.
    bounds: disk::Bounds,
    /// The plan's layers that exist so far (digest, local blob if any), for
    /// [`Exec::layers`]; and where registry-cache hits are fetched from.
    layer_table: Mutex<Vec<Option<LayerBlob>>>,
    cache_repo: Option<Reference>,
    /// Directories [`Exec::layers`] unpacked: removed with the build.
    unpacked: Mutex<Vec<tempfile::TempDir>>,
}

/// 16 hex digits of the sha256 of where a build's image goes: the
/// registry and repository (no tag), or the layout's or archive's path.
fn output_suffix(output: &Output) -> String {
    let name = match output {
        Output::Registry(r) => format!("{}/{}", r.registry(), r.repository()),
        Output::OciLayout { path, .. } | Output::DockerArchive { path, .. } => {
            path.display().to_string()
        }
    };
    crate::short_digest(name.as_bytes())
}

/// `""` for the default scope, else `~` and 16 hex digits of the scope's
/// sha256 (any string names a scope; the directory name stays short).
fn scope_suffix(scope: Option<&str>) -> String {
    scope
        .map(|s| format!("~{}", crate::short_digest(s.as_bytes())))
        .unwrap_or_default()
}

/// A layer of the plan that exists: its digest and, when local, its blob.
type LayerBlob = (String, Option<PathBuf>);

/// A builder image's lazily unpacked rootfs and its config's env.
type BuilderImage = Arc<(base::LazyRootfs, Vec<(String, String)>)>;

/// The PATH of steps on the host's root.
const HOST_STEP_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl SandboxExec {
    /// The rootfs and the env applied before the request's, for `root`.
    fn root_for(&self, root: &StepRoot) -> Result<(PathBuf, Vec<(String, String)>), PluginError> {
        match root {
            StepRoot::Base => {
                let rootfs = self
                    .handle
                    .block_on(self.rootfs.ensure())
                    .map_err(|e| PluginError::new(crate::error_chain(&e)))?;
                Ok((rootfs, self.base_env.clone()))
            }
            StepRoot::Host => Ok((
                self.host_root()?,
                vec![("PATH".to_string(), HOST_STEP_PATH.to_string())],
            )),
            StepRoot::Image(reference) => {
                let existing = self
                    .images
                    .lock()
                    .expect("not poisoned")
                    .get(reference)
                    .cloned();
                let image = match existing {
                    Some(i) => i,
                    None => {
                        let parsed: Reference = reference.parse().map_err(|e| {
                            PluginError::new(format!("builder image `{reference}`: {e}"))
                        })?;
                        let image = self
                            .handle
                            .block_on(base::BaseImage::resolve(
                                &self.client,
                                &parsed,
                                &self.platform,
                                &self.cache,
                            ))
                            .map_err(|e| {
                                PluginError::new(format!("builder image `{reference}`: {e}"))
                            })?;
                        let env = image.info.env();
                        let lazy = base::LazyRootfs::new(
                            self.client.clone(),
                            self.cache.clone(),
                            self.cache_dir.clone(),
                            image,
                            self.runtime.id_range(),
                        );
                        let i = Arc::new((lazy, env));
                        self.images
                            .lock()
                            .expect("not poisoned")
                            .insert(reference.clone(), i.clone());
                        i
                    }
                };
                let rootfs = self
                    .handle
                    .block_on(image.0.ensure())
                    .map_err(|e| PluginError::new(format!("builder image `{reference}`: {e}")))?;
                Ok((rootfs, image.1.clone()))
            }
        }
    }
}

/// The host directories a [`StepRoot::Host`] step sees (read-only): the
/// system, not the host's homes, services' state or other mounts.
const HOST_ROOT_DIRS: &[&str] = &[
    "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "opt",
];

impl SandboxExec {
    /// A root for steps on the host's toolchain: a directory of the cache
    /// holding the host's top-level symlinks (`bin -> usr/bin`) and empty
    /// mountpoints, onto which [`HOST_ROOT_DIRS`] are bound read-only (the
    /// host's `/` itself cannot be the new root of a mount namespace).
    fn host_root(&self) -> Result<PathBuf, PluginError> {
        let root = self.cache_dir.join("host-root-v1");
        let io =
            |e: std::io::Error| PluginError::new(format!("cannot prepare {}: {e}", root.display()));
        std::fs::create_dir_all(&root).map_err(io)?;
        for name in HOST_ROOT_DIRS {
            let host = Path::new("/").join(name);
            let at = root.join(name);
            let Ok(meta) = std::fs::symlink_metadata(&host) else {
                continue;
            };
            if std::fs::symlink_metadata(&at).is_ok() {
                continue;
            }
            let made = if meta.file_type().is_symlink() {
                std::fs::read_link(&host).and_then(|t| std::os::unix::fs::symlink(t, &at))
            } else if meta.is_dir() {
                std::fs::create_dir(&at)
            } else {
                continue;
            };
            if let Err(e) = made {
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    return Err(io(e));
                }
            }
        }
        Ok(root)
    }

    /// The read-only mounts of [`HOST_ROOT_DIRS`] that are directories.
    fn host_mounts() -> Vec<ExecMount> {
        HOST_ROOT_DIRS
            .iter()
            .map(|n| Path::new("/").join(n))
            .filter(|p| {
                std::fs::symlink_metadata(p)
                    .is_ok_and(|m| m.is_dir() && !m.file_type().is_symlink())
            })
            .map(|p| ExecMount {
                target: p.to_string_lossy().into_owned(),
                host: p,
                writable: false,
            })
            .collect()
    }
}

/// Where the build-time CA bundle appears inside a step.
pub const STEP_CA_PATH: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Where it appears in steps on the host's root ([`StepRoot::Host`]).
pub const HOST_STEP_CA_PATH: &str = "/tmp/ftl-ca/ca-certificates.crt";

impl SandboxExec {
    /// The rootfs and the request as the runtime gets it: the root's
    /// mounts and env, the build-time CA bundle and proxy for network steps.
    fn prepare(&self, request: &ExecRequest) -> Result<(PathBuf, ExecRequest), PluginError> {
        if request.root == StepRoot::Host {
            // Mountpoints are created on the root: below /tmp (a tmpfs in
            // the sandbox) they never touch the host's filesystem.
            if let Some(m) = request
                .mounts
                .iter()
                .find(|m| !m.target.starts_with("/tmp/") || m.target.split('/').any(|c| c == ".."))
            {
                return Err(PluginError::new(format!(
                    "`{}`: a step on the host's root can only mount below /tmp, not at {}",
                    request.label, m.target
                )));
            }
        }
        let (rootfs, root_env) = self.root_for(&request.root)?;
        let mut req = request.clone();
        if request.root == StepRoot::Host {
            let mut mounts = Self::host_mounts();
            mounts.append(&mut req.mounts);
            req.mounts = mounts;
        }
        let mut env = root_env;
        for (k, v) in std::mem::take(&mut req.env) {
            env.retain(|(name, _)| *name != k);
            env.push((k, v));
        }
        req.env = env;
        if req.network == StepNetwork::Egress {
            if let Some(ca) = &self.build_env.ca_bundle {
                // The host's /etc is a read-only mount: no mountpoint there.
                let ca_path = if req.root == StepRoot::Host {
                    HOST_STEP_CA_PATH
                } else {
                    STEP_CA_PATH
                };
                req.mounts.push(ExecMount {
                    host: ca.clone(),
                    target: ca_path.into(),
                    writable: false,
                });
                for var in [
                    "SSL_CERT_FILE",
                    "PIP_CERT",
                    "REQUESTS_CA_BUNDLE",
                    "NODE_EXTRA_CA_CERTS",
                    "CURL_CA_BUNDLE",
                    "npm_config_cafile",
                ] {
                    req.env.push((var.into(), ca_path.into()));
                }
            }
            req.env.extend(self.build_env.proxy_env.iter().cloned());
            req.egress_allow = self.build_env.egress_allow.clone();
        }
        Ok((rootfs, req))
    }
}

/// A name under the cache directory: `[A-Za-z0-9._-]+`, not hidden.
fn check_cache_name(what: &str, name: &str) -> Result<(), PluginError> {
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(PluginError::new(format!("invalid {what} name `{name}`")));
    }
    Ok(())
}

impl Exec for SandboxExec {
    fn layers(&self, indices: &[usize]) -> Result<PathBuf, PluginError> {
        let mut blobs = Vec::new();
        for &i in indices {
            let slot = self
                .layer_table
                .lock()
                .expect("not poisoned")
                .get(i)
                .cloned()
                .flatten();
            let Some((digest, path)) = slot else {
                return Err(PluginError::new(format!(
                    "layer {i} of the plan is not built yet: a step can use only layers of earlier steps"
                )));
            };
            let path = match (path, &self.cache_repo) {
                (Some(p), _) => p,
                (None, Some(repo)) => self
                    .handle
                    .block_on(base::fetch_blob(&self.client, &self.cache, repo, &digest))
                    .map_err(|e| {
                        PluginError::new(format!(
                            "cannot fetch layer {digest} from the registry cache: {e}"
                        ))
                    })?,
                (None, None) => {
                    return Err(PluginError::new(format!(
                        "layer {digest} is neither local nor in a registry cache"
                    )))
                }
            };
            blobs.push(path);
        }
        let scratch = self.cache_dir.join("tmp");
        let _ = std::fs::create_dir_all(&scratch);
        let tmp = tempfile::Builder::new()
            .prefix("layers-")
            .tempdir_in(&scratch)
            .map_err(|e| {
                PluginError::new(format!("cannot make a directory to unpack into: {e}"))
            })?;
        let dest = tmp.path().join("root");
        crate::rootfs::unpack_rootfs(&blobs, &dest).map_err(|e| {
            PluginError::new(format!("cannot unpack layers: {}", crate::error_chain(&e)))
        })?;
        self.unpacked.lock().expect("not poisoned").push(tmp);
        Ok(dest)
    }

    fn run(&self, request: &ExecRequest) -> Result<ExecOutput, PluginError> {
        if self.cancel.is_cancelled() {
            return Err(PluginError::new(format!(
                "`{}` not started: the build was cancelled",
                request.label
            )));
        }
        let (rootfs, req) = self.prepare(request)?;
        let warnings = self.bounds.warnings(&req);
        self.observer.event(&Event::StepStarted(req.label.clone()));
        let t = Instant::now();
        let out = self.runtime.run(&rootfs, &req, &self.cancel);
        let sandbox = self.step_sandbox(&req);
        self.record_step(&req.label, t.elapsed(), warnings, Some(sandbox));
        out.and_then(|out| self.bounds.check(&req, out))
    }

    fn step_done(&self, label: &str, took: Duration) {
        self.record_step(label, took, Vec::new(), None);
    }

    fn start_resident(
        &self,
        name: &str,
        request: &ExecRequest,
    ) -> Result<(PathBuf, bool), PluginError> {
        check_cache_name("resident step", name)?;
        let (rootfs, req) = self.prepare(request)?;
        let dir = self.cache_dir.join("resident");
        std::fs::create_dir_all(&dir)
            .map_err(|e| PluginError::new(format!("cannot create {}: {e}", dir.display())))?;
        let log = dir.join(format!("{name}.log"));
        let started =
            self.runtime
                .start_resident(&rootfs, &req, &format!("ftl-resident-{name}"), &log)?;
        if started {
            tracing::info!(step = %req.label, log = %log.display(), "started a long-lived step");
        }
        Ok((log, started))
    }

    fn persistent_dir(&self, name: &str) -> Result<PathBuf, PluginError> {
        check_cache_name("persistent directory", name)?;
        let name = format!("{name}{}", self.scope_suffix);
        let dir = self.cache_dir.join("persistent").join(&name);
        let mut leases = self.leases.lock().expect("not poisoned");
        if let std::collections::hash_map::Entry::Vacant(e) = leases.entry(name) {
            let lease = ftl_cache::dirs::lease(&dir)
                .map_err(|e| PluginError::new(crate::error_chain(&e)))?;
            e.insert(lease);
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| PluginError::new(format!("cannot create {}: {e}", dir.display())))?;
        Ok(dir)
    }

    fn package_cache_dir(&self, name: &str, trust: CacheTrust) -> Result<PathBuf, PluginError> {
        let name = match trust {
            // What a build adds unchecked reaches only builds for the same
            // output, which a build can name only if it may push there
            // (promotion follows a successful push).
            CacheTrust::AddOnly => format!("{name}.{}", self.output_suffix),
            CacheTrust::ContentAddressed { .. } => name.to_string(),
        };
        self.persistent_dir(&name)
    }

    fn package_cache(&self, name: &str, trust: CacheTrust) -> Result<PathBuf, PluginError> {
        let shared = self.package_cache_dir(name, trust.clone())?;
        let mut views = self.package_caches.lock().expect("not poisoned");
        if let Some(v) = views.get(name) {
            return Ok(v.path().to_path_buf());
        }
        let ids = self.runtime.id_range();
        let view = package_cache::CacheView::open(
            &shared,
            &self.cache_dir.join("tmp"),
            trust,
            ids.as_ref(),
            disk::unavailable()
                .is_none()
                .then_some(self.disk.cache_bytes),
        )?;
        let path = view.path().to_path_buf();
        if view.limited() {
            self.bounds.add(
                &path,
                disk::Kind::Cache(name.to_string()),
                self.disk.cache_bytes,
            );
        }
        views.insert(name.to_string(), view);
        Ok(path)
    }
}

impl SandboxExec {
    /// Adds to the shared package caches what this build's steps wrote
    /// and their trust lets through, then drops the views. After the
    /// build's steps succeeded only.
    fn promote_package_caches(&self) {
        let views = std::mem::take(&mut *self.package_caches.lock().expect("not poisoned"));
        for (name, view) in views {
            match view.promote() {
                Ok(p) => tracing::debug!(
                    cache = %name,
                    files = p.files,
                    bytes = p.bytes,
                    refused = p.refused,
                    "package cache: added what the build downloaded"
                ),
                Err(e) => tracing::warn!(cache = %name, error = %e, "package cache: nothing added"),
            }
        }
    }
}

impl SandboxExec {
    fn record_step(
        &self,
        label: &str,
        took: Duration,
        warnings: Vec<String>,
        sandbox: Option<report::StepSandbox>,
    ) {
        self.observer
            .event(&Event::StepFinished(label.to_string(), took));
        self.steps.lock().expect("not poisoned").push(StepRun {
            label: label.to_string(),
            ms: took.as_millis() as u64,
            warnings,
            sandbox,
        });
    }

    /// How the runtime contained `req`: its id mapping (the configured
    /// range when ftl is root, the caller's own id otherwise) and network.
    fn step_sandbox(&self, req: &ExecRequest) -> report::StepSandbox {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let uid_map = match self.runtime.id_range() {
            Some(ids) if euid == 0 => ids.uid_map(),
            _ => format!("0 {euid} 1"),
        };
        let network = match req.network {
            StepNetwork::None => "none",
            StepNetwork::Egress => "egress",
        };
        report::StepSandbox {
            uid_map,
            network: network.into(),
            egress_allow: req.egress_allow.iter().map(|a| a.to_string()).collect(),
        }
    }
}

#[cfg(test)]
mod port_tests {
    use super::declared_port;
    use serde_json::json;

    #[test]
    fn verify_port_is_the_lowest_declared_tcp_port_else_none() {
        let c = |ports: serde_json::Value| json!({"config": {"ExposedPorts": ports}});
        assert_eq!(
            declared_port(&c(json!({"9000/tcp": {}, "53/udp": {}, "8081": {}}))),
            Some(8081)
        );
        assert_eq!(declared_port(&c(json!({"53/udp": {}}))), None);
        assert_eq!(declared_port(&json!({"config": {}})), None);
    }
}
