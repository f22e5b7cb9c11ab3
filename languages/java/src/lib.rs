//! ftl-java: the Java language plugin (Maven projects and prebuilt jars).
//!
//! A Maven project (`pom.xml`) is built by `mvn -B process-classes` (as
//! `mvn compile jib:build` does; `package` for multi-module builds, or
//! `java.maven_goal`) plus the dependency plugin's `copy-dependencies`
//! (runtime scope, only when a dependency layer missed) in the sandbox,
//! with the local Maven repository as a persistent read-write build cache
//! ([`ftl::Exec::persistent_dir`]). Its output is layered as Jib does, from
//! least to most often changed, each layer keyed by what changes it:
//!
//! | layer | image path | key |
//! |---|---|---|
//! | release dependencies | `<app>/libs/` | poms, `.mvn/`, Maven settings (hashed), Maven identity, `java.maven_args` |
//! | snapshot dependencies (when a pom names one) | `<app>/libs/` | the same; unpinned (TTL) |
//! | project modules (multi-module builds) | `<app>/libs/` | + the other modules' files, JDK |
//! | resources | `<app>/resources/` | + the app module's `src/main/resources` |
//! | classes | `<app>/classes/` | + every other source file, JDK |
//!
//! Classes and resources are layered as directories, not as the jar Maven
//! builds, so no archive timestamp reaches a layer; javac's output is a
//! function of the sources and the JDK. A change to one class changes only
//! the classes layer's key.
//!
//! When that layer is the only one to build, the *warm compiler* makes it
//! cost javac alone: a resident, JIT-warm javac in the sandbox that
//! compiles with exactly the options Maven's log shows it used, once it
//! has proved on the sources Maven compiled that it writes the same bytes.
//! Builds it cannot reproduce (other plugins, annotation processors,
//! multi-module builds, a forked or filtered compiler) always run Maven;
//! see `warm.rs`.
//!
//! A prebuilt app (a runnable jar with `Main-Class`, at the top or in
//! `target/`, or `java.jar`) with its `lib/` (or `libs/`, `dependency/`)
//! directory beside it is layered the same way without Maven: the jar is
//! exploded into resources and classes, keyed by its central directory
//! (names and CRC-32s). A jar without a lib directory is a fat jar: one
//! layer, run with `java -jar`.
//!
//! The entrypoint is `java <flags> -cp <app>/resources:<app>/classes:<app>/libs/* <Main-Class>`,
//! `PORT=8080`.
//!
//! Where Maven runs: a JRE base image has no JDK or Maven, so the build step
//! runs on the root `java.builder` names ([`ftl::StepRoot`]): the base
//! (default; an error naming the alternatives when it lacks `javac` or
//! `mvn`), a builder image (`maven:3-eclipse-temurin-17`: the production
//! choice), or the host's system directories read-only (CI and tests). The
//! toolchain is probed where Maven will run (JDK `release` file, Maven core
//! jar and global settings hashes) and is part of the keys.
//!
//! The local Maven repository persists across builds of one project for
//! one output (`<cache>/persistent/java-maven-repo-<hash of
//! groupId:artifactId>.<hash of the image repository>`, per cache scope). Each Maven run mounts the build's own view of it
//! read-write; after a successful build the files it added are kept,
//! never one it changed (`CacheTrust::AddOnly`), and no other project's
//! build reads them.
//!
//! Settings (`--set name=value`):
//!
//! | name | default | meaning |
//! |---|---|---|
//! | `java.builder` | `base` | where Maven and the JDK come from: `base` (the base image), `host` (the host's root, read-only), or a builder image reference |
//! | `java.maven_settings` | `.mvn/settings.xml`, else `settings.xml` of the app | Maven `settings.xml` (relative to the app, or an absolute host path) |
//! | `java.maven_args` | | extra Maven arguments (shell words), e.g. `-Pprod` |
//! | `java.maven_goal` | `process-classes` (`package` with modules) | the phase Maven runs to, e.g. `package` to run the tests |
//! | `java.module` | the root project | the module directory of the app in a multi-module build |
//! | `java.main_class` | from the pom / manifest | the class to run |
//! | `java.jvm_flags` | | JVM flags (shell words) |
//! | `java.jar` | detected | the prebuilt jar (relative to the app) |
//! | `java.dependency_plugin` | the pom's, else `3.6.1` | `maven-dependency-plugin` version |
//! | `java.build_timeout` | `1800` | seconds the Maven build may take |
//! | `java.warm_compiler` | `on` | `off`: every classes-only rebuild runs Maven (`warm.rs`) |
//! | `java.warm_idle` | `900` | seconds the warm compiler waits for a build before it exits |

mod jar;
mod plan;
pub mod pom;
mod step;
mod warm;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ftl::{
    BuildOptions, LanguagePlugin, LayerPlan, PlanContext, PluginError, SourceTree, StepRoot,
};

pub use jar::{parse_manifest, Jar};
pub use plan::{Toolchain, KEY_VERSION, PROBE_SCRIPT};

/// The Java plugin.
#[derive(Debug, Default, Clone, Copy)]
pub struct JavaPlugin;

impl LanguagePlugin for JavaPlugin {
    fn id(&self) -> &'static str {
        "java"
    }

    fn detects(&self) -> ftl::Detects {
        ftl::Detects {
            name: "Java",
            files: &["pom.xml"],
            also: Some("a prebuilt .jar with its lib/"),
        }
    }

    fn detect(&self, source: &SourceTree) -> bool {
        source.contains("pom.xml") || plan::find_jar(source, None).is_ok_and(|j| j.is_some())
    }

    fn plan(&self, ctx: &PlanContext<'_>) -> Result<LayerPlan, PluginError> {
        let settings = Settings::from_options(ctx.options)?;
        plan::plan(ctx, &settings)
    }
}

