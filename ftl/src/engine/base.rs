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

/// Where a base image's layers are, unpacked.
#[derive(Debug, Clone)]
pub enum BaseLowers {
    /// One directory per layer, whiteouts stored for overlayfs
    /// (`layers/<digest>`, shared by every image with that layer), top
    /// layer first: the lower directories of an overlay.
    Layers(Vec<PathBuf>),
    /// One merged tree of the whole base (`rootfs/<manifest digest>`):
    /// where layer directories cannot be made (not root: their opaque
    /// markers are `trusted.*` xattrs) or overlayfs cannot be mounted.
    Merged(PathBuf),
}

/// Whether this process can make layer directories and mount overlays of
/// them: as root. (Unprivileged, overlayfs mounts only inside a user
/// namespace the sandbox makes, and `trusted.overlay.opaque` cannot be
/// set: a merged tree stands in.)
pub(crate) fn layer_dirs_supported() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Unpacks base layer `digest` into `dest` (which must not exist): from
/// the blob store when the blob is there, else streamed from `repo`
/// (download, inflate and extract overlapped; no copy of the blob is
/// kept), its digest checked before the directory is put in place.
pub async fn unpack_base_layer(
    client: &Client,
    cache: &Cache,
    repo: &Reference,
    digest: &str,
    dest: &Path,
) -> Result<crate::rootfs::UnpackStats, EngineError> {
    let name = PathBuf::from(digest);
    let dest = dest.to_path_buf();
    if let Ok(path) = cache.blobs.get(digest) {
        return tokio::task::spawn_blocking(move || {
            let file =
                std::fs::File::open(&path).map_err(|source| crate::rootfs::UnpackError::Read {
                    layer: path.clone(),
                    source,
                })?;
            let mut r = crate::rootfs::decompress(io::BufReader::with_capacity(1 << 20, file))
                .map_err(|source| crate::rootfs::UnpackError::Read {
                    layer: path.clone(),
                    source,
                })?;
            crate::rootfs::unpack_layer_dir(&mut r, &dest, &path)
        })
        .await
        .map_err(super::join_err)?
        .map_err(EngineError::from);
    }
    let parsed: ftl_registry_client::Digest = digest
        .parse()
        .map_err(|_| EngineError::Internal(format!("bad digest {digest}")))?;
    let stream = client.get_blob(repo, &parsed).await?.into_stream();
    // `Some(chunk)`, then `None` once the digest matched: a channel that
    // closes without it (the task dropped at shutdown) is no verdict.
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Option<bytes::Bytes>>>(64);
    let want = digest.to_string();
    let base = repo.to_string();
    // The download: chunks to the extractor, hashed on the way; a bad
    // digest reaches the extractor as an error before the end of input,
    // so it never puts the directory in place.
    let download = tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut stream = stream;
        let mut hasher = Sha256::new();
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx
                        .send(Err(io::Error::other(format!(
                            "downloading blob {want} from {base} failed: {e}"
                        ))))
                        .await;
                    return;
                }
            };
            hasher.update(&chunk);
            if tx.send(Ok(Some(chunk))).await.is_err() {
                return; // the extractor gave up
            }
        }
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        let verdict = if got == want {
            Ok(None)
        } else {
            Err(io::Error::other(format!(
                "blob {want} downloaded with digest {got}; {base} served corrupt data"
            )))
        };
        let _ = tx.send(verdict).await;
    });
    let stats = tokio::task::spawn_blocking(move || {
        let mut raw = ChannelReader {
            rx,
            chunk: bytes::Bytes::new(),
            verified: false,
        };
        let read_err = |source| crate::rootfs::UnpackError::Read {
            layer: name.clone(),
            source,
        };
        crate::rootfs::unpack_into_place(&dest, |tmp| {
            let stats = {
                let mut r =
                    crate::rootfs::decompress(io::BufReader::with_capacity(1 << 20, &mut raw))
                        .map_err(read_err)?;
                let stats =
                    crate::rootfs::extract(&mut r, tmp, crate::rootfs::Whiteouts::Overlay, &name)?;
                // The rest (tar padding, gzip trailer): checked too.
                io::copy(&mut r, &mut io::sink()).map_err(read_err)?;
                stats
            };
            // To the end: the download's verdict on the digest.
            io::copy(&mut raw, &mut io::sink()).map_err(read_err)?;
            Ok(stats)
        })
    })
    .await
    .map_err(super::join_err)?;
    let _ = download.await;
    Ok(stats?)
}

