//! The Java plugin end to end, as a user runs it: a real registry, the
//! `java` base image (Debian's JRE) built from Debian packages, real Maven
//! in ftl's sandbox on the host's toolchain (the base has no JDK), offline
//! through settings that mirror every repository to Debian's
//! /usr/share/maven-repo.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ftl_test_support::rig::{self, app_layers, built, digests, uploaded, Rig};

fn testdata(app: &str) -> PathBuf {
    rig::testdata("java", app)
}

/// A private copy of a testdata app, to edit.
fn copy_app(app: &str) -> (tempfile::TempDir, PathBuf) {
    rig::copy_app("java", app)
}

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| Rig::start(env!("CARGO_BIN_EXE_ftl"), &["java"]).expect("test rig starts"))
}

/// The offline Maven settings and the host toolchain.
fn maven_flags() -> Vec<String> {
    vec![
        "--set".into(),
        format!(
            "java.maven_settings={}",
            testdata("settings-offline.xml").display()
        ),
        "--set".into(),
        "java.builder=host".into(),
    ]
}

fn flags<'a>(owned: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = owned.iter().map(String::as_str).collect();
    v.extend_from_slice(extra);
    v
}

#[test]
fn maven_app_builds_verifies_and_rebuilds_incrementally() {
    let rig = rig();
    let cache = tempfile::tempdir().unwrap();
    let (_tmp, app) = copy_app("hello-maven");
    let image = rig.image("java/hello:e2e");
    let base = rig.base("java");
    let mf = maven_flags();

    // Cold: Maven runs in the sandbox, every layer built and pushed, and
    // the app answers HTTP 200 on the JRE base in the sandbox.
    let cold = rig
        .build(
            cache.path(),
            &app,
            &base,
            &image,
            &flags(&mf, &["--verify"]),
        )
        .report();
    assert_eq!(cold["verify"]["status"], 200, "{cold:#}");
    let names: Vec<String> = app_layers(&cold).into_iter().map(|l| l.0).collect();
    assert_eq!(
        names,
        ["java: dependencies", "java: resources", "java: classes"]
    );
    assert_eq!(built(&cold), names, "a cold build builds every layer");

    // Unchanged: nothing built, nothing uploaded, same digest.
    let noop = rig
        .build(cache.path(), &app, &base, &image, &flags(&mf, &[]))
        .report();
    assert_eq!(noop["digest"], cold["digest"]);
    assert_eq!(noop["layers_built"], 0);
    assert_eq!(noop["bytes_uploaded"], 0);

    // One changed class: only the classes layer is built and pushed.
    let file = app.join("src/main/java/com/example/hello/Greeting.java");
    let src = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        src.replace("\" from ftl\\n\"", "\" from ftl, changed\\n\""),
    )
    .unwrap();
    let change = rig
        .build(
            cache.path(),
            &app,
            &base,
            &image,
            &flags(&mf, &["--verify"]),
        )
        .report();
    assert_eq!(change["verify"]["status"], 200);
    assert_eq!(built(&change), ["java: classes"], "{change:#}");
    assert_eq!(uploaded(&change), ["java: classes"], "{change:#}");
    assert_ne!(change["digest"], cold["digest"]);
    let before = digests(&cold);
    for (name, digest) in digests(&change) {
        if name != "java: classes" {
            assert!(
                before.contains(&(name.clone(), digest)),
                "layer {name} changed"
            );
        }
    }
}

#[test]
fn maven_dependency_change_rebuilds_from_the_pom_and_uploads_the_dependency() {
    let rig = rig();
    let cache = tempfile::tempdir().unwrap();
    let (_tmp, app) = copy_app("hello-maven");
    let image = rig.image("java/hello-deps:e2e");
    let base = rig.base("java");
    let mf = maven_flags();
    let first = rig
        .build(cache.path(), &app, &base, &image, &flags(&mf, &[]))
        .report();

    // One more dependency (one Debian ships, so the offline mirror has it).
    let pom = std::fs::read_to_string(app.join("pom.xml")).unwrap();
    let dep = "<dependency><groupId>commons-cli</groupId><artifactId>commons-cli</artifactId><version>1.5.0</version></dependency>";
    std::fs::write(
        app.join("pom.xml"),
        pom.replacen("<dependencies>", &format!("<dependencies>{dep}"), 1),
    )
    .unwrap();
    let added = rig
        .build(
            cache.path(),
            &app,
            &base,
            &image,
            &flags(&mf, &["--verify"]),
        )
        .report();
    assert_eq!(added["verify"]["status"], 200, "{added:#}");
    // The pom is the build definition: every layer is rebuilt (one Maven
    // run), but only the dependency layer has new bytes to upload.
    assert_eq!(uploaded(&added), ["java: dependencies"], "{added:#}");
    let before = digests(&first);
    for (name, digest) in digests(&added) {
        let same = before.contains(&(name.clone(), digest));
        assert_eq!(same, name != "java: dependencies", "layer {name}");
    }
}

