//! Snapshot tests of the plans of the testdata apps, with a fake `Exec`
//! that answers the runtime probe (what Debian bookworm's nodejs and npm
//! answer): layer names, key documents, pinned flags and config. No
//! network, no sandbox.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ftl::{
    BaseInfo, BuildOptions, Exec, ExecOutput, ExecRequest, LanguagePlugin, LayerPlan, PlanContext,
    PluginError, SourceTree,
};
use ftl_node::NodePlugin;
use serde_json::{json, Value};

fn testdata(app: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/node")
        .join(app)
}

fn base_with_env(env: &[&str]) -> BaseInfo {
    let mut e = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG=C.UTF-8",
    ];
    e.extend_from_slice(env);
    let config: oci_spec::image::ImageConfiguration = serde_json::from_value(json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": e, "Cmd": ["node"]},
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

/// What the probe prints on the `node` test base (bookworm).
fn bookworm_probe() -> Value {
    json!({"node":"18.20.4","modules":"108","napi":"9","arch":"x64","platform":"linux","libc":"glibc 2.36",
        "npm":{"path":"/usr/bin/npm","version":"9.2.0"},"yarn":null,"make":null,"cxx":null,"cxx_version":null,
        "python":"/usr/bin/python3","npm_config":{"/usr/share/nodejs/npm/npmrc":"sha256:e54493eeab69442d793c035d2c1cf4b1917d8785f4658afd491a8d62b6b653d7"}})
}

/// Answers the probe; refuses anything else (planning must not install).
struct ProbeExec {
    probe: Value,
    requests: Mutex<Vec<ExecRequest>>,
}

impl ProbeExec {
    fn new(probe: Value) -> Self {
        ProbeExec {
            probe,
            requests: Mutex::new(Vec::new()),
        }
    }
}

impl Exec for ProbeExec {
    fn run(&self, request: &ExecRequest) -> Result<ExecOutput, PluginError> {
        self.requests.lock().unwrap().push(request.clone());
        assert_eq!(request.label, "node probe", "planning runs only the probe");
        assert_eq!(
            request.network,
            ftl::StepNetwork::None,
            "the probe needs no network"
        );
        assert!(
            request.mounts.is_empty(),
            "the probe mounts nothing (so the engine memoizes it)"
        );
        Ok(ExecOutput {
            code: Some(0),
            stdout: format!("{}\n", self.probe).into_bytes(),
            ..ExecOutput::default()
        })
    }
}

fn plan_full(
    app: &Path,
    options: &BuildOptions,
    exec: &dyn Exec,
    base: &BaseInfo,
) -> Result<LayerPlan, PluginError> {
    let source = SourceTree::scan(app).unwrap();
    let ctx = PlanContext {
        source: &source,
        base,
        options,
        exec,
    };
    NodePlugin.plan(&ctx)
}

fn plan(app: &str) -> Result<LayerPlan, PluginError> {
    plan_full(
        &testdata(app),
        &BuildOptions::default(),
        &ProbeExec::new(bookworm_probe()),
        &base_with_env(&[]),
    )
}

/// The plan as JSON: layers (name, pinned, created_by, key inputs), config.
/// The app layer's file hashes are left out (they follow the testdata).
fn render(p: &LayerPlan) -> Value {
    let layers: Vec<Value> = p
        .layers
        .iter()
        .map(|l| {
            let mut inputs = l.key.inputs();
            if let Some(files) = inputs.get_mut("files") {
                *files = json!("<files>");
            }
            json!({"name": l.name, "pinned": l.pinned, "step": l.step, "created_by": l.created_by, "inputs": inputs})
        })
        .collect();
    json!({
        "layers": layers,
        "steps": p.steps.len(),
        "config": {
            "env": p.config.env,
            "entrypoint": p.config.entrypoint,
            "cmd": p.config.cmd,
            "workdir": p.config.workdir,
            "exposed_ports": p.config.exposed_ports,
        }
    })
}

#[test]
fn detects_package_json() {
    assert!(NodePlugin.detect(&SourceTree::scan(&testdata("express")).unwrap()));
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/python");
    if let Ok(dirs) = std::fs::read_dir(py) {
        for d in dirs.flatten().filter(|d| d.path().is_dir()) {
            assert!(
                !NodePlugin.detect(&SourceTree::scan(&d.path()).unwrap()),
                "{}",
                d.path().display()
            );
        }
    }
}

#[test]
fn express_with_lockfile() {
    let p = plan("express").unwrap();
    insta::assert_json_snapshot!(render(&p));
}

#[test]
fn no_lockfile_is_unpinned() {
    let p = plan("nolock").unwrap();
    assert!(!p.layers[0].pinned);
    assert_eq!(
        p.config.entrypoint,
        Some(vec!["node".to_string(), "index.js".to_string()])
    );
    insta::assert_json_snapshot!(render(&p));
}

#[test]
fn gcp_build_app_layer() {
    let p = plan("gcp-build").unwrap();
    insta::assert_json_snapshot!(render(&p));
}

/// A root `postinstall`: the app layer is what the scripts step leaves,
/// keyed by the app's files and the install's inputs, and the scripts it
/// runs are named; the dependency layer is as without it.
/// `node.app_scripts=false` ships the app as it is.
#[test]
fn postinstall_app_layer() {
    let p = plan("postinstall").unwrap();
    insta::assert_json_snapshot!(render(&p));
    let app = p.layers.iter().find(|l| l.name == "app").unwrap();
    assert!(
        app.key.canonical.contains("app+scripts"),
        "{}",
        app.key.canonical
    );
    assert!(
        app.created_by
            .ends_with("&& npm run-script --ignore-scripts postinstall"),
        "{}",
        app.created_by
    );
    let mut opts = BuildOptions::default();
    opts.settings
        .insert("node.app_scripts".into(), "false".into());
    let off = plan_full(
        &testdata("postinstall"),
        &opts,
        &ProbeExec::new(bookworm_probe()),
        &base_with_env(&[]),
    )
    .unwrap();
    let app_off = off.layers.iter().find(|l| l.name == "app").unwrap();
    assert!(!app_off.key.canonical.contains("app+scripts"));
    let deps = |p: &LayerPlan| p.layers[0].key.hex.clone();
    assert_eq!(deps(&p), deps(&off));
}

#[test]
fn native() {
    insta::assert_json_snapshot!(render(&plan("native").unwrap()));
}

#[test]
fn source_node_modules_and_npmrc_never_in_the_app_layer() {
    let p = plan("express").unwrap();
    let app = p.layers.iter().find(|l| l.name == "app").unwrap();
    let doc = app.key.canonical.clone();
    assert!(doc.contains("server.js"));
    assert!(!doc.contains("node_modules"), "{doc}");
}

#[test]
fn keys_follow_their_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("a");
    std::fs::create_dir_all(&app).unwrap();
    for f in ["package.json", "package-lock.json", "server.js"] {
        std::fs::copy(testdata("express").join(f), app.join(f)).unwrap();
    }
    let opts = BuildOptions::default();
    let probe = ProbeExec::new(bookworm_probe());
    let base = base_with_env(&[]);
    let keys = |p: &LayerPlan| -> BTreeMap<String, String> {
        p.layers
            .iter()
            .map(|l| (l.name.clone(), l.key.hex.clone()))
            .collect()
    };
    let k0 = keys(&plan_full(&app, &opts, &probe, &base).unwrap());

    // App code: only the app key changes.
    std::fs::write(app.join("server.js"), "// changed\n").unwrap();
    let k1 = keys(&plan_full(&app, &opts, &probe, &base).unwrap());
    assert_eq!(k0["node_modules"], k1["node_modules"]);
    assert_ne!(k0["app"], k1["app"]);

    // The start script and description do not change what is installed.
    let pj = std::fs::read_to_string(app.join("package.json")).unwrap();
    std::fs::write(
        app.join("package.json"),
        pj.replace("node server.js", "node  server.js")
            .replace("An Express app", "An app"),
    )
    .unwrap();
    let k2 = keys(&plan_full(&app, &opts, &probe, &base).unwrap());
    assert_eq!(k1["node_modules"], k2["node_modules"]);

    // Lockfile bytes, node version, npm version, platform, npmrc, base npm env: each changes it.
    let lock = std::fs::read_to_string(app.join("package-lock.json")).unwrap();
    std::fs::write(
        app.join("package-lock.json"),
        lock.replacen("\"requires\": true", "\"requires\": false", 1),
    )
    .unwrap();
    let k3 = keys(&plan_full(&app, &opts, &probe, &base).unwrap());
    assert_ne!(k2["node_modules"], k3["node_modules"]);

    let mut other = bookworm_probe();
    other["node"] = json!("20.11.0");
    other["modules"] = json!("115");
    let k4 = keys(&plan_full(&app, &opts, &ProbeExec::new(other), &base).unwrap());
    assert_ne!(k3["node_modules"], k4["node_modules"]);
    assert_eq!(
        k3["app"], k4["app"],
        "the app layer is the same bytes on another node"
    );

    let mut other = bookworm_probe();
    other["npm"]["version"] = json!("10.2.4");
    let k5 = keys(&plan_full(&app, &opts, &ProbeExec::new(other), &base).unwrap());
    assert_ne!(k3["node_modules"], k5["node_modules"]);

    let mut arm = base_with_env(&[]);
    arm.platform = "linux/arm64".into();
    assert_ne!(
        k3["node_modules"],
        keys(&plan_full(&app, &opts, &probe, &arm).unwrap())["node_modules"]
    );

    let env_base = base_with_env(&["npm_config_registry=https://mirror.example/"]);
    assert_ne!(
        k3["node_modules"],
        keys(&plan_full(&app, &opts, &probe, &env_base).unwrap())["node_modules"]
    );

    std::fs::write(app.join(".npmrc"), "legacy-peer-deps=true\n").unwrap();
    let k6 = keys(&plan_full(&app, &opts, &probe, &base).unwrap());
    assert_ne!(k3["node_modules"], k6["node_modules"]);
    assert_eq!(k3["app"], k6["app"], ".npmrc is not part of the app layer");

    // A token is hashed: a different token is a different key, and the
    // token itself is nowhere in the key document.
    std::fs::write(app.join(".npmrc"), "//r.example/:_authToken=SECRET-ONE\n").unwrap();
    let p7 = plan_full(&app, &opts, &probe, &base).unwrap();
    std::fs::write(app.join(".npmrc"), "//r.example/:_authToken=SECRET-TWO\n").unwrap();
    let p8 = plan_full(&app, &opts, &probe, &base).unwrap();
    assert_ne!(keys(&p7)["node_modules"], keys(&p8)["node_modules"]);
    for p in [&p7, &p8] {
        for l in &p.layers {
            assert!(!l.key.canonical.contains("SECRET-"), "{}", l.key.canonical);
            assert!(!l.created_by.contains("SECRET-"));
        }
        assert!(!format!("{p:?}").contains("SECRET-"));
    }
}

