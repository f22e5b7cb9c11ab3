//! The build steps: the virtualenv and its dependencies (pip in the
//! sandbox, split per distribution), and the app's files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ftl::{
    BuildStep, ExecMount, ExecOutput, ExecRequest, LayerContents, LayerInput, PluginError,
    StepContext, StepNetwork,
};

use crate::lockcheck;
use crate::plan::{redact_url_text, DepsMode, DepsPlan, PinnedDist};
use crate::record::{self, InstalledDist};
use crate::requirements::{normalize, IndexOptions, Origin};
use crate::Compile;

/// Where the step's work directory (requirement files, scripts) is
/// mounted (writable: pip writes its report there).
pub(crate) const WORK: &str = "/ftl-work";

/// pip's download cache, shared by the runs of one step (the lock check's
/// downloads are reused by the install).
const PIP_CACHE: &str = "/ftl-pip-cache";

/// The mtime-independent `.pyc`s and reproducible sdist builds.
const SOURCE_DATE_EPOCH: &str = "315532800";

/// The file listing the pinned set, in its own small layer keyed by the
/// whole set: a change to the set always rebuilds it, and that build checks
/// the set is complete, even when every distribution layer is cached.
pub(crate) const LOCK_FILE: &str = "ftl-requirements.txt";
const LOCK_HEADER: &str = "# The distributions ftl installed in this virtualenv, one layer each.\n";

/// Names of the distributions pip's report installs beyond `dists`, each
/// with who requires it.
fn missing_from_report(report: &str, dists: &[PinnedDist]) -> Result<Vec<String>, PluginError> {
    let v: serde_json::Value = serde_json::from_str(report)
        .map_err(|e| PluginError::new(format!("unexpected pip report: {e}")))?;
    let pinned: BTreeSet<&str> = dists.iter().map(|d| d.key.as_str()).collect();
    let items = v["install"].as_array().cloned().unwrap_or_default();
    let name_of =
        |i: &serde_json::Value| normalize(i["metadata"]["name"].as_str().unwrap_or_default());
    let mut out = Vec::new();
    for item in &items {
        let key = name_of(item);
        if pinned.contains(key.as_str()) {
            continue;
        }
        let version = item["metadata"]["version"].as_str().unwrap_or("?");
        let by: Vec<String> = items
            .iter()
            .filter(|other| {
                other["metadata"]["requires_dist"]
                    .as_array()
                    .is_some_and(|reqs| {
                        reqs.iter().filter_map(|r| r.as_str()).any(|r| {
                            let n: String = r
                                .chars()
                                .take_while(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
                                .collect();
                            normalize(&n) == key
                        })
                    })
            })
            .map(name_of)
            .collect();
        let by = if by.is_empty() {
            String::new()
        } else {
            format!(" (required by {})", by.join(", "))
        };
        out.push(format!("{key} {version}{by}"));
    }
    Ok(out)
}

/// The directories and context of one run of the step.
struct Run<'a> {
    env: &'a Path,
    work: &'a Path,
    /// pip's cache: the engine's persistent directory, else a scratch one.
    pip_cache: &'a Path,
    ctx: &'a StepContext<'a>,
}

pub(crate) struct DepsStep {
    plan: Arc<DepsPlan>,
}

impl DepsStep {
    pub(crate) fn new(plan: Arc<DepsPlan>) -> Self {
        DepsStep { plan }
    }
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> PluginError {
    PluginError::new(format!("{what} {}: {e}", path.display()))
}

impl DepsStep {
    fn mounts(&self, env: &Path, work: &Path, pip_cache: &Path) -> Vec<ExecMount> {
        vec![
            ExecMount {
                host: env.to_path_buf(),
                target: self.plan.settings.venv.clone(),
                writable: true,
            },
            ExecMount {
                host: work.to_path_buf(),
                target: WORK.to_string(),
                writable: true,
            },
            ExecMount {
                host: pip_cache.to_path_buf(),
                target: PIP_CACHE.to_string(),
                writable: true,
            },
        ]
    }

