//! ftl-node: the Node.js (npm) language plugin.
//!
//! Plans a Node.js app as, in order: its production dependencies
//! (`node_modules`, installed by the base image's own npm with
//! `npm ci --omit=dev` inside the sandbox, or by yarn for a `yarn.lock`),
//! placed at `<app_dir>/node_modules`, then the app's source at the app
//! directory (after the `gcp-build` script, when package.json has one).
//!
//! The dependency layer's key names the lockfile's bytes, the fields of
//! package.json that change what is installed, the node and npm (or yarn)
//! of the base image (read by a probe that runs the base's node), the
//! platform, the C/C++ toolchain native modules compile with, and the npm
//! configuration that changes resolution (`.npmrc`, `npm_config_*` in the
//! base config, the base's global npmrc), with credentials hashed. Without a
//! lockfile, npm resolves one in the sandbox and the layer is unpinned (its
//! cache entry expires after the TTL).
//!
//! npm's (and yarn's) download cache is the build's view of a package
//! cache of the engine (`Exec::package_cache("node-package-cache")`),
//! mounted read-write at `/ftl-package-cache`: it makes a dependency change
//! download only what is new, and never decides a key. Only npm's
//! content-addressed tarballs that hash to their names reach later builds
//! (`CacheTrust::ContentAddressed`).
//!
//! The app's own lifecycle scripts (`preinstall`, `install`,
//! `postinstall`, `prepublish`, `preprepare`, `prepare`, `postprepare` of
//! the root package.json, which `npm ci` runs) do not run in the dependency
//! install, which sees package.json and the lockfile only. When package.json
//! has any, the app layer is what they leave: a step copies the app,
//! installs the production dependencies the same way, then runs each script
//! once in npm's order (`npm run-script --ignore-scripts NAME`, so no hook
//! runs twice; `preinstall` too runs after the install), and ships the app
//! directory without `node_modules`. That layer's key names the app's files
//! and everything the dependency layer's key names; it is
//! [root-dependent](ftl::LayerContents::root_dependent) when a script
//! compiled code that needs more of the base than every system has. A
//! script that changes `node_modules` (patch-package) fails the build
//! naming the files: that layer is installed without the scripts, to be
//! reused while only the app changes. With `gcp-build` the scripts run in
//! its full install (dev dependencies too), as before it.
//! `node.app_scripts=false` runs none of them (the app ships as it is).
//!
//! Not supported yet (each a clear error): local-path dependencies
//! (`file:`), npm workspaces; a yarn.lock on a base without yarn. npm's
//! implicit `node-gyp rebuild` of a root package with a `binding.gyp` and no
//! `install` script is not run.
//!
//! `.npmrc` (with its auth tokens) reaches the install only as a file
//! mounted read-only outside the app directory (`NPM_CONFIG_USERCONFIG`);
//! it is never written into a layer, and the app layer leaves it out.
//!
//! Settings (`--set name=value`):
//!
//! | name | default | meaning |
//! |---|---|---|
//! | `node.install_timeout` | `1200` | seconds an install (or `gcp-build`) may take |
//! | `node.gcp_build` | `true` | run the `gcp-build` script when package.json has one |
//! | `node.app_scripts` | `true` | run the root lifecycle scripts (`postinstall`, `prepare`, ...) and ship what they write into the app directory |

mod entrypoint;
mod install;
pub mod npmrc;
pub mod package;
mod plan;
pub mod probe;

use std::time::Duration;

use ftl::{BuildOptions, LanguagePlugin, LayerPlan, PlanContext, PluginError, SourceTree};

pub use entrypoint::Entrypoint;
pub use plan::KEY_VERSION;
pub use probe::{Probe, PROBE_SCRIPT};

/// The Node.js plugin.
#[derive(Debug, Default, Clone, Copy)]
pub struct NodePlugin;

impl LanguagePlugin for NodePlugin {
    fn id(&self) -> &'static str {
        "node"
    }

    fn detects(&self) -> ftl::Detects {
        ftl::Detects {
            name: "Node.js",
            files: &["package.json"],
            also: None,
        }
    }

    fn detect(&self, source: &SourceTree) -> bool {
        source.contains("package.json")
    }

    fn plan(&self, ctx: &PlanContext<'_>) -> Result<LayerPlan, PluginError> {
        let settings = Settings::from_options(ctx.options)?;
        plan::plan(ctx, &settings)
    }
}

/// The plugin's settings, read from `node.*` build settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub install_timeout: Duration,
    pub gcp_build: bool,
    /// Run the root package's lifecycle scripts (`postinstall`,
    /// `prepare`, ...) and ship what they write into the app directory.
    pub app_scripts: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            install_timeout: Duration::from_secs(1200),
            gcp_build: true,
            app_scripts: true,
        }
    }
}

impl Settings {
    /// Reads the `node.*` settings; unknown ones are an error.
    pub fn from_options(options: &BuildOptions) -> Result<Settings, PluginError> {
        let mut s = Settings::default();
        for (name, value) in &options.settings {
            let Some(key) = name.strip_prefix("node.") else {
                continue;
            };
            let bad = |why: &str| PluginError::new(format!("setting {name}={value}: {why}"));
            match key {
                "install_timeout" => {
                    s.install_timeout = Duration::from_secs(
                        value
                            .parse()
                            .map_err(|_| bad("expected a number of seconds"))?,
                    )
                }
                "gcp_build" | "app_scripts" => {
                    let on = match value.as_str() {
                        "true" | "1" | "yes" => true,
                        "false" | "0" | "no" => false,
                        _ => return Err(bad("expected true or false")),
                    };
                    if key == "gcp_build" {
                        s.gcp_build = on
                    } else {
                        s.app_scripts = on
                    }
                }
                _ => {
                    return Err(bad("unknown setting")
                        .hint("known: node.install_timeout, node.gcp_build, node.app_scripts"))
                }
            }
        }
        Ok(s)
    }
}
