//! The Python versions an app says it runs on (`requires-python`), read
//! from whichever file declares it, and checked against the base image's
//! interpreter before anything is installed.
//!
//! Poetry's constraint syntax (`^3.9`, `~3.9`, `3.9.*`, `>=3.9 <4`, `||`)
//! is converted to PEP 440 here, for `requires-python` and for the
//! constraints of poetry.lock.

use std::path::Path;
use std::str::FromStr;

use ftl::PluginError;
use pep440_rs::{Version, VersionSpecifiers};

use crate::requirements::{key_line, line_of, Origin};

/// Converts a Poetry version constraint to PEP 440: `^3.9` is
/// `>=3.9,<4.0`, `~3.9` is `>=3.9,<3.10`, `3.9.*` is `==3.9.*`, a bare
/// `3.9` is `==3.9`, `*` is empty; clauses may be separated by commas or
/// spaces. Alternatives (`||`, which PEP 440 lacks) are kept, converted,
/// as `A || B`. `None` when a clause is not a version.
pub fn poetry_to_pep440(constraint: &str) -> Option<String> {
    let mut alternatives = Vec::new();
    for alt in constraint.split("||") {
        let mut clauses = Vec::new();
        for clause in clause_tokens(alt) {
            clauses.extend(convert_clause(&clause)?);
        }
        alternatives.push(clauses.join(","));
    }
    if alternatives.iter().any(String::is_empty) {
        // One alternative allows anything: so does the whole.
        return Some(String::new());
    }
    Some(alternatives.join(" || "))
}

/// The clauses of one alternative: split at commas and spaces, an
/// operator written apart from its version joined back to it.
fn clause_tokens(alt: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut pending = String::new();
    for tok in alt.split([',', ' ', '\t']).filter(|t| !t.is_empty()) {
        if tok.chars().all(|c| "<>=!~^".contains(c)) {
            pending.push_str(tok);
            continue;
        }
        out.push(format!("{pending}{tok}"));
        pending.clear();
    }
    if !pending.is_empty() {
        out.push(pending);
    }
    out
}

/// The release numbers of `v` (`3.9.1` -> [3, 9, 1]); `None` when `v` is
/// not a plain release.
fn release(v: &str) -> Option<Vec<u64>> {
    v.split('.').map(|p| p.parse().ok()).collect()
}

fn join(parts: &[u64]) -> String {
    parts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

fn convert_clause(clause: &str) -> Option<Vec<String>> {
    let clause = clause.trim();
    if clause.is_empty() || clause == "*" {
        return Some(Vec::new());
    }
    for op in ["===", "==", "!=", "~=", "<=", ">=", "<", ">"] {
        if let Some(v) = clause.strip_prefix(op) {
            let v = v.trim();
            let out = match v.strip_suffix(".x") {
                Some(prefix) => format!("{op}{prefix}.*"),
                None => format!("{op}{v}"),
            };
            // Checked, so that a typo is reported as the user wrote it.
            VersionSpecifiers::from_str(&out).ok()?;
            return Some(vec![out]);
        }
    }
    if let Some(v) = clause.strip_prefix('^') {
        let parts = release(v.trim())?;
        // The first non-zero part may not change (of the parts written).
        let keep = parts
            .iter()
            .position(|p| *p != 0)
            .unwrap_or(parts.len().saturating_sub(1));
        let mut upper: Vec<u64> = parts[..=keep].to_vec();
        upper[keep] += 1;
        upper.resize(parts.len(), 0);
        return Some(vec![
            format!(">={}", join(&parts)),
            format!("<{}", join(&upper)),
        ]);
    }
    if let Some(v) = clause.strip_prefix('~') {
        let parts = release(v.trim())?;
        let keep = if parts.len() >= 2 { 1 } else { 0 };
        let mut upper: Vec<u64> = parts[..=keep].to_vec();
        upper[keep] += 1;
        return Some(vec![
            format!(">={}", join(&parts)),
            format!("<{}", join(&upper)),
        ]);
    }
    let wildcard = clause
        .strip_suffix(".*")
        .or_else(|| clause.strip_suffix(".x"));
    let out = match wildcard {
        Some(prefix) => format!("=={prefix}.*"),
        None => format!("=={clause}"),
    };
    VersionSpecifiers::from_str(&out).ok()?;
    Some(vec![out])
}

/// `[options] python_requires` of a setup.cfg.
pub(crate) fn from_setup_cfg(file: &Path, text: &str) -> Option<(String, Origin)> {
    let mut in_options = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            in_options = t == "[options]";
            continue;
        }
        if !in_options || line.starts_with(char::is_whitespace) {
            continue;
        }
        let Some((key, value)) = t.split_once(['=', ':']) else {
            continue;
        };
        if matches!(key.trim(), "python_requires" | "python-requires") {
            let value = value.trim();
            return (!value.is_empty()).then(|| {
                (
                    value.to_string(),
                    Origin {
                        file: file.to_path_buf(),
                        line: i + 1,
                    },
                )
            });
        }
    }
    None
}

