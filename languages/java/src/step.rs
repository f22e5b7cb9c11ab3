//! The build steps: Maven in the sandbox, and the prebuilt jar's layers.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ftl::beneath::{Dir, Kind};
use ftl::{
    Beneath, BuildStep, ExecMount, ExecOutput, ExecRequest, LayerContents, LayerInput, PluginError,
    StepContext, StepNetwork,
};

use crate::jar::Jar;
use crate::plan::{is_snapshot_jar, join, split_entries, JarPlan, MavenPlan};
use crate::pom;

/// Where the step's scratch directory is mounted (read-write): the
/// project's copy (`src/`), the settings, the copied dependencies (`lib/`).
/// Below /tmp so that it works on any [`ftl::StepRoot`].
pub(crate) const WORK: &str = "/tmp/ftl-java";
/// Where the persistent local Maven repository is mounted (read-write).
pub(crate) const REPO: &str = "/tmp/ftl-m2";
/// The persistent directories holding local Maven repositories, one per
/// project ([`repo_dir`]).
pub(crate) const REPO_DIR: &str = "java-maven-repo";

/// The project's coordinates (`groupId:artifactId` of the root pom): the
/// directory, not the coordinates, changes between `ftl serve` uploads.
pub(crate) fn project_id(p: &crate::plan::MavenPlan) -> String {
    let root_pom = p.poms.first();
    format!(
        "{}:{}",
        root_pom.and_then(|p| p.group_id.as_deref()).unwrap_or(""),
        root_pom.map(|p| p.artifact_id.as_str()).unwrap_or("")
    )
}

/// The name of `project`'s local Maven repository. A repository is private
/// to one project, since what a build's Maven run (its plugins and tests:
/// the project's dependencies' code) adds to it is kept unchecked
/// ([`ftl::CacheTrust::AddOnly`]): another project's build never reads it.
pub(crate) fn repo_dir(project: &str) -> String {
    format!("{REPO_DIR}-{}", ftl::short_digest(project.as_bytes()))
}
/// Any fixed instant: what jars Maven builds (project modules) carry.
const OUTPUT_TIMESTAMP: &str = "1980-01-01T00:00:02Z";
const SOURCE_DATE_EPOCH: &str = "315532802";

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> PluginError {
    PluginError::new(format!("{what} {}: {e}", path.display()))
}

pub(crate) struct MavenStep {
    plan: Arc<MavenPlan>,
}

impl MavenStep {
    pub(crate) fn new(plan: Arc<MavenPlan>) -> Self {
        MavenStep { plan }
    }

    /// The `mvn` command line for the `wanted` layers. Classes and
    /// resources need only `process-classes` (as `mvn compile jib:build`
    /// does; no test run, no jar); project modules need `package` (the
    /// reactor's jars); the dependency plugin runs only when a dependency
    /// layer is wanted.
    pub(crate) fn args(&self, wanted: &[usize]) -> Vec<String> {
        let p = &self.plan;
        let mut args: Vec<String> = vec![
            "mvn".into(),
            "-B".into(),
            "--no-transfer-progress".into(),
            format!("-Dmaven.repo.local={REPO}"),
            format!("-Dproject.build.outputTimestamp={OUTPUT_TIMESTAMP}"),
        ];
        if p.maven_settings.is_some() {
            args.extend(["-s".into(), format!("{WORK}/settings.xml")]);
        }
        if !p.module.is_empty() {
            args.extend(["-pl".into(), p.module.clone(), "-am".into()]);
        }
        args.extend(p.settings.maven_args.iter().cloned());
        let wants = |l: Option<usize>| l.is_some_and(|l| wanted.contains(&l));
        args.push(match &p.settings.maven_goal {
            Some(goal) => goal.clone(),
            None if wants(p.modules_layer) => "package".into(),
            None => "process-classes".into(),
        });
        if p.warm_key.is_some() {
            args.push(crate::warm::CAPTURE_FLAG.into());
        }
        if wants(Some(p.release_layer)) || wants(p.snapshot_layer) || wants(p.modules_layer) {
            args.extend([
                format!(
                    "org.apache.maven.plugins:maven-dependency-plugin:{}:copy-dependencies",
                    p.dependency_plugin
                ),
                "-DincludeScope=runtime".into(),
                format!("-DoutputDirectory={WORK}/lib"),
                "-Dmdep.useBaseVersion=true".into(),
            ]);
        }
        args
    }

