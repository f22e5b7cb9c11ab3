//! The interpreter probe: what the base image's Python is, read by running
//! it in the sandbox (no network) while planning.

use std::collections::BTreeMap;
use std::time::Duration;

use ftl::{Exec, ExecRequest, PluginError};
use serde::{Deserialize, Serialize};

/// Runs in the base image's interpreter; prints one JSON object. Works on
/// Python 3.6+.
pub const PROBE_SCRIPT: &str = r#"
import hashlib, json, os, platform, sys, sysconfig
impl = sys.implementation
def iv(info):
    v = "%d.%d.%d" % tuple(info[:3])
    if info.releaselevel != "final":
        v += info.releaselevel[0] + str(info.serial)
    return v
out = {
    "implementation": impl.name,
    "version": platform.python_version(),
    "sys_version": sys.version,
    "cache_tag": impl.cache_tag,
    "soabi": sysconfig.get_config_var("SOABI"),
    "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX"),
    "executable": sys.executable,
    "platform": sysconfig.get_platform(),
    "libc": " ".join(platform.libc_ver()).strip() or None,
    "markers": {
        "implementation_name": impl.name,
        "implementation_version": iv(impl.version),
        "os_name": os.name,
        "platform_machine": platform.machine(),
        "platform_python_implementation": platform.python_implementation(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform,
    },
}
# pip: the base's own pip when it can install into another environment
# (--python, pip 22.3+; its modules are byte-compiled, so it starts about a
# second faster), else the wheel ensurepip would install, run from the wheel
# (nothing of it lands in the venv).
def vkey(v):
    return [int(x) if x.isdigit() else 0 for x in v.split(".")]
pip = None
try:
    import pip as _pip
    if vkey(_pip.__version__)[:2] >= [22, 3]:
        runner = os.path.join(os.path.dirname(_pip.__file__), "__pip-runner__.py")
        pip = {"source": "base", "version": _pip.__version__, "path": os.path.dirname(os.path.dirname(_pip.__file__)), "runner": runner if os.path.isfile(runner) else None}
except Exception:
    pass
if pip is None:
    wheels = []
    try:
        import ensurepip
        dirs = [os.path.join(os.path.dirname(ensurepip.__file__), "_bundled")]
        extra = sysconfig.get_config_var("WHEEL_PKG_DIR")
        if extra:
            dirs.append(extra)
        dirs.append("/usr/share/python-wheels")
        for d in dirs:
            try:
                for f in sorted(os.listdir(d)):
                    if f.startswith("pip-") and f.endswith(".whl"):
                        wheels.append(os.path.join(d, f))
            except OSError:
                pass
    except Exception:
        pass
    if wheels:
        w = max(wheels, key=lambda p: vkey(os.path.basename(p).split("-")[1]))
        pip = {"source": "ensurepip", "version": os.path.basename(w).split("-")[1], "path": w}
out["pip"] = pip
tag = None
if pip:
    sys.path.insert(0, pip["path"])
    try:
        from pip._vendor.packaging import tags
        tag = str(next(iter(tags.sys_tags())))
    except Exception:
        pass
out["tag"] = tag
confs = {}
for p in [os.environ.get("PIP_CONFIG_FILE"), "/etc/pip.conf", "/etc/xdg/pip/pip.conf"] + [os.path.join(d, "pip", "pip.conf") for d in os.environ.get("XDG_CONFIG_DIRS", "").split(":") if d]:
    if p and os.path.isfile(p):
        with open(p, "rb") as f:
            confs[p] = "sha256:" + hashlib.sha256(f.read()).hexdigest()
out["pip_config"] = confs
print(json.dumps(out, sort_keys=True))
"#;

/// What a pip comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipInfo {
    /// `ensurepip` (a wheel run directly) or `base` (the base's pip, run
    /// in the virtualenv's interpreter through its runner, else with
    /// `--python`).
    pub source: String,
    pub version: String,
    /// The wheel (ensurepip) or the directory holding the `pip` package.
    pub path: String,
    /// The base's `pip/__pip-runner__.py` (pip 22.3+): what `--python`
    /// re-executes in the target interpreter. Run by the virtualenv's
    /// interpreter directly, it saves pip's first start (about 0.3 s of
    /// CPU: pip's imports, then a second interpreter importing them again).
    #[serde(default)]
    pub runner: Option<String>,
}

/// The base image's interpreter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub implementation: String,
    pub version: String,
    pub sys_version: String,
    pub cache_tag: String,
    pub soabi: Option<String>,
    pub ext_suffix: Option<String>,
    pub executable: String,
    pub platform: String,
    pub libc: Option<String>,
    pub markers: BTreeMap<String, String>,
    pub pip: Option<PipInfo>,
    /// The most specific compatible wheel tag, e.g.
    /// `cp312-cp312-manylinux_2_36_x86_64`.
    pub tag: Option<String>,
    /// pip configuration files present in the base (path -> sha256).
    #[serde(default)]
    pub pip_config: BTreeMap<String, String>,
}

impl Probe {
    /// `major.minor`.
    pub fn short_version(&self) -> &str {
        self.markers
            .get("python_version")
            .map(String::as_str)
            .unwrap_or(&self.version)
    }

    /// The interpreter's identity as it goes into a dependency layer's key:
    /// everything that decides which files pip installs and how they are
    /// compiled, nothing of the host (kernel release) or of the image's
    /// build (`sys.version`'s build date).
    pub fn key_doc(&self) -> serde_json::Value {
        serde_json::json!({
            "implementation": self.implementation,
            "version": self.version,
            "cache_tag": self.cache_tag,
            "soabi": self.soabi,
            "platform": self.platform,
            "libc": self.libc,
            "tag": self.tag,
        })
    }
}

/// Runs the probe with `interpreter` (a name on the base's PATH or a path).
pub fn probe(exec: &dyn Exec, interpreter: &str, base_ref: &str) -> Result<Probe, PluginError> {
    let mut req = ExecRequest::new("python probe", [interpreter, "-c", PROBE_SCRIPT]);
    req.timeout = Duration::from_secs(60);
    let out = exec.run(&req)?;
    if !out.success() {
        let msg = if out.command_missing() {
            format!("the base image {base_ref} has no `{interpreter}`")
        } else {
            format!(
                "probing `{interpreter}` in the base image {base_ref} failed: {}",
                out.tail(5)
            )
        };
        return Err(PluginError::new(msg)
            .hint("use a Python base image (for example python:3.12-slim), or set python.interpreter to the interpreter's path"));
    }
    let probe: Probe = out.json_line().map_err(|e| {
        PluginError::new(format!(
            "unexpected output from the interpreter probe in {base_ref}: {e}: {}",
            out.tail(5)
        ))
    })?;
    tracing::debug!(version = %probe.version, soabi = ?probe.soabi, tag = ?probe.tag, pip = ?probe.pip, "probed the base interpreter");
    Ok(probe)
}
