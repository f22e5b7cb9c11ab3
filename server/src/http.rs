//! The HTTP API (axum routes) and the connections it is served on (hyper,
//! driven directly: header timeouts and a bound on open connections are
//! connection-level, which `axum::serve` does not offer).
//!
//! A submission is checked in the order that costs a client least and the
//! server nothing: token, options (in the header form) and their scopes,
//! the declared length, a place in the queue; only then is the body read,
//! streamed to a file in the state directory under the upload limit and
//! the body timeouts, and extracted from there.

// Helpers of handlers return the `Response` of their error, as handlers
// do: it is built once per request, and boxing it buys nothing.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::service::{valid_id, CancelError, Service, Slot, SubmitError};
use crate::spec::BuildSpec;
use crate::tokens::Token;
use crate::ServerConfig;

/// The header that carries the build options when the body is the bare
/// archive.
pub const OPTIONS_HEADER: &str = "ftl-options";

/// The largest `options` part of a multipart upload.
const MAX_OPTIONS: usize = 64 << 10;

pub(crate) fn router(service: Arc<Service>) -> Router {
    let api = Router::new()
        .route("/v1/builds", post(submit).get(list))
        .route("/v1/builds/{id}", get(status).post(action))
        .route("/v1/builds/{id}/log", get(log))
        .route("/metrics", get(metrics))
        // Bodies are streamed to disk under `--max-upload` by `submit`
        // itself; axum's in-memory limit does not apply.
        .layer(DefaultBodyLimit::disable())
        .route_layer(middleware::from_fn_with_state(service.clone(), auth));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(api)
        .with_state(service)
}

// ---- connections ------------------------------------------------------------

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

impl From<&ServerConfig> for ConnLimits {
    fn from(c: &ServerConfig) -> Self {
        ConnLimits {
            max_connections: c.max_connections.max(1),
            header_timeout: c.header_timeout,
        }
    }
}

/// Accepts connections until `stop` turns true, at most
/// `max_connections` open at once: past that the next is not accepted
/// until one closes (it waits in the listen backlog). Each connection is
/// HTTP/1.1 with keep-alive; its request headers must arrive within the
/// header timeout, which also closes a keep-alive connection left idle
/// that long. On stop, open connections finish the request they are in
/// and close; this returns when all have.
pub(crate) async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = stopped(&mut stop) => break,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopped(&mut stop) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: the listener is fine,
                // the moment is not.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = hyper::service::service_fn({
            let app = app.clone();
            move |req: Request<hyper::body::Incoming>| {
                let mut app = app.clone();
                async move {
                    let r = tower_service::Service::call(&mut app, req.map(Body::new)).await;
                    Ok::<_, Infallible>(r.unwrap_or_else(|e| match e {}))
                }
            }
        });
        let mut stop = stop.clone();
        conns.spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                // A connection's read buffer (and so its headers) stays
                // small: memory per connection is bounded.
                .max_buf_size(64 << 10)
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            let done = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = stopped(&mut stop) => None,
            };
            let r = match done {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended");
            }
        });
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
    Ok(())
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

// ---- errors and auth -------------------------------------------------------

fn error(status: StatusCode, kind: &str, message: impl std::fmt::Display) -> Response {
    (
        status,
        Json(json!({ "error": kind, "message": message.to_string() })),
    )
        .into_response()
}

