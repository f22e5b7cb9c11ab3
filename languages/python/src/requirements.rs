//! Dependency inputs: `requirements.txt` (with includes, constraints,
//! hashes, markers, extras and index options), `pyproject.toml`
//! `[project] dependencies` and `Pipfile.lock`; the lock files of uv and
//! Poetry are read in [`crate::locks`], and which input wins in
//! `inputs`.
//!
//! Each requirement is parsed by `pep508_rs` (PEP 508) and its versions by
//! `pep440_rs` (PEP 440); pip's line syntax around them (options, `-r`,
//! `-c`, `--hash`, continuations, comments) is read here. Markers are kept
//! parsed, and evaluated with [`applies`] against the environment the probe
//! read from the base image's interpreter.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use ftl::PluginError;
use pep440_rs::VersionSpecifiers;
use pep508_rs::{ExtraName, MarkerEnvironment, MarkerEnvironmentBuilder, MarkerTree};

const FORMAT_DOC: &str = "see https://pip.pypa.io/en/stable/reference/requirements-file-format/";

/// Where a requirement was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Relative to the source root.
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
}

/// One requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// As written.
    pub name: String,
    /// PEP 503 normalized.
    pub key: String,
    /// Normalized extra names.
    pub extras: Vec<String>,
    /// Version clauses as PEP 440 normalizes them, e.g. `[("==", "3.0.3")]`
    /// or `[("==", "1.*")]`; [`Requirement::versions`] has them parsed.
    pub specifier: Vec<(String, String)>,
    /// The environment marker; `MarkerTree::TRUE` when there is none.
    pub marker: MarkerTree,
    /// The marker as written (passed on to pip).
    pub marker_text: Option<String>,
    /// A direct URL or VCS reference (`name @ url`, `git+https://...`).
    pub url: Option<String>,
    /// `--hash` values (`sha256:...`), sorted.
    pub hashes: Vec<String>,
    pub origin: Origin,
    /// Written by the user (a requirements file, `[project]
    /// dependencies`, a direct dependency of a locked project), as opposed
    /// to a lock's transitive entry (a lock's package no direct dependency
    /// names, a `# via` line of pip-compile).
    pub top_level: bool,
}

impl Requirement {
    /// The version when the requirement pins exactly one (`==1.2.3` or
    /// `===1.2.3`, no wildcard, no URL).
    pub fn pinned_version(&self) -> Option<&str> {
        if self.url.is_some() {
            return None;
        }
        match self.specifier.as_slice() {
            [(op, v)] if (op == "==" && !v.ends_with(".*")) || op == "===" => Some(v),
            _ => None,
        }
    }

    /// The specifier as pip reads it, e.g. `>=1,<2`.
    pub fn specifier_text(&self) -> String {
        self.specifier
            .iter()
            .map(|(op, v)| format!("{op}{v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The version clauses, parsed (every requirement's were checked when
    /// it was read).
    pub fn versions(&self) -> VersionSpecifiers {
        VersionSpecifiers::from_str(&self.specifier_text())
            .unwrap_or_else(|_| VersionSpecifiers::empty())
    }
}

/// A requirement whose marker does not hold for the base image's
/// interpreter: it is not installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// As written.
    pub name: String,
    /// The marker, as written (or, for a lock's package, as the lock gives it).
    pub marker: String,
    pub origin: Origin,
    /// See [`Requirement::top_level`]: the user wrote it, so its absence may
    /// surprise them.
    pub top_level: bool,
}

/// The PEP 508 environment of `markers` (the names the probe reads from
/// the interpreter); `None` when a version in it is not PEP 440.
///
/// Versions are taken release-only (`3.13.0rc2` as `3.13.0`, a development
/// build's `3.14.0+` as `3.14.0`): pep508_rs compares markers' versions
/// release-only (uv does the same), and a pre-release interpreter compared
/// with its release's markers would otherwise match neither `>= '3.13'`
/// nor `< '3.13'`.
fn environment(markers: &BTreeMap<String, String>) -> Option<MarkerEnvironment> {
    let get = |k: &str| markers.get(k).map(String::as_str).unwrap_or_default();
    let release = |k: &str| -> Option<String> {
        let v = get(k).trim_end_matches('+');
        if v.is_empty() {
            return Some("0".into());
        }
        let v = pep440_rs::Version::from_str(v).ok()?;
        Some(v.only_release().to_string())
    };
    let (implementation_version, python_full_version) = (
        release("implementation_version")?,
        release("python_full_version")?,
    );
    let python_version = release("python_version")?;
    MarkerEnvironment::try_from(MarkerEnvironmentBuilder {
        implementation_name: get("implementation_name"),
        implementation_version: &implementation_version,
        os_name: get("os_name"),
        platform_machine: get("platform_machine"),
        platform_python_implementation: get("platform_python_implementation"),
        platform_release: get("platform_release"),
        platform_system: get("platform_system"),
        platform_version: get("platform_version"),
        python_full_version: &python_full_version,
        python_version: &python_version,
        sys_platform: get("sys_platform"),
    })
    .ok()
}

/// Whether `marker` holds in `markers` (PEP 508 environment names, as the
/// probe reads them from the interpreter; `extra`, when present, is the
/// one extra taken as requested).
pub fn marker_holds(marker: &MarkerTree, markers: &BTreeMap<String, String>) -> bool {
    let extras: Vec<String> = markers.get("extra").cloned().into_iter().collect();
    marker_holds_with(marker, markers, &extras)
}

/// [`marker_holds`] with `extras` requested (a package's extras, for the
/// markers of its dependencies).
pub(crate) fn marker_holds_with(
    marker: &MarkerTree,
    markers: &BTreeMap<String, String>,
    extras: &[String],
) -> bool {
    if marker.is_true() {
        return true;
    }
    let Some(env) = environment(markers) else {
        tracing::warn!(
            ?markers,
            "the interpreter's environment is not PEP 440; markers are taken as true"
        );
        return true;
    };
    let extras: Vec<ExtraName> = extras
        .iter()
        .filter_map(|e| ExtraName::from_str(e).ok())
        .collect();
    marker.evaluate(&env, &extras)
}

/// Whether `req` is installed for the interpreter whose PEP 508
/// environment is `markers` (as [`crate::probe::Probe::markers`]): true
/// unless its marker is false there.
pub fn applies(req: &Requirement, markers: &BTreeMap<String, String>) -> bool {
    marker_holds(&req.marker, markers)
}

/// The requirements of `set` that [`applies`] leaves out, in the set's
/// order.
pub fn skipped_by_markers(
    set: &RequirementSet,
    markers: &BTreeMap<String, String>,
) -> Vec<Skipped> {
    set.requirements
        .iter()
        .filter(|r| !applies(r, markers))
        .map(|r| Skipped {
            name: r.name.clone(),
            marker: r
                .marker_text
                .clone()
                .or_else(|| r.marker.try_to_string())
                .unwrap_or_default(),
            origin: r.origin.clone(),
            top_level: r.top_level,
        })
        .collect()
}

/// Index and install options that change what pip resolves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexOptions {
    pub index_url: Option<String>,
    pub extra_index_urls: Vec<String>,
    pub find_links: Vec<String>,
    pub no_index: bool,
    pub trusted_hosts: Vec<String>,
    pub pre: bool,
    pub prefer_binary: bool,
    pub only_binary: Vec<String>,
    pub no_binary: Vec<String>,
    pub require_hashes: bool,
}

impl IndexOptions {
    /// The options as requirements-file lines, for the file handed to pip.
    pub fn to_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(u) = &self.index_url {
            out.push(format!("--index-url {u}"));
        }
        out.extend(
            self.extra_index_urls
                .iter()
                .map(|u| format!("--extra-index-url {u}")),
        );
        out.extend(self.find_links.iter().map(|u| format!("--find-links {u}")));
        if self.no_index {
            out.push("--no-index".into());
        }
        out.extend(
            self.trusted_hosts
                .iter()
                .map(|h| format!("--trusted-host {h}")),
        );
        if self.pre {
            out.push("--pre".into());
        }
        if self.prefer_binary {
            out.push("--prefer-binary".into());
        }
        out.extend(
            self.only_binary
                .iter()
                .map(|p| format!("--only-binary {p}")),
        );
        out.extend(self.no_binary.iter().map(|p| format!("--no-binary {p}")));
        if self.require_hashes {
            out.push("--require-hashes".into());
        }
        out
    }
}

