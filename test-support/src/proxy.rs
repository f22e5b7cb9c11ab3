//! A fault-injecting HTTP/1.1 reverse proxy for registry tests.
//!
//! [`FaultProxy::start`] listens on a free loopback port and forwards every
//! request to an upstream `http://127.0.0.1:PORT` (a test registry), streaming
//! bodies both ways (a 50 MB blob is never buffered). Tests add [`Rule`]s to
//! break chosen requests: reset the connection (TCP RST), answer a status
//! (500/502/503, 429 with `Retry-After`) without forwarding, or delay the
//! request. Every request is recorded (method, path, status, body bytes each
//! way) so a test can count blob GETs or prove that nothing was uploaded.
//!
//! Absolute `Location` headers that point at the upstream are rewritten to
//! the proxy, so upload sessions keep going through it.
//!
//! The proxy runs on its own small tokio runtime, so it works the same from
//! sync tests (e.g. ones that shell out to skopeo) and async ones.
//!
//! ```no_run
//! use ftl_test_support::proxy::{FaultProxy, Rule};
//! # fn main() -> anyhow::Result<()> {
//! let proxy = FaultProxy::start("http://127.0.0.1:5000")?;
//! proxy.add_rule(Rule::status(503).method("PUT").path_contains("/blobs/uploads/").nth(1));
//! // ... point the client at proxy.url() ...
//! let blob_gets = proxy.count("GET", "/blobs/sha256:");
//! let uploaded = proxy.request_body_bytes();
//! # let _ = (blob_gets, uploaded); Ok(()) }
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use regex::Regex;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// What to do to a matching request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Close the client connection with a TCP RST, without answering and
    /// without forwarding.
    Reset,
    /// Answer `status` without forwarding (the request body is read and
    /// discarded first), with `Retry-After: secs` if given.
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Wait this long, then forward as usual.
    Delay(Duration),
    /// Forward, but after this many bytes of the response body reset the
    /// connection (a download cut short; the client saw the full
    /// `Content-Length` announced).
    TruncateResponse(u64),
}

/// How a rule matches the request path (path and query, e.g.
/// `/v2/app/blobs/uploads/UUID?digest=sha256:...`).
#[derive(Debug, Clone)]
pub enum PathMatch {
    Any,
    Contains(String),
    Regex(Regex),
}

/// Which of the matching requests a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Every matching request.
    Always,
    /// Only the Nth matching request (1-based).
    Nth(usize),
    /// The first N matching requests.
    FirstN(usize),
}

/// A fault and the requests it applies to. Build with [`Rule::reset`],
/// [`Rule::status`], [`Rule::retry_after`] or [`Rule::delay`], then narrow with
/// [`Rule::method`], [`Rule::path_contains`] / [`Rule::path_regex`] and
/// [`Rule::nth`] / [`Rule::first`]. By default a rule applies to every
/// request.
#[derive(Debug, Clone)]
pub struct Rule {
    pub method: Option<Method>,
    pub path: PathMatch,
    pub when: When,
    pub fault: Fault,
}