#[test]
fn entrypoint_order() {
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path();
    let write = |f: &str, s: &str| std::fs::write(app.join(f), s).unwrap();
    let ep = |opts: &BuildOptions| {
        plan_full(
            app,
            opts,
            &ProbeExec::new(bookworm_probe()),
            &base_with_env(&[]),
        )
        .map(|p| p.config.entrypoint.unwrap())
    };
    let opts = BuildOptions::default();

    write("package.json", "{\"name\": \"x\"}");
    let e = ep(&opts).unwrap_err();
    assert_eq!(e.file.as_deref(), Some(Path::new("package.json")));
    assert!(e.to_string().contains("no entrypoint found"), "{e}");

    write("server.js", "");
    assert_eq!(ep(&opts).unwrap(), ["node", "server.js"]);
    write("package.json", "{\"name\": \"x\", \"main\": \"app.js\"}");
    assert_eq!(ep(&opts).unwrap(), ["node", "app.js"]);
    write(
        "package.json",
        "{\"name\": \"x\", \"main\": \"app.js\", \"scripts\": {\"start\": \"node app.js\"}}",
    );
    assert_eq!(ep(&opts).unwrap(), ["npm", "start"]);
    write("app.yaml", "runtime: nodejs18\nentrypoint: node other.js\n");
    assert_eq!(ep(&opts).unwrap(), ["/bin/sh", "-c", "exec node other.js"]);
    let given = BuildOptions {
        entrypoint: Some(vec!["node".into(), "given.js".into()]),
        ..BuildOptions::default()
    };
    assert_eq!(ep(&given).unwrap(), ["node", "given.js"]);
}

