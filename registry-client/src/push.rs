//! The push engine: blobs (HEAD, mount, upload) with bounded concurrency
//! and retries, then the manifest, last.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use oci_spec::image::{Digest, MediaType};

use crate::blob::{BlobSource, MountOutcome, PushProgress, UploadSession};
use crate::client::{Access, Client, Stats};
use crate::error::Error;
use crate::manifest::sha256_digest;
use crate::reference::Reference;

/// One blob the manifest references.
#[derive(Clone)]
pub struct PushBlob {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type.
    pub media_type: MediaType,
    /// Where to read it from if it must be uploaded; `None` for blobs that
    /// must already exist or be mountable (base image layers).
    pub source: Option<Arc<dyn BlobSource>>,
    /// Repositories on the target's registry that may hold it, tried as
    /// mount sources in order.
    pub mount_from: Vec<String>,
}

impl std::fmt::Debug for PushBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushBlob")
            .field("digest", &self.digest)
            .field("size", &self.size)
            .field("media_type", &self.media_type)
            .field("has_source", &self.source.is_some())
            .field("mount_from", &self.mount_from)
            .finish()
    }
}

/// An image to push.
#[derive(Clone, Debug)]
pub struct PushRequest {
    /// Where to push: its tag (or, without tag, its digest) names the
    /// manifest.
    pub target: Reference,
    /// Config and layers (duplicates are pushed once).
    pub blobs: Vec<PushBlob>,
    /// The manifest's exact bytes.
    pub manifest: Bytes,
    /// The manifest's media type.
    pub manifest_media_type: MediaType,
    /// More tags to point at the same manifest.
    pub extra_tags: Vec<String>,
}

/// What the push did with one blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobAction {
    /// Already in the target repository.
    Present,
    /// Mounted from another repository.
    Mounted {
        /// The repository it was mounted from.
        from: String,
    },
    /// Uploaded.
    Uploaded {
        /// Bytes sent.
        bytes: u64,
    },
}

/// One blob's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobReport {
    /// The blob.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// What happened.
    pub action: BlobAction,
}

/// The outcome of a push.
#[derive(Clone, Debug)]
pub struct PushReport {
    /// The target reference, pinned to the manifest digest.
    pub reference: Reference,
    /// The manifest's digest.
    pub manifest_digest: Digest,
    /// Per blob, in request order (duplicates once).
    pub blobs: Vec<BlobReport>,
    /// Blob bytes uploaded.
    pub bytes_uploaded: u64,
    /// HTTP requests made (token requests included).
    pub requests: u64,
}

impl Client {
    /// Pushes an image: each blob is HEAD-checked in the target, mounted
    /// from its `mount_from` repositories when missing, else uploaded from
    /// its source; then the manifest is PUT (and extra tags). The manifest
    /// is written only when every blob is in place.
    pub async fn push(
        &self,
        request: PushRequest,
        progress: Arc<dyn PushProgress>,
    ) -> Result<PushReport, Error> {
        let stats = Stats::default();
        let target = &request.target;
        let manifest_digest = sha256_digest(&request.manifest);
        if let Some(expected) = target.digest() {
            if *expected != manifest_digest {
                return Err(Error::ManifestDigest {
                    target: target.to_string(),
                    expected: Box::new(expected.clone()),
                    actual: Box::new(manifest_digest),
                });
            }
        }
        // Bad extra tags fail before anything is sent.
        let tagged: Vec<Reference> = request
            .extra_tags
            .iter()
            .map(|t| target.with_tag(t))
            .collect::<Result<_, _>>()?;
        // Each digest once; merge mount sources, keep the first source.
        let mut order: Vec<Digest> = Vec::new();
        let mut unique: HashMap<Digest, PushBlob> = HashMap::new();
        for blob in request.blobs {
            match unique.get_mut(&blob.digest) {
                Some(existing) => {
                    for m in blob.mount_from {
                        if !existing.mount_from.contains(&m) {
                            existing.mount_from.push(m);
                        }
                    }
                    if existing.source.is_none() {
                        existing.source = blob.source;
                    }
                }
                None => {
                    order.push(blob.digest.clone());
                    unique.insert(blob.digest.clone(), blob);
                }
            }
        }
        tracing::info!(%target, blobs = order.len(), "push started");
        let concurrency = self.inner.settings.max_concurrency.max(1);
        // After the first failure no new blob starts and blobs in flight stop
        // before uploading, each closing its own upload session; the stream
        // is drained so none is dropped mid-request.
        let failed = AtomicBool::new(false);
        let mut results = futures_util::stream::iter(order.iter().map(|d| {
            let blob = &unique[d];
            let progress = progress.clone();
            let stats = &stats;
            let failed = &failed;
            async move {
                if failed.load(Ordering::SeqCst) {
                    return (blob.digest.clone(), None);
                }
                let action = self
                    .push_blob(target, blob, progress.clone(), stats, failed)
                    .await;
                match &action {
                    Ok(Some(a)) => progress.blob_done(&blob.digest, a),
                    Ok(None) => {}
                    Err(_) => failed.store(true, Ordering::SeqCst),
                }
                (blob.digest.clone(), Some(action))
            }
        }))
        .buffer_unordered(concurrency);
        let mut actions: HashMap<Digest, BlobAction> = HashMap::new();
        let mut first_error: Option<(Digest, Error)> = None;
        while let Some((digest, result)) = results.next().await {
            match result {
                Some(Ok(Some(action))) => {
                    tracing::debug!(%digest, ?action, "blob in place");
                    actions.insert(digest, action);
                }
                Some(Err(e)) if first_error.is_none() => first_error = Some((digest, e)),
                Some(Err(e)) => tracing::debug!(%digest, error = %e, "another blob failed too"),
                Some(Ok(None)) | None => {}
            }
        }
        drop(results);
        if let Some((digest, e)) = first_error {
            tracing::info!(%target, %digest, error = %e, "push failed; no manifest written");
            return Err(Error::Push {
                target: target.to_string(),
                digest,
                source: Box::new(e),
            });
        }
        let manifest_digest = self
            .put_manifest_with(
                target,
                request.manifest.clone(),
                &request.manifest_media_type,
                &stats,
            )
            .await?;
        for tagged in &tagged {
            self.put_manifest_with(
                tagged,
                request.manifest.clone(),
                &request.manifest_media_type,
                &stats,
            )
            .await?;
        }
        let blobs = order
            .iter()
            .map(|d| BlobReport {
                digest: d.clone(),
                size: unique[d].size,
                action: actions.remove(d).unwrap_or(BlobAction::Present),
            })
            .collect();
        let report = PushReport {
            reference: target.with_digest(manifest_digest.clone()),
            manifest_digest,
            blobs,
            bytes_uploaded: stats.bytes_uploaded.load(Ordering::Relaxed),
            requests: stats.requests.load(Ordering::Relaxed),
        };
        tracing::info!(reference = %report.reference, bytes = report.bytes_uploaded, requests = report.requests, "push finished");
        Ok(report)
    }

