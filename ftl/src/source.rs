//! The application source tree as a build sees it: the files below a
//! directory, less what its ignore file excludes.
//!
//! One ignore file is read, as the tool it was written for reads it:
//! `.gcloudignore` (what `gcloud` uploads) with gitignore's rules, its
//! `#!include:FILE` lines included; else `.dockerignore` with Docker's
//! rules (patterns anchored at the context root, `**`, `!` exceptions,
//! the last matching line wins, an exception may re-include a file below an
//! excluded directory). With both, `.gcloudignore` wins: a `.dockerignore`
//! is often written for a Dockerfile that builds elsewhere (it leaves out
//! `src` and `pom.xml` and copies a jar), and `.gcloudignore` is the file a
//! source deploy reads. Every rule keeps its file and line, so a build can
//! say which line left out a file it needed ([`SourceTree::excluded_by`]).
//!
//! The source may be an upload (`ftl serve`): every read goes through the
//! root's directory descriptor ([`crate::beneath`]). A file read by name
//! ([`SourceTree::read`], [`SourceTree::read_text`]) may be a link, but its
//! resolution never leaves the root; an entry read as an entry
//! ([`SourceTree::dir`], for layers, keys and copies) is never followed.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::beneath::{Beneath, BeneathError, Dir, Kind};

use globset::{GlobBuilder, GlobMatcher};
use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// An error reading the source tree.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source directory {path} does not exist; pass the directory that holds your app")]
    Missing { path: PathBuf },
    #[error("source path {path} is not a directory; pass the directory that holds your app")]
    NotADirectory { path: PathBuf },
    #[error("failed to read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Walk(#[from] BeneathError),
    #[error("cannot read `{file}` of the source: {source}")]
    Beneath {
        file: PathBuf,
        #[source]
        source: BeneathError,
    },
    #[error("file name {path:?} is not valid UTF-8, which image layers cannot name; rename it, or list it in .dockerignore")]
    NotUtf8 { path: PathBuf },
    #[error("{file}:{line}: invalid pattern `{pattern}`: {message}")]
    Pattern {
        file: PathBuf,
        line: usize,
        pattern: String,
        message: String,
    },
    #[error("{file}:{line}: {message}")]
    Include {
        file: PathBuf,
        line: usize,
        message: String,
    },
}

/// The files of an application, relative to its root, sorted, with ignore
/// rules applied. Directories are listed too (so empty ones survive).
#[derive(Debug, Clone)]
pub struct SourceTree {
    root: PathBuf,
    dir: Arc<Dir>,
    entries: Vec<PathBuf>,
    ignore: Arc<IgnoreRules>,
    warnings: Vec<String>,
}

