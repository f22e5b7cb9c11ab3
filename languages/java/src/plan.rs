//! From source to a layer plan: the Maven project or the prebuilt jar, the
//! toolchain probe, keys, layers, config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ftl::app::content_key;
use ftl::{
    sha256_tagged, CacheKey, ConfigPatch, ExecRequest, LayerPlan, PlanContext, PlannedLayer,
    PluginError, SourceTree, StepRoot,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::jar::Jar;
use crate::pom::{self, Pom};
use crate::step::{JarStep, MavenStep};
use crate::{Settings, DEFAULT_DEPENDENCY_PLUGIN};

/// Bumped when the layout of any layer changes for the same inputs.
pub const KEY_VERSION: u32 = 1;
pub(crate) const PLUGIN: &str = "java";

/// Reads the build toolchain (no network, nothing mounted): the JDK's
/// `release` file and Maven's core version, without starting a JVM.
pub const PROBE_SCRIPT: &str = r#"
j=
if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/javac" ]; then j="$JAVA_HOME/bin/javac"; else j=$(command -v javac || true); fi
m=$(command -v mvn || true)
if [ -n "$j" ]; then
  j=$(readlink -f "$j"); echo "javac=$j"
  jh=$(dirname "$(dirname "$j")")
  if [ -r "$jh/release" ]; then sed -n 's/^\(JAVA_VERSION\|JAVA_RUNTIME_VERSION\|IMPLEMENTOR\|IMPLEMENTOR_VERSION\|OS_ARCH\)=/jdk.\1=/p' "$jh/release"; fi
fi
if [ -n "$m" ]; then
  m=$(readlink -f "$m"); echo "mvn=$m"
  mh=$(dirname "$(dirname "$m")")
  for f in "$mh"/lib/maven-core-*.jar; do [ -e "$f" ] && echo "maven_core=${f##*/} sha256:$(sha256sum < "$f" | cut -d' ' -f1)"; done
  if [ -r "$mh/conf/settings.xml" ]; then echo "maven_global_settings=$(sha256sum < "$mh/conf/settings.xml" | cut -d' ' -f1)"; fi
fi
exit 0
"#;

/// The JDK and Maven a build runs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toolchain {
    pub javac: Option<String>,
    pub mvn: Option<String>,
    /// Lines of the JDK's `release` file that identify it.
    pub jdk: BTreeMap<String, String>,
    /// e.g. `maven-core-3.8.7.jar sha256:...` (the jar's hash: Debian's
    /// is a versionless `maven-core-3.x.jar`).
    pub maven_core: Option<String>,
    /// sha256 of Maven's global `conf/settings.xml` (mirrors, proxies).
    pub maven_global_settings: Option<String>,
}

impl Toolchain {
    pub fn parse(stdout: &str) -> Toolchain {
        let mut t = Toolchain {
            javac: None,
            mvn: None,
            jdk: BTreeMap::new(),
            maven_core: None,
            maven_global_settings: None,
        };
        for line in stdout.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"').to_string();
            match k {
                "javac" => t.javac = Some(v),
                "mvn" => t.mvn = Some(v),
                "maven_core" => t.maven_core = Some(v),
                "maven_global_settings" => t.maven_global_settings = Some(format!("sha256:{v}")),
                k => {
                    if let Some(name) = k.strip_prefix("jdk.") {
                        t.jdk.insert(name.to_string(), v);
                    }
                }
            }
        }
        t
    }
}

fn builder_name(root: &StepRoot, base: &str) -> String {
    match root {
        StepRoot::Base => format!("the base image {base}"),
        StepRoot::Host => "the host".to_string(),
        StepRoot::Image(r) => format!("the builder image {r}"),
    }
}

