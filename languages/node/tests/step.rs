//! The build steps with a fake `Exec` that plays npm: what the install
//! command is handed (mounts, env, network), and what the layers hold.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ftl::{
    BaseInfo, BuildOptions, Exec, ExecOutput, ExecRequest, LanguagePlugin, LayerInput, PlanContext,
    PluginError, SourceTree, StepContext, StepNetwork,
};
use ftl_node::NodePlugin;
use serde_json::json;

fn testdata(app: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/node")
        .join(app)
}

fn base() -> BaseInfo {
    let config: oci_spec::image::ImageConfiguration = serde_json::from_value(json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["node"]},
        "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap();
    BaseInfo {
        reference: "localhost:5000/base/node:latest".into(),
        manifest_digest: "sha256:2222222222222222222222222222222222222222222222222222222222222222"
            .into(),
        config,
        platform: "linux/amd64".into(),
    }
}

const TOKEN: &str = "npm_FAKE-TOKEN-for-step-tests";

/// Answers the probe; for installs, checks the request and writes a fake
/// package into the mounted app dir; for `npm run gcp-build`, writes dist/.
struct FakeNpm {
    requests: Mutex<Vec<ExecRequest>>,
    persistent: PathBuf,
    fail_with: Option<String>,
}

impl Exec for FakeNpm {
    fn run(&self, req: &ExecRequest) -> Result<ExecOutput, PluginError> {
        self.requests.lock().unwrap().push(req.clone());
        if req.label == "node probe" {
            let probe = json!({"node":"18.20.4","modules":"108","napi":"9","arch":"x64","platform":"linux","libc":"glibc 2.36",
                "npm":{"path":"/usr/bin/npm","version":"9.2.0"},"yarn":null,"make":null,"cxx":null,"cxx_version":null,"python":"/usr/bin/python3","npm_config":{}});
            return Ok(ExecOutput {
                code: Some(0),
                stdout: probe.to_string().into_bytes(),
                ..Default::default()
            });
        }
        if let Some(text) = &self.fail_with {
            return Ok(ExecOutput {
                code: Some(1),
                stderr: text.clone().into_bytes(),
                ..Default::default()
            });
        }
        let app = req
            .mounts
            .iter()
            .find(|m| m.target == "/srv")
            .expect("the app dir is mounted");
        assert!(app.writable);
        if req.args[..2] == ["npm", "run"] {
            std::fs::create_dir_all(app.host.join("dist")).unwrap();
            std::fs::write(app.host.join("dist/server.js"), "built").unwrap();
        } else {
            let m = app.host.join("node_modules/fake");
            std::fs::create_dir_all(&m).unwrap();
            std::fs::write(m.join("index.js"), "module.exports = 1").unwrap();
        }
        Ok(ExecOutput {
            code: Some(0),
            ..Default::default()
        })
    }

    fn persistent_dir(&self, name: &str) -> Result<PathBuf, PluginError> {
        let d = self.persistent.join(name);
        std::fs::create_dir_all(&d).unwrap();
        Ok(d)
    }

    fn package_cache(&self, name: &str, trust: ftl::CacheTrust) -> Result<PathBuf, PluginError> {
        // Only npm's content-addressed tarballs may reach the next build.
        assert_eq!(
            trust,
            ftl::CacheTrust::ContentAddressed {
                dir: "npm/_cacache/content-v2"
            }
        );
        self.persistent_dir(name)
    }
}

fn files_of(input: &LayerInput) -> Vec<String> {
    let (root, to) = match input {
        LayerInput::Tree { from, to } => (from.path(), to.clone()),
        other => panic!("expected a tree, got {other:?}"),
    };
    let mut out = Vec::new();
    for e in walk(&root) {
        let rel = e.strip_prefix(&root).unwrap();
        out.push(format!("{to}/{}", rel.display()));
        if e.is_file() {
            let bytes = std::fs::read(&e).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(TOKEN),
                "token in {}",
                e.display()
            );
        }
    }
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        out.push(p.clone());
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        }
    }
    out
}

fn app_with_npmrc(from: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("app");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(testdata(from))
        .arg(&app)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::write(
        app.join(".npmrc"),
        format!("//registry.example/:_authToken={TOKEN}\nlegacy-peer-deps=true\n"),
    )
    .unwrap();
    (tmp, app)
}

#[test]
fn deps_step_mounts_the_npmrc_as_a_secret_and_returns_node_modules() {
    let (_tmp, app) = app_with_npmrc("express");
    let source = SourceTree::scan(&app).unwrap();
    let base = base();
    let options = BuildOptions::default();
    let persistent = tempfile::tempdir().unwrap();
    let exec = FakeNpm {
        requests: Mutex::new(Vec::new()),
        persistent: persistent.path().into(),
        fail_with: None,
    };
    let plan = NodePlugin
        .plan(&PlanContext {
            source: &source,
            base: &base,
            options: &options,
            exec: &exec,
        })
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let ctx = StepContext {
        source: &source,
        base: &base,
        options: &options,
        exec: &exec,
        scratch: scratch.path(),
    };

    let deps = plan.steps[plan.layers[0].step].build(&[0], &ctx).unwrap();
    assert_eq!(deps.len(), 1);
    let files = files_of(&deps[0].1.inputs[0]);
    assert_eq!(
        files,
        ["/srv/node_modules/fake", "/srv/node_modules/fake/index.js"]
    );

    let reqs = exec.requests.lock().unwrap();
    let install = reqs.iter().find(|r| r.label.starts_with("npm ci")).unwrap();
    assert_eq!(install.args[..3], ["npm", "ci", "--omit=dev"]);
    assert_eq!(install.network, StepNetwork::Egress);
    assert_eq!(install.cwd, "/srv");
    let secret = install
        .mounts
        .iter()
        .find(|m| m.target == "/ftl-secrets")
        .expect("secret mount");
    assert!(!secret.writable);
    assert!(std::fs::read_to_string(secret.host.join("npmrc"))
        .unwrap()
        .contains(TOKEN));
    assert!(install
        .env
        .contains(&("npm_config_userconfig".into(), "/ftl-secrets/npmrc".into())));
    let cache = install
        .mounts
        .iter()
        .find(|m| m.target == "/ftl-package-cache")
        .expect("package cache mount");
    assert!(cache.writable && cache.host.starts_with(persistent.path()));
    // The token is in no argument, no env value, no label.
    assert!(!format!("{:?} {:?} {}", install.args, install.env, install.label).contains(TOKEN));
    // The install saw package.json and the lockfile, never .npmrc, in the app dir.
    let app_mount = install.mounts.iter().find(|m| m.target == "/srv").unwrap();
    assert!(app_mount.host.join("package-lock.json").is_file());
    assert!(!app_mount.host.join(".npmrc").exists());
    assert!(
        !std::fs::read_to_string(app_mount.host.join("package.json"))
            .unwrap()
            .contains("\"scripts\"")
    );
}

