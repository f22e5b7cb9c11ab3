//! The plugin without a sandbox: plans of the testdata apps (snapshots of
//! layer names, key documents, pinned flags and config) with a fake `Exec`
//! that answers the toolchain probe, which keys change with which edit, and
//! the Maven step's layering and error messages with a fake Maven.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ftl::{
    BaseInfo, BuildOptions, Exec, ExecOutput, ExecRequest, LanguagePlugin, LayerContents,
    LayerInput, LayerPlan, PlanContext, PluginError, SourceTree, StepContext, StepRoot,
};
use ftl_java::JavaPlugin;

fn testdata(app: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/java")
        .join(app)
}

fn base() -> BaseInfo {
    let config: oci_spec::image::ImageConfiguration = serde_json::from_value(serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64"],
            "Cmd": ["jshell"]
        },
        "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap();
    BaseInfo {
        reference: "localhost:5000/base/java:latest".into(),
        manifest_digest: "sha256:2222222222222222222222222222222222222222222222222222222222222222"
            .into(),
        config,
        platform: "linux/amd64".into(),
    }
}

/// What Debian bookworm's default-jdk-headless and maven answer.
const BOOKWORM_PROBE: &str = "javac=/usr/lib/jvm/java-17-openjdk-amd64/bin/javac
jdk.IMPLEMENTOR=\"Debian\"
jdk.JAVA_RUNTIME_VERSION=\"17.0.15+6-Debian-1deb12u1\"
jdk.JAVA_VERSION=\"17.0.15\"
jdk.OS_ARCH=\"x86_64\"
mvn=/usr/share/maven/bin/mvn
maven_core=maven-core-3.x.jar sha256:5d9c9d5f3e0b8d3f7d1ab0c4b1a7e3b3a4c2f2e1d0c9b8a7f6e5d4c3b2a19081
maven_global_settings=0f0c07dfc1da3a2a8bd3e37fe2cb4c3e3e8bb5e9c0e1b4f1b0c7c3a5a1d2e3f4
";

/// Answers the probe; on `mvn package` runs `maven` (a fake Maven) with
/// the host directories of the request's mounts.
struct FakeExec {
    probe: String,
    requests: Mutex<Vec<ExecRequest>>,
    maven: Box<dyn Fn(&ExecRequest) -> ExecOutput + Send + Sync>,
    repo: tempfile::TempDir,
}

impl FakeExec {
    fn new(probe: &str) -> Self {
        FakeExec {
            probe: probe.into(),
            requests: Mutex::new(Vec::new()),
            maven: Box::new(|_| panic!("planning must not run Maven")),
            repo: tempfile::tempdir().unwrap(),
        }
    }
}

impl Exec for FakeExec {
    fn run(&self, request: &ExecRequest) -> Result<ExecOutput, PluginError> {
        self.requests.lock().unwrap().push(request.clone());
        if request.label == "probe JDK and Maven" {
            assert_eq!(
                request.network,
                ftl::StepNetwork::None,
                "the probe needs no network"
            );
            assert!(request.mounts.is_empty());
            return Ok(ExecOutput {
                code: Some(0),
                stdout: self.probe.clone().into_bytes(),
                ..ExecOutput::default()
            });
        }
        assert_eq!(request.label, "mvn package");
        Ok((self.maven)(request))
    }

    fn package_cache(&self, name: &str, trust: ftl::CacheTrust) -> Result<PathBuf, PluginError> {
        // One repository per project, whose additions are kept unchecked.
        assert!(name.starts_with("java-maven-repo-"), "{name}");
        assert_eq!(trust, ftl::CacheTrust::AddOnly);
        Ok(self.repo.path().to_path_buf())
    }

    fn package_cache_dir(
        &self,
        name: &str,
        trust: ftl::CacheTrust,
    ) -> Result<PathBuf, PluginError> {
        self.package_cache(name, trust)
    }

