//! Which plugin builds a source tree: `--language`, the plugin settings'
//! namespaces and auto-detection, with no silent fallback. A tree no
//! plugin recognises is an error that says what was looked for (and which
//! ignore line left a deciding file out), never a generic image; a setting
//! of an unknown namespace is an error with a did-you-mean; a setting of
//! one language selects it, or fails when the source is another's.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::app::GenericPlugin;
use crate::plugin::{LanguagePlugin, PluginError};
use crate::source::SourceTree;

/// What a plugin's auto-detection looks for, for the message when nothing
/// matched.
#[derive(Debug, Clone, Copy)]
pub struct Detects {
    /// The language's name for people: `Python`, `Node.js`, `Java`.
    pub name: &'static str,
    /// Files at the source root, any of which selects the plugin.
    pub files: &'static [&'static str],
    /// Anything else that selects it, in words.
    pub also: Option<&'static str>,
}

/// Files that mark an ecosystem ftl has no plugin for.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("go.mod", "Go"),
    ("composer.json", "PHP (Composer)"),
    ("Gemfile", "Ruby (Bundler)"),
    ("Cargo.toml", "Rust (Cargo)"),
    ("build.gradle", "Java with Gradle"),
    ("build.gradle.kts", "Kotlin/Java with Gradle"),
];

/// Chooses the plugin for `language` (`None`/`auto`: detect, `generic`:
/// none) over `source`, with the plugin settings' names `settings`.
pub fn choose(
    plugins: &[Arc<dyn LanguagePlugin>],
    language: Option<&str>,
    source: &SourceTree,
    settings: &[&str],
) -> Result<Arc<dyn LanguagePlugin>, PluginError> {
    let ids: Vec<&str> = plugins.iter().map(|p| p.id()).collect();
    let by_id = |id: &str| plugins.iter().find(|p| p.id() == id).cloned();
    // Every setting names a known plugin.
    let mut wanted: BTreeSet<&str> = BTreeSet::new();
    for name in settings {
        let ns = name.split_once('.').map(|(ns, _)| ns).unwrap_or("");
        if !ids.contains(&ns) {
            let known = ids
                .iter()
                .map(|i| format!("{i}.*"))
                .collect::<Vec<_>>()
                .join(", ");
            let guess = ids
                .iter()
                .map(|i| (strsim::damerau_levenshtein(ns, i), *i))
                .filter(|(d, _)| *d <= 2)
                .min()
                .map(|(_, i)| {
                    let rest = name.split_once('.').map(|(_, r)| r).unwrap_or(name);
                    format!("did you mean `{i}.{rest}`? ")
                })
                .unwrap_or_default();
            let what = if ns.is_empty() {
                format!("the setting `{name}` names no plugin")
            } else {
                format!("unknown plugin `{ns}` in the setting `{name}`")
            };
            return Err(PluginError::new(what).hint(format!(
                "{guess}settings are PLUGIN.NAME=VALUE; known plugins: {known}"
            )));
        }
        wanted.insert(ns);
    }
    let setting_of = |id: &str| {
        settings
            .iter()
            .find(|s| s.starts_with(&format!("{id}.")))
            .copied()
            .unwrap_or_default()
    };
    match language {
        Some("generic") | Some("none") => {
            if let Some(ns) = wanted.first() {
                return Err(PluginError::new(format!(
                    "the setting `{}` is for the {ns} plugin, but --language generic builds without one",
                    setting_of(ns)
                ))
                .hint(format!("drop it, or pass --language {ns}")));
            }
            Ok(Arc::new(GenericPlugin))
        }
        None | Some("auto") => {
            if wanted.len() > 1 {
                let list: Vec<&str> = wanted.iter().map(|ns| setting_of(ns)).collect();
                return Err(PluginError::new(format!(
                    "settings for more than one language: `{}`",
                    list.join("`, `")
                ))
                .hint("a build has one language: keep the settings of one, or pass --language"));
            }
            let detected = plugins.iter().find(|p| p.detect(source)).cloned();
            match (wanted.first(), detected) {
                (None, Some(p)) => Ok(p),
                (None, None) => Err(nothing_detected(plugins, source)),
                (Some(ns), None) => Ok(by_id(ns).expect("a known id")),
                (Some(ns), Some(p)) if p.id() == *ns => Ok(p),
                (Some(ns), Some(p)) => {
                    let d = p.detects();
                    let marker = d
                        .files
                        .iter()
                        .find(|f| source.contains(f))
                        .map(|f| format!(" (it has {f})"))
                        .unwrap_or_default();
                    Err(PluginError::new(format!(
                        "the setting `{}` is for the {ns} plugin, but the source was detected as {}{marker}",
                        setting_of(ns),
                        d.name
                    ))
                    .hint(format!(
                        "pass --language {ns} to build it with the {ns} plugin, or drop the setting"
                    )))
                }
            }
        }
        Some(name) => {
            let Some(p) = by_id(name) else {
                let mut names = ids.clone();
                names.extend(["generic", "auto"]);
                return Err(PluginError::new(format!("unknown language `{name}`"))
                    .hint(format!("use one of: {}", names.join(", "))));
            };
            if let Some(other) = wanted.iter().find(|ns| **ns != name) {
                return Err(PluginError::new(format!(
                    "the setting `{}` is for the {other} plugin, but --language is {name}",
                    setting_of(other)
                ))
                .hint("drop it, or change --language"));
            }
            Ok(p)
        }
    }
}