impl Rule {
    pub fn new(fault: Fault) -> Self {
        Self {
            method: None,
            path: PathMatch::Any,
            when: When::Always,
            fault,
        }
    }
    /// Reset the connection.
    pub fn reset() -> Self {
        Self::new(Fault::Reset)
    }
    /// Answer this status.
    pub fn status(status: u16) -> Self {
        Self::new(Fault::Status {
            status,
            retry_after: None,
        })
    }
    /// Answer `status` (typically 429 or 503) with `Retry-After: secs`.
    pub fn retry_after(status: u16, secs: u64) -> Self {
        Self::new(Fault::Status {
            status,
            retry_after: Some(secs),
        })
    }
    /// Delay, then forward.
    pub fn delay(delay: Duration) -> Self {
        Self::new(Fault::Delay(delay))
    }
    /// Forward, then reset the connection after `bytes` of response body.
    pub fn truncate_response(bytes: u64) -> Self {
        Self::new(Fault::TruncateResponse(bytes))
    }
    /// Only requests with this method (`"GET"`, `"PUT"`, ...).
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(Method::from_bytes(method.as_bytes()).expect("valid HTTP method"));
        self
    }
    /// Only requests whose path-and-query contains `needle`.
    pub fn path_contains(mut self, needle: &str) -> Self {
        self.path = PathMatch::Contains(needle.to_string());
        self
    }
    /// Only requests whose path-and-query matches `regex` (panics if invalid).
    pub fn path_regex(mut self, regex: &str) -> Self {
        self.path = PathMatch::Regex(Regex::new(regex).expect("valid regex"));
        self
    }
    /// Only the Nth matching request (1-based).
    pub fn nth(mut self, n: usize) -> Self {
        assert!(n >= 1, "nth is 1-based");
        self.when = When::Nth(n);
        self
    }
    /// The first N matching requests.
    pub fn first(mut self, n: usize) -> Self {
        self.when = When::FirstN(n);
        self
    }
    /// Every matching request (the default).
    pub fn always(mut self) -> Self {
        self.when = When::Always;
        self
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        match &self.path {
            PathMatch::Any => true,
            PathMatch::Contains(needle) => path.contains(needle.as_str()),
            PathMatch::Regex(re) => re.is_match(path),
        }
    }
}

/// Handle of a rule added with [`FaultProxy::add_rule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleId(usize);

struct RuleState {
    rule: Rule,
    matched: usize,
    fired: usize,
    active: bool,
}

/// One request as the proxy saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query, as sent by the client.
    pub path: String,
    /// Status sent to the client; `None` for a reset (or while in flight).
    pub status: Option<u16>,
    /// The fault applied, if any: `"reset"`, `"status"`, `"delay"`,
    /// `"truncate"`, or
    /// `"upstream-error"` when the upstream could not be reached (answered 502).
    pub fault: Option<String>,
    /// Bytes of request body received from the client so far.
    pub request_body_bytes: u64,
    /// Bytes of response body sent to the client so far.
    pub response_body_bytes: u64,
}

struct RecordCell {
    method: String,
    path: String,
    status: Mutex<Option<u16>>,
    fault: Mutex<Option<String>>,
    request_body_bytes: Arc<AtomicU64>,
    response_body_bytes: Arc<AtomicU64>,
}

impl RecordCell {
    fn snapshot(&self) -> RecordedRequest {
        RecordedRequest {
            method: self.method.clone(),
            path: self.path.clone(),
            status: *self.status.lock().unwrap(),
            fault: self.fault.lock().unwrap().clone(),
            request_body_bytes: self.request_body_bytes.load(Ordering::SeqCst),
            response_body_bytes: self.response_body_bytes.load(Ordering::SeqCst),
        }
    }
}

struct Shared {
    upstream: Authority,
    proxy_authority: String,
    rules: Mutex<Vec<RuleState>>,
    records: Mutex<Vec<Arc<RecordCell>>>,
    client: OnceLock<Client<HttpConnector, ProxyBody>>,
}

