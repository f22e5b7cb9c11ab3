//! The build steps: production dependencies (npm ci / yarn in the sandbox)
//! and the app after its `gcp-build` script.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ftl::beneath::{Dir, Kind};
use ftl::{
    Beneath, BuildStep, ExecMount, ExecOutput, ExecRequest, LayerContents, LayerInput, PluginError,
    SourceTree, StepContext, StepNetwork,
};
use serde_json::{json, Value};

use crate::npmrc::Npmrc;
use crate::package::{Lockfile, PackageJson};
use crate::probe::Probe;

/// Where the secret `.npmrc` is mounted (read-only, outside the app
/// directory, so nothing of it can land in a layer).
pub(crate) const SECRETS: &str = "/ftl-secrets";

/// Where the package managers' download cache is mounted.
pub(crate) const PKG_CACHE: &str = "/ftl-package-cache";

/// Extra mounts of an install step.
pub(crate) struct Mounts {
    secrets: Option<ExecMount>,
    cache: Option<ExecMount>,
}

/// The package manager that installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Manager {
    Npm {
        version: String,
    },
    /// `bin`: the yarn found in the base (`yarn`, or Debian's `yarnpkg`).
    Yarn {
        version: String,
        bin: String,
    },
}

impl Manager {
    pub fn key_doc(&self) -> Value {
        match self {
            Manager::Npm { version } => json!({"tool": "npm", "version": version}),
            Manager::Yarn { version, .. } => json!({"tool": "yarn", "version": version}),
        }
    }

    fn yarn_berry(version: &str) -> bool {
        major(version).is_some_and(|m| m >= 2)
    }

    /// The install command's arguments.
    pub fn install_args(&self, locked: bool, production: bool) -> Vec<String> {
        let mut a: Vec<&str> = match self {
            Manager::Npm { version } => {
                let mut a = vec!["npm", if locked { "ci" } else { "install" }];
                // npm 6 and older know neither --omit nor --include.
                let modern = major(version).is_none_or(|m| m >= 7);
                a.push(match (production, modern) {
                    (true, true) => "--omit=dev",
                    (false, true) => "--include=dev",
                    (true, false) => "--production",
                    (false, false) => "--production=false",
                });
                a.extend(["--no-audit", "--no-fund", "--no-update-notifier"]);
                a
            }
            Manager::Yarn { version, bin } if Self::yarn_berry(version) => {
                vec![bin.as_str(), "install", "--immutable"]
            }
            Manager::Yarn { bin, .. } => {
                let mut a = vec![
                    bin.as_str(),
                    "install",
                    "--frozen-lockfile",
                    "--non-interactive",
                ];
                if production {
                    a.push("--production");
                }
                a
            }
        };
        if !locked && matches!(self, Manager::Yarn { .. }) {
            a.retain(|x| *x != "--frozen-lockfile" && *x != "--immutable");
        }
        a.into_iter().map(String::from).collect()
    }

    pub fn install_command(&self, locked: bool, production: bool) -> String {
        self.install_args(locked, production).join(" ")
    }

    /// The commands that run the root lifecycle `scripts` (as
    /// [`PackageJson::lifecycle_scripts`] lists them) after an install
    /// that ran none, each once, in order: npm 7 and later run one script
    /// without its `pre`/`post` hooks under `--ignore-scripts` (the hooks
    /// are in the list themselves); yarn 1 runs `preX` and `postX` with
    /// `X`, so those are left to it; yarn 2+ runs no hooks.
    pub fn lifecycle_runs(&self, scripts: &[&str]) -> Vec<(String, Vec<String>)> {
        let run = |bin: &str, extra: &[&str], s: &str| {
            let mut a = vec![bin.to_string(), "run-script".to_string()];
            a.extend(extra.iter().map(|x| x.to_string()));
            a.push(s.to_string());
            (s.to_string(), a)
        };
        match self {
            Manager::Npm { version } if major(version).is_none_or(|m| m >= 7) => scripts
                .iter()
                .map(|s| run("npm", &["--ignore-scripts"], s))
                .collect(),
            Manager::Npm { .. } => scripts.iter().map(|s| run("npm", &[], s)).collect(),
            Manager::Yarn { version, bin } if Self::yarn_berry(version) => scripts
                .iter()
                .map(|s| {
                    (
                        s.to_string(),
                        vec![bin.clone(), "run".into(), s.to_string()],
                    )
                })
                .collect(),
            Manager::Yarn { bin, .. } => scripts
                .iter()
                .filter(|s| {
                    let hook_of = s.strip_prefix("pre").or_else(|| s.strip_prefix("post"));
                    !hook_of.is_some_and(|x| scripts.contains(&x))
                })
                .map(|s| {
                    (
                        s.to_string(),
                        vec![bin.clone(), "run".into(), s.to_string()],
                    )
                })
                .collect(),
        }
    }

