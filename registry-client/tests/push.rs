//! Pushes against a real registry (Debian's docker-registry), checked with
//! skopeo and the registry's storage.

mod common;

use std::sync::Arc;

use common::*;
use ftl_registry_client::{
    default_platform, sha256_digest, BlobAction, BlobSource, BytesSource, Client, ClientSettings,
    Error, MediaType, NoProgress, PushBlob, PushProgress, PushRequest,
};
use ftl_test_support::registry::{Registry, RegistryOptions};

fn start(options: RegistryOptions) -> Registry {
    Registry::start(options).unwrap_or_else(|e| panic!("{e:#}"))
}

fn skopeo(args: &[&str]) -> String {
    let out = std::process::Command::new(require_skopeo())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn pushed_images_are_read_by_skopeo_in_oci_and_docker_form() {
    let registry = start(RegistryOptions::plain());
    let client = client_for(&registry);
    for (docker, repo) in [(false, "app/oci"), (true, "app/docker")] {
        let img = image(repo, docker);
        let target = reference(&registry, &format!("{repo}:v1"));
        let report = client
            .push(img.request(&target, &[], true), Arc::new(NoProgress))
            .await
            .unwrap();
        assert_eq!(report.manifest_digest, img.manifest_digest());
        assert_eq!(report.bytes_uploaded, img.total_blob_bytes());
        assert!(report
            .blobs
            .iter()
            .all(|b| matches!(b.action, BlobAction::Uploaded { .. })));
        let image_ref = format!("docker://{}/{repo}:v1", registry.host());
        let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &image_ref]);
        assert_eq!(
            raw.as_bytes(),
            &img.manifest[..],
            "skopeo sees our exact manifest"
        );
        let inspect: serde_json::Value =
            serde_json::from_str(&skopeo(&["inspect", "--tls-verify=false", &image_ref])).unwrap();
        assert_eq!(inspect["Digest"], img.manifest_digest().to_string());
        assert_eq!(inspect["Layers"].as_array().unwrap().len(), 2);
        assert_eq!(inspect["Env"][0], format!("SEED={repo}"));
        // A full copy reads and verifies every blob.
        let out = tempfile::tempdir().unwrap();
        let dest = format!("oci:{}:v1", out.path().join("layout").display());
        skopeo(&[
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &image_ref,
            &dest,
        ]);
        for layer in &img.layers {
            let hex = sha256_digest(layer)
                .to_string()
                .trim_start_matches("sha256:")
                .to_owned();
            let copied = std::fs::read(out.path().join("layout/blobs/sha256").join(hex)).unwrap();
            assert_eq!(&copied[..], &layer[..]);
        }
        assert_eq!(registry.tags(repo), vec!["v1".to_owned()]);
    }
}

#[tokio::test]
async fn a_second_push_uploads_nothing() {
    let registry = start(RegistryOptions::plain());
    let client = client_for(&registry);
    let img = image("repush", false);
    let target = reference(&registry, "app/repush:1");
    client
        .push(img.request(&target, &[], true), Arc::new(NoProgress))
        .await
        .unwrap();
    let again = client
        .push(img.request(&target, &[], true), Arc::new(NoProgress))
        .await
        .unwrap();
    assert_eq!(again.bytes_uploaded, 0);
    assert!(
        again.blobs.iter().all(|b| b.action == BlobAction::Present),
        "{:?}",
        again.blobs
    );
    // 3 HEADs + 1 manifest PUT.
    assert_eq!(again.requests, 4);
}