/// Which input a [`RequirementSet`] was read from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputKind {
    /// A pip requirements file (`requirements.txt` or `python.requirements`).
    #[default]
    Requirements,
    /// `pyproject.toml` `[project] dependencies`.
    Pyproject,
    PipfileLock,
    UvLock,
    PoetryLock,
}

impl InputKind {
    /// A stable name: `requirements`, `pyproject`, `pipfile-lock`,
    /// `uv-lock`, `poetry-lock`.
    pub fn as_str(self) -> &'static str {
        match self {
            InputKind::Requirements => "requirements",
            InputKind::Pyproject => "pyproject",
            InputKind::PipfileLock => "pipfile-lock",
            InputKind::UvLock => "uv-lock",
            InputKind::PoetryLock => "poetry-lock",
        }
    }
}

/// Every requirement of an app, from whichever input it has.
#[derive(Debug, Clone, Default)]
pub struct RequirementSet {
    pub requirements: Vec<Requirement>,
    pub constraints: Vec<Requirement>,
    pub options: IndexOptions,
    /// Every file read (relative path, text), in reading order: the exact
    /// inputs of an unpinned install.
    pub files: Vec<(PathBuf, String)>,
    /// The file pip is pointed at for an unpinned install (the top file);
    /// `None` when pip gets a file made from `requirements` (pyproject.toml,
    /// the lock files).
    pub top: Option<PathBuf>,
    /// Which input this is.
    pub kind: InputKind,
    /// Whether the set is a complete lock that needs no resolution:
    /// uv.lock, poetry.lock, Pipfile.lock, and a requirements file in which
    /// every requirement that applies to the interpreter is pinned (`==`,
    /// `===`) with `--hash`es (pip's hash-checking mode refuses anything
    /// else, so such a file is complete).
    pub is_lock: bool,
    /// The app's `requires-python` (a PEP 440 specifier; poetry's `||`
    /// alternatives kept) and where it is written.
    pub requires_python: Option<(String, Origin)>,
    /// Said to the user once per build: dependency files that are ignored,
    /// index URLs taken from a lock.
    pub warnings: Vec<String>,
}

impl RequirementSet {
    /// The pinned version of `req`: its own `==`, or a constraint's.
    pub fn pinned_version<'a>(&'a self, req: &'a Requirement) -> Option<&'a str> {
        req.pinned_version().or_else(|| {
            if req.url.is_some() || !req.specifier.is_empty() {
                return None;
            }
            self.constraints
                .iter()
                .find(|c| c.key == req.key)
                .and_then(Requirement::pinned_version)
        })
    }

    /// Whether every requirement that applies to `markers` is pinned with
    /// its hashes (its own, or a constraint's), and there is one.
    pub(crate) fn pinned_with_hashes(&self, markers: &BTreeMap<String, String>) -> bool {
        let mut any = false;
        for r in self.requirements.iter().filter(|r| applies(r, markers)) {
            any = true;
            let hashes = !r.hashes.is_empty()
                || self
                    .constraints
                    .iter()
                    .any(|c| c.key == r.key && !c.hashes.is_empty());
            if self.pinned_version(r).is_none() || !hashes {
                return false;
            }
        }
        any
    }
}

/// PEP 503 name normalization.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if c == '-' || c == '_' || c == '.' {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

fn err(origin: &Origin, message: impl Into<String>) -> PluginError {
    PluginError::new(message).in_file(&origin.file, Some(origin.line))
}

/// Reads `file` (relative to the source root) and everything it includes.
/// `read` returns a file's text, `None` when it is not in the source tree.
pub fn parse_requirements_file(
    file: &Path,
    read: &dyn Fn(&Path) -> Result<Option<String>, PluginError>,
) -> Result<RequirementSet, PluginError> {
    let mut set = RequirementSet {
        top: Some(file.to_path_buf()),
        ..RequirementSet::default()
    };
    let text =
        read(file)?.ok_or_else(|| PluginError::new(format!("{} not found", file.display())))?;
    parse_into(&mut set, file, &text, false, read, 0)?;
    Ok(set)
}

/// Parses requirement text that is already read (tests, generated files).
pub fn parse_requirements_text(file: &Path, text: &str) -> Result<RequirementSet, PluginError> {
    let mut set = RequirementSet::default();
    parse_into(&mut set, file, text, false, &|_| Ok(None), 0)?;
    Ok(set)
}

fn parse_into(
    set: &mut RequirementSet,
    file: &Path,
    text: &str,
    constraint: bool,
    read: &dyn Fn(&Path) -> Result<Option<String>, PluginError>,
    depth: usize,
) -> Result<(), PluginError> {
    if set.files.iter().any(|(p, _)| p == file) {
        return Ok(()); // included twice (or a cycle): pip reads it once more, to no effect
    }
    set.files.push((file.to_path_buf(), text.to_string()));
    let raw: Vec<&str> = text.lines().collect();
    for (line_no, end, line) in logical_lines(text) {
        let origin = Origin {
            file: file.to_path_buf(),
            line: line_no,
        };
        if line.starts_with('-') {
            parse_option_line(set, &origin, &line, constraint, read, depth)?;
        } else {
            let mut req = parse_requirement_line(&line, &origin)?;
            req.top_level = !compiled_as_transitive(&raw, end);
            if constraint {
                set.constraints.push(req);
            } else {
                set.requirements.push(req);
            }
        }
    }
    Ok(())
}

