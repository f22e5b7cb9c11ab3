//! The application layer every plugin ends with, and the generic plugin that
//! only places the source tree on the base (no language).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::beneath::{Beneath, Kind};
use crate::key::CacheKey;
use crate::plugin::*;
use crate::source::SourceTree;

/// Version of the app layer's key document; bump when the layer's layout
/// changes for the same inputs.
const APP_KEY_VERSION: u32 = 1;

/// A content key over a set of source entries placed at `to`: each path,
/// its kind, its normalised mode and the sha256 of its bytes (or link
/// target). Timestamps and the host path of the tree are not in it.
pub fn content_key(
    plugin: &str,
    layer: &str,
    source: &SourceTree,
    paths: &[PathBuf],
    to: &str,
) -> Result<CacheKey, PluginError> {
    // Files that are hard links of one another are written as one file and
    // links to it: the grouping changes the layer, so it is in the key (as
    // the group's first path), for groups of two or more within `paths`.
    // Entries are read through the root's descriptor, never following a
    // link (as the layer writer reads them).
    let dir = source.dir();
    let cannot = |rel: &Path, e: &dyn std::fmt::Display| {
        PluginError::new(format!(
            "cannot read {}: {e}",
            source.root().join(rel).display()
        ))
    };
    let mut nodes = Vec::with_capacity(paths.len());
    let mut groups: std::collections::HashMap<(u64, u64), Vec<&PathBuf>> =
        std::collections::HashMap::new();
    for rel in paths {
        let node = dir
            .stat(rel)
            .map_err(|e| cannot(rel, &e))?
            .ok_or_else(|| cannot(rel, &"not found"))?;
        if node.kind == Kind::File && node.nlink > 1 {
            groups.entry((node.dev, node.ino)).or_default().push(rel);
        }
        nodes.push(node);
    }
    let mut files = Vec::with_capacity(paths.len());
    let mut buf = vec![0u8; 64 * 1024];
    for (rel, node) in paths.iter().zip(&nodes) {
        let entry = match node.kind {
            Kind::Dir => json!([rel, "d"]),
            Kind::Symlink => {
                let target = dir.read_link(rel).map_err(|e| cannot(rel, &e))?;
                json!([rel, "l", target])
            }
            Kind::File => {
                let mut h = Sha256::new();
                let mut f = dir.open_file(rel).map_err(|e| cannot(rel, &e))?;
                loop {
                    let n = f.read(&mut buf).map_err(|e| cannot(rel, &e))?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                let exec = node.mode & 0o100 != 0;
                let kind = if exec { "x" } else { "f" };
                let digest = hex::encode(h.finalize());
                match groups.get(&(node.dev, node.ino)).filter(|g| g.len() > 1) {
                    Some(group) => {
                        let first = group.iter().min().expect("a group has members");
                        json!([rel, kind, digest, {"hardlink_group": first}])
                    }
                    None => json!([rel, kind, digest]),
                }
            }
            Kind::Special => continue,
        };
        files.push(entry);
    }
    Ok(CacheKey::new(
        plugin,
        APP_KEY_VERSION,
        json!({"layer": layer, "to": to, "files": files}),
    ))
}

/// A layer of files already on disk: `paths` (relative to `root`) placed
/// at `to`. The "build" just names them.
pub struct FilesStep {
    pub root: Beneath,
    pub to: String,
    pub paths: Vec<PathBuf>,
}

impl BuildStep for FilesStep {
    fn build(
        &self,
        wanted: &[usize],
        _ctx: &StepContext<'_>,
    ) -> Result<Vec<(usize, LayerContents)>, PluginError> {
        Ok(wanted
            .iter()
            .map(|&i| {
                (
                    i,
                    LayerContents {
                        root_dependent: false,
                        inputs: vec![LayerInput::Files {
                            root: self.root.clone(),
                            to: self.to.clone(),
                            paths: self.paths.clone(),
                        }],
                    },
                )
            })
            .collect())
    }

    fn writes_scratch(&self) -> bool {
        false
    }
}

/// Appends an app layer of `paths` (relative to the source root) at `to` to
/// `plan`, as its own step. The key is over the files' content.
pub fn push_source_layer(
    plan: &mut LayerPlan,
    plugin: &str,
    name: &str,
    source: &SourceTree,
    paths: Vec<PathBuf>,
    to: &str,
) -> Result<(), PluginError> {
    let key = content_key(plugin, name, source, &paths, to)?;
    plan.steps.push(Box::new(FilesStep {
        root: source.beneath(""),
        to: to.to_string(),
        paths,
    }));
    plan.layers.push(PlannedLayer {
        name: name.to_string(),
        key,
        pinned: true,
        step: plan.steps.len() - 1,
        created_by: format!("ftl: {name} ({to})"),
    });
    Ok(())
}

/// What ftl reads of an App Engine `app.yaml` (with a YAML parser; keys it
/// does not use are left alone), each with its 1-based line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppYaml {
    /// `runtime:` (`python312`, `nodejs20`, `java17`).
    pub runtime: Option<(usize, String)>,
    /// `entrypoint:`, the shell command that starts the app, as written.
    pub entrypoint: Option<(usize, String)>,
    /// `env_variables:`, in the file's order: set in the image's env.
    pub env_variables: Vec<(String, String)>,
    /// The line of `handlers:`: App Engine's routing, which an image has no
    /// place for (ignored, with a note).
    pub handlers: Option<usize>,
}