#[tokio::test]
async fn blobs_listed_twice_are_pushed_once_and_extra_tags_are_written() {
    let registry = start(RegistryOptions::plain());
    let client = client_for(&registry);
    let img = image("dup", false);
    let target = reference(&registry, "app/dup:a");
    let mut request = img.request(&target, &[], true);
    request.blobs.push(request.blobs[1].clone());
    request.extra_tags = vec!["b".into(), "c".into()];
    let report = client.push(request, Arc::new(NoProgress)).await.unwrap();
    assert_eq!(report.blobs.len(), 3);
    assert_eq!(report.bytes_uploaded, img.total_blob_bytes());
    assert_eq!(registry.tags("app/dup"), vec!["a", "b", "c"]);
    let mut tags = client.list_tags(&target).await.unwrap();
    tags.sort();
    assert_eq!(tags, vec!["a", "b", "c"]);
    assert!(client
        .list_tags(&reference(&registry, "app/none:x"))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn blobs_are_mounted_across_repositories() {
    let registry = start(RegistryOptions::plain());
    let client = client_for(&registry);
    let img = image("mount", true);
    let base = reference(&registry, "base/image:1");
    client
        .push(img.request(&base, &[], true), Arc::new(NoProgress))
        .await
        .unwrap();
    // No sources at all: every blob must come by mount (201).
    let target = reference(&registry, "app/mounted:1");
    let report = client
        .push(
            img.request(&target, &["other/empty", "base/image"], false),
            Arc::new(NoProgress),
        )
        .await
        .unwrap();
    assert_eq!(report.bytes_uploaded, 0);
    for b in &report.blobs {
        assert_eq!(
            b.action,
            BlobAction::Mounted {
                from: "base/image".into()
            }
        );
        let hex = b
            .digest
            .to_string()
            .trim_start_matches("sha256:")
            .to_owned();
        assert!(registry.repository_has_blob("app/mounted", &hex));
    }
    assert_eq!(
        registry.open_uploads("app/mounted"),
        0,
        "declined mounts leave no session behind"
    );
}

#[tokio::test]
async fn a_declined_mount_continues_in_the_session_it_opened() {
    let registry = start(RegistryOptions::plain());
    let client = client_for(&registry);
    let img = image("mount202", false);
    // The source repository exists but lacks these blobs: the registry
    // answers 202 with an upload session, which the push uses.
    client
        .push(
            image("other", false).request(&reference(&registry, "lacks/blobs:1"), &[], true),
            Arc::new(NoProgress),
        )
        .await
        .unwrap();
    let target = reference(&registry, "app/m202:1");
    let before = client.request_count();
    let report = client
        .push(
            img.request(&target, &["lacks/blobs"], true),
            Arc::new(NoProgress),
        )
        .await
        .unwrap();
    assert!(report
        .blobs
        .iter()
        .all(|b| matches!(b.action, BlobAction::Uploaded { .. })));
    assert_eq!(report.bytes_uploaded, img.total_blob_bytes());
    // Per blob: HEAD, mount POST (202), PUT; then the manifest. No extra POST.
    assert_eq!(report.requests, 3 * 3 + 1);
    assert_eq!(client.request_count() - before, report.requests);
    assert_eq!(registry.open_uploads("app/m202"), 0);
    skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{}/app/m202:1", registry.host()),
    ]);

    // Without a source the session is cancelled and the push fails cleanly.
    let img2 = image("mount202-nosource", false);
    let target2 = reference(&registry, "app/m202b:1");
    let err = client
        .push(
            img2.request(&target2, &["lacks/blobs"], false),
            Arc::new(NoProgress),
        )
        .await
        .unwrap_err();
    let text = chain(&err);
    assert!(
        text.contains("could not be mounted from [\"lacks/blobs\"]"),
        "{text}"
    );
    assert!(text.contains("no manifest was written"), "{text}");
    assert_eq!(registry.open_uploads("app/m202b"), 0);
    assert_eq!(registry.manifest_count("app/m202b"), 0);
}

#[derive(Default)]
struct CountingProgress {
    bytes: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicU64,
}

