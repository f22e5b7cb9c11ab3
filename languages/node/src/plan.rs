//! From source and base to a layer plan: inputs, probe, keys, layers,
//! config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ftl::{
    sha256_tagged, CacheKey, ConfigPatch, LayerPlan, PlanContext, PlannedLayer, PluginError,
};
use serde_json::{json, Value};

use crate::entrypoint;
use crate::install::{DepsStep, GcpBuildStep, InstallPlan, Manager, ScriptsStep};
use crate::npmrc::{is_secret, Npmrc};
use crate::package::{check_npm_lock_in_sync, find_lockfile, LockKind, PackageJson};
use crate::probe;
use crate::Settings;

/// Bumped when the layout of any layer changes for the same inputs. 2: a
/// `node_modules` with an addon compiled on the base is recorded for that
/// base only ([`ftl::LayerContents::root_dependent`]); version 1 entries
/// may hold one under the runtime's key alone, so they are never read.
pub const KEY_VERSION: u32 = 2;
pub(crate) const PLUGIN: &str = "node";

/// `npm_config_*` / `NPM_CONFIG_*` variables of the base config: npm in the
/// sandbox reads them. Credentials hashed.
fn npm_env_doc(ctx: &PlanContext<'_>) -> Value {
    let map: BTreeMap<String, Value> = ctx
        .base
        .env()
        .into_iter()
        .filter(|(k, _)| {
            let l = k.to_ascii_lowercase();
            l.starts_with("npm_config_") || l.starts_with("yarn_")
        })
        .map(|(k, v)| {
            let name = k.to_ascii_lowercase();
            let value =
                if is_secret(name.trim_start_matches("npm_config_")) || name.contains("token") {
                    json!({"sha256": sha256_tagged(v.as_bytes())})
                } else {
                    Value::String(v)
                };
            (k, value)
        })
        .collect();
    json!(map)
}

/// Whether a source path is left out of the app layer: installed
/// dependencies (`node_modules` anywhere), `.npmrc` (it may hold
/// credentials) and `.git`.
pub(crate) fn excluded_from_app(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n == "node_modules" || n == ".npmrc" || n == ".git")
}