fn probe(ctx: &PlanContext<'_>, settings: &Settings) -> Result<Toolchain, PluginError> {
    let mut req = ExecRequest::new("probe JDK and Maven", ["sh", "-c", PROBE_SCRIPT]);
    req.root = settings.builder.clone();
    req.timeout = Duration::from_secs(60);
    let out = ctx.exec.run(&req)?;
    if !out.success() {
        return Err(PluginError::new(format!(
            "probing the JDK and Maven of {} failed:\n{}",
            builder_name(&settings.builder, &ctx.base.reference),
            out.tail(10)
        )));
    }
    let t = Toolchain::parse(&String::from_utf8_lossy(&out.stdout));
    if t.javac.is_none() || t.mvn.is_none() {
        let missing = match (&t.javac, &t.mvn) {
            (None, None) => "neither a JDK (javac) nor Maven (mvn)",
            (None, _) => "no JDK (javac)",
            _ => "no Maven (mvn)",
        };
        return Err(PluginError::new(format!(
            "{} has {missing} to build pom.xml with",
            builder_name(&settings.builder, &ctx.base.reference)
        ))
        .in_file("pom.xml", None)
        .hint("build with a builder image that has both (--set java.builder=maven:3-eclipse-temurin-17), or on the host's toolchain (--set java.builder=host), or ship a prebuilt jar and its lib/ directory"));
    }
    Ok(t)
}

/// `<app_dir>` without a trailing slash (`/` stays).
pub(crate) fn app_dir(ctx: &PlanContext<'_>) -> String {
    let d = ctx.options.app_dir.trim_end_matches('/');
    if d.is_empty() {
        "/".into()
    } else {
        d.to_string()
    }
}

pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// The entrypoint and config every Java image gets.
fn config(ctx: &PlanContext<'_>, settings: &Settings, app: &str, run: Vec<String>) -> ConfigPatch {
    let entrypoint = ctx.options.entrypoint.clone().unwrap_or_else(|| {
        let mut argv = vec!["java".to_string()];
        argv.extend(settings.jvm_flags.iter().cloned());
        argv.extend(run);
        argv
    });
    ConfigPatch {
        env: vec![("PORT".into(), "8080".into())],
        entrypoint: Some(entrypoint),
        // The base's CMD (`jshell` in JDK images) would become arguments.
        cmd: Some(Vec::new()),
        workdir: Some(app.to_string()),
        exposed_ports: vec!["8080/tcp".into()],
        labels: BTreeMap::new(),
    }
}

fn classpath_run(app: &str, main_class: String) -> Vec<String> {
    vec![
        "-cp".into(),
        format!(
            "{}:{}:{}/*",
            join(app, "resources"),
            join(app, "classes"),
            join(app, "libs")
        ),
        main_class,
    ]
}

pub(crate) fn plan(ctx: &PlanContext<'_>, settings: &Settings) -> Result<LayerPlan, PluginError> {
    if ctx.source.contains("pom.xml") && settings.jar.is_none() {
        return plan_maven(ctx, settings);
    }
    match find_jar(ctx.source, settings.jar.as_deref())? {
        Some(jar) => plan_jar(ctx, settings, &jar),
        None => Err(PluginError::new(
            "no pom.xml and no runnable jar (a jar with Main-Class at the top of the app or in target/)",
        )
        .hint("add pom.xml, or name the jar with --set java.jar=PATH")),
    }
}

// ---------------------------------------------------------------- Maven

/// What the Maven step needs.
#[derive(Debug, Clone)]
pub(crate) struct MavenPlan {
    pub settings: Settings,
    /// The app module's directory ("" for the root project).
    pub module: String,
    pub poms: Vec<Pom>,
    /// The Maven settings file: (its bytes, where it came from for
    /// messages).
    pub maven_settings: Option<(Vec<u8>, String)>,
    pub dependency_plugin: String,
    /// Artifact ids of the reactor's modules (their jars go to the modules
    /// layer).
    pub reactor: Vec<String>,
    pub release_layer: usize,
    pub snapshot_layer: Option<usize>,
    pub modules_layer: Option<usize>,
    pub resources_layer: usize,
    pub classes_layer: usize,
    pub app_dir: String,
    /// The warm compiler's key ([`crate::warm`]): everything javac's output
    /// depends on but the Java sources. `None` when the build is not one it
    /// serves (off, modules, a goal, snapshots or ranges).
    pub warm_key: Option<String>,
}

/// Whether `rel` lies in a Maven build directory (`<module>/target/`) or is
/// VCS / IDE noise that never reaches a build.
pub(crate) fn is_build_output(source: &SourceTree, rel: &Path) -> bool {
    let comps: Vec<_> = rel.components().collect();
    if comps
        .first()
        .is_some_and(|c| c.as_os_str() == ".git" || c.as_os_str() == ".idea")
    {
        return true;
    }
    comps.iter().enumerate().any(|(i, c)| {
        c.as_os_str() == "target" && {
            let parent: PathBuf = comps[..i].iter().collect();
            source.contains(parent.join("pom.xml"))
        }
    })
}

