//! Dependency inputs: `requirements.txt` (with includes, constraints,
//! hashes, markers, extras and index options), `pyproject.toml`
//! `[project] dependencies` and `Pipfile.lock`.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use ftl::PluginError;

use crate::marker::Marker;

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
    pub extras: Vec<String>,
    /// Version clauses, e.g. `[("==", "3.0.3")]`.
    pub specifier: Vec<(String, String)>,
    pub marker: Option<Marker>,
    /// The marker as written (passed on to pip).
    pub marker_text: Option<String>,
    /// A direct URL or VCS reference (`name @ url`, `git+https://...`).
    pub url: Option<String>,
    /// `--hash` values (`sha256:...`), sorted.
    pub hashes: Vec<String>,
    pub origin: Origin,
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

/// Every requirement of an app, from whichever input it has.
#[derive(Debug, Clone, Default)]
pub struct RequirementSet {
    pub requirements: Vec<Requirement>,
    pub constraints: Vec<Requirement>,
    pub options: IndexOptions,
    /// Every file read (relative path, text), in reading order: the exact
    /// inputs of an unpinned install.
    pub files: Vec<(PathBuf, String)>,
    /// The file pip is pointed at for an unpinned install (the top file).
    pub top: Option<PathBuf>,
    /// Whether the source is a lock (`Pipfile.lock`).
    pub is_lock: bool,
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
    for (line_no, line) in logical_lines(text) {
        let origin = Origin {
            file: file.to_path_buf(),
            line: line_no,
        };
        if line.starts_with('-') {
            parse_option_line(set, &origin, &line, constraint, read, depth)?;
        } else {
            let req = parse_requirement_line(&line, &origin)?;
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
/// text) for each non-empty logical line.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        if current.is_empty() {
            start = i + 1;
        }
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
            out.push((start, line));
        }
    }
    let line = current.trim().to_string();
    if !line.is_empty() {
        out.push((start, line));
    }
    out
}

/// pip's rule: `#` at the start of a line or after whitespace starts a
/// comment (so URL fragments like `#egg=` survive).
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return line[..i].trim_end();
        }
    }
    line.trim_end()
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

/// Parses a PEP 508 requirement (or a pip URL line).
pub fn parse_pep508(spec: &str, origin: &Origin) -> Result<Requirement, PluginError> {
    let invalid =
        |why: &str| err(origin, format!("invalid requirement `{spec}`: {why}")).hint(FORMAT_DOC);

    if is_vcs_or_url(spec) {
        // `git+https://host/repo@rev#egg=name` style: pip derives the name
        // from `#egg=`.
        let (url, marker_text) = match spec.split_once(" ;").or_else(|| spec.split_once("; ")) {
            Some((u, m)) => (u.trim(), Some(m.trim().to_string())),
            None => (spec, None),
        };
        let name = url
            .split_once("#egg=")
            .map(|(_, e)| e.split('&').next().unwrap_or("").to_string())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid("a URL requirement needs a name: write `name @ URL`"))?;
        let marker = marker_text
            .as_deref()
            .map(Marker::parse)
            .transpose()
            .map_err(|e| invalid(&e))?;
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

    let chars: Vec<char> = spec.chars().collect();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    // name
    let start = i;
    while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "._-".contains(chars[i])) {
        i += 1;
    }
    let name: String = chars[start..i].iter().collect();
    if name.is_empty() {
        return Err(invalid("expected a package name"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !name.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(invalid(&format!("`{name}` is not a valid package name")));
    }
    skip_ws(&mut i);
    // extras
    let mut extras = Vec::new();
    if chars.get(i) == Some(&'[') {
        let end = chars[i..]
            .iter()
            .position(|&c| c == ']')
            .ok_or_else(|| invalid("missing `]` after the extras"))?;
        let inner: String = chars[i + 1..i + end].iter().collect();
        for e in inner.split(',') {
            let e = e.trim();
            if e.is_empty()
                || !e
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return Err(invalid(&format!("invalid extra `{e}`")));
            }
            extras.push(normalize(e));
        }
        i += end + 1;
        skip_ws(&mut i);
    }
    let rest: String = chars[i..].iter().collect();
    let (version_part, marker_text) = match rest.split_once(';') {
        Some((v, m)) => (v.trim().to_string(), Some(m.trim().to_string())),
        None => (rest.trim().to_string(), None),
    };
    let mut url = None;
    let mut specifier = Vec::new();
    if let Some(u) = version_part.strip_prefix('@') {
        let u = u.trim();
        if u.is_empty() || !u.contains(':') {
            return Err(invalid("expected a URL after `@`"));
        }
        // `name @ url;marker` needs a space before `;` (pip's rule); with
        // the split above a URL with `;` in it would be cut, which PEP 508
        // also forbids.
        url = Some(u.to_string());
    } else {
        let mut v = version_part.as_str();
        if let Some(inner) = v.strip_prefix('(') {
            v = inner
                .strip_suffix(')')
                .ok_or_else(|| invalid("missing `)` after the version"))?;
        }
        if !v.trim().is_empty() {
            for clause in v.split(',') {
                let clause = clause.trim();
                let op = ["===", "~=", "==", "!=", "<=", ">=", "<", ">"]
                    .into_iter()
                    .find(|op| clause.starts_with(op))
                    .ok_or_else(|| {
                        invalid(&format!("expected a version operator (==, >=, <=, ~=, !=, <, >) before `{clause}`"))
                    })?;
                let ver = clause[op.len()..].trim();
                let valid = !ver.is_empty()
                    && ver
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".*+!_-".contains(c))
                    && (op == "===" || ver.starts_with(|c: char| c.is_ascii_digit() || c == 'v'))
                    && (!ver.contains('*')
                        || (ver.ends_with(".*")
                            && matches!(op, "==" | "!=")
                            && !ver[..ver.len() - 2].contains('*')));
                if !valid {
                    return Err(invalid(&format!(
                        "`{clause}` is not a valid version clause"
                    )));
                }
                specifier.push((op.to_string(), ver.to_string()));
            }
        }
    }
    let marker = match &marker_text {
        Some(m) if m.is_empty() => return Err(invalid("empty marker after `;`")),
        Some(m) => Some(Marker::parse(m).map_err(|e| invalid(&e))?),
        None => None,
    };
    Ok(Requirement {
        key: normalize(&name),
        name,
        extras,
        specifier,
        marker,
        marker_text,
        url,
        hashes: Vec::new(),
        origin: origin.clone(),
    })
}

