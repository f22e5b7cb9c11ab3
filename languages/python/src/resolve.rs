//! Resolution: the full set of distributions a requirement set installs,
//! chosen by pip's own resolver (`pip install --dry-run --ignore-installed
//! --report -`) in the sandbox on the base's interpreter, then installed one
//! layer per distribution like a complete lock.
//!
//! A resolution is remembered by the engine ([`ftl::Exec::remember`]) under
//! a key of everything that decides pip's answer (the requirement files'
//! bytes, index options, interpreter, pip): for the unpinned TTL, or for
//! good when the input already pinned every distribution it needs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ftl::{CacheKey, Exec, ExecMount, ExecOutput, ExecRequest, PluginError, StepNetwork};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::plan::PinnedDist;
use crate::probe::{PipInfo, Probe};
use crate::requirements::{normalize, IndexOptions, Origin};

/// Where the resolution's inputs are mounted (read-only).
const DIR: &str = "/ftl-resolve";
/// The file pip is pointed at: includes the app's top file (or its
/// requirements, generated), plus what ftl adds.
const TOP: &str = "ftl-resolve.txt";
/// Where the app's requirement files go below [`DIR`].
const APP: &str = "app";

/// One distribution pip chose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Chosen {
    /// PEP 503 normalized.
    pub key: String,
    /// As the distribution spells it.
    pub name: String,
    pub version: String,
    /// `sha256:<hex>` of the file pip chose (a wheel for this interpreter,
    /// or the sdist); `None` when pip did not say.
    pub hash: Option<String>,
    /// Built from an sdist (no wheel for this interpreter).
    pub sdist: bool,
    /// Named by the input (not only needed by another distribution).
    pub requested: bool,
    /// The top-level requirement that brought it in (its normalized name).
    pub via: Option<String>,
}

/// What pip chose for an input, as remembered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Resolution {
    pub dists: Vec<Chosen>,
    /// Unix seconds.
    pub resolved_at: u64,
    /// The input already pinned exactly these distributions: the
    /// resolution never expires.
    pub complete: bool,
    /// Some distribution came from a direct URL, a VCS or a local path:
    /// not installable by name and version.
    pub direct: bool,
    /// Made by resolving only the lines added since the app's previous
    /// resolution, with its choices as constraints.
    #[serde(default)]
    pub incremental: bool,
}

/// What to resolve.
pub(crate) struct Input<'a> {
    /// The app's requirement files (relative path, text), written as they
    /// are so that `-r`/`-c` includes resolve.
    pub files: &'a [(PathBuf, String)],
    /// The app's file pip reads first (`-r`), if any (relative, one of
    /// `files`).
    pub include: Option<&'a Path>,
    /// More lines of [`TOP`]: requirements ftl adds, index options of
    /// inputs that are not requirement files.
    pub lines: Vec<String>,
    /// A constraints file (`name==version` lines), for resolving additions
    /// to a complete lock without changing it.
    pub constraints: Vec<String>,
    /// Everything else that decides pip's answer (interpreter, pip, index
    /// options and settings, `PIP_*`): part of the memo key.
    pub key_doc: Value,
    /// The top-level requirements by normalized name, for messages.
    pub origins: &'a BTreeMap<String, Origin>,
    /// The versions the input pins (normalized name -> version): a
    /// resolution that chose exactly these is complete.
    pub pins: BTreeMap<String, String>,
    /// The file named in messages when no line can be.
    pub top: &'a Path,
    pub settings_index_url: Option<&'a str>,
    pub settings_extra_index_urls: &'a [String],
    pub options: &'a IndexOptions,
    pub timeout: Duration,
}

/// Where a resolution came from, for the report.
pub(crate) struct Resolved {
    pub resolution: Resolution,
    /// Read from an earlier build's resolution.
    pub remembered: bool,
    /// When it expires (unix seconds); `None`: never.
    pub expires_at: Option<u64>,
}