#[test]
fn prebuilt_jar_and_lib_build_without_maven_and_verify() {
    let rig = rig();
    let cache = tempfile::tempdir().unwrap();
    let (_tmp, app) = copy_app("prebuilt");
    let image = rig.image("java/prebuilt:e2e");
    let base = rig.base("java");

    // No builder setting: a prebuilt jar needs no JDK or Maven.
    let jvm = ["--jvm-flag=-Xmx64m", "--jvm-flag", "-XX:+UseSerialGC"];
    let cold = rig
        .build(
            cache.path(),
            &app,
            &base,
            &image,
            &[&jvm[..], &["--verify"]].concat(),
        )
        .report();
    assert_eq!(cold["verify"]["status"], 200, "{cold:#}");
    let names: Vec<String> = app_layers(&cold).into_iter().map(|l| l.0).collect();
    assert_eq!(
        names,
        ["java: dependencies", "java: resources", "java: classes"]
    );

    let inspect = rig.ftl(cache.path(), &["inspect", &image, "--json"]);
    assert!(
        inspect.stdout.contains("-Xmx64m") && inspect.stdout.contains("-XX:+UseSerialGC"),
        "the JVM flags are in the entrypoint:\n{}\n{}",
        inspect.stdout,
        inspect.stderr
    );

    let noop = rig.build(cache.path(), &app, &base, &image, &jvm).report();
    assert_eq!(noop["digest"], cold["digest"]);
    assert_eq!(noop["layers_built"], 0);
    assert_eq!(noop["bytes_uploaded"], 0);

    // The same jar with another dependency jar beside it: only the
    // dependency layer changes.
    std::fs::copy(
        "/usr/share/java/commons-cli.jar",
        app.join("target/lib/commons-cli-1.5.0.jar"),
    )
    .unwrap();
    let more = rig.build(cache.path(), &app, &base, &image, &jvm).report();
    assert_eq!(built(&more), ["java: dependencies"], "{more:#}");
}

#[test]
fn bad_inputs_fail_clearly_and_push_nothing() {
    let rig = rig();
    let mf = maven_flags();
    let cases: &[(&str, &[&str])] = &[
        ("bad-pom-syntax", &["pom.xml:21:", "not well-formed XML"]),
        (
            "bad-missing-dependency",
            &[
                "pom.xml:21:",
                "org.apache.commons:commons-lang3-does-not-exist:3.12.0",
                "cannot be resolved",
            ],
        ),
    ];
    for (app, needles) in cases {
        let cache = tempfile::tempdir().unwrap();
        let repo = format!("java/{app}");
        let run = rig.build(
            cache.path(),
            &testdata(app),
            &rig.base("java"),
            &rig.image(&format!("{repo}:x")),
            &flags(&mf, &[]),
        );
        let err = run.error();
        for n in *needles {
            assert!(err.contains(n), "{app}: {n:?} not in:\n{err}");
        }
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{app}: one clear error:\n{err}"
        );
        assert!(rig.registry.tags(&repo).is_empty(), "{app}: nothing pushed");
    }

    // A JRE-only base and no builder: says what to do.
    let cache = tempfile::tempdir().unwrap();
    let run = rig.build(
        cache.path(),
        &testdata("hello-maven"),
        &rig.base("java"),
        &rig.image("java/nojdk:x"),
        &[],
    );
    let err = run.error();
    assert!(
        err.contains("has neither a JDK (javac) nor Maven (mvn)") && err.contains("java.builder"),
        "{err}"
    );
    assert!(rig.registry.tags("java/nojdk").is_empty());

    // A builder image is pulled, unpacked and probed like the base (here
    // the JRE image itself, which has no javac either).
    let cache = tempfile::tempdir().unwrap();
    let builder = format!("java.builder={}", rig.base("java"));
    let run = rig.build(
        cache.path(),
        &testdata("hello-maven"),
        &rig.base("java"),
        &rig.image("java/nojdk:y"),
        &["--set", &builder],
    );
    let err = run.error();
    assert!(
        err.contains(&format!("the builder image {}", rig.base("java")))
            && err.contains("has neither a JDK"),
        "{err}"
    );
}