impl AppYaml {
    /// Parses an app.yaml's text. Invalid YAML, a top level that is not a
    /// mapping, or a key of the wrong type is an error naming the line.
    pub fn parse(text: &str) -> Result<AppYaml, PluginError> {
        let at = |line: Option<usize>| move |e: PluginError| e.in_file("app.yaml", line);
        let doc: serde_norway::Value = serde_norway::from_str(text).map_err(|e| {
            let line = e.location().map(|l| l.line());
            at(line)(PluginError::new(format!("not valid YAML: {e}")))
        })?;
        let map = match doc {
            serde_norway::Value::Null => return Ok(AppYaml::default()),
            serde_norway::Value::Mapping(m) => m,
            _ => {
                return Err(at(Some(1))(PluginError::new(
                    "app.yaml must be a mapping of keys (`runtime:`, `entrypoint:`, ...)",
                )))
            }
        };
        let mut out = AppYaml::default();
        for (key, value) in map {
            let Some(key) = key.as_str().map(str::to_string) else {
                continue;
            };
            let line = key_line(text, &key);
            match key.as_str() {
                "runtime" | "entrypoint" => {
                    let value = match value {
                        serde_norway::Value::String(s) => s,
                        serde_norway::Value::Null => String::new(),
                        _ => {
                            return Err(at(line)(PluginError::new(format!(
                                "`{key}:` must be a string"
                            ))))
                        }
                    };
                    let value = value.trim().to_string();
                    let line = line.unwrap_or(1);
                    if key == "runtime" {
                        out.runtime = Some((line, value));
                    } else {
                        out.entrypoint = Some((line, value));
                    }
                }
                "env_variables" => {
                    let vars = match value {
                        serde_norway::Value::Mapping(m) => m,
                        serde_norway::Value::Null => Default::default(),
                        _ => {
                            return Err(at(line)(PluginError::new(
                                "`env_variables:` must be a mapping of NAME: value",
                            )))
                        }
                    };
                    for (k, v) in vars {
                        let name = k.as_str().map(str::to_string);
                        let value = match &v {
                            serde_norway::Value::String(s) => Some(s.clone()),
                            serde_norway::Value::Number(n) => Some(n.to_string()),
                            serde_norway::Value::Bool(b) => Some(b.to_string()),
                            _ => None,
                        };
                        match (name, value) {
                            (Some(n), Some(v)) if !n.is_empty() && !n.contains('=') => {
                                out.env_variables.push((n, v))
                            }
                            (n, _) => {
                                return Err(at(line)(PluginError::new(format!(
                                    "`env_variables:` entry {} must be NAME: value, with a string value",
                                    n.map(|n| format!("`{n}`")).unwrap_or_else(|| format!("{k:?}"))
                                ))))
                            }
                        }
                    }
                }
                "handlers" => out.handlers = line.or(Some(1)),
                _ => {}
            }
        }
        Ok(out)
    }

    /// The source's `app.yaml`, parsed; `None` when there is none.
    pub fn read(source: &SourceTree) -> Result<Option<AppYaml>, PluginError> {
        let text = source.read_text("app.yaml").map_err(|e| {
            PluginError::new(format!("cannot read app.yaml: {e}")).in_file("app.yaml", None)
        })?;
        text.as_deref().map(AppYaml::parse).transpose()
    }

