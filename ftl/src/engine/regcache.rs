//! The registry tier of the layer cache: one small OCI manifest per cache
//! key in the cache repository, tagged `sha256-<key>`, whose one layer is the
//! cached layer and whose annotations carry the diffID and name. A lookup is
//! one manifest GET; a hit is mounted into the target, never downloaded.
//! A key whose layers vary by build root has a marker instead: a manifest
//! without layers whose `dev.ftl.cache.varies-by` annotation names the
//! input its layers' keys add (an older ftl, which needs a layer, reads it
//! as a miss). Probe results (interpreter version and ABI read from a base
//! image) are kept the same way, tagged `probe-<key>`, in annotations.

use std::sync::Arc;

use bytes::Bytes;
use ftl_cache::CacheEntry;
use ftl_registry_client::{
    BytesSource, Client, FileSource, NoProgress, PushBlob, PushRequest, Reference,
};
use serde_json::json;

use crate::image::{sha256_digest, OCI_MANIFEST};

/// The empty JSON config (`{}`) every cache manifest points at.
const EMPTY_CONFIG: &[u8] = b"{}";
const EMPTY_CONFIG_TYPE: &str = "application/vnd.oci.empty.v1+json";
const ANN_DIFF_ID: &str = "dev.ftl.cache.diff-id";
const ANN_NAME: &str = "dev.ftl.cache.name";
const ANN_CREATED: &str = "dev.ftl.cache.created";
const ANN_EXPIRES: &str = "dev.ftl.cache.expires";
const ANN_INPUTS: &str = "dev.ftl.cache.inputs";
const ANN_VARIES_BY: &str = "dev.ftl.cache.varies-by";
const ANN_PROBE: &str = "dev.ftl.probe.output";
const ANN_MEMO: &str = "dev.ftl.memo.value";

fn key_tag(prefix: &str, key: &str) -> String {
    format!("{prefix}-{key}")
}

/// Looks `key` up in the cache repository; `None` on a miss. Errors other
/// than "not found" are logged and count as a miss: the cache never fails a
/// build.
pub async fn lookup(client: &Client, repo: &Reference, key: &str) -> Option<CacheEntry> {
    let reference = repo.with_tag(&key_tag("sha256", key)).ok()?;
    let manifest = match client.get_manifest(&reference).await {
        Ok(m) => m,
        Err(ftl_registry_client::Error::NotFound { .. }) => return None,
        Err(e) => {
            tracing::warn!(cache = %reference, error = %e, "registry cache lookup failed; treating as a miss");
            return None;
        }
    };
    let v: serde_json::Value = serde_json::from_slice(&manifest.bytes).ok()?;
    let ann = v.get("annotations")?;
    let s = |k: &str| ann.get(k).and_then(|x| x.as_str()).map(String::from);
    let created = s(ANN_CREATED).and_then(|c| c.parse().ok()).unwrap_or(0);
    let expires = s(ANN_EXPIRES).and_then(|c| c.parse().ok());
    let entry = match s(ANN_VARIES_BY) {
        Some(varies_by) => CacheEntry::marker(
            key,
            &s(ANN_INPUTS).unwrap_or_default(),
            &s(ANN_NAME).unwrap_or_default(),
            &varies_by,
            created,
            expires,
        ),
        None => {
            let layer = v.get("layers")?.get(0)?;
            CacheEntry {
                key: key.to_string(),
                digest: layer.get("digest")?.as_str()?.to_string(),
                diff_id: s(ANN_DIFF_ID)?,
                size: layer.get("size")?.as_u64()?,
                media_type: layer.get("mediaType")?.as_str()?.to_string(),
                created,
                expires,
                name: s(ANN_NAME).unwrap_or_default(),
                inputs: s(ANN_INPUTS).unwrap_or_default(),
                varies_by: None,
            }
        }
    };
    if entry.expired(ftl_cache::now_secs()) {
        return None;
    }
    Some(entry)
}

