//! ftl-python: the Python language plugin.
//!
//! Plans a Python app as, in order: a virtualenv made with the base image's
//! own interpreter (`/env`), its dependencies (one layer per pinned
//! distribution, or one unpinned layer), and the app's source (`/srv`).
//! Dependencies are installed by pip inside the sandbox on the base image's
//! rootfs, and split per distribution by each `*.dist-info/RECORD`.
//!
//! Dependencies come from the first of: the `python.requirements` setting,
//! `uv.lock`, `poetry.lock`, `Pipfile.lock`, `requirements.txt`,
//! `pyproject.toml` `[project] dependencies` (the `inputs` module; other
//! dependency files present are ignored with a warning). uv and Poetry
//! locks are read directly ([`locks`]), walking the project's main
//! dependencies with markers ([`requirements::applies`], PEP 508 by
//! `pep508_rs`) evaluated against the base image's interpreter; the app's
//! `requires-python` is checked against it before anything is installed
//! ([`requires_python::check_requires_python`]).
//!
//! Settings (`--set name=value`):
//!
//! | name | default | meaning |
//! |---|---|---|
//! | `python.venv` | `/env` | where the virtualenv goes |
//! | `python.interpreter` | `python3` | the base image's interpreter (name on its PATH, or a path) |
//! | `python.requirements` | detected | the dependency file to read (relative to the app): a requirements file, `uv.lock`, `poetry.lock`, `Pipfile.lock` or `pyproject.toml` |
//! | `python.compile` | `unchecked-hash` | `.pyc` compilation: `unchecked-hash` or `none` |
//! | `python.max_layers` | `40` | most dependency layers before distributions are grouped |
//! | `python.index_url` | from the inputs | overrides `--index-url` |
//! | `python.extra_index_url` | from the inputs | adds `--extra-index-url`s (space separated) |
//! | `python.install_timeout` | `1200` | seconds a pip install may take |
//! | `python.build` | from `[tool.ftl.python] build` | the app's build command, run after the dependencies are installed; its output lands in the app layer |
//! | `python.collectstatic` | `true` | run Django's `collectstatic` for apps with a `STATIC_ROOT` (when no build command is given) |

mod entrypoint;
pub mod hook;
mod inputs;
mod install;
mod lockcheck;
pub mod locks;
mod plan;
pub mod probe;
pub mod record;
pub mod requirements;
pub mod requires_python;
mod resolve;

use std::path::PathBuf;
use std::time::Duration;

use ftl::{BuildOptions, LanguagePlugin, LayerPlan, PlanContext, PluginError, SourceTree};

pub use entrypoint::Entrypoint;
pub use plan::KEY_VERSION;
pub use probe::{Probe, PROBE_SCRIPT};

/// The Python plugin.
#[derive(Debug, Default, Clone, Copy)]
pub struct PythonPlugin;

/// Files at the root that make a tree a Python app.
const DETECT_FILES: [&str; 7] = [
    "requirements.txt",
    "pyproject.toml",
    "Pipfile",
    "Pipfile.lock",
    "setup.py",
    "uv.lock",
    "poetry.lock",
];

impl LanguagePlugin for PythonPlugin {
    fn id(&self) -> &'static str {
        "python"
    }

    fn detects(&self) -> ftl::Detects {
        ftl::Detects {
            name: "Python",
            files: &DETECT_FILES,
            also: Some("a .py file at the top level"),
        }
    }

    fn detect(&self, source: &SourceTree) -> bool {
        DETECT_FILES.iter().any(|f| source.contains(f))
            || source
                .entries()
                .iter()
                .any(|p| p.components().count() == 1 && p.extension().is_some_and(|e| e == "py"))
    }

    fn plan(&self, ctx: &PlanContext<'_>) -> Result<LayerPlan, PluginError> {
        let settings = Settings::from_options(ctx.options)?;
        plan::plan(ctx, &settings)
    }
}

/// How `.pyc` files are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compile {
    /// `compileall --invalidation-mode unchecked-hash`: reproducible bytes,
    /// never rechecked against the source (layers are immutable).
    UncheckedHash,
    /// No `.pyc` in the image.
    None,
}

impl Compile {
    pub fn as_str(self) -> &'static str {
        match self {
            Compile::UncheckedHash => "unchecked-hash",
            Compile::None => "none",
        }
    }
}

/// The plugin's settings, read from `python.*` build settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub venv: String,
    pub interpreter: String,
    pub requirements: Option<PathBuf>,
    pub compile: Compile,
    pub max_layers: usize,
    pub index_url: Option<String>,
    pub extra_index_urls: Vec<String>,
    pub install_timeout: Duration,
    /// The app's build command (`python.build`).
    pub build: Option<String>,
    /// Django's `collectstatic` when the app has a `STATIC_ROOT`.
    pub collectstatic: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            venv: "/env".into(),
            interpreter: "python3".into(),
            requirements: None,
            compile: Compile::UncheckedHash,
            max_layers: 40,
            index_url: None,
            extra_index_urls: Vec::new(),
            install_timeout: Duration::from_secs(1200),
            build: None,
            collectstatic: true,
        }
    }
}

impl Settings {
    /// Reads the `python.*` settings; unknown ones are an error (a typo
    /// would otherwise be silently ignored).
    pub fn from_options(options: &BuildOptions) -> Result<Settings, PluginError> {
        let mut s = Settings::default();
        for (name, value) in &options.settings {
            let Some(key) = name.strip_prefix("python.") else {
                continue;
            };
            let bad = |why: &str| PluginError::new(format!("setting {name}={value}: {why}"));
            match key {
                "venv" => {
                    let v = value.trim_end_matches('/');
                    if !v.starts_with('/') || v.len() < 2 || v.contains("..") {
                        return Err(bad("must be an absolute path such as /env"));
                    }
                    s.venv = v.to_string();
                }
                "interpreter" => s.interpreter = value.clone(),
                "requirements" => s.requirements = Some(PathBuf::from(value)),
                "compile" => {
                    s.compile = match value.as_str() {
                        "unchecked-hash" => Compile::UncheckedHash,
                        "none" => Compile::None,
                        _ => return Err(bad("expected `unchecked-hash` or `none`")),
                    }
                }
                "max_layers" => {
                    s.max_layers = value.parse().ok().filter(|n| *n >= 1).ok_or_else(|| bad("expected a number >= 1"))?
                }
                "index_url" => s.index_url = Some(value.clone()),
                "extra_index_url" => s.extra_index_urls = value.split_whitespace().map(str::to_string).collect(),
                "install_timeout" => {
                    s.install_timeout =
                        Duration::from_secs(value.parse().map_err(|_| bad("expected a number of seconds"))?)
                }
                "build" => s.build = Some(value.clone()),
                "collectstatic" => {
                    s.collectstatic = match value.as_str() {
                        "true" | "1" | "yes" => true,
                        "false" | "0" | "no" => false,
                        _ => return Err(bad("expected `true` or `false`")),
                    }
                }
                "installer" if value == "pip" => {}
                "installer" => return Err(bad("only `pip` is supported for now")),
                _ => {
                    return Err(bad("unknown setting").hint(
                        "known: python.venv, python.interpreter, python.requirements, python.compile, python.max_layers, python.index_url, python.extra_index_url, python.install_timeout, python.installer, python.build, python.collectstatic",
                    ))
                }
            }
        }
        Ok(s)
    }
}
