//! The application source tree as a build sees it: the files below a
//! directory, less what `.dockerignore` and `.gcloudignore` exclude.
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
    #[error("{file}:{line}: invalid pattern `{pattern}`")]
    Pattern {
        file: PathBuf,
        line: usize,
        pattern: String,
        #[source]
        source: globset::Error,
    },
}

/// The files of an application, relative to its root, sorted, with ignore
/// rules applied. Directories are listed too (so empty ones survive).
#[derive(Debug, Clone)]
pub struct SourceTree {
    root: PathBuf,
    dir: Arc<Dir>,
    entries: Vec<PathBuf>,
}

impl SourceTree {
    /// Scans `root`, applying `.dockerignore` then `.gcloudignore` if present.
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
        let mut rules = Vec::new();
        for name in [".dockerignore", ".gcloudignore"] {
            match read_beneath(&dir, Path::new(name)) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    rules.extend(parse_ignore(&root.join(name), &text)?)
                }
                Err(e) if e.is_not_found() => {}
                Err(source) => {
                    return Err(SourceError::Beneath {
                        file: name.into(),
                        source,
                    })
                }
            }
        }
        let mut entries = Vec::new();
        let negations = has_negation(&rules);
        dir.walk::<SourceError>(&mut |rel, node| {
            if is_ignored(&rules, rel) {
                // Below an ignored directory, a negation may keep a file.
                return Ok(node.kind == Kind::Dir && negations);
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
        })
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

struct Rule {
    negate: bool,
    glob: GlobMatcher,
}

fn parse_ignore(file: &Path, text: &str) -> Result<Vec<Rule>, SourceError> {
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
                file: file.to_path_buf(),
                line: i + 1,
                pattern: line.to_string(),
                source,
            })?
            .compile_matcher();
        rules.push(Rule { negate, glob });
    }
    Ok(rules)
}

fn has_negation(rules: &[Rule]) -> bool {
    rules.iter().any(|r| r.negate)
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
}