/// An error answered before the request's body was read: the connection
/// closes after it, rather than reading (or leaving) what the client sends.
fn closing(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// A `500`: the whole error goes to the server's log; the client gets its
/// chain with the state directory's path left out.
fn internal(svc: &Service, e: &dyn std::error::Error) -> Response {
    tracing::error!(error = %ftl::error_chain(e), "internal error");
    let dir = svc.config.state_dir.display().to_string();
    let message = ftl::error_chain(e).replace(&dir, "<state-dir>");
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
}

/// Who sent a request: the token it carried, or `None` when the server
/// runs without authentication.
#[derive(Clone)]
pub(crate) struct Caller(Option<Arc<Token>>);

impl Caller {
    fn name(&self) -> Option<&str> {
        self.0.as_ref().map(|t| t.name.as_str())
    }
}

async fn auth(State(svc): State<Arc<Service>>, mut req: Request, next: Next) -> Response {
    let Some(tokens) = &svc.config.tokens else {
        req.extensions_mut().insert(Caller(None));
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = given.and_then(|g| tokens.find(g)) else {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            if given.is_some() {
                "the bearer token is not valid"
            } else {
                "a bearer token is required (Authorization: Bearer TOKEN)"
            },
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return closing(r);
    };
    req.extensions_mut().insert(Caller(Some(token.clone())));
    next.run(req).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(svc): State<Arc<Service>>) -> Response {
    let (queued, running) = svc.depth();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        svc.metrics.render(queued, running, svc.config.workers),
    )
        .into_response()
}

// ---- submissions -------------------------------------------------------------

/// Why a body was not received.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("the upload is larger than the server's --max-upload ({0} bytes)")]
    TooLarge(u64),
    #[error("the request body did not arrive within the server's {flag} ({after:?})")]
    Timeout { flag: &'static str, after: Duration },
    #[error("cannot read the request body: {0}")]
    Read(String),
}

impl BodyError {
    fn response(&self, svc: &Service) -> Response {
        match self {
            BodyError::TooLarge(_) => {
                closing(error(StatusCode::PAYLOAD_TOO_LARGE, "too-large", self))
            }
            BodyError::Timeout { .. } => {
                svc.metrics
                    .rejected_timeout
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                closing(error(StatusCode::REQUEST_TIMEOUT, "timeout", self))
            }
            BodyError::Read(_) => closing(error(StatusCode::BAD_REQUEST, "bad-request", self)),
        }
    }
}

/// A request body, read chunk by chunk under the upload limit, the
/// body's deadline and the idle timeout.
struct BodyReader {
    stream: axum::body::BodyDataStream,
    read: u64,
    max: u64,
    total: Duration,
    deadline: Instant,
    idle: Duration,
}

impl BodyReader {
    fn new(body: Body, config: &ServerConfig) -> BodyReader {
        BodyReader {
            stream: body.into_data_stream(),
            read: 0,
            max: config.max_upload,
            total: config.body_timeout,
            deadline: Instant::now() + config.body_timeout,
            idle: config.idle_timeout,
        }
    }

    async fn next(&mut self) -> Result<Option<Bytes>, BodyError> {
        let idle_until = Instant::now() + self.idle;
        let (until, flag, after) = if idle_until < self.deadline {
            (idle_until, "--idle-timeout", self.idle)
        } else {
            (self.deadline, "--body-timeout", self.total)
        };
        match tokio::time::timeout_at(until, self.stream.next()).await {
            Err(_) => Err(BodyError::Timeout { flag, after }),
            Ok(None) => Ok(None),
            Ok(Some(Err(e))) => Err(BodyError::Read(e.to_string())),
            Ok(Some(Ok(chunk))) => {
                self.read += chunk.len() as u64;
                if self.read > self.max {
                    Err(BodyError::TooLarge(self.max))
                } else {
                    Ok(Some(chunk))
                }
            }
        }
    }

    /// The rest of the body as a stream (for the multipart parser); the
    /// first error is also left in `failure`, so that it can be told from
    /// a malformed body.
    fn into_stream(
        self,
        failure: Arc<Mutex<Option<BodyError>>>,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        futures_util::stream::unfold(Some(self), move |reader| {
            let failure = failure.clone();
            async move {
                let mut reader = reader?;
                match reader.next().await {
                    Ok(Some(chunk)) => Some((Ok(chunk), Some(reader))),
                    Ok(None) => None,
                    Err(e) => {
                        let message = e.to_string();
                        *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        Some((Err(std::io::Error::other(message)), None))
                    }
                }
            }
        })
    }
}

/// The file an upload's body is written to while it arrives; removed
/// when dropped (the extracted tree is what a build reads).
struct UploadFile {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    bytes: u64,
}

impl UploadFile {
    async fn create(path: PathBuf) -> std::io::Result<UploadFile> {
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .await?;
        Ok(UploadFile {
            path,
            file: Some(file),
            bytes: 0,
        })
    }

    async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        if let Some(f) = self.file.as_mut() {
            f.write_all(chunk).await?;
            self.bytes += chunk.len() as u64;
        }
        Ok(())
    }

    async fn finish(&mut self) -> std::io::Result<()> {
        if let Some(mut f) = self.file.take() {
            f.flush().await?;
        }
        Ok(())
    }

    fn path(&self) -> &FsPath {
        &self.path
    }
}

impl Drop for UploadFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Why the body of a submission was not stored.
enum Receive {
    Body(BodyError),
    /// The answer to give (a bad multipart body, bad options).
    Answer(Response),
    Storage(std::io::Error),
}

fn missing_options() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "missing-options",
        "send the build options as JSON in the Ftl-Options header or an `options` multipart part",
    )
}

/// Parses options and checks them against the caller's token.
fn spec_for(svc: &Service, caller: &Caller, options: &[u8]) -> Result<BuildSpec, Response> {
    let spec =
        BuildSpec::parse(options).map_err(|e| error(StatusCode::BAD_REQUEST, "bad-options", e))?;
    if let Some(token) = &caller.0 {
        let uses = spec
            .repositories()
            .map_err(|e| error(StatusCode::BAD_REQUEST, "bad-options", e))?;
        token
            .check(uses.iter().map(|(o, s, r)| (o.clone(), *s, r)))
            .map_err(|e| {
                svc.metrics
                    .rejected_scope
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                error(StatusCode::FORBIDDEN, "forbidden", e)
            })?;
    }
    Ok(spec)
}