#[test]
fn multi_module_build_layers_the_sibling_module_jar() {
    let rig = rig();
    let cache = tempfile::tempdir().unwrap();
    let (_tmp, app) = copy_app("multi-module");
    let image = rig.image("java/multi:e2e");
    let base = rig.base("java");
    let mf = maven_flags();
    let module = flags(&mf, &["--set", "java.module=app"]);

    let cold = rig
        .build(
            cache.path(),
            &app,
            &base,
            &image,
            &[&module[..], &["--verify"]].concat(),
        )
        .report();
    assert_eq!(cold["verify"]["status"], 200, "{cold:#}");
    let names: Vec<String> = app_layers(&cold).into_iter().map(|l| l.0).collect();
    assert_eq!(
        names,
        [
            "java: dependencies",
            "java: project modules",
            "java: resources",
            "java: classes"
        ]
    );

    // A change in the library module: its jar is the only new upload (the
    // jar is reproducible: Maven builds it with a fixed outputTimestamp).
    let file = app.join("lib/src/main/java/com/example/lib/Greeter.java");
    let src = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, src.replace("\"Hello, \"", "\"Hi, \"")).unwrap();
    let change = rig
        .build(cache.path(), &app, &base, &image, &module)
        .report();
    assert_eq!(uploaded(&change), ["java: project modules"], "{change:#}");
}

/// Files below `dir`, recursively.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(p),
                Ok(t) if t.is_file() && !rig::is_volume_image(&p) => out.push(p),
                _ => {}
            }
        }
    }
    out
}

/// The bytes of `f`, gunzipped when it is gzip.
fn plain(f: &Path) -> Vec<u8> {
    let raw = std::fs::read(f).unwrap_or_default();
    if raw.starts_with(&[0x1f, 0x8b]) {
        let out = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(f)
            .output()
            .unwrap();
        return out.stdout;
    }
    raw
}

