//! The registry tier of the layer cache against a real registry.

use ftl::engine::regcache;
use ftl::image::sha256_digest;
use ftl::layer::{write_layer, LayerSettings, OCI_LAYER_GZIP};
use ftl::plugin::{LayerContents, LayerInput};
use ftl_cache::CacheEntry;
use ftl_registry_client::{Client, ClientSettings, Reference};
use ftl_test_support::registry::RegistryOptions;

/// A build that made many layers records every one: the cache manifests
/// are pushed side by side, and each used to upload the empty config they
/// share, racing the others (some PUTs got `MANIFEST_BLOB_UNKNOWN`).
#[test]
fn recording_many_new_layers_at_once_records_every_one() {
    const LAYERS: usize = 20;
    let registry =
        ftl_test_support::rig::start_registry(RegistryOptions::plain()).expect("registry starts");
    let dir = tempfile::tempdir().unwrap();
    let mut entries = Vec::new();
    for i in 0..LAYERS {
        let contents = LayerContents::new(vec![LayerInput::Bytes {
            path: format!("/srv/file-{i}.txt"),
            mode: 0o644,
            data: format!("layer {i}\n").into_bytes(),
        }]);
        let mut bytes = Vec::new();
        let d = write_layer(&contents, LayerSettings::default(), &mut bytes).unwrap();
        let path = dir.path().join(format!("layer-{i}"));
        std::fs::write(&path, &bytes).unwrap();
        let key = sha256_digest(format!("key {i}").as_bytes());
        let key = key.trim_start_matches("sha256:").to_string();
        entries.push((
            CacheEntry {
                key,
                digest: d.digest,
                diff_id: d.diff_id,
                size: d.size,
                media_type: OCI_LAYER_GZIP.to_string(),
                created: 1,
                expires: None,
                name: format!("layer {i}"),
                inputs: "{}".into(),
                varies_by: None,
            },
            path,
        ));
    }
    let keys: Vec<String> = entries.iter().map(|(e, _)| e.key.clone()).collect();
    let repo = Reference::parse(&format!("{}/app/ftl-cache", registry.host())).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = Client::new(ClientSettings::default()).unwrap();
    runtime.block_on(regcache::record(&client, &repo, entries, None));

    let mut tags = registry.tags("app/ftl-cache");
    tags.sort();
    let mut want: Vec<String> = keys.iter().map(|k| format!("sha256-{k}")).collect();
    want.sort();
    assert_eq!(tags, want, "every layer is recorded");
    for key in &keys {
        let hit = runtime.block_on(regcache::lookup(&client, &repo, key));
        assert!(hit.is_some_and(|e| e.key == *key), "{key} is a hit");
    }
}