fn read_pom(source: &SourceTree, file: &Path) -> Result<Pom, PluginError> {
    let text = source
        .read_text(file)
        .map_err(|e| {
            PluginError::new(format!("cannot read {}: {e}", file.display())).in_file(file, None)
        })?
        .ok_or_else(|| {
            PluginError::new(format!("{} is missing", file.display())).in_file(file, None)
        })?;
    pom::parse(file, &text)
}

/// The root pom and, recursively, its modules' poms.
fn read_poms(source: &SourceTree) -> Result<Vec<Pom>, PluginError> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(dir) = todo.pop() {
        let file = dir.join("pom.xml");
        if out.iter().any(|p: &Pom| p.file == file) {
            continue;
        }
        if !source.contains(&file) {
            let parent = dir.parent().unwrap_or(Path::new("")).join("pom.xml");
            return Err(
                PluginError::new(format!("module `{}` has no pom.xml", dir.display()))
                    .in_file(parent, None),
            );
        }
        let pom = read_pom(source, &file)?;
        for m in pom.modules.iter().rev() {
            todo.push(dir.join(m));
        }
        out.push(pom);
    }
    Ok(out)
}

/// The Maven settings file, read: the setting (relative to the app, read
/// beneath it, or an absolute host path), else the project's.
fn maven_settings(
    source: &SourceTree,
    settings: &Settings,
) -> Result<Option<(Vec<u8>, String)>, PluginError> {
    let not_found = |p: &Path, why: String| {
        PluginError::new(format!(
            "Maven settings {} (java.maven_settings) not found: {why}",
            p.display()
        ))
    };
    if let Some(p) = &settings.maven_settings {
        let bytes = if p.is_absolute() {
            std::fs::read(p).map_err(|e| not_found(p, e.to_string()))?
        } else {
            let mut f = source
                .dir()
                .open_file_beneath(p)
                .map_err(|e| not_found(p, ftl::error_chain(&e)))?;
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut out)
                .map_err(|e| not_found(p, e.to_string()))?;
            out
        };
        return Ok(Some((bytes, p.display().to_string())));
    }
    for rel in [".mvn/settings.xml", "settings.xml"] {
        if source.contains(rel) {
            let bytes = source
                .read(rel)
                .map_err(|e| PluginError::new(ftl::error_chain(&e)).in_file(rel, None))?;
            return Ok(Some((bytes, rel.to_string())));
        }
    }
    Ok(None)
}