/// Joins `\` continuations and strips comments; yields (first line number,
/// last line number, text) for each non-empty logical line.
fn logical_lines(text: &str) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    let mut last = 0;
    for (i, raw) in text.lines().enumerate() {
        if current.is_empty() {
            start = i + 1;
        }
        last = i + 1;
        let stripped = strip_comment(raw);
        if let Some(body) = stripped.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(stripped);
        let line = current.trim().to_string();
        current.clear();
        if !line.is_empty() {
            out.push((start, last, line));
        }
    }
    let line = current.trim().to_string();
    if !line.is_empty() {
        out.push((start, last, line));
    }
    out
}

/// Whether pip-compile (or `uv pip compile`) annotated the requirement
/// ending at line `end` (1-based) as only another package's dependency:
/// `# via flask` on the line or the comment lines after it, naming no
/// `-r` file or project (`-r requirements.in`, `app (pyproject.toml)`).
fn compiled_as_transitive(raw: &[&str], end: usize) -> bool {
    let inline = raw.get(end - 1).and_then(|l| {
        let i = strip_comment_start(l);
        (i < l.len()).then(|| l[i..].trim_start_matches('#').trim())
    });
    let following = raw[end..]
        .iter()
        .map(|l| l.trim())
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim());
    let mut comments = inline.into_iter().chain(following);
    let Some(first) = comments.next() else {
        return false;
    };
    let Some(rest) = first.strip_prefix("via") else {
        return false;
    };
    if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
        return false;
    }
    let names: Vec<&str> = std::iter::once(rest)
        .chain(comments)
        .flat_map(|c| c.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    !names.is_empty()
        && names.iter().all(|n| {
            n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                && n.starts_with(|c: char| c.is_ascii_alphanumeric())
        })
}

/// Where pip's comment starts in `line` (its length when there is none).
fn strip_comment_start(line: &str) -> usize {
    let bytes = line.as_bytes();
    (0..bytes.len())
        .find(|&i| bytes[i] == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()))
        .unwrap_or(bytes.len())
}

/// pip's rule: `#` at the start of a line or after whitespace starts a
/// comment (so URL fragments like `#egg=` survive).
fn strip_comment(line: &str) -> &str {
    line[..strip_comment_start(line)].trim_end()
}

/// Splits `--opt=value` / `--opt value` / `-ovalue` tokens into (option, value).
fn option_tokens(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_string).collect()
}

fn parse_option_line(
    set: &mut RequirementSet,
    origin: &Origin,
    line: &str,
    constraint: bool,
    read: &dyn Fn(&Path) -> Result<Option<String>, PluginError>,
    depth: usize,
) -> Result<(), PluginError> {
    let toks = option_tokens(line);
    let mut i = 0;
    while i < toks.len() {
        let tok = &toks[i];
        let (name, inline): (&str, Option<String>) =
            if let Some((n, v)) = tok.split_once('=').filter(|_| tok.starts_with("--")) {
                (n, Some(v.to_string()))
            } else if tok.starts_with("--") || tok.len() == 2 {
                (tok.as_str(), None)
            } else {
                // -rfile, -ihttps://...
                (&tok[..2], Some(tok[2..].to_string()))
            };
        const WITH_VALUE: &[&str] = &[
            "-r",
            "--requirement",
            "-c",
            "--constraint",
            "-i",
            "--index-url",
            "--extra-index-url",
            "-f",
            "--find-links",
            "--trusted-host",
            "--only-binary",
            "--no-binary",
            "-e",
            "--editable",
        ];
        let value = if WITH_VALUE.contains(&name) {
            match inline {
                Some(v) => Some(v),
                None => {
                    i += 1;
                    Some(toks.get(i).cloned().ok_or_else(|| {
                        err(origin, format!("option `{name}` needs a value")).hint(FORMAT_DOC)
                    })?)
                }
            }
        } else {
            inline
        };
        let opts = &mut set.options;
        match name {
            "-r" | "--requirement" | "-c" | "--constraint" => {
                let value = value.expect("has a value");
                if value.contains("://") {
                    return Err(err(
                        origin,
                        format!("including `{value}` over the network is not supported"),
                    )
                    .hint("copy the file into the app directory and include it by relative path"));
                }
                let target = include_path(origin, &value)?;
                if depth > 20 {
                    return Err(err(
                        origin,
                        "requirement files include each other too deeply",
                    ));
                }
                let text = read(&target)?.ok_or_else(|| {
                    err(origin, format!("included file {} not found", target.display()))
                        .hint("the path is relative to the including file; check it exists and is not excluded by .dockerignore/.gcloudignore")
                })?;
                let is_constraint = constraint || name == "-c" || name == "--constraint";
                parse_into(set, &target, &text, is_constraint, read, depth + 1)?;
            }
            "-i" | "--index-url" => opts.index_url = value,
            "--extra-index-url" => opts.extra_index_urls.push(value.expect("has a value")),
            "-f" | "--find-links" => {
                let v = value.expect("has a value");
                if !v.contains("://") {
                    return Err(err(
                        origin,
                        format!("--find-links with a local path `{v}` is not supported"),
                    )
                    .hint("serve the wheels from an index, or use an https:// URL"));
                }
                opts.find_links.push(v)
            }
            "--no-index" => opts.no_index = true,
            "--trusted-host" => opts.trusted_hosts.push(value.expect("has a value")),
            "--pre" => opts.pre = true,
            "--prefer-binary" => opts.prefer_binary = true,
            "--only-binary" => opts.only_binary.push(value.expect("has a value")),
            "--no-binary" => opts.no_binary.push(value.expect("has a value")),
            "--require-hashes" => opts.require_hashes = true,
            "-e" | "--editable" => {
                return Err(err(origin, format!("editable requirement `{}` is not supported", value.unwrap_or_default()))
                    .hint("an image needs an installed package: drop `-e`, or put local code in the app directory"));
            }
            "--use-feature" | "--use-deprecated" => {
                i += 1; // pip behaviour flags that do not change what is installed
            }
            other => {
                return Err(
                    err(origin, format!("unknown or unsupported option `{other}`"))
                        .hint(FORMAT_DOC),
                );
            }
        }
        i += 1;
    }
    Ok(())
}

