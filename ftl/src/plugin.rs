//! The language plugin interface.
//!
//! A plugin reads the source tree and the base image's config and returns a
//! [`LayerPlan`]: ordered layers (least to most often changed), each with its
//! cache key, plus the build steps that produce the layers that miss the
//! cache. Plugins never touch the registry, the cache or the sandbox: they
//! run commands through the [`Exec`] they are handed, which the engine backs
//! with the sandbox on the base image's rootfs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::beneath::Beneath;
use crate::key::CacheKey;
use crate::source::SourceTree;

/// What a plugin knows of the base image: its identity and config. Never its
/// layers' bytes.
#[derive(Debug, Clone)]
pub struct BaseInfo {
    /// The reference as the user gave it (for messages).
    pub reference: String,
    /// Digest of the platform-specific image manifest (`sha256:...`).
    pub manifest_digest: String,
    /// The image config.
    pub config: oci_spec::image::ImageConfiguration,
    /// `os/arch[/variant]`, e.g. `linux/amd64`.
    pub platform: String,
}

impl BaseInfo {
    /// The base config's environment as (name, value) pairs.
    pub fn env(&self) -> Vec<(String, String)> {
        self.config
            .config()
            .as_ref()
            .and_then(|c| c.env().clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect()
    }
}

/// Options of one build that plugins read.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Where the application goes in the image (default `/srv`).
    pub app_dir: String,
    /// `--entrypoint`, split into argv.
    pub entrypoint: Option<Vec<String>>,
    /// Plugin-specific settings (`--set python.installer=uv`, ...), by
    /// dotted name.
    pub settings: BTreeMap<String, String>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            app_dir: "/srv".to_string(),
            entrypoint: None,
            settings: BTreeMap::new(),
        }
    }
}

/// A host path mounted into a build step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecMount {
    pub host: PathBuf,
    /// Absolute path inside the sandbox.
    pub target: String,
    pub writable: bool,
}

/// The network a step gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StepNetwork {
    /// Loopback only.
    #[default]
    None,
    /// Egress to package indexes (the host network, with the build-time CA
    /// bundle and proxy settings handed in by the engine).
    Egress,
}

/// The root filesystem a step runs on (always read-only; `/tmp` is a
/// tmpfs, and the request's mounts are the only writable paths).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StepRoot {
    /// The base image's rootfs (the default): the libc, interpreter and ABI
    /// the app runs with.
    #[default]
    Base,
    /// The host's system directories (`/usr`, `/etc`, `/opt`, `/bin`,
    /// `/lib*`, ... read-only, as `runsc do` runs commands, but not homes
    /// or other mounts): for toolchains a runtime-only base lacks (a JDK and
    /// Maven on a JRE base). The base's env is not applied (PATH is the
    /// standard one plus the request's env), and mount targets must lie
    /// below `/tmp`, so that nothing is created on the host's filesystem.
    /// Not memoized as a probe: its identity is not the base digest.
    Host,
    /// The rootfs of another image (a builder image such as
    /// `maven:3-eclipse-temurin-17`), pulled and unpacked once per digest
    /// like the base; its config's env is applied instead of the base's.
    Image(String),
}

/// One command to run in the sandbox, on the base image's rootfs unless
/// [`ExecRequest::root`] says otherwise.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// Short name for progress and errors, e.g. `pip install`.
    pub label: String,
    pub args: Vec<String>,
    /// Added to the base image's env (which the engine applies first).
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub mounts: Vec<ExecMount>,
    pub network: StepNetwork,
    pub timeout: Duration,
    /// The root filesystem (default: the base image's).
    pub root: StepRoot,
    /// With [`StepNetwork::Egress`], set by the engine (plugins leave it
    /// empty): TCP endpoints the step may reach although their range is
    /// blocked (the build proxy, mirrors the user allowed).
    pub egress_allow: Vec<std::net::SocketAddr>,
}

impl ExecRequest {
    pub fn new(
        label: impl Into<String>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        ExecRequest {
            label: label.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: "/".to_string(),
            mounts: Vec::new(),
            network: StepNetwork::None,
            timeout: Duration::from_secs(600),
            root: StepRoot::Base,
            egress_allow: Vec::new(),
        }
    }
}

