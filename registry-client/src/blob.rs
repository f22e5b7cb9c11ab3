//! Blobs: HEAD, streamed GET, uploads (one streamed PUT or chunked PATCHes)
//! and cross-repository mounts.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use http::{Method, StatusCode};
use oci_spec::image::Digest;
use tokio::io::{AsyncRead, AsyncReadExt};
use url::Url;

use crate::client::{Access, Call, Client, Stats};
use crate::error::Error;
use crate::manifest::sha256_digest;
use crate::reference::Reference;

/// Where a blob's bytes come from for an upload. `open` may be called more
/// than once (a retry reopens the source from the start).
#[async_trait::async_trait]
pub trait BlobSource: Send + Sync {
    /// A fresh reader positioned at the first byte.
    async fn open(&self) -> io::Result<Box<dyn AsyncRead + Send + Unpin>>;

    /// Whether `open` can be called again after a failed upload. Retries
    /// of an upload happen only when it can.
    fn reopenable(&self) -> bool {
        true
    }
}

/// A blob stored in a file.
#[derive(Clone, Debug)]
pub struct FileSource(pub PathBuf);

#[async_trait::async_trait]
impl BlobSource for FileSource {
    async fn open(&self) -> io::Result<Box<dyn AsyncRead + Send + Unpin>> {
        let f = tokio::fs::File::open(&self.0).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("could not open {}: {e}", self.0.display()),
            )
        })?;
        Ok(Box::new(tokio::io::BufReader::with_capacity(256 * 1024, f)))
    }
}

/// A blob held in memory.
#[derive(Clone, Debug)]
pub struct BytesSource(pub Bytes);

#[async_trait::async_trait]
impl BlobSource for BytesSource {
    async fn open(&self) -> io::Result<Box<dyn AsyncRead + Send + Unpin>> {
        Ok(Box::new(io::Cursor::new(self.0.clone())))
    }
}

/// Called as blob bytes go out; implementations drive progress bars.
pub trait PushProgress: Send + Sync {
    /// A blob upload starts (also after a retry reset).
    fn blob_started(&self, _digest: &Digest, _size: u64) {}
    /// `bytes` more bytes of the blob were sent.
    fn bytes_sent(&self, _digest: &Digest, _bytes: u64) {}
    /// The upload is being retried from the start; forget bytes sent.
    fn blob_restarted(&self, _digest: &Digest) {}
    /// The blob is in the target, by whatever action.
    fn blob_done(&self, _digest: &Digest, _action: &crate::push::BlobAction) {}
}

/// A progress sink that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;
impl PushProgress for NoProgress {}

/// A blob being downloaded.
pub struct BlobStream {
    /// `Content-Length`, when the registry sent one.
    pub size: Option<u64>,
    stream: Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>,
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl BlobStream {
    /// The body as a stream of chunks.
    pub fn into_stream(self) -> Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>> {
        self.stream
    }

    /// The body as an `AsyncRead`.
    pub fn into_reader(self) -> impl AsyncRead + Send + Unpin {
        tokio_util::io::StreamReader::new(self.stream)
    }
}

/// An open upload session (its `Location`).
#[derive(Debug)]
pub(crate) struct UploadSession {
    pub(crate) location: Url,
}

pub(crate) enum MountOutcome {
    Mounted,
    NotMounted(UploadSession),
}

const OK: &[StatusCode] = &[StatusCode::OK];
const OK_OR_404: &[StatusCode] = &[StatusCode::OK, StatusCode::NOT_FOUND];
const ACCEPTED: &[StatusCode] = &[StatusCode::ACCEPTED];
const MOUNT: &[StatusCode] = &[StatusCode::CREATED, StatusCode::ACCEPTED];
const CREATED: &[StatusCode] = &[StatusCode::CREATED, StatusCode::NO_CONTENT, StatusCode::OK];
const DELETED: &[StatusCode] = &[
    StatusCode::NO_CONTENT,
    StatusCode::OK,
    StatusCode::ACCEPTED,
    StatusCode::NOT_FOUND,
];

fn blob_what(repo: &Reference, digest: &Digest) -> String {
    format!("blob {digest} in {}/{}", repo.registry(), repo.repository())
}

impl Client {
    /// HEADs a blob in a repository: its size, or `None` when missing.
    pub async fn head_blob(&self, repo: &Reference, digest: &Digest) -> Result<Option<u64>, Error> {
        self.head_blob_with(repo, digest, Access::Pull, &Stats::default())
            .await
    }

    pub(crate) async fn head_blob_with(
        &self,
        repo: &Reference,
        digest: &Digest,
        access: Access,
        stats: &Stats,
    ) -> Result<Option<u64>, Error> {
        let url = self.repo_url(repo, &format!("blobs/{digest}"));
        let call = Call::new(Method::HEAD, url, repo, OK_OR_404, blob_what(repo, digest))
            .scope(repo.repository(), access);
        let resp = self.send(&call, stats).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(
            resp.headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        ))
    }

    /// GETs a blob as a stream (redirects to storage are followed).
    pub async fn get_blob(&self, repo: &Reference, digest: &Digest) -> Result<BlobStream, Error> {
        self.get_blob_with(repo, digest, &Stats::default()).await
    }