impl Input<'_> {
    fn key(&self) -> CacheKey {
        CacheKey::new(
            "python",
            crate::KEY_VERSION,
            json!({
                "memo": "resolution",
                "files": self.files.iter().map(|(p, t)| json!({"path": p.to_string_lossy(), "sha256": ftl::sha256_tagged(t.as_bytes())})).collect::<Vec<_>>(),
                "include": self.include.map(|p| p.to_string_lossy().into_owned()),
                "lines": self.lines,
                "constraints": self.constraints,
                "env": self.key_doc,
            }),
        )
    }
}

/// The resolution of `input`: remembered, or made now (network).
///
/// `identity` is the input as a set of lines (each requirement and
/// constraint as pip reads it, the index options, what ftl adds). When the
/// app's previous resolution (remembered under the top file's name and the
/// same environment) was made for a subset of these lines, only the new
/// lines are resolved, with the previous choices as constraints: adding a
/// requirement then asks the index about what it brings, and leaves every
/// other choice as it was (as `uv lock` keeps a lock's pins). If pip finds
/// no such set, the whole input is resolved again.
pub(crate) fn resolve(
    exec: &dyn Exec,
    probe: &Probe,
    pip: &PipInfo,
    input: &Input<'_>,
    identity: &[String],
) -> Result<Resolved, PluginError> {
    if !crate::plan::version_at_least(&pip.version, &[22, 3]) {
        return Err(PluginError::new(format!(
            "{} does not pin every dependency, and the base image's pip {} is too old to resolve them (22.3 or later has `--dry-run --report -`)",
            input.top.display(),
            pip.version
        ))
        .in_file(input.top, None)
        .hint("pin every dependency with == (pip freeze, pip-compile), or use a base image with a newer pip"));
    }
    let key = input.key();
    if let Some((r, expires_at)) = exec.remembered(&key).and_then(|m| {
        serde_json::from_value::<Resolution>(m.value)
            .ok()
            .map(|r| (r, m.expires))
    }) {
        return Ok(Resolved {
            resolution: r,
            remembered: true,
            expires_at,
        });
    }
    let previous_key = CacheKey::new(
        "python",
        crate::KEY_VERSION,
        json!({
            "memo": "previous-resolution",
            "top": input.top.to_string_lossy(),
            "env": input.key_doc,
        }),
    );
    let previous = exec
        .remembered(&previous_key)
        .and_then(|m| serde_json::from_value::<Previous>(m.value).ok());
    let mut resolution =
        match previous.and_then(|p| incremental(exec, probe, pip, input, identity, p)) {
            Some(r) => r,
            None => run_pip(exec, probe, pip, input)?,
        };
    mark_complete(&mut resolution, &input.pins);
    let value = serde_json::to_value(&resolution).expect("serializes");
    let expires_at = exec.remember(&key, &value, resolution.complete);
    exec.remember(
        &previous_key,
        &json!({"identity": identity, "resolution": value}),
        resolution.complete,
    );
    Ok(Resolved {
        resolution,
        remembered: false,
        expires_at,
    })
}

/// An app's last resolution and the lines it was made for.
#[derive(Deserialize)]
struct Previous {
    identity: Vec<String>,
    resolution: Resolution,
}

