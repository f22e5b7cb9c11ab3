//! The lock check from the distributions' own metadata.
//!
//! A lock (hashes on every line, `uv.lock`, `poetry.lock`, `Pipfile.lock`)
//! is installed with `--no-deps`, so its completeness is checked when its
//! set changes: every `Requires-Dist` of every pinned distribution, with
//! its marker evaluated on the base's interpreter and the extras asked of
//! that distribution, must name a distribution of the set whose pinned
//! version satisfies it, and each distribution's `Requires-Python` must
//! admit the interpreter. pip's dry run over the whole set answers the
//! same question, but it starts pip and asks the index about every
//! distribution (seconds, for one added line).
//!
//! The metadata comes from the app's previous check (remembered under the
//! app's top file, as the previous resolution is) and, for what this build
//! installs, from the installed `METADATA`. Where neither has a
//! distribution's metadata, or the check finds a problem, pip decides (its
//! error names what is missing with the version it would pick).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;

use ftl::{CacheKey, Exec};
use pep440_rs::{Version, VersionSpecifiers};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::plan::PinnedDist;
use crate::requirements::{marker_holds_with, normalize};

/// What a distribution declares about what it needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Needs {
    pub requires_dist: Vec<String>,
    pub requires_python: Option<String>,
}

/// `name==version` (normalized name): how a distribution's needs are
/// keyed.
pub(crate) fn pin(key: &str, version: &str) -> String {
    format!("{}=={version}", normalize(key))
}

/// The memo of an app's last checked set: per pin, its [`Needs`].
fn key(top: &Path, env: &Value) -> CacheKey {
    CacheKey::new(
        "python",
        crate::KEY_VERSION,
        json!({"memo": "lock-requires", "top": top.to_string_lossy(), "env": env}),
    )
}

/// What the app's previous check knew, by pin.
pub(crate) fn remembered(exec: &dyn Exec, top: &Path, env: &Value) -> BTreeMap<String, Needs> {
    exec.remembered(&key(top, env))
        .and_then(|m| serde_json::from_value(m.value["dists"].clone()).ok())
        .unwrap_or_default()
}

/// Keeps the needs of the set just checked for the app's next check.
pub(crate) fn remember(exec: &dyn Exec, top: &Path, env: &Value, needs: &BTreeMap<String, Needs>) {
    exec.remember(&key(top, env), &json!({ "dists": needs }), false);
}

/// The needs of every distribution in a pip installation report, by pin.
pub(crate) fn from_report(report: &Value) -> BTreeMap<String, Needs> {
    let mut out = BTreeMap::new();
    for item in report["install"].as_array().into_iter().flatten() {
        let meta = &item["metadata"];
        let (Some(name), Some(version)) = (meta["name"].as_str(), meta["version"].as_str()) else {
            continue;
        };
        out.insert(
            pin(name, version),
            Needs {
                requires_dist: meta["requires_dist"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.as_str().map(String::from))
                    .collect(),
                requires_python: meta["requires_python"].as_str().map(String::from),
            },
        );
    }
    out
}

/// The needs an installed `METADATA` declares (its header fields; a
/// field's continuation lines are folded in).
pub(crate) fn from_metadata(text: &str) -> Needs {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            break; // the body (the description) follows
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = fields.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Needs {
        requires_dist: fields
            .iter()
            .filter(|(k, _)| k == "requires-dist")
            .map(|(_, v)| v.clone())
            .collect(),
        requires_python: fields
            .iter()
            .find(|(k, _)| k == "requires-python")
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty()),
    }
}