/// Records built layers in the cache repository. `mount_from` names the
/// repository (on the same registry) the layers were just pushed to.
pub async fn record(
    client: &Client,
    repo: &Reference,
    entries: Vec<(CacheEntry, std::path::PathBuf)>,
    mount_from: Option<String>,
) {
    if entries.is_empty() {
        return;
    }
    let shared = shared_blobs(client, repo).await;
    let pushes = entries.into_iter().map(|(entry, path)| {
        let mount_from = mount_from.clone();
        let shared = shared.clone();
        async move {
            let Ok(target) = repo.with_tag(&key_tag("sha256", &entry.key)) else { return };
            let mut annotations = serde_json::Map::new();
            annotations.insert(ANN_DIFF_ID.into(), json!(entry.diff_id));
            annotations.insert(ANN_NAME.into(), json!(entry.name));
            annotations.insert(ANN_CREATED.into(), json!(entry.created.to_string()));
            annotations.insert(ANN_INPUTS.into(), json!(entry.inputs));
            if let Some(e) = entry.expires {
                annotations.insert(ANN_EXPIRES.into(), json!(e.to_string()));
            }
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": EMPTY_CONFIG_TYPE, "digest": sha256_digest(EMPTY_CONFIG), "size": EMPTY_CONFIG.len()},
                "layers": [{"mediaType": entry.media_type, "digest": entry.digest, "size": entry.size}],
                "annotations": annotations,
            });
            let mut blobs = shared;
            blobs.push(PushBlob {
                digest: entry.digest.parse().expect("cache entries hold valid digests"),
                size: entry.size,
                media_type: entry.media_type.as_str().into(),
                source: Some(Arc::new(FileSource(path))),
                mount_from: mount_from.into_iter().collect(),
            });
            if let Err(e) = push_manifest(client, target.clone(), blobs, manifest).await {
                tracing::warn!(cache = %target, error = %e, "could not record layer in the registry cache");
            }
        }
    });
    futures_util::future::join_all(pushes).await;
}

/// Records markers (after the layers their lookups lead to): a manifest
/// without layers per key, its annotations saying what the key's layers
/// vary by.
pub async fn record_markers(client: &Client, repo: &Reference, markers: Vec<CacheEntry>) {
    if markers.is_empty() {
        return;
    }
    let shared = &shared_blobs(client, repo).await;
    let pushes = markers.into_iter().map(|entry| async move {
        let Ok(target) = repo.with_tag(&key_tag("sha256", &entry.key)) else { return };
        let mut annotations = serde_json::Map::new();
        annotations.insert(ANN_VARIES_BY.into(), json!(entry.varies_by));
        annotations.insert(ANN_NAME.into(), json!(entry.name));
        annotations.insert(ANN_CREATED.into(), json!(entry.created.to_string()));
        annotations.insert(ANN_INPUTS.into(), json!(entry.inputs));
        if let Some(e) = entry.expires {
            annotations.insert(ANN_EXPIRES.into(), json!(e.to_string()));
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": EMPTY_CONFIG_TYPE, "digest": sha256_digest(EMPTY_CONFIG), "size": EMPTY_CONFIG.len()},
            "layers": [],
            "annotations": annotations,
        });
        if let Err(e) = push_manifest(client, target.clone(), shared.clone(), manifest).await {
            tracing::warn!(cache = %target, error = %e, "could not record a marker in the registry cache");
        }
    });
    futures_util::future::join_all(pushes).await;
}

/// Puts the blob every cache manifest shares (the empty config) in `repo`
/// once, before manifests that point at it are pushed side by side: each
/// push uploading it again raced the others' commits, and a registry
/// answered some manifest PUTs `MANIFEST_BLOB_UNKNOWN`. Returns the blobs
/// each manifest's push must still carry: none when the upload went
/// through, else the config itself (each push then tries on its own).
async fn shared_blobs(client: &Client, repo: &Reference) -> Vec<PushBlob> {
    let digest = sha256_digest(EMPTY_CONFIG).parse().expect("valid digest");
    let present = match client.head_blob(repo, &digest).await {
        Ok(Some(_)) => true,
        _ => client
            .upload_blob(
                repo,
                &digest,
                EMPTY_CONFIG.len() as u64,
                &BytesSource(Bytes::from_static(EMPTY_CONFIG)),
            )
            .await
            .map_err(|e| {
                tracing::debug!(cache = %repo, error = %e, "could not upload the cache's empty config once");
            })
            .is_ok(),
    };
    if present {
        Vec::new()
    } else {
        vec![empty_config_blob()]
    }
}