#[test]
fn maven_settings_secrets_reach_no_layer_config_cache_or_report() {
    let rig = rig();
    let cache = tempfile::tempdir().unwrap();
    let (_tmp, app) = copy_app("hello-maven");
    // The project's own settings (picked up without --maven-settings), with
    // a server password.
    let secret = "ftl-maven-secret-5b1f0e";
    let settings = std::fs::read_to_string(testdata("settings-offline.xml")).unwrap();
    let with_secret = settings.replace(
        "<mirrors>",
        &format!("<servers><server><id>private</id><username>me</username><password>{secret}</password></server></servers>\n  <mirrors>"),
    );
    std::fs::write(app.join("settings.xml"), with_secret).unwrap();
    let image = rig.image("java/secret:e2e");
    let run = rig.build(
        cache.path(),
        &app,
        &rig.base("java"),
        &image,
        &["--set", "java.builder=host"],
    );
    let report = run.report();
    assert!(!run.stdout.contains(secret) && !run.stderr.contains(secret));

    let ours: Vec<String> = app_layers(&report)
        .into_iter()
        .map(|l| l.1.trim_start_matches("sha256:").to_string())
        .chain([report["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string()])
        .collect();
    let mut checked = 0;
    for f in files_below(&rig.registry.storage_dir()) {
        if ours
            .iter()
            .any(|hex| f.components().any(|c| c.as_os_str() == hex.as_str()))
        {
            assert!(
                !plain(&f)
                    .windows(secret.len())
                    .any(|w| w == secret.as_bytes()),
                "the secret is in {}",
                f.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= ours.len(), "checked {checked} registry files");
    for f in files_below(cache.path()) {
        if f.components().any(|c| {
            ["rootfs", "layers", "persistent"].contains(&c.as_os_str().to_str().unwrap_or(""))
        }) {
            continue;
        }
        assert!(
            !plain(&f)
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "the secret is in {}",
            f.display()
        );
    }
}

/// The labels of the sandboxed steps a build ran, less the toolchain probe
/// (which runs every build on the host's root).
fn steps(report: &serde_json::Value) -> Vec<String> {
    report["steps"]
        .as_array()
        .expect("steps in the report")
        .iter()
        .map(|s| s["label"].as_str().unwrap().to_string())
        .filter(|l| l != "probe JDK and Maven")
        .collect()
}

#[test]
fn warm_compiler_rebuilds_a_changed_class_as_maven_would() {
    let rig = rig();
    let cache = tempfile::tempdir().unwrap();
    let (_tmp, app) = copy_app("hello-maven");
    let image = rig.image("java/hello-warm:e2e");
    let base = rig.base("java");
    let mf = maven_flags();

    // Maven builds and records javac's command line; the warm compiler
    // starts in the background and proves it on the sources Maven compiled.
    let first = rig
        .build(cache.path(), &app, &base, &image, &flags(&mf, &[]))
        .report();
    assert!(
        steps(&first).iter().any(|s| s == "mvn package"),
        "{first:#}"
    );
    let warm_dir = std::fs::read_dir(cache.path().join("persistent"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("java-warm-")
        })
        .expect("a warm compiler directory");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while !warm_dir.join("work/javac.sock").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the warm compiler did not start: {}",
            std::fs::read_to_string(cache.path().join("resident").join(format!(
                "{}.log",
                warm_dir.file_name().unwrap().to_string_lossy()
            )))
            .unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // One changed class: javac in the warm compiler, no Maven; only the
    // classes layer is built, and the image still answers.
    let file = app.join("src/main/java/com/example/hello/Greeting.java");
    let original = std::fs::read_to_string(&file).unwrap();
    let changed = original.replace("\" from ftl\\n\"", "\" from ftl, warm\\n\"");
    std::fs::write(&file, &changed).unwrap();
    let warm = rig
        .build(
            cache.path(),
            &app,
            &base,
            &image,
            &flags(&mf, &["--verify"]),
        )
        .report();
    assert_eq!(steps(&warm), ["javac (warm compiler)"], "{warm:#}");
    assert_eq!(built(&warm), ["java: classes"], "{warm:#}");
    assert_eq!(warm["verify"]["status"], 200, "{warm:#}");
    let recipe: serde_json::Value =
        serde_json::from_slice(&std::fs::read(warm_dir.join("recipe.json")).unwrap()).unwrap();
    assert_eq!(recipe["status"], "proven", "{recipe:#}");

    // The same sources built by Maven alone give the same classes layer,
    // byte for byte.
    let maven_cache = tempfile::tempdir().unwrap();
    let maven = rig
        .build(
            maven_cache.path(),
            &app,
            &base,
            &rig.image("java/hello-warm-maven:e2e"),
            &flags(&mf, &["--set", "java.warm_compiler=off"]),
        )
        .report();
    assert!(steps(&maven).iter().any(|s| s == "mvn package"));
    assert_eq!(
        digests(&maven),
        digests(&warm),
        "the warm compiler's layers differ from Maven's"
    );

    // A compile error: the build falls back to Maven, whose error names
    // the file and line; nothing is pushed.
    std::fs::write(
        &file,
        changed.replace("private Greeting() {}", "private Greeting() {"),
    )
    .unwrap();
    let broken_image = rig.image("java/hello-warm-broken:e2e");
    let run = rig.build(cache.path(), &app, &base, &broken_image, &flags(&mf, &[]));
    let err = run.error();
    assert!(
        err.contains("Greeting.java:") && err.contains("compilation failed"),
        "{err}"
    );
    assert!(rig.registry.tags("java/hello-warm-broken").is_empty());

    // Fixed again: the warm compiler serves it.
    std::fs::write(
        &file,
        original.replace("\" from ftl\\n\"", "\" from ftl, fixed\\n\""),
    )
    .unwrap();
    let fixed = rig
        .build(cache.path(), &app, &base, &image, &flags(&mf, &[]))
        .report();
    assert_eq!(steps(&fixed), ["javac (warm compiler)"], "{fixed:#}");
    assert_eq!(built(&fixed), ["java: classes"]);
}

/// Issue 10: the Maven repository was one read-write directory for every
/// build. Now what a Maven run adds is kept only for builds of the same
/// project *and* output: the pom's coordinates are the build's to choose,
/// the image repository it pushes to is not. A build that claims another
/// project's coordinates but pushes elsewhere gets a repository of its
/// own: nothing it adds (a plugin jar the victim has not downloaded yet)
/// reaches the other's.
#[test]
fn a_build_claiming_another_projects_coordinates_gets_its_own_maven_repository() {
    let rig = rig();
    let cache = tempfile::tempdir().unwrap();
    let (_tmp, app) = copy_app("hello-maven");
    let base = rig.base("java");
    let mf = maven_flags();
    // Maven alone: a warm compiler of this project started here would be
    // the one the warm compiler's test is talking to (same recipe, same
    // container name).
    let repos = |cache: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(cache.join("persistent"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("java-maven-repo-")
            })
            .collect()
    };
    rig.build(
        cache.path(),
        &app,
        &base,
        &rig.image("java/victim:e2e"),
        &flags(&mf, &["--no-cache", "--set", "java.warm_compiler=off"]),
    )
    .report();
    let victim = repos(cache.path());
    assert_eq!(victim.len(), 1, "{victim:?}");
    // The same coordinates, another image repository.
    rig.build(
        cache.path(),
        &app,
        &base,
        &rig.image("java/attacker:e2e"),
        &flags(&mf, &["--no-cache", "--set", "java.warm_compiler=off"]),
    )
    .report();
    let both = repos(cache.path());
    assert_eq!(both.len(), 2, "one repository per output: {both:?}");
    let attacker = both.iter().find(|p| **p != victim[0]).unwrap();
    assert!(
        std::fs::read_dir(attacker).unwrap().next().is_some(),
        "the attacker's build kept what it downloaded, in its own repository"
    );
}