/// Reads `[project] dependencies` of a pyproject.toml. `Ok(None)` when it
/// declares none.
pub fn parse_pyproject(file: &Path, text: &str) -> Result<Option<RequirementSet>, PluginError> {
    let doc: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start].lines().count().max(1));
        PluginError::new(format!("invalid TOML: {}", e.message())).in_file(file, line)
    })?;
    let project = doc.get("project").and_then(|p| p.as_table());
    let deps = project.and_then(|p| p.get("dependencies"));
    let Some(deps) = deps else {
        if doc.get("tool").and_then(|t| t.get("poetry")).is_some() {
            return Err(PluginError::new("Poetry dependencies (`[tool.poetry]`) are not supported")
                .in_file(file, None)
                .hint("export a lock with `poetry export -f requirements.txt -o requirements.txt`, or use `[project] dependencies`"));
        }
        return Ok(None);
    };
    let list = deps.as_array().ok_or_else(|| {
        PluginError::new("`[project] dependencies` must be a list of strings")
            .in_file(file, line_of(text, "dependencies"))
    })?;
    let mut set = RequirementSet {
        files: vec![(file.to_path_buf(), text.to_string())],
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

fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

/// Reads the `default` packages of a Pipfile.lock.
pub fn parse_pipfile_lock(file: &Path, text: &str) -> Result<RequirementSet, PluginError> {
    let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        PluginError::new(format!("invalid JSON: {e}")).in_file(file, Some(e.line()))
    })?;
    let mut set = RequirementSet {
        files: vec![(file.to_path_buf(), text.to_string())],
        is_lock: true,
        ..RequirementSet::default()
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            file: "requirements.txt".into(),
            line: 1,
        }
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
            parse_pep508("pkg===1.0-weird", &origin())
                .unwrap()
                .pinned_version(),
            Some("1.0-weird")
        );
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
        insta::assert_snapshot!(e.to_string(), @"requirements.txt:1: invalid requirement `flask=>3.0`: expected a version operator (==, >=, <=, ~=, !=, <, >) before `=>3.0`; see https://pip.pypa.io/en/stable/reference/requirements-file-format/");
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
        assert!(e.hint.unwrap().contains("poetry export"));
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