/// The running proxy. Stops (and drops its connections) when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .finish()
    }
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:<free port>` in front of `upstream`
    /// (`http://HOST:PORT` or `HOST:PORT`; plain HTTP only).
    pub fn start(upstream: &str) -> Result<Self> {
        let authority = parse_upstream(upstream)?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .context("binding the fault proxy to a loopback port")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: authority,
            proxy_authority: addr.to_string(),
            rules: Mutex::new(Vec::new()),
            records: Mutex::new(Vec::new()),
            client: OnceLock::new(),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ftl-fault-proxy")
            .enable_all()
            .build()
            .context("starting the fault proxy's runtime")?;
        let accept_shared = shared.clone();
        runtime.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("fault proxy: {e}");
                    return;
                }
            };
            accept_loop(listener, accept_shared).await;
        });
        Ok(Self {
            addr,
            shared,
            runtime: Some(runtime),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT` (what goes in an image reference).
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The upstream `HOST:PORT`.
    pub fn upstream(&self) -> String {
        self.shared.upstream.to_string()
    }

    /// Adds a rule. Rules are checked in the order added; every rule that
    /// matches a request counts it, and the first one due to fire applies.
    pub fn add_rule(&self, rule: Rule) -> RuleId {
        let mut rules = self.shared.rules.lock().unwrap();
        rules.push(RuleState {
            rule,
            matched: 0,
            fired: 0,
            active: true,
        });
        RuleId(rules.len() - 1)
    }

    /// How many times the rule's fault was applied.
    pub fn fired(&self, id: RuleId) -> usize {
        self.shared.rules.lock().unwrap()[id.0].fired
    }

    /// Disables a rule (it stops counting and firing).
    pub fn remove_rule(&self, id: RuleId) {
        self.shared.rules.lock().unwrap()[id.0].active = false;
    }

    /// Disables every rule.
    pub fn clear_rules(&self) {
        for r in self.shared.rules.lock().unwrap().iter_mut() {
            r.active = false;
        }
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .records
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.snapshot())
            .collect()
    }

    /// Forgets the recorded requests (rules stay).
    pub fn clear(&self) {
        self.shared.records.lock().unwrap().clear();
    }

    /// Requests with `method` (any if empty) whose path contains `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| (method.is_empty() || r.method == method) && r.path.contains(path_contains))
            .count()
    }

    /// Blob downloads: GETs of `/v2/.../blobs/sha256:...`.
    pub fn blob_gets(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == "GET" && is_blob_path(&r.path))
            .count()
    }

    /// Total request-body bytes received from clients (uploads).
    pub fn request_body_bytes(&self) -> u64 {
        self.requests().iter().map(|r| r.request_body_bytes).sum()
    }

    /// Request-body bytes sent to blob upload sessions
    /// (`/v2/.../blobs/uploads/...`): layer and config bytes pushed, not
    /// counting manifests.
    pub fn blob_upload_bytes(&self) -> u64 {
        self.requests()
            .iter()
            .filter(|r| r.path.starts_with("/v2/") && r.path.contains("/blobs/uploads/"))
            .map(|r| r.request_body_bytes)
            .sum()
    }

    /// Total response-body bytes sent to clients (downloads).
    pub fn response_body_bytes(&self) -> u64 {
        self.requests().iter().map(|r| r.response_body_bytes).sum()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Does not block, so dropping inside an async test is fine.
            rt.shutdown_background();
        }
    }
}

fn is_blob_path(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    path.starts_with("/v2/") && path.contains("/blobs/sha256:")
}

fn parse_upstream(upstream: &str) -> Result<Authority> {
    let rest = if let Some(rest) = upstream.strip_prefix("http://") {
        rest
    } else if upstream.contains("://") {
        bail!("fault proxy upstream '{upstream}': only plain http:// is supported");
    } else {
        upstream
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') {
        bail!("fault proxy upstream '{upstream}': give scheme://host:port without a path");
    }
    rest.parse::<Authority>()
        .with_context(|| format!("fault proxy upstream '{upstream}' is not host:port"))
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    // Connection tasks live in this set: when the runtime shuts down the
    // accept task is dropped and so are they.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("fault proxy accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let fd = stream.as_raw_fd();
        let shared = shared.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req| handle(shared.clone(), fd, req));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
        while conns.try_join_next().is_some() {}
    }
}

impl Shared {
    fn client(&self) -> &Client<HttpConnector, ProxyBody> {
        self.client.get_or_init(|| {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(5))
                .build(connector)
        })
    }

    /// Counts the request against every matching active rule; returns the
    /// fault of the first rule due to fire.
    fn pick_fault(&self, method: &Method, path: &str) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap();
        let mut chosen = None;
        for state in rules.iter_mut().filter(|s| s.active) {
            if !state.rule.matches(method, path) {
                continue;
            }
            state.matched += 1;
            let due = match state.rule.when {
                When::Always => true,
                When::Nth(n) => state.matched == n,
                When::FirstN(n) => state.matched <= n,
            };
            if due && chosen.is_none() {
                state.fired += 1;
                chosen = Some(state.rule.fault.clone());
            }
        }
        chosen
    }
}