    pub(crate) fn request(&self, work: &Path, repo: &Path, wanted: &[usize]) -> ExecRequest {
        let mut req = ExecRequest::new("mvn package", self.args(wanted));
        req.root = self.plan.settings.builder.clone();
        req.cwd = format!("{WORK}/src");
        req.network = StepNetwork::Egress;
        req.timeout = self.plan.settings.build_timeout;
        req.env = vec![
            ("HOME".into(), "/tmp".into()),
            ("TMPDIR".into(), "/tmp".into()),
            ("SOURCE_DATE_EPOCH".into(), SOURCE_DATE_EPOCH.into()),
            // A short-lived JVM: C1 only and the serial GC halve Maven's
            // wall time; neither changes what javac writes.
            (
                "MAVEN_OPTS".into(),
                "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Djava.io.tmpdir=/tmp".into(),
            ),
        ];
        req.mounts = vec![
            ExecMount {
                host: work.to_path_buf(),
                target: WORK.into(),
                writable: true,
            },
            ExecMount {
                host: repo.to_path_buf(),
                target: REPO.into(),
                writable: true,
            },
        ];
        req
    }

    /// Turns Maven's failure into one error naming the pom line, source line
    /// or artifact.
    pub(crate) fn explain(&self, out: &ExecOutput) -> PluginError {
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        explain_failure(&self.plan.poms, &text, out)
    }
}

/// Artifacts Maven says it could not resolve, as (group, artifact, version).
pub(crate) fn unresolved_artifacts(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for marker in [
        "Could not find artifact ",
        "Could not transfer artifact ",
        "Failure to find ",
        "artifacts could not be resolved: ",
        "artifact is missing: ",
    ] {
        let mut rest = text;
        while let Some(i) = rest.find(marker) {
            rest = &rest[i + marker.len()..];
            let list_end = rest.find(['\n', ';']).unwrap_or(rest.len());
            let list = &rest[..list_end];
            let list = list.split(": ").next().unwrap_or(list);
            for token in list
                .split([',', ' '])
                .map(str::trim)
                .filter(|t| !t.is_empty())
            {
                let parts: Vec<&str> = token.split(':').collect();
                if parts.len() < 4 || parts.iter().any(|p| p.is_empty() || p.contains('/')) {
                    if marker != "artifacts could not be resolved: " {
                        break;
                    }
                    continue;
                }
                let c = (
                    parts[0].to_string(),
                    parts[1].to_string(),
                    parts[parts.len() - 1].to_string(),
                );
                if !out.contains(&c) {
                    out.push(c);
                }
                if marker != "artifacts could not be resolved: " {
                    break;
                }
            }
        }
    }
    out
}