/// What the metadata shows wrong with `dists` on the interpreter of
/// `markers`: `Some` of the problems (none: complete and consistent),
/// `None` when some distribution's metadata is unknown or cannot be read
/// here.
pub(crate) fn problems(
    dists: &[PinnedDist],
    needs: &BTreeMap<String, Needs>,
    markers: &BTreeMap<String, String>,
) -> Option<Vec<Problem>> {
    let mut pinned: BTreeMap<String, (Version, &Needs)> = BTreeMap::new();
    for d in dists {
        let n = needs.get(&pin(&d.key, &d.version))?;
        let v = Version::from_str(&d.version).ok()?;
        pinned.insert(normalize(&d.key), (v, n));
    }
    let python = markers
        .get("python_full_version")
        .and_then(|v| Version::from_str(v.trim_end_matches('+')).ok())
        .map(|v| v.only_release());
    // Extras asked of each distribution: by the app's lines, then by the
    // requirements of others; a distribution is looked at again whenever
    // it gains one.
    let mut extras: BTreeMap<String, BTreeSet<String>> = dists
        .iter()
        .map(|d| (normalize(&d.key), d.extras.iter().cloned().collect()))
        .collect();
    let mut todo: Vec<String> = pinned.keys().cloned().collect();
    let mut found = BTreeSet::new();
    while let Some(name) = todo.pop() {
        let (_, n) = &pinned[&name];
        if let (Some(spec), Some(python)) = (&n.requires_python, &python) {
            let spec = VersionSpecifiers::from_str(spec).ok()?;
            if !spec.contains(python) {
                found.insert(Problem::Python {
                    dist: name.clone(),
                    requires: spec.to_string(),
                    python: python.to_string(),
                });
            }
        }
        let asked: Vec<String> = extras
            .get(&name)
            .map(|e| e.iter().cloned().collect())
            .unwrap_or_default();
        for r in &n.requires_dist {
            let req = pep508_rs::Requirement::<url::Url>::from_str(r).ok()?;
            if !marker_holds_with(&req.marker, markers, &asked) {
                continue;
            }
            let dep = normalize(req.name.as_ref());
            let Some((version, _)) = pinned.get(&dep) else {
                found.insert(Problem::Missing {
                    dist: name.clone(),
                    requires: requirement_text(&req),
                });
                continue;
            };
            match &req.version_or_url {
                Some(pep508_rs::VersionOrUrl::VersionSpecifier(spec))
                    if !spec.contains(version) =>
                {
                    found.insert(Problem::Conflict {
                        dist: name.clone(),
                        requires: requirement_text(&req),
                        pinned: version.to_string(),
                    });
                }
                Some(pep508_rs::VersionOrUrl::Url(_)) => return None,
                _ => {}
            }
            let more: Vec<String> = req.extras.iter().map(|e| e.to_string()).collect();
            let have = extras.entry(dep.clone()).or_default();
            let before = have.len();
            have.extend(more);
            if have.len() > before {
                todo.push(dep);
            }
        }
    }
    Some(found.into_iter().collect())
}

/// `name[extras]specifier`, without the marker.
fn requirement_text(req: &pep508_rs::Requirement<url::Url>) -> String {
    let mut s = req.name.to_string();
    if !req.extras.is_empty() {
        let e: Vec<String> = req.extras.iter().map(|e| e.to_string()).collect();
        s.push_str(&format!("[{}]", e.join(",")));
    }
    if let Some(pep508_rs::VersionOrUrl::VersionSpecifier(spec)) = &req.version_or_url {
        s.push_str(&spec.to_string());
    }
    s
}

/// Something the metadata shows wrong with a pinned set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Problem {
    /// `dist` requires a distribution the set does not pin.
    Missing { dist: String, requires: String },
    /// `dist` requires a version the set does not pin.
    Conflict {
        dist: String,
        requires: String,
        pinned: String,
    },
    /// `dist` does not support this interpreter.
    Python {
        dist: String,
        requires: String,
        python: String,
    },
}