pub(crate) fn plan(ctx: &PlanContext<'_>, settings: &Settings) -> Result<LayerPlan, PluginError> {
    let source = ctx.source;
    let read_bytes = |p: &Path| -> Result<Option<Vec<u8>>, PluginError> {
        if !source.contains(p) {
            return Ok(None);
        }
        source.read(p).map(Some).map_err(|e| {
            PluginError::new(format!("cannot read {}: {e}", p.display())).in_file(p, None)
        })
    };
    let pkg_text = read_bytes(Path::new("package.json"))?.ok_or_else(|| {
        PluginError::new("there is no package.json in the app directory").hint(
            "a Node.js app needs a package.json (npm init -y); check .dockerignore/.gcloudignore",
        )
    })?;
    let pkg_text = String::from_utf8(pkg_text)
        .map_err(|_| PluginError::new("package.json is not UTF-8").in_file("package.json", None))?;
    let pkg = PackageJson::parse(&pkg_text)?;
    let lock = find_lockfile(&read_bytes)?;
    if let Some(l) = lock.as_ref().filter(|l| l.kind.is_npm()) {
        let text = String::from_utf8_lossy(&l.bytes);
        check_npm_lock_in_sync(&pkg, l.kind, &text)?;
    }
    let npmrc = read_bytes(Path::new(".npmrc"))?
        .map(|b| Npmrc::parse(&String::from_utf8_lossy(&b), &|n| std::env::var(n).ok()));

    let probe = probe::probe(ctx.exec, &ctx.base.reference)?;
    // app.yaml's `runtime: nodejs20` against the base's node.
    if let Some(app) = ftl::app::AppYaml::read(source)? {
        app.check_runtime("nodejs", &probe.node)?;
    }
    let manager = match lock.as_ref().map(|l| l.kind) {
        Some(LockKind::Yarn) => {
            let Some(yarn) = &probe.yarn else {
                return Err(PluginError::new(format!(
                    "the app has a yarn.lock but the base image {} has no `yarn`",
                    ctx.base.reference
                ))
                .in_file("yarn.lock", None)
                .hint("use a base image with yarn (node:20 images have it; on Debian add the yarnpkg package), or switch to npm: `npm install` makes a package-lock.json (then remove yarn.lock)"));
            };
            Manager::Yarn {
                version: yarn.version.clone().unwrap_or_default(),
                bin: yarn.path.clone(),
            }
        }
        _ => {
            let Some(npm) = &probe.npm else {
                return Err(PluginError::new(format!(
                    "the base image {} has node {} but no `npm`",
                    ctx.base.reference, probe.node
                ))
                .hint("use a base image with npm (node:20-slim, or Debian's npm package)"));
            };
            Manager::Npm {
                version: npm.version.clone().unwrap_or_default(),
            }
        }
    };

    let app_dir = ctx.options.app_dir.trim_end_matches('/').to_string();
    let app_dir = if app_dir.is_empty() {
        "/".to_string()
    } else {
        app_dir
    };
    let gcp_build = settings.gcp_build && pkg.script("gcp-build").is_some();
    // The root's lifecycle scripts run in the gcp-build step's install
    // (with dev dependencies, as before it); without one, in a step of
    // their own after a production install.
    let scripts = if settings.app_scripts {
        pkg.lifecycle_scripts()
    } else {
        Vec::new()
    };
    // Local dependencies live in the app's source, which the dependency
    // install (package.json and the lockfile only) does not have.
    for section in crate::package::DEP_SECTIONS {
        for (name, spec) in pkg.deps(section) {
            if ["file:", "link:", "workspace:", "portal:"]
                .iter()
                .any(|p| spec.starts_with(p))
                || spec.starts_with("./")
                || spec.starts_with("../")
                || spec.starts_with('/')
            {
                return Err(PluginError::new(format!(
                    "dependency `{name}` is a local path (`{spec}`), which ftl does not install yet"
                ))
                .in_file("package.json", pkg.line_of_dep(&name))
                .hint("publish the package to a registry (or a private one set in .npmrc), or copy its code into the app"));
            }
        }
    }
    if pkg.value.contains_key("workspaces") {
        return Err(PluginError::new("npm workspaces are not supported yet")
            .in_file("package.json", pkg.line_of_key("workspaces", None))
            .hint("build the workspace package as its own app directory"));
    }

    let common = json!({
        "app_dir": app_dir,
        "node": probe.key_doc(),
        "platform": ctx.base.platform,
        "manager": manager.key_doc(),
        "package": {"sha256": sha256_tagged(ftl::canonical_json(&pkg.install_fields()).as_bytes())},
        "lockfile": lock.as_ref().map(|l| json!({"file": l.kind.file(), "sha256": sha256_tagged(&l.bytes)})),
        "npmrc": npmrc.as_ref().map(Npmrc::key_doc),
        "npm_env": npm_env_doc(ctx),
        "global_npmrc": probe.npm_config,
        "toolchain": probe.toolchain_doc(),
    });
    let pinned = lock.is_some();

    let install = Arc::new(InstallPlan {
        pkg: pkg.clone(),
        lock: lock.clone(),
        manager: manager.clone(),
        npmrc: npmrc.clone(),
        probe: probe.clone(),
        app_dir: app_dir.clone(),
        timeout: settings.install_timeout,
        base_ref: ctx.base.reference.clone(),
    });

    let mut plan = LayerPlan {
        layers: Vec::new(),
        steps: Vec::new(),
        config: ConfigPatch::default(),
        notes: serde_json::Value::Null,
        warnings: Vec::new(),
    };
    let lock_name = lock
        .as_ref()
        .map(|l| l.kind.file())
        .unwrap_or("no lockfile");
    if pkg.has_prod_deps() {
        let mut doc = common.clone();
        doc["layer"] = json!("node_modules");
        doc["omit"] = json!(["dev"]);
        plan.steps.push(Box::new(DepsStep::new(install.clone())));
        plan.layers.push(PlannedLayer {
            name: "node_modules".into(),
            key: CacheKey::new(PLUGIN, KEY_VERSION, doc),
            pinned,
            step: plan.steps.len() - 1,
            created_by: format!(
                "ftl node: {} ({lock_name}) in {app_dir}",
                manager.install_command(lock.is_some(), true)
            ),
        });
    }

    let app_source = source.without(excluded_from_app);
    let paths: Vec<PathBuf> = app_source.entries().to_vec();
    if gcp_build {
        let files = ftl::app::content_key(PLUGIN, "app", &app_source, &paths, &app_dir)?;
        let mut doc = common.clone();
        doc["layer"] = json!("app+gcp-build");
        doc["files"] = json!(files.hex);
        plan.steps.push(Box::new(GcpBuildStep::new(
            install.clone(),
            app_source.clone(),
            paths,
        )));
        plan.layers.push(PlannedLayer {
            name: "app".into(),
            key: CacheKey::new(PLUGIN, KEY_VERSION, doc),
            pinned,
            step: plan.steps.len() - 1,
            created_by: format!(
                "ftl node: COPY . {app_dir} && {} && {} gcp-build",
                manager.install_command(lock.is_some(), false),
                manager.run_command()
            ),
        });
    } else if !scripts.is_empty() {
        // What the app's own lifecycle scripts write into the app
        // directory ships: the layer is what they leave, so its key names
        // everything they can read (the app's files, package.json among
        // them, and what the install gives them).
        let files = ftl::app::content_key(PLUGIN, "app", &app_source, &paths, &app_dir)?;
        let mut doc = common.clone();
        doc["layer"] = json!("app+scripts");
        doc["scripts"] = json!(scripts);
        doc["files"] = json!(files.hex);
        let runs: Vec<String> = manager
            .lifecycle_runs(&scripts)
            .into_iter()
            .map(|(_, args)| args.join(" "))
            .collect();
        plan.steps.push(Box::new(ScriptsStep::new(
            install.clone(),
            app_source.clone(),
            paths,
            scripts,
        )));
        plan.layers.push(PlannedLayer {
            name: "app".into(),
            key: CacheKey::new(PLUGIN, KEY_VERSION, doc),
            pinned,
            step: plan.steps.len() - 1,
            created_by: format!(
                "ftl node: COPY . {app_dir} && {} && {}",
                manager.install_command(lock.is_some(), true),
                runs.join(" && ")
            ),
        });
    } else {
        ftl::app::push_source_layer(&mut plan, PLUGIN, "app", &app_source, paths, &app_dir)?;
    }

    let ep = entrypoint::find(source, ctx.options.entrypoint.as_deref(), &pkg)?;
    tracing::debug!(entrypoint = ?ep.argv, from = %ep.source, "entrypoint");
    plan.warnings.extend(ep.warning.clone());
    plan.config = ConfigPatch {
        env: vec![
            ("PORT".into(), "8080".into()),
            ("NODE_ENV".into(), "production".into()),
        ],
        entrypoint: Some(ep.argv),
        // The base's CMD (node images: `node`) would become arguments of
        // the entrypoint.
        cmd: Some(Vec::new()),
        workdir: Some(app_dir),
        exposed_ports: vec!["8080/tcp".into()],
        labels: BTreeMap::new(),
    };
    Ok(plan)
}
