//! From source and base to a layer plan: inputs, probe, keys, layers,
//! config.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ftl::{sha256_tagged, CacheKey, ConfigPatch, PlanContext, PlannedLayer, PluginError};
use serde_json::{json, Value};

use crate::entrypoint;
use crate::hook;
use crate::inputs;
use crate::install::DepsStep;
use crate::probe::{self, PipInfo, Probe};
use crate::requirements::{self, IndexOptions, Origin, RequirementSet};
use crate::requires_python;
use crate::resolve;
use crate::Settings;

/// Bumped when the layout of any layer changes for the same inputs. 2: a
/// layer of code compiled on the base is recorded for that base only
/// ([`ftl::LayerContents::root_dependent`]); version 1 entries may hold
/// such layers under the interpreter's key alone, so they are never read.
pub const KEY_VERSION: u32 = 2;
const PLUGIN: &str = "python";
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One pinned distribution to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PinnedDist {
    pub key: String,
    pub name: String,
    pub version: String,
    pub hashes: Vec<String>,
    pub extras: Vec<String>,
    pub origin: Origin,
}

impl PinnedDist {
    /// The line handed to pip for the lock check: with extras, so that
    /// their dependencies must be pinned too.
    pub fn line_with_extras(&self) -> String {
        let extras = if self.extras.is_empty() {
            String::new()
        } else {
            format!("[{}]", self.extras.join(","))
        };
        let mut s = format!("{}{extras}=={}", self.name, self.version);
        for h in &self.hashes {
            s.push_str(&format!(" --hash={h}"));
        }
        s
    }

    /// The line handed to pip.
    pub fn line(&self) -> String {
        let mut s = format!("{}=={}", self.name, self.version);
        for h in &self.hashes {
            s.push_str(&format!(" --hash={h}"));
        }
        s
    }
}

#[derive(Debug, Clone)]
pub(crate) enum DepsMode {
    None,
    Pinned {
        /// (layer index, its distributions).
        layers: Vec<(usize, Vec<PinnedDist>)>,
        /// The lock layer's index.
        lock: usize,
        /// The whole pinned set, for the lock check.
        dists: Vec<PinnedDist>,
        /// The file that claims to pin everything.
        top: PathBuf,
        /// pip chose the set while planning: its completeness needs no
        /// check when the lock layer is built.
        resolved: bool,
    },
    Unpinned {
        layer: usize,
        /// Files to hand pip (relative path, text); the first is the top.
        files: Vec<(PathBuf, String)>,
    },
}

/// Everything the dependency step needs.
#[derive(Debug, Clone)]
pub(crate) struct DepsPlan {
    pub probe: Probe,
    pub settings: Settings,
    pub pip: Option<PipInfo>,
    pub options: IndexOptions,
    pub venv_layer: usize,
    pub mode: DepsMode,
    pub origins: BTreeMap<String, Origin>,
    pub base_ref: String,
    /// Requirement files (relative to the source root) that ship in the
    /// lock or dependency layer at the app directory instead of in the app
    /// layer: a changed requirement then leaves the app layer alone.
    pub dep_files: Vec<PathBuf>,
    pub source_root: PathBuf,
    pub app_dir: String,
    /// What keys the dependency layers besides their pins (interpreter,
    /// installer, index): the environment of the memos the step keeps.
    pub memo_env: Value,
}

/// A URL as it goes into a key: credentials replaced, and the full URL
/// hashed so that changing them still changes the key.
pub(crate) fn redact_url(url: &str) -> Value {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return json!({
                "url": format!("{scheme}://****@{}", &rest[at + 1..]),
                "with_credentials": sha256_tagged(url.as_bytes()),
            });
        }
    }
    Value::String(url.to_string())
}

/// For messages and logs.
pub(crate) fn redact_url_text(url: &str) -> String {
    match redact_url(url) {
        Value::String(s) => s,
        v => v["url"].as_str().unwrap_or_default().to_string(),
    }
}