    pub fn run_command(&self) -> String {
        match self {
            Manager::Npm { .. } => "npm run".to_string(),
            Manager::Yarn { bin, .. } => format!("{bin} run"),
        }
    }
}

/// The major version of `version`.
fn major(version: &str) -> Option<u32> {
    version.split('.').next()?.parse().ok()
}

/// Everything the install steps need.
#[derive(Debug, Clone)]
pub(crate) struct InstallPlan {
    pub pkg: PackageJson,
    pub lock: Option<Lockfile>,
    pub manager: Manager,
    pub npmrc: Option<Npmrc>,
    pub probe: Probe,
    pub app_dir: String,
    pub timeout: Duration,
    pub base_ref: String,
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> PluginError {
    PluginError::new(format!("{what} {}: {e}", path.display()))
}

impl InstallPlan {
    /// Writes the secret `.npmrc` (0600) into its own directory of the
    /// scratch space; returns the mount.
    fn secrets(&self, scratch: &Path) -> Result<Option<ExecMount>, PluginError> {
        let Some(rc) = &self.npmrc else {
            return Ok(None);
        };
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = scratch.join("secrets");
        std::fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        let file = dir.join("npmrc");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .map_err(|e| io_err("cannot create", &file, e))?;
        f.write_all(rc.secret_text().as_bytes())
            .map_err(|e| io_err("cannot write", &file, e))?;
        Ok(Some(ExecMount {
            host: dir,
            target: SECRETS.into(),
            writable: false,
        }))
    }

    /// The mounts every command of a step gets besides the app: the secret
    /// npmrc and the package managers' download cache (this build's view of
    /// a cache kept across builds on this machine, when the engine offers
    /// one; its contents never change what is installed, only how fast).
    /// Of what a build downloads, only npm's content-addressed tarballs
    /// (`_cacache/content-v2`, checked against their digests) reach later
    /// builds: `npm ci` reads a locked package from there by its
    /// `integrity`, and fetches anything else (packuments, index entries)
    /// again.
    fn mounts(&self, ctx: &StepContext<'_>) -> Result<Mounts, PluginError> {
        let secrets = self.secrets(ctx.scratch)?;
        let trust = ftl::CacheTrust::ContentAddressed {
            dir: "npm/_cacache/content-v2",
        };
        let cache = match ctx.exec.package_cache("node-package-cache", trust) {
            Ok(dir) => Some(ExecMount {
                host: dir,
                target: PKG_CACHE.into(),
                writable: true,
            }),
            Err(e) => {
                tracing::debug!(error = %e, "no persistent package cache; npm downloads into /tmp");
                None
            }
        };
        Ok(Mounts { secrets, cache })
    }

    fn request(&self, label: &str, args: Vec<String>, app: &Path, m: &Mounts) -> ExecRequest {
        let (secrets, cache) = (&m.secrets, &m.cache);
        let mut req = ExecRequest::new(label, args);
        req.cwd = self.app_dir.clone();
        req.mounts = vec![ExecMount {
            host: app.to_path_buf(),
            target: self.app_dir.clone(),
            writable: true,
        }];
        req.mounts.extend(secrets.iter().cloned());
        req.mounts.extend(cache.iter().cloned());
        let cache_root = cache
            .as_ref()
            .map(|m| m.target.clone())
            .unwrap_or_else(|| "/tmp".to_string());
        let userconfig = if secrets.is_some() {
            format!("{SECRETS}/npmrc")
        } else {
            "/dev/null".to_string()
        };
        req.env = vec![
            ("HOME".into(), "/tmp".into()),
            ("TMPDIR".into(), "/tmp".into()),
            ("npm_config_cache".into(), format!("{cache_root}/npm")),
            ("npm_config_userconfig".into(), userconfig),
            ("npm_config_update_notifier".into(), "false".into()),
            ("npm_config_fund".into(), "false".into()),
            ("npm_config_audit".into(), "false".into()),
            ("npm_config_progress".into(), "false".into()),
            ("npm_config_devdir".into(), "/tmp/node-gyp".into()),
            ("YARN_CACHE_FOLDER".into(), format!("{cache_root}/yarn")),
            ("CI".into(), "true".into()),
        ];
        req.network = StepNetwork::Egress;
        req.timeout = self.timeout;
        req
    }