fn explain_failure(poms: &[pom::Pom], text: &str, out: &ExecOutput) -> PluginError {
    let how = if out.timed_out {
        "timed out".to_string()
    } else if out.oom {
        "ran out of memory".to_string()
    } else if let Some(s) = out.signal {
        format!("was killed by signal {s}")
    } else {
        format!("exited with {}", out.code.unwrap_or(-1))
    };
    // A dependency that cannot be resolved: point at its declaration.
    let missing = unresolved_artifacts(text);
    if let Some((g, a, v)) = missing.first() {
        let plugin = text.contains(&format!("Plugin {g}:{a}:"))
            || text.contains(&format!("plugin {g}:{a}:"));
        let what = if plugin { "plugin" } else { "dependency" };
        let mut err = PluginError::new(format!(
            "{what} {g}:{a}:{v} cannot be resolved from the configured repositories"
        ))
        .hint("check its coordinates and version, and that the repositories in settings.xml (java.maven_settings) serve it");
        if let Some((p, line)) = poms
            .iter()
            .find_map(|p| pom::dependency_line(p, g, a).map(|l| (p, l)))
        {
            err = err.in_file(&p.file, Some(line));
        } else if let Some(p) = poms.first() {
            err = err.in_file(&p.file, None);
        }
        return err;
    }
    // javac: `[ERROR] /tmp/ftl-java/src/path/A.java:[12,5] message`.
    let prefix = format!("{WORK}/src/");
    for line in text.lines() {
        let l = line.trim_start_matches("[ERROR]").trim();
        if let Some(rest) = l.strip_prefix(&prefix) {
            if let Some((file, tail)) = rest.split_once(":[") {
                let lineno = tail
                    .split([',', ']'])
                    .next()
                    .and_then(|n| n.parse::<usize>().ok());
                let msg = tail.split_once("] ").map(|x| x.1).unwrap_or(tail);
                return PluginError::new(format!("compilation failed: {msg}"))
                    .in_file(file, lineno);
            }
        }
        // A pom Maven cannot read: `... @ line 22, column 5`.
        if l.contains("Non-parseable POM") || l.contains("Malformed POM") {
            let file = l
                .split_whitespace()
                .find_map(|w| w.trim_end_matches(':').strip_prefix(&prefix))
                .unwrap_or("pom.xml")
                .to_string();
            let lineno = l
                .split_once("@ line ")
                .and_then(|(_, r)| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok());
            return PluginError::new(format!("Maven cannot read the pom: {l}"))
                .in_file(file, lineno);
        }
    }
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("[ERROR]") && l.len() > "[ERROR] ".len())
        .take(8)
        .collect();
    let detail = if errors.is_empty() {
        out.tail(20)
    } else {
        errors.join("\n")
    };
    PluginError::new(format!("mvn package {how}:\n{detail}")).in_file(
        poms.first()
            .map(|p| p.file.clone())
            .unwrap_or_else(|| "pom.xml".into()),
        None,
    )
}

fn beneath_err(e: ftl::BeneathError) -> PluginError {
    PluginError::new(ftl::error_chain(&e))
}

/// Copies the project (less build output) to `dest`.
fn copy_project(ctx: &StepContext<'_>, dest: &Path) -> Result<(), PluginError> {
    let paths: Vec<PathBuf> = ctx
        .source
        .entries()
        .iter()
        .filter(|rel| !crate::plan::is_build_output(ctx.source, rel))
        .cloned()
        .collect();
    ctx.source
        .dir()
        .copy_entries(&paths, dest)
        .map_err(beneath_err)
}

/// Files (and links) below the directory `root` (relative, sorted) for
/// which `keep` holds, with their ancestor directories: none when `root`
/// does not exist. What a step left: `root` must be reached without links,
/// and no link below it is followed.
pub(crate) fn select_files(
    root: &Beneath,
    keep: impl Fn(&Path) -> bool,
) -> Result<Vec<PathBuf>, PluginError> {
    let mut out = BTreeSet::new();
    let dir = match root.open() {
        Ok(d) => d,
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        Err(e) => return Err(beneath_err(e)),
    };
    dir.walk::<ftl::BeneathError>(&mut |rel, node| {
        if node.kind == Kind::Dir || !keep(rel) {
            return Ok(true);
        }
        let mut parent = rel.parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            out.insert(p.to_path_buf());
            parent = p.parent();
        }
        out.insert(rel.to_path_buf());
        Ok(true)
    })
    .map_err(beneath_err)?;
    Ok(out.into_iter().collect())
}

/// The resources a build copied to its output: the directory of them,
/// when it is one (a link is no directory of resources).
pub(crate) struct Resources(Option<Dir>);

impl Resources {
    pub(crate) fn at(dir: &Beneath) -> Resources {
        Resources(dir.open().ok())
    }

    /// Whether `rel` in the output directory is a resource copied from
    /// here rather than javac's output.
    pub(crate) fn has(&self, rel: &Path) -> bool {
        rel.extension().is_none_or(|e| e != "class")
            && self.0.as_ref().is_some_and(|d| {
                d.stat(rel)
                    .ok()
                    .flatten()
                    .is_some_and(|n| n.kind == Kind::File)
            })
    }
}

