//! Composing an image: the base's config and layers plus ours, as a config
//! blob and a manifest. Pure functions over JSON, so every field of the base
//! config survives (oci-spec's typed config would drop unknown ones).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};

use crate::plugin::ConfigPatch;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The manifest format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ManifestFormat {
    #[default]
    Oci,
    /// Docker image manifest v2, schema 2.
    Docker,
}

impl ManifestFormat {
    pub fn manifest_type(self) -> &'static str {
        match self {
            ManifestFormat::Oci => OCI_MANIFEST,
            ManifestFormat::Docker => DOCKER_MANIFEST,
        }
    }
    pub fn config_type(self) -> &'static str {
        match self {
            ManifestFormat::Oci => OCI_CONFIG,
            ManifestFormat::Docker => DOCKER_CONFIG,
        }
    }
    /// The layer media type in this format for a layer of media type `mt`
    /// (gzip layers convert; anything else is kept).
    pub fn layer_type(self, mt: &str) -> String {
        let gzip = mt == OCI_LAYER || mt == DOCKER_LAYER;
        match (self, gzip) {
            (ManifestFormat::Oci, true) => OCI_LAYER.into(),
            (ManifestFormat::Docker, true) => DOCKER_LAYER.into(),
            _ => mt.into(),
        }
    }
}

/// Where a layer's bytes are, when a push or an export needs them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LayerOrigin {
    /// A base image layer: never downloaded to push; mounted from (or found
    /// in) the base's repository on the same registry.
    Base {
        registry: String,
        repository: String,
    },
    /// In the local blob store.
    Local { path: PathBuf },
    /// Only in the registry cache repository: mounted from there.
    Remote {
        registry: String,
        repository: String,
    },
}

/// One layer of a composed image: its descriptor, its diffID and where its
/// bytes are. Nothing is read until a push or an export asks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageLayer {
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
    pub media_type: String,
    pub origin: LayerOrigin,
    /// The history entry's `created_by` (for layers ftl adds).
    pub created_by: Option<String>,
}

/// What the user asked to set on the image; applied over the plugin's patch.
#[derive(Debug, Clone, Default)]
pub struct ConfigOverrides {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// The inputs of [`compose`].
pub struct ComposeInput<'a> {
    /// The base config JSON as served.
    pub base_config: &'a [u8],
    /// The base's layers (descriptors with origins), in order.
    pub base_layers: &'a [ImageLayer],
    /// `registry/repository:tag` of the base, for the annotation.
    pub base_name: &'a str,
    /// Manifest digest of the base, for the annotation.
    pub base_digest: &'a str,
    /// Our layers, in order.
    pub layers: &'a [ImageLayer],
    pub patch: &'a ConfigPatch,
    pub overrides: &'a ConfigOverrides,
    pub format: ManifestFormat,
    /// Seconds since the epoch for `created` (SOURCE_DATE_EPOCH or fixed).
    pub created: u64,
}

/// A composed image: config and manifest bytes plus the layers to push.
#[derive(Debug, Clone)]
pub struct ComposedImage {
    pub config: Vec<u8>,
    pub config_digest: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub format: ManifestFormat,
    /// Base layers then ours.
    pub layers: Vec<ImageLayer>,
}

/// An error composing an image.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("base image config of {base} is not valid JSON")]
    BaseConfig {
        base: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("base image config of {base} has no `rootfs.diff_ids` for its {layers} layers")]
    BaseRootfs { base: String, layers: usize },
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// RFC 3339 UTC for unix seconds (no chrono: the only date ftl writes).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn set_env(env: &mut Vec<String>, name: &str, value: &str) {
    let entry = format!("{name}={value}");
    match env
        .iter_mut()
        .find(|e| e.split_once('=').map(|(k, _)| k) == Some(name))
    {
        Some(slot) => *slot = entry,
        None => env.push(entry),
    }
}

fn strings(v: &[String]) -> Value {
    Value::Array(v.iter().cloned().map(Value::String).collect())
}