    async fn get_blob_with(
        &self,
        repo: &Reference,
        digest: &Digest,
        stats: &Stats,
    ) -> Result<BlobStream, Error> {
        let url = self.repo_url(repo, &format!("blobs/{digest}"));
        let call = Call::new(Method::GET, url, repo, OK, blob_what(repo, digest))
            .scope(repo.repository(), Access::Pull);
        let resp = self.send(&call, stats).await?;
        let size = resp.content_length();
        let stream = resp.bytes_stream().map_err(io::Error::other);
        Ok(BlobStream {
            size,
            stream: Box::pin(stream),
        })
    }

    /// GETs a small blob into memory (at most `max` bytes) and checks its
    /// digest.
    pub async fn get_blob_bytes(
        &self,
        repo: &Reference,
        digest: &Digest,
        max: u64,
    ) -> Result<Bytes, Error> {
        self.get_blob_bytes_with(repo, digest, max, &Stats::default())
            .await
    }

    pub(crate) async fn get_blob_bytes_with(
        &self,
        repo: &Reference,
        digest: &Digest,
        max: u64,
        stats: &Stats,
    ) -> Result<Bytes, Error> {
        let url = self.repo_url(repo, &format!("blobs/{digest}"));
        let blob = self.get_blob_with(repo, digest, stats).await?;
        let mut stream = blob.into_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Error::InvalidResponse {
                what: blob_what(repo, digest),
                url: url.to_string(),
                reason: format!("the download broke off: {e}"),
            })?;
            buf.extend_from_slice(&chunk);
            if buf.len() as u64 > max {
                return Err(Error::InvalidResponse {
                    what: blob_what(repo, digest),
                    url: url.to_string(),
                    reason: format!("it is larger than the {max} bytes expected"),
                });
            }
        }
        let actual = sha256_digest(&buf);
        if &actual != digest {
            return Err(Error::DigestMismatch {
                url: url.to_string(),
                expected: Box::new(digest.clone()),
                actual: Box::new(actual),
            });
        }
        Ok(Bytes::from(buf))
    }

    /// Mounts a blob from another repository on the same registry. Returns
    /// whether it was mounted; a session the registry opened instead is
    /// cancelled.
    pub async fn mount_blob(
        &self,
        target: &Reference,
        digest: &Digest,
        from: &str,
    ) -> Result<bool, Error> {
        let stats = Stats::default();
        match self.mount_with(target, digest, from, &stats).await? {
            MountOutcome::Mounted => Ok(true),
            MountOutcome::NotMounted(session) => {
                self.cancel_upload(target, session, &stats).await;
                Ok(false)
            }
        }
    }

    pub(crate) async fn mount_with(
        &self,
        target: &Reference,
        digest: &Digest,
        from: &str,
        stats: &Stats,
    ) -> Result<MountOutcome, Error> {
        let mut url = self.repo_url(target, "blobs/uploads/");
        url.query_pairs_mut()
            .append_pair("mount", digest.as_ref())
            .append_pair("from", from);
        let call = Call::new(
            Method::POST,
            url,
            target,
            MOUNT,
            format!(
                "mount of blob {digest} from {from} into {}",
                target.repository()
            ),
        )
        .scope(target.repository(), Access::PullPush)
        .scope(from, Access::Pull)
        .header(CONTENT_LENGTH, "0");
        let resp = self.send(&call, stats).await?;
        if resp.status() == StatusCode::CREATED {
            return Ok(MountOutcome::Mounted);
        }
        Ok(MountOutcome::NotMounted(self.session_from(&call, &resp)?))
    }

    fn session_from(&self, call: &Call, resp: &reqwest::Response) -> Result<UploadSession, Error> {
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| call.url.join(l).ok())
            .ok_or_else(|| Error::InvalidResponse {
                what: format!("{} (upload session)", call.description),
                url: crate::client::shown_url(&call.url),
                reason: "the response has no usable Location header".into(),
            })?;
        Ok(UploadSession { location })
    }

    pub(crate) async fn open_upload(
        &self,
        target: &Reference,
        digest: &Digest,
        stats: &Stats,
    ) -> Result<UploadSession, Error> {
        let url = self.repo_url(target, "blobs/uploads/");
        let call = Call::new(
            Method::POST,
            url,
            target,
            ACCEPTED,
            format!("upload of blob {digest} to {}", target.repository()),
        )
        .scope(target.repository(), Access::PullPush)
        .header(CONTENT_LENGTH, "0");
        let resp = self.send(&call, stats).await?;
        self.session_from(&call, &resp)
    }

    /// Deletes an upload session we will not finish; errors are only
    /// logged. Distribution authorizes a DELETE with the `delete` action,
    /// so the call asks for that scope alone: a refusal neither disturbs
    /// the pull/push token nor fails the push (unused sessions expire).
    pub(crate) async fn cancel_upload(
        &self,
        target: &Reference,
        session: UploadSession,
        stats: &Stats,
    ) {
        let mut call = Call::new(
            Method::DELETE,
            session.location,
            target,
            DELETED,
            format!("cancel of an upload to {}", target.repository()),
        )
        .scope(target.repository(), Access::Delete);
        call.best_effort = true;
        if let Err(e) = self.send(&call, stats).await {
            tracing::debug!(error = %e, "could not cancel an upload session");
        }
    }

    /// Uploads a blob to `target` (POST, then one streamed PUT, or chunked
    /// PATCHes above the configured threshold), without retries; a failed
    /// upload's session is cancelled. Returns the bytes sent.
    pub async fn upload_blob(
        &self,
        target: &Reference,
        digest: &Digest,
        size: u64,
        source: &dyn BlobSource,
    ) -> Result<u64, Error> {
        let stats = Stats::default();
        let mut session = self.open_upload(target, digest, &stats).await?;
        let result = self
            .finish_upload(
                target,
                &mut session,
                digest,
                size,
                source,
                Arc::new(NoProgress),
                &stats,
            )
            .await;
        if let Err(e) = result {
            self.cancel_upload(target, session, &stats).await;
            return Err(e);
        }
        Ok(size)
    }

    /// Sends the blob's bytes into an open session and commits it. On
    /// failure `session` holds the latest location, for cancelling.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn finish_upload(
        &self,
        target: &Reference,
        session: &mut UploadSession,
        digest: &Digest,
        size: u64,
        source: &dyn BlobSource,
        progress: Arc<dyn PushProgress>,
        stats: &Stats,
    ) -> Result<(), Error> {
        let reader = source.open().await.map_err(|e| Error::Source {
            digest: digest.clone(),
            source: e,
        })?;
        progress.blob_started(digest, size);
        if size >= self.inner.settings.chunked_upload_threshold {
            self.upload_chunked(target, session, digest, size, reader, progress, stats)
                .await
        } else {
            self.upload_single(target, session, digest, size, reader, progress, stats)
                .await
        }?;
        stats.bytes_uploaded.fetch_add(size, Ordering::Relaxed);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn upload_single(
        &self,
        target: &Reference,
        session: &mut UploadSession,
        digest: &Digest,
        size: u64,
        reader: Box<dyn AsyncRead + Send + Unpin>,
        progress: Arc<dyn PushProgress>,
        stats: &Stats,
    ) -> Result<(), Error> {
        let mut url = session.location.clone();
        url.query_pairs_mut().append_pair("digest", digest.as_ref());
        let call = Call::new(
            Method::PUT,
            url,
            target,
            CREATED,
            format!("upload of blob {digest} to {}", target.repository()),
        )
        .scope(target.repository(), Access::PullPush)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_LENGTH, &size.to_string());
        let d = digest.clone();
        let stream =
            tokio_util::io::ReaderStream::with_capacity(reader, 256 * 1024).inspect(move |chunk| {
                if let Ok(c) = chunk {
                    progress.bytes_sent(&d, c.len() as u64);
                }
            });
        self.send_once(&call, reqwest::Body::wrap_stream(stream), stats)
            .await?;
        tracing::debug!(%digest, size, "blob uploaded");
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn upload_chunked(
        &self,
        target: &Reference,
        session: &mut UploadSession,
        digest: &Digest,
        size: u64,
        mut reader: Box<dyn AsyncRead + Send + Unpin>,
        progress: Arc<dyn PushProgress>,
        stats: &Stats,
    ) -> Result<(), Error> {
        let chunk_size = self.inner.settings.chunk_size.max(1) as usize;
        let mut offset = 0u64;
        let description = format!("chunked upload of blob {digest} to {}", target.repository());
        let mut buf = vec![0u8; chunk_size];
        loop {
            let mut filled = 0;
            while filled < chunk_size {
                let n = reader
                    .read(&mut buf[filled..])
                    .await
                    .map_err(|e| Error::Source {
                        digest: digest.clone(),
                        source: e,
                    })?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            let end = offset + filled as u64 - 1;
            let call = Call::new(
                Method::PATCH,
                session.location.clone(),
                target,
                ACCEPTED,
                description.clone(),
            )
            .scope(target.repository(), Access::PullPush)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_RANGE, &format!("{offset}-{end}"))
            .header(CONTENT_LENGTH, &filled.to_string())
            .body(Bytes::copy_from_slice(&buf[..filled]));
            let resp = self.send(&call, stats).await?;
            session.location = self.session_from(&call, &resp)?.location;
            offset += filled as u64;
            progress.bytes_sent(digest, filled as u64);
            if filled < chunk_size {
                break;
            }
        }
        if offset != size {
            tracing::warn!(%digest, expected = size, sent = offset, "blob source size differs from the descriptor");
        }
        let mut location = session.location.clone();
        location
            .query_pairs_mut()
            .append_pair("digest", digest.as_ref());
        let call = Call::new(Method::PUT, location, target, CREATED, description)
            .scope(target.repository(), Access::PullPush)
            .header(CONTENT_LENGTH, "0");
        self.send(&call, stats).await?;
        tracing::debug!(%digest, size, "blob uploaded in chunks");
        Ok(())
    }
}