fn submit_error(svc: &Service, e: SubmitError) -> Response {
    match e {
        SubmitError::Full(n) => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "queue-full",
                SubmitError::Full(n),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            closing(r)
        }
        SubmitError::ShuttingDown => closing(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting-down",
            SubmitError::ShuttingDown,
        )),
        SubmitError::Archive(e) if e.is_client_error() => {
            error(StatusCode::BAD_REQUEST, e.kind(), e)
        }
        SubmitError::Spec(e) => error(StatusCode::BAD_REQUEST, "bad-options", e),
        e => internal(svc, &e),
    }
}

/// `POST /v1/builds`: the archive as the body with options in the
/// `Ftl-Options` header, or `multipart/form-data` with parts `options`
/// (JSON) and `source` (the archive).
async fn submit(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let is_multipart = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    // The header form's options are checked before anything is read.
    let header_spec = if is_multipart {
        None
    } else {
        let Some(options) = parts.headers.get(OPTIONS_HEADER) else {
            return closing(missing_options());
        };
        match spec_for(&svc, &caller, options.as_bytes()) {
            Ok(spec) => Some(spec),
            Err(r) => return closing(r),
        }
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > svc.config.max_upload) {
        return BodyError::TooLarge(svc.config.max_upload).response(&svc);
    }
    // A place in the queue before the body: a full queue costs the client
    // one round trip and the server nothing.
    let slot = match svc.reserve() {
        Ok(slot) => slot,
        Err(e) => return submit_error(&svc, e),
    };
    let mut upload = match UploadFile::create(svc.upload_path(slot.id())).await {
        Ok(u) => u,
        Err(e) => return internal(&svc, &SubmitError::Storage(e)),
    };
    let reader = BodyReader::new(body, &svc.config);
    let received = match header_spec {
        Some(spec) => receive_raw(reader, &mut upload).await.map(|()| spec),
        None => receive_multipart(&svc, &caller, parts, reader, &mut upload).await,
    };
    let spec = match received {
        Ok(spec) => spec,
        Err(Receive::Body(e)) => return e.response(&svc),
        Err(Receive::Answer(r)) => return closing(r),
        Err(Receive::Storage(e)) => return closing(internal(&svc, &SubmitError::Storage(e))),
    };
    if let Err(e) = upload.finish().await {
        return internal(&svc, &SubmitError::Storage(e));
    }
    if upload.bytes == 0 {
        return error(
            StatusCode::BAD_REQUEST,
            "empty-upload",
            "the upload is empty: send a .tar.gz or .zip of the source",
        );
    }
    accepted(&svc, slot, spec, &caller, &upload).await
}

async fn accepted(
    svc: &Arc<Service>,
    slot: Slot,
    spec: BuildSpec,
    caller: &Caller,
    upload: &UploadFile,
) -> Response {
    let owner = caller.name().map(String::from);
    match svc.submit(slot, spec, owner, upload.path()).await {
        Ok(id) => {
            let mut r = (
                StatusCode::ACCEPTED,
                Json(json!({
                    "id": id,
                    "state": "queued",
                    "status_url": format!("/v1/builds/{id}"),
                    "log_url": format!("/v1/builds/{id}/log"),
                })),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("/v1/builds/{id}")) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Err(e) => submit_error(svc, e),
    }
}

async fn receive_raw(mut reader: BodyReader, upload: &mut UploadFile) -> Result<(), Receive> {
    while let Some(chunk) = reader.next().await.map_err(Receive::Body)? {
        upload.write(&chunk).await.map_err(Receive::Storage)?;
    }
    Ok(())
}

async fn receive_multipart(
    svc: &Service,
    caller: &Caller,
    parts: Parts,
    reader: BodyReader,
    upload: &mut UploadFile,
) -> Result<BuildSpec, Receive> {
    let failure = Arc::new(Mutex::new(None));
    let body = Body::from_stream(reader.into_stream(failure.clone()));
    // A failure of the body itself (too large, too slow) rather than of
    // its multipart framing.
    let why = |e: axum::extract::multipart::MultipartError| match failure
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        Some(b) => Receive::Body(b),
        None => Receive::Answer(error(
            StatusCode::BAD_REQUEST,
            "bad-multipart",
            e.body_text(),
        )),
    };
    let mut mp = Multipart::from_request(Request::from_parts(parts, body), &())
        .await
        .map_err(|e| {
            Receive::Answer(error(
                StatusCode::BAD_REQUEST,
                "bad-multipart",
                e.body_text(),
            ))
        })?;
    let mut options: Option<Vec<u8>> = None;
    let mut source = false;
    while let Some(mut field) = mp.next_field().await.map_err(why)? {
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "options" => {
                let mut buf = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(why)? {
                    buf.extend_from_slice(&chunk);
                    if buf.len() > MAX_OPTIONS {
                        return Err(Receive::Answer(error(
                            StatusCode::BAD_REQUEST,
                            "bad-multipart",
                            format!("the `options` part is larger than {MAX_OPTIONS} bytes"),
                        )));
                    }
                }
                options = Some(buf);
            }
            "source" if !source => {
                source = true;
                while let Some(chunk) = field.chunk().await.map_err(why)? {
                    upload.write(&chunk).await.map_err(Receive::Storage)?;
                }
            }
            "source" => {
                return Err(Receive::Answer(error(
                    StatusCode::BAD_REQUEST,
                    "bad-multipart",
                    "more than one `source` part",
                )))
            }
            other => {
                return Err(Receive::Answer(error(
                    StatusCode::BAD_REQUEST,
                    "bad-multipart",
                    format!("unknown part `{other}`: send `options` and `source`"),
                )))
            }
        }
    }
    let Some(options) = options else {
        return Err(Receive::Answer(missing_options()));
    };
    spec_for(svc, caller, &options).map_err(Receive::Answer)
}

