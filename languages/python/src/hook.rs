//! The app's build command (`python.build`, `[tool.ftl.python] build`, or
//! Django's `collectstatic`): run in the sandbox on the base's rootfs with
//! the image's virtualenv (its dependency layers, unpacked read-only) and a
//! copy of the app's source, which it may change; the app layer is that copy
//! afterwards.

use std::path::PathBuf;
use std::time::Duration;

use ftl::{
    BuildStep, ExecMount, ExecRequest, LayerContents, LayerInput, PluginError, SourceTree,
    StepContext, StepNetwork,
};

/// The command and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildCommand {
    pub command: String,
    /// `--set python.build`, `pyproject.toml [tool.ftl.python]`, or why it
    /// was inferred.
    pub from: String,
}

/// The build command of an app, if it has one. `settings_build` is
/// `python.build`; `collectstatic` is `python.collectstatic` (default on);
/// `has_django`: Django is among the dependencies.
pub fn find(
    source: &SourceTree,
    settings_build: Option<&str>,
    collectstatic: bool,
    has_django: bool,
) -> Result<Option<BuildCommand>, PluginError> {
    if let Some(cmd) = settings_build {
        return Ok((!cmd.trim().is_empty()).then(|| BuildCommand {
            command: cmd.to_string(),
            from: "--set python.build".into(),
        }));
    }
    if let Some(text) = source
        .read_text("pyproject.toml")
        .map_err(|e| PluginError::new(format!("cannot read pyproject.toml: {e}")))?
    {
        if let Some((cmd, line)) = pyproject_build(&text)? {
            return Ok((!cmd.trim().is_empty()).then(|| BuildCommand {
                command: cmd,
                from: format!("pyproject.toml:{line} ([tool.ftl.python] build)"),
            }));
        }
    }
    if !collectstatic || !has_django || !source.contains("manage.py") {
        return Ok(None);
    }
    // As Heroku's buildpack: a Django app whose settings name a
    // STATIC_ROOT gets its static files collected at build time.
    for rel in source.entries() {
        if rel.extension().is_none_or(|e| e != "py") || rel.components().count() > 4 {
            continue;
        }
        let Ok(Some(text)) = source.read_text(rel) else {
            continue;
        };
        if let Some(i) = text
            .lines()
            .position(|l| l.trim_start().starts_with("STATIC_ROOT") && l.contains('='))
        {
            return Ok(Some(BuildCommand {
                command: "python manage.py collectstatic --noinput".into(),
                from: format!(
                    "Django app with STATIC_ROOT ({}:{}); turn off with --set python.collectstatic=false",
                    rel.display(),
                    i + 1
                ),
            }));
        }
    }
    Ok(None)
}

/// `[tool.ftl.python] build` of a pyproject.toml, with its line.
fn pyproject_build(text: &str) -> Result<Option<(String, usize)>, PluginError> {
    let doc: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| text[..s.start].lines().count().max(1));
        PluginError::new(format!("invalid TOML: {}", e.message())).in_file("pyproject.toml", line)
    })?;
    let Some(v) = doc
        .get("tool")
        .and_then(|t| t.get("ftl"))
        .and_then(|t| t.get("python"))
        .and_then(|t| t.get("build"))
    else {
        return Ok(None);
    };
    let line = text
        .lines()
        .position(|l| l.trim_start().starts_with("build"))
        .map(|i| i + 1)
        .unwrap_or(1);
    let cmd = v.as_str().ok_or_else(|| {
        PluginError::new("`[tool.ftl.python] build` must be a string (a shell command)")
            .in_file("pyproject.toml", Some(line))
    })?;
    Ok(Some((cmd.to_string(), line)))
}