    fn request(&self, label: &str, args: Vec<String>, run: &Run<'_>) -> ExecRequest {
        let mut req = ExecRequest::new(label, args);
        req.mounts = self.mounts(run.env, run.work, run.pip_cache);
        req.env = vec![
            ("HOME".into(), "/tmp".into()),
            ("TMPDIR".into(), "/tmp".into()),
            ("PIP_CACHE_DIR".into(), PIP_CACHE.into()),
            ("PIP_ROOT_USER_ACTION".into(), "ignore".into()),
            ("PIP_DISABLE_PIP_VERSION_CHECK".into(), "1".into()),
            ("PIP_NO_INPUT".into(), "1".into()),
            ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
            ("SOURCE_DATE_EPOCH".into(), SOURCE_DATE_EPOCH.into()),
        ];
        req.timeout = Duration::from_secs(300);
        req
    }

    /// The requirement files, at the app directory.
    fn dep_files_input(&self) -> Option<LayerInput> {
        (!self.plan.dep_files.is_empty()).then(|| LayerInput::Files {
            root: ftl::Beneath::root(&self.plan.source_root),
            to: self.plan.app_dir.clone(),
            paths: self.plan.dep_files.clone(),
        })
    }

    fn python(&self) -> String {
        format!("{}/bin/python", self.plan.settings.venv)
    }

    /// The pip command prefix.
    fn pip(&self) -> Result<Vec<String>, PluginError> {
        let pip = self.plan.pip.as_ref().ok_or_else(|| {
            PluginError::new(format!("no pip in the base image {}", self.plan.base_ref))
        })?;
        Ok(if pip.source == "ensurepip" {
            vec![self.python(), format!("{}/pip", pip.path)]
        } else if let Some(runner) = &pip.runner {
            // What `--python` would run, without pip's first start.
            vec![self.python(), runner.clone()]
        } else {
            vec![
                self.plan.probe.executable.clone(),
                "-m".into(),
                "pip".into(),
                "--python".into(),
                self.python(),
            ]
        })
    }

    fn install(&self, run: &Run<'_>, file: &str, no_deps: bool) -> Result<(), PluginError> {
        let ctx = run.ctx;
        let mut args = self.pip()?;
        args.extend(
            [
                "install",
                "--no-compile",
                "--no-warn-script-location",
                "--disable-pip-version-check",
                "--progress-bar",
                "off",
            ]
            .map(String::from),
        );
        if no_deps {
            args.extend(["--no-deps".to_string(), "--no-warn-conflicts".to_string()]);
        } else {
            // Settings override the files' own index options.
            if let Some(u) = &self.plan.settings.index_url {
                args.extend(["--index-url".to_string(), u.clone()]);
            }
            for u in &self.plan.settings.extra_index_urls {
                args.extend(["--extra-index-url".to_string(), u.clone()]);
            }
        }
        args.extend(["-r".to_string(), format!("{WORK}/{file}")]);
        let mut req = self.request("pip install", args, run);
        req.network = StepNetwork::Egress;
        req.timeout = self.plan.settings.install_timeout;
        let out = ctx.exec.run(&req)?;
        if out.success() {
            tracing::debug!(output = %out.tail(5), "pip install");
            return Ok(());
        }
        Err(self.explain_pip_failure(&out))
    }

    fn explain_pip_failure(&self, out: &ExecOutput) -> PluginError {
        explain_pip_failure(
            out,
            &self.plan.options,
            &self.plan.origins,
            self.plan.settings.install_timeout,
        )
    }