    async fn push_blob(
        &self,
        target: &Reference,
        blob: &PushBlob,
        progress: Arc<dyn PushProgress>,
        stats: &Stats,
        failed: &AtomicBool,
    ) -> Result<Option<BlobAction>, Error> {
        let digest = &blob.digest;
        if self
            .head_blob_with(target, digest, Access::PullPush, stats)
            .await?
            .is_some()
        {
            return Ok(Some(BlobAction::Present));
        }
        let mut session: Option<UploadSession> = None;
        let sources: Vec<&String> = blob
            .mount_from
            .iter()
            .filter(|r| r.as_str() != target.repository())
            .collect();
        for (i, from) in sources.iter().enumerate() {
            if let Some(s) = session.take() {
                self.cancel_upload(target, s, stats).await;
            }
            match self.mount_with(target, digest, from, stats).await {
                Ok(MountOutcome::Mounted) => {
                    tracing::debug!(%digest, %from, "blob mounted");
                    return Ok(Some(BlobAction::Mounted {
                        from: (*from).clone(),
                    }));
                }
                Ok(MountOutcome::NotMounted(s)) => {
                    tracing::debug!(%digest, %from, "mount declined; the registry opened an upload instead");
                    if i + 1 < sources.len() || blob.source.is_some() {
                        session = Some(s);
                    } else {
                        self.cancel_upload(target, s, stats).await;
                    }
                }
                Err(e) => {
                    tracing::debug!(%digest, %from, error = %e, "mount failed; falling back");
                }
            }
        }
        let Some(source) = blob.source.as_deref() else {
            if let Some(s) = session.take() {
                self.cancel_upload(target, s, stats).await;
            }
            return Err(Error::BlobUnavailable {
                digest: digest.clone(),
                repository: format!("{}/{}", target.registry(), target.repository()),
                tried: sources.into_iter().cloned().collect(),
            });
        };
        let retry = &self.inner.settings.retry;
        let mut attempt = 0u32;
        let mut reauthed = false;
        loop {
            attempt += 1;
            if failed.load(Ordering::SeqCst) {
                // Another blob failed: the push is over; close our session.
                if let Some(s) = session.take() {
                    self.cancel_upload(target, s, stats).await;
                }
                return Ok(None);
            }
            let mut s = match session.take() {
                Some(s) => s,
                None => self.open_upload(target, digest, stats).await?,
            };
            let result = self
                .finish_upload(
                    target,
                    &mut s,
                    digest,
                    blob.size,
                    source,
                    progress.clone(),
                    stats,
                )
                .await;
            let err = match result {
                Ok(()) => return Ok(Some(BlobAction::Uploaded { bytes: blob.size })),
                Err(e) => {
                    // Close the session; a retry opens a fresh one.
                    self.cancel_upload(target, s, stats).await;
                    e
                }
            };
            let again = if matches!(err, Error::Unauthorized { .. }) && !reauthed {
                // A token expired mid-upload: the challenge was re-learned;
                // a fresh session with a fresh token may pass.
                reauthed = true;
                attempt -= 1;
                true
            } else {
                err.is_transient() && attempt < retry.max_attempts
            };
            if !again || !source.reopenable() {
                return Err(err);
            }
            let wait = retry.backoff(attempt.max(1));
            tracing::info!(%digest, attempt, ?wait, error = %err, "blob upload failed, retrying");
            progress.blob_restarted(digest);
            tokio::time::sleep(wait).await;
        }
    }
}
