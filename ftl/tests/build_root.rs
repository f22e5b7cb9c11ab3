//! Layers whose bytes depend on the root they were built on
//! ([`LayerContents::root_dependent`]): recorded per base image, behind a
//! marker under the planned key, locally and in the registry cache; other
//! layers of the same kind of key are still reused on any base. Real
//! engine, a real registry, two tiny bases; a test plugin whose step runs
//! no command, so no sandbox is needed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ftl::engine::{BuildReport, BuildRequest, Engine, EngineSettings, LayerSource, Output, Quiet};
use ftl::image::{sha256_digest, OCI_MANIFEST};
use ftl::layer::{write_layer, LayerSettings, OCI_LAYER_GZIP};
use ftl::plugin::*;
use ftl::CacheKey;
use ftl_registry_client::{
    BytesSource, Client, ClientSettings, NoProgress, PushBlob, PushRequest, Reference,
};
use ftl_test_support::registry::{Registry, RegistryOptions};

/// A plugin of one layer, `native`, whose contents name the base they
/// were built on and are root-dependent when `root_dependent` says so.
struct Native {
    root_dependent: bool,
}

struct NativeStep {
    root_dependent: bool,
}

impl LanguagePlugin for Native {
    fn id(&self) -> &'static str {
        "native"
    }
    fn detect(&self, _: &ftl::SourceTree) -> bool {
        false
    }

    fn detects(&self) -> ftl::Detects {
        ftl::Detects {
            name: "test",
            files: &[],
            also: None,
        }
    }
    fn plan(&self, _: &PlanContext<'_>) -> Result<LayerPlan, PluginError> {
        Ok(LayerPlan {
            layers: vec![PlannedLayer {
                name: "native".into(),
                // The same key on every base, as an interpreter-keyed layer.
                key: CacheKey::new("native", 1, serde_json::json!({"interpreter": "x"})),
                pinned: true,
                step: 0,
                created_by: "native".into(),
            }],
            steps: vec![Box::new(NativeStep {
                root_dependent: self.root_dependent,
            })],
            config: ConfigPatch::default(),
            notes: serde_json::Value::Null,
            warnings: Vec::new(),
        })
    }
}

impl BuildStep for NativeStep {
    fn build(
        &self,
        wanted: &[usize],
        ctx: &StepContext<'_>,
    ) -> Result<Vec<(usize, LayerContents)>, PluginError> {
        // What a compile links against differs by base.
        let data = if self.root_dependent {
            ctx.base.manifest_digest.clone().into_bytes()
        } else {
            b"portable".to_vec()
        };
        let mut c = LayerContents::new(vec![LayerInput::Bytes {
            path: "/native.so".into(),
            mode: 0o644,
            data,
        }]);
        c.root_dependent = self.root_dependent;
        Ok(vec![(wanted[0], c)])
    }

    fn writes_scratch(&self) -> bool {
        false
    }
}

/// Pushes a base image of one layer holding `/etc/base` = `text`.
async fn push_base(client: &Client, reference: &str, text: &str) {
    let contents = LayerContents::new(vec![LayerInput::Bytes {
        path: "/etc/base".into(),
        mode: 0o644,
        data: text.as_bytes().to_vec(),
    }]);
    let mut layer = Vec::new();
    let d = write_layer(&contents, LayerSettings::default(), &mut layer).unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [d.diff_id]},
    }))
    .unwrap();
    let config_type = "application/vnd.oci.image.config.v1+json";
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": sha256_digest(&config), "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": d.digest, "size": d.size}],
    }))
    .unwrap();
    let blob = |bytes: Vec<u8>, media_type: &str| PushBlob {
        digest: sha256_digest(&bytes).parse().unwrap(),
        size: bytes.len() as u64,
        media_type: media_type.into(),
        source: Some(Arc::new(BytesSource(Bytes::from(bytes)))),
        mount_from: Vec::new(),
    };
    client
        .push(
            PushRequest {
                target: Reference::parse(reference).unwrap(),
                blobs: vec![blob(config, config_type), blob(layer, OCI_LAYER_GZIP)],
                manifest: Bytes::from(manifest),
                manifest_media_type: OCI_MANIFEST.into(),
                extra_tags: Vec::new(),
            },
            Arc::new(NoProgress),
        )
        .await
        .unwrap();
}

struct Rig {
    registry: Registry,
    client: Client,
    runtime: tokio::runtime::Runtime,
}

impl Rig {
    fn start() -> Rig {
        let registry = ftl_test_support::rig::start_registry(RegistryOptions::plain())
            .expect("registry starts");
        let client = Client::new(ClientSettings::default()).unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let rig = Rig {
            registry,
            client,
            runtime,
        };
        for (name, text) in [("a", "base a\n"), ("b", "base b: same runtime\n")] {
            let reference = rig.reference(&format!("base/{name}:latest"));
            rig.runtime
                .block_on(push_base(&rig.client, &reference, text));
        }
        rig
    }

    fn reference(&self, repo: &str) -> String {
        format!("{}/{repo}", self.registry.host())
    }