impl PushProgress for CountingProgress {
    fn bytes_sent(&self, _d: &ftl_registry_client::Digest, n: u64) {
        self.bytes.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
    }
    fn blob_done(&self, _d: &ftl_registry_client::Digest, _a: &BlobAction) {
        self.done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn large_blobs_are_uploaded_in_chunks() {
    let registry = start(RegistryOptions::plain());
    let client = Client::new(ClientSettings {
        chunked_upload_threshold: 10_000,
        chunk_size: 4_096,
        ..settings_for(&registry)
    })
    .unwrap();
    // Incompressible content, so the layer is ~30 kB: 8 chunks.
    let mut state = 0x2545F4914F6CDD1Du64;
    let noise: Vec<u8> = (0..30_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let big = gzip_tar(&[("big.bin", &noise)]);
    let img = image_with_layers(
        "chunked",
        false,
        vec![big.clone(), gzip_tar(&[("small", b"x")])],
    );
    let target = reference(&registry, "app/chunked:1");
    let progress = Arc::new(CountingProgress::default());
    let report = client
        .push(img.request(&target, &[], true), progress.clone())
        .await
        .unwrap();
    assert_eq!(report.bytes_uploaded, img.total_blob_bytes());
    assert_eq!(
        progress.bytes.load(std::sync::atomic::Ordering::SeqCst),
        img.total_blob_bytes()
    );
    assert_eq!(progress.done.load(std::sync::atomic::Ordering::SeqCst), 3);
    let chunks = big.0.len().div_ceil(4096) as u64;
    // config (HEAD, POST, PUT) + small layer (same) + big (HEAD, POST,
    // chunks x PATCH, PUT) + manifest.
    assert_eq!(report.requests, 3 + 3 + (3 + chunks) + 1);
    let back = client
        .get_blob_bytes(&target, &sha256_digest(&big.0), 1 << 20)
        .await
        .unwrap();
    assert_eq!(back, big.0);
    assert_eq!(registry.open_uploads("app/chunked"), 0);
}

#[tokio::test]
async fn a_failing_push_writes_no_manifest() {
    let registry = start(RegistryOptions::plain());
    let client = client_for(&registry);
    let img = image("failing", false);
    let target = reference(&registry, "app/failing:1");
    let mut request = img.request(&target, &[], true);
    // The second layer's source yields other bytes than its digest names.
    request.blobs[2].source = Some(Arc::new(BytesSource(bytes::Bytes::from_static(
        b"not the layer",
    ))) as Arc<dyn BlobSource>);
    request.blobs[2].size = 13;
    let err = client
        .push(request, Arc::new(NoProgress))
        .await
        .unwrap_err();
    let text = chain(&err);
    assert!(matches!(err, Error::Push { .. }), "{text}");
    assert!(text.contains("no manifest was written"), "{text}");
    assert!(
        text.contains(&img.blobs(&[], false)[2].digest.to_string()),
        "{text}"
    );
    assert_eq!(registry.manifest_count("app/failing"), 0);
    // (The rejected upload's session is cancelled, but distribution 2.8
    // answers 404 to that DELETE and leaves the directory for its purge.)
    assert!(registry.tags("app/failing").is_empty());
    assert!(client.head_manifest(&target).await.unwrap().is_none());
}

#[tokio::test]
async fn resolve_picks_the_platform_and_fetches_only_manifest_and_config() {
    let registry = start(RegistryOptions::plain());
    let client = client_for(&registry);
    let amd = image("amd64", false);
    let arm = image("arm64", false);
    let repo = reference(&registry, "base/multi:1");
    for img in [&amd, &arm] {
        // Pushed by digest only, as the members of an index are.
        let by_digest = ftl_registry_client::Reference::parse(&format!(
            "{}/base/multi@{}",
            registry.host(),
            img.manifest_digest()
        ))
        .unwrap();
        client
            .push(img.request(&by_digest, &[], true), Arc::new(NoProgress))
            .await
            .unwrap();
    }
    assert!(registry.tags("base/multi").is_empty());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": ftl_registry_client::OCI_INDEX,
        "manifests": [
            {"mediaType": ftl_registry_client::OCI_MANIFEST, "size": arm.manifest.len(), "digest": arm.manifest_digest().to_string(), "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": ftl_registry_client::OCI_MANIFEST, "size": amd.manifest.len(), "digest": amd.manifest_digest().to_string(), "platform": {"os": "linux", "architecture": "amd64"}},
        ]
    });
    let index = bytes::Bytes::from(serde_json::to_vec(&index).unwrap());
    let index_digest = client
        .put_manifest(&repo, index.clone(), &MediaType::ImageIndex)
        .await
        .unwrap();
    let head = client.head_manifest(&repo).await.unwrap().unwrap();
    assert_eq!(head.digest, index_digest);
    let before = client.request_count();
    let resolved = client.resolve(&repo, &default_platform()).await.unwrap();
    assert_eq!(
        client.request_count() - before,
        3,
        "index, manifest, config"
    );
    assert_eq!(resolved.index_digest, Some(index_digest.clone()));
    // A known config is not fetched; bytes that do not match its digest
    // (a corrupt cache) are ignored.
    let known = amd.config.clone();
    let before = client.request_count();
    let cached = client
        .resolve_with(&repo, &default_platform(), &|_| Some(known.clone()))
        .await
        .unwrap();
    assert_eq!(client.request_count() - before, 2, "index, manifest");
    assert_eq!(cached.config_bytes, amd.config);
    let before = client.request_count();
    let corrupt = client
        .resolve_with(&repo, &default_platform(), &|_| {
            Some(bytes::Bytes::from_static(b"{}"))
        })
        .await
        .unwrap();
    assert_eq!(client.request_count() - before, 3, "the config fetched");
    assert_eq!(corrupt.config_bytes, amd.config);
    assert_eq!(resolved.manifest_digest, amd.manifest_digest());
    assert_eq!(resolved.manifest_bytes, amd.manifest);
    assert_eq!(resolved.config_bytes, amd.config);
    assert_eq!(resolved.config_digest, sha256_digest(&amd.config));
    assert_eq!(resolved.manifest.layers().len(), 2);
    assert_eq!(resolved.reference.digest(), Some(&amd.manifest_digest()));
    assert_eq!(
        resolved
            .config
            .config()
            .as_ref()
            .unwrap()
            .env()
            .as_ref()
            .unwrap()[0],
        "SEED=amd64"
    );
    let err = client
        .get_manifest(&reference(&registry, "base/multi:missing"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("base/multi:missing"), "{err}");
}

#[tokio::test]
async fn a_push_by_digest_must_match_the_manifest() {
    let registry = start(RegistryOptions::plain());
    let client = client_for(&registry);
    let img = image("bydigest", false);
    let wrong = sha256_digest(b"something else");
    let target =
        ftl_registry_client::Reference::parse(&format!("{}/app/bd@{wrong}", registry.host()))
            .unwrap();
    let err = client
        .push(img.request(&target, &[], true), Arc::new(NoProgress))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ManifestDigest { .. }), "{err}");
}