    /// Resolves the whole pinned set with dependencies (`pip install
    /// --dry-run --report`, metadata only) and fails when pip needs a
    /// distribution the set does not pin, or the pins conflict.
    /// Returns what pip's report says each distribution needs (empty when
    /// pip is too old to report).
    fn lock_check(
        &self,
        run: &Run<'_>,
        dists: &[PinnedDist],
        top: &Path,
    ) -> Result<BTreeMap<String, lockcheck::Needs>, PluginError> {
        let pip = self.plan.pip.as_ref().ok_or_else(|| {
            PluginError::new(format!("no pip in the base image {}", self.plan.base_ref))
        })?;
        if !crate::plan::version_at_least(&pip.version, &[22, 2]) {
            tracing::warn!(pip = %pip.version, "pip too old for --dry-run --report; the lock is not checked for missing dependencies");
            return Ok(BTreeMap::new());
        }
        let mut lines = self.plan.options.to_lines();
        lines.retain(|l| l != "--require-hashes");
        // Without the hashes: in hash-checking mode pip stops at the first
        // dependency the set misses, before any report; the install
        // checks them.
        lines.extend(dists.iter().map(|d| {
            let line = d.line_with_extras();
            match line.find(" --hash=") {
                Some(i) => line[..i].to_string(),
                None => line,
            }
        }));
        let file = run.work.join("lock.txt");
        std::fs::write(&file, lines.join("\n") + "\n")
            .map_err(|e| io_err("cannot write", &file, e))?;
        let mut args = self.pip()?;
        args.extend(
            [
                "install",
                "--dry-run",
                "--ignore-installed",
                "--quiet",
                "--disable-pip-version-check",
                "--progress-bar",
                "off",
            ]
            .map(String::from),
        );
        args.extend([
            "--report".to_string(),
            format!("{WORK}/report.json"),
            "-r".into(),
            format!("{WORK}/lock.txt"),
        ]);
        let mut req = self.request("pip lock check", args, run);
        req.network = StepNetwork::Egress;
        req.timeout = self.plan.settings.install_timeout;
        let out = run.ctx.exec.run(&req)?;
        if !out.success() {
            let e = self.explain_pip_failure(&out);
            if e.file.is_some()
                || !String::from_utf8_lossy(&out.stderr).contains("ResolutionImpossible")
            {
                return Err(e);
            }
            return Err(PluginError::new(format!(
                "the pinned versions conflict:\n{}",
                out.tail(15)
            ))
            .in_file(top, None)
            .hint("pin versions that satisfy each other's requirements (pip-compile finds them)"));
        }
        // Left by a step whose sdist builds ran other people's code: read
        // below the work directory without following a link.
        let text = ftl::beneath::Dir::open(run.work)
            .and_then(|d| d.read(Path::new("report.json")))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .map_err(|e| {
                PluginError::new(format!(
                    "cannot read pip's report: {}",
                    ftl::error_chain(&e)
                ))
            })?;
        let missing = missing_from_report(&text, dists)?;
        if missing.is_empty() {
            return Ok(serde_json::from_str(&text)
                .map(|v| lockcheck::from_report(&v))
                .unwrap_or_default());
        }
        Err(PluginError::new(format!(
            "this is a complete lock (every requirement pinned with == and a --hash), but it misses dependencies: {}",
            missing.join("; ")
        ))
        .in_file(top, None)
        .hint("add them with their hashes (`pip-compile --generate-hashes` lists every transitive dependency), or drop the hashes to let ftl resolve the rest with pip"))
    }

    /// Compiles the modules of each group of distributions (their RECORDs'
    /// `.py` files in the site directory; a group is a layer) in a process
    /// of its own, forked from one that did nothing else, as many at once
    /// as the step has cores: a layer's `.pyc` never depends on what else
    /// this build installed, and a build of many layers uses every core.
    fn compile_layers(&self, run: &Run<'_>, groups: &[Vec<PathBuf>]) -> Result<(), PluginError> {
        let venv = &self.plan.settings.venv;
        let mut args: Vec<String> = vec![
            // The base's interpreter, isolated and without `site` (see
            // `compile`).
            self.plan.probe.executable.clone(),
            "-I".into(),
            "-S".into(),
            "-c".into(),
            COMPILE_LAYERS.into(),
        ];
        for group in groups.iter().filter(|g| !g.is_empty()) {
            args.push("--".into());
            args.extend(group.iter().map(|d| format!("{venv}/{}", d.display())));
        }
        if args.len() == 5 {
            return Ok(());
        }
        let out = run
            .ctx
            .exec
            .run(&self.request("python compileall", args, run))?;
        if !out.success() {
            tracing::warn!(output = %out.tail(10), "compileall reported errors; modules that failed to compile ship without .pyc");
        }
        Ok(())
    }

