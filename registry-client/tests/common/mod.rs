//! Test images built in memory and clients pointed at test registries.
#![allow(dead_code)]

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use ftl_registry_client::{
    sha256_digest, BlobSource, BytesSource, Client, ClientSettings, Credential, Digest, MediaType,
    PushBlob, PushRequest, Reference,
};
use ftl_test_support::registry::Registry;

pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// A config and layers in memory, and the manifest naming them.
pub struct TestImage {
    pub config: Bytes,
    pub layers: Vec<Bytes>,
    pub manifest: Bytes,
    pub manifest_media_type: MediaType,
    pub config_media_type: &'static str,
    pub layer_media_type: &'static str,
}

pub fn gzip_tar(files: &[(&str, &[u8])]) -> (Bytes, Digest) {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, name, *data).unwrap();
    }
    let raw = tar.into_inner().unwrap();
    let diff_id = sha256_digest(&raw);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(&raw).unwrap();
    (Bytes::from(gz.finish().unwrap()), diff_id)
}

/// A config plus two small layers; `seed` makes the content unique.
pub fn image(seed: &str, docker: bool) -> TestImage {
    image_with_layers(
        seed,
        docker,
        vec![
            gzip_tar(&[("app/hello.txt", format!("hello {seed}\n").as_bytes())]),
            gzip_tar(&[("app/data.bin", format!("data {seed}").repeat(50).as_bytes())]),
        ],
    )
}

pub fn image_with_layers(seed: &str, docker: bool, layers: Vec<(Bytes, Digest)>) -> TestImage {
    let (config_mt, layer_mt, manifest_mt) = if docker {
        (
            DOCKER_CONFIG,
            DOCKER_LAYER,
            ftl_registry_client::DOCKER_MANIFEST_V2,
        )
    } else {
        (OCI_CONFIG, OCI_LAYER, ftl_registry_client::OCI_MANIFEST)
    };
    let diff_ids: Vec<String> = layers.iter().map(|(_, d)| d.to_string()).collect();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [format!("SEED={seed}")], "Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "ftl test"}],
    });
    let config = Bytes::from(serde_json::to_vec(&config).unwrap());
    let layer_descs: Vec<serde_json::Value> = layers
        .iter()
        .map(|(b, _)| serde_json::json!({"mediaType": layer_mt, "size": b.len(), "digest": sha256_digest(b).to_string()}))
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_mt,
        "config": {"mediaType": config_mt, "size": config.len(), "digest": sha256_digest(&config).to_string()},
        "layers": layer_descs,
    });
    TestImage {
        config,
        layers: layers.into_iter().map(|(b, _)| b).collect(),
        manifest: Bytes::from(serde_json::to_vec(&manifest).unwrap()),
        manifest_media_type: MediaType::from(manifest_mt),
        config_media_type: config_mt,
        layer_media_type: layer_mt,
    }
}

impl TestImage {
    pub fn manifest_digest(&self) -> Digest {
        sha256_digest(&self.manifest)
    }

    /// Config then layers, each with an in-memory source and `mount_from`.
    pub fn blobs(&self, mount_from: &[&str], with_sources: bool) -> Vec<PushBlob> {
        let mut out = vec![blob(
            &self.config,
            self.config_media_type,
            mount_from,
            with_sources,
        )];
        for l in &self.layers {
            out.push(blob(l, self.layer_media_type, mount_from, with_sources));
        }
        out
    }

    pub fn request(
        &self,
        target: &Reference,
        mount_from: &[&str],
        with_sources: bool,
    ) -> PushRequest {
        PushRequest {
            target: target.clone(),
            blobs: self.blobs(mount_from, with_sources),
            manifest: self.manifest.clone(),
            manifest_media_type: self.manifest_media_type.clone(),
            extra_tags: vec![],
        }
    }

    pub fn total_blob_bytes(&self) -> u64 {
        (self.config.len() + self.layers.iter().map(|l| l.len()).sum::<usize>()) as u64
    }
}

pub fn blob(bytes: &Bytes, media_type: &str, mount_from: &[&str], with_source: bool) -> PushBlob {
    PushBlob {
        digest: sha256_digest(bytes),
        size: bytes.len() as u64,
        media_type: MediaType::from(media_type),
        source: with_source.then(|| Arc::new(BytesSource(bytes.clone())) as Arc<dyn BlobSource>),
        mount_from: mount_from.iter().map(|s| s.to_string()).collect(),
    }
}

/// A client for `registry`, with its credentials when it has some.
pub fn client_for(registry: &Registry) -> Client {
    Client::new(settings_for(registry)).unwrap()
}

pub fn settings_for(registry: &Registry) -> ClientSettings {
    let mut settings = ClientSettings {
        retry: ftl_registry_client::RetryPolicy {
            max_attempts: 3,
            initial_backoff: std::time::Duration::from_millis(20),
            max_backoff: std::time::Duration::from_millis(200),
        },
        ..ClientSettings::default()
    };
    if let Some((u, p)) = registry.credentials() {
        settings
            .credentials
            .insert(registry.host(), Credential::basic(u, p));
    }
    settings
}

pub fn reference(registry: &Registry, repo_tag: &str) -> Reference {
    Reference::parse(&format!("{}/{repo_tag}", registry.host())).unwrap()
}

pub fn require_skopeo() -> std::path::PathBuf {
    ftl_test_support::registry::require_binary("skopeo", "skopeo")
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Every error in the chain, joined, for assertions on messages.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(" <- ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