/// The error for a tree no plugin recognised: what was looked for, what
/// was found instead, and which ignore line left a deciding file out.
fn nothing_detected(plugins: &[Arc<dyn LanguagePlugin>], source: &SourceTree) -> PluginError {
    let mut looked = Vec::new();
    let mut excluded = Vec::new();
    for p in plugins {
        let d = p.detects();
        let mut what: Vec<String> = d.files.iter().map(|f| f.to_string()).collect();
        what.extend(d.also.map(String::from));
        looked.push(format!("{} ({})", d.name, or_list(&what)));
        for f in d.files {
            if let Some(why) = source.excluded_by(f) {
                excluded.push(format!("{f} (for {}) is left out by {why}", d.name));
            }
        }
    }
    let unsupported: Vec<String> = UNSUPPORTED
        .iter()
        .filter(|(f, _)| source.contains(f) || source.excluded_by(f).is_some())
        .map(|(f, lang)| format!("{f}: {lang}"))
        .collect();
    let mut message = format!(
        "no language detected in {}: looked for {}",
        source.root().display(),
        looked.join("; ")
    );
    let mut hint = String::new();
    if !unsupported.is_empty() {
        message.push_str(&format!(
            ". Found {}, which ftl has no plugin for",
            unsupported.join(", ")
        ));
    }
    if !excluded.is_empty() {
        message.push_str(&format!(". {}", excluded.join("; ")));
        hint.push_str(&format!(
            "{} decides what ftl reads; one written for a Dockerfile often leaves out the files a source build needs: \
             remove that line, or add a .gcloudignore (which ftl reads instead of .dockerignore); ",
            source
                .ignore_file()
                .map(|f| f.display().to_string())
                .unwrap_or_default()
        ));
    }
    hint.push_str(
        "pass --language generic to copy the files into the image as they are (with --entrypoint), \
         or --language NAME to choose a plugin",
    );
    PluginError::new(message).hint(hint)
}