    fn compile(&self, run: &Run<'_>) -> Result<(), PluginError> {
        let (env, ctx) = (run.env, run.ctx);
        let sites = record::site_dirs(env).map_err(|e| PluginError::new(e.to_string()))?;
        if sites.is_empty() {
            return Ok(());
        }
        // `-S`: no `site`, so no `.pth` file runs. The install before this
        // may have built sdists, whose build code could have left one in
        // the venv to rewrite other distributions' files (and so their
        // cached layers) when Python next starts there.
        let mut args: Vec<String> = vec![
            // The base's interpreter, not the venv's `bin/python`, which a
            // wheel of the install may have replaced; isolated (`-I`).
            self.plan.probe.executable.clone(),
            "-I".into(),
            "-S".into(),
            "-m".into(),
            "compileall".into(),
            "-q".into(),
            "-f".into(),
            "--invalidation-mode".into(),
            "unchecked-hash".into(),
        ];
        args.extend(
            sites
                .iter()
                .map(|s| format!("{}/{}", self.plan.settings.venv, s.display())),
        );
        let out = ctx
            .exec
            .run(&self.request("python compileall", args, run))?;
        if !out.success() {
            // compileall exits 1 when a file does not compile (Python 2
            // test files in some packages); the rest is compiled.
            tracing::warn!(output = %out.tail(10), "compileall reported errors; modules that failed to compile ship without .pyc");
        }
        Ok(())
    }
}

impl BuildStep for DepsStep {
    fn build(
        &self,
        wanted: &[usize],
        ctx: &StepContext<'_>,
    ) -> Result<Vec<(usize, LayerContents)>, PluginError> {
        let plan = &self.plan;
        let env = ctx.scratch.join("env");
        let work = ctx.scratch.join("work");
        // pip's cache stays with the build: its entries (HTTP responses
        // keyed by URL, wheels built from sdists) cannot be checked, so a
        // build's install code could plant one for the next build; and
        // each distribution's layer is cached by its pin anyway, so a
        // rebuild downloads only what it adds.
        let pip_cache = work.join("pip-cache");
        for d in [&env, &work, &pip_cache] {
            std::fs::create_dir_all(d).map_err(|e| io_err("cannot create", d, e))?;
        }
        let run = Run {
            env: &env,
            work: &work,
            pip_cache: &pip_cache,
            ctx,
        };
        let venv = plan.settings.venv.clone();
        let make_venv = vec![
            plan.probe.executable.clone(),
            "-m".into(),
            "venv".into(),
            "--without-pip".into(),
            venv.clone(),
        ];
        ctx.exec
            .run(&self.request("python -m venv", make_venv.clone(), &run))?
            .check("creating the virtualenv")?;
        // With directories, so that empty ones (site-packages) exist.
        let venv_files = record::all_entries(&env).map_err(|e| PluginError::new(e.to_string()))?;
        let before: BTreeSet<PathBuf> = venv_files.iter().cloned().collect();
        // A layer of what pip installed. Keyed by the interpreter, not the
        // base: reused on any base with the same interpreter, unless it
        // holds code compiled here, which may need more of this base.
        let files_input = |name: &str, paths: Vec<PathBuf>| -> Result<LayerContents, PluginError> {
            let why =
                record::compiled_here(&env, &paths).map_err(|e| PluginError::new(e.to_string()))?;
            if let Some(why) = &why {
                tracing::info!(layer = %name, reason = %why, "compiled on this base: its layer is reused on this base image only");
            }
            Ok(LayerContents {
                inputs: vec![LayerInput::Files {
                    // The venv's mount point; nothing below it is followed.
                    root: ftl::Beneath::root(&env),
                    to: venv.clone(),
                    paths,
                }],
                root_dependent: why.is_some(),
            })
        };

        let mut out = Vec::new();
        if wanted.contains(&plan.venv_layer) {
            // As the venv is now, before any package is installed: a wheel
            // may replace its files (`*.data/scripts/python` lands on
            // `bin/python`), and this layer is keyed by the interpreter
            // alone, so every app with this interpreter would get it.
            let snapshot = ctx.scratch.join("venv-layer");
            ftl::beneath::Dir::open(&env)
                .and_then(|d| d.copy_entries(&venv_files, &snapshot))
                .map_err(|e| {
                    PluginError::new(format!(
                        "cannot copy the virtualenv: {}",
                        ftl::error_chain(&e)
                    ))
                })?;
            out.push((
                plan.venv_layer,
                LayerContents::new(vec![LayerInput::Files {
                    root: ftl::Beneath::root(&snapshot),
                    to: venv.clone(),
                    paths: venv_files.clone(),
                }]),
            ));
        }

        match &plan.mode {
            DepsMode::None => {}
            DepsMode::Pinned {
                layers,
                lock,
                dists: all_dists,
                top,
                resolved,
            } => {
                let want: Vec<&(usize, Vec<PinnedDist>)> =
                    layers.iter().filter(|(i, _)| wanted.contains(i)).collect();
                let check_lock = wanted.contains(lock);
                if want.is_empty() && !check_lock {
                    return Ok(out);
                }
                let mut lines = plan.options.to_lines();
                for (_, dists) in &want {
                    for d in dists {
                        lines.push(d.line());
                    }
                }
                let file = work.join("requirements.txt");
                std::fs::write(&file, lines.join("\n") + "\n")
                    .map_err(|e| io_err("cannot write", &file, e))?;
                // The lock check first: its error (a missing or conflicting
                // pin) explains an install failure better than pip's. Not in
                // parallel: `Exec::run` is not promised to be re-entrant.
                // From the distributions' metadata when the app's previous
                // check knew it for every distribution but those this step
                // installs (read after the install); else by pip.
                let pin_of = |d: &PinnedDist| lockcheck::pin(&d.key, &d.version);
                let mut needs = BTreeMap::new();
                let mut check_after_install = false;
                if check_lock && !*resolved {
                    needs = lockcheck::remembered(ctx.exec, top, &plan.memo_env);
                    let installing: BTreeSet<String> = want
                        .iter()
                        .flat_map(|(_, ds)| ds.iter().map(pin_of))
                        .collect();
                    let unknown: Vec<String> = all_dists
                        .iter()
                        .map(pin_of)
                        .filter(|p| !needs.contains_key(p))
                        .collect();
                    if unknown.is_empty() {
                        match lockcheck::problems(all_dists, &needs, &plan.probe.markers) {
                            Some(p) if p.is_empty() => {}
                            _ => needs.clear(), // pip decides and explains
                        }
                    } else if unknown.iter().all(|p| installing.contains(p)) {
                        check_after_install = true;
                    } else {
                        needs.clear();
                    }
                }
                if check_lock && !*resolved && needs.is_empty() && !check_after_install {
                    let venv_before =
                        record::fingerprint(&env).map_err(|e| PluginError::new(e.to_string()))?;
                    needs = self.lock_check(&run, all_dists, top)?;
                    // A dry run writes nothing: a `.pth` file an sdist's
                    // build left in the venv would run inside the pip of
                    // the install that follows (pip runs in the venv's
                    // interpreter), able to rewrite files and their RECORD.
                    let after =
                        record::fingerprint(&env).map_err(|e| PluginError::new(e.to_string()))?;
                    if let Some(f) = record::first_difference(&venv_before, &after) {
                        return Err(PluginError::new(format!(
                            "resolving the lock changed the virtualenv ({}): a package's build code wrote there; refusing to install with it",
                            f.display()
                        ))
                        .in_file(top, None));
                    }
                }
                if !want.is_empty() {
                    self.install(&run, "requirements.txt", true)?;
                }
                if check_lock {
                    let text: String = std::iter::once(LOCK_HEADER.to_string())
                        .chain(
                            all_dists
                                .iter()
                                .map(|d| format!("{}=={}\n", d.key, d.version)),
                        )
                        .collect();
                    let mut inputs = vec![LayerInput::Bytes {
                        path: format!("{venv}/{LOCK_FILE}"),
                        mode: 0o644,
                        data: text.into_bytes(),
                    }];
                    inputs.extend(self.dep_files_input());
                    out.push((*lock, LayerContents::new(inputs)));
                }
                // For the app's next check, the needs of this set.
                let keep_needs = |mut needs: BTreeMap<String, lockcheck::Needs>| {
                    if check_lock && !*resolved && !needs.is_empty() {
                        let set: BTreeSet<String> = all_dists.iter().map(pin_of).collect();
                        needs.retain(|p, _| set.contains(p));
                        lockcheck::remember(ctx.exec, top, &plan.memo_env, &needs);
                    }
                };
                if want.is_empty() {
                    keep_needs(needs);
                    return Ok(out);
                }
                if plan.settings.compile == Compile::UncheckedHash {
                    let installed = record::installed_dists(&env, None)
                        .map_err(|e| PluginError::new(e.to_string()))?;
                    let by_key: BTreeMap<&str, &InstalledDist> =
                        installed.iter().map(|d| (d.key.as_str(), d)).collect();
                    let groups: Vec<Vec<PathBuf>> = want
                        .iter()
                        .map(|(_, dists)| {
                            dists
                                .iter()
                                .filter_map(|d| by_key.get(d.key.as_str()))
                                .map(|d| d.dist_info.clone())
                                .collect()
                        })
                        .collect();
                    self.compile_layers(&run, &groups)?;
                }
                let installed = record::installed_dists(&env, Some(&plan.probe.cache_tag))
                    .map_err(|e| PluginError::new(e.to_string()))?;
                warn_unclaimed(&env, &installed, &before);
                let by_key: BTreeMap<&str, &InstalledDist> =
                    installed.iter().map(|d| (d.key.as_str(), d)).collect();
                // Each layer is keyed by its pin alone: its files must be
                // what pip installed for it, not what another package of
                // this install (a wheel may carry any path of the venv)
                // wrote over them, nor a RECORD another one claims.
                let owners = record::overlaps(&installed);
                for (file, (a, b)) in &owners {
                    if file.file_name().is_some_and(|n| n == "RECORD") {
                        return Err(PluginError::new(format!(
                            "`{a}` and `{b}` both install {}: refusing a distribution that writes another's record",
                            file.display()
                        )));
                    }
                }
                for (_, dists) in &want {
                    for d in dists {
                        let Some(got) = by_key.get(d.key.as_str()) else {
                            continue;
                        };
                        let changed = record::changed_since_install(&env, got)
                            .map_err(|e| PluginError::new(e.to_string()))?;
                        if let Some(f) = changed.first() {
                            let by = owners.get(f).map(|(a, b)| {
                                if *a == got.key {
                                    b.clone()
                                } else {
                                    a.clone()
                                }
                            });
                            return Err(PluginError::new(format!(
                                "{} of `{}=={}` is not what pip installed for it{}: refusing to cache a layer another package changed",
                                f.display(),
                                d.name,
                                d.version,
                                by.map(|o| format!(" (`{o}` installs it too)")).unwrap_or_default()
                            ))
                            .in_file(&d.origin.file, Some(d.origin.line)));
                        }
                    }
                }
                if check_after_install {
                    // What this step installed, as its RECORD vouched above.
                    let dir = ftl::beneath::Dir::open(&env)
                        .map_err(|e| PluginError::new(ftl::error_chain(&e)))?;
                    for (_, ds) in &want {
                        for d in ds {
                            let Some(got) = by_key.get(d.key.as_str()) else {
                                continue;
                            };
                            let text = dir
                                .read(&got.dist_info.join("METADATA"))
                                .map(|b| String::from_utf8_lossy(&b).into_owned())
                                .unwrap_or_default();
                            needs.insert(pin_of(d), lockcheck::from_metadata(&text));
                        }
                    }
                    match lockcheck::problems(all_dists, &needs, &plan.probe.markers) {
                        Some(p) if p.is_empty() => {}
                        Some(p) => return Err(lockcheck::error(&p, top)),
                        None => {
                            // Metadata ftl cannot read: pip decides, in a
                            // virtualenv of its own (nothing installed
                            // there runs in its interpreter).
                            let fresh = ctx.scratch.join("env-check");
                            std::fs::create_dir_all(&fresh)
                                .map_err(|e| io_err("cannot create", &fresh, e))?;
                            let check = Run {
                                env: &fresh,
                                work: &work,
                                pip_cache: &pip_cache,
                                ctx,
                            };
                            ctx.exec
                                .run(&self.request("python -m venv", make_venv.clone(), &check))?
                                .check("creating the virtualenv")?;
                            needs = self.lock_check(&check, all_dists, top)?;
                        }
                    }
                }
                keep_needs(needs);
                for (index, dists) in want {
                    let mut paths = Vec::new();
                    let pins: Vec<String> = dists
                        .iter()
                        .map(|d| format!("{}=={}", d.key, d.version))
                        .collect();
                    for d in dists {
                        let got = by_key.get(d.key.as_str()).ok_or_else(|| {
                            PluginError::new(format!(
                                "pip did not install `{}=={}`",
                                d.name, d.version
                            ))
                            .in_file(&d.origin.file, Some(d.origin.line))
                        })?;
                        if got.version != d.version {
                            tracing::debug!(dist = %d.key, pinned = %d.version, installed = %got.version, "installed version spelled differently from the pin");
                        }
                        paths.extend(got.files.iter().cloned());
                    }
                    out.push((*index, files_input(&pins.join(" "), paths)?));
                }
            }
            DepsMode::Unpinned { layer, files } => {
                if !wanted.contains(layer) {
                    return Ok(out);
                }
                let req_dir = work.join("req");
                for (rel, text) in files {
                    let path = req_dir.join(rel);
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)
                            .map_err(|e| io_err("cannot create", parent, e))?;
                    }
                    std::fs::write(&path, text).map_err(|e| io_err("cannot write", &path, e))?;
                }
                let top = format!("req/{}", files[0].0.display());
                self.install(&run, &top, false)?;
                if plan.settings.compile == Compile::UncheckedHash {
                    self.compile(&run)?;
                }
                // Everything new in the venv, claimed by a RECORD or not.
                let paths: Vec<PathBuf> = record::all_files(&env)
                    .map_err(|e| PluginError::new(e.to_string()))?
                    .into_iter()
                    .filter(|f| !before.contains(f))
                    .collect();
                let mut contents = files_input("dependencies (not pinned)", paths)?;
                contents.inputs.extend(self.dep_files_input());
                out.push((*layer, contents));
            }
        }
        Ok(out)
    }
}

