//! Which file the dependencies come from, and what else the app says about
//! them (`requires-python`).
//!
//! The first that exists wins:
//!
//! 1. the `python.requirements` setting (a requirements file, `uv.lock`,
//!    `poetry.lock`, `Pipfile.lock` or `pyproject.toml`, by its name);
//! 2. `uv.lock` (with its pyproject.toml);
//! 3. `poetry.lock` (with its pyproject.toml);
//! 4. `Pipfile.lock` (with its Pipfile);
//! 5. `requirements.txt`;
//! 6. `Pipfile` alone is an error (it needs `pipenv lock`);
//! 7. `pyproject.toml` `[project] dependencies`.
//!
//! Every other dependency file present (not the winner's companion) gets
//! one warning in [`RequirementSet::warnings`] that names the winner and
//! the setting that picks another; none when the setting chose.
//!
//! `requires-python` comes from pyproject.toml (`[project]
//! requires-python`, else Poetry's `python` dependency), else the winning
//! lock (uv.lock's `requires-python`, Pipfile.lock's
//! `_meta.requires`), else setup.cfg (`[options] python_requires`), else a
//! literal `python_requires="..."` in setup.py.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ftl::{PluginError, SourceTree};

use crate::locks;
use crate::requirements::{self, parse_toml, InputKind, Origin, RequirementSet};
use crate::requires_python;
use crate::Settings;

const ORDER: &str =
    "python.requirements, then uv.lock, poetry.lock, Pipfile.lock, requirements.txt, pyproject.toml";

/// The dependency files ftl knows, in precedence order.
const KNOWN: [&str; 6] = [
    "uv.lock",
    "poetry.lock",
    "Pipfile.lock",
    "Pipfile",
    "requirements.txt",
    "pyproject.toml",
];

/// Reads the app's dependencies (see the module docs for which input);
/// markers of lock files are evaluated against `markers`, the PEP 508
/// environment of the base image's interpreter. `None` when the app
/// declares neither dependencies nor `requires-python`.
pub(crate) fn read_inputs(
    source: &SourceTree,
    settings: &Settings,
    markers: &BTreeMap<String, String>,
) -> Result<Option<RequirementSet>, PluginError> {
    let read = |p: &Path| {
        source.read_text(p).map_err(|e| {
            PluginError::new(format!("cannot read {}: {e}", p.display())).in_file(p, None)
        })
    };
    let (set, chosen) = match &settings.requirements {
        Some(file) => {
            if read(file)?.is_none() {
                return Err(PluginError::new(format!(
                    "{} (python.requirements) is not in the app directory",
                    file.display()
                ))
                .hint(
                    "the path is relative to the app directory; check .dockerignore/.gcloudignore",
                ));
            }
            (read_file(file, &read, markers)?, true)
        }
        None => (detect(source, &read, markers)?, false),
    };
    let mut set: RequirementSet = set.unwrap_or_default();
    if set.kind == InputKind::Requirements && !set.files.is_empty() {
        set.is_lock = set.pinned_with_hashes(markers);
    }
    let winner = set.files.first().map(|f| f.0.clone());
    if let Some(winner) = winner.as_deref().filter(|_| !chosen) {
        warn_ignored(source, &read, &mut set, winner)?;
    }
    if let Some(found) = find_requires_python(&read, &set)? {
        set.requires_python = Some(found);
    }
    let empty = set.files.is_empty() && set.requires_python.is_none() && set.warnings.is_empty();
    Ok((!empty).then_some(set))
}

type Read<'a> = dyn Fn(&Path) -> Result<Option<String>, PluginError> + 'a;

/// The companion pyproject.toml of a lock at `file`.
fn next_to(file: &Path, name: &str) -> PathBuf {
    file.parent().unwrap_or(Path::new("")).join(name)
}