async fn handle(
    shared: Arc<Shared>,
    fd: RawFd,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, BoxError> {
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let record = Arc::new(RecordCell {
        method: method.to_string(),
        path: path.clone(),
        status: Mutex::new(None),
        fault: Mutex::new(None),
        request_body_bytes: Arc::new(AtomicU64::new(0)),
        response_body_bytes: Arc::new(AtomicU64::new(0)),
    });
    shared.records.lock().unwrap().push(record.clone());

    let mut truncate_at = None;
    match shared.pick_fault(&method, &path) {
        Some(Fault::Reset) => {
            *record.fault.lock().unwrap() = Some("reset".into());
            set_zero_linger(fd);
            // An error from the service makes hyper drop the connection;
            // with SO_LINGER 0 the close is an RST.
            return Err("fault proxy: injected connection reset".into());
        }
        Some(Fault::Status {
            status,
            retry_after,
        }) => {
            *record.fault.lock().unwrap() = Some("status".into());
            // Read the body so the client sees an answer, not a broken pipe.
            let counter = record.request_body_bytes.clone();
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => {
                        if let Some(data) = frame.data_ref() {
                            counter.fetch_add(data.len() as u64, Ordering::SeqCst);
                        }
                    }
                    Err(_) => break,
                }
            }
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let text = format!(
                "{{\"errors\":[{{\"code\":\"UNAVAILABLE\",\"message\":\"fault proxy: injected {}\"}}]}}",
                status.as_u16()
            );
            let mut resp = Response::new(full(text));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Some(secs) = retry_after {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            *record.status.lock().unwrap() = Some(status.as_u16());
            return Ok(count_response(resp, &record));
        }
        Some(Fault::Delay(delay)) => {
            *record.fault.lock().unwrap() = Some("delay".into());
            tokio::time::sleep(delay).await;
        }
        Some(Fault::TruncateResponse(bytes)) => {
            *record.fault.lock().unwrap() = Some("truncate".into());
            truncate_at = Some(bytes);
        }
        None => {}
    }

    let resp = match forward(&shared, req, &record).await {
        Ok(resp) => resp,
        Err(e) => {
            *record.fault.lock().unwrap() = Some("upstream-error".into());
            let mut resp = Response::new(full(format!(
                "fault proxy: upstream {} failed: {e}",
                shared.upstream
            )));
            *resp.status_mut() = StatusCode::BAD_GATEWAY;
            resp
        }
    };
    *record.status.lock().unwrap() = Some(resp.status().as_u16());
    let resp = match truncate_at {
        Some(limit) => resp.map(|inner| {
            Truncating {
                inner,
                remaining: limit,
                fd,
            }
            .boxed()
        }),
        None => resp,
    };
    Ok(count_response(resp, &record))
}

/// A response body cut after `remaining` bytes, ending in an error that makes
/// hyper drop the connection (with an RST).
struct Truncating {
    inner: ProxyBody,
    remaining: u64,
    fd: RawFd,
}

impl hyper::body::Body for Truncating {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        if self.remaining == 0 {
            set_zero_linger(self.fd);
            return Poll::Ready(Some(Err("fault proxy: injected truncation".into())));
        }
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) => {
                    if data.len() as u64 > self.remaining {
                        data.truncate(self.remaining as usize);
                    }
                    self.remaining -= data.len() as u64;
                    Poll::Ready(Some(Ok(hyper::body::Frame::data(data))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            Poll::Ready(None) => {
                // The body was shorter than the limit: cut it at its end.
                self.remaining = 0;
                set_zero_linger(self.fd);
                Poll::Ready(Some(Err("fault proxy: injected truncation".into())))
            }
            other => other,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

async fn forward(
    shared: &Shared,
    req: Request<Incoming>,
    record: &RecordCell,
) -> Result<Response<ProxyBody>, BoxError> {
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| "/".parse().unwrap());
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(shared.upstream.clone())
        .path_and_query(pq)
        .build()?;
    strip_hop_by_hop(&mut parts.headers);
    // The proxy's server side already answered any `100-continue`.
    parts.headers.remove(header::EXPECT);
    parts.headers.insert(
        header::HOST,
        HeaderValue::from_str(shared.upstream.as_str())?,
    );
    let counter = record.request_body_bytes.clone();
    let body = body
        .map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                counter.fetch_add(data.len() as u64, Ordering::SeqCst);
            }
            frame
        })
        .map_err(|e| -> BoxError { Box::new(e) })
        .boxed();
    let resp = shared
        .client()
        .request(Request::from_parts(parts, body))
        .await?;
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(location) = parts.headers.get(header::LOCATION) {
        if let Some(rewritten) = rewrite_location(location, shared) {
            parts.headers.insert(header::LOCATION, rewritten);
        }
    }
    let body = body.map_err(|e| -> BoxError { Box::new(e) }).boxed();
    Ok(Response::from_parts(parts, body))
}