fn plan_maven(ctx: &PlanContext<'_>, settings: &Settings) -> Result<LayerPlan, PluginError> {
    let poms = read_poms(ctx.source)?;
    let root = &poms[0];
    let module = settings.module.clone().unwrap_or_default();
    let app_pom = if module.is_empty() {
        root.clone()
    } else {
        poms.iter()
            .find(|p| p.file == Path::new(&module).join("pom.xml"))
            .cloned()
            .ok_or_else(|| {
                PluginError::new(format!("java.module={module} is not a module of the build"))
                    .in_file("pom.xml", None)
            })?
    };
    if app_pom.packaging == "pom" {
        let jars: Vec<String> = poms
            .iter()
            .filter(|p| p.packaging == "jar")
            .filter_map(|p| p.file.parent().map(|d| d.display().to_string()))
            .collect();
        return Err(PluginError::new(format!(
            "{} is an aggregator (packaging pom): which module is the app?",
            app_pom.file.display()
        ))
        .in_file(&app_pom.file, None)
        .hint(format!(
            "name it with --set java.module=DIR (jar modules: {})",
            jars.join(", ")
        )));
    }
    let main_class = main_class_for_maven(ctx.source, settings, &app_pom, &module)?;
    let maven_settings = maven_settings(ctx.source, settings)?;
    let toolchain = probe(ctx, settings)?;
    let app = app_dir(ctx);

    // What every layer's key names: the build definition.
    let mut build_files: Vec<PathBuf> = poms.iter().map(|p| p.file.clone()).collect();
    build_files.extend(
        ctx.source
            .entries()
            .iter()
            .filter(|p| p.starts_with(".mvn"))
            .cloned(),
    );
    build_files.sort();
    build_files.dedup();
    let build_key = content_key(PLUGIN, "build", ctx.source, &build_files, "")?;
    let settings_doc = match &maven_settings {
        // Settings may hold credentials: only their hash.
        Some((bytes, _)) => Value::String(sha256_tagged(bytes)),
        None => Value::Null,
    };
    let dependency_plugin = settings
        .dependency_plugin
        .clone()
        .or_else(|| app_pom.dependency_plugin.clone())
        .or_else(|| root.dependency_plugin.clone())
        .unwrap_or_else(|| DEFAULT_DEPENDENCY_PLUGIN.to_string());
    let common = json!({
        "build": build_key.hex,
        "maven_settings": settings_doc,
        "maven": toolchain.maven_core,
        "maven_global_settings": toolchain.maven_global_settings,
        "maven_args": settings.maven_args,
        "module": module,
        "dependency_plugin": dependency_plugin,
        "to": app,
    });
    let with_jdk = |mut doc: Value| {
        doc["jdk"] = json!(toolchain.jdk);
        doc
    };
    let key = |layer: &str, mut doc: Value| {
        doc["layer"] = json!(layer);
        CacheKey::new(PLUGIN, KEY_VERSION, doc)
    };

    // Source files by layer.
    let files: Vec<PathBuf> = ctx
        .source
        .entries()
        .iter()
        .filter(|p| !is_build_output(ctx.source, p))
        .cloned()
        .collect();
    let module_dir = Path::new(&module);
    let resources_dir = module_dir.join("src/main/resources");
    let resources: Vec<PathBuf> = files
        .iter()
        .filter(|p| p.starts_with(&resources_dir))
        .cloned()
        .collect();
    let sources: Vec<PathBuf> = files
        .iter()
        .filter(|p| !p.starts_with(&resources_dir))
        .cloned()
        .collect();

    let mut layers = Vec::new();
    let release_layer = layers.len();
    layers.push(PlannedLayer {
        name: "java: dependencies".into(),
        key: key("deps-release", common.clone()),
        // Releases never change; ranges, LATEST and RELEASE do, and so do
        // the transitive dependencies of a snapshot.
        pinned: !poms.iter().any(|p| p.has_ranges || p.has_snapshots),
        step: 0,
        created_by: format!(
            "ftl java: mvn dependency:copy-dependencies (releases) -> {}",
            join(&app, "libs")
        ),
    });
    let snapshot_layer = poms.iter().any(|p| p.has_snapshots).then(|| {
        layers.push(PlannedLayer {
            name: "java: snapshot dependencies".into(),
            key: key("deps-snapshot", common.clone()),
            pinned: false,
            step: 0,
            created_by: format!(
                "ftl java: mvn dependency:copy-dependencies (snapshots) -> {}",
                join(&app, "libs")
            ),
        });
        layers.len() - 1
    });
    let reactor: Vec<String> = poms
        .iter()
        .filter(|p| p.file != app_pom.file && p.packaging != "pom")
        .map(|p| p.artifact_id.clone())
        .collect();
    let modules_layer = if reactor.is_empty() {
        None
    } else {
        let others: Vec<PathBuf> = sources
            .iter()
            .filter(|p| module.is_empty() || !p.starts_with(module_dir))
            .cloned()
            .collect();
        let mut doc = with_jdk(common.clone());
        doc["files"] = json!(content_key(PLUGIN, "modules", ctx.source, &others, "")?.hex);
        layers.push(PlannedLayer {
            name: "java: project modules".into(),
            key: key("modules", doc),
            pinned: true,
            step: 0,
            created_by: format!("ftl java: mvn package (modules) -> {}", join(&app, "libs")),
        });
        Some(layers.len() - 1)
    };
    let resources_layer = layers.len();
    let mut doc = common.clone();
    let resources_hex = content_key(PLUGIN, "resources", ctx.source, &resources, "")?.hex;
    doc["files"] = json!(resources_hex);
    layers.push(PlannedLayer {
        name: "java: resources".into(),
        key: key("resources", doc),
        pinned: true,
        step: 0,
        created_by: format!(
            "ftl java: mvn package (resources) -> {}",
            join(&app, "resources")
        ),
    });
    let classes_layer = layers.len();
    let common_doc = common.clone();
    let mut doc = with_jdk(common);
    doc["files"] = json!(content_key(PLUGIN, "classes", ctx.source, &sources, "")?.hex);
    layers.push(PlannedLayer {
        name: "java: classes".into(),
        key: key("classes", doc),
        pinned: true,
        step: 0,
        created_by: format!(
            "ftl java: mvn package (classes) -> {}",
            join(&app, "classes")
        ),
    });

    let warm_key = (settings.warm_compiler
        && module.is_empty()
        && reactor.is_empty()
        && settings.maven_goal.is_none()
        && !poms.iter().any(|p| p.has_ranges || p.has_snapshots)
        && warm_compiler_fits(ctx.source, &poms, &toolchain))
    .then(|| {
        let doc = json!({
            "common": common_doc,
            "jdk": toolchain.jdk,
            "javac": toolchain.javac,
            "resources": resources_hex,
            "builder": format!("{:?}", settings.builder),
        });
        let hash = sha256_tagged(ftl::canonical_json(&doc).as_bytes());
        // 64 bits name a directory well enough, and keep socket paths short.
        hash["sha256:".len()..].chars().take(16).collect::<String>()
    });
    let config = config(ctx, settings, &app, classpath_run(&app, main_class));
    let step = MavenStep::new(Arc::new(MavenPlan {
        settings: settings.clone(),
        module,
        poms,
        maven_settings,
        dependency_plugin,
        reactor,
        release_layer,
        snapshot_layer,
        modules_layer,
        resources_layer,
        classes_layer,
        app_dir: app,
        warm_key,
    }));
    Ok(LayerPlan {
        layers,
        steps: vec![Box::new(step)],
        config,
        notes: serde_json::Value::Null,
        warnings: Vec::new(),
    })
}