/// The previous resolution plus what the lines added since bring, when
/// the previous lines are all still there; `None` to resolve it all.
fn incremental(
    exec: &dyn Exec,
    probe: &Probe,
    pip: &PipInfo,
    input: &Input<'_>,
    identity: &[String],
    previous: Previous,
) -> Option<Resolution> {
    let old: BTreeSet<&String> = previous.identity.iter().collect();
    let new: BTreeSet<&String> = identity.iter().collect();
    if previous.resolution.direct || old.is_empty() || !old.is_subset(&new) || old == new {
        return None;
    }
    // Only requirement lines may be new: a new option or constraint line
    // can change what was chosen before.
    let added: Vec<String> = identity
        .iter()
        .filter(|l| !old.contains(l))
        .cloned()
        .collect();
    if added.iter().any(|l| l.starts_with('-')) {
        return None;
    }
    let mut lines = input.options.to_lines();
    lines.extend(added);
    let step = Input {
        files: &[],
        include: None,
        lines,
        constraints: previous
            .resolution
            .dists
            .iter()
            .map(|d| format!("{}=={}", d.key, d.version))
            .collect(),
        key_doc: input.key_doc.clone(),
        origins: input.origins,
        pins: BTreeMap::new(),
        top: input.top,
        settings_index_url: input.settings_index_url,
        settings_extra_index_urls: input.settings_extra_index_urls,
        options: input.options,
        timeout: input.timeout,
    };
    let more = match run_pip(exec, probe, pip, &step) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "the added requirements do not fit the previous resolution; resolving everything");
            return None;
        }
    };
    let mut union = previous.resolution;
    let have: BTreeSet<String> = union.dists.iter().map(|d| d.key.clone()).collect();
    union.direct |= more.direct;
    union
        .dists
        .extend(more.dists.into_iter().filter(|d| !have.contains(&d.key)));
    union.dists.sort_by(|a, b| a.key.cmp(&b.key));
    union.incremental = true;
    union.resolved_at = more.resolved_at;
    Some(union)
}

/// pip's answer for `input`, asked now.
fn run_pip(
    exec: &dyn Exec,
    probe: &Probe,
    pip: &PipInfo,
    input: &Input<'_>,
) -> Result<Resolution, PluginError> {
    let dir = tempfile::Builder::new()
        .prefix("ftl-resolve-")
        .tempdir()
        .map_err(|e| PluginError::new(format!("cannot make a temporary directory: {e}")))?;
    write_inputs(dir.path(), input)?;
    let req = request(probe, pip, input, dir.path());
    let out = exec.run(&req)?;
    if !out.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        if text.contains("ResolutionImpossible") || text.contains("conflicting dependencies") {
            // `--quiet` hides what conflicts: ask again without it (and
            // without the report) for pip's explanation.
            let mut again = req.clone();
            again.label = "pip resolve (explain)".into();
            again
                .args
                .retain(|a| a != "--quiet" && a != "--report" && a != "-");
            let out = exec.run(&again)?;
            return Err(explain(&out, input));
        }
        return Err(explain(&out, input));
    }
    let report: Value = serde_json::from_slice(report_json(&out.stdout)).map_err(|e| {
        PluginError::new(format!(
            "unexpected output from pip's resolution ({e}): {}",
            out.tail(5)
        ))
    })?;
    from_report(&report)
}

/// Whether `chosen` is exactly the pinned set: the input was a complete
/// lock, and its resolution never expires.
pub(crate) fn mark_complete(r: &mut Resolution, pins: &BTreeMap<String, String>) {
    r.complete = !r.direct
        && r.dists.len() == pins.len()
        && r.dists.iter().all(|d| {
            pins.get(&d.key)
                .is_some_and(|v| same_version(v, &d.version))
        });
}

/// `1.0` and `1.0.0` name one version; so do case and a leading `v`.
fn same_version(a: &str, b: &str) -> bool {
    let norm = |v: &str| {
        let v = v.trim().trim_start_matches(['v', 'V']).to_ascii_lowercase();
        let mut parts: Vec<&str> = v.split('.').collect();
        while parts.len() > 1 && parts.last() == Some(&"0") {
            parts.pop();
        }
        parts.join(".")
    };
    norm(a) == norm(b)
}

fn write_inputs(dir: &Path, input: &Input<'_>) -> Result<(), PluginError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |p: &Path, e: std::io::Error| {
        PluginError::new(format!("cannot write {}: {e}", p.display()))
    };
    // Private: the files may name an index with its credentials. The
    // step reads them through an idmapped mount, as their owner.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io(dir, e))?;
    // The app's files below `app/`, so that none can be taken for ftl's.
    let mut files: Vec<(PathBuf, String)> = input
        .files
        .iter()
        .map(|(p, t)| (Path::new(APP).join(p), t.clone()))
        .collect();
    let mut lines = Vec::new();
    if let Some(top) = input.include {
        lines.push(format!("-r {APP}/{}", top.display()));
    }
    lines.extend(input.lines.iter().cloned());
    files.push((PathBuf::from(TOP), lines.join("\n") + "\n"));
    if !input.constraints.is_empty() {
        files.push((
            PathBuf::from("ftl-constraints.txt"),
            input.constraints.join("\n") + "\n",
        ));
    }
    for (rel, text) in files {
        if rel.is_absolute() || rel.components().any(|c| c.as_os_str() == "..") {
            continue;
        }
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
            let mut p = parent;
            while p != dir {
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
                p = p.parent().unwrap_or(dir);
            }
        }
        std::fs::write(&path, text).map_err(|e| io(&path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io(&path, e))?;
    }
    Ok(())
}