    /// Runs the install in `app` (mounted at the app directory).
    fn install(
        &self,
        ctx: &StepContext<'_>,
        app: &Path,
        mounts: &Mounts,
        production: bool,
    ) -> Result<(), PluginError> {
        let args = self.manager.install_args(self.lock.is_some(), production);
        let label = self
            .manager
            .install_command(self.lock.is_some(), production);
        let out = ctx.exec.run(&self.request(&label, args, app, mounts))?;
        if out.success() {
            tracing::debug!(output = %out.tail(5), "{label}");
            return Ok(());
        }
        Err(self.explain(&label, &out))
    }

    /// Turns an install failure into a message naming the package and its
    /// line in package.json (or the lockfile).
    pub(crate) fn explain(&self, label: &str, out: &ExecOutput) -> PluginError {
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let lock_file = self
            .lock
            .as_ref()
            .map(|l| l.kind.file())
            .unwrap_or("package-lock.json");
        if out.timed_out {
            return PluginError::new(format!(
                "`{label}` timed out after {}s (node.install_timeout):\n{}",
                self.timeout.as_secs(),
                out.tail(15)
            ));
        }
        // npm ci: lockfile out of sync with package.json.
        if text.contains("can only install packages when your package.json and") {
            let detail: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("Missing:") || l.contains("Invalid:"))
                .map(strip_npm_prefix)
                .collect();
            let name = detail.first().and_then(|l| package_in(l));
            let mut e = PluginError::new(format!(
                "{lock_file} is out of sync with package.json{}",
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", detail.join("; "))
                }
            ))
            .hint(format!(
                "run `npm install` to update {lock_file} and add it to the app"
            ));
            e = match name.and_then(|n| self.pkg.line_of_dep(&n)) {
                Some(line) => e.in_file("package.json", Some(line)),
                None => e.in_file(lock_file, None),
            };
            return e;
        }
        if text.contains("Your lockfile needs to be updated") {
            return PluginError::new("yarn.lock is out of sync with package.json")
                .in_file("yarn.lock", None)
                .hint("run `yarn install` to update yarn.lock and add it to the app");
        }
        // A package (or version) that does not exist.
        let not_found = text.lines().find_map(|l| {
            let l = strip_npm_prefix(l);
            if let Some(rest) = l.strip_prefix("404") {
                let rest = rest.trim();
                if let Some(spec) = rest.strip_suffix("is not in this registry.") {
                    return Some((spec.trim().trim_matches('\'').to_string(), false));
                }
            }
            if let Some(spec) = l.strip_prefix("notarget No matching version found for ") {
                return Some((spec.trim_end_matches('.').to_string(), true));
            }
            if l.contains("Couldn't find package \"") {
                let s = l.split("Couldn't find package \"").nth(1)?;
                return Some((s.split('"').next()?.to_string(), false));
            }
            None
        });
        if let Some((spec, version_only)) = not_found {
            let name = package_name(&spec);
            let registry = self
                .npmrc
                .as_ref()
                .and_then(|r| r.registry())
                .unwrap_or("https://registry.npmjs.org/");
            let msg = if version_only {
                format!(
                    "no version of package `{name}` matches `{spec}` on the registry {registry}"
                )
            } else {
                format!("package `{name}` (`{spec}`) does not exist on the registry {registry}")
            };
            let mut e = PluginError::new(msg).hint(
                "check the package name and version in package.json (npm view NAME versions)",
            );
            if let Some(line) = self.pkg.line_of_dep(&name) {
                e = e.in_file("package.json", Some(line));
            } else if let Some(l) = &self.lock {
                e = e.in_file(
                    l.kind.file(),
                    crate::package::line_of_key(
                        &String::from_utf8_lossy(&l.bytes),
                        &format!("node_modules/{name}"),
                        None,
                    ),
                );
            }
            return e;
        }
        // Native modules without a toolchain.
        if text.contains("gyp ERR!") || text.contains("node-gyp") && text.contains("rebuild") {
            let module = text
                .lines()
                .filter_map(|l| {
                    let l = strip_npm_prefix(l);
                    let p = l.strip_prefix("path ")?.trim();
                    let i = p.rfind("node_modules/")?;
                    Some(p[i + "node_modules/".len()..].to_string())
                })
                .next()
                .or_else(|| {
                    text.lines().find_map(|l| {
                        let i = l.find("gyp ERR! cwd ")?;
                        let p = l[i + "gyp ERR! cwd ".len()..].trim();
                        let j = p.rfind("node_modules/")?;
                        Some(p[j + "node_modules/".len()..].to_string())
                    })
                })
                .unwrap_or_else(|| "a native module".into());
            let missing = self.probe.missing_toolchain();
            if !missing.is_empty() {
                let mut e = PluginError::new(format!(
                    "native module `{module}` must be compiled with node-gyp, but the base image {} has no C/C++ toolchain (missing: {})",
                    self.base_ref,
                    missing.join(", ")
                ))
                .hint("use a base image with build tools (on Debian: apt-get install g++ make python3), or a version of the package that ships prebuilt binaries");
                if let Some(line) = self.pkg.line_of_dep(&module) {
                    e = e.in_file("package.json", Some(line));
                }
                return e;
            }
            return PluginError::new(format!(
                "building native module `{module}` with node-gyp failed:\n{}",
                out.tail(25)
            ))
            .hint("check the module supports node ".to_string() + &self.probe.node);
        }
        if text.contains("ENOTFOUND")
            || text.contains("ECONNREFUSED")
            || text.contains("ETIMEDOUT")
            || text.contains("EAI_AGAIN")
        {
            return PluginError::new(format!(
                "`{label}` could not reach the package registry:\n{}",
                out.tail(10)
            ))
            .hint("check the network, proxy settings and the registry in .npmrc");
        }
        PluginError::new(format!(
            "`{label}` failed (exit {:?}):\n{}",
            out.code,
            out.tail(20)
        ))
    }
}