/// `python -I -S -c COMPILE_LAYERS -- DIST_INFO... -- DIST_INFO...`: each
/// group's modules (the `.py` files its RECORDs list inside their site
/// directory) compiled by a child forked for that group alone, at most as
/// many at once as the process may use cores, the largest groups first.
/// Exits 1 when a module did not compile (the rest is compiled).
const COMPILE_LAYERS: &str = r#"
import compileall, csv, os, py_compile, sys
mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
groups, group = [], None
for a in sys.argv[1:]:
    if a == "--":
        group = []
        groups.append(group)
    elif group is not None:
        group.append(a)
def weight(g):
    w = 0
    for d in g:
        try:
            w += os.stat(os.path.join(d, "RECORD")).st_size
        except OSError:
            pass
    return w
groups.sort(key=weight, reverse=True)
def compile_group(g):
    ok = True
    for d in g:
        site = os.path.dirname(d)
        try:
            with open(os.path.join(d, "RECORD"), encoding="utf-8", newline="") as f:
                rows = list(csv.reader(f))
        except OSError:
            continue
        files = set()
        for row in rows:
            if row and row[0].endswith(".py"):
                p = os.path.normpath(os.path.join(site, row[0]))
                if p.startswith(site + os.sep) and os.path.isfile(p):
                    files.add(p)
        for p in sorted(files):
            ok = compileall.compile_file(p, quiet=1, force=True, invalidation_mode=mode) and ok
    return ok