/// What a step's command did.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal, when it was killed by one.
    pub signal: Option<i32>,
    /// Killed for running out of memory.
    pub oom: bool,
    /// Killed at the time limit.
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// How the command ended, in words: `exited with 1`, `timed out`,
    /// `ran out of memory`, `was killed by signal 9`.
    pub fn how_it_ended(&self) -> String {
        if self.timed_out {
            "timed out".to_string()
        } else if self.oom {
            "ran out of memory".to_string()
        } else if let Some(s) = self.signal {
            format!("was killed by signal {s}")
        } else {
            format!("exited with {}", self.code.unwrap_or(-1))
        }
    }

    /// `self` when the command exited 0; otherwise an error saying `what`
    /// failed, how, and its last 20 lines of output.
    pub fn check(self, what: &str) -> Result<ExecOutput, PluginError> {
        if self.success() {
            return Ok(self);
        }
        Err(PluginError::new(format!(
            "{what} {}:\n{}",
            self.how_it_ended(),
            self.tail(20)
        )))
    }

    /// Whether it failed because the command itself was not found (exit 127,
    /// or the shell's or kernel's "not found" on stderr).
    pub fn command_missing(&self) -> bool {
        let stderr = String::from_utf8_lossy(&self.stderr);
        self.code == Some(127) || stderr.contains("not found") || stderr.contains("No such file")
    }

    /// The last line of stdout that is a JSON object, parsed: how probes
    /// report (anything the runtime prints before it is ignored).
    pub fn json_line<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        let stdout = String::from_utf8_lossy(&self.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .unwrap_or("");
        serde_json::from_str(line)
    }

    /// The last `n` lines of stderr then stdout, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let mut text = String::from_utf8_lossy(&self.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&self.stderr));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Runs commands in the sandbox. Implemented by the engine.
pub trait Exec: Send + Sync {
    fn run(&self, request: &ExecRequest) -> Result<ExecOutput, PluginError>;

    /// Starts `request` as a long-lived sandboxed process that outlives
    /// this build (a warm compiler, a build daemon), unless the one named
    /// `name` (`[A-Za-z0-9._-]+`, prefixed with the plugin's id) is still
    /// running. The plugin reaches it through a directory it mounts (a
    /// [`Exec::persistent_dir`]); the process must end itself when idle.
    /// Nothing it produces may decide a layer's key, and a layer it helps
    /// build must equal one built without it. Returns the path of its log
    /// and whether it was started now (`false`: it was running).
    fn start_resident(
        &self,
        name: &str,
        request: &ExecRequest,
    ) -> Result<(PathBuf, bool), PluginError> {
        let _ = name;
        Err(PluginError::new(format!(
            "`{}`: no long-lived steps in this context",
            request.label
        )))
    }

    /// Reports work done without [`Exec::run`] (a request to a
    /// [long-lived step](Exec::start_resident)), for progress output and the
    /// build report's steps.
    fn step_done(&self, label: &str, took: std::time::Duration) {
        let _ = (label, took);
    }

    /// A host directory that persists across builds of this cache scope on
    /// this machine (under the ftl cache directory), created if missing.
    /// Only ftl and code the plugin trusts may write it (the warm
    /// compiler's state); a step that runs a package's code mounts it
    /// read-only, or uses a [`Exec::package_cache`] instead. `name` is
    /// `[A-Za-z0-9._-]+`; plugins prefix it with their id. Its contents must
    /// never decide a layer's key: a layer built with it must equal one
    /// built without it.
    fn persistent_dir(&self, name: &str) -> Result<PathBuf, PluginError> {
        Err(PluginError::new(format!(
            "no persistent directory `{name}` in this context"
        )))
    }

    /// A package manager's cache (npm's, Maven's local repository) for the
    /// steps of this build to mount read-write: this build's own view of
    /// the shared cache [`Exec::persistent_dir`]`(name)`. What the steps
    /// write stays in the view; after the build's steps succeed, ftl adds
    /// to the shared cache only what `trust` lets through, and never
    /// replaces a file of it. So no build can change what another build's
    /// steps read from the cache. The same path for every call of a build.
    fn package_cache(&self, name: &str, trust: CacheTrust) -> Result<PathBuf, PluginError> {
        let _ = trust;
        Err(PluginError::new(format!(
            "no package cache `{name}` in this context"
        )))
    }

