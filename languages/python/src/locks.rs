//! The lock files of uv (`uv.lock`) and Poetry (`poetry.lock`), read
//! directly (no uv or Poetry runs).
//!
//! Both lock every platform and Python at once, so a lock is a graph, not
//! a list: the set installed is what the project's main dependencies reach
//! (uv: the root package's `dependencies`, whose source is `editable` or
//! `virtual`, never its `dev-dependencies`; Poetry: `[project]
//! dependencies` or `[tool.poetry.dependencies]` of pyproject.toml, never a
//! group), following the extras each edge asks for, with every edge's
//! marker evaluated against the base image's interpreter. A package only
//! reached through edges whose markers are false is kept in the set with
//! that marker, so that [`crate::requirements::skipped_by_markers`] names
//! it; it is not installed.
//!
//! Each package becomes `name==version` with every file hash the lock
//! lists (pip accepts any of them); a git or URL package becomes a URL
//! requirement (`name @ git+https://...@commit`). Packages from an index
//! other than PyPI make that index the install's `--index-url` (the set's
//! warnings say so). A package at a local path cannot be installed in the
//! sandbox, which does not see the developer's machine: that is an error.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::str::FromStr;

use ftl::PluginError;
use pep440_rs::{Version, VersionSpecifiers};
use pep508_rs::MarkerTree;
use toml::{Table, Value};

use crate::plan::redact_url_text;
use crate::requirements::{
    marker_holds_with, normalize, parse_marker, parse_pep508, parse_toml, InputKind, Origin,
    RequirementSet,
};
use crate::requires_python::poetry_to_pep440;

/// Where a locked package comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// An index: `None` is PyPI.
    Registry(Option<String>),
    /// What pip installs from a URL (`git+https://...@commit`, an archive).
    Url(String),
    /// A path on the machine that made the lock.
    Local(String),
    /// The project itself.
    Root,
}

/// A dependency edge.
#[derive(Debug, Clone)]
struct Edge {
    key: String,
    /// uv: the version, when the lock holds several of `key`.
    version: Option<String>,
    /// Poetry: the constraint, when it converts to PEP 440.
    constraint: Option<VersionSpecifiers>,
    marker: MarkerTree,
    extras: Vec<String>,
}

#[derive(Debug, Clone)]
struct Package {
    name: String,
    key: String,
    version: Option<String>,
    source: Source,
    hashes: Vec<String>,
    /// The line of its `name = ` in the lock.
    line: usize,
    deps: Vec<Edge>,
    /// Extra (normalized) -> what it adds.
    extras: BTreeMap<String, Vec<Edge>>,
    /// Poetry 2.1: where the package applies (its main group's marker).
    marker: MarkerTree,
}

/// A lock, read: its packages and the project's main dependencies.
struct Lock<'a> {
    file: &'a Path,
    kind: InputKind,
    packages: Vec<Package>,
    roots: Vec<Edge>,
}

fn err(file: &Path, line: usize, message: impl Into<String>) -> PluginError {
    PluginError::new(message).in_file(file, Some(line))
}

fn regenerate(kind: InputKind) -> &'static str {
    match kind {
        InputKind::UvLock => "regenerate it with `uv lock`",
        _ => "regenerate it with `poetry lock`",
    }
}

/// The line of each `[[package]]`'s `name = `, in the array's order.
fn package_lines(text: &str) -> Vec<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.trim() == "[[package]]" {
            let name = lines[i + 1..]
                .iter()
                .position(|l| l.trim_start().starts_with("name"))
                .map_or(i + 1, |j| i + j + 2);
            out.push(name);
        }
    }
    out
}

fn str_of<'a>(t: &'a Table, key: &str) -> Option<&'a str> {
    t.get(key).and_then(Value::as_str)
}

fn marker_of(text: Option<&str>, file: &Path, line: usize) -> Result<MarkerTree, PluginError> {
    match text {
        Some(m) if !m.trim().is_empty() => parse_marker(m).map_err(|e| err(file, line, e)),
        _ => Ok(MarkerTree::TRUE),
    }
}

/// Which package `edge` names: its version (uv), else the one whose
/// marker holds (Poetry 2.1), else the one its constraint allows.
fn resolve(lock: &Lock<'_>, edge: &Edge, markers: &BTreeMap<String, String>) -> Vec<usize> {
    // The project itself may be named (`app[extra]`): it is walked for
    // those extras and not installed.
    let mut found: Vec<usize> = (0..lock.packages.len())
        .filter(|&i| lock.packages[i].key == edge.key)
        .collect();
    if let Some(v) = &edge.version {
        found.retain(|&i| lock.packages[i].version.as_deref() == Some(v));
    }
    if found.len() > 1 {
        let holding: Vec<usize> = found
            .iter()
            .copied()
            .filter(|&i| marker_holds_with(&lock.packages[i].marker, markers, &[]))
            .collect();
        if !holding.is_empty() {
            found = holding;
        }
    }
    if found.len() > 1 {
        if let Some(c) = &edge.constraint {
            let allowed: Vec<usize> = found
                .iter()
                .copied()
                .filter(|&i| {
                    lock.packages[i]
                        .version
                        .as_deref()
                        .and_then(|v| Version::from_str(v).ok())
                        .is_some_and(|v| c.contains(&v))
                })
                .collect();
            if !allowed.is_empty() {
                found = allowed;
            }
        }
    }
    found
}

/// What the walk reached.
#[derive(Default)]
struct Walked {
    /// Package index -> (extras asked for, reached from the project).
    included: BTreeMap<usize, (BTreeSet<String>, bool)>,
    /// Key -> (the markers of the false edges to it, or'ed; from the
    /// project; the package, when one).
    skipped: BTreeMap<String, (MarkerTree, bool, Option<usize>)>,
}