/// Resolves an include relative to the including file, lexically, refusing
/// paths that leave the source tree.
fn include_path(origin: &Origin, value: &str) -> Result<PathBuf, PluginError> {
    let joined = origin.file.parent().unwrap_or(Path::new("")).join(value);
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return Err(err(
                        origin,
                        format!("included file `{value}` is outside the app directory"),
                    )
                    .hint("only files inside the app directory are sent to the build"));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(err(
                    origin,
                    format!("included file `{value}` is an absolute path"),
                )
                .hint("use a path relative to the including file"));
            }
        }
    }
    Ok(out)
}

/// Parses one requirement line (PEP 508 plus pip's per-requirement options).
pub fn parse_requirement_line(line: &str, origin: &Origin) -> Result<Requirement, PluginError> {
    // Per-requirement options start at the first ` --`.
    let (spec, opts) = match line.find(" --").or_else(|| line.find("\t--")) {
        Some(i) => (line[..i].trim(), line[i..].trim()),
        None => (line.trim(), ""),
    };
    let mut hashes = Vec::new();
    let toks: Vec<&str> = opts.split_whitespace().collect();
    let mut i = 0;
    while i < toks.len() {
        let (name, value) = match toks[i].split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (toks[i], None),
        };
        match name {
            "--hash" => {
                let v = match value {
                    Some(v) => v,
                    None => {
                        i += 1;
                        toks.get(i)
                            .map(|s| s.to_string())
                            .ok_or_else(|| err(origin, "`--hash` needs a value"))?
                    }
                };
                let (algo, digest) = v.split_once(':').ok_or_else(|| {
                    err(origin, format!("invalid hash `{v}`"))
                        .hint("hashes are written `--hash=sha256:<hex>`")
                })?;
                if !matches!(algo, "sha256" | "sha384" | "sha512")
                    || digest.is_empty()
                    || !digest.chars().all(|c| c.is_ascii_hexdigit())
                {
                    return Err(err(origin, format!("invalid hash `{v}`"))
                        .hint("hashes are written `--hash=sha256:<hex>`"));
                }
                hashes.push(v.to_ascii_lowercase());
            }
            other => {
                return Err(err(
                    origin,
                    format!("unsupported per-requirement option `{other}`"),
                )
                .hint("only `--hash` is supported after a requirement"));
            }
        }
        i += 1;
    }
    hashes.sort();
    hashes.dedup();
    let mut req = parse_pep508(spec, origin)?;
    req.hashes = hashes;
    Ok(req)
}

fn is_vcs_or_url(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    [
        "git+", "hg+", "svn+", "bzr+", "http://", "https://", "file:",
    ]
    .iter()
    .any(|p| lower.starts_with(p))
}

fn looks_like_path(s: &str) -> bool {
    let head = s.split(';').next().unwrap_or("").trim();
    if head.contains('@') {
        return false; // `name @ url`
    }
    s.starts_with('.')
        || s.starts_with('/')
        || s.starts_with('~')
        || head.contains('/')
        || [".whl", ".tar.gz", ".zip", ".tar.bz2"]
            .iter()
            .any(|e| head.ends_with(e))
}

/// Parses a marker (the text after `;`).
pub fn parse_marker(text: &str) -> Result<MarkerTree, String> {
    check_nesting(text)?;
    MarkerTree::from_str(text).map_err(|e| format!("invalid marker `{text}`: {}", e.message))
}

/// How deeply a marker's parentheses may nest. pep508_rs parses them by
/// recursion without a bound: a requirement line of some thousands of
/// `(` overflows the planning thread's stack, which aborts the whole
/// process (every build of `ftl serve`). Real markers nest two or three
/// deep.
const MAX_MARKER_NESTING: usize = 32;

/// Refuses parentheses (outside quoted strings) nested deeper than
/// [`MAX_MARKER_NESTING`].
fn check_nesting(text: &str) -> Result<(), String> {
    let (mut depth, mut quote) = (0usize, None);
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '(') => {
                depth += 1;
                if depth > MAX_MARKER_NESTING {
                    return Err(format!(
                        "parentheses nested more than {MAX_MARKER_NESTING} deep"
                    ));
                }
            }
            (None, ')') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Where the marker of `spec` starts (its `;`): the first `;` of a
/// requirement by version; after a URL, the first `;` with whitespace on
/// one side (PEP 508's rule, as URLs may hold `;`).
fn marker_start(spec: &str, url: bool) -> Option<usize> {
    if !url {
        return spec.find(';');
    }
    let b = spec.as_bytes();
    (0..b.len()).find(|&i| {
        b[i] == b';'
            && (i > 0 && b[i - 1].is_ascii_whitespace()
                || b.get(i + 1).is_some_and(u8::is_ascii_whitespace))
    })
}

/// Parses a PEP 508 requirement (or a pip URL line).
pub fn parse_pep508(spec: &str, origin: &Origin) -> Result<Requirement, PluginError> {
    let invalid =
        |why: &str| err(origin, format!("invalid requirement `{spec}`: {why}")).hint(FORMAT_DOC);
    let spec = spec.trim();

    if is_vcs_or_url(spec) {
        // `git+https://host/repo@rev#egg=name` style: pip derives the name
        // from `#egg=`.
        let (url, marker_text) = match marker_start(spec, true) {
            Some(i) => (spec[..i].trim(), Some(spec[i + 1..].trim().to_string())),
            None => (spec, None),
        };
        let name = url
            .split_once("#egg=")
            .map(|(_, e)| e.split('&').next().unwrap_or("").to_string())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid("a URL requirement needs a name: write `name @ URL`"))?;
        let marker = match &marker_text {
            Some(m) => parse_marker(m).map_err(|e| invalid(&e))?,
            None => MarkerTree::TRUE,
        };
        return Ok(Requirement {
            key: normalize(&name),
            name,
            extras: Vec::new(),
            specifier: Vec::new(),
            marker,
            marker_text,
            url: Some(url.to_string()),
            hashes: Vec::new(),
            origin: origin.clone(),
            top_level: true,
        });
    }
    if looks_like_path(spec) {
        return Err(err(
            origin,
            format!("local path requirement `{spec}` is not supported"),
        )
        .hint(
            "put local code in the app directory, or publish the package to an index and pin it",
        ));
    }
    if spec.trim_end().ends_with(';') {
        return Err(invalid("empty marker after `;`"));
    }
    check_nesting(spec).map_err(|e| invalid(&e))?;
    let parsed = pep508_rs::Requirement::<url::Url>::from_str(spec)
        .map_err(|e| invalid(&lowercase_first(&e.message.to_string())))?;
    let name: String = spec
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
        .collect();
    let mut specifier = Vec::new();
    let mut url = None;
    match &parsed.version_or_url {
        Some(pep508_rs::VersionOrUrl::VersionSpecifier(specs)) => {
            for s in specs.iter() {
                let mut v = s.version().to_string();
                if s.operator().is_star() {
                    v.push_str(".*");
                }
                specifier.push((s.operator().to_string(), v));
            }
        }
        Some(pep508_rs::VersionOrUrl::Url(_)) => {
            // As written: the URL pip gets is the user's.
            let after = &spec[spec.find('@').expect("a URL follows `@`") + 1..];
            let end = marker_start(after, true).unwrap_or(after.len());
            url = Some(after[..end].trim().to_string());
        }
        None => {}
    }
    let marker_text = (!parsed.marker.is_true() || spec.contains(';'))
        .then(|| marker_start(spec, url.is_some()).map(|i| spec[i + 1..].trim().to_string()))
        .flatten();
    Ok(Requirement {
        key: parsed.name.to_string(),
        name,
        extras: parsed.extras.iter().map(ToString::to_string).collect(),
        specifier,
        marker: parsed.marker,
        marker_text,
        url,
        hashes: Vec::new(),
        origin: origin.clone(),
        top_level: true,
    })
}