/// Composes config and manifest.
pub fn compose(input: &ComposeInput<'_>) -> Result<ComposedImage, ComposeError> {
    let mut config: Value =
        serde_json::from_slice(input.base_config).map_err(|source| ComposeError::BaseConfig {
            base: input.base_name.to_string(),
            source,
        })?;
    let root = config
        .as_object_mut()
        .ok_or_else(|| ComposeError::BaseRootfs {
            base: input.base_name.to_string(),
            layers: input.base_layers.len(),
        })?;
    let created = rfc3339(input.created);
    root.insert("created".into(), json!(created));
    root.entry("architecture").or_insert(json!("amd64"));
    root.entry("os").or_insert(json!("linux"));
    // Docker-era fields describing how the base was built say nothing true
    // of our image.
    root.remove("container");
    root.remove("container_config");
    root.remove("docker_version");

    // config
    let cfg = root.entry("config").or_insert_with(|| json!({}));
    if cfg.is_null() {
        *cfg = json!({});
    }
    let cfg = cfg.as_object_mut().expect("config is an object");
    let mut env: Vec<String> = cfg
        .get("Env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for (k, v) in input.patch.env.iter().chain(input.overrides.env.iter()) {
        set_env(&mut env, k, v);
    }
    cfg.insert("Env".into(), strings(&env));
    let entrypoint = input
        .overrides
        .entrypoint
        .as_ref()
        .or(input.patch.entrypoint.as_ref());
    if let Some(ep) = entrypoint {
        cfg.insert("Entrypoint".into(), strings(ep));
        // Setting an entrypoint resets the base's Cmd, as docker does.
        cfg.insert("Cmd".into(), Value::Null);
    }
    if let Some(cmd) = input.overrides.cmd.as_ref().or(input.patch.cmd.as_ref()) {
        cfg.insert("Cmd".into(), strings(cmd));
    }
    if let Some(wd) = input
        .overrides
        .workdir
        .as_ref()
        .or(input.patch.workdir.as_ref())
    {
        cfg.insert("WorkingDir".into(), json!(wd));
    }
    if let Some(user) = &input.overrides.user {
        cfg.insert("User".into(), json!(user));
    }
    let ports: Vec<&String> = input
        .patch
        .exposed_ports
        .iter()
        .chain(input.overrides.ports.iter())
        .collect();
    if !ports.is_empty() {
        let exposed = cfg.entry("ExposedPorts").or_insert_with(|| json!({}));
        if !exposed.is_object() {
            *exposed = json!({});
        }
        for p in ports {
            let p = if p.contains('/') {
                p.clone()
            } else {
                format!("{p}/tcp")
            };
            exposed
                .as_object_mut()
                .expect("object")
                .insert(p, json!({}));
        }
    }
    let labels: BTreeMap<&String, &String> = input
        .patch
        .labels
        .iter()
        .chain(input.overrides.labels.iter())
        .collect();
    if !labels.is_empty() {
        let l = cfg.entry("Labels").or_insert_with(|| json!({}));
        if !l.is_object() {
            *l = json!({});
        }
        for (k, v) in labels {
            l.as_object_mut()
                .expect("object")
                .insert(k.clone(), json!(v));
        }
    }

    // rootfs
    let rootfs = root
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    let diff_ids = rootfs
        .get_mut("diff_ids")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| ComposeError::BaseRootfs {
            base: input.base_name.to_string(),
            layers: input.base_layers.len(),
        })?;
    if diff_ids.len() != input.base_layers.len() {
        return Err(ComposeError::BaseRootfs {
            base: input.base_name.to_string(),
            layers: input.base_layers.len(),
        });
    }
    for l in input.layers {
        diff_ids.push(json!(l.diff_id));
    }

    // history
    let history = root.entry("history").or_insert_with(|| json!([]));
    if !history.is_array() {
        *history = json!([]);
    }
    let history = history.as_array_mut().expect("array");
    for l in input.layers {
        let mut h = Map::new();
        h.insert("created".into(), json!(created));
        h.insert(
            "created_by".into(),
            json!(l.created_by.clone().unwrap_or_else(|| "ftl".into())),
        );
        h.insert("comment".into(), json!("ftl"));
        history.push(Value::Object(h));
    }

    let config_bytes = serde_json::to_vec(&config).expect("serializes");
    let config_digest = sha256_digest(&config_bytes);

    let mut layers: Vec<ImageLayer> = input.base_layers.to_vec();
    layers.extend(input.layers.iter().cloned());
    for l in &mut layers {
        l.media_type = input.format.layer_type(&l.media_type);
    }
    let descs: Vec<Value> = layers
        .iter()
        .map(|l| json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size}))
        .collect();
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": input.format.manifest_type(),
        "config": {"mediaType": input.format.config_type(), "digest": config_digest, "size": config_bytes.len()},
        "layers": descs,
    });
    if input.format == ManifestFormat::Oci {
        manifest["annotations"] = json!({
            "org.opencontainers.image.base.name": input.base_name,
            "org.opencontainers.image.base.digest": input.base_digest,
        });
    }
    let manifest_bytes = serde_json::to_vec(&manifest).expect("serializes");
    Ok(ComposedImage {
        manifest_digest: sha256_digest(&manifest_bytes),
        manifest: manifest_bytes,
        config: config_bytes,
        config_digest,
        format: input.format,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1), "1970-01-01T00:00:01Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn compose_sets_config_and_keeps_base() {
        let base = br#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/bin","LANG=C.UTF-8"],"Cmd":["bash"],"Labels":{"a":"1"}},"rootfs":{"type":"layers","diff_ids":["sha256:aa"]},"history":[{"created_by":"debootstrap"}],"x-extra":true}"#;
        let base_layers = vec![ImageLayer {
            digest: "sha256:b1".into(),
            diff_id: "sha256:aa".into(),
            size: 10,
            media_type: DOCKER_LAYER.into(),
            origin: LayerOrigin::Base {
                registry: "r".into(),
                repository: "base".into(),
            },
            created_by: None,
        }];
        let ours = vec![ImageLayer {
            digest: "sha256:c1".into(),
            diff_id: "sha256:cc".into(),
            size: 5,
            media_type: OCI_LAYER.into(),
            origin: LayerOrigin::Local { path: "/x".into() },
            created_by: Some("ftl: app".into()),
        }];
        let patch = ConfigPatch {
            env: vec![
                ("PORT".into(), "8080".into()),
                ("PATH".into(), "/env/bin:/usr/bin".into()),
            ],
            entrypoint: Some(vec!["python".into(), "main.py".into()]),
            workdir: Some("/srv".into()),
            exposed_ports: vec!["8080".into()],
            ..Default::default()
        };
        let overrides = ConfigOverrides {
            env: vec![("PORT".into(), "9000".into())],
            ..Default::default()
        };
        let img = compose(&ComposeInput {
            base_config: base,
            base_layers: &base_layers,
            base_name: "r/base:latest",
            base_digest: "sha256:bd",
            layers: &ours,
            patch: &patch,
            overrides: &overrides,
            format: ManifestFormat::Oci,
            created: 1,
        })
        .unwrap();
        let c: Value = serde_json::from_slice(&img.config).unwrap();
        assert_eq!(
            c["config"]["Env"],
            json!(["PATH=/env/bin:/usr/bin", "LANG=C.UTF-8", "PORT=9000"])
        );
        assert_eq!(c["config"]["Cmd"], Value::Null);
        assert_eq!(c["config"]["Entrypoint"], json!(["python", "main.py"]));
        assert_eq!(c["config"]["ExposedPorts"], json!({"8080/tcp": {}}));
        assert_eq!(c["rootfs"]["diff_ids"], json!(["sha256:aa", "sha256:cc"]));
        assert_eq!(c["history"].as_array().unwrap().len(), 2);
        assert_eq!(c["x-extra"], json!(true));
        assert_eq!(c["created"], json!("1970-01-01T00:00:01Z"));
        let m: Value = serde_json::from_slice(&img.manifest).unwrap();
        assert_eq!(
            m["layers"][0]["mediaType"],
            json!(OCI_LAYER),
            "docker base layers convert to OCI"
        );
        assert_eq!(
            m["annotations"]["org.opencontainers.image.base.digest"],
            json!("sha256:bd")
        );
        assert_eq!(img.manifest_digest, sha256_digest(&img.manifest));
    }
}
