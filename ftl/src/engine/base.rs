//! The base image: resolved as manifest and config only; its layers'
//! bytes fetched solely to unpack a rootfs for the sandbox, once per base
//! digest, into the local cache.

use std::io;
use std::path::{Path, PathBuf};

use ftl_cache::Cache;
use ftl_registry_client::{BlobSource, Client, Platform, Reference};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::sync::OnceCell;

use super::EngineError;
use crate::image::{ImageLayer, LayerOrigin};
use crate::plugin::BaseInfo;

/// A resolved base image.
#[derive(Debug, Clone)]
pub struct BaseImage {
    pub reference: Reference,
    pub info: BaseInfo,
    pub config_bytes: Vec<u8>,
    pub layers: Vec<ImageLayer>,
}

impl BaseImage {
    /// Resolves the image; its config comes from `cache` when there
    /// (configs are content-addressed), and is kept there.
    pub async fn resolve(
        client: &Client,
        reference: &Reference,
        platform: &Platform,
        cache: &ftl_cache::Cache,
    ) -> Result<Self, EngineError> {
        let known = |d: &ftl_registry_client::Digest| {
            let path = cache.blobs.get(d.as_ref()).ok()?;
            std::fs::read(path).ok().map(bytes::Bytes::from)
        };
        let resolved = client
            .resolve_with(reference, platform, &known)
            .await
            .map_err(|e| match e {
                // Say which image is missing: the base, not the target.
                e @ ftl_registry_client::Error::NotFound { .. } => EngineError::Base {
                    base: reference.to_string(),
                    message: e.to_string(),
                },
                e => e.into(),
            })?;
        let config_digest = resolved.config_digest.to_string();
        if !cache.blobs.contains(&config_digest) {
            // A cache that cannot be written costs the next build a request.
            if let Ok(mut w) = cache.blobs.writer() {
                if std::io::Write::write_all(&mut w, &resolved.config_bytes).is_ok() {
                    let _ = w.commit(&config_digest);
                }
            }
        }
        let config: serde_json::Value =
            serde_json::from_slice(&resolved.config_bytes).map_err(|e| EngineError::Base {
                base: reference.to_string(),
                message: format!("its config is not valid JSON ({e})"),
            })?;
        // A single-platform base is not chosen by platform: check it is the
        // one asked for rather than build an image of another architecture.
        let (os, arch) = (
            config["os"].as_str().unwrap_or_default(),
            config["architecture"].as_str().unwrap_or_default(),
        );
        let (want_os, want_arch) = (
            platform.os().to_string(),
            platform.architecture().to_string(),
        );
        if !os.is_empty() && !arch.is_empty() && (os != want_os || arch != want_arch) {
            return Err(EngineError::Base {
                base: reference.to_string(),
                message: format!(
                    "it is built for {os}/{arch}, not {want_os}/{want_arch}: use a base \
                     image for {want_os}/{want_arch}, or build for {os}/{arch}"
                ),
            });
        }
        let diff_ids: Vec<String> = config
            .pointer("/rootfs/diff_ids")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let manifest_layers = resolved.manifest.layers();
        if diff_ids.len() != manifest_layers.len() {
            return Err(EngineError::Base {
                base: reference.to_string(),
                message: format!(
                    "its manifest lists {} layers but its config {} diff_ids",
                    manifest_layers.len(),
                    diff_ids.len()
                ),
            });
        }
        let layers = manifest_layers
            .iter()
            .zip(diff_ids)
            .map(|(d, diff_id)| ImageLayer {
                digest: d.digest().to_string(),
                diff_id,
                size: d.size(),
                media_type: d.media_type().to_string(),
                origin: LayerOrigin::Base {
                    registry: reference.registry().to_string(),
                    repository: reference.repository().to_string(),
                },
                created_by: None,
            })
            .collect();
        let platform_s = ftl_registry_client::platform_string(platform);
        Ok(BaseImage {
            reference: reference.clone(),
            info: BaseInfo {
                reference: reference.to_string(),
                manifest_digest: resolved.manifest_digest.to_string(),
                config: resolved.config.clone(),
                platform: platform_s,
            },
            config_bytes: resolved.config_bytes.to_vec(),
            layers,
        })
    }
}