/// Builds the app layer: the source, copied, after the command ran on it.
pub(crate) struct HookStep {
    pub root: PathBuf,
    pub paths: Vec<PathBuf>,
    pub app_dir: String,
    pub venv: String,
    /// The layers that make the virtualenv (venv, dependencies, lock).
    pub venv_layers: Vec<usize>,
    pub command: BuildCommand,
    /// The image's PATH, with the venv first.
    pub path: String,
    pub timeout: Duration,
}

impl BuildStep for HookStep {
    fn build(
        &self,
        wanted: &[usize],
        ctx: &StepContext<'_>,
    ) -> Result<Vec<(usize, LayerContents)>, PluginError> {
        let layers = ctx.exec.layers(&self.venv_layers)?;
        let venv = layers.join(self.venv.trim_start_matches('/'));
        let app = ctx.scratch.join("app");
        ftl::beneath::Dir::open(&self.root)
            .and_then(|d| d.copy_entries(&self.paths, &app))
            .map_err(|e| {
                PluginError::new(format!("cannot copy the app: {}", ftl::error_chain(&e)))
            })?;
        let mut mounts = vec![ExecMount {
            host: app.clone(),
            target: self.app_dir.clone(),
            writable: true,
        }];
        if venv.is_dir() {
            mounts.push(ExecMount {
                host: venv,
                target: self.venv.clone(),
                writable: false,
            });
        }
        let mut req = ExecRequest::new(
            "app build",
            ["/bin/sh", "-c", self.command.command.as_str()],
        );
        req.mounts = mounts;
        req.cwd = self.app_dir.clone();
        req.network = StepNetwork::None;
        req.timeout = self.timeout;
        req.env = vec![
            ("HOME".into(), "/tmp".into()),
            ("TMPDIR".into(), "/tmp".into()),
            ("VIRTUAL_ENV".into(), self.venv.clone()),
            ("PATH".into(), self.path.clone()),
            ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
            ("PYTHONUNBUFFERED".into(), "1".into()),
            ("SOURCE_DATE_EPOCH".into(), "315532800".into()),
            // What a Django settings module may insist on at import.
            ("FTL_BUILD".into(), "1".into()),
        ];
        let out = ctx.exec.run(&req)?;
        if !out.success() {
            return Err(PluginError::new(format!(
                "the app's build command `{}` {}:\n{}",
                self.command.command,
                out.how_it_ended(),
                out.tail(20)
            ))
            .hint(format!(
                "it runs in {} with the dependencies installed and no network (from {})",
                self.app_dir, self.command.from
            )));
        }
        tracing::debug!(output = %out.tail(5), "app build");
        // A command that compiled code against the base (an extension
        // built in place) made a layer only that base may reuse.
        let files = crate::record::all_files(&app).map_err(|e| PluginError::new(e.to_string()))?;
        let foreign = ftl::beneath::Dir::open(&app)
            .and_then(|d| ftl::native::foreign_needs(&d, &files))
            .map_err(|e| {
                PluginError::new(format!(
                    "cannot read the built app: {}",
                    ftl::error_chain(&e)
                ))
            })?;
        if let Some(f) = &foreign {
            tracing::debug!(need = %f, "the app build's output links against the base");
        }
        Ok(wanted
            .iter()
            .map(|&i| {
                let mut c = LayerContents::new(vec![LayerInput::Tree {
                    from: ftl::Beneath::root(&app),
                    to: self.app_dir.clone(),
                }]);
                c.root_dependent = foreign.is_some();
                (i, c)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::pyproject_build;

    #[test]
    fn reads_the_build_command_of_a_pyproject() {
        let text = "[project]\nname = \"x\"\n\n[tool.ftl.python]\nbuild = \"make assets\"\n";
        assert_eq!(
            pyproject_build(text).unwrap(),
            Some(("make assets".to_string(), 5))
        );
        assert_eq!(pyproject_build("[project]\nname = \"x\"\n").unwrap(), None);
        let e = pyproject_build("[tool.ftl.python]\nbuild = 3\n").unwrap_err();
        assert!(e.to_string().contains("must be a string"), "{e}");
    }
}