    fn persistent_dir(&self, name: &str) -> Result<PathBuf, PluginError> {
        if name.starts_with("java-maven-repo-") {
            return Ok(self.repo.path().to_path_buf());
        }
        // The warm compiler's directory (a fake Maven logs no javac
        // command line, so it is never used here).
        assert!(name.starts_with("java-warm-"), "{name}");
        let dir = self.repo.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Ok(dir)
    }
}

fn options(pairs: &[(&str, &str)]) -> BuildOptions {
    let mut o = BuildOptions::default();
    for (k, v) in pairs {
        o.settings.insert(k.to_string(), v.to_string());
    }
    o
}

fn plan_with(
    app: &Path,
    options: &BuildOptions,
    exec: &dyn Exec,
) -> Result<LayerPlan, PluginError> {
    let source = SourceTree::scan(app).unwrap();
    let base = base();
    JavaPlugin.plan(&PlanContext {
        source: &source,
        base: &base,
        options,
        exec,
    })
}

fn plan(app: &Path) -> Result<LayerPlan, PluginError> {
    plan_with(
        app,
        &options(&[("java.builder", "host")]),
        &FakeExec::new(BOOKWORM_PROBE),
    )
}

/// A plan as the snapshot shows it.
fn render(plan: &LayerPlan) -> serde_json::Value {
    let layers: Vec<_> = plan
        .layers
        .iter()
        .map(|l| {
            serde_json::json!({
                "name": l.name,
                "pinned": l.pinned,
                "step": l.step,
                "created_by": l.created_by,
                "key": l.key.hex,
                "inputs": l.key.inputs(),
            })
        })
        .collect();
    let c = &plan.config;
    serde_json::json!({
        "layers": layers,
        "config": {
            "env": c.env,
            "entrypoint": c.entrypoint,
            "cmd": c.cmd,
            "workdir": c.workdir,
            "exposed_ports": c.exposed_ports,
        },
    })
}

fn copy(app: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join(app);
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(testdata(app))
        .arg(&dest)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    (tmp, dest)
}

fn keys(p: &LayerPlan) -> Vec<(String, String)> {
    p.layers
        .iter()
        .map(|l| (l.name.clone(), l.key.hex.clone()))
        .collect()
}

#[test]
fn detects_maven_and_prebuilt_only() {
    for (app, want) in [("hello-maven", true), ("prebuilt", true)] {
        assert_eq!(
            JavaPlugin.detect(&SourceTree::scan(&testdata(app)).unwrap()),
            want,
            "{app}"
        );
    }
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/python/flask");
    if py.is_dir() {
        assert!(!JavaPlugin.detect(&SourceTree::scan(&py).unwrap()));
    }
}

#[test]
fn hello_maven() {
    let exec = FakeExec::new(BOOKWORM_PROBE);
    let p = plan_with(
        &testdata("hello-maven"),
        &options(&[("java.builder", "host")]),
        &exec,
    )
    .unwrap();
    let names: Vec<&str> = p.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        ["java: dependencies", "java: resources", "java: classes"]
    );
    let reqs = exec.requests.lock().unwrap();
    assert_eq!(reqs.len(), 1, "planning runs the probe only");
    assert_eq!(
        reqs[0].root,
        StepRoot::Host,
        "the probe runs where Maven will"
    );
    insta::assert_json_snapshot!(render(&p));
}