/// Downloads a blob into the blob store (verifying its digest) unless it
/// is there already; returns its path.
pub async fn fetch_blob(
    client: &Client,
    cache: &Cache,
    repo: &Reference,
    digest: &str,
) -> Result<PathBuf, EngineError> {
    if let Ok(path) = cache.blobs.get(digest) {
        return Ok(path);
    }
    let parsed: ftl_registry_client::Digest = digest
        .parse()
        .map_err(|_| EngineError::Internal(format!("bad digest {digest}")))?;
    let mut stream = client.get_blob(repo, &parsed).await?.into_reader();
    let writer = cache.blobs.writer()?;
    let std_file = writer_file_clone(&writer)?;
    let mut file = tokio::fs::File::from_std(std_file);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        use tokio::io::AsyncReadExt;
        let n = stream.read(&mut buf).await.map_err(|e| EngineError::Base {
            base: repo.to_string(),
            message: format!("downloading blob {digest} failed: {e}"),
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .await
            .map_err(|e| EngineError::Internal(format!("writing blob {digest}: {e}")))?;
    }
    file.flush()
        .await
        .map_err(|e| EngineError::Internal(format!("writing blob {digest}: {e}")))?;
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    if got != digest {
        return Err(EngineError::Base {
            base: repo.to_string(),
            message: format!(
                "blob {digest} downloaded with digest {got}; the registry served corrupt data"
            ),
        });
    }
    Ok(writer.commit(digest)?)
}

fn writer_file_clone(writer: &ftl_cache::BlobWriter) -> Result<std::fs::File, EngineError> {
    writer
        .file_ref()
        .try_clone()
        .map_err(|e| EngineError::Internal(format!("cannot open blob temp file: {e}")))
}

/// A blob streamed from another registry, for pushes across registries.
pub struct RemoteBlobSource {
    client: Client,
    repo: Reference,
    digest: ftl_registry_client::Digest,
}

impl RemoteBlobSource {
    pub fn new(client: Client, repo: Reference, digest: &str) -> Self {
        RemoteBlobSource {
            client,
            repo,
            digest: digest.parse().expect("valid digest"),
        }
    }
}

#[async_trait::async_trait]
impl BlobSource for RemoteBlobSource {
    async fn open(&self) -> io::Result<Box<dyn AsyncRead + Send + Unpin>> {
        let stream = self
            .client
            .get_blob(&self.repo, &self.digest)
            .await
            .map_err(io::Error::other)?;
        Ok(Box::new(stream.into_reader()))
    }
}

/// The base rootfs, unpacked on first use and cached by base digest.
pub struct LazyRootfs {
    client: Client,
    cache: Cache,
    dir: PathBuf,
    base: BaseImage,
    cell: OnceCell<PathBuf>,
    /// Held while this build may use the rootfs: `ftl cache gc` leaves it.
    lease: std::sync::OnceLock<ftl_cache::dirs::Lease>,
}

impl LazyRootfs {
    pub fn new(client: Client, cache: Cache, dir: PathBuf, base: BaseImage) -> Self {
        LazyRootfs {
            client,
            cache,
            dir,
            base,
            cell: OnceCell::new(),
            lease: std::sync::OnceLock::new(),
        }
    }

    /// The rootfs path, unpacking it if this machine has not yet.
    pub async fn ensure(&self) -> Result<PathBuf, EngineError> {
        self.cell
            .get_or_try_init(|| async {
                let hex = self.base.info.manifest_digest.trim_start_matches("sha256:");
                let dest = self.dir.join(hex);
                // Blocks while a `cache gc` removes this rootfs.
                let at = dest.clone();
                let lease = tokio::task::spawn_blocking(move || ftl_cache::dirs::lease(&at))
                    .await
                    .map_err(super::join_err)??;
                let _ = self.lease.set(lease);
                if dest.join(".ftl-complete").is_file() {
                    return Ok(dest);
                }
                let mut paths = Vec::new();
                for l in &self.base.layers {
                    paths.push(
                        fetch_blob(&self.client, &self.cache, &self.base.reference, &l.digest)
                            .await?,
                    );
                }
                let dest2 = dest.clone();
                tokio::task::spawn_blocking(move || -> Result<(), EngineError> {
                    if dest2.exists() && !dest2.join(".ftl-complete").is_file() {
                        // A rootfs from an interrupted older layout; rebuild.
                        let _ = std::fs::remove_dir_all(&dest2);
                    }
                    crate::rootfs::unpack_rootfs(&paths, &dest2)?;
                    // Marker outside the image's own paths; the sandbox
                    // root is read-only, so it never reaches a layer.
                    let _ = std::fs::write(dest2.join(".ftl-complete"), b"");
                    Ok(())
                })
                .await
                .map_err(super::join_err)??;
                Ok(dest)
            })
            .await
            .cloned()
    }
}

/// A writable rootfs of the whole image for verification: an overlay of
/// our layers (unpacked into `scratch`) on the cached base rootfs, or a
/// full copy where overlayfs is not available. Unmounted on drop.
pub struct ImageRootfs {
    path: PathBuf,
    mounted: bool,
}

impl ImageRootfs {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ImageRootfs {
    fn drop(&mut self) {
        if self.mounted {
            // SAFETY: umount2 on a path we mounted; the CString outlives the call.
            let c = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes())
                .expect("no NUL in paths");
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

pub fn image_rootfs(
    base_rootfs: &Path,
    layers: &[PathBuf],
    scratch: &Path,
    ids: Option<&ftl_sandbox::IdRange>,
) -> Result<ImageRootfs, EngineError> {
    let upper_layers = scratch.join("layers");
    crate::rootfs::unpack_rootfs(layers, &upper_layers)?;
    let rw = scratch.join("rw");
    let (upper, work, merged) = (rw.join("upper"), rw.join("work"), scratch.join("merged"));
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d)
            .map_err(|e| EngineError::Internal(format!("cannot create {}: {e}", d.display())))?;
    }
    let mount_error = match overlay(&[&upper_layers, base_rootfs], &rw, &merged, scratch, ids) {
        Ok(()) => {
            return Ok(ImageRootfs {
                path: merged,
                mounted: true,
            })
        }
        Err(e @ OverlayError::Idmapped(_)) => return Err(EngineError::Sandbox(e.to_string())),
        Err(OverlayError::Plain(e)) => e,
    };
    tracing::debug!(error = %mount_error, "overlayfs unavailable; copying the base rootfs");
    let copy = scratch.join("copy");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(base_rootfs)
        .arg(&copy)
        .status()
        .map_err(|e| EngineError::Internal(format!("cannot copy the base rootfs: {e}")))?;
    if !status.success() {
        return Err(EngineError::Internal(format!(
            "copying {} failed",
            base_rootfs.display()
        )));
    }
    let mut stats = crate::rootfs::UnpackStats::default();
    for l in layers {
        crate::rootfs::apply_layer(&copy, l, &mut stats)?;
    }
    Ok(ImageRootfs {
        path: copy,
        mounted: false,
    })
}

/// Why [`overlay`] failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OverlayError {
    /// Overlayfs refused a plain mount (not available here, or not
    /// permitted): a caller may fall back to a copy.
    #[error("cannot mount an overlay: {0}")]
    Plain(io::Error),
    /// The overlay of idmapped views could not be made.
    #[error("{0}")]
    Idmapped(String),
}

/// Mounts at `merged` an overlay of `lowers` (top first) with the upper
/// and work directories `rw/upper` and `rw/work`. With `ids` (and as
/// root), the lower layers are idmapped views (under `scratch/idmap-N`;
/// overlayfs cannot itself be idmapped), so that the shared trees, owned
/// by host root and never chowned, read as owned by the step's root; the
/// upper directory is the step's root's own, so what the step writes or
/// copies up is its root's on disk too. (An idmapped upper layer does not
/// work: overlayfs creates its work directory as the mounter, host root,
/// whom the idmap cannot represent, and falls back to a read-only mount.)
pub(crate) fn overlay(
    lowers: &[&Path],
    rw: &Path,
    merged: &Path,
    scratch: &Path,
    ids: Option<&ftl_sandbox::IdRange>,
) -> Result<(), OverlayError> {
    let upper = rw.join("upper");
    let mapped = match ids {
        // SAFETY: geteuid has no preconditions.
        Some(ids) if unsafe { libc::geteuid() } == 0 => {
            std::os::unix::fs::chown(&upper, Some(ids.uid), Some(ids.gid)).map_err(|e| {
                OverlayError::Idmapped(format!("cannot chown {}: {e}", upper.display()))
            })?;
            Some(
                idmapped_layers(lowers, scratch, ids)
                    .map_err(|e| OverlayError::Idmapped(e.to_string()))?,
            )
        }
        _ => None,
    };
    let lower_dirs: Vec<&Path> = match &mapped {
        Some(m) => m.iter().map(|p| p.as_path()).collect(),
        None => lowers.to_vec(),
    };
    let lowerdir = lower_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let opts = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        upper.display(),
        rw.join("work").display()
    );
    let c_target = std::ffi::CString::new(merged.as_os_str().as_encoded_bytes()).expect("no NUL");
    let c_opts = std::ffi::CString::new(opts).expect("no NUL");
    // SAFETY: plain mount(2) with valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            c_target.as_ptr(),
            c"overlay".as_ptr(),
            0,
            c_opts.as_ptr() as *const libc::c_void,
        )
    };
    let mount_error = io::Error::last_os_error();
    // The overlay holds its own references to its layers: the views go.
    for p in mapped.iter().flatten() {
        detach(p);
    }
    match (rc, mapped.is_some()) {
        (0, _) => Ok(()),
        (_, true) => Err(OverlayError::Idmapped(format!(
            "cannot mount an overlay of idmapped layers at {}: {mount_error}",
            merged.display()
        ))),
        (_, false) => Err(OverlayError::Plain(mount_error)),
    }
}

/// Idmapped views of `dirs` under `scratch/idmap-N`, in order.
fn idmapped_layers(
    dirs: &[&Path],
    scratch: &Path,
    ids: &ftl_sandbox::IdRange,
) -> Result<Vec<PathBuf>, EngineError> {
    let ns = ftl_sandbox::idmap::UserNs::new(ids)
        .map_err(|e| EngineError::Sandbox(crate::error_chain(&e)))?;
    let mut made: Vec<PathBuf> = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let at = scratch.join(format!("idmap-{i}"));
        let r = std::fs::create_dir_all(&at)
            .map_err(|e| EngineError::Internal(format!("cannot create {}: {e}", at.display())))
            .and_then(|()| {
                ftl_sandbox::idmap::bind_idmapped(dir, &at, &ns)
                    .map_err(|e| EngineError::Sandbox(crate::error_chain(&e)))
            });
        if let Err(e) = r {
            for p in &made {
                detach(p);
            }
            return Err(e);
        }
        made.push(at);
    }
    Ok(made)
}

pub(crate) fn detach(path: &Path) {
    if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) {
        // SAFETY: umount2 on a NUL-terminated path.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
}