    /// Checks `runtime:` against the interpreter the base has: `language`
    /// is the runtime's prefix (`python`, `nodejs`, `java`), `version` the
    /// base's (`3.11.2`, `20.11.0`, `17.0.9`). A runtime of another
    /// language or another version than the base's is an error (App Engine
    /// would run the app on the runtime's interpreter, this image on the
    /// base's); a runtime without a version (`python`, `custom`) passes.
    pub fn check_runtime(&self, language: &str, version: &str) -> Result<(), PluginError> {
        let Some((line, runtime)) = &self.runtime else {
            return Ok(());
        };
        let err = |m: String| PluginError::new(m).in_file("app.yaml", Some(*line));
        let Some(digits) = runtime.strip_prefix(language) else {
            if runtime == "custom" || runtime.is_empty() {
                return Ok(());
            }
            return Err(err(format!(
                "`runtime: {runtime}` is not a {language} runtime, but this is a {language} app"
            ))
            .hint("fix `runtime:`, or pass --language for the app's language"));
        };
        if digits.is_empty() {
            return Ok(());
        }
        // `python312` is 3.12, `python39` 3.9, `nodejs20` 20, `java17` 17.
        let mut parts = version.split('.');
        let major = parts.next().unwrap_or("");
        let minor = parts.next().unwrap_or("");
        let wanted = if language == "python" {
            let Some(rest) = digits.strip_prefix(major) else {
                return Err(mismatch(runtime, version, *line));
            };
            rest == minor
        } else {
            digits == major
        };
        if wanted {
            Ok(())
        } else {
            Err(mismatch(runtime, version, *line))
        }
    }
}

fn mismatch(runtime: &str, version: &str, line: usize) -> PluginError {
    PluginError::new(format!(
        "`runtime: {runtime}` asks for another version than the base image's interpreter ({version})"
    ))
    .in_file("app.yaml", Some(line))
    .hint("build on a base image with that version, or change `runtime:` to the base's")
}

/// The line (1-based) of a top-level `key:` in a YAML text.
fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.strip_prefix(key).or_else(|| {
                l.strip_prefix(&format!("\"{key}\""))
                    .or_else(|| l.strip_prefix(&format!("'{key}'")))
            });
            l.is_some_and(|r| r.trim_start().starts_with(':'))
        })
        .map(|i| i + 1)
}

/// The top-level `entrypoint:` of an app.yaml and its line, read by
/// [`AppYaml::parse`]. A command whose shell quotes do not balance is an
/// error naming the line, not an entrypoint that fails when the app starts.
pub fn app_yaml_entrypoint(text: &str) -> Result<Option<(usize, String)>, PluginError> {
    let Some((line, cmd)) = AppYaml::parse(text)?.entrypoint else {
        return Ok(None);
    };
    if let Err(e) = shell_words::split(&cmd) {
        return Err(PluginError::new(format!(
            "`entrypoint:` is not a complete shell command ({e}): `{cmd}`"
        ))
        .in_file("app.yaml", Some(line))
        .hint("close the quote, or quote the whole value in YAML and the arguments inside it"));
    }
    Ok(Some((line, cmd)))
}

/// An entrypoint written as a shell command, as ftl runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellEntrypoint {
    /// `/bin/sh -c CMD`, with `exec` put before the command when it is a
    /// simple command, so that the app, not the shell, is PID 1 and gets
    /// the SIGTERM a platform stops it with.
    pub argv: Vec<String>,
    /// Set when the command is compound (`a && b`, `a; b`, a pipe, `if`,
    /// ...) and names no `exec`: the shell stays PID 1, and SIGTERM does
    /// not reach the app. The text says so and what to write.
    pub warning: Option<String>,
}

/// `/bin/sh -c 'exec CMD'` for a shell command: `exec` goes before the
/// command (after leading `NAME=value` assignments, which then reach the
/// command's environment) unless it starts with `exec` already, or is a
/// compound command (`;`, `&&`, `||`, `|`, `&`, a newline, or one starting
/// with `if`, `for`, `while`, `until`, `case`, `{`, `(` or `!`), where an
/// `exec` in front would end the shell before the rest runs: those are
/// left as written, with a warning unless they use `exec` somewhere.
pub fn shell_entrypoint(cmd: &str) -> ShellEntrypoint {
    let cmd = cmd.trim();
    let sh = |c: String| vec!["/bin/sh".to_string(), "-c".to_string(), c];
    let words = leading_words(cmd);
    let assignments = words.iter().take_while(|(_, w)| is_assignment(w)).count();
    let first = words.get(assignments).map(|(_, w)| w.as_str());
    if first == Some("exec") {
        return ShellEntrypoint {
            argv: sh(cmd.to_string()),
            warning: None,
        };
    }
    let compound = is_compound(cmd)
        || matches!(
            first,
            Some("if" | "for" | "while" | "until" | "case" | "{" | "!" | "select")
        )
        || first.is_some_and(|w| w.starts_with('(') || w.ends_with("()"));
    if compound || first.is_none() {
        let uses_exec = words.iter().any(|(_, w)| w == "exec")
            || cmd
                .split(|c: char| c.is_whitespace() || ";&|(".contains(c))
                .any(|w| w == "exec");
        return ShellEntrypoint {
            argv: sh(cmd.to_string()),
            warning: (!uses_exec && first.is_some()).then(|| {
                "the command is a compound shell command, so /bin/sh stays PID 1 and the \
                 SIGTERM that stops a container does not reach the app; write `exec` before \
                 the command that runs the app (e.g. `cd app && exec gunicorn ...`)"
                    .to_string()
            }),
        };
    }
    let at = words
        .get(assignments)
        .map(|(at, _)| *at)
        .unwrap_or(cmd.len());
    ShellEntrypoint {
        argv: sh(format!("{}exec {}", &cmd[..at], &cmd[at..])),
        warning: None,
    }
}

