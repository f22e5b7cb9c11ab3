//! The runtime probe: what the base image's node, npm, yarn and C/C++
//! toolchain are, read by running its node in the sandbox (no network, no
//! mounts: the engine memoizes it per base digest) while planning.

use std::collections::BTreeMap;
use std::time::Duration;

use ftl::{Exec, ExecRequest, PluginError};
use serde::{Deserialize, Serialize};

/// Runs in the base image's node; prints one JSON object.
pub const PROBE_SCRIPT: &str = r#"
const fs = require("fs"), path = require("path"), cp = require("child_process"), crypto = require("crypto");
const which = (n) => {
  for (const d of (process.env.PATH || "").split(":")) {
    if (!d) continue;
    const p = path.join(d, n);
    try { fs.accessSync(p, fs.constants.X_OK); if (fs.statSync(p).isFile()) return p; } catch (e) {}
  }
  return null;
};
const tool = (names) => {
  for (const n of names) {
    const bin = which(n);
    if (!bin) continue;
    let version = null, dir = null;
    try {
      let d = path.dirname(fs.realpathSync(bin));
      for (let i = 0; i < 4 && d !== "/"; i++, d = path.dirname(d)) {
        const pj = path.join(d, "package.json");
        if (fs.existsSync(pj)) { version = JSON.parse(fs.readFileSync(pj, "utf8")).version || null; dir = d; break; }
      }
    } catch (e) {}
    return { path: bin, version, dir };
  }
  return null;
};
const sha = (p) => { try { return "sha256:" + crypto.createHash("sha256").update(fs.readFileSync(p)).digest("hex"); } catch (e) { return null; } };
const npm = tool(["npm"]);
const yarn = tool(["yarn", "yarnpkg"]);
const cxx = which("g++") || which("c++") || which("clang++");
let cxxVersion = null;
if (cxx) { try { cxxVersion = cp.execFileSync(cxx, ["-dumpfullversion", "-dumpversion"], { encoding: "utf8", timeout: 10000 }).trim(); } catch (e) {} }
let libc = null;
try { const h = process.report.getReport().header; libc = h.glibcVersionRuntime ? "glibc " + h.glibcVersionRuntime : null; } catch (e) {}
if (!libc) { try { if (fs.readdirSync("/lib").some((f) => f.startsWith("ld-musl"))) libc = "musl"; } catch (e) {} }
const configs = {};
for (const p of [process.env.NPM_CONFIG_GLOBALCONFIG, "/etc/npmrc", "/usr/etc/npmrc", "/usr/local/etc/npmrc", npm && npm.dir && path.join(npm.dir, "npmrc")]) {
  if (p && !(p in configs)) { const h = sha(p); if (h) configs[p] = h; }
}
console.log(JSON.stringify({
  node: process.versions.node,
  modules: process.versions.modules,
  napi: process.versions.napi || null,
  arch: process.arch,
  platform: process.platform,
  libc,
  npm: npm && { path: npm.path, version: npm.version },
  yarn: yarn && { path: yarn.path, version: yarn.version },
  make: which("make"),
  cxx,
  cxx_version: cxxVersion,
  python: which("python3") || which("python"),
  npm_config: configs,
}));
"#;

/// A tool found on the base's PATH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tool {
    pub path: String,
    pub version: Option<String>,
}

/// The base image's Node.js runtime and build tools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// e.g. `18.20.4`.
    pub node: String,
    /// The native module ABI (`process.versions.modules`).
    pub modules: String,
    pub napi: Option<String>,
    pub arch: String,
    pub platform: String,
    pub libc: Option<String>,
    pub npm: Option<Tool>,
    pub yarn: Option<Tool>,
    pub make: Option<String>,
    pub cxx: Option<String>,
    pub cxx_version: Option<String>,
    pub python: Option<String>,
    /// Global npm configuration files of the base (path -> sha256).
    #[serde(default)]
    pub npm_config: BTreeMap<String, String>,
}

impl Probe {
    /// The runtime's identity as it goes into a dependency layer's key.
    pub fn key_doc(&self) -> serde_json::Value {
        serde_json::json!({
            "version": self.node,
            "modules": self.modules,
            "napi": self.napi,
            "arch": self.arch,
            "platform": self.platform,
            "libc": self.libc,
        })
    }

    /// The toolchain native modules build with, for the key.
    pub fn toolchain_doc(&self) -> serde_json::Value {
        serde_json::json!({
            "make": self.make.is_some(),
            "cxx": self.cxx_version.as_deref().or(self.cxx.as_deref().map(|_| "unknown")),
            "python": self.python.is_some(),
        })
    }

    /// What a native build needs and the base lacks.
    pub fn missing_toolchain(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if self.make.is_none() {
            m.push("make");
        }
        if self.cxx.is_none() {
            m.push("g++");
        }
        if self.python.is_none() {
            m.push("python3");
        }
        m
    }
}

/// Runs the probe with the base image's `node`.
pub fn probe(exec: &dyn Exec, base_ref: &str) -> Result<Probe, PluginError> {
    let mut req = ExecRequest::new("node probe", ["node", "-e", PROBE_SCRIPT]);
    req.timeout = Duration::from_secs(60);
    let out = exec.run(&req)?;
    if !out.success() {
        let msg = if out.command_missing() {
            format!("the base image {base_ref} has no `node`")
        } else {
            format!(
                "probing `node` in the base image {base_ref} failed: {}",
                out.tail(5)
            )
        };
        return Err(PluginError::new(msg)
            .hint("use a Node.js base image (for example node:20-slim, or Debian with the nodejs and npm packages)"));
    }
    let probe: Probe = out.json_line().map_err(|e| {
        PluginError::new(format!(
            "unexpected output from the node probe in {base_ref}: {e}: {}",
            out.tail(5)
        ))
    })?;
    tracing::debug!(node = %probe.node, npm = ?probe.npm, yarn = ?probe.yarn, cxx = ?probe.cxx, "probed the base runtime");
    Ok(probe)
}
