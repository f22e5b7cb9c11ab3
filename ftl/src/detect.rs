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