fn strip_npm_prefix(l: &str) -> &str {
    let l = l.trim();
    for p in ["npm ERR!", "npm error", "error"] {
        if let Some(r) = l.strip_prefix(p) {
            return r.trim();
        }
    }
    l
}

/// `name` of `name@spec` (scoped names keep their first `@`).
fn package_name(spec: &str) -> String {
    let spec = spec.trim().trim_matches('\'').trim_matches('"');
    let (scope, rest) = if let Some(r) = spec.strip_prefix('@') {
        ("@", r)
    } else {
        ("", spec)
    };
    format!("{scope}{}", rest.split('@').next().unwrap_or(rest))
}

/// The package named in npm's `Missing: x@1 from lock file` line.
fn package_in(line: &str) -> Option<String> {
    let rest = line
        .split_once("Missing:")
        .or_else(|| line.split_once("Invalid:"))?
        .1
        .trim();
    let spec = rest.split_whitespace().next()?;
    Some(package_name(spec))
}

/// Installs the production dependencies from package.json and the lockfile
/// only (no app source), and returns `node_modules`.
pub(crate) struct DepsStep {
    plan: Arc<InstallPlan>,
}

impl DepsStep {
    pub(crate) fn new(plan: Arc<InstallPlan>) -> Self {
        DepsStep { plan }
    }
}