/// The plugin's settings, read from `java.*` build settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub builder: StepRoot,
    pub maven_settings: Option<PathBuf>,
    pub maven_args: Vec<String>,
    /// The Maven phase or goal to run instead of the default
    /// (`process-classes`, or `package` for multi-module builds).
    pub maven_goal: Option<String>,
    pub module: Option<String>,
    pub main_class: Option<String>,
    pub jvm_flags: Vec<String>,
    pub jar: Option<PathBuf>,
    pub dependency_plugin: Option<String>,
    pub build_timeout: Duration,
    /// Whether a classes-only rebuild may use the warm compiler.
    pub warm_compiler: bool,
    /// How long the warm compiler waits for a build before it exits.
    pub warm_idle: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            builder: StepRoot::Base,
            maven_settings: None,
            maven_args: Vec::new(),
            maven_goal: None,
            module: None,
            main_class: None,
            jvm_flags: Vec::new(),
            jar: None,
            dependency_plugin: None,
            build_timeout: Duration::from_secs(1800),
            warm_compiler: true,
            warm_idle: Duration::from_secs(900),
        }
    }
}

/// The dependency plugin version used when the pom names none.
pub const DEFAULT_DEPENDENCY_PLUGIN: &str = "3.6.1";

const KNOWN: &str = "known: java.builder, java.maven_settings, java.maven_args, java.maven_goal, java.module, java.main_class, java.jvm_flags, java.jar, java.dependency_plugin, java.build_timeout, java.warm_compiler, java.warm_idle";

impl Settings {
    /// Reads the `java.*` settings; unknown ones are an error.
    pub fn from_options(options: &BuildOptions) -> Result<Settings, PluginError> {
        let mut s = Settings::default();
        for (name, value) in &options.settings {
            let Some(key) = name.strip_prefix("java.") else {
                continue;
            };
            let bad = |why: &str| PluginError::new(format!("setting {name}={value}: {why}"));
            let words = |v: &str| {
                shell_words::split(v).map_err(|e| bad(&format!("not valid shell words: {e}")))
            };
            let rel = |v: &str| -> Result<PathBuf, PluginError> {
                let p = Path::new(v);
                if p.is_absolute()
                    || p.components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(bad("must be a path inside the app directory"));
                }
                Ok(p.to_path_buf())
            };
            match key {
                "builder" => {
                    s.builder = match value.as_str() {
                        "" => return Err(bad("expected base, host or an image reference")),
                        "base" => StepRoot::Base,
                        "host" => StepRoot::Host,
                        image => StepRoot::Image(image.to_string()),
                    }
                }
                "maven_settings" => s.maven_settings = Some(PathBuf::from(value)),
                "maven_args" => s.maven_args = words(value)?,
                "maven_goal" => s.maven_goal = Some(value.clone()).filter(|v| !v.is_empty()),
                "module" => {
                    let m = value.trim_matches('/');
                    rel(m)?;
                    s.module = Some(m.to_string()).filter(|m| !m.is_empty() && m != ".");
                }
                "main_class" => s.main_class = Some(value.clone()),
                "jvm_flags" => s.jvm_flags = words(value)?,
                "jar" => s.jar = Some(rel(value)?),
                "dependency_plugin" => s.dependency_plugin = Some(value.clone()),
                "build_timeout" => {
                    s.build_timeout = Duration::from_secs(
                        value
                            .parse()
                            .map_err(|_| bad("expected a number of seconds"))?,
                    )
                }
                "warm_compiler" => {
                    s.warm_compiler = match value.as_str() {
                        "on" | "true" | "1" => true,
                        "off" | "false" | "0" => false,
                        _ => return Err(bad("expected on or off")),
                    }
                }
                "warm_idle" => {
                    s.warm_idle = Duration::from_secs(
                        value
                            .parse()
                            .ok()
                            .filter(|&n: &u64| n > 0)
                            .ok_or_else(|| bad("expected a positive number of seconds"))?,
                    )
                }
                _ => return Err(bad("unknown setting").hint(KNOWN)),
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse() {
        let mut o = BuildOptions::default();
        for (k, v) in [
            ("java.builder", "host"),
            ("java.jvm_flags", "-Xmx256m '-Dname=a b'"),
            ("java.maven_args", "-DskipTests"),
            ("java.module", "app/"),
            ("python.venv", "/env"),
        ] {
            o.settings.insert(k.into(), v.into());
        }
        let s = Settings::from_options(&o).unwrap();
        assert_eq!(s.builder, StepRoot::Host);
        assert_eq!(s.jvm_flags, ["-Xmx256m", "-Dname=a b"]);
        assert_eq!(s.maven_args, ["-DskipTests"]);
        assert_eq!(s.module.as_deref(), Some("app"));

        o.settings.insert("java.builder".into(), "maven:3".into());
        assert_eq!(
            Settings::from_options(&o).unwrap().builder,
            StepRoot::Image("maven:3".into())
        );
        o.settings.insert("java.nope".into(), "1".into());
        let e = Settings::from_options(&o).unwrap_err();
        assert!(e.to_string().contains("unknown setting"), "{e}");
        o.settings.remove("java.nope");
        o.settings.insert("java.jar".into(), "../x.jar".into());
        assert!(Settings::from_options(&o).is_err());
    }
}
