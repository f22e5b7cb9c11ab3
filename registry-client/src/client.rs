//! The transport: every registry call is a [`Call`] value, and
//! [`Client::send`] alone owns authentication, retries and error mapping.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use http::{Method, StatusCode};
use serde::Deserialize;
use url::Url;

use crate::auth::{basic_header, Challenge, CredentialStore, Token, TokenCache, TokenResponse};
use crate::error::{is_transient_status, Error};
use crate::reference::Reference;
use crate::secret::{Credential, Secret};
use crate::settings::ClientSettings;

/// The longest `Retry-After` honoured; longer requests wait this long.
const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// A Registry HTTP API V2 client. Cheap to clone; clones share connections,
/// credentials and the token cache.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    pub(crate) settings: ClientSettings,
    creds: CredentialStore,
    tokens: TokenCache,
    schemes: Mutex<HashMap<String, Challenge>>,
    requests: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// Counters for one operation (a push), next to the client-wide ones.
#[derive(Default, Debug)]
pub(crate) struct Stats {
    pub(crate) requests: AtomicU64,
    pub(crate) bytes_uploaded: AtomicU64,
}

/// The scope a call needs on a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Pull,
    PullPush,
    Delete,
}

pub(crate) fn scope(repository: &str, access: Access) -> String {
    match access {
        Access::Pull => format!("repository:{repository}:pull"),
        Access::PullPush => format!("repository:{repository}:pull,push"),
        Access::Delete => format!("repository:{repository}:delete"),
    }
}

/// One registry call, as a value.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    pub(crate) method: Method,
    pub(crate) url: Url,
    /// The API host the call goes to (and credentials are looked up for).
    pub(crate) registry: String,
    pub(crate) accept: &'static [&'static str],
    pub(crate) headers: HeaderMap,
    pub(crate) body: Option<Bytes>,
    /// Token scopes, e.g. `repository:a/b:pull,push`.
    pub(crate) scopes: Vec<String>,
    /// Statuses that are success for this call (404 included when the call
    /// treats absence as an answer).
    pub(crate) expect: &'static [StatusCode],
    /// What the call is for, in errors and logs.
    pub(crate) description: String,
    /// Sent once: no retries, no re-authentication (cleanup calls).
    pub(crate) best_effort: bool,
}

impl Call {
    pub(crate) fn new(
        method: Method,
        url: Url,
        reference: &Reference,
        expect: &'static [StatusCode],
        description: String,
    ) -> Self {
        Self {
            method,
            url,
            registry: reference.api_host().to_owned(),
            accept: &[],
            headers: HeaderMap::new(),
            body: None,
            scopes: Vec::new(),
            expect,
            description,
            best_effort: false,
        }
    }

    pub(crate) fn scope(mut self, repository: &str, access: Access) -> Self {
        self.scopes.push(scope(repository, access));
        self
    }

    pub(crate) fn accept(mut self, accept: &'static [&'static str]) -> Self {
        self.accept = accept;
        self
    }

    pub(crate) fn header(mut self, name: http::HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }

    pub(crate) fn body(mut self, body: Bytes) -> Self {
        self.body = Some(body);
        self
    }
}