impl SourceTree {
    /// Scans `root`, leaving out what its ignore file excludes:
    /// `.gcloudignore` with gitignore's rules (and `#!include:FILE`) when
    /// there is one, else `.dockerignore` with Docker's rules. Only one is
    /// read: with both, `.gcloudignore` wins (and a warning says so).
    pub fn scan(root: &Path) -> Result<Self, SourceError> {
        let meta = std::fs::metadata(root).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                SourceError::Missing {
                    path: root.to_path_buf(),
                }
            } else {
                SourceError::Io {
                    path: root.to_path_buf(),
                    source: e,
                }
            }
        })?;
        if !meta.is_dir() {
            return Err(SourceError::NotADirectory {
                path: root.to_path_buf(),
            });
        }
        let dir = Dir::open(root).map_err(|source| SourceError::Beneath {
            file: PathBuf::new(),
            source,
        })?;
        let (ignore, warnings) = IgnoreRules::read(&dir, root)?;
        let mut entries = Vec::new();
        dir.walk::<SourceError>(&mut |rel, node| {
            if let Some(ignored) = ignore.ignores(rel, node.kind == Kind::Dir) {
                // Below a directory Docker's rules ignore, a negation may
                // keep a file; gitignore's rules never look below.
                return Ok(node.kind == Kind::Dir && ignored.look_below);
            }
            if rel.to_str().is_none() {
                return Err(SourceError::NotUtf8 {
                    path: root.join(rel),
                });
            }
            entries.push(rel.to_path_buf());
            Ok(true)
        })?;
        entries.sort();
        Ok(SourceTree {
            root: root.to_path_buf(),
            dir: Arc::new(dir),
            entries,
            ignore: Arc::new(ignore),
            warnings,
        })
    }

    /// The ignore file this tree was read with (`.gcloudignore` or
    /// `.dockerignore`), if any.
    pub fn ignore_file(&self) -> Option<&Path> {
        self.ignore.file.as_deref()
    }

    /// What the user should know about how the tree was read (an ignore
    /// file that was not read because another one wins).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Why `rel` is not in the tree although it exists below the root: the
    /// ignore rule that left it out. `None` when it is in the tree, does
    /// not exist, or no rule excludes it.
    pub fn excluded_by(&self, rel: impl AsRef<Path>) -> Option<Exclusion> {
        let rel = rel.as_ref();
        if self.contains(rel) {
            return None;
        }
        let node = self.dir.stat(rel).ok().flatten()?;
        self.ignore.explain(rel, node.kind == Kind::Dir)
    }

    /// The directory the tree was read from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every kept path (files, links and directories), relative and sorted.
    pub fn entries(&self) -> &[PathBuf] {
        &self.entries
    }

    /// Whether `rel` is in the tree.
    pub fn contains(&self, rel: impl AsRef<Path>) -> bool {
        self.entries
            .binary_search_by(|p| p.as_path().cmp(rel.as_ref()))
            .is_ok()
    }

    /// The root, opened: entries read through it (with [`Dir::stat`],
    /// [`Dir::open_file`], [`Dir::copy_entries`]) are never followed.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// The directory `rel` of the tree (empty: the root) as a layer input
    /// names it: reached without links.
    pub fn beneath(&self, rel: impl Into<PathBuf>) -> Beneath {
        Beneath::new(&self.root, rel)
    }

    /// Opens a file of the tree by name (ignored files are not found): a
    /// link is followed only while it resolves below the root.
    pub fn open(&self, rel: impl AsRef<Path>) -> Result<std::fs::File, SourceError> {
        let rel = rel.as_ref();
        let err = |source| SourceError::Beneath {
            file: rel.to_path_buf(),
            source,
        };
        if !self.contains(rel) {
            return Err(err(BeneathError::Io {
                path: rel.to_path_buf(),
                source: io::Error::new(io::ErrorKind::NotFound, "not in the source tree"),
            }));
        }
        self.dir.open_file_beneath(rel).map_err(err)
    }

    /// Reads a file of the tree (ignored files are not found), as
    /// [`SourceTree::open`] opens it.
    pub fn read(&self, rel: impl AsRef<Path>) -> Result<Vec<u8>, SourceError> {
        let rel = rel.as_ref();
        let mut f = self.open(rel)?;
        let mut out = Vec::new();
        f.read_to_end(&mut out).map_err(|source| SourceError::Io {
            path: self.root.join(rel),
            source,
        })?;
        Ok(out)
    }

    /// Reads a file of the tree as UTF-8 text, `None` when it is absent.
    pub fn read_text(&self, rel: impl AsRef<Path>) -> Result<Option<String>, SourceError> {
        let rel = rel.as_ref();
        if !self.contains(rel) {
            return Ok(None);
        }
        let bytes = self.read(rel)?;
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|e| SourceError::Io {
                path: self.root.join(rel),
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            })
    }

    /// A copy of this tree without the entries `drop` rejects (and without
    /// anything below a rejected directory).
    pub fn without(&self, drop: impl Fn(&Path) -> bool) -> SourceTree {
        let mut dropped: Vec<&Path> = Vec::new();
        let mut entries = Vec::new();
        for e in &self.entries {
            if dropped.iter().any(|d| e.starts_with(d)) {
                continue;
            }
            if drop(e) {
                dropped.push(e);
                continue;
            }
            entries.push(e.clone());
        }
        SourceTree {
            root: self.root.clone(),
            dir: self.dir.clone(),
            entries,
            ignore: self.ignore.clone(),
            warnings: self.warnings.clone(),
        }
    }
}

fn read_beneath(dir: &Dir, rel: &Path) -> Result<Vec<u8>, BeneathError> {
    let mut f = dir.open_file_beneath(rel)?;
    let mut out = Vec::new();
    f.read_to_end(&mut out).map_err(|source| BeneathError::Io {
        path: dir.path().join(rel),
        source,
    })?;
    Ok(out)
}

/// The ignore rule that left a path out of the tree: its file, line and
/// text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exclusion {
    /// The ignore file, relative to the root (`.dockerignore`, or a file a
    /// `.gcloudignore` included).
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    pub pattern: String,
}

impl std::fmt::Display for Exclusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} line {} (`{}`)",
            self.file.display(),
            self.line,
            self.pattern
        )
    }
}

/// How many `#!include:` levels deep a `.gcloudignore` may go.
const MAX_INCLUDE_DEPTH: usize = 8;

/// The rules of the one ignore file a tree is read with.
struct IgnoreRules {
    file: Option<PathBuf>,
    matcher: Matcher,
}