/// Reads `file` as its name says.
fn read_file(
    file: &Path,
    read: &Read<'_>,
    markers: &BTreeMap<String, String>,
) -> Result<Option<RequirementSet>, PluginError> {
    let text = read(file)?.unwrap_or_default();
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.as_str() {
        "uv.lock" => {
            let pyproject = next_to(file, "pyproject.toml");
            let project_name = match read(&pyproject)? {
                Some(text) => parse_toml(&pyproject, &text).ok().and_then(|doc| {
                    doc.get("project")?
                        .get("name")?
                        .as_str()
                        .map(str::to_string)
                }),
                None => None,
            };
            locks::parse_uv_lock(file, &text, project_name.as_deref(), markers).map(Some)
        }
        "poetry.lock" => {
            let pyproject = next_to(file, "pyproject.toml");
            let project = read(&pyproject)?.ok_or_else(|| {
                PluginError::new(format!(
                    "{} without its {}",
                    file.display(),
                    pyproject.display()
                ))
                .in_file(file, None)
                .hint("Poetry's main dependencies are in pyproject.toml: add it to the app")
            })?;
            locks::parse_poetry_lock(file, &text, (&pyproject, &project), markers).map(Some)
        }
        "Pipfile.lock" => {
            let mut set = requirements::parse_pipfile_lock(file, &text)?;
            mark_pipfile_top_level(&mut set, &next_to(file, "Pipfile"), read);
            Ok(Some(set))
        }
        "pyproject.toml" => requirements::parse_pyproject(file, &text),
        _ => requirements::parse_requirements_file(file, read).map(Some),
    }
}

/// The first input in precedence order.
fn detect(
    source: &SourceTree,
    read: &Read<'_>,
    markers: &BTreeMap<String, String>,
) -> Result<Option<RequirementSet>, PluginError> {
    for name in ["uv.lock", "poetry.lock", "Pipfile.lock", "requirements.txt"] {
        if source.contains(name) {
            return read_file(Path::new(name), read, markers);
        }
    }
    if source.contains("Pipfile") {
        return Err(PluginError::new("Pipfile without Pipfile.lock")
            .in_file("Pipfile", None)
            .hint("run `pipenv lock` and add Pipfile.lock to the app"));
    }
    if source.contains("pyproject.toml") {
        return read_file(Path::new("pyproject.toml"), read, markers);
    }
    Ok(None)
}

/// A Pipfile.lock's packages the Pipfile names are the user's own.
fn mark_pipfile_top_level(set: &mut RequirementSet, pipfile: &Path, read: &Read<'_>) {
    let Ok(Some(text)) = read(pipfile) else {
        return; // without the Pipfile, every package counts as the user's
    };
    let Ok(doc) = toml::from_str::<toml::Table>(&text) else {
        return;
    };
    let named: Vec<String> = doc
        .get("packages")
        .and_then(|p| p.as_table())
        .map(|t| t.keys().map(|k| requirements::normalize(k)).collect())
        .unwrap_or_default();
    for r in &mut set.requirements {
        r.top_level = named.contains(&r.key);
    }
}

/// Whether pyproject.toml declares dependencies (so ignoring it is worth
/// a warning): `[project] dependencies`, or Poetry's beyond `python`.
fn pyproject_declares_dependencies(text: &str) -> bool {
    let Ok(doc) = toml::from_str::<toml::Table>(text) else {
        return false;
    };
    let project = doc
        .get("project")
        .and_then(|p| p.get("dependencies"))
        .and_then(|d| d.as_array())
        .is_some_and(|d| !d.is_empty());
    let poetry = doc
        .get("tool")
        .and_then(|t| t.get("poetry"))
        .and_then(|p| p.get("dependencies"))
        .and_then(|d| d.as_table())
        .is_some_and(|d| d.keys().any(|k| k != "python"));
    project || poetry
}

/// One warning per dependency file that is present but neither the
/// winner nor its companion.
fn warn_ignored(
    source: &SourceTree,
    read: &Read<'_>,
    set: &mut RequirementSet,
    winner: &Path,
) -> Result<(), PluginError> {
    let companion = match set.kind {
        InputKind::UvLock | InputKind::PoetryLock => Some("pyproject.toml"),
        InputKind::PipfileLock => Some("Pipfile"),
        _ => None,
    };
    let winner_name = winner.display().to_string();
    for name in KNOWN {
        if name == winner_name || Some(name) == companion || !source.contains(name) {
            continue;
        }
        if name == "pyproject.toml"
            && !read(Path::new(name))?.is_some_and(|t| pyproject_declares_dependencies(&t))
        {
            continue;
        }
        if name == "Pipfile" && source.contains("Pipfile.lock") {
            continue; // Pipfile.lock's own warning says it
        }
        let how = match name {
            "Pipfile" => {
                "to use it, run `pipenv lock` and pass --set python.requirements=Pipfile.lock"
                    .to_string()
            }
            _ => format!("to use it instead, pass --set python.requirements={name}"),
        };
        set.warnings.push(format!(
            "{name} is ignored: the dependencies come from {winner_name} ({ORDER}); {how}"
        ));
    }
    Ok(())
}