impl BuildStep for DepsStep {
    fn build(
        &self,
        wanted: &[usize],
        ctx: &StepContext<'_>,
    ) -> Result<Vec<(usize, LayerContents)>, PluginError> {
        let plan = &self.plan;
        let app = ctx.scratch.join("app");
        std::fs::create_dir_all(&app).map_err(|e| io_err("cannot create", &app, e))?;
        let pj = app.join("package.json");
        std::fs::write(&pj, plan.pkg.without_scripts())
            .map_err(|e| io_err("cannot write", &pj, e))?;
        if let Some(lock) = &plan.lock {
            let p = app.join(lock.kind.file());
            std::fs::write(&p, &lock.bytes).map_err(|e| io_err("cannot write", &p, e))?;
        }
        let mounts = plan.mounts(ctx)?;
        plan.install(ctx, &app, &mounts, true)?;
        // What the install left is read without following links: an
        // install script may have swapped `node_modules` for a link to a
        // host directory.
        let dir = Dir::open(&app).map_err(|e| io_err("cannot read", &app, e))?;
        let install = plan.manager.install_command(plan.lock.is_some(), true);
        match dir
            .stat(Path::new("node_modules"))
            .map_err(|e| io_err("cannot read", &app, e))?
            .map(|n| n.kind)
        {
            Some(Kind::Dir) => {}
            None => {
                let modules = app.join("node_modules");
                std::fs::create_dir(&modules).map_err(|e| io_err("cannot create", &modules, e))?;
            }
            Some(kind) => {
                return Err(PluginError::new(format!(
                    "`node_modules` left by `{install}` is {}: refusing to follow it",
                    match kind {
                        Kind::Symlink => "a symlink, not a directory",
                        _ => "not a directory",
                    }
                ))
                .hint("an install script of a dependency replaced it; remove that dependency"))
            }
        }
        let to = format!("{}/node_modules", plan.app_dir.trim_end_matches('/'));
        // Keyed by node and the toolchain's version, not the base: reused
        // on any base with the same ones, unless it holds an addon
        // compiled here, which may need more of this base.
        let why = compiled_here(&app.join("node_modules"))?;
        if let Some(why) = &why {
            tracing::info!(reason = %why, "node_modules compiled on this base: its layer is reused on this base image only");
        }
        Ok(wanted
            .iter()
            .map(|&i| {
                let mut c = LayerContents::new(vec![LayerInput::Tree {
                    from: Beneath::new(&app, "node_modules"),
                    to: to.clone(),
                }]);
                c.root_dependent = why.is_some();
                (i, c)
            })
            .collect())
    }
}

/// Why the `node_modules` at `modules` (as an install left it; no link
/// followed) holds code compiled on the build's root, in words; `None`
/// when it holds none. It does when node-gyp built an addon there (it
/// leaves `build/config.gypi` in the package), or an ELF file needs a
/// library neither in `node_modules` nor one every system has
/// ([`ftl::native::foreign_needs`]). Prebuilt addons that bundle their
/// libraries (`prebuild-install`, `@img/sharp-libvips-*`) do not.
pub(crate) fn compiled_here(modules: &Path) -> Result<Option<String>, PluginError> {
    let read_err = |e: ftl::BeneathError| {
        PluginError::new(format!(
            "cannot read {}: {}",
            modules.display(),
            ftl::error_chain(&e)
        ))
    };
    let dir = Dir::open(modules).map_err(read_err)?;
    let mut files = Vec::new();
    let mut gyp = None;
    dir.walk::<ftl::BeneathError>(&mut |rel, node| {
        if node.kind == Kind::File {
            if gyp.is_none() && rel.ends_with("build/config.gypi") {
                gyp = Some(rel.to_path_buf());
            }
            files.push(rel.to_path_buf());
        }
        Ok(true)
    })
    .map_err(read_err)?;
    if let Some(gyp) = gyp {
        return Ok(Some(format!(
            "node-gyp built an addon here ({})",
            gyp.display()
        )));
    }
    let of = modules
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(ftl::native::foreign_needs(&dir, &files)
        .map_err(read_err)?
        .map(|n| format!("{n}, which is not in {of}")))
}

/// A snapshot of a tree's entries (no link followed): kind, size, inode and
/// status change time by path. Two differ when anything was added,
/// removed or written.
type Snapshot = std::collections::BTreeMap<PathBuf, (Kind, u64, u64, (i64, i64))>;

fn snapshot(root: &Path) -> Result<Snapshot, PluginError> {
    let mut out = Snapshot::new();
    let dir = match Dir::open(root) {
        Ok(d) => d,
        Err(e) if e.is_not_found() => return Ok(out),
        Err(e) => return Err(io_err("cannot read", root, ftl::error_chain(&e))),
    };
    dir.walk::<ftl::BeneathError>(&mut |rel, n| {
        out.insert(rel.to_path_buf(), (n.kind, n.size, n.ino, n.changed));
        Ok(true)
    })
    .map_err(|e| io_err("cannot read", root, ftl::error_chain(&e)))?;
    Ok(out)
}

/// The paths that differ between two snapshots, in order; a directory in
/// both only through its entries (whose own change is listed) is not.
fn changed(before: &Snapshot, after: &Snapshot) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = after
        .iter()
        .filter(|(p, v)| match before.get(*p) {
            Some(b) if b.0 == Kind::Dir && v.0 == Kind::Dir => false,
            b => b != Some(v),
        })
        .map(|(p, _)| p.clone())
        .chain(before.keys().filter(|p| !after.contains_key(*p)).cloned())
        .collect();
    out.sort();
    out
}