/// A blocking reader of the chunks a download task sends: its end is the
/// task's word that the digest matched, never just a closed channel.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Option<bytes::Bytes>>>,
    chunk: bytes::Bytes,
    verified: bool,
}

impl io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            if self.verified {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(Some(c))) => self.chunk = c,
                Some(Ok(None)) => self.verified = true,
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(io::Error::other(
                        "the download stopped before its digest was checked",
                    ))
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// The file at the root of a merged base tree that says it is complete
/// (trees of older versions of ftl were unpacked in place).
const MERGED_COMPLETE: &str = ".ftl-complete";

/// The base rootfs, unpacked on first use: each layer once per machine
/// (by layer digest), in parallel; a build's steps get an overlay of the
/// layers (idmapped views of them when steps run with an id range),
/// mounted once per build and unmounted when this is dropped.
pub struct LazyRootfs {
    client: Client,
    cache: Cache,
    cache_dir: PathBuf,
    base: BaseImage,
    ids: Option<ftl_sandbox::IdRange>,
    lowers: OnceCell<BaseLowers>,
    merged: OnceCell<PathBuf>,
    root: OnceCell<PathBuf>,
    /// The steps' overlay: its scratch directory, unmounted on drop.
    mount: std::sync::Mutex<Option<ImageRootfs>>,
    /// With the lock that tells [`super::disk::reclaim`] this build lives.
    scratch: std::sync::Mutex<Option<(tempfile::TempDir, std::fs::File)>>,
    /// Held while this build may use the directories: `ftl cache gc`
    /// leaves them.
    leases: std::sync::Mutex<Vec<ftl_cache::dirs::Lease>>,
}

impl Drop for LazyRootfs {
    fn drop(&mut self) {
        // The overlay first, then its scratch directory.
        drop(self.mount.lock().map(|mut m| m.take()));
        drop(self.scratch.lock().map(|mut s| s.take()));
    }
}

impl LazyRootfs {
    /// A base's rootfs under `cache_dir` (`layers/`, `rootfs/`, `tmp/`);
    /// `ids`: the host ids steps' root maps to.
    pub fn new(
        client: Client,
        cache: Cache,
        cache_dir: PathBuf,
        base: BaseImage,
        ids: Option<ftl_sandbox::IdRange>,
    ) -> Self {
        LazyRootfs {
            client,
            cache,
            cache_dir,
            base,
            ids,
            lowers: OnceCell::new(),
            merged: OnceCell::new(),
            root: OnceCell::new(),
            mount: std::sync::Mutex::new(None),
            scratch: std::sync::Mutex::new(None),
            leases: std::sync::Mutex::new(Vec::new()),
        }
    }

    async fn lease(&self, dir: &Path) -> Result<(), EngineError> {
        // Blocks while a `cache gc` removes the directory.
        let at = dir.to_path_buf();
        let lease = tokio::task::spawn_blocking(move || ftl_cache::dirs::lease(&at))
            .await
            .map_err(super::join_err)??;
        self.leases.lock().expect("not poisoned").push(lease);
        Ok(())
    }

    /// The base's layers, unpacked if this machine has not yet: layer
    /// directories as root, else one merged tree.
    pub async fn lowers(&self) -> Result<BaseLowers, EngineError> {
        self.lowers
            .get_or_try_init(|| async {
                if !layer_dirs_supported() {
                    return Ok(BaseLowers::Merged(self.merged().await?));
                }
                let t = std::time::Instant::now();
                let dirs = futures_util::future::try_join_all(
                    self.base.layers.iter().map(|l| self.layer_dir(&l.digest)),
                )
                .await?;
                tracing::debug!(
                    base = %self.base.reference,
                    layers = dirs.len(),
                    ms = t.elapsed().as_millis() as u64,
                    "base layers ready"
                );
                Ok(BaseLowers::Layers(dirs.into_iter().rev().collect()))
            })
            .await
            .cloned()
    }

    /// `layers/<digest>`, unpacked there if it is not yet.
    async fn layer_dir(&self, digest: &str) -> Result<PathBuf, EngineError> {
        let hex = digest.trim_start_matches("sha256:");
        let parent = self.cache_dir.join("layers");
        // Layers keep the image's setuid files: only the mounter (root,
        // through idmapped views) reaches them, never another user.
        crate::rootfs::make_private(&parent).map_err(|e| {
            EngineError::Internal(format!("cannot prepare {}: {e}", parent.display()))
        })?;
        let dest = parent.join(hex);
        self.lease(&dest).await?;
        // Only a finished unpack is renamed to `dest`.
        if dest.is_dir() {
            return Ok(dest);
        }
        let stats = unpack_base_layer(
            &self.client,
            &self.cache,
            &self.base.reference,
            digest,
            &dest,
        )
        .await?;
        tracing::debug!(
            layer = digest,
            entries = stats.entries,
            bytes = stats.bytes,
            "unpacked base layer"
        );
        Ok(dest)
    }