fn request(probe: &Probe, pip: &PipInfo, input: &Input<'_>, dir: &Path) -> ExecRequest {
    // The base's interpreter itself: a dry run installs nothing, and its
    // markers and tags are the virtualenv's.
    let mut args = if pip.source == "ensurepip" {
        vec![probe.executable.clone(), format!("{}/pip", pip.path)]
    } else {
        vec![probe.executable.clone(), "-m".into(), "pip".into()]
    };
    args.extend(
        [
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "--report",
            "-",
        ]
        .map(String::from),
    );
    if let Some(u) = input.settings_index_url {
        args.extend(["--index-url".to_string(), u.to_string()]);
    }
    for u in input.settings_extra_index_urls {
        args.extend(["--extra-index-url".to_string(), u.clone()]);
    }
    if !input.constraints.is_empty() {
        args.extend(["-c".to_string(), format!("{DIR}/ftl-constraints.txt")]);
    }
    args.extend(["-r".to_string(), format!("{DIR}/{TOP}")]);
    let mut req = ExecRequest::new("pip resolve", args);
    req.mounts = vec![ExecMount {
        host: dir.to_path_buf(),
        target: DIR.into(),
        writable: false,
    }];
    req.cwd = DIR.into();
    req.env = vec![
        ("HOME".into(), "/tmp".into()),
        ("TMPDIR".into(), "/tmp".into()),
        ("PIP_NO_INPUT".into(), "1".into()),
        ("PIP_ROOT_USER_ACTION".into(), "ignore".into()),
        ("PIP_DISABLE_PIP_VERSION_CHECK".into(), "1".into()),
        // A dry run into the base's own environment changes nothing of it
        // (PEP 668 would refuse the command otherwise).
        ("PIP_BREAK_SYSTEM_PACKAGES".into(), "1".into()),
        ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
        ("SOURCE_DATE_EPOCH".into(), "315532800".into()),
    ];
    req.network = StepNetwork::Egress;
    req.timeout = input.timeout;
    req
}

/// The report on stdout: from its first `{` (a base's pip may print a
/// notice before it, even with `--quiet`).
fn report_json(stdout: &[u8]) -> &[u8] {
    let start = stdout
        .windows(2)
        .position(|w| w == b"{\n" || w == b"{\"")
        .or_else(|| stdout.iter().position(|b| *b == b'{'))
        .unwrap_or(0);
    &stdout[start..]
}