/// `target/classes` of a module as Maven left it: a directory (or
/// nothing), never a link.
fn check_classes(work: &Path, classes: &Beneath) -> Result<(), PluginError> {
    let dir = Dir::open(work).map_err(beneath_err)?;
    match dir.stat(&classes.rel) {
        Ok(None) => Ok(()),
        Ok(Some(n)) if n.kind == Kind::Dir => Ok(()),
        Ok(Some(n)) => Err(PluginError::new(format!(
            "`{}` left by `mvn package` is {}: refusing to follow it",
            classes.rel.display(),
            if n.kind == Kind::Symlink {
                "a symlink, not a directory"
            } else {
                "not a directory"
            }
        ))
        .hint("a Maven plugin of the build replaced it")),
        Err(e) => Err(PluginError::new(format!(
            "`{}` left by `mvn package`: {}",
            classes.rel.display(),
            ftl::error_chain(&e)
        ))),
    }
}

impl BuildStep for MavenStep {
    fn build(
        &self,
        wanted: &[usize],
        ctx: &StepContext<'_>,
    ) -> Result<Vec<(usize, LayerContents)>, PluginError> {
        let p = &self.plan;
        let resources_rel = Path::new(&p.module).join("src/main/resources");
        let warm = match &p.warm_key {
            Some(key) => crate::warm::Warm::new(ctx, key, &p.settings, repo_dir(&project_id(p))),
            None => None,
        };
        if let (Some(w), [only]) = (&warm, wanted) {
            if *only == p.classes_layer {
                match w.compile_sources(ctx) {
                    Ok(classes) => {
                        let resources = Resources::at(&ctx.source.beneath(&resources_rel));
                        return Ok(vec![(
                            p.classes_layer,
                            classes_layer(&classes, &resources, &p.app_dir)?,
                        )]);
                    }
                    Err(why) => tracing::debug!(%why, "warm javac not used: Maven"),
                }
            }
        }
        let work = ctx.scratch;
        let src = work.join("src");
        copy_project(ctx, &src)?;
        if let Some((bytes, _)) = &p.maven_settings {
            let to = work.join("settings.xml");
            std::fs::write(&to, bytes).map_err(|e| io_err("cannot write", &to, e))?;
        }
        // The sandbox may run as another uid: everything writable.
        let _ = std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o777));
        let project = project_id(p);
        let repo = ctx
            .exec
            .package_cache(&repo_dir(&project), ftl::CacheTrust::AddOnly)?;
        let out = ctx.exec.run(&self.request(work, &repo, wanted))?;
        if !out.success() {
            return Err(self.explain(&out));
        }
        tracing::debug!(output = %out.tail(10), "mvn package");

        // What Maven left is read below `work`, following no link.
        let module_dir = Path::new("src").join(&p.module);
        let classes_dir = Beneath::new(work, module_dir.join("target/classes"));
        check_classes(work, &classes_dir)?;
        let resources = Resources::at(&Beneath::new(work, Path::new("src").join(&resources_rel)));
        let is_resource = |rel: &Path| resources.has(rel);
        if let Some(w) = &warm {
            let log = String::from_utf8_lossy(&out.stdout);
            let maven_src = Beneath::new(work, "src");
            if let Err(why) = w.record(ctx, &project, &log, &maven_src, &repo, &is_resource) {
                tracing::debug!(%why, "this build cannot feed the warm javac");
            }
        }
        let lib_dir = Beneath::new(work, "lib");
        let libs: Vec<String> = match lib_dir.open() {
            Ok(d) => d
                .names()
                .map_err(beneath_err)?
                .into_iter()
                .map(|n| n.to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".jar"))
                .collect(),
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(beneath_err(e)),
        };
        let is_module = |name: &str| {
            p.reactor.iter().any(|a| {
                name.strip_prefix(a.as_str())
                    .and_then(|r| r.strip_prefix('-'))
                    .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
            })
        };
        let libs_to = join(&p.app_dir, "libs");
        let libs_layer = |names: Vec<String>| LayerContents {
            root_dependent: false,
            inputs: vec![LayerInput::Files {
                root: lib_dir.clone(),
                to: libs_to.clone(),
                paths: names.into_iter().map(PathBuf::from).collect(),
            }],
        };
        let mut result = Vec::new();
        for &i in wanted {
            let contents = if i == p.classes_layer {
                classes_layer(&classes_dir, &resources, &p.app_dir)?
            } else if i == p.resources_layer {
                LayerContents {
                    root_dependent: false,
                    inputs: vec![LayerInput::Files {
                        root: classes_dir.clone(),
                        to: join(&p.app_dir, "resources"),
                        paths: select_files(&classes_dir, is_resource)?,
                    }],
                }
            } else if Some(i) == p.modules_layer {
                libs_layer(libs.iter().filter(|n| is_module(n)).cloned().collect())
            } else if Some(i) == p.snapshot_layer {
                libs_layer(
                    libs.iter()
                        .filter(|n| !is_module(n) && is_snapshot_jar(n))
                        .cloned()
                        .collect(),
                )
            } else if i == p.release_layer {
                libs_layer(
                    libs.iter()
                        .filter(|n| {
                            let module = p.modules_layer.is_some() && is_module(n);
                            let snapshot = p.snapshot_layer.is_some() && is_snapshot_jar(n);
                            !module && !snapshot
                        })
                        .cloned()
                        .collect(),
                )
            } else {
                return Err(PluginError::new(format!("no layer {i} in the Maven step")));
            };
            result.push((i, contents));
        }
        Ok(result)
    }
}