    /// Builds with the `native` plugin on base `base` (`a` or `b`) into
    /// `app:latest`, with the registry cache at `app/ftl-cache`.
    fn build(
        &self,
        cache_dir: &Path,
        base: &str,
        root_dependent: bool,
        no_cache: bool,
    ) -> BuildReport {
        let engine = Engine::new(
            self.client.clone(),
            EngineSettings {
                cache_dir: cache_dir.to_path_buf(),
                layer: Default::default(),
                unpinned_ttl: Duration::from_secs(3600),
                build_env: Default::default(),
                disk: Default::default(),
            },
            Arc::new(ftl::engine::SandboxRuntime {
                sandbox: Default::default(),
                state_root: cache_dir.join("sandbox-state"),
                detached: None,
                ids: ftl_sandbox::IdRange::DEFAULT,
                limits: Default::default(),
            }),
            vec![Arc::new(Native { root_dependent })],
        )
        .unwrap();
        let source = tempfile::tempdir().unwrap();
        std::fs::write(source.path().join("app.txt"), "app\n").unwrap();
        let req = BuildRequest {
            source: source.path().to_path_buf(),
            base: Reference::parse(&self.reference(&format!("base/{base}:latest"))).unwrap(),
            platform: ftl_registry_client::default_platform(),
            output: Output::Registry(Reference::parse(&self.reference("app:latest")).unwrap()),
            tags: Vec::new(),
            language: Some("native".into()),
            options: Default::default(),
            overrides: Default::default(),
            format: Default::default(),
            cache_repo: Some(Reference::parse(&self.reference("app/ftl-cache")).unwrap()),
            cache_scope: None,
            no_cache,
            verify: None,
            cancel: Default::default(),
        };
        self.runtime
            .block_on(engine.build(&req, Arc::new(Quiet)))
            .unwrap()
    }
}

/// The `native` layer's source and digest.
fn native(r: &BuildReport) -> (LayerSource, String) {
    let l = r.layers.iter().find(|l| l.name == "native").unwrap();
    (l.source, l.digest.clone())
}

fn cache_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
    dir
}

/// A root-dependent layer is built once per base and reused only on the
/// base it was built on, from the local cache and, on another machine,
/// from the registry cache. `--no-cache` still builds.
#[test]
fn a_root_dependent_layer_is_reused_only_on_its_own_base() {
    let rig = Rig::start();
    let cache = cache_dir();
    let on_a = rig.build(cache.path(), "a", true, false);
    assert_eq!(native(&on_a).0, LayerSource::Built);
    let again = rig.build(cache.path(), "a", true, false);
    assert_eq!(native(&again), (LayerSource::LocalCache, native(&on_a).1));

    // The same key on another base: a miss, built there.
    let on_b = rig.build(cache.path(), "b", true, false);
    assert_eq!(native(&on_b).0, LayerSource::Built, "{on_b:#?}");
    assert_ne!(native(&on_b).1, native(&on_a).1);
    // Each base keeps its own.
    let a_again = rig.build(cache.path(), "a", true, false);
    assert_eq!(native(&a_again), (LayerSource::LocalCache, native(&on_a).1));
    let b_again = rig.build(cache.path(), "b", true, false);
    assert_eq!(native(&b_again), (LayerSource::LocalCache, native(&on_b).1));

    // The planned key holds a marker, each base's layer a key of its own.
    let entries = ftl_cache::Cache::open(cache.path())
        .unwrap()
        .keys
        .list()
        .unwrap();
    let native_entries: Vec<_> = entries.iter().filter(|e| e.name == "native").collect();
    assert_eq!(native_entries.len(), 3, "{native_entries:#?}");
    assert_eq!(
        native_entries.iter().filter(|e| e.is_marker()).count(),
        1,
        "{native_entries:#?}"
    );

    // Another machine: the registry cache leads each base to its layer.
    for (base, built) in [("b", &on_b), ("a", &on_a)] {
        let fresh = cache_dir();
        let r = rig.build(fresh.path(), base, true, false);
        assert_eq!(
            native(&r),
            (LayerSource::RegistryCache, native(built).1),
            "{base}"
        );
    }
    // A third base with the same runtime: found nowhere, built.
    let c_ref = rig.reference("base/c:latest");
    rig.runtime
        .block_on(push_base(&rig.client, &c_ref, "base c\n"));
    let fresh = cache_dir();
    let on_c = rig.build(fresh.path(), "c", true, false);
    assert_eq!(native(&on_c).0, LayerSource::Built);

    // --no-cache builds whatever the index holds.
    let forced = rig.build(cache.path(), "a", true, true);
    assert_eq!(native(&forced), (LayerSource::Built, native(&on_a).1));
}

/// A layer that is not root-dependent is reused on another base with the
/// same key, as before.
#[test]
fn a_portable_layer_is_reused_on_another_base() {
    let rig = Rig::start();
    let cache = cache_dir();
    let on_a = rig.build(cache.path(), "a", false, false);
    assert_eq!(native(&on_a).0, LayerSource::Built);
    let on_b = rig.build(cache.path(), "b", false, false);
    assert_eq!(native(&on_b), (LayerSource::LocalCache, native(&on_a).1));
    let fresh = cache_dir();
    let elsewhere = rig.build(fresh.path(), "b", false, false);
    assert_eq!(
        native(&elsewhere),
        (LayerSource::RegistryCache, native(&on_a).1)
    );
    let entries = ftl_cache::Cache::open(cache.path())
        .unwrap()
        .keys
        .list()
        .unwrap();
    assert!(entries.iter().all(|e| !e.is_marker()), "{entries:#?}");
}