#[test]
fn gcp_build_step_keeps_output_and_drops_node_modules() {
    let (_tmp, app) = app_with_npmrc("gcp-build");
    let source = SourceTree::scan(&app).unwrap();
    let base = base();
    let options = BuildOptions::default();
    let persistent = tempfile::tempdir().unwrap();
    let exec = FakeNpm {
        requests: Mutex::new(Vec::new()),
        persistent: persistent.path().into(),
        fail_with: None,
    };
    let plan = NodePlugin
        .plan(&PlanContext {
            source: &source,
            base: &base,
            options: &options,
            exec: &exec,
        })
        .unwrap();
    let app_index = plan.layers.iter().position(|l| l.name == "app").unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let ctx = StepContext {
        source: &source,
        base: &base,
        options: &options,
        exec: &exec,
        scratch: scratch.path(),
    };
    let out = plan.steps[plan.layers[app_index].step]
        .build(&[app_index], &ctx)
        .unwrap();
    let files = files_of(&out[0].1.inputs[0]);
    assert!(
        files.contains(&"/srv/dist/server.js".to_string()),
        "{files:?}"
    );
    assert!(files.contains(&"/srv/build.js".to_string()), "{files:?}");
    assert!(
        !files
            .iter()
            .any(|f| f.contains("node_modules") || f.contains(".npmrc")),
        "{files:?}"
    );
    let reqs = exec.requests.lock().unwrap();
    let labels: Vec<&str> = reqs.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "node probe",
            "npm ci --include=dev --no-audit --no-fund --no-update-notifier",
            "npm run gcp-build"
        ]
    );
}

fn failing(text: &str, app: &str) -> PluginError {
    let source = SourceTree::scan(&testdata(app)).unwrap();
    let base = base();
    let options = BuildOptions::default();
    let persistent = tempfile::tempdir().unwrap();
    let probe_only = FakeNpm {
        requests: Mutex::new(Vec::new()),
        persistent: persistent.path().into(),
        fail_with: None,
    };
    let plan = NodePlugin
        .plan(&PlanContext {
            source: &source,
            base: &base,
            options: &options,
            exec: &probe_only,
        })
        .unwrap();
    let exec = FakeNpm {
        requests: Mutex::new(Vec::new()),
        persistent: persistent.path().into(),
        fail_with: Some(text.into()),
    };
    let scratch = tempfile::tempdir().unwrap();
    let ctx = StepContext {
        source: &source,
        base: &base,
        options: &options,
        exec: &exec,
        scratch: scratch.path(),
    };
    match plan.steps[0].build(&[0], &ctx) {
        Err(e) => e,
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn npm_failures_are_explained() {
    let e = failing(
        "npm ERR! code E404\nnpm ERR! 404 Not Found - GET https://registry.npmjs.org/ftl-no-such-package-7c1e9a - Not found\nnpm ERR! 404 \nnpm ERR! 404  'ftl-no-such-package-7c1e9a@^1.0.0' is not in this registry.\n",
        "bad-missing-package",
    );
    insta::assert_snapshot!(e.to_string(), @"package.json:10: package `ftl-no-such-package-7c1e9a` (`ftl-no-such-package-7c1e9a@^1.0.0`) does not exist on the registry https://registry.npmjs.org/; check the package name and version in package.json (npm view NAME versions)");
    let e = failing(
        "npm ERR! code 1\nnpm ERR! path /srv/node_modules/epoll\nnpm ERR! command failed\nnpm ERR! command sh -c node-gyp rebuild\nnpm ERR! gyp ERR! stack Error: not found: make\n",
        "native",
    );
    insta::assert_snapshot!(e.to_string(), @"package.json:10: native module `epoll` must be compiled with node-gyp, but the base image localhost:5000/base/node:latest has no C/C++ toolchain (missing: make, g++); use a base image with build tools (on Debian: apt-get install g++ make python3), or a version of the package that ships prebuilt binaries");
    let e = failing(
        "npm ERR! code EUSAGE\nnpm ERR! `npm ci` can only install packages when your package.json and package-lock.json or npm-shrinkwrap.json are in sync. Please update your lock file with `npm install` before continuing.\nnpm ERR! Missing: express@4.22.3 from lock file\n",
        "express",
    );
    insta::assert_snapshot!(e.to_string(), @"package.json:11: package-lock.json is out of sync with package.json: Missing: express@4.22.3 from lock file; run `npm install` to update package-lock.json and add it to the app");
}