fn walk(lock: &Lock<'_>, markers: &BTreeMap<String, String>) -> Result<Walked, PluginError> {
    let mut walked = Walked::default();
    let mut queue: VecDeque<(usize, Vec<String>)> = VecDeque::new();
    let visit = |edge: &Edge,
                 parent: Option<(usize, &[String])>,
                 walked: &mut Walked,
                 queue: &mut VecDeque<(usize, Vec<String>)>|
     -> Result<(), PluginError> {
        let top = parent.is_none();
        let parent_extras = parent.map(|p| p.1).unwrap_or_default();
        let found = resolve(lock, edge, markers);
        if !marker_holds_with(&edge.marker, markers, parent_extras) {
            let entry = walked.skipped.entry(edge.key.clone()).or_insert((
                MarkerTree::FALSE,
                false,
                (found.len() == 1).then(|| found[0]),
            ));
            entry.0.or(edge.marker.clone());
            entry.1 |= top;
            return Ok(());
        }
        let by = match parent {
            Some((i, _)) => format!("`{}`", lock.packages[i].name),
            None => "the project".to_string(),
        };
        let line = parent.map_or(1, |(i, _)| lock.packages[i].line);
        let index = match found.as_slice() {
            [i] => *i,
            [] => {
                return Err(err(
                    lock.file,
                    line,
                    format!(
                        "`{}`, a dependency of {by}, is not in the lock{}",
                        edge.key,
                        if lock.packages.iter().any(|p| p.key == edge.key) {
                            " for this Python"
                        } else {
                            ""
                        }
                    ),
                )
                .hint(format!(
                    "the lock is incomplete or stale: {}",
                    regenerate(lock.kind)
                )));
            }
            several => {
                let versions: Vec<&str> = several
                    .iter()
                    .filter_map(|&i| lock.packages[i].version.as_deref())
                    .collect();
                return Err(err(
                    lock.file,
                    line,
                    format!(
                        "`{}`, a dependency of {by}, has several versions in the lock ({}) and ftl cannot tell which applies",
                        edge.key,
                        versions.join(", ")
                    ),
                )
                .hint(regenerate(lock.kind)));
            }
        };
        let (have, from_project) = walked.included.entry(index).or_insert_with(|| {
            queue.push_back((index, Vec::new()));
            (BTreeSet::new(), false)
        });
        *from_project |= top;
        let new: Vec<String> = edge
            .extras
            .iter()
            .filter(|e| !have.contains(*e))
            .cloned()
            .collect();
        if !new.is_empty() {
            have.extend(new);
            queue.push_back((index, have.iter().cloned().collect()));
        }
        Ok(())
    };
    for edge in &lock.roots {
        visit(edge, None, &mut walked, &mut queue)?;
    }
    while let Some((index, extras)) = queue.pop_front() {
        let package = &lock.packages[index];
        let mut edges: Vec<&Edge> = package.deps.iter().collect();
        for e in &extras {
            edges.extend(package.extras.get(e).into_iter().flatten());
        }
        for edge in edges {
            visit(edge, Some((index, &extras)), &mut walked, &mut queue)?;
        }
    }
    Ok(walked)
}

/// The set the walk reached, as requirements.
fn to_set(lock: &Lock<'_>, walked: Walked, text: &str) -> Result<RequirementSet, PluginError> {
    let file = lock.file;
    let mut set = RequirementSet {
        files: vec![(file.to_path_buf(), text.to_string())],
        kind: lock.kind,
        is_lock: true,
        ..RequirementSet::default()
    };
    let mut registries: Vec<Option<String>> = Vec::new();
    let mut unhashed = Vec::new();
    let included_keys: BTreeSet<&str> = walked
        .included
        .keys()
        .map(|&i| lock.packages[i].key.as_str())
        .collect();
    let mut reqs = Vec::new();
    for (&index, (extras, top_level)) in &walked.included {
        let p = &lock.packages[index];
        let origin = Origin {
            file: file.to_path_buf(),
            line: p.line,
        };
        let extras = if extras.is_empty() {
            String::new()
        } else {
            format!("[{}]", extras.iter().cloned().collect::<Vec<_>>().join(","))
        };
        let mut req = match &p.source {
            Source::Root => continue,
            Source::Local(path) => {
                return Err(err(
                    file,
                    p.line,
                    format!("package `{}` comes from the local path `{path}`, which is not supported", p.name),
                )
                .hint("the build sees the app directory only: publish the package to an index and lock it by version, or make its code part of the app"));
            }
            Source::Url(url) => parse_pep508(&format!("{}{extras} @ {url}", p.name), &origin)?,
            Source::Registry(index_url) => {
                let version = p.version.as_deref().ok_or_else(|| {
                    err(file, p.line, format!("package `{}` has no version", p.name))
                        .hint(regenerate(lock.kind))
                })?;
                if !registries.contains(index_url) {
                    registries.push(index_url.clone());
                }
                if p.hashes.is_empty() {
                    unhashed.push(p.name.clone());
                }
                let mut r = parse_pep508(&format!("{}{extras}=={version}", p.name), &origin)?;
                r.hashes = p.hashes.clone();
                r
            }
        };
        req.top_level = *top_level;
        reqs.push(req);
    }
    for (key, (marker, top_level, index)) in walked.skipped {
        if included_keys.contains(key.as_str()) {
            continue;
        }
        let (name, version, line) = match index.map(|i| &lock.packages[i]) {
            Some(p) => (p.name.clone(), p.version.clone(), p.line),
            None => (key.clone(), None, 1),
        };
        let origin = Origin {
            file: file.to_path_buf(),
            line,
        };
        let spec = match version {
            Some(v)
                if matches!(
                    index.map(|i| &lock.packages[i].source),
                    Some(Source::Registry(_))
                ) =>
            {
                format!("{name}=={v}")
            }
            _ => name,
        };
        let mut req = parse_pep508(&spec, &origin)?;
        req.marker_text = marker.try_to_string();
        req.marker = marker;
        req.top_level = top_level;
        reqs.push(req);
    }
    reqs.sort_by(|a, b| a.key.cmp(&b.key).then(a.origin.line.cmp(&b.origin.line)));
    set.requirements = reqs;
    if !unhashed.is_empty() {
        // pip checks hashes for all or none.
        for r in &mut set.requirements {
            r.hashes.clear();
        }
        set.warnings.push(format!(
            "{}: {} {} no file hashes, so no package's hash is checked",
            file.display(),
            unhashed.join(", "),
            if unhashed.len() == 1 { "has" } else { "have" }
        ));
    }
    if registries.iter().any(Option::is_some) {
        // The first index other than PyPI is the index; the others, PyPI
        // among them, extra indexes. Hashes pin the files either way.
        let urls: Vec<String> = registries
            .iter()
            .map(|r| r.clone().unwrap_or_else(|| PYPI.to_string()))
            .collect();
        let first = registries.iter().position(Option::is_some).expect("one");
        set.options.index_url = Some(urls[first].clone());
        set.options.extra_index_urls = urls
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != first)
            .map(|(_, u)| u.clone())
            .collect();
        let mut msg = format!(
            "{}: packages come from {}, which is used as the index (--index-url)",
            file.display(),
            redact_url_text(&urls[first])
        );
        if !set.options.extra_index_urls.is_empty() {
            let extra: Vec<String> = set
                .options
                .extra_index_urls
                .iter()
                .map(|u| redact_url_text(u))
                .collect();
            msg.push_str(&format!(" with {} as extra indexes", extra.join(", ")));
        }
        msg.push_str("; set python.index_url to use another");
        set.warnings.push(msg);
    }
    Ok(set)
}