/// Copies the app, installs its production dependencies as
/// [`DepsStep`] does (none of the app's own scripts), then runs the app's
/// root lifecycle scripts (`postinstall`, `prepare`, ...) one by one in
/// npm's order, and returns the app as they left it, without
/// `node_modules`. What they write into the app directory ships; what they
/// change in `node_modules` cannot (that layer is installed without them,
/// to be reused across app changes), so a change there fails the build
/// naming the script and the files.
pub(crate) struct ScriptsStep {
    plan: Arc<InstallPlan>,
    source: SourceTree,
    paths: Vec<PathBuf>,
    scripts: Vec<&'static str>,
}

impl ScriptsStep {
    pub(crate) fn new(
        plan: Arc<InstallPlan>,
        source: SourceTree,
        paths: Vec<PathBuf>,
        scripts: Vec<&'static str>,
    ) -> Self {
        ScriptsStep {
            plan,
            source,
            paths,
            scripts,
        }
    }
}

impl BuildStep for ScriptsStep {
    fn build(
        &self,
        wanted: &[usize],
        ctx: &StepContext<'_>,
    ) -> Result<Vec<(usize, LayerContents)>, PluginError> {
        let plan = &self.plan;
        let app = ctx.scratch.join("app");
        std::fs::create_dir_all(&app).map_err(|e| io_err("cannot create", &app, e))?;
        self.source
            .dir()
            .copy_entries(&self.paths, &app)
            .map_err(|e| PluginError::new(ftl::error_chain(&e)))?;
        // The dependencies as the node_modules layer has them: installed
        // without the app's scripts; then the real package.json back.
        let pj = app.join("package.json");
        std::fs::write(&pj, plan.pkg.without_scripts())
            .map_err(|e| io_err("cannot write", &pj, e))?;
        let mounts = plan.mounts(ctx)?;
        plan.install(ctx, &app, &mounts, true)?;
        std::fs::write(&pj, &plan.pkg.text).map_err(|e| io_err("cannot write", &pj, e))?;
        let modules = app.join("node_modules");
        for (script, args) in plan.manager.lifecycle_runs(&self.scripts) {
            let before = snapshot(&modules)?;
            let label = args.join(" ");
            let out = ctx.exec.run(&plan.request(&label, args, &app, &mounts))?;
            let line = plan.pkg.line_of_key(&script, Some("scripts"));
            if !out.success() {
                let missing = out.code == Some(127);
                let mut e = out
                    .check(&format!("the `{script}` script of package.json"))
                    .err()
                    .unwrap_or_else(|| PluginError::new(format!("`{label}` failed")))
                    .in_file("package.json", line);
                if missing {
                    e = e.hint(format!(
                        "a command of the `{script}` script was not found: the install ftl runs \
                         is a production one (`{}`), without devDependencies, as `npm ci \
                         --omit=dev` is; make the script work without them (`husky install || \
                         true`), or move the tool to dependencies",
                        plan.manager.install_command(plan.lock.is_some(), true)
                    ));
                }
                return Err(e);
            }
            let touched = changed(&before, &snapshot(&modules)?);
            if !touched.is_empty() {
                let shown: Vec<String> = touched
                    .iter()
                    .take(3)
                    .map(|p| format!("node_modules/{}", p.display()))
                    .collect();
                return Err(PluginError::new(format!(
                    "the `{script}` script of package.json changed {} file(s) in node_modules \
                     ({}{}), which ftl cannot ship: node_modules is a layer of its own, \
                     installed without the app's scripts so that it is reused while only the \
                     app changes",
                    touched.len(),
                    shown.join(", "),
                    if touched.len() > shown.len() {
                        ", ..."
                    } else {
                        ""
                    }
                ))
                .in_file("package.json", line)
                .hint(
                    "write the script's output into the app directory outside node_modules; \
                     for a patched package (patch-package), publish the patched version or \
                     copy it into the app",
                ));
            }
        }
        // A link is removed, not followed.
        if std::fs::symlink_metadata(&modules).is_ok() {
            std::fs::remove_dir_all(&modules).map_err(|e| io_err("cannot remove", &modules, e))?;
        }
        if plan.lock.is_none() {
            // The lockfile npm resolved here is not part of the app.
            for f in ["package-lock.json", "yarn.lock"] {
                if !self.paths.iter().any(|p| p == Path::new(f)) {
                    let _ = std::fs::remove_file(app.join(f));
                }
            }
        }
        app_contents(wanted, &app, &plan.app_dir, &self.scripts.join(", "))
    }
}