jobs = max(1, len(os.sched_getaffinity(0)))
running, failed = set(), 0
def reap():
    global failed
    pid, status = os.wait()
    running.discard(pid)
    if status != 0:
        failed += 1
for g in groups:
    while len(running) >= jobs:
        reap()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if compile_group(g) else 1
        finally:
            os._exit(code)
    running.add(pid)
while running:
    reap()
sys.exit(1 if failed else 0)
"#;

/// Turns pip's failure into a message naming the requirement's file and
/// line.
pub(crate) fn explain_pip_failure(
    out: &ExecOutput,
    options: &IndexOptions,
    origins: &BTreeMap<String, Origin>,
    timeout: Duration,
) -> PluginError {
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let index = options
        .index_url
        .as_deref()
        .map(redact_url_text)
        .unwrap_or_else(|| "https://pypi.org/simple".into());
    for marker in [
        "No matching distribution found for ",
        "Could not find a version that satisfies the requirement ",
    ] {
        if let Some(line) = text.lines().find(|l| l.contains(marker)) {
            let spec = line
                .split(marker)
                .nth(1)
                .unwrap_or("")
                .split_whitespace()
                .next()
                .unwrap_or("");
            let name: String = spec
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
                .collect();
            let mut e = PluginError::new(format!(
                "package `{spec}` was not found on the package index {index}"
            ))
            .hint(format!(
                "check the name and version exist (pip said: {})",
                line.trim().trim_start_matches("ERROR: ")
            ));
            if let Some(o) = origins.get(&normalize(&name)) {
                e = e.in_file(&o.file, Some(o.line));
            }
            return e;
        }
    }
    if text.contains("THESE PACKAGES DO NOT MATCH THE HASHES") {
        return PluginError::new(format!("a downloaded package does not match its --hash:\n{}", out.tail(12)))
            .hint("regenerate the hashes (pip-compile --generate-hashes) or check the index serves the expected files");
    }
    if text.contains("Failed building wheel")
        || text.contains("failed-wheel-build")
        || text.contains("subprocess-exited-with-error")
    {
        return PluginError::new(format!("building a package from source failed:\n{}", out.tail(25)))
            .hint("the base image may lack a compiler or headers (gcc, python3-dev); use a package with wheels for this platform, or a base image with the build tools");
    }
    let how = if out.timed_out {
        format!(
            "timed out after {}s (python.install_timeout)",
            timeout.as_secs()
        )
    } else {
        format!("failed (exit {:?})", out.code)
    };
    PluginError::new(format!("pip install {how}:\n{}", out.tail(20)))
}

fn warn_unclaimed(env: &Path, installed: &[InstalledDist], before: &BTreeSet<PathBuf>) {
    match record::unclaimed(env, installed, before) {
        Ok(stray) if !stray.is_empty() => {
            tracing::warn!(files = ?stray, "files installed that no distribution's RECORD lists; left out of the image")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not list unclaimed files"),
    }
    for (file, (a, b)) in record::overlaps(installed) {
        tracing::warn!(file = %file.display(), first = %a, second = %b, "file claimed by two distributions; it goes in both layers");
    }
}