#[test]
fn one_changed_class_changes_only_the_classes_key() {
    let (_t, app) = copy("hello-maven");
    let before = keys(&plan(&app).unwrap());
    let file = app.join("src/main/java/com/example/hello/Greeting.java");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("from ftl", "from ftl!")).unwrap();
    let after = keys(&plan(&app).unwrap());
    let changed: Vec<&str> = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a.0.as_str())
        .collect();
    assert_eq!(changed, ["java: classes"]);

    // A resource: only resources.
    std::fs::write(app.join("src/main/resources/greeting.txt"), "hi\n").unwrap();
    let res = keys(&plan(&app).unwrap());
    let changed: Vec<&str> = after
        .iter()
        .zip(&res)
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a.0.as_str())
        .collect();
    assert_eq!(changed, ["java: resources"]);

    // Build output is not an input.
    std::fs::create_dir_all(app.join("target/classes")).unwrap();
    std::fs::write(app.join("target/classes/x.class"), "x").unwrap();
    assert_eq!(keys(&plan(&app).unwrap()), res);

    // The pom: everything (the build definition changed).
    let pom = std::fs::read_to_string(app.join("pom.xml")).unwrap();
    std::fs::write(
        app.join("pom.xml"),
        pom.replace("<version>1.0.0</version>", "<version>1.0.1</version>"),
    )
    .unwrap();
    let pom_changed = keys(&plan(&app).unwrap());
    assert!(res.iter().zip(&pom_changed).all(|(a, b)| a.1 != b.1));
}

#[test]
fn a_different_jdk_changes_classes_not_dependencies() {
    let a = plan(&testdata("hello-maven")).unwrap();
    let probe = BOOKWORM_PROBE.replace("17.0.15", "17.0.16");
    let b = plan_with(
        &testdata("hello-maven"),
        &options(&[("java.builder", "host")]),
        &FakeExec::new(&probe),
    )
    .unwrap();
    assert_eq!(a.layers[0].key, b.layers[0].key);
    assert_ne!(a.layers[2].key, b.layers[2].key);
}

#[test]
fn settings_are_hashed_into_keys_never_stored() {
    let (_t, app) = copy("hello-maven");
    let settings = app.join("settings.xml");
    std::fs::write(&settings, "<settings><servers><server><id>x</id><password>s3cret</password></server></servers></settings>").unwrap();
    let a = plan(&app).unwrap();
    for l in &a.layers {
        assert!(!l.key.canonical.contains("s3cret"));
        assert!(l.key.inputs()["maven_settings"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"));
    }
    std::fs::write(&settings, "<settings/>").unwrap();
    let b = plan(&app).unwrap();
    assert_ne!(a.layers[0].key, b.layers[0].key);
}

#[test]
fn prebuilt() {
    let p = plan(&testdata("prebuilt")).unwrap();
    let names: Vec<&str> = p.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        ["java: dependencies", "java: resources", "java: classes"]
    );
    insta::assert_json_snapshot!(render(&p));
}

#[test]
fn fat_jar_runs_with_java_jar() {
    let (_t, app) = copy("prebuilt");
    std::fs::remove_dir_all(app.join("target/lib")).unwrap();
    let p = plan(&app).unwrap();
    assert_eq!(p.layers.len(), 1);
    assert_eq!(
        p.config.entrypoint.as_deref().unwrap(),
        ["java", "-jar", "/srv/target/hello-1.0.0.jar"]
    );
}

#[test]
fn jvm_flags_and_entrypoint() {
    let p = plan_with(
        &testdata("hello-maven"),
        &options(&[
            ("java.builder", "host"),
            ("java.jvm_flags", "-Xmx256m -XX:+UseSerialGC"),
        ]),
        &FakeExec::new(BOOKWORM_PROBE),
    )
    .unwrap();
    assert_eq!(
        p.config.entrypoint.unwrap(),
        [
            "java",
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-cp",
            "/srv/resources:/srv/classes:/srv/libs/*",
            "com.example.hello.Main"
        ]
    );
    assert!(p.config.env.contains(&("PORT".into(), "8080".into())));
}

#[test]
fn bad_pom_syntax() {
    let e = plan(&testdata("bad-pom-syntax")).unwrap_err();
    assert_eq!(e.file.as_deref(), Some(Path::new("pom.xml")));
    insta::assert_snapshot!(e.to_string());
}

#[test]
fn no_jdk_in_the_builder() {
    let e = plan_with(
        &testdata("hello-maven"),
        &BuildOptions::default(),
        &FakeExec::new(""),
    )
    .unwrap_err();
    insta::assert_snapshot!(e.to_string());
}

#[test]
fn multi_module_needs_the_app_module() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let pom = |aid: &str, extra: &str| {
        format!("<project><modelVersion>4.0.0</modelVersion><groupId>g</groupId><artifactId>{aid}</artifactId><version>1</version>{extra}</project>")
    };
    std::fs::write(
        root.join("pom.xml"),
        pom(
            "parent",
            "<packaging>pom</packaging><modules><module>lib</module><module>app</module></modules>",
        ),
    )
    .unwrap();
    for m in ["lib", "app"] {
        std::fs::create_dir_all(root.join(m).join("src/main/java/g")).unwrap();
        std::fs::write(root.join(m).join("pom.xml"), pom(m, "")).unwrap();
    }
    std::fs::write(
        root.join("app/src/main/java/g/App.java"),
        "package g; class App { public static void main(String[] a) {} }",
    )
    .unwrap();
    std::fs::write(
        root.join("lib/src/main/java/g/Lib.java"),
        "package g; class Lib {}",
    )
    .unwrap();
    let e = plan(root).unwrap_err();
    assert!(
        e.to_string()
            .contains("--set java.module=DIR (jar modules: lib, app)"),
        "{e}"
    );
    let p = plan_with(
        root,
        &options(&[("java.builder", "host"), ("java.module", "app")]),
        &FakeExec::new(BOOKWORM_PROBE),
    )
    .unwrap();
    let names: Vec<&str> = p.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "java: dependencies",
            "java: project modules",
            "java: resources",
            "java: classes"
        ]
    );
    assert_eq!(
        p.config.entrypoint.as_ref().unwrap().last().unwrap(),
        "g.App"
    );
}