    /// A read-only directory holding the files of the plan's layers
    /// `indices` (indices into [`LayerPlan::layers`]) applied in order, at
    /// their image paths below it: for a step that runs with what earlier
    /// layers installed (an app's build command with its dependencies).
    /// Only layers of earlier steps (cache hits, or built before this
    /// step); removed when the build ends.
    fn layers(&self, indices: &[usize]) -> Result<PathBuf, PluginError> {
        let _ = indices;
        Err(PluginError::new("no layers to unpack in this context"))
    }

    /// A value the plugin derived while planning from more than the base
    /// image (a dependency resolution, which asks the package index), as
    /// [`Exec::remember`] kept it under `key`: locally and in the registry
    /// cache, per cache scope. `None` when there is none, it expired, or
    /// the build skips cache lookups.
    fn remembered(&self, key: &CacheKey) -> Option<Remembered> {
        let _ = key;
        None
    }

    /// Keeps `value` under `key` for later builds: for good when `pinned`
    /// (its inputs fix it), else for the unpinned TTL. Recorded in the
    /// registry cache only once the build's steps succeed. Returns when it
    /// expires (unix seconds), `None` for never.
    fn remember(&self, key: &CacheKey, value: &serde_json::Value, pinned: bool) -> Option<u64> {
        let _ = (key, value, pinned);
        None
    }

    /// The shared directory behind [`Exec::package_cache`]`(name, trust)`,
    /// for a step that only reads it (mounted read-only; a long-lived step
    /// that outlives the build's view).
    fn package_cache_dir(&self, name: &str, trust: CacheTrust) -> Result<PathBuf, PluginError> {
        let _ = trust;
        Err(PluginError::new(format!(
            "no package cache `{name}` in this context"
        )))
    }
}

/// A value [`Exec::remember`] kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Remembered {
    pub value: serde_json::Value,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds; `None`: never.
    pub expires: Option<u64>,
}

/// What of a build's writes to a [package cache](Exec::package_cache) may
/// reach later builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheTrust {
    /// Files below `dir` (relative to the cache) whose path names the
    /// digest of their content, `dir/<sha512|sha256>/<hex, in any number of
    /// parts>` (npm's cacache: `_cacache/content-v2`), each kept only when
    /// its content hashes to that name. Nothing else is kept.
    ContentAddressed { dir: &'static str },
    /// New files, never a changed one, in a cache private to the build's
    /// output (the image repository; the engine adds it to the name) and to
    /// the plugin's `name` (one project): what a step adds is not checked,
    /// so only builds that may push to the same repository read it.
    AddOnly,
}

/// Everything a plugin sees while planning.
pub struct PlanContext<'a> {
    pub source: &'a SourceTree,
    pub base: &'a BaseInfo,
    pub options: &'a BuildOptions,
    /// For probing the base image (interpreter version and ABI); no network.
    pub exec: &'a dyn Exec,
}

/// Everything a build step sees.
pub struct StepContext<'a> {
    pub source: &'a SourceTree,
    pub base: &'a BaseInfo,
    pub options: &'a BuildOptions,
    pub exec: &'a dyn Exec,
    /// An empty directory for this step; removed after the layers are written.
    pub scratch: &'a Path,
}

/// A language plugin.
pub trait LanguagePlugin: Send + Sync {
    /// Stable id (`python`, `node`, `java`); part of every key it makes.
    fn id(&self) -> &'static str;
    /// Whether this plugin applies to `source` (for auto-detection).
    fn detect(&self, source: &SourceTree) -> bool;
    /// What [`LanguagePlugin::detect`] looks for, in words: for the error
    /// when no plugin applies, and to name an ignore line that left a
    /// deciding file out.
    fn detects(&self) -> crate::detect::Detects;
    /// Plans the layers.
    fn plan(&self, ctx: &PlanContext<'_>) -> Result<LayerPlan, PluginError>;
}

/// The ordered layers of an application, the steps that build them, and the
/// config the plugin sets.
pub struct LayerPlan {
    pub layers: Vec<PlannedLayer>,
    pub steps: Vec<Box<dyn BuildStep>>,
    pub config: ConfigPatch,
    /// What the plugin decided and the user should see (what a resolution
    /// chose, where the entrypoint came from): the build report's `plan`.
    /// `Null` when there is nothing to say.
    pub notes: serde_json::Value,
    /// Warnings for the user (an input file that was ignored, a requirement
    /// skipped by its marker): printed and in the report.
    pub warnings: Vec<String>,
}

impl fmt::Debug for LayerPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerPlan")
            .field("layers", &self.layers)
            .field("steps", &self.steps.len())
            .field("config", &self.config)
            .field("notes", &self.notes)
            .field("warnings", &self.warnings)
            .finish()
    }
}