    /// The whole base as one merged tree, `rootfs/<manifest digest>`.
    pub async fn merged(&self) -> Result<PathBuf, EngineError> {
        self.merged
            .get_or_try_init(|| async {
                let hex = self.base.info.manifest_digest.trim_start_matches("sha256:");
                let dest = self.cache_dir.join("rootfs").join(hex);
                self.lease(&dest).await?;
                if crate::rootfs::is_marked(&dest, MERGED_COMPLETE) {
                    return Ok(dest);
                }
                let paths = futures_util::future::try_join_all(self.base.layers.iter().map(|l| {
                    fetch_blob(&self.client, &self.cache, &self.base.reference, &l.digest)
                }))
                .await?;
                let dest2 = dest.clone();
                tokio::task::spawn_blocking(move || -> Result<(), EngineError> {
                    if std::fs::symlink_metadata(&dest2).is_ok()
                        && !crate::rootfs::is_marked(&dest2, MERGED_COMPLETE)
                    {
                        // A rootfs from an interrupted older layout; rebuild.
                        let _ = std::fs::remove_dir_all(&dest2);
                    }
                    // The marker is made in the tree before it is renamed
                    // into place (an image's own entry of that name, a link
                    // to a host file, is removed, never written through);
                    // the sandbox root is read-only, so it never reaches a
                    // layer.
                    crate::rootfs::unpack_rootfs_marked(&paths, &dest2, MERGED_COMPLETE)?;
                    Ok(())
                })
                .await
                .map_err(super::join_err)??;
                Ok(dest)
            })
            .await
            .cloned()
    }

    /// The root steps run on, unpacking the base if this machine has not
    /// yet: an overlay of the layer directories mounted for this build
    /// (its upper directory takes the mountpoints the runtime makes; steps
    /// see the root read-only), or the merged tree.
    pub async fn ensure(&self) -> Result<PathBuf, EngineError> {
        self.root
            .get_or_try_init(|| async {
                let dirs = match self.lowers().await? {
                    BaseLowers::Merged(p) => return Ok(p),
                    BaseLowers::Layers(dirs) => dirs,
                };
                let tmp = self.cache_dir.join("tmp");
                let ids = self.ids;
                let mounted = tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&tmp).map_err(|e| {
                        EngineError::Internal(format!("cannot create {}: {e}", tmp.display()))
                    })?;
                    let scratch = tempfile::Builder::new()
                        .prefix("rootfs-")
                        .tempdir_in(&tmp)
                        .map_err(|e| {
                            EngineError::Internal(format!("cannot create {}: {e}", tmp.display()))
                        })?;
                    let lock = scratch_lock(scratch.path()).map_err(|e| {
                        EngineError::Internal(format!(
                            "cannot lock {}: {e}",
                            scratch.path().display()
                        ))
                    })?;
                    let r = mount_layers(&dirs, scratch.path(), ids.as_ref());
                    Ok::<_, EngineError>(((scratch, lock), r))
                })
                .await
                .map_err(super::join_err)??;
                let (scratch, r) = mounted;
                match r {
                    Ok(root) => {
                        let path = root.path().to_path_buf();
                        *self.mount.lock().expect("not poisoned") = Some(root);
                        *self.scratch.lock().expect("not poisoned") = Some(scratch);
                        Ok(path)
                    }
                    Err(OverlayError::Idmapped(e)) => Err(EngineError::Sandbox(e)),
                    Err(OverlayError::Plain(e)) => {
                        tracing::warn!(
                            base = %self.base.reference,
                            error = %e,
                            "overlayfs unavailable: the base rootfs is a merged copy of its layers"
                        );
                        self.merged().await
                    }
                }
            })
            .await
            .cloned()
    }
}

/// The lock a build holds on its rootfs scratch directory (`rootfs-*` of
/// the cache's `tmp`) while it may have the overlay mounted there: a
/// killed build's is free, and [`super::disk::reclaim`] unmounts and
/// removes what it left.
pub(crate) const ROOTFS_SCRATCH_LOCK: &str = ".lock";

fn scratch_lock(scratch: &Path) -> io::Result<std::fs::File> {
    let f = std::fs::File::create(scratch.join(ROOTFS_SCRATCH_LOCK))?;
    f.lock()?;
    Ok(f)
}