/// pep508_rs's messages start with a capital; ours do not.
fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The error of a TOML file that does not parse, at its line.
pub(crate) fn toml_error(file: &Path, text: &str, e: &toml::de::Error) -> PluginError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    PluginError::new(format!(
        "invalid TOML: {}",
        e.message().trim_end().trim_end_matches('.')
    ))
    .in_file(file, line)
}

/// Parses a TOML file.
pub(crate) fn parse_toml(file: &Path, text: &str) -> Result<toml::Table, PluginError> {
    toml::from_str(text).map_err(|e| toml_error(file, text, &e))
}

/// Reads `[project] dependencies` of a pyproject.toml. `Ok(None)` when it
/// declares none.
pub fn parse_pyproject(file: &Path, text: &str) -> Result<Option<RequirementSet>, PluginError> {
    let doc = parse_toml(file, text)?;
    let project = doc.get("project").and_then(|p| p.as_table());
    let deps = project.and_then(|p| p.get("dependencies"));
    let Some(deps) = deps else {
        if doc.get("tool").and_then(|t| t.get("poetry")).is_some() {
            return Err(PluginError::new(
                "Poetry dependencies (`[tool.poetry]`) without poetry.lock",
            )
            .in_file(file, None)
            .hint(
                "run `poetry lock` and add poetry.lock to the app, or use `[project] dependencies`",
            ));
        }
        return Ok(None);
    };
    let list = deps.as_array().ok_or_else(|| {
        PluginError::new("`[project] dependencies` must be a list of strings")
            .in_file(file, line_of(text, "dependencies"))
    })?;
    let mut set = RequirementSet {
        files: vec![(file.to_path_buf(), text.to_string())],
        kind: InputKind::Pyproject,
        ..RequirementSet::default()
    };
    for d in list {
        let s = d.as_str().ok_or_else(|| {
            PluginError::new("`[project] dependencies` must be a list of strings")
                .in_file(file, line_of(text, "dependencies"))
        })?;
        let origin = Origin {
            file: file.to_path_buf(),
            line: line_of(text, s).unwrap_or(1),
        };
        set.requirements.push(parse_pep508(s.trim(), &origin)?);
    }
    Ok(Some(set))
}

pub(crate) fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// The first line that sets `key` (`key = ...`, TOML or INI).
pub(crate) fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with(['=', ':']))
        })
        .map(|i| i + 1)
}

/// Reads the `default` packages of a Pipfile.lock.
pub fn parse_pipfile_lock(file: &Path, text: &str) -> Result<RequirementSet, PluginError> {
    let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        PluginError::new(format!("invalid JSON: {e}")).in_file(file, Some(e.line()))
    })?;
    let mut set = RequirementSet {
        files: vec![(file.to_path_buf(), text.to_string())],
        kind: InputKind::PipfileLock,
        is_lock: true,
        ..RequirementSet::default()
    };
    // `python_full_version` is the more precise when both are there.
    for (key, suffix) in [("python_full_version", ""), ("python_version", ".*")] {
        if let Some(v) = doc
            .pointer(&format!("/_meta/requires/{key}"))
            .and_then(|v| v.as_str())
        {
            let origin = Origin {
                file: file.to_path_buf(),
                line: line_of(text, &format!("\"{key}\"")).unwrap_or(1),
            };
            set.requires_python = Some((format!("=={}{suffix}", v.trim()), origin));
            break;
        }
    }
    // Sources: the first is the index, the rest extra indexes.
    let sources: Vec<String> = doc
        .pointer("/_meta/sources")
        .and_then(|s| s.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.get("url")?.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut sources = sources.into_iter();
    set.options.index_url = sources.next();
    set.options.extra_index_urls = sources.collect();
    let default = doc.get("default").and_then(|d| d.as_object());
    let packages: BTreeMap<_, _> = default.map(|m| m.iter().collect()).unwrap_or_default();
    for (name, entry) in packages {
        let origin = Origin {
            file: file.to_path_buf(),
            line: line_of(text, &format!("\"{name}\":")).unwrap_or(1),
        };
        for vcs in ["git", "hg", "svn", "bzr", "path", "file", "editable"] {
            if entry.get(vcs).is_some() {
                return Err(err(
                    &origin,
                    format!("package `{name}` comes from `{vcs}`, which is not supported"),
                )
                .hint("publish the package to an index and lock it by version"));
            }
        }
        let version = entry
            .get("version")
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                err(&origin, format!("package `{name}` has no version"))
                    .hint("regenerate the lock with `pipenv lock`")
            })?;
        let extras: String = entry
            .get("extras")
            .and_then(|e| e.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|e| !e.is_empty())
            .map(|e| format!("[{e}]"))
            .unwrap_or_default();
        let marker = entry
            .get("markers")
            .and_then(|m| m.as_str())
            .map(|m| format!("; {m}"))
            .unwrap_or_default();
        let mut req = parse_pep508(&format!("{name}{extras}{version}{marker}"), &origin)?;
        let mut hashes: Vec<String> = entry
            .get("hashes")
            .and_then(|h| h.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|h| h.as_str().map(str::to_ascii_lowercase))
                    .collect()
            })
            .unwrap_or_default();
        hashes.sort();
        hashes.dedup();
        req.hashes = hashes;
        set.requirements.push(req);
    }
    Ok(set)
}