// ------------------------------------------------------------ the Maven step

/// The host directory mounted at `target`.
fn mounted(req: &ExecRequest, target: &str) -> PathBuf {
    req.mounts
        .iter()
        .find(|m| m.target == target)
        .unwrap()
        .host
        .clone()
}

fn run_step(
    app: &Path,
    exec: &FakeExec,
    wanted: &[usize],
) -> Result<Vec<(usize, LayerContents)>, PluginError> {
    let source = SourceTree::scan(app).unwrap();
    let base = base();
    let opts = options(&[
        ("java.builder", "host"),
        (
            "java.maven_settings",
            testdata("settings-offline.xml").to_str().unwrap(),
        ),
    ]);
    let p = JavaPlugin
        .plan(&PlanContext {
            source: &source,
            base: &base,
            options: &opts,
            exec,
        })
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let ctx = StepContext {
        source: &source,
        base: &base,
        options: &opts,
        exec,
        scratch: scratch.path(),
    };
    let out = p.steps[0].build(wanted, &ctx)?;
    // Resolve the inputs to file lists before the scratch dir goes.
    Ok(out
        .into_iter()
        .map(|(i, c)| {
            let inputs = c
                .inputs
                .into_iter()
                .map(|inp| match inp {
                    LayerInput::Files { root, to, paths } => LayerInput::Bytes {
                        path: to,
                        mode: 0,
                        data: paths
                            .iter()
                            .map(|p| {
                                format!(
                                    "{}{}\n",
                                    p.display(),
                                    if root.path().join(p).is_dir() {
                                        "/"
                                    } else {
                                        ""
                                    }
                                )
                            })
                            .collect::<String>()
                            .into_bytes(),
                    },
                    other => other,
                })
                .collect();
            (i, LayerContents::new(inputs))
        })
        .collect())
}