fn index_doc(o: &IndexOptions) -> Value {
    json!({
        "index_url": o.index_url.as_deref().map(redact_url),
        "extra_index_urls": o.extra_index_urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
        "find_links": o.find_links.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
        "no_index": o.no_index,
        "trusted_hosts": o.trusted_hosts,
        "pre": o.pre,
        "prefer_binary": o.prefer_binary,
        "only_binary": o.only_binary,
        "no_binary": o.no_binary,
    })
}

/// `PIP_*` variables of the base config: pip in the sandbox reads them.
fn pip_env_doc(ctx: &PlanContext<'_>) -> Value {
    let map: BTreeMap<String, Value> = ctx
        .base
        .env()
        .into_iter()
        .filter(|(k, _)| k.starts_with("PIP_") || k == "UV_INDEX_URL")
        .map(|(k, v)| {
            // pip splits list variables (`PIP_EXTRA_INDEX_URL`,
            // `PIP_FIND_LINKS`) on whitespace: each URL has its own
            // credentials. One URL keeps its old form (and its keys).
            let urls: Vec<&str> = v.split_whitespace().collect();
            let value = if urls.len() > 1 && v.contains("://") {
                Value::Array(urls.iter().map(|u| redact_url(u)).collect())
            } else if v.contains("://") {
                redact_url(&v)
            } else {
                Value::String(v)
            };
            (k, value)
        })
        .collect();
    json!(map)
}

/// Pinned distributions of `set` that apply to the interpreter, merged by
/// name and sorted; `None` when the set is not fully pinned.
fn pinned_dists(
    set: &RequirementSet,
    markers: &BTreeMap<String, String>,
) -> Result<Option<Vec<PinnedDist>>, PluginError> {
    let mut by_key: BTreeMap<String, PinnedDist> = BTreeMap::new();
    let mut pinned = true;
    for req in &set.requirements {
        if !requirements::applies(req, markers) {
            tracing::debug!(requirement = %req.name, marker = ?req.marker_text, "skipped: marker does not match the base interpreter");
            continue;
        }
        let Some(version) = set.pinned_version(req) else {
            pinned = false;
            continue;
        };
        let mut hashes = req.hashes.clone();
        if hashes.is_empty() {
            if let Some(c) = set.constraints.iter().find(|c| c.key == req.key) {
                hashes = c.hashes.clone();
            }
        }
        match by_key.get_mut(&req.key) {
            Some(prev) if prev.version != version => {
                return Err(PluginError::new(format!(
                    "`{}` is pinned twice, to {} ({}:{}) and to {}",
                    req.name,
                    prev.version,
                    prev.origin.file.display(),
                    prev.origin.line,
                    version
                ))
                .in_file(&req.origin.file, Some(req.origin.line))
                .hint("keep one pin per package"));
            }
            Some(prev) => {
                prev.hashes.extend(hashes);
                prev.hashes.sort();
                prev.hashes.dedup();
                prev.extras.extend(req.extras.iter().cloned());
                prev.extras.sort();
                prev.extras.dedup();
            }
            None => {
                by_key.insert(
                    req.key.clone(),
                    PinnedDist {
                        key: req.key.clone(),
                        name: req.name.clone(),
                        version: version.to_string(),
                        hashes,
                        extras: req.extras.clone(),
                        origin: req.origin.clone(),
                    },
                );
            }
        }
    }
    if !pinned || set.requirements.iter().any(|r| r.url.is_some()) {
        return Ok(None);
    }
    Ok(Some(by_key.into_values().collect()))
}

/// Splits sorted distributions into at most `max` layers. Past `max`, a
/// distribution's layer is chosen by a hash of its name, so adding or
/// removing one changes only its own group.
fn group(dists: Vec<PinnedDist>, max: usize) -> Vec<Vec<PinnedDist>> {
    if dists.len() <= max {
        return dists.into_iter().map(|d| vec![d]).collect();
    }
    let mut buckets: BTreeMap<u64, Vec<PinnedDist>> = BTreeMap::new();
    for d in dists {
        let h = sha256_tagged(d.key.as_bytes());
        let n = u64::from_str_radix(&h["sha256:".len().."sha256:".len() + 15], 16).expect("hex");
        buckets.entry(n % max as u64).or_default().push(d);
    }
    buckets.into_values().collect()
}

