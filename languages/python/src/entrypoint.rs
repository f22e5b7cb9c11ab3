//! Where the app's start command comes from.

use std::path::Path;

use ftl::{PluginError, SourceTree};

/// The chosen entrypoint and where it was found (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entrypoint {
    pub argv: Vec<String>,
    pub source: String,
}

fn shell(cmd: &str) -> Vec<String> {
    vec!["/bin/sh".to_string(), "-c".to_string(), cmd.to_string()]
}

fn read(source: &SourceTree, file: &str) -> Result<Option<String>, PluginError> {
    source
        .read_text(file)
        .map_err(|e| PluginError::new(format!("cannot read {file}: {e}")).in_file(file, None))
}

/// `--entrypoint`, else `app.yaml`'s `entrypoint:`, else a Procfile `web:`
/// line, else gunicorn on `main:app` when gunicorn is a dependency.
pub fn find(
    source: &SourceTree,
    given: Option<&[String]>,
    has_gunicorn: bool,
) -> Result<Entrypoint, PluginError> {
    if let Some(argv) = given.filter(|a| !a.is_empty()) {
        return Ok(Entrypoint {
            argv: argv.to_vec(),
            source: "--entrypoint".into(),
        });
    }
    if let Some(text) = read(source, "app.yaml")? {
        if let Some((line, cmd)) = ftl::app::app_yaml_entrypoint(&text)? {
            if cmd.is_empty() {
                return Err(PluginError::new("`entrypoint:` is empty")
                    .in_file("app.yaml", Some(line))
                    .hint("write the command on the same line, e.g. `entrypoint: gunicorn -b :$PORT main:app`"));
            }
            return Ok(Entrypoint {
                argv: shell(&cmd),
                source: format!("app.yaml:{line}"),
            });
        }
    }
    if let Some(text) = read(source, "Procfile")? {
        for (i, line) in text.lines().enumerate() {
            if let Some(cmd) = line.trim_start().strip_prefix("web:") {
                let cmd = cmd.trim();
                if cmd.is_empty() {
                    return Err(PluginError::new("the `web:` process has no command")
                        .in_file("Procfile", Some(i + 1))
                        .hint("write e.g. `web: gunicorn -b :$PORT main:app`"));
                }
                return Ok(Entrypoint {
                    argv: shell(cmd),
                    source: format!("Procfile:{}", i + 1),
                });
            }
        }
    }
    if has_gunicorn && source.contains(Path::new("main.py")) {
        return Ok(Entrypoint {
            argv: shell("exec gunicorn -b :$PORT main:app"),
            source: "default for gunicorn apps".into(),
        });
    }
    let why = if has_gunicorn {
        "gunicorn is a dependency but there is no main.py for the default `gunicorn -b :$PORT main:app`"
    } else {
        "no entrypoint found"
    };
    Err(PluginError::new(why).hint(
        "add `entrypoint: <command>` to app.yaml, a Procfile with a `web: <command>` line, or pass --entrypoint; the command must serve HTTP on $PORT",
    ))
}