fn listing(c: &LayerContents) -> (String, String) {
    match &c.inputs[0] {
        LayerInput::Bytes { path, data, .. } => {
            (path.clone(), String::from_utf8_lossy(data).into_owned())
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn maven_step_layers_classes_resources_and_libs() {
    let mut exec = FakeExec::new(BOOKWORM_PROBE);
    exec.maven = Box::new(|req| {
        assert_eq!(req.root, StepRoot::Host);
        assert_eq!(req.network, ftl::StepNetwork::Egress);
        assert!(req.args.iter().any(|a| a == "-s"), "{:?}", req.args);
        assert!(
            req.args.iter().any(|a| a == "process-classes"),
            "{:?}",
            req.args
        );
        assert!(
            req.args.iter().any(|a| a.ends_with(":copy-dependencies")),
            "a dependency layer is wanted"
        );
        assert!(req.mounts.iter().all(|m| m.target.starts_with("/tmp/")));
        assert!(
            req.mounts
                .iter()
                .any(|m| m.target == "/tmp/ftl-m2" && m.writable),
            "the local repository is a persistent rw mount"
        );
        let work = mounted(req, "/tmp/ftl-java");
        assert!(work.join("settings.xml").is_file());
        let src = work.join("src");
        assert!(src.join("pom.xml").is_file());
        let classes = src.join("target/classes");
        std::fs::create_dir_all(classes.join("com/example/hello")).unwrap();
        std::fs::write(classes.join("com/example/hello/Main.class"), "main").unwrap();
        std::fs::write(classes.join("com/example/hello/Greeting.class"), "greeting").unwrap();
        std::fs::write(classes.join("greeting.txt"), "hello, world\n").unwrap();
        std::fs::create_dir_all(classes.join("META-INF/services")).unwrap();
        std::fs::write(
            classes.join("META-INF/services/generated"),
            "by a processor",
        )
        .unwrap();
        std::fs::create_dir_all(work.join("lib")).unwrap();
        std::fs::write(work.join("lib/commons-lang3-3.12.0.jar"), "jar").unwrap();
        ExecOutput {
            code: Some(0),
            ..Default::default()
        }
    });
    let out = run_step(&testdata("hello-maven"), &exec, &[0, 1, 2]).unwrap();
    let got: Vec<(String, String)> = out.iter().map(|(_, c)| listing(c)).collect();
    assert_eq!(
        got,
        [
            ("/srv/libs".to_string(), "commons-lang3-3.12.0.jar\n".to_string()),
            ("/srv/resources".to_string(), "greeting.txt\n".to_string()),
            (
                "/srv/classes".to_string(),
                "META-INF/\nMETA-INF/services/\nMETA-INF/services/generated\ncom/\ncom/example/\ncom/example/hello/\ncom/example/hello/Greeting.class\ncom/example/hello/Main.class\n".to_string()
            ),
        ]
    );
}

/// A Maven plugin (code of the build, run in the sandbox) replaces
/// `target/classes` with a link to a host directory: the step is an error
/// naming it, and no layer is made of the host's files.
#[test]
fn java_target_classes_symlink_is_refused() {
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("shadow"), "root:HOST-SECRET").unwrap();
    let host_dir = host.path().to_path_buf();
    let mut exec = FakeExec::new(BOOKWORM_PROBE);
    exec.maven = Box::new(move |req| {
        let target = mounted(req, "/tmp/ftl-java").join("src/target");
        std::fs::create_dir_all(&target).unwrap();
        std::os::unix::fs::symlink(&host_dir, target.join("classes")).unwrap();
        ExecOutput {
            code: Some(0),
            ..Default::default()
        }
    });
    let e = run_step(&testdata("hello-maven"), &exec, &[0, 1, 2]).unwrap_err();
    assert_eq!(
        e.message,
        "`src/target/classes` left by `mvn package` is a symlink, not a directory: refusing to follow it"
    );

    // A link above it (`target` itself) is refused as well.
    let host_dir = host.path().to_path_buf();
    exec.maven = Box::new(move |req| {
        let src = mounted(req, "/tmp/ftl-java").join("src");
        std::fs::create_dir_all(host_dir.join("classes")).unwrap();
        std::fs::write(host_dir.join("classes/Main.class"), "HOST-SECRET").unwrap();
        std::os::unix::fs::symlink(&host_dir, src.join("target")).unwrap();
        ExecOutput {
            code: Some(0),
            ..Default::default()
        }
    });
    let e = run_step(&testdata("hello-maven"), &exec, &[0, 1, 2]).unwrap_err();
    assert!(e.message.contains("refusing to follow it"), "{e}");
}

#[test]
fn unresolvable_dependency_names_the_pom_line() {
    let mut exec = FakeExec::new(BOOKWORM_PROBE);
    exec.maven = Box::new(|_| {
        ExecOutput {
        code: Some(1),
        stdout: b"[INFO] Scanning for projects...\n[ERROR] Failed to execute goal on project hello: Could not resolve dependencies for project com.example:hello:jar:1.0.0: Could not find artifact org.apache.commons:commons-lang3-does-not-exist:jar:3.12.0 in debian (file:///usr/share/maven-repo) -> [Help 1]\n".to_vec(),
        ..Default::default()
    }
    });
    let e = run_step(&testdata("bad-missing-dependency"), &exec, &[0]).unwrap_err();
    insta::assert_snapshot!(e.to_string());
    assert_eq!(e.line, Some(21));
}

#[test]
fn compilation_error_names_the_source_line() {
    let mut exec = FakeExec::new(BOOKWORM_PROBE);
    exec.maven = Box::new(|_| {
        ExecOutput {
        code: Some(1),
        stdout: b"[ERROR] COMPILATION ERROR : \n[ERROR] /tmp/ftl-java/src/src/main/java/com/example/hello/Main.java:[14,9] cannot find symbol\n".to_vec(),
        ..Default::default()
    }
    });
    let e = run_step(&testdata("hello-maven"), &exec, &[2]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "src/main/java/com/example/hello/Main.java:14: compilation failed: cannot find symbol"
    );
}

#[test]
fn jar_step_explodes_the_jar() {
    let app = testdata("prebuilt");
    let source = SourceTree::scan(&app).unwrap();
    let base = base();
    let opts = BuildOptions::default();
    let exec = FakeExec::new("");
    let p = JavaPlugin
        .plan(&PlanContext {
            source: &source,
            base: &base,
            options: &opts,
            exec: &exec,
        })
        .unwrap();
    assert!(
        exec.requests.lock().unwrap().is_empty(),
        "a prebuilt jar needs no toolchain"
    );
    let scratch = tempfile::tempdir().unwrap();
    let ctx = StepContext {
        source: &source,
        base: &base,
        options: &opts,
        exec: &exec,
        scratch: scratch.path(),
    };
    let out = p.steps[p.layers[2].step].build(&[1, 2], &ctx).unwrap();
    let LayerInput::Tree { from, to } = &out[1].1.inputs[0] else {
        panic!()
    };
    let from = &from.path();
    assert_eq!(to, "/srv/classes");
    assert!(from.join("com/example/hello/Main.class").is_file());
    assert!(!from.join("greeting.txt").exists());
    let LayerInput::Tree { from, to } = &out[0].1.inputs[0] else {
        panic!()
    };
    let from = &from.path();
    assert_eq!(to, "/srv/resources");
    assert_eq!(
        std::fs::read(from.join("greeting.txt")).unwrap(),
        b"hello, world\n"
    );
    assert!(!from.join("META-INF/MANIFEST.MF").exists());
}

#[test]
fn classes_only_skips_the_dependency_plugin() {
    let mut exec = FakeExec::new(BOOKWORM_PROBE);
    exec.maven = Box::new(|req| {
        assert!(
            req.args.iter().any(|a| a == "process-classes"),
            "{:?}",
            req.args
        );
        assert!(
            !req.args.iter().any(|a| a.contains("copy-dependencies")),
            "{:?}",
            req.args
        );
        let classes = mounted(req, "/tmp/ftl-java").join("src/target/classes");
        std::fs::create_dir_all(&classes).unwrap();
        std::fs::write(classes.join("A.class"), "a").unwrap();
        ExecOutput {
            code: Some(0),
            ..Default::default()
        }
    });
    let out = run_step(&testdata("hello-maven"), &exec, &[2]).unwrap();
    assert_eq!(
        listing(&out[0].1),
        ("/srv/classes".to_string(), "A.class\n".to_string())
    );
}