pub(crate) fn plan(
    ctx: &PlanContext<'_>,
    settings: &Settings,
) -> Result<ftl::LayerPlan, PluginError> {
    let probe = probe::probe(ctx.exec, &settings.interpreter, &ctx.base.reference)?;
    let set = inputs::read_inputs(ctx.source, settings, &probe.markers)?;
    if let Some((spec, origin)) = set.as_ref().and_then(|s| s.requires_python.as_ref()) {
        requires_python::check_requires_python(spec, origin, &probe.version)?;
    }
    // app.yaml's `runtime: python312` against the base's interpreter.
    if let Some(app) = ftl::app::AppYaml::read(ctx.source)? {
        app.check_runtime("python", &probe.version)?;
    }
    let venv = settings.venv.clone();

    let mut options = set.as_ref().map(|s| s.options.clone()).unwrap_or_default();
    if let Some(u) = &settings.index_url {
        options.index_url = Some(u.clone());
    }
    options
        .extra_index_urls
        .extend(settings.extra_index_urls.iter().cloned());

    let app_dir = ctx.options.app_dir.trim_end_matches('/').to_string();
    let app_dir = if app_dir.is_empty() {
        "/".to_string()
    } else {
        app_dir
    };
    // Requirement files go with the dependency layers (not pyproject.toml:
    // it is the project's own metadata, which the app may read).
    let dep_files: Vec<PathBuf> = match &set {
        Some(s) if !s.requirements.is_empty() => s
            .files
            .iter()
            .map(|(p, _)| p.clone())
            .filter(|p| p.as_path() != Path::new("pyproject.toml") && ctx.source.contains(p))
            .collect(),
        _ => Vec::new(),
    };
    // The requirement files' paths and contents, as one content hash.
    let dep_files_doc =
        ftl::app::content_key(PLUGIN, "requirement-files", ctx.source, &dep_files, "")?.hex;
    let mut layers = Vec::new();
    let pip = probe.pip.clone();

    // The virtualenv: depends on the interpreter only.
    let venv_key = CacheKey::new(
        PLUGIN,
        KEY_VERSION,
        json!({
            "layer": "venv",
            "venv": venv,
            "interpreter": probe.key_doc(),
            "executable": probe.executable,
            "platform": ctx.base.platform,
        }),
    );
    layers.push(PlannedLayer {
        name: format!("python: virtualenv {venv}"),
        key: venv_key,
        pinned: true,
        step: 0,
        created_by: format!(
            "ftl python: {} -m venv --without-pip {venv}",
            probe.executable
        ),
    });

    let requirements: Vec<_> = set
        .as_ref()
        .map(|s| s.requirements.clone())
        .unwrap_or_default();
    let has_gunicorn = requirements.iter().any(|r| r.key == "gunicorn");
    let ep = entrypoint::find(ctx.source, ctx.options.entrypoint.as_deref(), has_gunicorn)?;
    tracing::debug!(entrypoint = ?ep.argv, from = %ep.source, "entrypoint");
    // What ftl adds to the app's requirements (App Engine adds gunicorn).
    let mut added = Vec::new();
    if let Some(line) = ep.adds_gunicorn {
        let origin = Origin {
            file: PathBuf::from("main.py"),
            line,
        };
        added.push(requirements::parse_pep508("gunicorn", &origin)?);
    }
    let mut origins: BTreeMap<String, Origin> = requirements
        .iter()
        .rev()
        .map(|r| (r.key.clone(), r.origin.clone()))
        .collect();
    for r in &added {
        origins
            .entry(r.key.clone())
            .or_insert_with(|| r.origin.clone());
    }
    let mut notes = serde_json::Map::new();
    notes.insert(
        "interpreter".into(),
        json!(format!("{} {}", probe.implementation, probe.version)),
    );
    notes.insert(
        "entrypoint".into(),
        json!({"argv": ep.argv, "from": ep.source, "inferred": ep.inferred}),
    );
    if !added.is_empty() {
        notes.insert(
            "added".into(),
            json!(added
                .iter()
                .map(|r| json!({"requirement": r.name, "why": "App Engine's default entrypoint runs gunicorn; the app does not list it"}))
                .collect::<Vec<_>>()),
        );
    }
    let mut warnings: Vec<String> = set.as_ref().map(|s| s.warnings.clone()).unwrap_or_default();
    warnings.extend(ep.warning.clone());
    if let Some(set) = &set {
        notes.insert("input".into(), json!(set.kind.as_str()));
        if let Some((spec, origin)) = &set.requires_python {
            notes.insert(
                "requires_python".into(),
                json!({"specifier": spec, "from": format!("{}:{}", origin.file.display(), origin.line)}),
            );
        }
        let skipped = requirements::skipped_by_markers(set, &probe.markers);
        for s in skipped.iter().filter(|s| s.top_level) {
            warnings.push(format!(
                "{}:{}: `{}` is not installed: its marker `{}` is false for Python {} on {}",
                s.origin.file.display(),
                s.origin.line,
                s.name,
                s.marker,
                probe.version,
                probe
                    .markers
                    .get("sys_platform")
                    .map(String::as_str)
                    .unwrap_or("this platform"),
            ));
        }
        if !skipped.is_empty() {
            notes.insert(
                "skipped_by_marker".into(),
                json!(skipped
                    .iter()
                    .map(|s| json!({
                        "name": s.name,
                        "marker": s.marker,
                        "from": format!("{}:{}", s.origin.file.display(), s.origin.line),
                        "top_level": s.top_level,
                    }))
                    .collect::<Vec<_>>()),
            );
        }
    }

    let mut memo_env = Value::Null;
    let mode = match &set {
        Some(set) if !set.requirements.is_empty() || !added.is_empty() => {
            let Some(pip) = &pip else {
                return Err(PluginError::new(format!(
                    "the Python {} of base image {} has neither ensurepip's pip wheel nor pip",
                    probe.version, ctx.base.reference
                ))
                .hint("use a base image with pip (python:3.x images, or Debian's python3-venv or python3-pip)"));
            };
            if pip.source == "base" && !version_at_least(&pip.version, &[22, 3]) {
                return Err(PluginError::new(format!(
                    "the base image's pip {} is too old (22.3 or later is needed to install into a virtualenv)",
                    pip.version
                ))
                .hint("use a newer base image, or one with ensurepip (python3-venv)"));
            }
            let common = json!({
                "venv": venv,
                "interpreter": probe.key_doc(),
                "platform": ctx.base.platform,
                "installer": {"tool": "pip", "version": pip.version, "source": pip.source},
                "index": index_doc(&options),
                "pip_env": pip_env_doc(ctx),
                "pip_config": probe.pip_config,
                "compile": settings.compile.as_str(),
            });
            memo_env = common.clone();
            let top = set
                .top
                .clone()
                .or_else(|| set.files.first().map(|f| f.0.clone()))
                .unwrap_or_else(|| PathBuf::from("main.py"));
            let has_url = set.requirements.iter().any(|r| r.url.is_some());
            let input_name = set
                .files
                .first()
                .map(|f| f.0.display().to_string())
                .unwrap_or_else(|| top.display().to_string());
            // How the set becomes pins: a complete lock as it is; anything
            // else resolved by pip (remembered for the unpinned TTL);
            // direct URLs in one unpinned layer.
            let pins: Option<(Vec<PinnedDist>, bool)> = if has_url {
                None
            } else if set.is_lock {
                let dists = pinned_dists(set, &probe.markers)?.ok_or_else(|| {
                    PluginError::new("the lock file pins a requirement without `==`")
                        .in_file(&top, None)
                })?;
                let mut dists = dists;
                let mut resolution_note = Value::Null;
                if !added.is_empty() {
                    // Resolve only the additions, the lock as constraints:
                    // the lock's own pins never change.
                    let constraints = dists
                        .iter()
                        .map(|d| format!("{}=={}", d.key, d.version))
                        .collect();
                    let mut lines = options.to_lines();
                    lines.extend(added.iter().map(|r| r.name.clone()));
                    let input = resolve::Input {
                        files: &[],
                        include: None,
                        lines,
                        constraints,
                        key_doc: common.clone(),
                        origins: &origins,
                        pins: BTreeMap::new(),
                        top: &top,
                        settings_index_url: settings.index_url.as_deref(),
                        settings_extra_index_urls: &settings.extra_index_urls,
                        options: &options,
                        timeout: settings.install_timeout,
                    };
                    let identity = input.lines.clone();
                    let r = resolve::resolve(ctx.exec, &probe, pip, &input, &identity)?;
                    resolution_note =
                        resolution_doc(&r, "the additions, with the lock as constraints");
                    let have: BTreeSet<String> = dists.iter().map(|d| d.key.clone()).collect();
                    let extra = resolve::to_pins(
                        &r.resolution,
                        &origins,
                        &BTreeMap::new(),
                        &BTreeMap::new(),
                        &top,
                    );
                    let lock_hashed = dists.iter().all(|d| !d.hashes.is_empty());
                    dists.extend(extra.into_iter().filter(|d| !have.contains(&d.key)).map(
                        |mut d| {
                            if !lock_hashed {
                                d.hashes.clear();
                            }
                            d
                        },
                    ));
                    dists.sort_by(|a, b| a.key.cmp(&b.key));
                }
                notes.insert(
                    "dependencies".into(),
                    json!({"input": input_name, "mode": "lock", "resolution": resolution_note}),
                );
                Some((dists, false))
            } else {
                // The input as pip reads it: the app's top file, or (for
                // pyproject.toml) its requirements; then what ftl adds.
                let mut lines = Vec::new();
                let files: Vec<(PathBuf, String)> = match &set.top {
                    Some(_) => set.files.clone(),
                    None => {
                        lines.extend(options.to_lines());
                        lines.extend(set.requirements.iter().map(pip_line));
                        Vec::new()
                    }
                };
                lines.extend(added.iter().map(pip_line));
                let input_pins: BTreeMap<String, String> = set
                    .requirements
                    .iter()
                    .filter(|r| requirements::applies(r, &probe.markers))
                    .filter_map(|r| {
                        set.pinned_version(r)
                            .map(|v| (r.key.clone(), v.to_string()))
                    })
                    .collect();
                let input = resolve::Input {
                    files: &files,
                    include: set.top.as_deref(),
                    lines,
                    constraints: Vec::new(),
                    key_doc: common.clone(),
                    origins: &origins,
                    pins: input_pins,
                    top: &top,
                    settings_index_url: settings.index_url.as_deref(),
                    settings_extra_index_urls: &settings.extra_index_urls,
                    options: &options,
                    timeout: settings.install_timeout,
                };
                // The input as a set of lines, for a resolution of only
                // what was added since the app's previous one.
                let mut identity: Vec<String> = options.to_lines();
                identity.extend(set.requirements.iter().map(pip_line));
                identity.extend(
                    set.constraints
                        .iter()
                        .map(|c| format!("-c {}", pip_line(c))),
                );
                identity.extend(added.iter().map(pip_line));
                let r = resolve::resolve(ctx.exec, &probe, pip, &input, &identity)?;
                notes.insert(
                    "dependencies".into(),
                    json!({"input": input_name, "mode": "resolved", "resolution": resolution_doc(&r, "pip install --dry-run --report")}),
                );
                if r.resolution.direct {
                    None
                } else {
                    let user_hashes: BTreeMap<String, Vec<String>> = set
                        .requirements
                        .iter()
                        .filter(|r| !r.hashes.is_empty())
                        .map(|r| (r.key.clone(), r.hashes.clone()))
                        .collect();
                    let extras: BTreeMap<String, Vec<String>> = set
                        .requirements
                        .iter()
                        .filter(|r| !r.extras.is_empty())
                        .map(|r| (r.key.clone(), r.extras.clone()))
                        .collect();
                    Some((
                        resolve::to_pins(&r.resolution, &origins, &user_hashes, &extras, &top),
                        true,
                    ))
                }
            };
            match pins {
                Some((dists, resolved)) => {
                    let all = dists.clone();
                    let mut groups = Vec::new();
                    for g in group(dists, settings.max_layers) {
                        let index = layers.len();
                        let docs: Vec<Value> = g
                            .iter()
                            .map(|d| json!({"name": d.key, "version": d.version, "hashes": d.hashes}))
                            .collect();
                        let mut doc = common.clone();
                        doc["layer"] = json!("dist");
                        doc["dists"] = json!(docs);
                        let pins: Vec<String> = g
                            .iter()
                            .map(|d| format!("{}=={}", d.key, d.version))
                            .collect();
                        layers.push(PlannedLayer {
                            name: format!("python: {}", pins.join(" ")),
                            key: CacheKey::new(PLUGIN, KEY_VERSION, doc),
                            pinned: true,
                            step: 0,
                            created_by: format!(
                                "ftl python: pip install --no-deps {}",
                                pins.join(" ")
                            ),
                        });
                        groups.push((index, g));
                    }
                    // The lock layer: keyed by the whole set.
                    let lock = layers.len();
                    let mut doc = common.clone();
                    doc["layer"] = json!("lock");
                    doc["app_dir"] = json!(app_dir);
                    doc["app_files"] = json!(dep_files_doc);
                    doc["dists"] = json!(all
                        .iter()
                        .map(|d| json!({"name": d.key, "version": d.version, "hashes": d.hashes, "extras": d.extras}))
                        .collect::<Vec<_>>());
                    layers.push(PlannedLayer {
                        name: format!(
                            "python: lock of {} distribution{}",
                            all.len(),
                            if all.len() == 1 { "" } else { "s" }
                        ),
                        key: CacheKey::new(PLUGIN, KEY_VERSION, doc),
                        pinned: true,
                        step: 0,
                        created_by: if resolved {
                            format!(
                                "ftl python: the distributions pip resolved for {}",
                                top.display()
                            )
                        } else {
                            format!(
                                "ftl python: pip install --dry-run -r {} (check every dependency is pinned)",
                                top.display()
                            )
                        },
                    });
                    DepsMode::Pinned {
                        layers: groups,
                        lock,
                        dists: all,
                        top,
                        resolved,
                    }
                }
                None => {
                    let (mut files, top_name) = if let Some(top) = &set.top {
                        (set.files.clone(), top.display().to_string())
                    } else {
                        // pyproject.toml: hand pip its dependency list.
                        let lines: Vec<String> = set.requirements.iter().map(pip_line).collect();
                        (
                            vec![(
                                PathBuf::from("ftl-requirements.txt"),
                                lines.join("\n") + "\n",
                            )],
                            input_name.clone(),
                        )
                    };
                    if !added.is_empty() {
                        // A top file that includes the app's and adds ours.
                        let mut lines = vec![format!("-r {}", files[0].0.display())];
                        lines.extend(added.iter().map(pip_line));
                        files.insert(0, (PathBuf::from("ftl-added.txt"), lines.join("\n") + "\n"));
                    }
                    if !notes.contains_key("dependencies") {
                        notes.insert(
                            "dependencies".into(),
                            json!({"input": input_name, "mode": "unpinned", "why": "a requirement is a direct URL, a VCS reference or a local path"}),
                        );
                    } else {
                        notes["dependencies"]["mode"] = json!("unpinned");
                        notes["dependencies"]["why"] =
                            json!("pip resolved a distribution from a direct URL, a VCS reference or a local path");
                    }
                    let mut doc = common.clone();
                    doc["layer"] = json!("deps");
                    doc["app_dir"] = json!(app_dir);
                    doc["app_files"] = json!(dep_files_doc);
                    doc["inputs"] = json!(files
                        .iter()
                        .map(|(p, t)| json!({"path": p.to_string_lossy(), "sha256": sha256_tagged(t.as_bytes())}))
                        .collect::<Vec<_>>());
                    let index = layers.len();
                    layers.push(PlannedLayer {
                        name: format!("python: dependencies of {top_name} (not pinned)"),
                        key: CacheKey::new(PLUGIN, KEY_VERSION, doc),
                        pinned: false,
                        step: 0,
                        created_by: format!("ftl python: pip install -r {top_name}"),
                    });
                    DepsMode::Unpinned {
                        layer: index,
                        files,
                    }
                }
            }
        }
        _ => DepsMode::None,
    };

    // The app.
    let app_source = ctx.source.without(|p| {
        p.file_name()
            .is_some_and(|n| n == "__pycache__" || n == ".git")
            || dep_files.iter().any(|d| d == p)
    });
    let base_path = ctx
        .base
        .env()
        .into_iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v)
        .unwrap_or_else(|| DEFAULT_PATH.to_string());
    let image_path = format!("{venv}/bin:{base_path}");
    let config = ConfigPatch {
        env: vec![
            ("VIRTUAL_ENV".into(), venv.clone()),
            ("PATH".into(), image_path.clone()),
            ("PYTHONUNBUFFERED".into(), "1".into()),
            ("PORT".into(), "8080".into()),
        ],
        entrypoint: Some(ep.argv),
        // The base's CMD (python images: `python3`) would become arguments
        // of the entrypoint.
        cmd: Some(Vec::new()),
        workdir: Some(app_dir.clone()),
        exposed_ports: vec!["8080/tcp".into()],
        labels: BTreeMap::new(),
    };

    let deps_mode_for_hook = mode.clone();
    let deps = DepsPlan {
        probe,
        settings: settings.clone(),
        pip,
        options,
        venv_layer: 0,
        mode,
        origins,
        base_ref: ctx.base.reference.clone(),
        dep_files,
        source_root: ctx.source.root().to_path_buf(),
        app_dir: app_dir.clone(),
        memo_env,
    };
    let mut plan = ftl::LayerPlan {
        layers,
        steps: vec![Box::new(DepsStep::new(Arc::new(deps)))],
        config,
        notes: Value::Object(notes.clone()),
        warnings,
    };
    let has_django = match &deps_mode_for_hook {
        DepsMode::Pinned { dists, .. } => dists.iter().any(|d| d.key == "django"),
        _ => requirements.iter().any(|r| r.key == "django"),
    };
    let hook = hook::find(
        ctx.source,
        settings.build.as_deref(),
        settings.collectstatic,
        has_django,
    )?;
    match hook {
        None => ftl::app::push_source_layer(
            &mut plan,
            PLUGIN,
            "app",
            &app_source,
            app_source.entries().to_vec(),
            &app_dir,
        )?,
        Some(command) => {
            // The app layer is what the command leaves of the source: keyed
            // by the source, the command, and the layers it runs with.
            let venv_layers: Vec<usize> = (0..plan.layers.len()).collect();
            let source_key =
                ftl::app::content_key(PLUGIN, "app", &app_source, app_source.entries(), &app_dir)?;
            let key = CacheKey::new(
                PLUGIN,
                KEY_VERSION,
                json!({
                    "layer": "app-built",
                    "source": source_key.hex,
                    "command": command.command,
                    "app_dir": app_dir,
                    "venv": venv,
                    "with_layers": plan.layers.iter().map(|l| l.key.hex.clone()).collect::<Vec<_>>(),
                }),
            );
            notes.insert(
                "build".into(),
                json!({"command": command.command, "from": command.from}),
            );
            plan.notes = Value::Object(notes.clone());
            plan.steps.push(Box::new(hook::HookStep {
                root: ctx.source.root().to_path_buf(),
                paths: app_source.entries().to_vec(),
                app_dir: app_dir.clone(),
                venv: venv.clone(),
                venv_layers,
                command: command.clone(),
                path: image_path.clone(),
                timeout: settings.install_timeout,
            }));
            plan.layers.push(PlannedLayer {
                name: "app".into(),
                key,
                pinned: true,
                step: plan.steps.len() - 1,
                created_by: format!(
                    "ftl python: {} ({app_dir}, after `{}`)",
                    "app", command.command
                ),
            });
        }
    }
    Ok(plan)
}