impl std::fmt::Debug for IgnoreRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IgnoreRules")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

enum Matcher {
    None,
    /// `.dockerignore`: Docker's rules, in order.
    Docker(Vec<Rule>),
    /// `.gcloudignore`: gitignore's rules; each line's file, number and
    /// text, to name the line that matched.
    Git {
        gitignore: Gitignore,
        lines: Vec<(PathBuf, usize, String)>,
    },
}

/// A path an ignore file excludes.
struct Ignored {
    /// The walk must still look below (a directory Docker's rules exclude,
    /// when a later `!` line may keep something in it).
    look_below: bool,
}

impl IgnoreRules {
    /// The rules of `root`'s ignore file, and warnings about how it was
    /// chosen.
    fn read(dir: &Dir, root: &Path) -> Result<(IgnoreRules, Vec<String>), SourceError> {
        let gcloud = read_optional(dir, ".gcloudignore")?;
        let docker = read_optional(dir, ".dockerignore")?;
        let mut warnings = Vec::new();
        if let Some(text) = gcloud {
            if docker.is_some() {
                warnings.push(
                    ".dockerignore is not read: .gcloudignore decides what goes into the \
                     image (with gitignore's rules); list there what .dockerignore \
                     leaves out that must stay out"
                        .to_string(),
                );
            }
            let mut builder = GitignoreBuilder::new(root);
            let mut lines = Vec::new();
            add_gcloudignore(
                dir,
                root,
                Path::new(".gcloudignore"),
                &text,
                0,
                &mut builder,
                &mut lines,
            )?;
            let gitignore = builder.build().map_err(|e| SourceError::Pattern {
                file: root.join(".gcloudignore"),
                line: 0,
                pattern: String::new(),
                message: e.to_string(),
            })?;
            return Ok((
                IgnoreRules {
                    file: Some(".gcloudignore".into()),
                    matcher: Matcher::Git { gitignore, lines },
                },
                warnings,
            ));
        }
        if let Some(text) = docker {
            let rules = parse_dockerignore(root, Path::new(".dockerignore"), &text)?;
            return Ok((
                IgnoreRules {
                    file: Some(".dockerignore".into()),
                    matcher: Matcher::Docker(rules),
                },
                warnings,
            ));
        }
        Ok((
            IgnoreRules {
                file: None,
                matcher: Matcher::None,
            },
            warnings,
        ))
    }

    /// Whether the walk leaves `rel` out (its parents were kept).
    fn ignores(&self, rel: &Path, is_dir: bool) -> Option<Ignored> {
        match &self.matcher {
            Matcher::None => None,
            Matcher::Docker(rules) => is_ignored(rules, rel).then(|| Ignored {
                look_below: rules.iter().any(|r| r.negate),
            }),
            Matcher::Git { gitignore, .. } => gitignore
                .matched(rel, is_dir)
                .is_ignore()
                .then_some(Ignored { look_below: false }),
        }
    }

    /// The rule that excludes `rel`, which exists and is not in the tree.
    fn explain(&self, rel: &Path, is_dir: bool) -> Option<Exclusion> {
        match &self.matcher {
            Matcher::None => None,
            Matcher::Docker(rules) => rules
                .iter()
                .rev()
                .find(|r| {
                    rel.ancestors()
                        .filter(|a| !a.as_os_str().is_empty())
                        .any(|a| r.glob.is_match(a))
                })
                .filter(|r| !r.negate)
                .map(|r| Exclusion {
                    file: r.file.clone(),
                    line: r.line,
                    pattern: r.text.clone(),
                }),
            Matcher::Git { gitignore, lines } => {
                // The outermost excluded directory decides: the walk never
                // looked below it.
                let mut ancestors: Vec<&Path> = rel
                    .ancestors()
                    .filter(|a| !a.as_os_str().is_empty())
                    .collect();
                ancestors.reverse();
                ancestors.into_iter().find_map(|a| {
                    let dir = a != rel || is_dir;
                    match gitignore.matched(a, dir) {
                        ignore::Match::Ignore(glob) => {
                            let from = glob.from().map(Path::to_path_buf).unwrap_or_default();
                            lines
                                .iter()
                                .rev()
                                .find(|(f, _, t)| *f == from && t == glob.original())
                                .map(|(f, n, t)| Exclusion {
                                    file: f.clone(),
                                    line: *n,
                                    pattern: t.clone(),
                                })
                        }
                        _ => None,
                    }
                })
            }
        }
    }
}

