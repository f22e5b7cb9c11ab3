//! Where the app's start command comes from.

use ftl::{PluginError, SourceTree};

use crate::package::PackageJson;

/// The chosen entrypoint and where it was found (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entrypoint {
    pub argv: Vec<String>,
    pub source: String,
    /// A compound shell command that leaves /bin/sh as PID 1 (see
    /// [`ftl::app::shell_entrypoint`]), for the plan's warnings.
    pub warning: Option<String>,
}

/// `--entrypoint`, else `app.yaml`'s `entrypoint:`, else `npm start` when
/// package.json has a start script, else `node <main>`, else
/// `node server.js` when there is one.
pub fn find(
    source: &SourceTree,
    given: Option<&[String]>,
    pkg: &PackageJson,
) -> Result<Entrypoint, PluginError> {
    if let Some(argv) = given.filter(|a| !a.is_empty()) {
        return Ok(Entrypoint {
            argv: argv.to_vec(),
            source: "--entrypoint".into(),
            warning: None,
        });
    }
    let app_yaml = source.read_text("app.yaml").map_err(|e| {
        PluginError::new(format!("cannot read app.yaml: {e}")).in_file("app.yaml", None)
    })?;
    if let Some(text) = app_yaml {
        if let Some((line, cmd)) = ftl::app::app_yaml_entrypoint(&text)? {
            if cmd.is_empty() {
                return Err(PluginError::new("`entrypoint:` is empty")
                    .in_file("app.yaml", Some(line))
                    .hint(
                        "write the command on the same line, e.g. `entrypoint: node server.js`",
                    ));
            }
            let source = format!("app.yaml:{line}");
            let e = ftl::app::shell_entrypoint(&cmd);
            return Ok(Entrypoint {
                argv: e.argv,
                warning: e.warning.map(|w| format!("{source}: {w}")),
                source,
            });
        }
    }
    if pkg.script("start").is_some_and(|s| !s.trim().is_empty()) {
        return Ok(Entrypoint {
            argv: vec!["npm".into(), "start".into()],
            source: "package.json scripts.start".into(),
            warning: None,
        });
    }
    if let Some(main) = pkg.main() {
        return Ok(Entrypoint {
            argv: vec!["node".into(), main.to_string()],
            source: "package.json main".into(),
            warning: None,
        });
    }
    if source.contains("server.js") {
        return Ok(Entrypoint {
            argv: vec!["node".into(), "server.js".into()],
            source: "server.js".into(),
            warning: None,
        });
    }
    Err(PluginError::new(
        "no entrypoint found: package.json has no `start` script and no `main`, and there is no server.js",
    )
    .in_file("package.json", None)
    .hint("add `\"scripts\": {\"start\": \"node app.js\"}` to package.json, `entrypoint: <command>` to app.yaml, or pass --entrypoint; the app must serve HTTP on $PORT"))
}