/// A literal `python_requires="..."` in a setup.py.
pub(crate) fn from_setup_py(file: &Path, text: &str) -> Option<(String, Origin)> {
    let at = text.find("python_requires")?;
    let rest = text[at + "python_requires".len()..].trim_start();
    let rest = rest.strip_prefix('=')?.trim_start();
    let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let value = &rest[1..][..rest[1..].find(quote)?];
    Some((
        value.trim().to_string(),
        Origin {
            file: file.to_path_buf(),
            line: text[..at].matches('\n').count() + 1,
        },
    ))
}

/// `[project] requires-python`, else Poetry's `python` dependency
/// (converted to PEP 440), of a pyproject.toml.
pub(crate) fn from_pyproject(
    file: &Path,
    text: &str,
    doc: &toml::Table,
) -> Option<(String, Origin)> {
    let origin = |key: &str| Origin {
        file: file.to_path_buf(),
        line: key_line(text, key).unwrap_or(1),
    };
    if let Some(spec) = doc
        .get("project")
        .and_then(|p| p.get("requires-python"))
        .and_then(|v| v.as_str())
    {
        return Some((spec.trim().to_string(), origin("requires-python")));
    }
    let python = doc
        .get("tool")?
        .get("poetry")?
        .get("dependencies")?
        .get("python")?;
    let constraint = python
        .as_str()
        .or_else(|| python.get("version").and_then(|v| v.as_str()))?;
    // A constraint that does not convert is checked as written: its
    // error then names it.
    let spec = poetry_to_pep440(constraint).unwrap_or_else(|| constraint.to_string());
    // The `python` key of `[tool.poetry.dependencies]`.
    let section = line_of(text, "[tool.poetry.dependencies]").unwrap_or(1);
    let line = text
        .lines()
        .enumerate()
        .skip(section)
        .find(|(_, l)| key_line(l, "python").is_some())
        .map(|(i, _)| i + 1)
        .unwrap_or(section);
    Some((
        spec,
        Origin {
            file: file.to_path_buf(),
            line,
        },
    ))
}