/// `NAME=value`: a shell variable assignment.
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// The words of a shell command up to its first operator, each with its
/// byte offset, as written (quotes kept).
fn leading_words(cmd: &str) -> Vec<(usize, String)> {
    let mut words = Vec::new();
    let mut start = None;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in cmd.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match (quote, c) {
            (Some('\''), '\'') => quote = None,
            (Some('\''), _) => {}
            (_, '\\') => {
                escaped = true;
                start.get_or_insert(i);
            }
            (Some('"'), '"') => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => {
                quote = Some(c);
                start.get_or_insert(i);
            }
            (None, c) if c.is_whitespace() || ";&|".contains(c) => {
                if let Some(s) = start.take() {
                    words.push((s, cmd[s..i].to_string()));
                }
                if !c.is_whitespace() {
                    return words;
                }
            }
            (None, _) => {
                start.get_or_insert(i);
            }
        }
    }
    if let Some(s) = start {
        words.push((s, cmd[s..].to_string()));
    }
    words
}

/// Whether a shell command has an operator outside quotes and `$(...)`:
/// `;`, `&` (not in a redirection such as `2>&1`), `|`, or a newline.
fn is_compound(cmd: &str) -> bool {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut depth = 0usize;
    let mut prev = ' ';
    let mut chars = cmd.chars().peekable();
    while let Some(c) = chars.next() {
        if escaped {
            escaped = false;
            prev = c;
            continue;
        }
        match (quote, c) {
            (Some('\''), '\'') => quote = None,
            (Some('\''), _) => {}
            (_, '\\') => escaped = true,
            (Some('"'), '"') => quote = None,
            (None, '\'' | '"' | '`') => quote = Some(c),
            (Some('`'), '`') => quote = None,
            (_, '$') if chars.peek() == Some(&'(') => {
                chars.next();
                depth += 1;
            }
            (_, ')') if depth > 0 => depth -= 1,
            (Some(_), _) => {}
            (None, _) if depth > 0 => {}
            (None, ';' | '|' | '\n') => return true,
            (None, '&') if prev != '>' && prev != '<' => return true,
            (None, '#') if prev.is_whitespace() => return false,
            (None, _) => {}
        }
        prev = c;
    }
    false
}

/// The plugin used when no language applies: the source tree at the app
/// directory, nothing else. Entrypoint and cmd come from the user or the
/// base.
pub struct GenericPlugin;

