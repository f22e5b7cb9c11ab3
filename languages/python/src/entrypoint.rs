//! Where the app's start command comes from.

use std::path::Path;

use ftl::{PluginError, SourceTree};

/// The chosen entrypoint and where it was found (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entrypoint {
    pub argv: Vec<String>,
    pub source: String,
    /// Chosen by ftl, not written by the user: the report says why.
    pub inferred: bool,
    /// App Engine's default: gunicorn must be added to the installed set
    /// (the app does not list it); the line of main.py that defines `app`.
    pub adds_gunicorn: Option<usize>,
    /// A compound shell command that leaves /bin/sh as PID 1 (see
    /// [`ftl::app::shell_entrypoint`]), for the plan's warnings.
    pub warning: Option<String>,
}

/// `/bin/sh -c 'exec CMD'` for a command written in `source`.
fn shell(cmd: &str, source: &str) -> (Vec<String>, Option<String>) {
    let e = ftl::app::shell_entrypoint(cmd);
    (e.argv, e.warning.map(|w| format!("{source}: {w}")))
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
            inferred: false,
            adds_gunicorn: None,
            warning: None,
        });
    }
    if let Some(text) = read(source, "app.yaml")? {
        if let Some((line, cmd)) = ftl::app::app_yaml_entrypoint(&text)? {
            if cmd.is_empty() {
                return Err(PluginError::new("`entrypoint:` is empty")
                    .in_file("app.yaml", Some(line))
                    .hint("write the command on the same line, e.g. `entrypoint: gunicorn -b :$PORT main:app`"));
            }
            let source = format!("app.yaml:{line}");
            let (argv, warning) = shell(&cmd, &source);
            return Ok(Entrypoint {
                argv,
                source,
                inferred: false,
                adds_gunicorn: None,
                warning,
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
                let source = format!("Procfile:{}", i + 1);
                let (argv, warning) = shell(cmd, &source);
                return Ok(Entrypoint {
                    argv,
                    source,
                    inferred: false,
                    adds_gunicorn: None,
                    warning,
                });
            }
        }
    }
    const DEFAULT: &str = "exec gunicorn -b :$PORT main:app";
    if has_gunicorn && source.contains(Path::new("main.py")) {
        return Ok(Entrypoint {
            argv: shell(DEFAULT, "").0,
            source: "gunicorn is a dependency and main.py exists: App Engine's default".into(),
            inferred: true,
            adds_gunicorn: None,
            warning: None,
        });
    }
    // App Engine's default for an app without an entrypoint: gunicorn
    // serving `main:app`, gunicorn added to the dependencies.
    let main = read(source, "main.py")?;
    if let Some(line) = main.as_deref().and_then(defines_app) {
        return Ok(Entrypoint {
            argv: shell(DEFAULT, "").0,
            warning: None,
            source: format!(
                "main.py:{line} defines `app` and no entrypoint is given: App Engine's default, gunicorn added"
            ),
            inferred: true,
            adds_gunicorn: Some(line),
        });
    }
    let why = if has_gunicorn {
        "gunicorn is a dependency but there is no main.py for the default `gunicorn -b :$PORT main:app`"
    } else if main.is_some() {
        "no entrypoint found, and main.py defines no top-level `app` for App Engine's default `gunicorn -b :$PORT main:app`"
    } else {
        "no entrypoint found"
    };
    Err(PluginError::new(why).hint(
        "add `entrypoint: <command>` to app.yaml, a Procfile with a `web: <command>` line, or pass --entrypoint; the command must serve HTTP on $PORT",
    ))
}

/// The line (1-based) where a module binds `app` at its top level: an
/// assignment (`app = Flask(__name__)`, `app: Flask = ...`), a function or
/// class named `app`, or an import that names it.
fn defines_app(text: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            // Top level only: an indented line is inside a block.
            if l.starts_with([' ', '\t']) {
                return false;
            }
            let l = l.split('#').next().unwrap_or("").trim_end();
            let rest = |p: &str| l.strip_prefix(p).map(str::trim_start);
            if let Some(r) = rest("app") {
                // `app =`, `app: T =`, not `app == x` nor `apple = 1`.
                return (r.starts_with('=') && !r.starts_with("=="))
                    || (r.starts_with(':') && r.contains('='));
            }
            if rest("def app(").is_some()
                || rest("async def app(").is_some()
                || rest("class app").is_some()
            {
                return true;
            }
            if l.starts_with("from ") || l.starts_with("import ") {
                let names = l.split_once(" import ").map(|(_, n)| n).unwrap_or(l);
                return names.trim_matches(['(', ')']).split(',').any(|n| {
                    let n = n.trim();
                    n == "app" || n.ends_with(" as app")
                });
            }
            false
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::defines_app;

    #[test]
    fn finds_where_main_defines_app() {
        assert_eq!(
            defines_app("from flask import Flask\n\napp = Flask(__name__)\n"),
            Some(3)
        );
        assert_eq!(defines_app("app: Flask = Flask(__name__)\n"), Some(1));
        assert_eq!(
            defines_app("from myproject.wsgi import application as app\n"),
            Some(1)
        );
        assert_eq!(defines_app("from x import (create, app)\n"), Some(1));
        assert_eq!(
            defines_app("def app(environ, start_response):\n    pass\n"),
            Some(1)
        );
        assert_eq!(defines_app("def main():\n    app = 1\n"), None);
        assert_eq!(defines_app("apple = 1\nif app == 2: pass\n"), None);
        assert_eq!(defines_app("# app = Flask()\n"), None);
    }
}