/// Checks the interpreter's `version` (the base image's, e.g. `3.11.2`)
/// against `spec`, a PEP 440 specifier (`>=3.9`), or alternatives of them
/// joined by `||` (as Poetry's constraints convert), written at `origin`.
/// Pre-release interpreters compare as pip compares them (`3.13.0rc1` is
/// not `>=3.13`).
pub fn check_requires_python(
    spec: &str,
    origin: &Origin,
    version: &str,
) -> Result<(), PluginError> {
    let at = |e: PluginError| e.in_file(&origin.file, Some(origin.line));
    let interpreter = Version::from_str(version.trim().trim_end_matches('+')).map_err(|e| {
        PluginError::new(format!(
            "the base image's Python version `{version}` is not a PEP 440 version: {e}"
        ))
    })?;
    let mut alternatives = Vec::new();
    for alt in spec.split("||") {
        let specifiers = VersionSpecifiers::from_str(alt.trim()).map_err(|e| {
            at(PluginError::new(format!("invalid requires-python `{spec}`: {e}")).hint(
                "write a PEP 440 specifier such as `>=3.9` (https://packaging.python.org/en/latest/specifications/version-specifiers/)",
            ))
        })?;
        alternatives.push(specifiers);
    }
    if alternatives.iter().any(|s| s.contains(&interpreter)) {
        return Ok(());
    }
    let name = origin
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Err(at(PluginError::new(format!(
        "the app requires Python `{spec}`, but the base image's Python is {version}"
    ))
    .hint(format!(
        "use a base image with a Python that matches `{spec}`, or change requires-python in {name} if the app runs on Python {version}"
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_poetry_constraints() {
        for (poetry, pep440) in [
            ("^3.9", ">=3.9,<4.0"),
            ("^3", ">=3,<4"),
            ("^1.2.3", ">=1.2.3,<2.0.0"),
            ("^0.2.3", ">=0.2.3,<0.3.0"),
            ("^0.0.3", ">=0.0.3,<0.0.4"),
            ("^0.0", ">=0.0,<0.1"),
            ("~3.9", ">=3.9,<3.10"),
            ("~3.9.1", ">=3.9.1,<3.10"),
            ("~3", ">=3,<4"),
            ("~=3.9", "~=3.9"),
            ("3.9.*", "==3.9.*"),
            ("3.9.x", "==3.9.*"),
            ("3.9", "==3.9"),
            (">=3.9,<4", ">=3.9,<4"),
            (">=3.9 <4", ">=3.9,<4"),
            (">= 3.9, < 4", ">=3.9,<4"),
            ("!=3.9.*", "!=3.9.*"),
            ("*", ""),
            (">=2.7,<2.8 || >=3.4", ">=2.7,<2.8 || >=3.4"),
            ("^2.7 || ^3.6", ">=2.7,<3.0 || >=3.6,<4.0"),
            (">=3.8 || *", ""),
        ] {
            assert_eq!(
                poetry_to_pep440(poetry).as_deref(),
                Some(pep440),
                "{poetry}"
            );
        }
        for bad in ["^three", "~", ">=", "3.9 <four"] {
            assert_eq!(poetry_to_pep440(bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_setup_files() {
        let cfg =
            "[metadata]\nname = app\n\n[options]\npackages = find:\npython_requires = >=3.8\n";
        assert_eq!(
            from_setup_cfg(Path::new("setup.cfg"), cfg),
            Some((
                ">=3.8".into(),
                Origin {
                    file: "setup.cfg".into(),
                    line: 6
                }
            ))
        );
        assert_eq!(
            from_setup_cfg(
                Path::new("setup.cfg"),
                "[metadata]\npython_requires = >=3.8\n"
            ),
            None,
            "only [options]"
        );
        let py = "from setuptools import setup\n\nsetup(\n    name='app',\n    python_requires = '>=3.10',\n)\n";
        assert_eq!(
            from_setup_py(Path::new("setup.py"), py),
            Some((
                ">=3.10".into(),
                Origin {
                    file: "setup.py".into(),
                    line: 5
                }
            ))
        );
        assert_eq!(
            from_setup_py(Path::new("setup.py"), "setup(python_requires=REQUIRES)\n"),
            None
        );
    }

    #[test]
    fn reads_pyproject() {
        let text = "[project]\nname = \"requires-python-app\"\nrequires-python = \">=3.12\"\n";
        let doc: toml::Table = toml::from_str(text).unwrap();
        assert_eq!(
            from_pyproject(Path::new("pyproject.toml"), text, &doc),
            Some((
                ">=3.12".into(),
                Origin {
                    file: "pyproject.toml".into(),
                    line: 3
                }
            ))
        );
        let text = "[tool.poetry]\nname = \"a\"\n\n[tool.poetry.dependencies]\npython = \"^3.9\"\nflask = \"^3.0\"\n";
        let doc: toml::Table = toml::from_str(text).unwrap();
        assert_eq!(
            from_pyproject(Path::new("pyproject.toml"), text, &doc),
            Some((
                ">=3.9,<4.0".into(),
                Origin {
                    file: "pyproject.toml".into(),
                    line: 5
                }
            ))
        );
    }

    #[test]
    fn checks_the_interpreter() {
        let origin = Origin {
            file: "pyproject.toml".into(),
            line: 4,
        };
        for (spec, version, ok) in [
            (">=3.9", "3.11.2", true),
            (">=3.12", "3.11.2", false),
            (">=3.9,<4.0", "3.11.2", true),
            ("~=3.11", "3.11.2", true),
            ("==3.11.*", "3.11.2", true),
            ("==3.11.*", "3.12.0", false),
            ("==3.11.4", "3.11.2", false),
            (">=2.7,<2.8 || >=3.4", "3.11.2", true),
            (">=2.7,<2.8 || >=3.12", "3.11.2", false),
            (">=3.13", "3.13.0rc1", false),
            (">=3.12", "3.13.0rc1", true),
            ("<3.13", "3.13.0rc1", false),
            ("", "3.11.2", true),
            (">=3.9", "3.14.0+", true),
        ] {
            assert_eq!(
                check_requires_python(spec, &origin, version).is_ok(),
                ok,
                "{spec} {version}"
            );
        }
        let e = check_requires_python(">=3.12", &origin, "3.11.2").unwrap_err();
        insta::assert_snapshot!(e.to_string(), @"pyproject.toml:4: the app requires Python `>=3.12`, but the base image's Python is 3.11.2; use a base image with a Python that matches `>=3.12`, or change requires-python in pyproject.toml if the app runs on Python 3.11.2");
        let e = check_requires_python(">=3.x", &origin, "3.11.2").unwrap_err();
        assert_eq!(e.line, Some(4));
        assert!(e.message.contains("invalid requires-python `>=3.x`"), "{e}");
    }
}