/// The app directory `app` as a script left it, for the layers `wanted`:
/// [root-dependent](LayerContents::root_dependent) when the script
/// compiled code there that needs more of the base than every system has.
fn app_contents(
    wanted: &[usize],
    app: &Path,
    to: &str,
    by: &str,
) -> Result<Vec<(usize, LayerContents)>, PluginError> {
    let why = compiled_here(app)?;
    if let Some(why) = &why {
        tracing::info!(reason = %why, scripts = by, "the app's scripts compiled code on this base: its layer is reused on this base image only");
    }
    Ok(wanted
        .iter()
        .map(|&i| {
            let mut c = LayerContents::new(vec![LayerInput::Tree {
                from: Beneath::root(app),
                to: to.to_string(),
            }]);
            c.root_dependent = why.is_some();
            (i, c)
        })
        .collect())
}

/// Copies the app, installs every dependency (dev too), runs `gcp-build`,
/// and returns the app without `node_modules`.
pub(crate) struct GcpBuildStep {
    plan: Arc<InstallPlan>,
    source: SourceTree,
    paths: Vec<PathBuf>,
}

impl GcpBuildStep {
    pub(crate) fn new(plan: Arc<InstallPlan>, source: SourceTree, paths: Vec<PathBuf>) -> Self {
        GcpBuildStep {
            plan,
            source,
            paths,
        }
    }
}