enum Outcome {
    Done(reqwest::Response),
    /// Authentication was (re)learned; sending again may succeed.
    Reauth(Error),
    Fail(Error),
    /// A transient status with a `Retry-After` delay.
    RetryAfter(Error, std::time::Duration),
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl Client {
    /// Builds a client: TLS with the system roots plus the extra CA files.
    pub fn new(settings: ClientSettings) -> Result<Self, Error> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(true)
            .user_agent(settings.user_agent.clone())
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(std::time::Duration::from_secs(60));
        for (host, ip) in &settings.resolve {
            builder = builder.resolve(host, std::net::SocketAddr::new(*ip, 0));
        }
        for path in &settings.extra_ca_files {
            let pem = std::fs::read(path).map_err(|e| Error::CaFile {
                path: path.clone(),
                source: Box::new(e),
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| Error::CaFile {
                path: path.clone(),
                source: Box::new(e),
            })?;
            if certs.is_empty() {
                return Err(Error::CaFile {
                    path: path.clone(),
                    source: "the file holds no PEM certificate".into(),
                });
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(Error::ClientSetup)?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                creds: CredentialStore::new(
                    settings.credentials.clone(),
                    settings.docker_config_dir.clone(),
                ),
                settings,
                tokens: TokenCache::default(),
                schemes: Mutex::new(HashMap::new()),
                requests: AtomicU64::new(0),
            }),
        })
    }

    /// The settings the client was built with.
    pub fn settings(&self) -> &ClientSettings {
        &self.inner.settings
    }

    /// HTTP requests sent so far by this client (token requests included).
    pub fn request_count(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Whether `registry` (`host[:port]`) is spoken to over plain HTTP.
    pub fn is_insecure(&self, registry: &str) -> bool {
        let host = host_of(registry);
        if host == "localhost" {
            return true;
        }
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            if ip.is_loopback() {
                return true;
            }
        }
        self.inner
            .settings
            .insecure_registries
            .iter()
            .any(|r| r == registry || r == host)
    }

    /// `http(s)://host/v2/`.
    pub(crate) fn base_url(&self, reference: &Reference) -> Url {
        let host = reference.api_host();
        let scheme = if self.is_insecure(host) {
            "http"
        } else {
            "https"
        };
        Url::parse(&format!("{scheme}://{host}/v2/")).unwrap_or_else(|_| {
            // Reference parsing guarantees a valid host; keep a safe fallback.
            Url::parse("https://invalid.invalid/v2/").expect("static url")
        })
    }

    /// `base/v2/<repository>/<rest>`.
    pub(crate) fn repo_url(&self, reference: &Reference, rest: &str) -> Url {
        let base = self.base_url(reference);
        base.join(&format!("{}/{rest}", reference.repository()))
            .unwrap_or(base)
    }

    /// Sends a call with a replayable body: authenticates, retries transient
    /// failures with backoff, re-authenticates once on 401, maps errors.
    pub(crate) async fn send(
        &self,
        call: &Call,
        stats: &Stats,
    ) -> Result<reqwest::Response, Error> {
        let retry = &self.inner.settings.retry;
        let mut attempt = 0u32;
        let mut reauthed = false;
        loop {
            attempt += 1;
            let body = call.body.clone().map(reqwest::Body::from);
            let err = match self.attempt(call, body, stats).await {
                Outcome::Done(resp) => return Ok(resp),
                Outcome::Reauth(err) | Outcome::Fail(err) | Outcome::RetryAfter(err, _)
                    if call.best_effort =>
                {
                    return Err(err)
                }
                Outcome::Reauth(_) if !reauthed => {
                    reauthed = true;
                    attempt -= 1;
                    tracing::debug!(description = %call.description, "retrying with new credentials");
                    continue;
                }
                Outcome::RetryAfter(err, after) => {
                    if attempt < retry.max_attempts.max(1) {
                        let wait = retry.backoff(attempt).max(after.min(MAX_RETRY_AFTER));
                        tracing::info!(description = %call.description, attempt, ?wait, error = %err, "registry asked to retry later");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    err
                }
                Outcome::Reauth(err) | Outcome::Fail(err) => err,
            };
            if err.is_transient() && attempt < retry.max_attempts.max(1) {
                let wait = retry.backoff(attempt);
                tracing::info!(description = %call.description, attempt, ?wait, error = %err, "transient registry error, retrying");
                tokio::time::sleep(wait).await;
                continue;
            }
            return Err(err);
        }
    }

    /// Sends a call once with a one-shot body. On a 401 the challenge is
    /// learned and stale tokens dropped, so the caller can reopen the body
    /// and send again.
    pub(crate) async fn send_once(
        &self,
        call: &Call,
        body: reqwest::Body,
        stats: &Stats,
    ) -> Result<reqwest::Response, Error> {
        match self.attempt(call, Some(body), stats).await {
            Outcome::Done(resp) => Ok(resp),
            Outcome::Reauth(err) | Outcome::Fail(err) | Outcome::RetryAfter(err, _) => Err(err),
        }
    }

    async fn attempt(&self, call: &Call, body: Option<reqwest::Body>, stats: &Stats) -> Outcome {
        let auth = match self.authorization(call, stats).await {
            Ok(a) => a,
            Err(e) => return Outcome::Fail(e),
        };
        let mut rb = self
            .inner
            .http
            .request(call.method.clone(), call.url.clone())
            .headers(call.headers.clone());
        if !call.accept.is_empty() {
            rb = rb.header(ACCEPT, call.accept.join(", "));
        }
        if let Some(a) = &auth {
            if let Ok(mut v) = HeaderValue::from_str(a.expose()) {
                v.set_sensitive(true);
                rb = rb.header(AUTHORIZATION, v);
            }
        }
        // Time the answer unless sending the body is part of the wait.
        let timed = body
            .as_ref()
            .is_none_or(|b| b.as_bytes().is_some_and(|b| b.len() <= 1 << 20));
        if let Some(b) = body {
            rb = rb.body(b);
        }
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        stats.requests.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(method = %call.method, url = %call.url, description = %call.description, "registry request");
        let after = self.inner.settings.response_timeout;
        let sent = if timed {
            match tokio::time::timeout(after, rb.send()).await {
                Ok(sent) => sent,
                Err(_) => {
                    return Outcome::Fail(Error::Timeout {
                        description: call.description.clone(),
                        method: call.method.to_string(),
                        url: shown_url(&call.url),
                        after,
                    })
                }
            }
        } else {
            rb.send().await
        };
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return Outcome::Fail(self.transport_error(call, e)),
        };
        let status = resp.status();
        tracing::debug!(method = %call.method, url = %call.url, %status, "registry response");
        if status == StatusCode::UNAUTHORIZED && !call.expect.contains(&status) {
            return self.on_unauthorized(call, &resp, auth.as_ref()).await;
        }
        if call.expect.contains(&status) {
            return Outcome::Done(resp);
        }
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(std::time::Duration::from_secs);
        let err = self.status_error(call, resp).await;
        match retry_after {
            Some(after) if is_transient_status(status) => Outcome::RetryAfter(err, after),
            _ => Outcome::Fail(err),
        }
    }

    /// The `Authorization` header value for a call, from what we learned of
    /// the registry's scheme.
    async fn authorization(&self, call: &Call, stats: &Stats) -> Result<Option<Secret>, Error> {
        let scheme = self
            .inner
            .schemes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&call.registry)
            .cloned();
        match scheme {
            None => Ok(None),
            Some(Challenge::Basic) => match self.inner.creds.get(&call.registry).await? {
                Credential::Basic { username, password } => {
                    Ok(Some(Secret::new(basic_header(&username, &password))))
                }
                _ => Ok(None),
            },
            Some(Challenge::Bearer { realm, service }) => {
                let scope = call.scopes.join(" ");
                let slot = self.inner.tokens.slot(&call.registry, &scope);
                let mut guard = slot.lock().await;
                if let Some(t) = guard.as_ref() {
                    if t.expires > std::time::Instant::now() {
                        return Ok(Some(Secret::new(format!("Bearer {}", t.value.expose()))));
                    }
                }
                let token = self
                    .fetch_token(
                        &call.registry,
                        &realm,
                        service.as_deref(),
                        &call.scopes,
                        stats,
                    )
                    .await?;
                let header = Secret::new(format!("Bearer {}", token.value.expose()));
                *guard = Some(token);
                Ok(Some(header))
            }
        }
    }

    async fn on_unauthorized(
        &self,
        call: &Call,
        resp: &reqwest::Response,
        sent: Option<&Secret>,
    ) -> Outcome {
        let header = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let cred = match self.inner.creds.get(&call.registry).await {
            Ok(c) => c,
            Err(e) => return Outcome::Fail(e),
        };
        let unauthorized = |hint: String| Error::Unauthorized {
            description: call.description.clone(),
            registry: call.registry.clone(),
            url: shown_url(&call.url),
            hint,
        };
        let hint = if cred.is_anonymous() {
            format!(
                "no credentials were found for {}; run `docker login {}` or pass credentials",
                call.registry, call.registry
            )
        } else {
            format!("the credentials for {} were rejected or lack access; check the user name, password and repository permissions", call.registry)
        };
        let known = self
            .inner
            .schemes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&call.registry)
            .cloned();
        // A 401 without a challenge (some proxies strip it) falls back to the
        // scheme the registry already announced.
        let parsed = if header.is_empty() {
            known
        } else {
            Challenge::parse(&header)
        };
        let Some(challenge) = parsed else {
            if header.is_empty() {
                return Outcome::Fail(unauthorized(hint));
            }
            return Outcome::Fail(Error::UnsupportedChallenge {
                registry: call.registry.clone(),
                challenge: header,
            });
        };
        let previous = self
            .inner
            .schemes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(call.registry.clone(), challenge.clone());
        match challenge {
            Challenge::Basic => {
                let already_sent = sent.is_some() && previous == Some(Challenge::Basic);
                if cred.is_anonymous() || already_sent {
                    Outcome::Fail(unauthorized(hint))
                } else {
                    Outcome::Reauth(unauthorized(hint))
                }
            }
            Challenge::Bearer { .. } => {
                // Drop the token we sent (expired or revoked), unless another
                // request already replaced it.
                let slot = self
                    .inner
                    .tokens
                    .slot(&call.registry, &call.scopes.join(" "));
                let mut guard = slot.lock().await;
                if let (Some(t), Some(sent)) = (guard.as_ref(), sent) {
                    if sent.expose().ends_with(t.value.expose()) {
                        *guard = None;
                    }
                }
                Outcome::Reauth(unauthorized(hint))
            }
        }
    }

    async fn fetch_token(
        &self,
        registry: &str,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        stats: &Stats,
    ) -> Result<Token, Error> {
        let cred = self.inner.creds.get(registry).await?;
        let scope_text = scopes.join(" ");
        let mut url = Url::parse(realm).map_err(|e| Error::InvalidResponse {
            what: "the token realm in the authentication challenge".into(),
            url: registry.to_owned(),
            reason: e.to_string(),
        })?;
        let retry = &self.inner.settings.retry;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let rb = match &cred {
                Credential::IdentityToken(refresh) => {
                    let mut form = url::form_urlencoded::Serializer::new(String::new());
                    form.append_pair("grant_type", "refresh_token");
                    form.append_pair("client_id", "ftl");
                    form.append_pair("refresh_token", refresh.expose());
                    if let Some(s) = service {
                        form.append_pair("service", s);
                    }
                    if !scope_text.is_empty() {
                        form.append_pair("scope", &scope_text);
                    }
                    self.inner
                        .http
                        .post(url.clone())
                        .header(
                            http::header::CONTENT_TYPE,
                            "application/x-www-form-urlencoded",
                        )
                        .body(form.finish())
                }
                other => {
                    {
                        let mut q = url.query_pairs_mut();
                        q.clear();
                        if let Some(s) = service {
                            q.append_pair("service", s);
                        }
                        for s in scopes {
                            q.append_pair("scope", s);
                        }
                    }
                    let rb = self.inner.http.get(url.clone());
                    match other {
                        Credential::Basic { username, password } => {
                            let mut v = HeaderValue::from_str(&basic_header(username, password))
                                .unwrap_or_else(|_| HeaderValue::from_static(""));
                            v.set_sensitive(true);
                            rb.header(AUTHORIZATION, v)
                        }
                        _ => rb,
                    }
                }
            };
            self.inner.requests.fetch_add(1, Ordering::Relaxed);
            stats.requests.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%realm, scope = %scope_text, "fetching registry token");
            let description = format!("token for {scope_text}");
            let resp = match rb.send().await {
                Ok(r) => r,
                Err(e) => {
                    let err = self.transport_error_parts(&description, "GET", realm, e);
                    if err.is_transient() && attempt < retry.max_attempts {
                        tokio::time::sleep(retry.backoff(attempt)).await;
                        continue;
                    }
                    return Err(err);
                }
            };
            let status = resp.status();
            if status.is_success() {
                let body = resp
                    .bytes()
                    .await
                    .map_err(|e| self.transport_error_parts(&description, "GET", realm, e))?;
                let parsed: TokenResponse =
                    serde_json::from_slice(&body).map_err(|e| Error::InvalidResponse {
                        what: "token response".into(),
                        url: realm.to_owned(),
                        reason: e.to_string(),
                    })?;
                return parsed.into_token().ok_or_else(|| Error::InvalidResponse {
                    what: "token response".into(),
                    url: realm.to_owned(),
                    reason: "it holds no token".into(),
                });
            }
            if is_transient_status(status) && attempt < retry.max_attempts {
                tokio::time::sleep(retry.backoff(attempt)).await;
                continue;
            }
            let hint = if cred.is_anonymous() {
                format!("no credentials were found for {registry}; run `docker login {registry}` or pass credentials")
            } else {
                format!("check the credentials for {registry}")
            };
            return Err(Error::Token {
                realm: realm.to_owned(),
                status,
                scope: scope_text,
                hint,
            });
        }
    }

    fn transport_error(&self, call: &Call, e: reqwest::Error) -> Error {
        self.transport_error_parts(
            &call.description,
            call.method.as_str(),
            &shown_url(&call.url),
            e,
        )
    }

    fn transport_error_parts(
        &self,
        description: &str,
        method: &str,
        url: &str,
        e: reqwest::Error,
    ) -> Error {
        if is_tls_error(&e) {
            let host = Url::parse(url)
                .ok()
                .and_then(|u| {
                    u.host_str().map(|h| match u.port() {
                        Some(p) => format!("{h}:{p}"),
                        None => h.to_owned(),
                    })
                })
                .unwrap_or_else(|| url.to_owned());
            return Error::Tls {
                host,
                description: description.to_owned(),
                source: e.without_url(),
            };
        }
        Error::Transport {
            description: description.to_owned(),
            method: method.to_owned(),
            url: url.to_owned(),
            source: e.without_url(),
        }
    }

    pub(crate) async fn status_error(&self, call: &Call, resp: reqwest::Response) -> Error {
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        let mut message = registry_message(&body);
        if status == StatusCode::BAD_REQUEST
            && String::from_utf8_lossy(&body).contains("HTTP request to an HTTPS server")
        {
            message = ": the registry speaks HTTPS, but localhost, 127.0.0.0/8 and \
                       insecure registries are spoken to in plain HTTP; address it by a \
                       host name that resolves to it and trust its certificate"
                .to_owned();
        }
        let url = shown_url(&call.url);
        match status {
            StatusCode::NOT_FOUND => Error::NotFound {
                what: call.description.clone(),
                url,
                message,
            },
            StatusCode::FORBIDDEN => Error::Denied {
                description: call.description.clone(),
                registry: call.registry.clone(),
                url,
                message,
            },
            _ => Error::Status {
                description: call.description.clone(),
                method: call.method.to_string(),
                url,
                status,
                message,
            },
        }
    }
}