/// The PEP 508 environment of Debian bookworm's CPython 3.11 on x86-64,
/// for tests.
#[cfg(test)]
pub(crate) fn bookworm_markers() -> BTreeMap<String, String> {
    [
        ("implementation_name", "cpython"),
        ("implementation_version", "3.11.2"),
        ("os_name", "posix"),
        ("platform_machine", "x86_64"),
        ("platform_python_implementation", "CPython"),
        ("platform_release", "6.1.0-18-amd64"),
        ("platform_system", "Linux"),
        ("platform_version", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1"),
        ("python_full_version", "3.11.2"),
        ("python_version", "3.11"),
        ("sys_platform", "linux"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            file: "requirements.txt".into(),
            line: 1,
        }
    }

    /// A requirement line (or a lock's marker) of thousands of nested
    /// parentheses is an error of that line, not a stack overflow that
    /// aborts the process (run here on the 2 MiB stack of tokio's blocking
    /// threads, where planning runs).
    #[test]
    fn a_deeply_nested_marker_is_refused_not_a_stack_overflow() {
        let n = 20_000;
        let marker = format!("{}python_version > \"3\"{}", "(".repeat(n), ")".repeat(n));
        let outcome = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let line = parse_pep508(&format!("flask; {marker}"), &origin())
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                let url = parse_pep508(
                    &format!("git+https://example.com/x.git#egg=x ; {marker}"),
                    &origin(),
                )
                .map(|_| ())
                .map_err(|e| e.to_string());
                (line, url, parse_marker(&marker).map(|_| ()))
            })
            .unwrap()
            .join()
            .unwrap();
        for e in [outcome.0, outcome.1, outcome.2] {
            let e = e.unwrap_err();
            assert!(e.contains("nested more than"), "{}", &e[..e.len().min(300)]);
        }
        // Quoted parentheses do not count; real nesting parses.
        assert!(
            parse_marker("platform_release == '((((((((((((((((((((((((((((((((((((('").is_ok()
        );
        assert!(parse_pep508(
            "a; (python_version > '3' and (sys_platform == 'linux' or (os_name == 'posix')))",
            &origin()
        )
        .is_ok());
    }

    fn files(list: &[(&str, &str)]) -> impl Fn(&Path) -> Result<Option<String>, PluginError> {
        let map: BTreeMap<PathBuf, String> = list
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect();
        move |p: &Path| Ok(map.get(p).cloned())
    }

    #[test]
    fn normalizes_names() {
        assert_eq!(normalize("Flask"), "flask");
        assert_eq!(normalize("zope.interface"), "zope-interface");
        assert_eq!(normalize("Typing__Extensions"), "typing-extensions");
    }

    #[test]
    fn parses_pep508() {
        let r = parse_pep508(
            "Flask[async, dotenv] >= 2.0 , <4 ; python_version >= '3.8'",
            &origin(),
        )
        .unwrap();
        assert_eq!(r.name, "Flask");
        assert_eq!(r.key, "flask");
        assert_eq!(r.extras, ["async", "dotenv"]);
        assert_eq!(r.specifier_text(), ">=2.0,<4");
        assert_eq!(r.marker_text.as_deref(), Some("python_version >= '3.8'"));
        assert!(r.pinned_version().is_none());

        let r = parse_pep508("requests (==2.32.3)", &origin()).unwrap();
        assert_eq!(r.pinned_version(), Some("2.32.3"));
        assert!(parse_pep508("pkg==1.*", &origin())
            .unwrap()
            .pinned_version()
            .is_none());
        assert_eq!(
            parse_pep508("pkg===1.0", &origin())
                .unwrap()
                .pinned_version(),
            Some("1.0")
        );
        // Arbitrary equality with a version PEP 440 does not know: no
        // distribution pip installs (22+) can have it.
        let e = parse_pep508("pkg===1.0-weird", &origin()).unwrap_err();
        assert_eq!(e.line, Some(1));
        assert_eq!(
            parse_pep508("pkg~=1.4.2", &origin())
                .unwrap()
                .specifier_text(),
            "~=1.4.2"
        );

        let r = parse_pep508(
            "pip @ https://example.com/pip-24.0-py3-none-any.whl ; python_version > '3'",
            &origin(),
        )
        .unwrap();
        assert_eq!(
            r.url.as_deref(),
            Some("https://example.com/pip-24.0-py3-none-any.whl")
        );
        assert!(r.pinned_version().is_none());
    }

    fn env() -> BTreeMap<String, String> {
        crate::requirements::bookworm_markers()
    }

    fn holds(marker: &str, env: &BTreeMap<String, String>) -> bool {
        let r = parse_pep508(&format!("pkg==1.0 ; {marker}"), &origin()).unwrap();
        applies(&r, env)
    }

    #[test]
    fn markers_evaluate_against_the_interpreter() {
        let env = env();
        for (marker, want) in [
            (r#"python_version >= "3.8""#, true),
            (r#"python_version < "3.8""#, false),
            (r#"python_version > "3.9""#, true), // as versions, not strings
            (r#"python_version == "3.*""#, true),
            (r#"python_version != "3.11.*""#, false),
            (r#""3.7" <= python_version"#, true),
            (r#"python_version ~= "3.10""#, true),
            (r#"python_full_version >= "3.11.1""#, true),
            (r#"python_full_version < "3.11.2""#, false),
            (r#"python_full_version == "3.11.2""#, true),
            (r#"sys_platform == "win32""#, false),
            (
                r#"platform_system != "Windows" and implementation_name == 'cpython'"#,
                true,
            ),
            (
                r#"(os_name == "nt" or os_name == "posix") and python_full_version ~= "3.11.0""#,
                true,
            ),
            (r#"platform_machine in "x86_64 aarch64""#, true),
            (r#"platform_machine not in "arm64 ppc64le""#, true),
            (r#"'linux' in sys_platform"#, true),
            (r#"platform_python_implementation == "PyPy""#, false),
            (r#"os.name == "posix""#, true), // a legacy spelling pip accepts
            (r#"extra == "dev""#, false),
        ] {
            assert_eq!(holds(marker, &env), want, "{marker}");
        }
        // `extra` holds when the environment names it (a package's extra
        // being installed).
        let mut with_extra = env.clone();
        with_extra.insert("extra".into(), "Dev".into());
        assert!(holds(r#"extra == "dev""#, &with_extra));
        assert!(!holds(r#"extra == "test""#, &with_extra));
    }

    #[test]
    fn markers_take_a_pre_release_interpreter_as_its_release() {
        let mut env = env();
        env.insert("python_full_version".into(), "3.13.0rc2".into());
        env.insert("python_version".into(), "3.13".into());
        assert!(holds(r#"python_full_version >= "3.13""#, &env));
        assert!(holds(r#"python_full_version >= "3.13.0rc1""#, &env));
        assert!(!holds(r#"python_full_version < "3.13""#, &env));
        assert!(holds(r#"python_full_version > "3.12.9""#, &env));
        assert!(holds(r#"python_version >= "3.13""#, &env));
        // A development build's `+`.
        env.insert("python_full_version".into(), "3.14.0+".into());
        assert!(holds(r#"python_full_version >= "3.14""#, &env));
        // An environment that is not PEP 440 does not drop requirements.
        env.insert("python_full_version".into(), "three".into());
        assert!(holds(r#"python_full_version < "3""#, &env));
    }

    #[test]
    fn versions_follow_pep_440() {
        let r = parse_pep508("pkg ~= 1.4.2", &origin()).unwrap();
        let v = |s: &str| pep440_rs::Version::from_str(s).unwrap();
        assert!(r.versions().contains(&v("1.4.9")));
        assert!(!r.versions().contains(&v("1.5.0")));
        let r = parse_pep508("pkg ==1.*", &origin()).unwrap();
        assert_eq!(r.specifier, [("==".to_string(), "1.*".to_string())]);
        assert!(r.versions().contains(&v("1.99")));
        assert!(!r.versions().contains(&v("2.0")));
        // Epochs: 1!1.0 is after every version without one.
        let r = parse_pep508("pkg>=2024.1", &origin()).unwrap();
        assert!(r.versions().contains(&v("1!1.0")));
        let r = parse_pep508("pkg==1!2.0", &origin()).unwrap();
        assert_eq!(r.pinned_version(), Some("1!2.0"));
        // Pre-releases, normalized: what pip is handed is canonical.
        let r = parse_pep508("pkg==1.0.0-RC1", &origin()).unwrap();
        assert_eq!(r.pinned_version(), Some("1.0.0rc1"));
        let r = parse_pep508("pkg>=1.0a1,<2", &origin()).unwrap();
        assert!(r.versions().contains(&v("1.0b2")));
        assert_eq!(r.specifier_text(), ">=1.0a1,<2");
        // Arbitrary equality pins the string.
        let r = parse_pep508("pkg===2.0", &origin()).unwrap();
        assert_eq!(r.pinned_version(), Some("2.0"));
        assert!(r.versions().contains(&v("2.0")));
        assert!(!r.versions().contains(&v("2.0.0")));
    }

    #[test]
    fn skipped_requirements_say_which_marker() {
        let set = parse_requirements_text(
            Path::new("requirements.txt"),
            "flask==3.0.3\npywin32==306 ; sys_platform == 'win32'\ntomli==2.0.1 ; python_version < \"3.11\"\n",
        )
        .unwrap();
        let skipped = skipped_by_markers(&set, &env());
        assert_eq!(
            skipped,
            [
                Skipped {
                    name: "pywin32".into(),
                    marker: "sys_platform == 'win32'".into(),
                    origin: Origin {
                        file: "requirements.txt".into(),
                        line: 2
                    },
                    top_level: true,
                },
                Skipped {
                    name: "tomli".into(),
                    marker: "python_version < \"3.11\"".into(),
                    origin: Origin {
                        file: "requirements.txt".into(),
                        line: 3
                    },
                    top_level: true,
                },
            ]
        );
    }

    #[test]
    fn refuses_bad_syntax_with_file_and_line() {
        for bad in [
            "flask=>3.0",
            "flask[async",
            "flask==",
            "-flask",
            "flask==1.0; python_version >",
            "flask ==1.*.2",
            "flask 3.0",
        ] {
            let e = parse_pep508(
                bad,
                &Origin {
                    file: "requirements.txt".into(),
                    line: 7,
                },
            )
            .unwrap_err();
            assert_eq!(
                e.file.as_deref(),
                Some(Path::new("requirements.txt")),
                "{bad}"
            );
            assert_eq!(e.line, Some(7));
            assert!(
                e.to_string()
                    .starts_with("requirements.txt:7: invalid requirement"),
                "{e}"
            );
        }
        let e = parse_pep508("flask=>3.0", &origin()).unwrap_err();
        insta::assert_snapshot!(e.to_string(), @r#"requirements.txt:1: invalid requirement `flask=>3.0`: no such comparison operator "=>", must be one of ~= == != <= >= < > ===; see https://pip.pypa.io/en/stable/reference/requirements-file-format/"#);
    }

    #[test]
    fn vcs_url_and_path_lines() {
        let r = parse_pep508(
            "git+https://github.com/pallets/flask@3.0.3#egg=flask",
            &origin(),
        )
        .unwrap();
        assert_eq!(r.key, "flask");
        assert_eq!(
            r.url.as_deref(),
            Some("git+https://github.com/pallets/flask@3.0.3#egg=flask")
        );
        let e = parse_pep508("git+https://github.com/pallets/flask", &origin()).unwrap_err();
        assert!(e.message.contains("needs a name"), "{e}");
        for path in [
            "./libs/mylib",
            "../x.whl",
            "/abs/path",
            "dist/pkg-1.0-py3-none-any.whl",
        ] {
            let e = parse_pep508(path, &origin()).unwrap_err();
            assert!(e.message.contains("local path requirement"), "{path}: {e}");
        }
    }

    #[test]
    fn parses_files_with_includes_options_hashes_and_continuations() {
        let read = files(&[
            (
                "requirements.txt",
                "# top\n--index-url https://user:s3cret@pypi.example.com/simple\n\
                 --extra-index-url=https://extra.example.com/simple  # comment\n\
                 -r base/common.txt\n-c constraints.txt\n\
                 flask==3.0.3 \\\n    --hash=sha256:AAAA \\\n    --hash sha256:bbbb\n\
                 gunicorn\n\
                 pywin32==306 ; sys_platform == 'win32'\n",
            ),
            ("base/common.txt", "-r ../more.txt\nclick==8.1.7\n"),
            ("more.txt", "--pre\nblinker==1.8.2\n"),
            ("constraints.txt", "gunicorn==22.0.0\nwerkzeug==3.0.3\n"),
        ]);
        let set = parse_requirements_file(Path::new("requirements.txt"), &read).unwrap();
        let names: Vec<_> = set
            .requirements
            .iter()
            .map(|r| {
                (
                    r.key.as_str(),
                    r.origin.file.display().to_string(),
                    r.origin.line,
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("blinker", "more.txt".to_string(), 2),
                ("click", "base/common.txt".to_string(), 2),
                ("flask", "requirements.txt".to_string(), 6),
                ("gunicorn", "requirements.txt".to_string(), 9),
                ("pywin32", "requirements.txt".to_string(), 10),
            ]
        );
        let flask = &set.requirements[2];
        assert_eq!(flask.hashes, ["sha256:aaaa", "sha256:bbbb"]);
        assert_eq!(set.constraints.len(), 2);
        assert_eq!(
            set.pinned_version(&set.requirements[3]),
            Some("22.0.0"),
            "pinned through the constraint"
        );
        assert_eq!(
            set.options.index_url.as_deref(),
            Some("https://user:s3cret@pypi.example.com/simple")
        );
        assert_eq!(
            set.options.extra_index_urls,
            ["https://extra.example.com/simple"]
        );
        assert!(set.options.pre);
        let read_order: Vec<_> = set
            .files
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        assert_eq!(
            read_order,
            [
                "requirements.txt",
                "base/common.txt",
                "more.txt",
                "constraints.txt"
            ]
        );
    }

    #[test]
    fn pip_compile_annotations_tell_transitive_requirements() {
        let text = "\
#
# This file is autogenerated by pip-compile with Python 3.11
#
click==8.1.7 \\
    --hash=sha256:ae74fb96c20a0277a1d615f1e4d73c8414f5a98db8b799a7931d1582f3390c28
    # via flask
colorama==0.4.6 ; platform_system == \"Windows\" \\
    --hash=sha256:4f1d9991f5acc0ca119f9d443620b77f9d6b33703e51011c16baf57afb285fc6
    # via
    #   click
    #   pytest
flask==3.0.3 \\
    --hash=sha256:34e815dfaa43340d1d15a5c3a02b8476004037eb4840b34910c6e21679d288f3
    # via -r requirements.in
pywin32==306 ; sys_platform == \"win32\"  # via app (pyproject.toml)
tomli==2.0.1 ; python_version < \"3.11\"  # via pytest
six==1.16.0  # pinned for an old plugin
";
        let set = parse_requirements_text(Path::new("requirements.txt"), text).unwrap();
        let top: Vec<(&str, bool)> = set
            .requirements
            .iter()
            .map(|r| (r.key.as_str(), r.top_level))
            .collect();
        assert_eq!(
            top,
            [
                ("click", false),
                ("colorama", false),
                ("flask", true),
                ("pywin32", true),
                ("tomli", false),
                ("six", true),
            ]
        );
    }

    #[test]
    fn include_errors() {
        let read = files(&[("requirements.txt", "flask\n-r missing.txt\n")]);
        let e = parse_requirements_file(Path::new("requirements.txt"), &read).unwrap_err();
        assert_eq!(
            (e.file.as_deref(), e.line),
            (Some(Path::new("requirements.txt")), Some(2))
        );
        assert!(
            e.message.contains("included file missing.txt not found"),
            "{e}"
        );

        let read = files(&[("requirements.txt", "-r ../../etc/passwd\n")]);
        let e = parse_requirements_file(Path::new("requirements.txt"), &read).unwrap_err();
        assert!(e.message.contains("outside the app directory"), "{e}");

        let read = files(&[("a.txt", "-r b.txt\nx==1\n"), ("b.txt", "-r a.txt\ny==2\n")]);
        let set = parse_requirements_file(Path::new("a.txt"), &read).unwrap();
        assert_eq!(set.requirements.len(), 2, "cycles are read once");
    }

    #[test]
    fn option_errors() {
        for (text, want) in [
            ("-e .\n", "editable requirement"),
            (
                "--frobnicate\n",
                "unknown or unsupported option `--frobnicate`",
            ),
            (
                "flask==3.0 --global-option=x\n",
                "unsupported per-requirement option",
            ),
            ("flask==3.0 --hash=md5:abc\n", "invalid hash"),
            ("-r\n", "needs a value"),
            ("--find-links ./wheels\n", "--find-links with a local path"),
        ] {
            let e = parse_requirements_text(Path::new("requirements.txt"), text).unwrap_err();
            assert!(e.message.contains(want), "{text}: {e}");
            assert_eq!(e.line, Some(1));
        }
    }

    #[test]
    fn url_fragments_are_not_comments() {
        let set = parse_requirements_text(
            Path::new("r.txt"),
            "https://example.com/x.tar.gz#egg=x # real comment\n",
        )
        .unwrap();
        assert_eq!(
            set.requirements[0].url.as_deref(),
            Some("https://example.com/x.tar.gz#egg=x")
        );
    }

    #[test]
    fn pyproject_dependencies() {
        let text = "[project]\nname = \"app\"\ndependencies = [\n  \"flask>=3\",\n  \"gunicorn==22.0.0\",\n]\n";
        let set = parse_pyproject(Path::new("pyproject.toml"), text)
            .unwrap()
            .unwrap();
        assert_eq!(set.requirements.len(), 2);
        assert_eq!(set.requirements[1].origin.line, 5);
        assert!(
            parse_pyproject(Path::new("pyproject.toml"), "[project]\nname='x'\n")
                .unwrap()
                .is_none()
        );
        let e = parse_pyproject(
            Path::new("pyproject.toml"),
            "[tool.poetry.dependencies]\npython='^3.11'\n",
        )
        .unwrap_err();
        assert!(e.hint.unwrap().contains("poetry lock"));
        let e = parse_pyproject(
            Path::new("pyproject.toml"),
            "[project]\ndependencies = [\"flask=>3\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn pipfile_lock() {
        let text = r#"{
  "_meta": {"sources": [{"name": "pypi", "url": "https://pypi.org/simple", "verify_ssl": true}]},
  "default": {
    "flask": {"hashes": ["sha256:BB", "sha256:aa"], "index": "pypi", "markers": "python_version >= '3.8'", "version": "==3.0.3"},
    "click": {"version": "==8.1.7", "extras": ["x"]}
  },
  "develop": {"pytest": {"version": "==8.0.0"}}
}"#;
        let set = parse_pipfile_lock(Path::new("Pipfile.lock"), text).unwrap();
        assert!(set.is_lock);
        assert_eq!(
            set.options.index_url.as_deref(),
            Some("https://pypi.org/simple")
        );
        let reqs: Vec<_> = set
            .requirements
            .iter()
            .map(|r| (r.key.as_str(), r.pinned_version(), r.origin.line))
            .collect();
        assert_eq!(
            reqs,
            [("click", Some("8.1.7"), 5), ("flask", Some("3.0.3"), 4)]
        );
        assert_eq!(set.requirements[1].hashes, ["sha256:aa", "sha256:bb"]);
        assert_eq!(set.requirements[0].extras, ["x"]);
        let e = parse_pipfile_lock(
            Path::new("Pipfile.lock"),
            r#"{"default": {"x": {"git": "https://g/x"}}}"#,
        )
        .unwrap_err();
        assert!(e.message.contains("comes from `git`"));
    }
}