/// The distributions of pip's installation report.
pub(crate) fn from_report(report: &Value) -> Result<Resolution, PluginError> {
    let items = report["install"]
        .as_array()
        .ok_or_else(|| PluginError::new("pip's report lists no `install`"))?;
    let mut dists = Vec::new();
    let mut requires: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut direct = false;
    for item in items {
        let name = item["metadata"]["name"]
            .as_str()
            .ok_or_else(|| PluginError::new("pip's report has an entry without a name"))?;
        let version = item["metadata"]["version"].as_str().unwrap_or_default();
        let key = normalize(name);
        let info = &item["download_info"];
        let url = info["url"].as_str().unwrap_or_default();
        let is_direct = item["is_direct"].as_bool().unwrap_or(false)
            || info.get("vcs_info").is_some()
            || info.get("dir_info").is_some();
        direct |= is_direct;
        let hash = info["archive_info"]["hashes"]["sha256"]
            .as_str()
            .map(|h| format!("sha256:{h}"))
            .or_else(|| {
                info["archive_info"]["hash"]
                    .as_str()
                    .and_then(|h| h.strip_prefix("sha256="))
                    .map(|h| format!("sha256:{h}"))
            });
        let file = url.rsplit('/').next().unwrap_or_default();
        let file = file.split(['#', '?']).next().unwrap_or_default();
        requires.insert(
            key.clone(),
            item["metadata"]["requires_dist"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r.as_str())
                        .map(|r| {
                            normalize(
                                &r.chars()
                                    .take_while(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
                                    .collect::<String>(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        );
        dists.push(Chosen {
            key,
            name: name.to_string(),
            version: version.to_string(),
            hash,
            sdist: !file.ends_with(".whl") && !is_direct,
            requested: item["requested"].as_bool().unwrap_or(false),
            via: None,
        });
    }
    // Who brought each in: a breadth-first walk from the requested ones.
    let mut via: BTreeMap<String, String> = BTreeMap::new();
    let mut queue: VecDeque<(String, String)> = dists
        .iter()
        .filter(|d| d.requested)
        .map(|d| (d.key.clone(), d.key.clone()))
        .collect();
    let present: BTreeSet<String> = dists.iter().map(|d| d.key.clone()).collect();
    while let Some((key, top)) = queue.pop_front() {
        if via.contains_key(&key) {
            continue;
        }
        via.insert(key.clone(), top.clone());
        for dep in requires.get(&key).into_iter().flatten() {
            if present.contains(dep) && !via.contains_key(dep) {
                queue.push_back((dep.clone(), top.clone()));
            }
        }
    }
    for d in &mut dists {
        d.via = via.get(&d.key).filter(|top| **top != d.key).cloned();
    }
    dists.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(Resolution {
        dists,
        resolved_at: now_secs(),
        complete: false,
        direct,
        incremental: false,
    })
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The chosen distributions as pins to install, each with where it comes
/// from (its own line, or the line of the requirement that brought it in).
pub(crate) fn to_pins(
    r: &Resolution,
    origins: &BTreeMap<String, Origin>,
    user_hashes: &BTreeMap<String, Vec<String>>,
    extras: &BTreeMap<String, Vec<String>>,
    top: &Path,
) -> Vec<PinnedDist> {
    // pip's hash-checking mode is all or nothing per install: resolved
    // hashes only when every distribution has one.
    let all_hashed = r.dists.iter().all(|d| d.hash.is_some());
    r.dists
        .iter()
        .map(|d| {
            let origin = origins
                .get(&d.key)
                .or_else(|| d.via.as_ref().and_then(|v| origins.get(v)))
                .cloned()
                .unwrap_or_else(|| Origin {
                    file: top.to_path_buf(),
                    line: 0,
                });
            let hashes = match user_hashes.get(&d.key) {
                Some(h) if !h.is_empty() => h.clone(),
                _ if all_hashed => d.hash.iter().cloned().collect(),
                _ => Vec::new(),
            };
            PinnedDist {
                key: d.key.clone(),
                name: d.name.clone(),
                version: d.version.clone(),
                hashes,
                extras: extras.get(&d.key).cloned().unwrap_or_default(),
                origin,
            }
        })
        .collect()
}

/// pip's failure to resolve, as a message naming the input's lines.
fn explain(out: &ExecOutput, input: &Input<'_>) -> PluginError {
    // Paths as the app names them, not where the sandbox mounted them.
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .replace(&format!("{DIR}/{APP}/"), "")
    .replace(&format!("{DIR}/"), "");
    if let Some(at) = text.find("The conflict is caused by:") {
        let cause: Vec<&str> = text[at..]
            .lines()
            .skip(1)
            .map(str::trim)
            .take_while(|l| !l.is_empty() && !l.starts_with("To fix"))
            .collect();
        // The first requirement of the input the conflict names.
        let origin = cause.iter().find_map(|l| {
            l.split_whitespace()
                .map(|w| {
                    normalize(
                        &w.chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
                            .collect::<String>(),
                    )
                })
                .find_map(|n| input.origins.get(&n))
        });
        let e = PluginError::new(format!(
            "the requirements cannot all be satisfied:\n  {}",
            cause.join("\n  ")
        ))
        .hint("loosen or change one of the conflicting versions (pip's resolver found no set that satisfies every requirement)");
        return match origin {
            Some(o) => e.in_file(&o.file, Some(o.line)),
            None => e.in_file(input.top, None),
        };
    }
    let e = crate::install::explain_pip_failure(out, input.options, input.origins, input.timeout);
    if e.file.is_some() {
        e
    } else {
        e.in_file(input.top, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Value {
        json!({"version": "1", "install": [
            {"metadata": {"name": "Flask", "version": "3.0.3", "requires_dist": ["Werkzeug>=3.0.0", "click>=8.1.3", "python-dotenv; extra == \"dotenv\""]},
             "requested": true, "is_direct": false,
             "download_info": {"url": "https://files.example/flask-3.0.3-py3-none-any.whl", "archive_info": {"hash": "sha256=aa", "hashes": {"sha256": "aa"}}}},
            {"metadata": {"name": "Werkzeug", "version": "3.0.6", "requires_dist": ["MarkupSafe>=2.1.1"]},
             "requested": false, "is_direct": false,
             "download_info": {"url": "https://files.example/werkzeug-3.0.6-py3-none-any.whl", "archive_info": {"hash": "sha256=bb"}}},
            {"metadata": {"name": "MarkupSafe", "version": "3.0.2"},
             "requested": false, "is_direct": false,
             "download_info": {"url": "https://files.example/markupsafe-3.0.2.tar.gz", "archive_info": {"hashes": {"sha256": "cc"}}}},
            {"metadata": {"name": "click", "version": "8.1.7"},
             "requested": false,
             "download_info": {"url": "https://files.example/click-8.1.7-py3-none-any.whl", "archive_info": {"hashes": {"sha256": "dd"}}}},
        ]})
    }

    fn origins() -> BTreeMap<String, Origin> {
        [(
            "flask".to_string(),
            Origin {
                file: "requirements.txt".into(),
                line: 1,
            },
        )]
        .into()
    }

    #[test]
    fn a_report_becomes_pins_with_who_brought_each_in() {
        let r = from_report(&report()).unwrap();
        let names: Vec<_> = r.dists.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(names, ["click", "flask", "markupsafe", "werkzeug"]);
        let ms = r.dists.iter().find(|d| d.key == "markupsafe").unwrap();
        assert!(ms.sdist);
        assert_eq!(ms.via.as_deref(), Some("flask"));
        assert_eq!(ms.hash.as_deref(), Some("sha256:cc"));
        let flask = r.dists.iter().find(|d| d.key == "flask").unwrap();
        assert!(flask.requested && flask.via.is_none() && !flask.sdist);
        let pins = to_pins(
            &r,
            &origins(),
            &BTreeMap::new(),
            &BTreeMap::new(),
            Path::new("requirements.txt"),
        );
        let w = pins.iter().find(|p| p.key == "werkzeug").unwrap();
        assert_eq!(
            w.origin.line, 1,
            "a dependency is named by its requirer's line"
        );
        assert_eq!(w.hashes, ["sha256:bb"]);
    }

    #[test]
    fn a_resolution_equal_to_the_pins_is_complete() {
        let mut r = from_report(&report()).unwrap();
        let mut pins: BTreeMap<String, String> = [
            ("flask", "3.0.3"),
            ("werkzeug", "3.0.6"),
            ("markupsafe", "3.0.2"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        mark_complete(&mut r, &pins);
        assert!(!r.complete, "click is missing from the pins");
        pins.insert("click".into(), "8.1.7.0".into());
        mark_complete(&mut r, &pins);
        assert!(r.complete);
    }

    #[test]
    fn a_notice_before_the_report_is_skipped() {
        let out = b"[notice] something\n{\"install\": []}";
        assert_eq!(report_json(out), b"{\"install\": []}");
    }
}