#[tokio::test]
async fn transient_failures_are_retried() {
    use ftl_test_support::proxy::{FaultProxy, Rule};
    let registry = start(RegistryOptions::plain());
    let proxy = FaultProxy::start(&format!("http://{}", registry.host())).unwrap();
    let client = Client::new(settings_for(&registry)).unwrap();
    // The first blob PUT answers 503, a HEAD is reset, the manifest PUT 429s.
    proxy.add_rule(
        Rule::status(503)
            .method("PUT")
            .path_contains("/blobs/uploads/")
            .nth(1),
    );
    proxy.add_rule(Rule::reset().method("HEAD").path_contains("/blobs/").nth(2));
    proxy.add_rule(
        Rule::status(429)
            .method("PUT")
            .path_contains("/manifests/")
            .nth(1),
    );
    let img = image("retry", false);
    let target =
        ftl_registry_client::Reference::parse(&format!("{}/app/retry:1", proxy.host())).unwrap();
    let report = client
        .push(img.request(&target, &[], true), Arc::new(NoProgress))
        .await
        .unwrap();
    assert_eq!(report.manifest_digest, img.manifest_digest());
    assert_eq!(registry.tags("app/retry"), vec!["1"]);

    // A source that cannot be reopened is not retried.
    struct OneShot(bytes::Bytes);
    #[async_trait::async_trait]
    impl BlobSource for OneShot {
        async fn open(&self) -> std::io::Result<Box<dyn tokio::io::AsyncRead + Send + Unpin>> {
            Ok(Box::new(std::io::Cursor::new(self.0.clone())))
        }
        fn reopenable(&self) -> bool {
            false
        }
    }
    proxy.add_rule(
        Rule::status(503)
            .method("PUT")
            .path_contains("/blobs/uploads/")
            .always(),
    );
    let layer = bytes::Bytes::from_static(b"one shot layer");
    let request = PushRequest {
        target: ftl_registry_client::Reference::parse(&format!("{}/app/oneshot:1", proxy.host()))
            .unwrap(),
        blobs: vec![PushBlob {
            digest: sha256_digest(&layer),
            size: layer.len() as u64,
            media_type: MediaType::from(OCI_LAYER),
            source: Some(Arc::new(OneShot(layer.clone()))),
            mount_from: vec![],
        }],
        manifest: img.manifest.clone(),
        manifest_media_type: img.manifest_media_type.clone(),
        extra_tags: vec![],
    };
    let before = proxy.count("PUT", "/blobs/uploads/");
    let err = client
        .push(request, Arc::new(NoProgress))
        .await
        .unwrap_err();
    assert!(chain(&err).contains("503"), "{}", chain(&err));
    assert_eq!(proxy.count("PUT", "/blobs/uploads/") - before, 1);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    use ftl_test_support::proxy::{FaultProxy, Rule};
    let registry = start(RegistryOptions::plain());
    let proxy = FaultProxy::start(&format!("http://{}", registry.host())).unwrap();
    let client = client_for(&registry);
    let rule = proxy.add_rule(Rule::retry_after(429, 1).method("HEAD").nth(1));
    let img = image("retry-after", false);
    let target =
        ftl_registry_client::Reference::parse(&format!("{}/app/ra:1", proxy.host())).unwrap();
    let started = std::time::Instant::now();
    client
        .push(img.request(&target, &[], true), Arc::new(NoProgress))
        .await
        .unwrap();
    assert_eq!(proxy.fired(rule), 1);
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "waited {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn manifests_can_be_deleted() {
    let registry = start(RegistryOptions::plain());
    let client = client_for(&registry);
    let img = image("delete", false);
    let target = reference(&registry, "app/del:1");
    let report = client
        .push(img.request(&target, &[], true), Arc::new(NoProgress))
        .await
        .unwrap();
    client
        .delete_manifest(&target, &report.manifest_digest)
        .await
        .unwrap();
    assert!(client.head_manifest(&target).await.unwrap().is_none());
    assert!(client
        .head_manifest(&report.reference)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn file_sources_stream_and_skopeo_converted_images_resolve() {
    let registry = start(RegistryOptions::plain());
    let client = client_for(&registry);
    // A 1 MB incompressible layer streamed from a file.
    let dir = tempfile::tempdir().unwrap();
    let mut state = 0x9E3779B97F4A7C15u64;
    let noise: Vec<u8> = (0..1_000_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let layer = gzip_tar(&[("noise.bin", &noise)]);
    let path = dir.path().join("layer.tar.gz");
    std::fs::write(&path, &layer.0).unwrap();
    let img = image_with_layers("file", false, vec![layer.clone()]);
    let target = reference(&registry, "app/file:1");
    let mut request = img.request(&target, &[], true);
    request.blobs[1].source = Some(Arc::new(ftl_registry_client::FileSource(path)));
    let report = client.push(request, Arc::new(NoProgress)).await.unwrap();
    assert_eq!(report.bytes_uploaded, img.total_blob_bytes());

    // skopeo rewrites the OCI image as Docker v2s2 in another repository;
    // the client reads what another tool wrote.
    skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        &format!("docker://{}/app/file:1", registry.host()),
        &format!("docker://{}/app/converted:1", registry.host()),
    ]);
    let converted = reference(&registry, "app/converted:1");
    let resolved = client
        .resolve(&converted, &default_platform())
        .await
        .unwrap();
    assert_eq!(
        resolved.manifest_media_type.to_string(),
        ftl_registry_client::DOCKER_MANIFEST_V2
    );
    assert_eq!(
        resolved.manifest.layers()[0].digest(),
        &sha256_digest(&layer.0)
    );
    let mut reader = client
        .get_blob(&converted, &sha256_digest(&layer.0))
        .await
        .unwrap()
        .into_reader();
    let mut back = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut back)
        .await
        .unwrap();
    assert_eq!(back, layer.0);
}

#[tokio::test]
async fn concurrency_one_pushes_blob_after_blob() {
    use ftl_test_support::proxy::FaultProxy;
    let registry = start(RegistryOptions::plain());
    let proxy = FaultProxy::start(&format!("http://{}", registry.host())).unwrap();
    let client = Client::new(ClientSettings {
        max_concurrency: 1,
        ..settings_for(&registry)
    })
    .unwrap();
    let img = image("sequential", false);
    let target =
        ftl_registry_client::Reference::parse(&format!("{}/app/seq:1", proxy.host())).unwrap();
    client
        .push(img.request(&target, &[], true), Arc::new(NoProgress))
        .await
        .unwrap();
    let methods: Vec<String> = proxy
        .requests()
        .iter()
        .map(|r| r.method.to_string())
        .collect();
    let per_blob = ["HEAD", "POST", "PUT"];
    let expected: Vec<&str> = per_blob
        .iter()
        .cycle()
        .take(9)
        .copied()
        .chain(["PUT"])
        .collect();
    assert_eq!(methods, expected);
}