#[test]
fn config_env_and_app_dir() {
    let opts = BuildOptions {
        app_dir: "/app/".into(),
        ..BuildOptions::default()
    };
    let p = plan_full(
        &testdata("express"),
        &opts,
        &ProbeExec::new(bookworm_probe()),
        &base_with_env(&[]),
    )
    .unwrap();
    assert_eq!(p.config.workdir.as_deref(), Some("/app"));
    assert!(p.config.env.contains(&("PORT".into(), "8080".into())));
    assert!(p
        .config
        .env
        .contains(&("NODE_ENV".into(), "production".into())));
    assert_eq!(p.layers[0].key.inputs()["app_dir"], "/app");
}

#[test]
fn bad_inputs() {
    let e = plan("bad-json").unwrap_err();
    insta::assert_snapshot!(e.to_string(), @"package.json:7: invalid JSON at line 7, column 3: expected `,` or `}`; fix the syntax of package.json (check for a missing or extra comma, or an unquoted key)");
    let e = plan("bad-out-of-sync").unwrap_err();
    insta::assert_snapshot!(e.to_string(), @"package.json:10: package-lock.json is out of sync with package.json: `left-pad@^1.3.0` (dependencies) is missing from the lockfile; run `npm install` to update package-lock.json and add it to the app (npm ci installs only what the lockfile records)");
    let e = plan("bad-yarn").unwrap_err();
    insta::assert_snapshot!(e.to_string(), @"yarn.lock: the app has a yarn.lock but the base image localhost:5000/base/node:latest has no `yarn`; use a base image with yarn (node:20 images have it; on Debian add the yarnpkg package), or switch to npm: `npm install` makes a package-lock.json (then remove yarn.lock)");
}