/// `": CODE: message; CODE2: message2"` from a registry error body, or "".
pub(crate) fn registry_message(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) if !b.errors.is_empty() => {
            let parts: Vec<String> = b
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.code, e.message).to_lowercase())
                .collect();
            format!(": {}", parts.join("; "))
        }
        _ => String::new(),
    }
}

/// A URL for messages: upload sessions' opaque `_state` parameter dropped.
pub(crate) fn shown_url(url: &Url) -> String {
    if !url.query_pairs().any(|(k, _)| k == "_state") {
        return url.to_string();
    }
    let mut shown = url.clone();
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "_state")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        shown.set_query(None);
    } else {
        shown.query_pairs_mut().clear().extend_pairs(kept);
    }
    shown.to_string()
}

fn host_of(registry: &str) -> &str {
    if registry.starts_with('[') {
        return registry
            .split(']')
            .next()
            .map(|h| &registry[..h.len() + 1])
            .unwrap_or(registry);
    }
    registry.split(':').next().unwrap_or(registry)
}

fn is_tls_error(e: &reqwest::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
            {
                return true;
            }
        }
        let text = err.to_string();
        if text.contains("certificate")
            || text.contains("InvalidCertificate")
            || text.contains("tls handshake")
        {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_hosts() {
        let c = Client::new(ClientSettings {
            insecure_registries: vec!["myreg.internal:5000".into(), "plain.example".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(c.is_insecure("localhost:5000"));
        assert!(c.is_insecure("localhost"));
        assert!(c.is_insecure("127.0.0.1:5000"));
        assert!(c.is_insecure("127.4.5.6"));
        assert!(c.is_insecure("[::1]:5000"));
        assert!(c.is_insecure("myreg.internal:5000"));
        assert!(c.is_insecure("plain.example:443"));
        assert!(!c.is_insecure("myreg.internal:6000"));
        assert!(!c.is_insecure("gcr.io"));
        assert!(!c.is_insecure("registry-1.docker.io"));
        let r = Reference::parse("localhost:5000/a/b:t").unwrap();
        assert_eq!(
            c.repo_url(&r, "manifests/t").as_str(),
            "http://localhost:5000/v2/a/b/manifests/t"
        );
        let r = Reference::parse("python").unwrap();
        assert_eq!(
            c.repo_url(&r, "blobs/uploads/").as_str(),
            "https://registry-1.docker.io/v2/library/python/blobs/uploads/"
        );
    }

    #[test]
    fn upload_state_is_not_shown() {
        let u = Url::parse("http://r:5000/v2/a/blobs/uploads/u1?_state=abc&digest=sha256%3A00")
            .unwrap();
        assert_eq!(
            shown_url(&u),
            "http://r:5000/v2/a/blobs/uploads/u1?digest=sha256%3A00"
        );
        let u = Url::parse("http://r:5000/v2/a/blobs/uploads/u1?_state=abc").unwrap();
        assert_eq!(shown_url(&u), "http://r:5000/v2/a/blobs/uploads/u1");
    }

    #[test]
    fn registry_messages() {
        assert_eq!(
            registry_message(
                br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#
            ),
            ": blob_unknown: blob unknown to registry"
        );
        assert_eq!(registry_message(b"<html>"), "");
    }
}