/// One layer of a plan.
#[derive(Debug, Clone)]
pub struct PlannedLayer {
    /// Human name, e.g. `python: flask==3.0.3` or `app`.
    pub name: String,
    pub key: CacheKey,
    /// False when the inputs are not fully pinned: the cache entry then
    /// expires after the configured TTL.
    pub pinned: bool,
    /// Index into [`LayerPlan::steps`] of the step that builds this layer.
    pub step: usize,
    /// The history entry's `created_by`.
    pub created_by: String,
}

/// Produces the contents of layers that missed the cache. One step may build
/// several layers at once (one pip install split per distribution).
pub trait BuildStep: Send + Sync {
    /// Builds the layers at `wanted` (indices into [`LayerPlan::layers`], all
    /// belonging to this step) and returns their contents, one per index.
    fn build(
        &self,
        wanted: &[usize],
        ctx: &StepContext<'_>,
    ) -> Result<Vec<(usize, LayerContents)>, PluginError>;

    /// Whether the step writes to [`StepContext::scratch`] (by default,
    /// yes). A step that only names files already on disk says no: the
    /// engine then gives it a plain directory rather than a size-limited
    /// volume, which costs a filesystem made and mounted (about 20 ms).
    fn writes_scratch(&self) -> bool {
        true
    }
}

/// The files of one layer, described by where they come from.
#[derive(Debug, Clone, Default)]
pub struct LayerContents {
    pub inputs: Vec<LayerInput>,
    /// The layer's bytes depend on the root its step ran on beyond what
    /// its key names: the install compiled code there (a C extension built
    /// from an sdist, a native addon) or its files link against libraries
    /// outside the layer (see [`crate::native`]). Whether it did is known
    /// only after the build, so the engine records the layer under its key
    /// plus the base image's manifest digest (`build_root`), and under the
    /// planned key a marker that sends later lookups there: such a layer
    /// is reused only on the base it was built on, while the layers of the
    /// same key that did not compile anything are reused on any base.
    ///
    /// A plugin that starts setting this must bump its key version: an
    /// older ftl that recorded such a layer under the planned key alone
    /// would otherwise be read as portable.
    pub root_dependent: bool,
}

impl LayerContents {
    /// Contents of `inputs`, not [root-dependent](Self::root_dependent).
    pub fn new(inputs: Vec<LayerInput>) -> Self {
        LayerContents {
            inputs,
            root_dependent: false,
        }
    }
}

/// One source of files for a layer.
#[derive(Debug, Clone)]
pub enum LayerInput {
    /// Everything below the directory `from`, placed at image path `to`.
    /// `from` is read as a step left it: it must be a directory reached
    /// without a link (below its trusted base), and no link below it is
    /// followed: links are stored as links.
    Tree { from: Beneath, to: String },
    /// The given paths (relative to `root`, files, links or directories
    /// without their children) placed at image path `to` joined with each.
    /// Neither `root` (below its base) nor the parents of a path may be
    /// links; a path that is a link is stored as one.
    Files {
        root: Beneath,
        to: String,
        paths: Vec<PathBuf>,
    },
    /// A file with literal contents at image path `path`.
    Bytes {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
}

/// Config a plugin sets on the image; applied over the base config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigPatch {
    /// Set (replacing a base value of the same name), in order.
    pub env: Vec<(String, String)>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub workdir: Option<String>,
    /// e.g. `8080/tcp`.
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// A plugin's error: what went wrong, where (file and line) and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    pub message: String,
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    pub hint: Option<String>,
}

impl PluginError {
    pub fn new(message: impl Into<String>) -> Self {
        PluginError {
            message: message.into(),
            file: None,
            line: None,
            hint: None,
        }
    }
    pub fn in_file(mut self, file: impl Into<PathBuf>, line: Option<usize>) -> Self {
        self.file = Some(file.into());
        self.line = line;
        self
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{}: ", file.display(), line)?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            _ => {}
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PluginError {}