/// Mounts an overlay of layer directories `dirs` (top first) under
/// `scratch` for steps: writable only through its upper directory in
/// `scratch` (steps get it read-only; the runtime makes mountpoints in it).
fn mount_layers(
    dirs: &[PathBuf],
    scratch: &Path,
    ids: Option<&ftl_sandbox::IdRange>,
) -> Result<ImageRootfs, OverlayError> {
    let rw = scratch.join("rw");
    let merged = scratch.join("merged");
    let empty = scratch.join("empty");
    for d in [&rw.join("upper"), &rw.join("work"), &merged, &empty] {
        std::fs::create_dir_all(d).map_err(OverlayError::Plain)?;
    }
    let mut lowers: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    if lowers.is_empty() {
        lowers.push(&empty);
    }
    overlay(&lowers, &rw, &merged, scratch, ids)?;
    Ok(ImageRootfs {
        path: merged,
        mounted: true,
    })
}

/// A writable rootfs of the whole image for verification: an overlay of
/// our layers (unpacked under `scratch`) on the base's, or a full copy
/// where overlayfs is not available. Unmounted on drop.
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

/// The image's root for verification: our `layers` (blobs, bottom first)
/// over `base`. As root each of ours unpacks into a layer directory of
/// `scratch` (whiteouts kept for overlayfs); otherwise they merge into
/// one. Where overlayfs cannot be mounted, the whole image is copied:
/// the merged base and ours applied on it, or, over layer directories,
/// the base's blobs (`base_blobs`, fetched only then) and ours unpacked
/// into one tree.
pub fn image_rootfs(
    base: &BaseLowers,
    layers: &[PathBuf],
    scratch: &Path,
    ids: Option<&ftl_sandbox::IdRange>,
    base_blobs: &dyn Fn() -> Result<Vec<PathBuf>, EngineError>,
) -> Result<ImageRootfs, EngineError> {
    let mut lowers: Vec<PathBuf> = Vec::new();
    if layer_dirs_supported() {
        for (i, l) in layers.iter().enumerate().rev() {
            let dir = scratch.join(format!("layer-{i}"));
            let file =
                std::fs::File::open(l).map_err(|source| crate::rootfs::UnpackError::Read {
                    layer: l.clone(),
                    source,
                })?;
            let mut r = crate::rootfs::decompress(io::BufReader::with_capacity(1 << 20, file))
                .map_err(|source| crate::rootfs::UnpackError::Read {
                    layer: l.clone(),
                    source,
                })?;
            crate::rootfs::unpack_layer_dir(&mut r, &dir, l)?;
            lowers.push(dir);
        }
    } else {
        let ours = scratch.join("layers");
        crate::rootfs::unpack_rootfs(layers, &ours)?;
        lowers.push(ours);
    }
    match base {
        BaseLowers::Layers(dirs) => lowers.extend(dirs.iter().cloned()),
        BaseLowers::Merged(p) => lowers.push(p.clone()),
    }
    let rw = scratch.join("rw");
    let (upper, work, merged) = (rw.join("upper"), rw.join("work"), scratch.join("merged"));
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d)
            .map_err(|e| EngineError::Internal(format!("cannot create {}: {e}", d.display())))?;
    }
    let lower_refs: Vec<&Path> = lowers.iter().map(|p| p.as_path()).collect();
    let mount_error = match overlay(&lower_refs, &rw, &merged, scratch, ids) {
        Ok(()) => {
            return Ok(ImageRootfs {
                path: merged,
                mounted: true,
            })
        }
        Err(e @ OverlayError::Idmapped(_)) => return Err(EngineError::Sandbox(e.to_string())),
        Err(OverlayError::Plain(e)) => e,
    };
    let copy = scratch.join("copy");
    match base {
        BaseLowers::Merged(base_rootfs) => {
            tracing::debug!(error = %mount_error, "overlayfs unavailable; copying the base rootfs");
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
        }
        BaseLowers::Layers(_) => {
            tracing::warn!(error = %mount_error, "overlayfs unavailable: verifying on a merged copy of the image");
            let mut all = base_blobs()?;
            all.extend(layers.iter().cloned());
            crate::rootfs::unpack_rootfs(&all, &copy)?;
        }
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
    // Whatever the kernel's defaults: no redirect or metacopy xattr of a
    // lower layer is followed (the extractor writes none, and steps cannot
    // set trusted.* xattrs; this keeps it so).
    let opts = format!(
        "lowerdir={lowerdir},upperdir={},workdir={},redirect_dir=nofollow,metacopy=off",
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