impl LanguagePlugin for GenericPlugin {
    fn id(&self) -> &'static str {
        "generic"
    }

    fn detect(&self, _source: &SourceTree) -> bool {
        true
    }

    fn detects(&self) -> crate::detect::Detects {
        crate::detect::Detects {
            name: "generic",
            files: &[],
            also: Some("anything"),
        }
    }

    fn plan(&self, ctx: &PlanContext<'_>) -> Result<LayerPlan, PluginError> {
        let mut plan = LayerPlan {
            layers: Vec::new(),
            steps: Vec::new(),
            config: ConfigPatch::default(),
            notes: serde_json::Value::Null,
            warnings: Vec::new(),
        };
        push_source_layer(
            &mut plan,
            self.id(),
            "app",
            ctx.source,
            ctx.source.entries().to_vec(),
            &ctx.options.app_dir,
        )?;
        plan.config.workdir = Some(ctx.options.app_dir.clone());
        plan.config.entrypoint = ctx.options.entrypoint.clone();
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::{app_yaml_entrypoint, shell_entrypoint, AppYaml};

    #[test]
    fn app_yaml_forms() {
        let t = "runtime: python312\nentrypoint: gunicorn -b :$PORT main:app  # web\nenv_variables:\n  entrypoint: nope\n";
        assert_eq!(
            app_yaml_entrypoint(t).unwrap(),
            Some((2, "gunicorn -b :$PORT main:app".to_string()))
        );
        assert_eq!(
            app_yaml_entrypoint("entrypoint: 'python main.py'\n").unwrap(),
            Some((1, "python main.py".into()))
        );
        assert_eq!(
            app_yaml_entrypoint("entrypoint: \"node app.js\"\n").unwrap(),
            Some((1, "node app.js".into()))
        );
        assert_eq!(app_yaml_entrypoint("runtime: nodejs18\n").unwrap(), None);
        // A folded value is one line.
        assert_eq!(
            app_yaml_entrypoint("entrypoint: >\n  gunicorn\n  main:app\n").unwrap(),
            Some((1, "gunicorn main:app".into()))
        );
    }

    #[test]
    fn app_yaml_errors_name_the_line() {
        let e = AppYaml::parse("runtime: python312\nenv_variables:\n  A: [1\n").unwrap_err();
        assert_eq!(e.file.as_deref(), Some(std::path::Path::new("app.yaml")));
        assert!(e.line.is_some_and(|l| l >= 3), "{e}");
        assert!(e.to_string().contains("not valid YAML"), "{e}");
        let e =
            app_yaml_entrypoint("runtime: python312\nentrypoint: gunicorn -b \":$PORT main:app\n")
                .unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(
            e.to_string().contains("not a complete shell command"),
            "{e}"
        );
        let e = AppYaml::parse("entrypoint:\n  - a\n").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn app_yaml_env_runtime_and_handlers() {
        let a = AppYaml::parse(
            "runtime: python312\nenv_variables:\n  GREETING: 'hello world'\n  WORKERS: 4\nhandlers:\n- url: /static\n  static_dir: static\n",
        )
        .unwrap();
        assert_eq!(a.runtime, Some((1, "python312".into())));
        assert_eq!(
            a.env_variables,
            [
                ("GREETING".to_string(), "hello world".to_string()),
                ("WORKERS".into(), "4".into())
            ]
        );
        assert_eq!(a.handlers, Some(5));
        a.check_runtime("python", "3.12.1").unwrap();
        let e = a.check_runtime("python", "3.11.2").unwrap_err();
        assert_eq!(e.line, Some(1));
        assert!(e.to_string().contains("3.11.2"), "{e}");
        assert!(a.check_runtime("nodejs", "20.1.0").is_err());
        let n = AppYaml::parse("runtime: nodejs20\n").unwrap();
        n.check_runtime("nodejs", "20.11.0").unwrap();
        assert!(n.check_runtime("nodejs", "18.19.0").is_err());
        let p = AppYaml::parse("runtime: python39\n").unwrap();
        p.check_runtime("python", "3.9.18").unwrap();
        assert!(p.check_runtime("python", "3.10.1").is_err());
        AppYaml::parse("runtime: custom\n")
            .unwrap()
            .check_runtime("python", "3.11.2")
            .unwrap();
        assert_eq!(AppYaml::parse("").unwrap(), AppYaml::default());
    }

    #[test]
    fn shell_entrypoints_exec_the_app() {
        let argv = |c: &str| shell_entrypoint(c).argv[2].clone();
        assert_eq!(
            argv("gunicorn -b :$PORT main:app"),
            "exec gunicorn -b :$PORT main:app"
        );
        assert_eq!(argv("exec gunicorn main:app"), "exec gunicorn main:app");
        assert_eq!(
            argv("FOO='a b' BAR=1 python main.py"),
            "FOO='a b' BAR=1 exec python main.py"
        );
        assert_eq!(
            argv("node app.js 2>&1 > /tmp/log"),
            "exec node app.js 2>&1 > /tmp/log"
        );
        assert_eq!(
            argv("echo 'a;b' \"c|d\" $(x; y)"),
            "exec echo 'a;b' \"c|d\" $(x; y)"
        );
        for compound in [
            "cd app && gunicorn main:app",
            "python migrate.py; gunicorn main:app",
            "gunicorn main:app | tee log",
            "gunicorn main:app &",
            "if true; then gunicorn; fi",
            "(cd app; gunicorn)",
            "python a.py\npython b.py",
        ] {
            let e = shell_entrypoint(compound);
            assert_eq!(e.argv[2], compound);
            assert!(e.warning.is_some(), "{compound}");
        }
        let e = shell_entrypoint("cd app && exec gunicorn main:app");
        assert_eq!(e.argv[2], "cd app && exec gunicorn main:app");
        assert_eq!(e.warning, None);
    }
}