fn empty_config_blob() -> PushBlob {
    PushBlob {
        digest: sha256_digest(EMPTY_CONFIG).parse().expect("valid digest"),
        size: EMPTY_CONFIG.len() as u64,
        media_type: EMPTY_CONFIG_TYPE.into(),
        source: Some(Arc::new(BytesSource(Bytes::from_static(EMPTY_CONFIG)))),
        mount_from: Vec::new(),
    }
}

async fn push_manifest(
    client: &Client,
    target: Reference,
    blobs: Vec<PushBlob>,
    manifest: serde_json::Value,
) -> Result<(), ftl_registry_client::Error> {
    let bytes = serde_json::to_vec(&manifest).expect("serializes");
    client
        .push(
            PushRequest {
                target,
                blobs,
                manifest: Bytes::from(bytes),
                manifest_media_type: OCI_MANIFEST.into(),
                extra_tags: Vec::new(),
            },
            Arc::new(NoProgress),
        )
        .await
        .map(|_| ())
}

/// Looks a probe result up.
pub async fn lookup_probe(client: &Client, repo: &Reference, key: &str) -> Option<Vec<u8>> {
    lookup_text(client, repo, "probe", ANN_PROBE, key).await
}

/// Records a probe result (JSON text).
pub async fn record_probe(client: &Client, repo: &Reference, key: &str, output: &[u8]) {
    record_text(client, repo, "probe", ANN_PROBE, key, output).await
}

/// Looks a remembered plan value up (tag `memo-<key>`): the JSON text of
/// its envelope, which says when it expires.
pub async fn lookup_memo(client: &Client, repo: &Reference, key: &str) -> Option<Vec<u8>> {
    lookup_text(client, repo, "memo", ANN_MEMO, key).await
}

/// Records a remembered plan value (JSON text).
pub async fn record_memo(client: &Client, repo: &Reference, key: &str, envelope: &[u8]) {
    record_text(client, repo, "memo", ANN_MEMO, key, envelope).await
}

/// The text a layerless cache manifest tagged `<prefix>-<key>` holds in its
/// annotation `annotation`.
async fn lookup_text(
    client: &Client,
    repo: &Reference,
    prefix: &str,
    annotation: &str,
    key: &str,
) -> Option<Vec<u8>> {
    let reference = repo.with_tag(&key_tag(prefix, key)).ok()?;
    let manifest = client.get_manifest(&reference).await.ok()?;
    let v: serde_json::Value = serde_json::from_slice(&manifest.bytes).ok()?;
    let text = v.get("annotations")?.get(annotation)?.as_str()?;
    Some(text.as_bytes().to_vec())
}

/// Records `text` as a layerless cache manifest tagged `<prefix>-<key>`.
async fn record_text(
    client: &Client,
    repo: &Reference,
    prefix: &str,
    annotation: &str,
    key: &str,
    text: &[u8],
) {
    let Ok(target) = repo.with_tag(&key_tag(prefix, key)) else {
        return;
    };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": EMPTY_CONFIG_TYPE, "digest": sha256_digest(EMPTY_CONFIG), "size": EMPTY_CONFIG.len()},
        "layers": [],
        "annotations": {annotation: String::from_utf8_lossy(text)},
    });
    if let Err(e) = push_manifest(client, target.clone(), vec![empty_config_blob()], manifest).await
    {
        tracing::warn!(cache = %target, error = %e, "could not record {prefix} in the registry cache");
    }
}