/// The problems as the lock check's error: the file, what is missing and
/// who needs it, conflicts with the pinned version.
pub(crate) fn error(problems: &[Problem], top: &Path) -> ftl::PluginError {
    let missing: Vec<String> = problems
        .iter()
        .filter_map(|p| match p {
            Problem::Missing { dist, requires } => Some(format!("{requires} (required by {dist})")),
            _ => None,
        })
        .collect();
    let other: Vec<String> = problems
        .iter()
        .filter_map(|p| match p {
            Problem::Conflict {
                dist,
                requires,
                pinned,
            } => Some(format!(
                "{dist} requires {requires}, the lock pins {pinned}"
            )),
            Problem::Python {
                dist,
                requires,
                python,
            } => Some(format!(
                "{dist} requires Python {requires}, the base image has {python}"
            )),
            Problem::Missing { .. } => None,
        })
        .collect();
    if !missing.is_empty() {
        return ftl::PluginError::new(format!(
            "this is a complete lock (every requirement pinned with == and a --hash), but it misses dependencies: {}",
            missing.join("; ")
        ))
        .in_file(top, None)
        .hint("add them with their hashes (`pip-compile --generate-hashes` lists every transitive dependency), or drop the hashes to let ftl resolve the rest with pip");
    }
    ftl::PluginError::new(format!(
        "the pinned versions conflict: {}",
        other.join("; ")
    ))
    .in_file(top, None)
    .hint("pin versions that satisfy each other's requirements (pip-compile finds them)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requirements::Origin;

    fn dist(key: &str, version: &str, extras: &[&str]) -> PinnedDist {
        PinnedDist {
            key: key.into(),
            name: key.into(),
            version: version.into(),
            hashes: vec![],
            extras: extras.iter().map(|e| e.to_string()).collect(),
            origin: Origin {
                file: "requirements.txt".into(),
                line: 1,
            },
        }
    }

    fn markers() -> BTreeMap<String, String> {
        crate::requirements::bookworm_markers()
    }

    fn needs(entries: &[(&str, &[&str])]) -> BTreeMap<String, Needs> {
        entries
            .iter()
            .map(|(p, reqs)| {
                (
                    p.to_string(),
                    Needs {
                        requires_dist: reqs.iter().map(|r| r.to_string()).collect(),
                        requires_python: Some(">=3.8".into()),
                    },
                )
            })
            .collect()
    }

    const FLASK: &[&str] = &[
        "Werkzeug>=3.0.0",
        "itsdangerous>=2.1.2",
        "asgiref>=3.2 ; extra == 'async'",
        "importlib-metadata>=3.6.0; python_version < '3.10'",
    ];

    #[test]
    fn a_complete_set_is_consistent_without_pip() {
        let set = [
            dist("flask", "3.0.3", &[]),
            dist("werkzeug", "3.0.6", &[]),
            dist("itsdangerous", "2.2.0", &[]),
        ];
        let n = needs(&[
            ("flask==3.0.3", FLASK),
            (
                "werkzeug==3.0.6",
                &["MarkupSafe>=2.1.1", "watchdog>=2.3; extra == 'watchdog'"],
            ),
            ("itsdangerous==2.2.0", &[]),
        ]);
        assert_eq!(
            problems(&set, &n, &markers()),
            Some(vec![Problem::Missing {
                dist: "werkzeug".into(),
                requires: "markupsafe>=2.1.1".into()
            }])
        );
        let mut unknown = set.to_vec();
        unknown.push(dist("markupsafe", "3.0.2", &[]));
        assert_eq!(
            problems(&unknown, &n, &markers()),
            None,
            "markupsafe's metadata is unknown"
        );
        let mut set = set.to_vec();
        set.push(dist("markupsafe", "3.0.2", &[]));
        let mut n = n;
        n.extend(needs(&[("markupsafe==3.0.2", &[])]));
        assert_eq!(problems(&set, &n, &markers()).map(|p| p.len()), Some(0));
    }

    #[test]
    fn a_missing_dependency_or_a_conflict_is_found() {
        let n = needs(&[
            ("flask==3.0.3", FLASK),
            ("werkzeug==2.0.0", &[]),
            ("itsdangerous==2.2.0", &[]),
        ]);
        let conflict = [
            dist("flask", "3.0.3", &[]),
            dist("werkzeug", "2.0.0", &[]),
            dist("itsdangerous", "2.2.0", &[]),
        ];
        assert_eq!(
            problems(&conflict, &n, &markers()),
            Some(vec![Problem::Conflict {
                dist: "flask".into(),
                requires: "werkzeug>=3.0.0".into(),
                pinned: "2.0.0".into()
            }])
        );
        let e = error(
            &problems(&conflict, &n, &markers()).unwrap(),
            Path::new("requirements.txt"),
        );
        assert!(
            e.to_string()
                .contains("flask requires werkzeug>=3.0.0, the lock pins 2.0.0"),
            "{e}"
        );
        let missing = [dist("flask", "3.0.3", &[]), dist("werkzeug", "2.0.0", &[])];
        let n2 = needs(&[("flask==3.0.3", FLASK), ("werkzeug==2.0.0", &[])]);
        let p = problems(&missing, &n2, &markers()).unwrap();
        assert!(p.contains(&Problem::Missing {
            dist: "flask".into(),
            requires: "itsdangerous>=2.1.2".into()
        }));
        let e = error(&p, Path::new("requirements.txt"));
        assert!(
            e.to_string()
                .contains("misses dependencies: itsdangerous>=2.1.2 (required by flask)"),
            "{e}"
        );
    }

    #[test]
    fn extras_asked_by_the_app_or_by_another_dependency_count() {
        let base = [
            dist("flask", "3.0.3", &["async"]),
            dist("werkzeug", "3.0.6", &[]),
            dist("itsdangerous", "2.2.0", &[]),
        ];
        let n = needs(&[
            ("flask==3.0.3", FLASK),
            ("werkzeug==3.0.6", &[]),
            ("itsdangerous==2.2.0", &[]),
        ]);
        assert_eq!(
            problems(&base, &n, &markers()).map(|p| p.len()),
            Some(1),
            "asgiref is needed"
        );
        // An extra asked by another distribution's requirement.
        let set = [
            dist("app-lib", "1.0", &[]),
            dist("flask", "3.0.3", &[]),
            dist("werkzeug", "3.0.6", &[]),
            dist("itsdangerous", "2.2.0", &[]),
        ];
        let mut n2 = n.clone();
        n2.extend(needs(&[("app-lib==1.0", &["flask[async]>=3"])]));
        assert_eq!(problems(&set, &n2, &markers()).map(|p| p.len()), Some(1));
        let mut set = set.to_vec();
        set.push(dist("asgiref", "3.8.1", &[]));
        n2.extend(needs(&[("asgiref==3.8.1", &[])]));
        assert_eq!(problems(&set, &n2, &markers()).map(|p| p.len()), Some(0));
    }

    #[test]
    fn a_marker_false_here_needs_nothing_and_requires_python_is_checked() {
        let set = [
            dist("flask", "3.0.3", &[]),
            dist("werkzeug", "3.0.6", &[]),
            dist("itsdangerous", "2.2.0", &[]),
        ];
        let mut n = needs(&[
            ("flask==3.0.3", FLASK),
            ("werkzeug==3.0.6", &[]),
            ("itsdangerous==2.2.0", &[]),
        ]);
        assert_eq!(
            problems(&set, &n, &markers()).map(|p| p.len()),
            Some(0),
            "importlib-metadata only below 3.10"
        );
        n.get_mut("werkzeug==3.0.6").unwrap().requires_python = Some(">=3.12".into());
        assert_eq!(problems(&set, &n, &markers()).map(|p| p.len()), Some(1));
    }

    #[test]
    fn metadata_headers_and_reports_are_read() {
        let meta = "Metadata-Version: 2.1\nName: Flask\nVersion: 3.0.3\nRequires-Python: >=3.8\nRequires-Dist: Werkzeug>=3.0.0\nRequires-Dist: asgiref>=3.2 ;\n extra == 'async'\n\nRequires-Dist: not-a-header\n";
        let n = from_metadata(meta);
        assert_eq!(n.requires_python.as_deref(), Some(">=3.8"));
        assert_eq!(
            n.requires_dist,
            ["Werkzeug>=3.0.0", "asgiref>=3.2 ; extra == 'async'"]
        );
        let report = json!({"install": [{"metadata": {"name": "Flask", "version": "3.0.3", "requires_dist": ["Werkzeug>=3.0.0"], "requires_python": ">=3.8"}}]});
        let r = from_report(&report);
        assert_eq!(r["flask==3.0.3"].requires_dist, ["Werkzeug>=3.0.0"]);
    }
}
