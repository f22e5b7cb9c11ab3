//! The build report: human output and `--json`.

use serde::Serialize;

/// Where a layer came from in this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayerSource {
    /// A base image layer.
    Base,
    /// Found in the local cache.
    LocalCache,
    /// Found in the registry cache repository.
    RegistryCache,
    /// Built in this build.
    Built,
}

impl LayerSource {
    pub fn as_str(self) -> &'static str {
        match self {
            LayerSource::Base => "base",
            LayerSource::LocalCache => "cached",
            LayerSource::RegistryCache => "cached (registry)",
            LayerSource::Built => "built",
        }
    }
}

/// One layer of the image.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub name: String,
    pub digest: String,
    pub size: u64,
    pub source: LayerSource,
    /// `present`, `mounted` or `uploaded` for registry pushes.
    pub push: Option<String>,
    pub bytes_uploaded: u64,
}

/// The result of verification.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// `http` or `command`.
    pub mode: String,
    /// HTTP status, when it answered.
    pub status: Option<u16>,
    /// Exit code, for a command.
    pub exit_code: Option<i32>,
    /// For `http`: how verification stopped the app after its answer.
    /// [`Stopped::Sigterm`]: PID 1 exited within [`STOP_GRACE`] of a
    /// SIGTERM, as a platform stops a container;
    /// [`Stopped::Killed`]: it did not, and was killed (the build then
    /// warns: on Cloud Run or Kubernetes it would not shut down cleanly);
    /// [`Stopped::Exited`]: it had exited on its own before the signal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<Stopped>,
    /// For `http`: how PID 1 ended when stopped, in the shell's convention
    /// (its exit code, or 128 + the signal that killed it: 137 when
    /// killed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_status: Option<i32>,
    /// For `http`: milliseconds from the SIGTERM to PID 1's exit (or its
    /// kill).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_millis: Option<u64>,
    pub millis: u64,
    /// The last lines the app printed (for `http`, up to its exit, so
    /// what its SIGTERM handler printed too).
    pub output_tail: String,
}

/// How long verification waits for the app to exit after SIGTERM before it
/// kills it. Platforms wait longer (Cloud Run 10 s, Kubernetes 30 s by
/// default), but an idle app that handles SIGTERM at all exits well within
/// this; one that ignores it would only be killed later there.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// How verification's stop of the app ended ([`VerifyReport::stopped`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stopped {
    /// PID 1 exited within [`STOP_GRACE`] of SIGTERM.
    Sigterm,
    /// PID 1 was still running [`STOP_GRACE`] after SIGTERM and was killed.
    Killed,
    /// PID 1 had exited before it was signalled.
    Exited,
}

impl VerifyReport {
    /// What the build should warn about this verification: an app that had
    /// to be killed.
    pub fn warning(&self) -> Option<String> {
        (self.stopped == Some(Stopped::Killed)).then(|| {
            format!(
                "verify: the app's PID 1 did not exit within {}s of SIGTERM and was killed: on \
                 Cloud Run or Kubernetes it would not shut down cleanly (it is killed after the \
                 grace period, in-flight requests cut); run the app as PID 1 (`exec` in a shell \
                 entrypoint) and let it handle SIGTERM",
                STOP_GRACE.as_secs()
            )
        })
    }
}

/// The version of the JSON shape of [`BuildReport`] (`schema`): raised
/// when a field is removed or changes meaning; new fields may appear
/// within one version.
pub const REPORT_SCHEMA: u32 = 1;

/// The result of a build.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    /// [`REPORT_SCHEMA`].
    pub schema: u32,
    /// The image, `registry/repo:tag@sha256:...` (or the export's path).
    pub image: String,
    pub digest: String,
    /// Every tag the image got, `registry/repo:tag`, the output's own
    /// first; empty for exports and digest-only outputs.
    pub tags: Vec<String>,
    /// The platform built for, `os/arch[/variant]`.
    pub platform: String,
    pub base: String,
    pub base_digest: String,
    pub layers: Vec<LayerReport>,
    pub layers_built: usize,
    /// Bytes of every blob uploaded (layers and config; not the manifest).
    pub bytes_uploaded: u64,
    /// Phase durations in order; the last is `total`.
    pub timings: Vec<Timing>,
    pub registry_requests: u64,
    /// The sandboxed commands this build ran (probes, installs, builds,
    /// requests to long-lived steps), in order.
    pub steps: Vec<StepRun>,
    pub verify: Option<VerifyReport>,
    /// The plugin that planned the image (`python`, `generic`, ...).
    pub language: String,
    /// What the plugin decided (a resolution's choices, the entrypoint's
    /// origin); `null` when it has nothing to say.
    pub plan: serde_json::Value,
    /// Warnings for the user (an ignored input file, a skipped requirement).
    pub warnings: Vec<String>,
}

/// One command a build ran in the sandbox.
#[derive(Debug, Clone, Serialize)]
pub struct StepRun {
    pub label: String,
    pub ms: u64,
    /// What did not hold for this step as asked: a writable directory
    /// whose size could not be limited, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// How the step was contained; `None` for work done without a new
    /// container (a request to a long-lived step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<StepSandbox>,
}

/// How one step was contained, as the build report shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StepSandbox {
    /// The step's user namespace mapping, as `/proc/PID/uid_map` shows it
    /// (`0 HOST SIZE`: its root is host id HOST); the same for gids.
    pub uid_map: String,
    /// `none` (loopback only) or `egress` through a user-mode stack.
    pub network: String,
    /// TCP endpoints the step could reach in ranges its network blocks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub egress_allow: Vec<String>,
}

/// How long one phase took.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub phase: String,
    pub ms: u64,
}