/// What the warm compiler (`warm.rs`) cannot see from Maven's log: a JDK
/// without Unix sockets (before 16), a compiler plugin that forks another
/// JDK or filters its sources (fork, executable, toolchains, includes,
/// excludes), JVM settings for Maven's own JVM (`.mvn/jvm.config`), which
/// its in-process javac inherits.
fn warm_compiler_fits(source: &SourceTree, poms: &[Pom], toolchain: &Toolchain) -> bool {
    let major = toolchain
        .jdk
        .get("JAVA_VERSION")
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    if major.is_none_or(|m| m < 16) || source.contains(".mvn/jvm.config") {
        return false;
    }
    poms.iter().all(|p| {
        source
            .read_text(&p.file)
            .ok()
            .flatten()
            .is_some_and(|text| {
                ![
                    "<fork>",
                    "<executable>",
                    "<jdkToolchain>",
                    "<includes>",
                    "<excludes>",
                    "maven.compiler.fork",
                    "maven.compiler.executable",
                ]
                .iter()
                .any(|needle| text.contains(needle))
            })
    })
}

/// The main class: the setting, the pom's, else the one source file of the
/// module with a `main` method.
fn main_class_for_maven(
    source: &SourceTree,
    settings: &Settings,
    pom: &Pom,
    module: &str,
) -> Result<String, PluginError> {
    if let Some(m) = settings
        .main_class
        .clone()
        .or_else(|| pom.main_class.clone())
    {
        return Ok(m);
    }
    let java_dir = Path::new(module).join("src/main/java");
    let mut found = Vec::new();
    for rel in source.entries() {
        let Ok(suffix) = rel.strip_prefix(&java_dir) else {
            continue;
        };
        if rel.extension().is_none_or(|e| e != "java") {
            continue;
        }
        let text = source.read_text(rel).ok().flatten().unwrap_or_default();
        let squashed: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if squashed.contains("static void main(") || squashed.contains("static void main (") {
            let class = suffix
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(".");
            found.push(class);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(PluginError::new("no main class: the pom names none and no source file has a main method")
            .in_file(&pom.file, None)
            .hint("set <mainClass> in maven-jar-plugin's manifest configuration, or --set java.main_class=NAME")),
        _ => Err(PluginError::new(format!(
            "several classes have a main method ({}) and the pom names none",
            found.join(", ")
        ))
        .in_file(&pom.file, None)
        .hint("set <mainClass> in maven-jar-plugin's manifest configuration, or --set java.main_class=NAME")),
    }
}

// ---------------------------------------------------------------- prebuilt jar

/// A prebuilt jar and its dependencies.
#[derive(Debug, Clone)]
pub(crate) struct FoundJar {
    /// Relative to the source root.
    pub jar: PathBuf,
    pub main_class: Option<String>,
    /// The directory of dependency jars beside it, when there is one.
    pub lib: Option<PathBuf>,
}

fn is_plain_jar(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.ends_with(".jar")
        && !name.ends_with("-sources.jar")
        && !name.ends_with("-javadoc.jar")
        && !name.ends_with("-tests.jar")
}

/// The jar to run: the setting, else the one jar with a `Main-Class` at
/// the top of the app or in `target/`.
pub(crate) fn find_jar(
    source: &SourceTree,
    wanted: Option<&Path>,
) -> Result<Option<FoundJar>, PluginError> {
    let open = |rel: &Path| -> Result<Option<String>, PluginError> {
        let file = source
            .open(rel)
            .map_err(|e| PluginError::new(ftl::error_chain(&e)).in_file(rel, None))?;
        let mut jar = Jar::from_file(file).map_err(|e| {
            PluginError::new(format!("cannot read the jar: {e}")).in_file(rel, None)
        })?;
        let manifest = jar.manifest().map_err(|e| {
            PluginError::new(format!("cannot read META-INF/MANIFEST.MF: {e}")).in_file(rel, None)
        })?;
        Ok(manifest
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Main-Class"))
            .map(|(_, v)| v))
    };
    let lib_of = |jar: &Path| -> Option<PathBuf> {
        let dir = jar.parent().unwrap_or(Path::new(""));
        ["lib", "libs", "dependency"]
            .iter()
            .map(|n| dir.join(n))
            .find(|d| {
                source
                    .entries()
                    .iter()
                    .any(|e| e.parent() == Some(d.as_path()) && is_plain_jar(e))
            })
    };
    if let Some(rel) = wanted {
        if !source.contains(rel) {
            return Err(PluginError::new(format!(
                "{} (java.jar) is not in the app directory",
                rel.display()
            )));
        }
        return Ok(Some(FoundJar {
            jar: rel.to_path_buf(),
            main_class: open(rel)?,
            lib: lib_of(rel),
        }));
    }
    let mut found = Vec::new();
    for rel in source.entries() {
        let dir = rel.parent().unwrap_or(Path::new(""));
        if (dir == Path::new("") || dir == Path::new("target")) && is_plain_jar(rel) {
            if let Ok(Some(main)) = open(rel) {
                found.push(FoundJar {
                    jar: rel.clone(),
                    main_class: Some(main),
                    lib: lib_of(rel),
                });
            }
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(PluginError::new(format!(
            "several runnable jars: {}",
            found
                .iter()
                .map(|f| f.jar.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .hint("name one with --set java.jar=PATH")),
    }
}

/// Whether a dependency jar's file name is a snapshot's.
pub(crate) fn is_snapshot_jar(name: &str) -> bool {
    name.contains("-SNAPSHOT")
}

/// Entries of an exploded jar by layer: (resources, classes).
pub(crate) fn split_entries(jar: &Jar) -> (Vec<crate::jar::Entry>, Vec<crate::jar::Entry>) {
    let mut resources = Vec::new();
    let mut classes = Vec::new();
    for e in &jar.entries {
        if e.is_dir() || e.name == "META-INF/MANIFEST.MF" {
            continue;
        }
        if e.name.ends_with(".class") {
            classes.push(e.clone());
        } else {
            resources.push(e.clone());
        }
    }
    (resources, classes)
}

fn entries_doc(entries: &[crate::jar::Entry]) -> Value {
    json!(entries
        .iter()
        .map(|e| json!([e.name, format!("{:08x}", e.crc32), e.size]))
        .collect::<Vec<_>>())
}

/// What the jar steps need.
#[derive(Debug, Clone)]
pub(crate) struct JarPlan {
    /// The jar, relative to the source root.
    pub jar: PathBuf,
    pub app_dir: String,
    pub resources_layer: usize,
    pub classes_layer: usize,
}

fn plan_jar(
    ctx: &PlanContext<'_>,
    settings: &Settings,
    found: &FoundJar,
) -> Result<LayerPlan, PluginError> {
    let app = app_dir(ctx);
    let jar_name = found
        .jar
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let main_class = settings
        .main_class
        .clone()
        .or_else(|| found.main_class.clone());
    let mut layers = Vec::new();
    let mut steps: Vec<Box<dyn ftl::BuildStep>> = Vec::new();

    let Some(lib) = &found.lib else {
        // A fat jar: one layer, `java -jar`.
        if main_class.is_none() {
            return Err(PluginError::new("the jar has no Main-Class in its manifest")
                .in_file(&found.jar, None)
                .hint("build it with a Main-Class, or --set java.main_class=NAME with its lib/ directory beside it"));
        }
        let mut plan = LayerPlan {
            layers,
            steps,
            config: ConfigPatch::default(),
            notes: serde_json::Value::Null,
            warnings: Vec::new(),
        };
        ftl::app::push_source_layer(
            &mut plan,
            PLUGIN,
            "java: jar",
            ctx.source,
            vec![found.jar.clone()],
            &app,
        )?;
        // push_source_layer keeps the jar's relative path below `app`.
        let path = join(&app, &found.jar.to_string_lossy());
        let run = match &settings.main_class {
            Some(m) => vec!["-cp".into(), path, m.clone()],
            None => vec!["-jar".into(), path],
        };
        plan.config = config(ctx, settings, &app, run);
        return Ok(plan);
    };
    let main_class = main_class.ok_or_else(|| {
        PluginError::new("the jar has no Main-Class in its manifest")
            .in_file(&found.jar, None)
            .hint("--set java.main_class=NAME")
    })?;

    // Dependencies: releases, then snapshots, keyed by their bytes.
    let mut release = Vec::new();
    let mut snapshot = Vec::new();
    for e in ctx.source.entries() {
        if e.parent() == Some(lib.as_path()) && is_plain_jar(e) {
            let name = e
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if is_snapshot_jar(&name) {
                snapshot.push(e.clone());
            } else {
                release.push(e.clone());
            }
        }
    }
    let libs_to = join(&app, "libs");
    for (name, group, pinned) in [
        ("java: dependencies", release, true),
        ("java: snapshot dependencies", snapshot, false),
    ] {
        if group.is_empty() {
            continue;
        }
        let key = content_key(PLUGIN, name, ctx.source, &group, &libs_to)?;
        steps.push(Box::new(ftl::app::FilesStep {
            root: ctx.source.beneath(lib),
            to: libs_to.clone(),
            paths: group
                .iter()
                .map(|p| PathBuf::from(p.file_name().unwrap_or_default()))
                .collect(),
        }));
        layers.push(PlannedLayer {
            name: name.into(),
            key,
            // Snapshot jars in a prebuilt directory are keyed by their
            // bytes too, but stay unpinned like Maven's.
            pinned,
            step: steps.len() - 1,
            created_by: format!("ftl java: COPY {} {libs_to}", lib.display()),
        });
    }

    // The jar, exploded: resources and classes, keyed by its directory.
    let file = ctx
        .source
        .open(&found.jar)
        .map_err(|e| PluginError::new(ftl::error_chain(&e)).in_file(&found.jar, None))?;
    let jar = Jar::from_file(file).map_err(|e| {
        PluginError::new(format!("cannot read the jar: {e}")).in_file(&found.jar, None)
    })?;
    if let Some(bad) = jar.entries.iter().find(|e| !e.is_safe()) {
        return Err(PluginError::new(format!(
            "the jar has an entry with an unsafe path: {}",
            bad.name
        ))
        .in_file(&found.jar, None));
    }
    let (resources, classes) = split_entries(&jar);
    let step = steps.len();
    let resources_layer = layers.len();
    layers.push(PlannedLayer {
        name: "java: resources".into(),
        key: CacheKey::new(
            PLUGIN,
            KEY_VERSION,
            json!({"layer": "jar-resources", "to": join(&app, "resources"), "entries": entries_doc(&resources)}),
        ),
        pinned: true,
        step,
        created_by: format!("ftl java: unzip {jar_name} (resources) -> {}", join(&app, "resources")),
    });
    let classes_layer = layers.len();
    layers.push(PlannedLayer {
        name: "java: classes".into(),
        key: CacheKey::new(
            PLUGIN,
            KEY_VERSION,
            json!({"layer": "jar-classes", "to": join(&app, "classes"), "entries": entries_doc(&classes)}),
        ),
        pinned: true,
        step,
        created_by: format!("ftl java: unzip {jar_name} (classes) -> {}", join(&app, "classes")),
    });
    steps.push(Box::new(JarStep {
        plan: JarPlan {
            jar: found.jar.clone(),
            app_dir: app.clone(),
            resources_layer,
            classes_layer,
        },
    }));
    Ok(LayerPlan {
        layers,
        steps,
        config: config(ctx, settings, &app, classpath_run(&app, main_class)),
        notes: serde_json::Value::Null,
        warnings: Vec::new(),
    })
}