/// `http://UPSTREAM/...` -> `http://PROXY/...`; relative locations and other
/// hosts are left alone.
fn rewrite_location(location: &HeaderValue, shared: &Shared) -> Option<HeaderValue> {
    let text = location.to_str().ok()?;
    let rest = text.strip_prefix("http://")?;
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !authority.eq_ignore_ascii_case(shared.upstream.as_str()) {
        return None;
    }
    HeaderValue::from_str(&format!("http://{}{tail}", shared.proxy_authority)).ok()
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
}

fn full(text: impl Into<Bytes>) -> ProxyBody {
    Full::new(text.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn count_response(resp: Response<ProxyBody>, record: &RecordCell) -> Response<ProxyBody> {
    let counter = record.response_body_bytes.clone();
    resp.map(|body| {
        body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                counter.fetch_add(data.len() as u64, Ordering::SeqCst);
            }
            frame
        })
        .boxed()
    })
}

/// SO_LINGER {on, 0}: the next close of this socket sends RST.
fn set_zero_linger(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: fd is the connection's socket, alive while its request is
    // being served; setsockopt only reads `linger`.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;
    use tokio::net::TcpListener;

    /// A tiny upstream: GET /hello, PUT|POST|PATCH /echo (answers the body
    /// length), POST /v2/x/blobs/uploads/ (202 with an absolute Location),
    /// HEAD /blob (Content-Length 1234), GET /big/N (N bytes, streamed).
    async fn upstream() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| async move {
                        let path = req.uri().path().to_string();
                        let method = req.method().clone();
                        let resp: Response<ProxyBody> = match (method, path.as_str()) {
                            (Method::GET, "/hello") => Response::new(full("hello")),
                            (_, "/echo") => {
                                let body = req.into_body().collect().await?.to_bytes();
                                Response::new(full(body.len().to_string()))
                            }
                            (Method::POST, "/v2/x/blobs/uploads/") => Response::builder()
                                .status(202)
                                .header(
                                    "location",
                                    format!("http://{addr}/v2/x/blobs/uploads/abc?_state=1"),
                                )
                                .header("docker-upload-uuid", "abc")
                                .body(full(""))
                                .unwrap(),
                            (Method::HEAD, "/blob") => Response::builder()
                                .header("content-length", "1234")
                                .body(full(""))
                                .unwrap(),
                            (Method::GET, p) if p.starts_with("/big/") => {
                                let n: usize = p[5..].parse().unwrap();
                                let body = BigBody {
                                    remaining: n,
                                    chunk: Bytes::from(vec![7u8; 1 << 16]),
                                };
                                Response::builder()
                                    .header("content-length", n.to_string())
                                    .body(BodyExt::boxed(body))
                                    .unwrap()
                            }
                            _ => Response::builder().status(404).body(full("")).unwrap(),
                        };
                        Ok::<_, hyper::Error>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }

    /// N bytes in 64 KiB frames, produced as they are polled.
    struct BigBody {
        remaining: usize,
        chunk: Bytes,
    }
    impl hyper::body::Body for BigBody {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
            if self.remaining == 0 {
                return std::task::Poll::Ready(None);
            }
            let len = self.remaining.min(self.chunk.len());
            self.remaining -= len;
            let data = self.chunk.slice(..len);
            std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(data))))
        }
    }

    fn client() -> Client<HttpConnector, ProxyBody> {
        Client::builder(TokioExecutor::new()).build(HttpConnector::new())
    }

    async fn send(
        method: &str,
        url: &str,
        body: impl Into<Bytes>,
    ) -> Result<(u16, HeaderMap, Bytes), BoxError> {
        let req = Request::builder()
            .method(method)
            .uri(url)
            .body(full(body))
            .unwrap();
        let resp = client().request(req).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, headers, body))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forwards_and_records() {
        let up = upstream().await;
        let proxy = FaultProxy::start(&format!("http://{up}")).unwrap();
        assert_eq!(proxy.upstream(), up.to_string());
        let (status, _, body) = send("GET", &format!("{}/hello", proxy.url()), "")
            .await
            .unwrap();
        assert_eq!((status, &body[..]), (200, &b"hello"[..]));
        let (status, _, body) = send("PUT", &format!("{}/echo?x=1", proxy.url()), vec![1u8; 1000])
            .await
            .unwrap();
        assert_eq!((status, &body[..]), (200, &b"1000"[..]));
        let reqs = proxy.requests();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].method, "GET");
        assert_eq!(reqs[0].path, "/hello");
        assert_eq!(reqs[0].status, Some(200));
        assert_eq!(reqs[0].response_body_bytes, 5);
        assert_eq!(reqs[1].path, "/echo?x=1");
        assert_eq!(reqs[1].request_body_bytes, 1000);
        assert_eq!(proxy.request_body_bytes(), 1000);
        assert_eq!(proxy.count("PUT", "/echo"), 1);
        assert_eq!(proxy.count("", "/"), 2);
        proxy.clear();
        assert!(proxy.requests().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn head_keeps_content_length_and_location_is_rewritten() {
        let up = upstream().await;
        let proxy = FaultProxy::start(&up.to_string()).unwrap();
        let (status, headers, body) = send("HEAD", &format!("{}/blob", proxy.url()), "")
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(headers["content-length"], "1234");
        assert!(body.is_empty());
        let (status, headers, _) =
            send("POST", &format!("{}/v2/x/blobs/uploads/", proxy.url()), "")
                .await
                .unwrap();
        assert_eq!(status, 202);
        assert_eq!(
            headers["location"],
            format!("http://{}/v2/x/blobs/uploads/abc?_state=1", proxy.host()).as_str()
        );
        assert_eq!(headers["docker-upload-uuid"], "abc");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn injects_503_once_then_forwards() {
        let up = upstream().await;
        let proxy = FaultProxy::start(&format!("http://{up}")).unwrap();
        let rule = proxy.add_rule(
            Rule::retry_after(503, 2)
                .method("GET")
                .path_contains("/hello")
                .nth(1),
        );
        let url = format!("{}/hello", proxy.url());
        let (status, headers, _) = send("GET", &url, "").await.unwrap();
        assert_eq!(status, 503);
        assert_eq!(headers["retry-after"], "2");
        let (status, _, body) = send("GET", &url, "").await.unwrap();
        assert_eq!((status, &body[..]), (200, &b"hello"[..]));
        // A PUT does not match the rule's method.
        let (status, _, _) = send("PUT", &format!("{}/echo", proxy.url()), "x")
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(proxy.fired(rule), 1);
        let statuses: Vec<_> = proxy.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec![Some(503), Some(200), Some(200)]);
        assert_eq!(proxy.requests()[0].fault.as_deref(), Some("status"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn first_n_and_regex_and_429_with_body_read() {
        let up = upstream().await;
        let proxy = FaultProxy::start(&format!("http://{up}")).unwrap();
        let rule = proxy.add_rule(Rule::retry_after(429, 1).path_regex(r"^/ech[o]$").first(2));
        let url = format!("{}/echo", proxy.url());
        for _ in 0..2 {
            let (status, headers, _) = send("PATCH", &url, vec![0u8; 300]).await.unwrap();
            assert_eq!(status, 429);
            assert_eq!(headers["retry-after"], "1");
        }
        let (status, _, body) = send("PATCH", &url, vec![0u8; 300]).await.unwrap();
        assert_eq!((status, &body[..]), (200, &b"300"[..]));
        assert_eq!(proxy.fired(rule), 2);
        // The refused bodies were read (and counted) too.
        assert_eq!(proxy.request_body_bytes(), 900);
        proxy.remove_rule(rule);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resets_the_connection() {
        let up = upstream().await;
        let proxy = FaultProxy::start(&format!("http://{up}")).unwrap();
        proxy.add_rule(Rule::reset().path_contains("/hello").nth(1));
        let addr = proxy.addr();
        let err = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).map(|_| buf)
        })
        .await
        .unwrap()
        .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
        // The hyper client sees an error too, on the next matching request
        // only if the rule still applies: it was nth(1), so this one passes.
        let (status, _, _) = send("GET", &format!("{}/hello", proxy.url()), "")
            .await
            .unwrap();
        assert_eq!(status, 200);
        let reqs = proxy.requests();
        assert_eq!(reqs[0].status, None);
        assert_eq!(reqs[0].fault.as_deref(), Some("reset"));
        assert_eq!(reqs[1].status, Some(200));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reset_is_an_error_for_a_client() {
        let up = upstream().await;
        let proxy = FaultProxy::start(&format!("http://{up}")).unwrap();
        proxy.add_rule(Rule::reset().method("PUT"));
        assert!(
            send("PUT", &format!("{}/echo", proxy.url()), vec![0u8; 100_000])
                .await
                .is_err()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn truncates_a_download() {
        let up = upstream().await;
        let proxy = FaultProxy::start(&format!("http://{up}")).unwrap();
        let rule = proxy.add_rule(
            Rule::truncate_response(100_000)
                .path_contains("/big/")
                .nth(1),
        );
        let url = format!("{}/big/1000000", proxy.url());
        assert!(send("GET", &url, "").await.is_err());
        let (status, _, body) = send("GET", &url, "").await.unwrap();
        assert_eq!((status, body.len()), (200, 1_000_000));
        assert_eq!(proxy.fired(rule), 1);
        let reqs = proxy.requests();
        assert_eq!(reqs[0].fault.as_deref(), Some("truncate"));
        assert_eq!(reqs[0].response_body_bytes, 100_000);
        assert_eq!(reqs[1].response_body_bytes, 1_000_000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delays() {
        let up = upstream().await;
        let proxy = FaultProxy::start(&format!("http://{up}")).unwrap();
        proxy.add_rule(
            Rule::delay(Duration::from_millis(400))
                .path_contains("/hello")
                .first(1),
        );
        let url = format!("{}/hello", proxy.url());
        let t = Instant::now();
        let (status, _, _) = send("GET", &url, "").await.unwrap();
        assert_eq!(status, 200);
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
        let t = Instant::now();
        send("GET", &url, "").await.unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(proxy.requests()[0].fault.as_deref(), Some("delay"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_50_mb_both_ways() {
        let up = upstream().await;
        let proxy = FaultProxy::start(&format!("http://{up}")).unwrap();
        let n = 50 << 20;
        let (status, _, body) = send("GET", &format!("{}/big/{n}", proxy.url()), "")
            .await
            .unwrap();
        assert_eq!((status, body.len()), (200, n));
        let (status, _, body) = send("PUT", &format!("{}/echo", proxy.url()), vec![1u8; n])
            .await
            .unwrap();
        assert_eq!((status, body), (200, Bytes::from(n.to_string())));
        assert_eq!(
            proxy.response_body_bytes(),
            n as u64 + n.to_string().len() as u64
        );
        assert_eq!(proxy.request_body_bytes(), n as u64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn upstream_down_is_502() {
        // A port with nothing listening.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let proxy = FaultProxy::start(&format!("http://127.0.0.1:{port}")).unwrap();
        let (status, _, _) = send("GET", &format!("{}/v2/", proxy.url()), "")
            .await
            .unwrap();
        assert_eq!(status, 502);
        assert_eq!(proxy.requests()[0].fault.as_deref(), Some("upstream-error"));
    }

    #[test]
    fn upstream_parsing() {
        assert!(parse_upstream("http://127.0.0.1:5000").is_ok());
        assert!(parse_upstream("127.0.0.1:5000/").is_ok());
        assert!(parse_upstream("https://127.0.0.1:5000").is_err());
        assert!(parse_upstream("http://127.0.0.1:5000/v2").is_err());
        assert!(is_blob_path("/v2/a/b/blobs/sha256:abcd"));
        assert!(!is_blob_path("/v2/a/blobs/uploads/x?digest=sha256:ab"));
    }

    /// Debian's docker-registry on a free loopback port, killed on drop.
    struct TestRegistry {
        child: Child,
        host: String,
        _dir: tempfile::TempDir,
    }

    impl TestRegistry {
        fn start() -> Option<Self> {
            let bin =
                crate::base_images::require_tool("docker-registry", "docker-registry").ok()?;
            let dir = tempfile::tempdir().unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                    dir.path().join("data").display()
                ),
            )
            .unwrap();
            let child = Command::new(bin)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let reg = Self {
                child,
                host: format!("127.0.0.1:{port}"),
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(mut s) = std::net::TcpStream::connect(&reg.host) {
                    let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                    let mut buf = String::new();
                    let _ = s.read_to_string(&mut buf);
                    if buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200") {
                        return Some(reg);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            panic!("docker-registry did not come up on {}", reg.host);
        }
    }

    impl Drop for TestRegistry {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// skopeo pushes the python base image through the proxy to a real
    /// registry: a 503 on the first upload PUT fails the push, then the
    /// push passes (the upload URLs the registry hands out are rewritten to
    /// the proxy), and a second push uploads 0 bytes and downloads no blob.
    #[test]
    fn skopeo_push_through_proxy_to_docker_registry() {
        let cached = crate::base_images::base_image_dir("python")
            .unwrap()
            .join("index.json")
            .is_file();
        if !cached && unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: no cached python base image and not root");
            return;
        }
        if crate::base_images::require_tool("skopeo", "skopeo").is_err() {
            eprintln!("skipping: skopeo not installed (apt-get install skopeo)");
            return;
        }
        let Some(registry) = TestRegistry::start() else {
            eprintln!("skipping: docker-registry not installed (apt-get install docker-registry)");
            return;
        };
        let proxy = FaultProxy::start(&registry.host).unwrap();
        let flaky = proxy.add_rule(
            Rule::status(503)
                .method("PUT")
                .path_contains("/blobs/uploads/")
                .nth(1),
        );
        // skopeo does not retry a 503 on the upload's closing PUT: the push
        // fails, and the failure is the injected one.
        let err = crate::base_images::push_base_image("python", &proxy.host(), "base/python")
            .unwrap_err()
            .to_string();
        assert!(err.contains("503"), "{err}");
        assert_eq!(proxy.fired(flaky), 1);
        assert!(proxy
            .requests()
            .iter()
            .any(|r| r.method == "PUT" && r.status == Some(503)));

        proxy.remove_rule(flaky);
        proxy.clear();
        let reference =
            crate::base_images::push_base_image("python", &proxy.host(), "base/python").unwrap();
        assert!(reference.starts_with(&format!("{}/base/python@sha256:", proxy.host())));
        let reqs = proxy.requests();
        // Every request went through the proxy, including the upload
        // session URLs the registry handed out.
        assert!(reqs
            .iter()
            .any(|r| r.method == "PATCH" || r.method == "PUT"));
        assert!(
            proxy.blob_upload_bytes() > 10 << 20,
            "uploaded {}",
            proxy.blob_upload_bytes()
        );
        assert_eq!(proxy.blob_gets(), 0);

        proxy.clear();
        let again =
            crate::base_images::push_base_image("python", &proxy.host(), "base/python").unwrap();
        assert_eq!(again, reference);
        assert_eq!(proxy.blob_upload_bytes(), 0, "{:#?}", proxy.requests());
        // Only the manifest went up again.
        assert_eq!(proxy.count("PUT", "/manifests/"), 1);
        assert_eq!(
            proxy.request_body_bytes(),
            proxy
                .requests()
                .iter()
                .filter(|r| r.path.contains("/manifests/"))
                .map(|r| r.request_body_bytes)
                .sum::<u64>()
        );
        assert_eq!(proxy.blob_gets(), 0);
        assert!(proxy.count("HEAD", "/blobs/sha256:") >= 1);
    }
}