// ---- reading builds ----------------------------------------------------------

async fn list(State(svc): State<Arc<Service>>, Extension(caller): Extension<Caller>) -> Response {
    match svc.store.list(100, caller.name()) {
        Ok(records) => Json(json!({ "builds": records })).into_response(),
        Err(e) => internal(&svc, &e),
    }
}

/// The record of `id` when the caller may see it; anything else is the
/// same `404`, so that ids of other tokens' builds do not leak.
fn visible_record(svc: &Service, caller: &Caller, id: &str) -> Result<crate::Record, Response> {
    if !valid_id(id) {
        return Err(not_found(id));
    }
    match svc.get(id) {
        Ok(Some(rec)) if Service::visible(&rec, caller.name()) => Ok(rec),
        Ok(_) => Err(not_found(id)),
        Err(e) => Err(internal(svc, &e)),
    }
}

async fn status(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    match visible_record(&svc, &caller, &id) {
        Ok(rec) => Json(rec).into_response(),
        Err(r) => r,
    }
}

fn not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not-found",
        format!("no build {id:?}"),
    )
}

/// `POST /v1/builds/{id}:cancel`.
async fn action(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id_action): Path<String>,
) -> Response {
    let Some(id) = id_action.strip_suffix(":cancel") else {
        return error(
            StatusCode::NOT_FOUND,
            "not-found",
            "unknown action: POST /v1/builds/{id}:cancel",
        );
    };
    if !valid_id(id) {
        return not_found(id);
    }
    match svc.cancel(id, caller.name()) {
        Ok(was) => (
            StatusCode::ACCEPTED,
            Json(json!({ "id": id, "cancelling": true, "was": was })),
        )
            .into_response(),
        Err(CancelError::NotFound(_)) => not_found(id),
        Err(e @ CancelError::Ended(..)) => error(StatusCode::CONFLICT, "ended", e),
        Err(e) => internal(&svc, &e),
    }
}

/// `GET /v1/builds/{id}/log`: `text/plain`, chunked, one line per event,
/// streamed while the build runs and closed when it ends.
async fn log(
    State(svc): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = visible_record(&svc, &caller, &id) {
        return r;
    }
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let content_type = if sse {
        "text/event-stream"
    } else {
        "text/plain; charset=utf-8"
    };
    let frame = move |line: String| -> Bytes {
        if sse {
            Bytes::from(format!("data: {}\n\n", line.trim_end_matches('\n')))
        } else {
            Bytes::from(line)
        }
    };
    if let Some(live) = svc.live_log(&id) {
        let mut rx = live.subscribe();
        let stream = async_stream(move |tx| async move {
            let mut pos = 0;
            loop {
                let (lines, ended) = live.since(pos);
                pos += lines.len();
                for l in lines {
                    if tx.send(Ok(frame(l))).await.is_err() {
                        return;
                    }
                }
                if ended {
                    return;
                }
                // Wake on a new line, and now and then regardless.
                let _ = tokio::time::timeout(Duration::from_secs(15), rx.changed()).await;
            }
        });
        return (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            stream,
        )
            .into_response();
    }
    let text = tokio::fs::read_to_string(svc.log_path(&id))
        .await
        .unwrap_or_default();
    let body: Vec<u8> = if sse {
        text.lines()
            .flat_map(|l| format!("data: {l}\n\n").into_bytes())
            .collect()
    } else {
        text.into_bytes()
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// A body fed by a task through a channel.
fn async_stream<F, Fut>(f: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Body::from_stream(stream)
}