#[test]
fn base_without_node() {
    struct NoNode;
    impl Exec for NoNode {
        fn run(&self, _: &ExecRequest) -> Result<ExecOutput, PluginError> {
            Ok(ExecOutput {
                code: Some(127),
                stderr: b"exec: node: not found".to_vec(),
                ..ExecOutput::default()
            })
        }
    }
    let e = plan_full(
        &testdata("express"),
        &BuildOptions::default(),
        &NoNode,
        &base_with_env(&[]),
    )
    .unwrap_err();
    insta::assert_snapshot!(e.to_string(), @"the base image localhost:5000/base/node:latest has no `node`; use a Node.js base image (for example node:20-slim, or Debian with the nodejs and npm packages)");
}

#[test]
fn unknown_setting() {
    let mut opts = BuildOptions::default();
    opts.settings
        .insert("node.instal_timeout".into(), "5".into());
    let e = plan_full(
        &testdata("express"),
        &opts,
        &ProbeExec::new(bookworm_probe()),
        &base_with_env(&[]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown setting"), "{e}");
}

#[test]
fn local_path_dependencies_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("package.json"),
        "{\n  \"name\": \"x\",\n  \"dependencies\": {\n    \"ms\": \"^2.1.3\",\n    \"mine\": \"file:./lib/mine\"\n  }\n}\n",
    )
    .unwrap();
    std::fs::write(tmp.path().join("server.js"), "").unwrap();
    let e = plan_full(
        tmp.path(),
        &BuildOptions::default(),
        &ProbeExec::new(bookworm_probe()),
        &base_with_env(&[]),
    )
    .unwrap_err();
    assert_eq!(e.line, Some(5), "{e}");
    assert!(e.to_string().contains("`mine` is a local path"), "{e}");
}

#[test]
fn yarn_lock_uses_the_base_yarn() {
    let mut probe = bookworm_probe();
    probe["yarn"] = json!({"path": "/usr/bin/yarnpkg", "version": "1.22.19"});
    let p = plan_full(
        &testdata("yarn"),
        &BuildOptions::default(),
        &ProbeExec::new(probe),
        &base_with_env(&[]),
    )
    .unwrap();
    let deps = &p.layers[0];
    assert_eq!(deps.name, "node_modules");
    assert!(deps.pinned);
    assert!(
        deps.created_by.contains(
            "/usr/bin/yarnpkg install --frozen-lockfile --non-interactive --production (yarn.lock)"
        ),
        "{}",
        deps.created_by
    );
    let inputs = deps.key.inputs();
    assert_eq!(
        inputs["manager"],
        json!({"tool": "yarn", "version": "1.22.19"})
    );
    assert_eq!(inputs["lockfile"]["file"], "yarn.lock");
}