fn read_optional(dir: &Dir, name: &str) -> Result<Option<String>, SourceError> {
    match read_beneath(dir, Path::new(name)) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.is_not_found() => Ok(None),
        Err(source) => Err(SourceError::Beneath {
            file: name.into(),
            source,
        }),
    }
}

/// Adds the lines of `file` (`.gcloudignore`, or a file it includes) to
/// `builder`, following `#!include:FILE` lines as gcloud does: FILE lies
/// in the same directory, and its patterns are read as if written here.
fn add_gcloudignore(
    dir: &Dir,
    root: &Path,
    file: &Path,
    text: &str,
    depth: usize,
    builder: &mut GitignoreBuilder,
    lines: &mut Vec<(PathBuf, usize, String)>,
) -> Result<(), SourceError> {
    for (i, raw) in text.lines().enumerate() {
        let bad = |message: String| SourceError::Include {
            file: root.join(file),
            line: i + 1,
            message,
        };
        if let Some(included) = raw.strip_prefix("#!include:") {
            let included = included.trim();
            if included.is_empty() || included.contains('/') {
                return Err(bad(format!(
                    "`#!include:{included}` must name a file in the same directory, as gcloud requires"
                )));
            }
            if depth >= MAX_INCLUDE_DEPTH {
                return Err(bad(format!(
                    "`#!include:{included}` nests more than {MAX_INCLUDE_DEPTH} includes deep (a cycle?)"
                )));
            }
            let Some(text) = read_optional(dir, included)? else {
                return Err(bad(format!(
                    "`#!include:{included}`: {included} does not exist"
                )));
            };
            add_gcloudignore(
                dir,
                root,
                Path::new(included),
                &text,
                depth + 1,
                builder,
                lines,
            )?;
            continue;
        }
        let line = raw.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        builder
            .add_line(Some(file.to_path_buf()), line)
            .map_err(|e| SourceError::Pattern {
                file: root.join(file),
                line: i + 1,
                pattern: line.to_string(),
                message: e.to_string(),
            })?;
        lines.push((file.to_path_buf(), i + 1, line.to_string()));
    }
    Ok(())
}

struct Rule {
    negate: bool,
    glob: GlobMatcher,
    /// Where the rule was written, for messages.
    file: PathBuf,
    line: usize,
    text: String,
}

fn parse_dockerignore(root: &Path, file: &Path, text: &str) -> Result<Vec<Rule>, SourceError> {
    let mut rules = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (negate, pat) = match line.strip_prefix('!') {
            Some(p) => (true, p.trim()),
            None => (false, line),
        };
        // Patterns are relative to the context root, as docker reads them.
        let pat = pat.trim_start_matches('/').trim_end_matches('/');
        let pat = pat.strip_prefix("./").unwrap_or(pat);
        if pat.is_empty() {
            continue;
        }
        let glob = GlobBuilder::new(pat)
            .literal_separator(true)
            .build()
            .map_err(|source| SourceError::Pattern {
                file: root.join(file),
                line: i + 1,
                pattern: line.to_string(),
                message: source.to_string(),
            })?
            .compile_matcher();
        rules.push(Rule {
            negate,
            glob,
            file: file.to_path_buf(),
            line: i + 1,
            text: line.to_string(),
        });
    }
    Ok(rules)
}