/// The classes layer: javac's output in `classes_dir`, resources left out.
fn classes_layer(
    classes_dir: &Beneath,
    resources: &Resources,
    app_dir: &str,
) -> Result<LayerContents, PluginError> {
    Ok(LayerContents {
        root_dependent: false,
        inputs: vec![LayerInput::Files {
            root: classes_dir.clone(),
            to: join(app_dir, "classes"),
            paths: select_files(classes_dir, |r| !resources.has(r))?,
        }],
    })
}

/// A prebuilt jar, exploded into resources and classes.
pub(crate) struct JarStep {
    pub plan: JarPlan,
}

impl BuildStep for JarStep {
    fn build(
        &self,
        wanted: &[usize],
        ctx: &StepContext<'_>,
    ) -> Result<Vec<(usize, LayerContents)>, PluginError> {
        let p = &self.plan;
        let file = ctx
            .source
            .open(&p.jar)
            .map_err(|e| PluginError::new(ftl::error_chain(&e)).in_file(&p.jar, None))?;
        let mut jar = Jar::from_file(file).map_err(|e| io_err("cannot read", &p.jar, e))?;
        let (resources, classes) = split_entries(&jar);
        let mut out = Vec::new();
        for &i in wanted {
            let (entries, name) = if i == p.classes_layer {
                (&classes, "classes")
            } else if i == p.resources_layer {
                (&resources, "resources")
            } else {
                return Err(PluginError::new(format!("no layer {i} in the jar step")));
            };
            let dir = ctx.scratch.join(name);
            std::fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
            for e in entries {
                if !e.is_safe() {
                    return Err(PluginError::new(format!("unsafe jar entry {}", e.name)));
                }
                let to = dir.join(&e.name);
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|err| io_err("cannot create", parent, err))?;
                }
                let bytes = jar
                    .read(e)
                    .map_err(|err| io_err("cannot read", &p.jar, err))?;
                std::fs::write(&to, bytes).map_err(|err| io_err("cannot write", &to, err))?;
            }
            out.push((
                i,
                LayerContents {
                    root_dependent: false,
                    inputs: vec![LayerInput::Tree {
                        from: Beneath::new(ctx.scratch, name),
                        to: join(&p.app_dir, name),
                    }],
                },
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_unresolved_artifacts() {
        let text = "[ERROR] Failed to execute goal on project hello: Could not resolve dependencies for project com.example:hello:jar:1.0.0: Could not find artifact org.apache.commons:commons-lang3-does-not-exist:jar:3.12.0 in debian (file:///usr/share/maven-repo) -> [Help 1]";
        assert_eq!(
            unresolved_artifacts(text),
            vec![(
                "org.apache.commons".into(),
                "commons-lang3-does-not-exist".into(),
                "3.12.0".into()
            )]
        );
        let text = "[ERROR] Failed to execute goal on project app: Could not resolve dependencies for project a:app:jar:1: The following artifacts could not be resolved: com.x:one:jar:1.0, com.x:two:jar:2.0: Could not transfer artifact com.x:one:jar:1.0 from/to central";
        assert_eq!(
            unresolved_artifacts(text)
                .iter()
                .map(|c| c.1.as_str())
                .collect::<Vec<_>>(),
            ["one", "two"]
        );
    }
}
