//! The application source tree as a build sees it: the files below a
//! directory, less what `.dockerignore` and `.gcloudignore` exclude.

use std::io;
use std::path::{Path, PathBuf};

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
        let mut rules = Vec::new();
        for name in [".dockerignore", ".gcloudignore"] {
            let file = root.join(name);
            match std::fs::read_to_string(&file) {
                Ok(text) => rules.extend(parse_ignore(&file, &text)?),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(SourceError::Io {
                        path: file,
                        source: e,
                    })
                }
            }
        }
        let mut entries = Vec::new();
        let mut walk = walkdir::WalkDir::new(root)
            .min_depth(1)
            .follow_links(false)
            .sort_by_file_name()
            .into_iter();
        while let Some(entry) = walk.next() {
            let entry = entry.map_err(|e| SourceError::Io {
                path: e
                    .path()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| root.to_path_buf()),
                source: e.into(),
            })?;
            let rel = entry
                .path()
                .strip_prefix(root)
                .expect("walkdir stays below root")
                .to_path_buf();
            if is_ignored(&rules, &rel) {
                if entry.file_type().is_dir() && !has_negation(&rules) {
                    walk.skip_current_dir();
                }
                continue;
            }
            if rel.to_str().is_none() {
                return Err(SourceError::NotUtf8 {
                    path: entry.path().to_path_buf(),
                });
            }
            entries.push(rel);
        }
        entries.sort();
        Ok(SourceTree {
            root: root.to_path_buf(),
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

    /// Reads a file of the tree (ignored files are not found).
    pub fn read(&self, rel: impl AsRef<Path>) -> io::Result<Vec<u8>> {
        if !self.contains(rel.as_ref()) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not in the source tree", rel.as_ref().display()),
            ));
        }
        std::fs::read(self.root.join(rel))
    }

    /// Reads a file of the tree as UTF-8 text, `None` when it is absent.
    pub fn read_text(&self, rel: impl AsRef<Path>) -> Result<Option<String>, SourceError> {
        let rel = rel.as_ref();
        if !self.contains(rel) {
            return Ok(None);
        }
        let path = self.root.join(rel);
        std::fs::read_to_string(&path)
            .map(Some)
            .map_err(|source| SourceError::Io { path, source })
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
            entries,
        }
    }
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