/// Docker semantics: the last matching rule wins; a pattern that matches a
/// directory excludes everything below it.
fn is_ignored(rules: &[Rule], rel: &Path) -> bool {
    let mut ignored = false;
    for rule in rules {
        if rel
            .ancestors()
            .filter(|a| !a.as_os_str().is_empty())
            .any(|a| rule.glob.is_match(a))
        {
            ignored = !rule.negate;
        }
    }
    ignored
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_source_link_chain_cannot_read_a_host_file() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("host-file"), b"HOST SECRET").unwrap();
        let root = t.path().join("src");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        symlink("../..", root.join("a/b/s")).unwrap();
        symlink("a/b/s/../../host-file", root.join("requirements.txt")).unwrap();
        // Absolute links leave the root too.
        symlink(t.path().join("host-file"), root.join("package.json")).unwrap();
        // A link that stays inside is followed.
        std::fs::write(root.join("a/real.txt"), b"flask\n").unwrap();
        symlink("a/b/s/a/real.txt", root.join("inside.txt")).unwrap();
        let tree = SourceTree::scan(&root).unwrap();
        assert!(tree.contains("requirements.txt"));
        let e = tree.read_text("requirements.txt").unwrap_err();
        let msg = crate::error_chain(&e);
        assert!(msg.contains("`requirements.txt`"), "{msg}");
        assert!(msg.contains("resolves outside"), "{msg}");
        assert!(!msg.contains("HOST SECRET"));
        assert!(tree.read("package.json").is_err());
        assert_eq!(tree.read_text("inside.txt").unwrap().unwrap(), "flask\n");
        // As an entry (for the app layer), the link is a link.
        let n = tree
            .dir()
            .stat(Path::new("requirements.txt"))
            .unwrap()
            .unwrap();
        assert_eq!(n.kind, Kind::Symlink);
    }

    #[test]
    fn dockerignore_rules() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for f in [
            "main.py",
            "a/x.pyc",
            "a/keep.py",
            "logs/1.log",
            "logs/keep.log",
            "node_modules/m/index.js",
        ] {
            std::fs::create_dir_all(r.join(f).parent().unwrap()).unwrap();
            std::fs::write(r.join(f), "x").unwrap();
        }
        std::fs::write(
            r.join(".dockerignore"),
            "# c\n**/*.pyc\nlogs\n!logs/keep.log\n/node_modules/\n",
        )
        .unwrap();
        let t = SourceTree::scan(r).unwrap();
        let names: Vec<String> = t
            .entries()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                ".dockerignore",
                "a",
                "a/keep.py",
                "logs/keep.log",
                "main.py"
            ]
        );
    }

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (f, text) in files {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    #[test]
    fn gcloudignore_has_gitignore_rules_and_includes() {
        let d = tree(&[
            (
                ".gcloudignore",
                "# gcloud\nsecret.env\n#!include:.gitignore\nbuild/\n!build/keep\n",
            ),
            (".gitignore", "*.log\n"),
            (".dockerignore", "main.py\n"),
            ("main.py", "x"),
            ("sub/secret.env", "TOKEN=1"),
            ("secret.env", "TOKEN=1"),
            ("sub/app.log", "x"),
            ("build/keep", "x"),
        ]);
        let t = SourceTree::scan(d.path()).unwrap();
        let names: Vec<String> = t
            .entries()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        // gitignore: an unanchored name matches at any depth; a file below
        // an excluded directory cannot be re-included; .dockerignore is not
        // read when .gcloudignore exists.
        assert_eq!(
            names,
            [
                ".dockerignore",
                ".gcloudignore",
                ".gitignore",
                "main.py",
                "sub"
            ]
        );
        assert_eq!(t.ignore_file(), Some(Path::new(".gcloudignore")));
        assert!(t.warnings()[0].contains(".dockerignore is not read"));
        let why = t.excluded_by("sub/secret.env").unwrap();
        assert_eq!(
            (why.file.as_path(), why.line),
            (Path::new(".gcloudignore"), 2)
        );
        let why = t.excluded_by("sub/app.log").unwrap();
        assert_eq!(
            (why.file.as_path(), why.line, why.pattern.as_str()),
            (Path::new(".gitignore"), 1, "*.log")
        );
        let why = t.excluded_by("build/keep").unwrap();
        assert_eq!(why.line, 4);
        assert_eq!(t.excluded_by("main.py"), None);
        assert_eq!(t.excluded_by("nope"), None);
    }

    #[test]
    fn a_gcloudignore_include_must_exist_and_stay_in_the_directory() {
        let d = tree(&[(".gcloudignore", "a\n#!include:.gitignore\n")]);
        let e = SourceTree::scan(d.path()).unwrap_err().to_string();
        assert!(
            e.contains(".gcloudignore:2") && e.contains("does not exist"),
            "{e}"
        );
        let d = tree(&[(".gcloudignore", "#!include:sub/.gitignore\n")]);
        let e = SourceTree::scan(d.path()).unwrap_err().to_string();
        assert!(e.contains("same directory"), "{e}");
        let d = tree(&[(".gcloudignore", "#!include:.gcloudignore\n")]);
        assert!(SourceTree::scan(d.path()).is_err());
    }

    #[test]
    fn a_dockerignore_line_that_excludes_a_file_is_named() {
        let d = tree(&[
            (
                ".dockerignore",
                "# for the Dockerfile\n*\n!target/app.jar\n",
            ),
            ("pom.xml", "<project/>"),
            ("src/main/java/A.java", "class A {}"),
            ("target/app.jar", "x"),
        ]);
        let t = SourceTree::scan(d.path()).unwrap();
        let names: Vec<String> = t
            .entries()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(names, ["target/app.jar"]);
        let why = t.excluded_by("pom.xml").unwrap();
        assert_eq!(why.to_string(), ".dockerignore line 2 (`*`)");
        assert_eq!(t.excluded_by("target/app.jar"), None);
    }
}
