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

/// The top-level `entrypoint:` scalar of an app.yaml and its line. A tiny
/// reader: app.yaml's `entrypoint` is a one-line string.
pub fn app_yaml_entrypoint(text: &str) -> Result<Option<(usize, String)>, PluginError> {
    for (i, line) in text.lines().enumerate() {
        let Some(rest) = line.strip_prefix("entrypoint:") else {
            continue;
        };
        let mut value = rest.trim();
        if let Some(hash) = value.find(" #") {
            value = value[..hash].trim_end();
        }
        if value.starts_with('|') || value.starts_with('>') {
            return Err(
                PluginError::new("multi-line `entrypoint:` values are not supported")
                    .in_file("app.yaml", Some(i + 1))
                    .hint("write the command on one line"),
            );
        }
        let unquoted = if value.len() >= 2
            && ((value.starts_with('"') && value.ends_with('"'))
                || (value.starts_with('\'') && value.ends_with('\'')))
        {
            let inner = &value[1..value.len() - 1];
            if value.starts_with('\'') {
                inner.replace("''", "'")
            } else {
                inner.replace("\\\"", "\"").replace("\\\\", "\\")
            }
        } else {
            value.to_string()
        };
        return Ok(Some((i + 1, unquoted)));
    }
    Ok(None)
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
    use super::app_yaml_entrypoint;

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
        assert!(app_yaml_entrypoint("entrypoint: >\n  a\n").is_err());
        assert!(app_yaml_entrypoint("entrypoint: |\n  a\n").is_err());
    }
}