fn or_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::{LayerPlan, PlanContext};

    struct Fake(&'static str, &'static str);
    impl LanguagePlugin for Fake {
        fn id(&self) -> &'static str {
            self.0
        }
        fn detect(&self, source: &SourceTree) -> bool {
            source.contains(self.1)
        }
        fn detects(&self) -> Detects {
            Detects {
                name: self.0,
                files: if self.1 == "pom.xml" {
                    &["pom.xml"]
                } else {
                    &["requirements.txt"]
                },
                also: None,
            }
        }
        fn plan(&self, _: &PlanContext<'_>) -> Result<LayerPlan, PluginError> {
            unreachable!()
        }
    }

    fn tree(files: &[(&str, &str)]) -> (tempfile::TempDir, SourceTree) {
        let d = tempfile::tempdir().unwrap();
        for (f, t) in files {
            std::fs::write(d.path().join(f), t).unwrap();
        }
        let t = SourceTree::scan(d.path()).unwrap();
        (d, t)
    }

    fn plugins() -> Vec<Arc<dyn LanguagePlugin>> {
        vec![
            Arc::new(Fake("python", "requirements.txt")),
            Arc::new(Fake("java", "pom.xml")),
        ]
    }

    fn choose_id(
        tree: &SourceTree,
        lang: Option<&str>,
        set: &[&str],
    ) -> Result<&'static str, String> {
        choose(&plugins(), lang, tree, set)
            .map(|p| p.id())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn nothing_detected_is_an_error_that_says_what_was_looked_for() {
        let (_d, t) = tree(&[("index.html", "x"), ("go.mod", "module x")]);
        let e = choose_id(&t, None, &[]).unwrap_err();
        assert!(e.contains("no language detected"), "{e}");
        assert!(
            e.contains("requirements.txt") && e.contains("pom.xml"),
            "{e}"
        );
        assert!(e.contains("go.mod: Go"), "{e}");
        assert!(e.contains("--language generic"), "{e}");
        assert_eq!(choose_id(&t, Some("generic"), &[]).unwrap(), "generic");
    }

    #[test]
    fn a_dockerignore_that_left_out_the_pom_is_named() {
        let (_d, t) = tree(&[
            (".dockerignore", "# Dockerfile context\npom.xml\nsrc\n"),
            ("pom.xml", "<project/>"),
            ("app.jar", "x"),
        ]);
        let e = choose_id(&t, None, &[]).unwrap_err();
        assert!(
            e.contains("pom.xml (for java) is left out by .dockerignore line 2 (`pom.xml`)"),
            "{e}"
        );
        assert!(e.contains(".gcloudignore"), "{e}");
    }

    #[test]
    fn settings_name_known_plugins_and_select_their_language() {
        let (_d, py) = tree(&[("requirements.txt", "flask\n")]);
        let e = choose_id(&py, None, &["pyhton.venv"]).unwrap_err();
        assert!(e.contains("unknown plugin `pyhton`"), "{e}");
        assert!(e.contains("did you mean `python.venv`?"), "{e}");
        assert!(e.contains("python.*, java.*"), "{e}");
        assert!(choose_id(&py, None, &["venv"])
            .unwrap_err()
            .contains("names no plugin"));
        assert_eq!(choose_id(&py, None, &["python.venv"]).unwrap(), "python");
        // --jar on a Python tree: fails, naming what was detected.
        let e = choose_id(&py, None, &["java.jar"]).unwrap_err();
        assert!(
            e.contains("`java.jar` is for the java plugin") && e.contains("requirements.txt"),
            "{e}"
        );
        assert_eq!(choose_id(&py, Some("java"), &["java.jar"]).unwrap(), "java");
        assert!(choose_id(&py, Some("python"), &["java.jar"]).is_err());
        assert!(choose_id(&py, Some("generic"), &["java.jar"]).is_err());
        // On a tree nothing detects, a language's setting selects it.
        let (_d, empty) = tree(&[("app.jar", "x")]);
        assert_eq!(choose_id(&empty, None, &["java.jar"]).unwrap(), "java");
        assert!(choose_id(&empty, None, &["java.jar", "python.venv"]).is_err());
        assert!(choose_id(&empty, Some("cobol"), &[])
            .unwrap_err()
            .contains("unknown language"));
    }
}