const PYPI: &str = "https://pypi.org/simple";

fn is_pypi(url: &str) -> bool {
    let u = url.trim_end_matches('/');
    u == PYPI || u == "https://pypi.python.org/simple"
}

/// Reads a uv.lock: the packages its root's `dependencies` reach for the
/// interpreter whose PEP 508 environment is `markers`. The root is the
/// package whose source is `editable = "."` or `virtual = "."` (else the
/// one named by `project_name`, pyproject.toml's `[project] name`).
pub fn parse_uv_lock(
    file: &Path,
    text: &str,
    project_name: Option<&str>,
    markers: &BTreeMap<String, String>,
) -> Result<RequirementSet, PluginError> {
    let doc = parse_toml(file, text)?;
    let lines = package_lines(text);
    let empty = Vec::new();
    let list = doc
        .get("package")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let mut packages = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let line = lines.get(i).copied().unwrap_or(1);
        let p = p
            .as_table()
            .ok_or_else(|| err(file, line, "a `[[package]]` that is not a table"))?;
        let name = str_of(p, "name").ok_or_else(|| {
            err(file, line, "a package without a name").hint(regenerate(InputKind::UvLock))
        })?;
        let source = uv_source(p.get("source"), file, line)?;
        let mut hashes: Vec<String> = p
            .get("sdist")
            .into_iter()
            .chain(
                p.get("wheels")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten(),
            )
            .filter_map(|f| f.get("hash").and_then(Value::as_str))
            .map(str::to_ascii_lowercase)
            .collect();
        hashes.sort();
        hashes.dedup();
        let edges = |v: Option<&Value>| -> Result<Vec<Edge>, PluginError> {
            v.and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|e| uv_edge(e, file, line))
                .collect()
        };
        let mut extras = BTreeMap::new();
        for (extra, list) in p
            .get("optional-dependencies")
            .and_then(Value::as_table)
            .into_iter()
            .flatten()
        {
            extras.insert(normalize(extra), edges(Some(list))?);
        }
        packages.push(Package {
            name: name.to_string(),
            key: normalize(name),
            version: str_of(p, "version").map(str::to_string),
            source,
            hashes,
            line,
            deps: edges(p.get("dependencies"))?,
            extras,
            marker: MarkerTree::TRUE,
        });
    }
    let root = packages
        .iter()
        .position(|p| p.source == Source::Root)
        .or_else(|| {
            let key = normalize(project_name?);
            packages.iter().position(|p| p.key == key)
        })
        .ok_or_else(|| {
            PluginError::new("no project package in the lock (a package whose source is `editable = \".\"` or `virtual = \".\"`)")
                .in_file(file, None)
                .hint(format!("{} next to the app's pyproject.toml", regenerate(InputKind::UvLock)))
        })?;
    let roots = packages[root].deps.clone();
    let lock = Lock {
        file,
        kind: InputKind::UvLock,
        packages,
        roots,
    };
    let walked = walk(&lock, markers)?;
    let mut set = to_set(&lock, walked, text)?;
    if let Some(spec) = str_of(&doc, "requires-python") {
        set.requires_python = Some((
            spec.trim().to_string(),
            Origin {
                file: file.to_path_buf(),
                line: crate::requirements::key_line(text, "requires-python").unwrap_or(1),
            },
        ));
    }
    Ok(set)
}

fn uv_source(v: Option<&Value>, file: &Path, line: usize) -> Result<Source, PluginError> {
    let Some(t) = v.and_then(Value::as_table) else {
        return Err(
            err(file, line, "a package without a source").hint(regenerate(InputKind::UvLock))
        );
    };
    if let Some(url) = str_of(t, "registry") {
        if !url.contains("://") {
            return Ok(Source::Local(url.to_string()));
        }
        return Ok(Source::Registry((!is_pypi(url)).then(|| url.to_string())));
    }
    if let Some(git) = str_of(t, "git") {
        // `https://host/repo?rev=main&subdirectory=x#<commit>`.
        let (rest, commit) = git.split_once('#').unwrap_or((git, ""));
        let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
        let params: BTreeMap<&str, &str> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let rev = Some(commit).filter(|c| !c.is_empty()).or_else(|| {
            ["rev", "tag", "branch"]
                .iter()
                .find_map(|k| params.get(k).copied())
        });
        let mut url = format!("git+{base}");
        if let Some(rev) = rev {
            url.push_str(&format!("@{rev}"));
        }
        if let Some(sub) = params.get("subdirectory") {
            url.push_str(&format!("#subdirectory={sub}"));
        }
        return Ok(Source::Url(url));
    }
    if let Some(url) = str_of(t, "url") {
        return Ok(Source::Url(url.to_string()));
    }
    for key in ["editable", "virtual", "directory", "path"] {
        if let Some(path) = str_of(t, key) {
            if path == "." && key != "path" {
                return Ok(Source::Root);
            }
            return Ok(Source::Local(path.to_string()));
        }
    }
    Err(err(file, line, "a package with a source ftl does not know")
        .hint(regenerate(InputKind::UvLock)))
}