/// The app's `requires-python`: pyproject.toml's, else the set's own (a
/// lock's), else setup.cfg's, else setup.py's.
fn find_requires_python(
    read: &Read<'_>,
    set: &RequirementSet,
) -> Result<Option<(String, Origin)>, PluginError> {
    let pyproject = Path::new("pyproject.toml");
    if let Some(text) = read(pyproject)? {
        // A pyproject.toml that does not parse is reported when it is the
        // input; as a mere declaration of Python versions it is skipped.
        if let Ok(doc) = toml::from_str::<toml::Table>(&text) {
            if let Some(found) = requires_python::from_pyproject(pyproject, &text, &doc) {
                return Ok(Some(found));
            }
        }
    }
    if let Some(found) = &set.requires_python {
        return Ok(Some(found.clone()));
    }
    if let Some(text) = read(Path::new("setup.cfg"))? {
        if let Some(found) = requires_python::from_setup_cfg(Path::new("setup.cfg"), &text) {
            return Ok(Some(found));
        }
    }
    if let Some(text) = read(Path::new("setup.py"))? {
        return Ok(requires_python::from_setup_py(Path::new("setup.py"), &text));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        crate::requirements::bookworm_markers()
    }

    const UV_LOCK: &str = r#"version = 1
requires-python = ">=3.10"

[[package]]
name = "app"
version = "0.1.0"
source = { virtual = "." }
dependencies = [{ name = "six" }]

[[package]]
name = "six"
version = "1.16.0"
source = { registry = "https://pypi.org/simple" }
wheels = [{ url = "https://x/six.whl", hash = "sha256:aaaa" }]
"#;

    const PYPROJECT: &str =
        "[project]\nname = \"app\"\nversion = \"0.1.0\"\ndependencies = [\"six\"]\n";

    fn app(files: &[(&str, &str)]) -> (tempfile::TempDir, SourceTree) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let tree = SourceTree::scan(dir.path()).unwrap();
        (dir, tree)
    }

    fn inputs(
        files: &[(&str, &str)],
        settings: &Settings,
    ) -> Result<Option<RequirementSet>, PluginError> {
        let (_dir, tree) = app(files);
        read_inputs(&tree, settings, &env())
    }

    #[test]
    fn precedence_and_warnings() {
        let all = [
            ("uv.lock", UV_LOCK),
            ("pyproject.toml", PYPROJECT),
            ("requirements.txt", "six==1.16.0\n"),
            ("Pipfile", "[packages]\nsix = \"*\"\n"),
            (
                "Pipfile.lock",
                r#"{"_meta": {}, "default": {"six": {"version": "==1.16.0"}}}"#,
            ),
        ];
        let set = inputs(&all, &Settings::default()).unwrap().unwrap();
        assert_eq!(set.kind, InputKind::UvLock);
        assert_eq!(
            set.warnings,
            [
                "Pipfile.lock is ignored: the dependencies come from uv.lock (python.requirements, then uv.lock, poetry.lock, Pipfile.lock, requirements.txt, pyproject.toml); to use it instead, pass --set python.requirements=Pipfile.lock",
                "requirements.txt is ignored: the dependencies come from uv.lock (python.requirements, then uv.lock, poetry.lock, Pipfile.lock, requirements.txt, pyproject.toml); to use it instead, pass --set python.requirements=requirements.txt",
            ],
            "pyproject.toml goes with uv.lock; Pipfile with Pipfile.lock"
        );

        // Without uv.lock: Pipfile.lock wins, pyproject.toml's dependencies
        // are ignored, the Pipfile goes with it.
        let set = inputs(&all[1..], &Settings::default()).unwrap().unwrap();
        assert_eq!(set.kind, InputKind::PipfileLock);
        let ignored: Vec<&str> = set
            .warnings
            .iter()
            .map(|w| w.split_once(' ').unwrap().0)
            .collect();
        assert_eq!(ignored, ["requirements.txt", "pyproject.toml"]);
        assert!(set.requirements[0].top_level, "the Pipfile names six");

        // requirements.txt and a Pipfile without its lock.
        let set = inputs(&[all[2], all[3]], &Settings::default())
            .unwrap()
            .unwrap();
        assert_eq!(set.kind, InputKind::Requirements);
        assert_eq!(set.warnings.len(), 1);
        assert!(
            set.warnings[0].contains("run `pipenv lock`"),
            "{:?}",
            set.warnings
        );

        // A pyproject.toml with tool settings only is no dependency file.
        let set = inputs(
            &[
                ("requirements.txt", "six==1.16.0\n"),
                ("pyproject.toml", "[tool.black]\nline-length = 99\n"),
            ],
            &Settings::default(),
        )
        .unwrap()
        .unwrap();
        assert!(set.warnings.is_empty(), "{:?}", set.warnings);

        // The setting chooses, silently.
        let settings = Settings {
            requirements: Some("requirements.txt".into()),
            ..Settings::default()
        };
        let set = inputs(&all, &settings).unwrap().unwrap();
        assert_eq!(set.kind, InputKind::Requirements);
        assert!(set.warnings.is_empty());
        let settings = Settings {
            requirements: Some("pyproject.toml".into()),
            ..Settings::default()
        };
        let set = inputs(&all, &settings).unwrap().unwrap();
        assert_eq!(set.kind, InputKind::Pyproject);
        let settings = Settings {
            requirements: Some("sub/uv.lock".into()),
            ..Settings::default()
        };
        let set = inputs(&[("sub/uv.lock", UV_LOCK)], &settings)
            .unwrap()
            .unwrap();
        assert_eq!(set.kind, InputKind::UvLock);
        assert_eq!(set.requirements[0].origin.file, Path::new("sub/uv.lock"));

        // Pipfile alone.
        let e = inputs(&[all[3], all[1]], &Settings::default()).unwrap_err();
        assert!(e.message.contains("Pipfile without Pipfile.lock"), "{e}");

        // poetry.lock needs its pyproject.toml.
        let e = inputs(
            &[("poetry.lock", "[metadata]\nlock-version = \"2.1\"\n")],
            &Settings::default(),
        )
        .unwrap_err();
        assert!(e.message.contains("without its pyproject.toml"), "{e}");
    }

    #[test]
    fn requires_python_sources() {
        let rp = |files: &[(&str, &str)]| {
            inputs(files, &Settings::default())
                .unwrap()
                .and_then(|s| s.requires_python)
                .map(|(spec, o)| (spec, o.file.display().to_string(), o.line))
        };
        assert_eq!(
            rp(&[("uv.lock", UV_LOCK), ("pyproject.toml", PYPROJECT)]),
            Some((">=3.10".into(), "uv.lock".into(), 2)),
            "pyproject.toml says none: the lock's"
        );
        let with =
            "[project]\nname = \"app\"\nrequires-python = \">=3.12\"\ndependencies = [\"six\"]\n";
        assert_eq!(
            rp(&[("uv.lock", UV_LOCK), ("pyproject.toml", with)]),
            Some((">=3.12".into(), "pyproject.toml".into(), 3)),
            "pyproject.toml first"
        );
        assert_eq!(
            rp(&[
                ("requirements.txt", "six\n"),
                ("setup.cfg", "[options]\npython_requires = >=3.8\n")
            ]),
            Some((">=3.8".into(), "setup.cfg".into(), 2))
        );
        assert_eq!(
            rp(&[("setup.py", "setup(python_requires=\">=3.7\")\n")]),
            Some((">=3.7".into(), "setup.py".into(), 1)),
            "no dependencies, but a requires-python: a set all the same"
        );
        assert_eq!(
            rp(&[(
                "Pipfile.lock",
                r#"{"_meta": {"requires": {"python_version": "3.11"}}, "default": {}}"#
            )]),
            Some(("==3.11.*".into(), "Pipfile.lock".into(), 1))
        );
        assert_eq!(rp(&[("main.py", "print(1)\n")]), None);
    }

    #[test]
    fn hashed_requirement_files_are_locks() {
        let is_lock = |text: &str| {
            inputs(&[("requirements.txt", text)], &Settings::default())
                .unwrap()
                .unwrap()
                .is_lock
        };
        assert!(is_lock("six==1.16.0 --hash=sha256:aaaa\n"));
        assert!(
            is_lock("six==1.16.0 --hash=sha256:aaaa\npywin32==306 ; sys_platform == 'win32'\n"),
            "what does not apply need not be hashed"
        );
        assert!(!is_lock("six==1.16.0\n"), "not hashed");
        assert!(!is_lock("six>=1.16 --hash=sha256:aaaa\n"), "not pinned");
    }
}