/// A requirement as a line of a requirements file.
fn pip_line(r: &requirements::Requirement) -> String {
    let mut l = r.name.clone();
    if !r.extras.is_empty() {
        l.push_str(&format!("[{}]", r.extras.join(",")));
    }
    if let Some(u) = &r.url {
        l.push_str(&format!(" @ {u}"));
    } else {
        l.push_str(&r.specifier_text());
    }
    if let Some(m) = &r.marker_text {
        l.push_str(&format!(" ; {m}"));
    }
    for h in &r.hashes {
        l.push_str(&format!(" --hash={h}"));
    }
    l
}

/// A resolution as the report shows it.
fn resolution_doc(r: &resolve::Resolved, how: &str) -> Value {
    let res = &r.resolution;
    json!({
        "how": how,
        "remembered": r.remembered,
        "resolved_at": res.resolved_at,
        "complete_input": res.complete,
        "incremental": res.incremental,
        "expires_at": r.expires_at,
        "chosen": res.dists.iter().map(|d| json!({
            "name": d.name,
            "version": d.version,
            "requested": d.requested,
            "via": d.via,
            "from": if d.sdist { "sdist" } else { "wheel" },
        })).collect::<Vec<_>>(),
    })
}

pub(crate) fn version_at_least(v: &str, min: &[u64]) -> bool {
    let parts: Vec<u64> = v.split('.').map(|p| p.parse().unwrap_or(0)).collect();
    for (i, m) in min.iter().enumerate() {
        let p = parts.get(i).copied().unwrap_or(0);
        if p != *m {
            return p > *m;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact_url("https://pypi.org/simple"),
            json!("https://pypi.org/simple")
        );
        let v = redact_url("https://user:s3cret@pypi.example.com/simple");
        assert_eq!(v["url"], "https://****@pypi.example.com/simple");
        assert!(!v.to_string().contains("s3cret"));
        assert_ne!(v, redact_url("https://user:other@pypi.example.com/simple"));
    }

    #[test]
    fn grouping_is_stable_when_adding_one() {
        let mk = |n: usize| -> Vec<PinnedDist> {
            (0..n)
                .map(|i| PinnedDist {
                    key: format!("pkg{i:03}"),
                    name: format!("pkg{i:03}"),
                    version: "1.0".into(),
                    hashes: vec![],
                    extras: vec![],
                    origin: Origin {
                        file: "r.txt".into(),
                        line: i + 1,
                    },
                })
                .collect()
        };
        assert_eq!(group(mk(5), 40).len(), 5);
        let a = group(mk(100), 40);
        assert!(a.len() <= 40);
        assert_eq!(a.iter().map(Vec::len).sum::<usize>(), 100);
        let b = group(mk(101), 40);
        let changed = b.iter().filter(|g| !a.contains(g)).count();
        assert_eq!(changed, 1, "adding one distribution changes one group");
    }

    #[test]
    fn versions() {
        assert!(version_at_least("23.0.1", &[22, 3]));
        assert!(version_at_least("22.3", &[22, 3]));
        assert!(!version_at_least("22.2.2", &[22, 3]));
    }
}