fn uv_edge(v: &Value, file: &Path, line: usize) -> Result<Edge, PluginError> {
    let t = v
        .as_table()
        .ok_or_else(|| err(file, line, "a dependency that is not a table"))?;
    let name = str_of(t, "name").ok_or_else(|| err(file, line, "a dependency without a name"))?;
    Ok(Edge {
        key: normalize(name),
        version: str_of(t, "version").map(str::to_string),
        constraint: None,
        marker: marker_of(str_of(t, "marker"), file, line)?,
        extras: t
            .get("extra")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(normalize)
            .collect(),
    })
}

/// Reads a poetry.lock (lock-version 1.x, 2.0 and 2.1): the packages that
/// the main dependencies of `pyproject` (its text, next to the lock) reach
/// for the interpreter whose PEP 508 environment is `markers`.
pub fn parse_poetry_lock(
    file: &Path,
    text: &str,
    pyproject: (&Path, &str),
    markers: &BTreeMap<String, String>,
) -> Result<RequirementSet, PluginError> {
    let doc = parse_toml(file, text)?;
    let (pyproject_file, pyproject_text) = pyproject;
    let project = parse_toml(pyproject_file, pyproject_text)?;
    let lines = package_lines(text);
    // lock-version 1.x keeps hashes apart, by name.
    let old_files: BTreeMap<String, Vec<String>> = doc
        .get("metadata")
        .and_then(|m| m.get("files"))
        .and_then(Value::as_table)
        .into_iter()
        .flatten()
        .map(|(name, files)| (normalize(name), file_hashes(Some(files))))
        .collect();
    let empty = Vec::new();
    let list = doc
        .get("package")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let mut packages = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let line = lines.get(i).copied().unwrap_or(1);
        let p = p
            .as_table()
            .ok_or_else(|| err(file, line, "a `[[package]]` that is not a table"))?;
        let name = str_of(p, "name").ok_or_else(|| {
            err(file, line, "a package without a name").hint(regenerate(InputKind::PoetryLock))
        })?;
        let key = normalize(name);
        let mut hashes = file_hashes(p.get("files"));
        if hashes.is_empty() {
            hashes = old_files.get(&key).cloned().unwrap_or_default();
        }
        let source = poetry_source(p.get("source"));
        let mut deps = Vec::new();
        for (dep, spec) in p
            .get("dependencies")
            .and_then(Value::as_table)
            .into_iter()
            .flatten()
        {
            deps.extend(poetry_edges(dep, spec, file, line)?);
        }
        // `[package.extras]` name the optional dependencies each extra
        // adds: `name (>=1.0) ; marker`, or the name alone.
        let mut extras: BTreeMap<String, Vec<Edge>> = BTreeMap::new();
        for (extra, list) in p
            .get("extras")
            .and_then(Value::as_table)
            .into_iter()
            .flatten()
        {
            let keys: BTreeSet<String> = list
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|s| {
                    normalize(
                        &s.chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
                            .collect::<String>(),
                    )
                })
                .collect();
            extras.insert(
                normalize(extra),
                deps.iter()
                    .filter(|e| keys.contains(&e.key))
                    .cloned()
                    .collect(),
            );
        }
        let optional = poetry_optional_keys(p);
        deps.retain(|e| !optional.contains(&e.key));
        // 2.1: the package's marker, as a whole or for the main group.
        let marker = match p.get("markers") {
            Some(Value::String(m)) => marker_of(Some(m), file, line)?,
            Some(Value::Table(t)) => marker_of(str_of(t, "main"), file, line)?,
            _ => MarkerTree::TRUE,
        };
        packages.push(Package {
            name: name.to_string(),
            key,
            version: str_of(p, "version").map(str::to_string),
            source,
            hashes,
            line,
            deps,
            extras,
            marker,
        });
    }
    let roots = poetry_roots(pyproject_file, pyproject_text, &project)?;
    let lock = Lock {
        file,
        kind: InputKind::PoetryLock,
        packages,
        roots,
    };
    let walked = walk(&lock, markers)?;
    let mut set = to_set(&lock, walked, text)?;
    set.files
        .push((pyproject_file.to_path_buf(), pyproject_text.to_string()));
    Ok(set)
}

/// The names of a package's dependencies marked `optional = true`.
fn poetry_optional_keys(p: &Table) -> BTreeSet<String> {
    p.get("dependencies")
        .and_then(Value::as_table)
        .into_iter()
        .flatten()
        .filter(|(_, spec)| {
            let one = |v: &Value| v.get("optional").and_then(Value::as_bool) == Some(true);
            match spec {
                Value::Array(a) => a.iter().any(one),
                v => one(v),
            }
        })
        .map(|(name, _)| normalize(name))
        .collect()
}

fn file_hashes(files: Option<&Value>) -> Vec<String> {
    let mut out: Vec<String> = files
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| f.get("hash").and_then(Value::as_str))
        .map(str::to_ascii_lowercase)
        .collect();
    out.sort();
    out.dedup();
    out
}

fn poetry_source(v: Option<&Value>) -> Source {
    let Some(t) = v.and_then(Value::as_table) else {
        return Source::Registry(None);
    };
    let url = str_of(t, "url").unwrap_or_default();
    match str_of(t, "type").unwrap_or_default() {
        "git" => {
            let rev = str_of(t, "resolved_reference")
                .or_else(|| str_of(t, "reference"))
                .filter(|r| !r.is_empty());
            let mut u = format!("git+{url}");
            if let Some(rev) = rev {
                u.push_str(&format!("@{rev}"));
            }
            if let Some(sub) = str_of(t, "subdirectory") {
                u.push_str(&format!("#subdirectory={sub}"));
            }
            Source::Url(u)
        }
        "url" => Source::Url(url.to_string()),
        "file" | "directory" => Source::Local(url.to_string()),
        _ if is_pypi(url) || url.is_empty() => Source::Registry(None),
        _ => Source::Registry(Some(url.to_string())),
    }
}