impl BuildStep for GcpBuildStep {
    fn build(
        &self,
        wanted: &[usize],
        ctx: &StepContext<'_>,
    ) -> Result<Vec<(usize, LayerContents)>, PluginError> {
        let plan = &self.plan;
        let app = ctx.scratch.join("app");
        std::fs::create_dir_all(&app).map_err(|e| io_err("cannot create", &app, e))?;
        self.source
            .dir()
            .copy_entries(&self.paths, &app)
            .map_err(|e| PluginError::new(ftl::error_chain(&e)))?;
        let mounts = plan.mounts(ctx)?;
        plan.install(ctx, &app, &mounts, false)?;
        let mut args: Vec<String> = plan
            .manager
            .run_command()
            .split(' ')
            .map(String::from)
            .collect();
        args.push("gcp-build".into());
        let label = format!("{} gcp-build", plan.manager.run_command());
        let out = ctx.exec.run(&plan.request(&label, args, &app, &mounts))?;
        out.check("the `gcp-build` script of package.json")
            .map_err(|e| {
                e.in_file(
                    "package.json",
                    plan.pkg.line_of_key("gcp-build", Some("scripts")),
                )
            })?;
        // Dev dependencies are not shipped; production ones are their own
        // layer.
        // (A link is removed, not followed.)
        let modules = app.join("node_modules");
        if std::fs::symlink_metadata(&modules).is_ok() {
            std::fs::remove_dir_all(&modules).map_err(|e| io_err("cannot remove", &modules, e))?;
        }
        if plan.lock.is_none() {
            // The lockfile npm resolved here is not part of the app.
            for f in ["package-lock.json", "yarn.lock"] {
                if !self.paths.iter().any(|p| p == Path::new(f)) {
                    let _ = std::fs::remove_file(app.join(f));
                }
            }
        }
        app_contents(wanted, &app, &plan.app_dir, "gcp-build")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// node-gyp's `build/config.gypi` says an addon was compiled here; a
    /// package of plain JavaScript or a prebuilt addon that needs only
    /// system libraries says nothing.
    #[test]
    fn compiled_here_sees_node_gyp_builds_and_foreign_libraries() {
        let t = tempfile::tempdir().unwrap();
        let m = t.path().join("node_modules");
        let write = |rel: &str, data: &[u8]| {
            let p = m.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        };
        write("ms/index.js", b"module.exports = 1;\n");
        write("ms/package.json", b"{}");
        assert_eq!(compiled_here(&m).unwrap(), None);
        // A prebuilt addon needing libc only.
        let cc = |out: &str, args: &[&str]| {
            let c = t.path().join("addon.c");
            std::fs::write(&c, "int f(void) { return 1; }\n").unwrap();
            std::fs::create_dir_all(m.join(out).parent().unwrap()).unwrap();
            std::process::Command::new("cc")
                .args(["-shared", "-fPIC", "-o"])
                .arg(m.join(out))
                .arg(&c)
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        if cc("prebuilt/build/Release/addon.node", &[]) {
            assert_eq!(compiled_here(&m).unwrap(), None);
            // One linked against a library of the base (zlib's, where the
            // host has its development files).
            if cc(
                "linked/build/Release/addon.node",
                &["-Wl,--no-as-needed", "-lz"],
            ) {
                let why = compiled_here(&m).unwrap().unwrap();
                assert!(why.contains("addon.node needs libz.so.1"), "{why}");
                std::fs::remove_dir_all(m.join("linked")).unwrap();
            }
        } else {
            eprintln!("no C compiler: the addon cases skipped");
        }
        write("epoll/build/config.gypi", b"{}");
        let why = compiled_here(&m).unwrap().unwrap();
        assert!(why.contains("epoll/build/config.gypi"), "{why}");
    }

    /// A file written, added or removed is a change; its directory is
    /// not one of its own.
    #[test]
    fn snapshots_see_writes_and_name_the_files() {
        let t = tempfile::tempdir().unwrap();
        let m = t.path().join("node_modules");
        std::fs::create_dir_all(m.join("ms")).unwrap();
        std::fs::write(m.join("ms/index.js"), "a").unwrap();
        std::fs::write(m.join("ms/gone.js"), "a").unwrap();
        let before = snapshot(&m).unwrap();
        assert!(changed(&before, &snapshot(&m).unwrap()).is_empty());
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(m.join("ms/index.js"), "b").unwrap();
        std::fs::write(m.join("ms/patched.txt"), "x").unwrap();
        std::fs::remove_file(m.join("ms/gone.js")).unwrap();
        assert_eq!(
            changed(&before, &snapshot(&m).unwrap()),
            [
                PathBuf::from("ms/gone.js"),
                PathBuf::from("ms/index.js"),
                PathBuf::from("ms/patched.txt")
            ]
        );
        assert!(snapshot(&t.path().join("none")).unwrap().is_empty());
    }

    /// Each lifecycle script runs once: npm without hooks, yarn 1 leaving
    /// `preX`/`postX` to `X`.
    #[test]
    fn lifecycle_runs_run_each_script_once() {
        let npm = Manager::Npm {
            version: "9.2.0".into(),
        };
        let all = ["preinstall", "install", "postinstall", "prepare"];
        let labels = |m: &Manager| -> Vec<String> {
            m.lifecycle_runs(&all)
                .into_iter()
                .map(|(_, a)| a.join(" "))
                .collect()
        };
        assert_eq!(
            labels(&npm),
            [
                "npm run-script --ignore-scripts preinstall",
                "npm run-script --ignore-scripts install",
                "npm run-script --ignore-scripts postinstall",
                "npm run-script --ignore-scripts prepare"
            ]
        );
        let yarn = Manager::Yarn {
            version: "1.22.19".into(),
            bin: "yarnpkg".into(),
        };
        assert_eq!(
            labels(&yarn),
            ["yarnpkg run install", "yarnpkg run prepare"]
        );
        let berry = Manager::Yarn {
            version: "4.1.0".into(),
            bin: "yarn".into(),
        };
        assert_eq!(labels(&berry).len(), 4);
    }

    #[test]
    fn names() {
        assert_eq!(package_name("'nope-xyz@^1.0.0'"), "nope-xyz");
        assert_eq!(package_name("@scope/pkg@1"), "@scope/pkg");
        assert_eq!(
            package_in("Missing: left-pad@1.3.0 from lock file").as_deref(),
            Some("left-pad")
        );
    }

    #[test]
    fn commands() {
        let npm = Manager::Npm {
            version: "9.2.0".into(),
        };
        assert_eq!(
            npm.install_command(true, true),
            "npm ci --omit=dev --no-audit --no-fund --no-update-notifier"
        );
        assert_eq!(
            npm.install_command(false, true),
            "npm install --omit=dev --no-audit --no-fund --no-update-notifier"
        );
        let old = Manager::Npm {
            version: "6.14.18".into(),
        };
        assert_eq!(
            old.install_command(true, true),
            "npm ci --production --no-audit --no-fund --no-update-notifier"
        );
        let yarn = Manager::Yarn {
            version: "1.22.19".into(),
            bin: "yarn".into(),
        };
        assert_eq!(
            yarn.install_command(true, true),
            "yarn install --frozen-lockfile --non-interactive --production"
        );
    }
}
