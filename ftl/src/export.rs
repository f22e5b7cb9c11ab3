//! Writing a composed image to disk: an OCI image layout directory, or a
//! docker-archive tarball that `docker load` and `podman load` accept.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::image::ComposedImage;

/// An error writing an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("failed to write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} exists and is not an OCI image layout; choose an empty or new directory")]
    NotLayout { path: PathBuf },
}

fn ioe(path: &Path) -> impl FnOnce(io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Links (or copies, across filesystems) `src` to `dst` if `dst` is absent.
fn place_blob(src: &Path, dst: &Path) -> Result<(), ExportError> {
    if dst.exists() {
        return Ok(());
    }
    if fs::hard_link(src, dst).is_err() {
        let tmp = dst.with_extension("partial");
        fs::copy(src, &tmp).map_err(ioe(&tmp))?;
        fs::rename(&tmp, dst).map_err(ioe(dst))?;
    }
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let tmp = path.with_extension("partial");
    fs::write(&tmp, bytes).map_err(ioe(&tmp))?;
    fs::rename(&tmp, path).map_err(ioe(path))
}

/// Writes `image` into the OCI image layout at `dir` (created if needed;
/// an existing layout gains the image), tagged `tag` in `index.json`.
/// `blob` returns the local file of each layer.
pub fn write_oci_layout(
    image: &ComposedImage,
    dir: &Path,
    tag: &str,
    blob: impl Fn(&str) -> PathBuf,
) -> Result<(), ExportError> {
    if dir.exists()
        && fs::read_dir(dir).map_err(ioe(dir))?.next().is_some()
        && !dir.join("oci-layout").is_file()
    {
        return Err(ExportError::NotLayout {
            path: dir.to_path_buf(),
        });
    }
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(ioe(&blobs))?;
    for layer in &image.layers {
        place_blob(&blob(&layer.digest), &blobs.join(hex_of(&layer.digest)))?;
    }
    write_atomic(&blobs.join(hex_of(&image.config_digest)), &image.config)?;
    write_atomic(&blobs.join(hex_of(&image.manifest_digest)), &image.manifest)?;
    write_atomic(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let index_path = dir.join("index.json");
    let mut manifests: Vec<serde_json::Value> = fs::read(&index_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("manifests").and_then(|m| m.as_array()).cloned())
        .unwrap_or_default();
    manifests.retain(|m| {
        m.pointer("/annotations/org.opencontainers.image.ref.name")
            .and_then(|v| v.as_str())
            != Some(tag)
    });
    manifests.push(json!({
        "mediaType": image.format.manifest_type(),
        "digest": image.manifest_digest,
        "size": image.manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }));
    let index = json!({
        "schemaVersion": 2,
        "mediaType": crate::image::OCI_INDEX,
        "manifests": manifests,
    });
    write_atomic(
        &index_path,
        &serde_json::to_vec_pretty(&index).expect("serializes"),
    )
}

fn tar_header(size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(crate::layer::DEFAULT_MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Writes `image` as a docker-archive (`docker save` format) at `path`,
/// tagged `repo_tag` (`name:tag`). Layers are stored uncompressed as
/// `<diffID>/layer.tar`, which every `docker load` and `podman load` reads.
pub fn write_docker_archive(
    image: &ComposedImage,
    path: &Path,
    repo_tag: &str,
    blob: impl Fn(&str) -> PathBuf,
) -> Result<(), ExportError> {
    let tmp = path.with_extension("partial");
    let out = File::create(&tmp).map_err(ioe(&tmp))?;
    let result = (|| {
        let mut ar = tar::Builder::new(BufWriter::with_capacity(1 << 20, out));
        let config_name = format!("{}.json", hex_of(&image.config_digest));
        let mut layer_names = Vec::new();
        let config: serde_json::Value =
            serde_json::from_slice(&image.config).expect("composed config is JSON");
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let mut written = std::collections::HashSet::new();
        for (layer, diff_id) in image.layers.iter().zip(&diff_ids) {
            let dir = hex_of(diff_id).to_string();
            let name = format!("{dir}/layer.tar");
            // A layer that appears twice is stored once, listed twice.
            if !written.insert(name.clone()) {
                layer_names.push(name);
                continue;
            }
            let src = blob(&layer.digest);
            // Decompress to a temp file first: a tar entry needs its size.
            let mut raw = tempfile::tempfile().map_err(ioe(&src))?;
            let f = File::open(&src).map_err(ioe(&src))?;
            let mut gz = flate2::read::MultiGzDecoder::new(io::BufReader::new(f));
            let size = io::copy(&mut gz, &mut raw).map_err(ioe(&src))?;
            io::Seek::rewind(&mut raw).map_err(ioe(&src))?;
            let mut h = tar_header(0, 0o755, tar::EntryType::Directory);
            ar.append_data(&mut h, format!("{dir}/"), io::empty())
                .map_err(ioe(path))?;
            let mut h = tar_header(size, 0o644, tar::EntryType::Regular);
            ar.append_data(&mut h, &name, &mut raw).map_err(ioe(path))?;
            layer_names.push(name);
        }
        let mut h = tar_header(image.config.len() as u64, 0o644, tar::EntryType::Regular);
        ar.append_data(&mut h, &config_name, image.config.as_slice())
            .map_err(ioe(path))?;
        let manifest =
            json!([{ "Config": config_name, "RepoTags": [repo_tag], "Layers": layer_names }]);
        let manifest = serde_json::to_vec(&manifest).expect("serializes");
        let mut h = tar_header(manifest.len() as u64, 0o644, tar::EntryType::Regular);
        ar.append_data(&mut h, "manifest.json", manifest.as_slice())
            .map_err(ioe(path))?;
        if let Some((repo, tag)) = repo_tag.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
            let top = layer_names
                .last()
                .map(|n| n.trim_end_matches("/layer.tar").to_string())
                .unwrap_or_default();
            let repos = serde_json::to_vec(&json!({ repo: { tag: top } })).expect("serializes");
            let mut h = tar_header(repos.len() as u64, 0o644, tar::EntryType::Regular);
            ar.append_data(&mut h, "repositories", repos.as_slice())
                .map_err(ioe(path))?;
        }
        let mut w = ar.into_inner().map_err(ioe(path))?;
        w.flush().map_err(ioe(path))?;
        Ok(())
    })();
    match result.and_then(|()| fs::rename(&tmp, path).map_err(ioe(path))) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}