/// The edges of one Poetry dependency: a constraint string, a table, or a
/// list of tables (one per Python or platform).
fn poetry_edges(
    name: &str,
    spec: &Value,
    file: &Path,
    line: usize,
) -> Result<Vec<Edge>, PluginError> {
    let one = |v: &Value| -> Result<Edge, PluginError> {
        let (constraint, table) = match v {
            Value::String(s) => (Some(s.as_str()), None),
            Value::Table(t) => (str_of(t, "version"), Some(t)),
            _ => (None, None),
        };
        let mut marker = marker_of(table.and_then(|t| str_of(t, "markers")), file, line)?;
        if let Some(python) = table.and_then(|t| str_of(t, "python")) {
            marker.and(python_marker(python).map_err(|e| err(file, line, e))?);
        }
        Ok(Edge {
            key: normalize(name),
            version: None,
            constraint: constraint
                .and_then(poetry_to_pep440)
                .filter(|c| !c.contains("||"))
                .and_then(|c| VersionSpecifiers::from_str(&c).ok()),
            marker,
            extras: table
                .and_then(|t| t.get("extras"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(normalize)
                .collect(),
        })
    };
    match spec {
        Value::Array(list) => list.iter().map(one).collect(),
        v => Ok(vec![one(v)?]),
    }
}

/// Poetry's `python = "..."` on a dependency, as a marker: a clause with a
/// major.minor version compares `python_version`, a longer one
/// `python_full_version` (as Poetry writes them).
fn python_marker(constraint: &str) -> Result<MarkerTree, String> {
    let spec = poetry_to_pep440(constraint)
        .ok_or_else(|| format!("invalid python constraint `{constraint}`"))?;
    if spec.is_empty() {
        return Ok(MarkerTree::TRUE);
    }
    let alternatives: Vec<String> = spec
        .split(" || ")
        .map(|alt| {
            let clauses: Vec<String> = alt
                .split(',')
                .map(|c| {
                    let op_len = c.find(|ch: char| ch.is_ascii_digit()).unwrap_or(0);
                    let (op, v) = c.split_at(op_len);
                    let var = if v.trim_end_matches(".*").split('.').count() > 2 {
                        "python_full_version"
                    } else {
                        "python_version"
                    };
                    format!("{var} {op} '{v}'")
                })
                .collect();
            format!("({})", clauses.join(" and "))
        })
        .collect();
    parse_marker(&alternatives.join(" or "))
}

/// The project's main dependencies, from pyproject.toml: `[project]
/// dependencies` (Poetry 2), else `[tool.poetry.dependencies]` less
/// `python` and the optional ones (extras nobody asked for). Groups
/// (`[tool.poetry.group.*]`, `dev-dependencies`) are left out.
fn poetry_roots(file: &Path, text: &str, doc: &Table) -> Result<Vec<Edge>, PluginError> {
    if let Some(list) = doc
        .get("project")
        .and_then(|p| p.get("dependencies"))
        .and_then(Value::as_array)
    {
        let mut out = Vec::new();
        for d in list {
            let Some(s) = d.as_str() else { continue };
            let origin = Origin {
                file: file.to_path_buf(),
                line: crate::requirements::line_of(text, s).unwrap_or(1),
            };
            let r = parse_pep508(s, &origin)?;
            out.push(Edge {
                key: r.key.clone(),
                version: None,
                constraint: Some(r.versions()),
                marker: r.marker.clone(),
                extras: r.extras.clone(),
            });
        }
        return Ok(out);
    }
    let deps = doc
        .get("tool")
        .and_then(|t| t.get("poetry"))
        .and_then(|p| p.get("dependencies"))
        .and_then(Value::as_table)
        .ok_or_else(|| {
            PluginError::new("poetry.lock without the project's dependencies: pyproject.toml has neither `[project] dependencies` nor `[tool.poetry.dependencies]`")
                .in_file(file, None)
        })?;
    let mut out = Vec::new();
    for (name, spec) in deps {
        if name == "python" {
            continue;
        }
        let line = crate::requirements::line_of(text, name).unwrap_or(1);
        let optional = match spec {
            Value::Table(t) => t.get("optional").and_then(Value::as_bool) == Some(true),
            _ => false,
        };
        if optional {
            continue;
        }
        out.extend(poetry_edges(name, spec, file, line)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requirements::{applies, skipped_by_markers};

    fn env() -> BTreeMap<String, String> {
        crate::requirements::bookworm_markers()
    }

    /// (key, pinned version or URL, top level, installed) of each requirement.
    fn summary(set: &RequirementSet) -> Vec<(String, String, bool, bool)> {
        set.requirements
            .iter()
            .map(|r| {
                (
                    r.key.clone(),
                    r.url
                        .clone()
                        .or_else(|| r.pinned_version().map(str::to_string))
                        .unwrap_or_default(),
                    r.top_level,
                    applies(r, &env()),
                )
            })
            .collect()
    }

    const UV_LOCK: &str = r#"version = 1
revision = 3
requires-python = ">=3.9"
resolution-markers = [
    "python_full_version >= '3.10'",
    "python_full_version < '3.10'",
]

[[package]]
name = "app"
version = "0.1.0"
source = { virtual = "." }
dependencies = [
    { name = "flask", extra = ["async"] },
    { name = "gunicorn", version = "22.0.0", source = { registry = "https://pypi.org/simple" }, marker = "python_full_version < '3.10'" },
    { name = "gunicorn", version = "23.0.0", source = { registry = "https://pypi.org/simple" }, marker = "python_full_version >= '3.10'" },
    { name = "pywin32", marker = "sys_platform == 'win32'" },
    { name = "mylib" },
]

[package.dev-dependencies]
dev = [
    { name = "pytest" },
]

[package.optional-dependencies]
postgres = [
    { name = "psycopg" },
]

[[package]]
name = "asgiref"
version = "3.8.1"
source = { registry = "https://pypi.org/simple" }
sdist = { url = "https://files.pythonhosted.org/asgiref-3.8.1.tar.gz", hash = "sha256:AAAA", size = 1 }
wheels = [
    { url = "https://files.pythonhosted.org/asgiref-3.8.1-py3-none-any.whl", hash = "sha256:bbbb", size = 1 },
]

[[package]]
name = "click"
version = "8.1.7"
source = { registry = "https://pypi.org/simple" }
dependencies = [
    { name = "colorama", marker = "platform_system == 'Windows'" },
]
wheels = [{ url = "https://x/click.whl", hash = "sha256:cccc" }]

[[package]]
name = "colorama"
version = "0.4.6"
source = { registry = "https://pypi.org/simple" }
wheels = [{ url = "https://x/colorama.whl", hash = "sha256:dddd" }]

[[package]]
name = "flask"
version = "3.0.3"
source = { registry = "https://pypi.org/simple" }
dependencies = [
    { name = "click" },
]
wheels = [{ url = "https://x/flask.whl", hash = "sha256:eeee" }]

[package.optional-dependencies]
async = [
    { name = "asgiref" },
]

[[package]]
name = "gunicorn"
version = "22.0.0"
source = { registry = "https://pypi.org/simple" }
wheels = [{ url = "https://x/gunicorn22.whl", hash = "sha256:1111" }]

[[package]]
name = "gunicorn"
version = "23.0.0"
source = { registry = "https://pypi.org/simple" }
wheels = [{ url = "https://x/gunicorn23.whl", hash = "sha256:2222" }]

[[package]]
name = "mylib"
version = "1.0.0"
source = { git = "https://github.com/example/mylib?rev=main#0123456789abcdef0123456789abcdef01234567" }

[[package]]
name = "psycopg"
version = "3.2.1"
source = { registry = "https://pypi.org/simple" }
wheels = [{ url = "https://x/psycopg.whl", hash = "sha256:3333" }]

[[package]]
name = "pytest"
version = "8.3.3"
source = { registry = "https://pypi.org/simple" }
wheels = [{ url = "https://x/pytest.whl", hash = "sha256:4444" }]

[[package]]
name = "pywin32"
version = "306"
source = { registry = "https://pypi.org/simple" }
wheels = [{ url = "https://x/pywin32.whl", hash = "sha256:5555" }]
"#;

    fn s(key: &str, v: &str, top: bool, installed: bool) -> (String, String, bool, bool) {
        (key.to_string(), v.to_string(), top, installed)
    }

    #[test]
    fn uv_lock_walks_the_main_dependencies() {
        let set = parse_uv_lock(Path::new("uv.lock"), UV_LOCK, None, &env()).unwrap();
        assert_eq!(set.kind, InputKind::UvLock);
        assert!(set.is_lock);
        assert_eq!(
            summary(&set),
            [
                s("asgiref", "3.8.1", false, true),
                s("click", "8.1.7", false, true),
                s("colorama", "0.4.6", false, false),
                s("flask", "3.0.3", true, true),
                s("gunicorn", "23.0.0", true, true),
                s(
                    "mylib",
                    "git+https://github.com/example/mylib@0123456789abcdef0123456789abcdef01234567",
                    true,
                    true
                ),
                s("pywin32", "306", true, false),
            ],
            "no pytest (dev), no psycopg (the project's own extra), gunicorn for 3.11"
        );
        let flask = &set.requirements[3];
        assert_eq!(flask.extras, ["async"]);
        assert_eq!(flask.hashes, ["sha256:eeee"]);
        assert_eq!(flask.origin.line, 56);
        let asgiref = &set.requirements[0];
        assert_eq!(
            asgiref.hashes,
            ["sha256:aaaa", "sha256:bbbb"],
            "sdist and wheels"
        );
        assert_eq!(
            set.requires_python,
            Some((
                ">=3.9".to_string(),
                Origin {
                    file: "uv.lock".into(),
                    line: 3
                }
            ))
        );
        assert!(set.options.index_url.is_none());
        assert!(set.warnings.is_empty(), "{:?}", set.warnings);
        let skipped = skipped_by_markers(&set, &env());
        let skipped: Vec<(&str, &str, bool)> = skipped
            .iter()
            .map(|s| (s.name.as_str(), s.marker.as_str(), s.top_level))
            .collect();
        assert_eq!(
            skipped,
            [
                ("colorama", "platform_system == 'Windows'", false),
                ("pywin32", "sys_platform == 'win32'", true),
            ]
        );

        // On Python 3.9 the other gunicorn.
        let mut py39 = env();
        py39.insert("python_full_version".into(), "3.9.18".into());
        py39.insert("python_version".into(), "3.9".into());
        let set = parse_uv_lock(Path::new("uv.lock"), UV_LOCK, None, &py39).unwrap();
        let gunicorn: Vec<_> = set
            .requirements
            .iter()
            .filter(|r| r.key == "gunicorn")
            .map(|r| r.pinned_version().unwrap())
            .collect();
        assert_eq!(gunicorn, ["22.0.0"]);
    }

    #[test]
    fn uv_lock_project_naming_itself_with_an_extra() {
        let own = UV_LOCK.replace(
            "    { name = \"mylib\" },\n]",
            "    { name = \"mylib\" },\n    { name = \"app\", extra = [\"postgres\"] },\n]",
        );
        let set = parse_uv_lock(Path::new("uv.lock"), &own, None, &env()).unwrap();
        let keys: Vec<&str> = set.requirements.iter().map(|r| r.key.as_str()).collect();
        assert!(keys.contains(&"psycopg"), "{keys:?}");
        assert!(
            !keys.contains(&"app"),
            "the project is not installed: {keys:?}"
        );
    }

    #[test]
    fn uv_lock_errors_name_the_line() {
        let bad = UV_LOCK.replace("name = \"click\"\nversion", "name = \"click\nversion");
        let e = parse_uv_lock(Path::new("uv.lock"), &bad, None, &env()).unwrap_err();
        assert_eq!(e.file.as_deref(), Some(Path::new("uv.lock")));
        assert_eq!(e.line, Some(41), "{e}");
        assert!(e.message.starts_with("invalid TOML"), "{e}");

        let local = UV_LOCK.replace(
            "source = { git = \"https://github.com/example/mylib?rev=main#0123456789abcdef0123456789abcdef01234567\" }",
            "source = { editable = \"libs/mylib\" }",
        );
        let e = parse_uv_lock(Path::new("uv.lock"), &local, None, &env()).unwrap_err();
        assert!(e.message.contains("local path `libs/mylib`"), "{e}");
        assert_eq!(e.line, Some(82));

        let missing = UV_LOCK.replace(
            "    { name = \"click\" },\n",
            "    { name = \"itsdangerous\" },\n",
        );
        let e = parse_uv_lock(Path::new("uv.lock"), &missing, None, &env()).unwrap_err();
        assert!(
            e.message
                .contains("`itsdangerous`, a dependency of `flask`, is not in the lock"),
            "{e}"
        );
        assert!(e.hint.unwrap().contains("uv lock"));

        let no_root = UV_LOCK.replace(
            "source = { virtual = \".\" }",
            "source = { registry = \"https://pypi.org/simple\" }",
        );
        assert!(parse_uv_lock(Path::new("uv.lock"), &no_root, None, &env()).is_err());
        assert!(parse_uv_lock(Path::new("uv.lock"), &no_root, Some("App"), &env()).is_ok());
    }

    #[test]
    fn uv_lock_private_index_becomes_the_index() {
        let private = UV_LOCK.replace(
            "name = \"flask\"\nversion = \"3.0.3\"\nsource = { registry = \"https://pypi.org/simple\" }",
            "name = \"flask\"\nversion = \"3.0.3\"\nsource = { registry = \"https://pypi.example.com/simple\" }",
        );
        let set = parse_uv_lock(Path::new("uv.lock"), &private, None, &env()).unwrap();
        assert_eq!(
            set.options.index_url.as_deref(),
            Some("https://pypi.example.com/simple")
        );
        assert_eq!(set.options.extra_index_urls, ["https://pypi.org/simple"]);
        assert_eq!(set.warnings.len(), 1);
        assert!(
            set.warnings[0].contains("https://pypi.example.com/simple"),
            "{:?}",
            set.warnings
        );
    }

    const POETRY_PYPROJECT: &str = r#"[tool.poetry]
name = "app"
version = "0.1.0"
package-mode = false

[tool.poetry.dependencies]
python = "^3.9"
flask = { version = "^3.0", extras = ["async"] }
gunicorn = ">=22"
tomli = { version = "^2.0", python = "<3.11" }
redis = { version = "^5.0", optional = true }
mylib = { git = "https://github.com/example/mylib.git", branch = "main" }

[tool.poetry.extras]
cache = ["redis"]

[tool.poetry.group.dev.dependencies]
pytest = "^8.0"
"#;

    /// lock-version 2.1 (Poetry 2): groups and markers.
    const POETRY_LOCK_21: &str = r#"# This file is automatically @generated by Poetry 2.1.1 and should not be changed by hand.

[[package]]
name = "asgiref"
version = "3.8.1"
description = ""
optional = false
python-versions = ">=3.8"
groups = ["main"]
files = [
    {file = "asgiref-3.8.1-py3-none-any.whl", hash = "sha256:AAAA"},
    {file = "asgiref-3.8.1.tar.gz", hash = "sha256:bbbb"},
]

[[package]]
name = "click"
version = "8.1.7"
description = ""
optional = false
python-versions = ">=3.7"
groups = ["main", "dev"]
files = [
    {file = "click-8.1.7-py3-none-any.whl", hash = "sha256:cccc"},
]

[package.dependencies]
colorama = {version = "*", markers = "platform_system == \"Windows\""}

[[package]]
name = "colorama"
version = "0.4.6"
description = ""
optional = false
python-versions = ">=2.7"
groups = ["main", "dev"]
markers = {main = "platform_system == \"Windows\"", dev = "sys_platform == \"win32\""}
files = [
    {file = "colorama-0.4.6-py2.py3-none-any.whl", hash = "sha256:dddd"},
]

[[package]]
name = "flask"
version = "3.0.3"
description = ""
optional = false
python-versions = ">=3.8"
groups = ["main"]
files = [
    {file = "flask-3.0.3-py3-none-any.whl", hash = "sha256:eeee"},
]

[package.dependencies]
asgiref = {version = ">=3.2", optional = true, markers = "extra == \"async\""}
click = ">=8.1.3"

[package.extras]
async = ["asgiref (>=3.2)"]
dotenv = ["python-dotenv"]

[[package]]
name = "gunicorn"
version = "23.0.0"
description = ""
optional = false
python-versions = ">=3.7"
groups = ["main"]
files = [
    {file = "gunicorn-23.0.0-py3-none-any.whl", hash = "sha256:1111"},
]

[[package]]
name = "mylib"
version = "1.0.0"
description = ""
optional = false
python-versions = "*"
groups = ["main"]
files = []

[package.source]
type = "git"
url = "https://github.com/example/mylib.git"
reference = "main"
resolved_reference = "0123456789abcdef0123456789abcdef01234567"

[[package]]
name = "pytest"
version = "8.3.3"
description = ""
optional = false
python-versions = ">=3.8"
groups = ["dev"]
files = [
    {file = "pytest-8.3.3-py3-none-any.whl", hash = "sha256:4444"},
]

[package.dependencies]
click = "*"
colorama = {version = "*", markers = "sys_platform == \"win32\""}

[[package]]
name = "redis"
version = "5.0.8"
description = ""
optional = true
python-versions = ">=3.7"
groups = ["main"]
markers = "extra == \"cache\""
files = [
    {file = "redis-5.0.8-py3-none-any.whl", hash = "sha256:5555"},
]

[[package]]
name = "tomli"
version = "2.0.1"
description = ""
optional = false
python-versions = ">=3.7"
groups = ["main"]
markers = "python_version < \"3.11\""
files = [
    {file = "tomli-2.0.1-py3-none-any.whl", hash = "sha256:6666"},
]

[extras]
cache = ["redis"]

[metadata]
lock-version = "2.1"
python-versions = "^3.9"
content-hash = "0000"
"#;

    #[test]
    fn poetry_lock_21_walks_the_main_group() {
        let set = parse_poetry_lock(
            Path::new("poetry.lock"),
            POETRY_LOCK_21,
            (Path::new("pyproject.toml"), POETRY_PYPROJECT),
            &env(),
        )
        .unwrap();
        assert_eq!(set.kind, InputKind::PoetryLock);
        assert!(set.is_lock);
        assert_eq!(
            summary(&set),
            [
                s("asgiref", "3.8.1", false, true),
                s("click", "8.1.7", false, true),
                s("colorama", "0.4.6", false, false),
                s("flask", "3.0.3", true, true),
                s("gunicorn", "23.0.0", true, true),
                s(
                    "mylib",
                    "git+https://github.com/example/mylib.git@0123456789abcdef0123456789abcdef01234567",
                    true,
                    true
                ),
                s("tomli", "2.0.1", true, false),
            ],
            "no pytest (dev group), no redis (an extra nobody asked for), tomli only before 3.11"
        );
        assert_eq!(set.requirements[0].hashes, ["sha256:aaaa", "sha256:bbbb"]);
        assert_eq!(set.requirements[3].extras, ["async"]);
        let files: Vec<_> = set
            .files
            .iter()
            .map(|f| f.0.display().to_string())
            .collect();
        assert_eq!(files, ["poetry.lock", "pyproject.toml"]);
    }

    /// lock-version 2.0 (Poetry 1.5 to 1.8): no groups, no package markers.
    /// 1.x: `category`, hashes under `[metadata.files]`.
    #[test]
    fn poetry_lock_older_versions() {
        let strip = |text: &str| -> String {
            text.lines()
                .filter(|l| !l.starts_with("groups = ") && !l.starts_with("markers = "))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let v20 = strip(POETRY_LOCK_21).replace("lock-version = \"2.1\"", "lock-version = \"2.0\"");
        let set = parse_poetry_lock(
            Path::new("poetry.lock"),
            &v20,
            (Path::new("pyproject.toml"), POETRY_PYPROJECT),
            &env(),
        )
        .unwrap();
        let keys: Vec<(String, bool)> = set
            .requirements
            .iter()
            .map(|r| (r.key.clone(), applies(r, &env())))
            .collect();
        assert_eq!(
            keys,
            [
                ("asgiref".to_string(), true),
                ("click".to_string(), true),
                ("colorama".to_string(), false),
                ("flask".to_string(), true),
                ("gunicorn".to_string(), true),
                ("mylib".to_string(), true),
                ("tomli".to_string(), false),
            ]
        );

        let v1 = r#"[[package]]
name = "flask"
version = "3.0.3"
description = ""
category = "main"
optional = false
python-versions = ">=3.8"

[package.dependencies]
click = ">=8.1.3"

[[package]]
name = "click"
version = "8.1.7"
description = ""
category = "main"
optional = false
python-versions = ">=3.7"

[[package]]
name = "pytest"
version = "8.3.3"
description = ""
category = "dev"
optional = false
python-versions = ">=3.8"

[metadata]
lock-version = "1.1"
python-versions = "^3.9"
content-hash = "0000"

[metadata.files]
click = [
    {file = "click-8.1.7-py3-none-any.whl", hash = "sha256:cccc"},
]
Flask = [
    {file = "flask-3.0.3-py3-none-any.whl", hash = "sha256:eeee"},
]
pytest = []
"#;
        let pyproject = "[tool.poetry]\nname = \"app\"\n\n[tool.poetry.dependencies]\npython = \"^3.9\"\nflask = \"^3.0\"\n\n[tool.poetry.dev-dependencies]\npytest = \"^8.0\"\n";
        let set = parse_poetry_lock(
            Path::new("poetry.lock"),
            v1,
            (Path::new("pyproject.toml"), pyproject),
            &env(),
        )
        .unwrap();
        let got: Vec<(&str, &[String])> = set
            .requirements
            .iter()
            .map(|r| (r.key.as_str(), r.hashes.as_slice()))
            .collect();
        assert_eq!(
            got,
            [
                ("click", &["sha256:cccc".to_string()][..]),
                ("flask", &["sha256:eeee".to_string()][..]),
            ]
        );
    }

    #[test]
    fn poetry_project_dependencies_and_duplicates() {
        // Poetry 2 with `[project] dependencies`; two numpys, one per Python.
        let pyproject = "[project]\nname = \"app\"\nrequires-python = \">=3.9\"\ndependencies = [\"numpy (>=1.26)\"]\n";
        let lock = r#"[[package]]
name = "numpy"
version = "2.0.2"
optional = false
python-versions = ">=3.9"
groups = ["main"]
markers = "python_version < \"3.10\""
files = [{file = "numpy-2.0.2.tar.gz", hash = "sha256:9999"}]

[[package]]
name = "numpy"
version = "2.2.0"
optional = false
python-versions = ">=3.10"
groups = ["main"]
markers = "python_version >= \"3.10\""
files = [{file = "numpy-2.2.0.tar.gz", hash = "sha256:8888"}]

[metadata]
lock-version = "2.1"
python-versions = ">=3.9"
content-hash = "0000"
"#;
        let set = parse_poetry_lock(
            Path::new("poetry.lock"),
            lock,
            (Path::new("pyproject.toml"), pyproject),
            &env(),
        )
        .unwrap();
        let got: Vec<_> = set
            .requirements
            .iter()
            .map(|r| {
                (
                    r.key.as_str(),
                    r.pinned_version(),
                    r.origin.line,
                    r.top_level,
                )
            })
            .collect();
        assert_eq!(got, [("numpy", Some("2.2.0"), 11, true)]);
    }

    #[test]
    fn python_constraints_become_markers() {
        let holds = |c: &str| marker_holds_with(&python_marker(c).unwrap(), &env(), &[]);
        assert!(holds("^3.9"));
        assert!(!holds("<3.11"));
        assert!(holds("<=3.11"), "python_version <= '3.11' holds on 3.11.2");
        assert!(holds(">=3.11.1"));
        assert!(!holds(">=3.11.3"));
        assert!(holds("~2.7 || >=3.8"));
        assert!(holds("*"));
    }
}
