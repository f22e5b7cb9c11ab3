//! The HTTP API (axum).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::service::{valid_id, CancelError, Service, SubmitError};
use crate::spec::BuildSpec;

/// The header that carries the build options when the body is the bare
/// archive.
pub const OPTIONS_HEADER: &str = "ftl-options";

pub(crate) fn router(service: Arc<Service>) -> Router {
    let limit = usize::try_from(service.config.max_upload).unwrap_or(usize::MAX);
    let api = Router::new()
        .route("/v1/builds", post(submit).get(list))
        .route("/v1/builds/{id}", get(status).post(action))
        .route("/v1/builds/{id}/log", get(log))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit))
        .route_layer(middleware::from_fn_with_state(service.clone(), auth));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(api)
        .with_state(service)
}

fn error(status: StatusCode, kind: &str, message: impl std::fmt::Display) -> Response {
    (
        status,
        Json(json!({ "error": kind, "message": message.to_string() })),
    )
        .into_response()
}

async fn auth(State(svc): State<Arc<Service>>, req: Request, next: Next) -> Response {
    let Some(tokens) = &svc.config.tokens else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = given.is_some_and(|g| {
        tokens
            .iter()
            .any(|t| constant_time_eq(t.as_bytes(), g.as_bytes()))
    });
    if !ok {
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
        return r;
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

/// `POST /v1/builds`: the archive as the body with options in the
/// `Ftl-Options` header, or `multipart/form-data` with parts `options`
/// (JSON) and `source` (the archive).
async fn submit(State(svc): State<Arc<Service>>, req: Request) -> Response {
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let (options, data) = if is_multipart {
        match read_multipart(req).await {
            Ok(x) => x,
            Err(r) => return r,
        }
    } else {
        let options = req
            .headers()
            .get(OPTIONS_HEADER)
            .map(|v| v.as_bytes().to_vec());
        let data = match Bytes::from_request(req, &()).await {
            Ok(d) => d,
            Err(rejection) => return too_large_or(rejection.into_response()),
        };
        (options, data)
    };
    let Some(options) = options else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing-options",
            "send the build options as JSON in the Ftl-Options header or an `options` multipart part",
        );
    };
    let spec = match BuildSpec::parse(&options) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad-options", e),
    };
    if data.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "empty-upload",
            "the upload is empty: send a .tar.gz or .zip of the source",
        );
    }
    match svc.submit(spec, data).await {
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
        Err(SubmitError::Full(n)) => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "queue-full",
                SubmitError::Full(n),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
        Err(SubmitError::ShuttingDown) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting-down",
            SubmitError::ShuttingDown,
        ),
        Err(SubmitError::Archive(e)) if e.is_client_error() => {
            error(StatusCode::BAD_REQUEST, e.kind(), e)
        }
        Err(SubmitError::Spec(e)) => error(StatusCode::BAD_REQUEST, "bad-options", e),
        Err(e) => {
            tracing::error!(error = %e, "cannot accept a build");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e)
        }
    }
}

fn too_large_or(r: Response) -> Response {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "the upload is larger than the server's --max-upload",
        )
    } else {
        error(r.status(), "bad-request", "cannot read the request body")
    }
}

async fn read_multipart(req: Request) -> Result<(Option<Vec<u8>>, Bytes), Response> {
    let mut mp = Multipart::from_request(req, &())
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad-multipart", e.body_text()))?;
    let mut options = None;
    let mut data = Bytes::new();
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return Err(if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    too_large_or(e.into_response())
                } else {
                    error(StatusCode::BAD_REQUEST, "bad-multipart", e.body_text())
                })
            }
        };
        let name = field.name().unwrap_or("").to_string();
        let bytes = field.bytes().await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large_or(e.into_response())
            } else {
                error(StatusCode::BAD_REQUEST, "bad-multipart", e.body_text())
            }
        })?;
        match name.as_str() {
            "options" => options = Some(bytes.to_vec()),
            "source" => data = bytes,
            other => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "bad-multipart",
                    format!("unknown part `{other}`: send `options` and `source`"),
                ))
            }
        }
    }
    Ok((options, data))
}

async fn list(State(svc): State<Arc<Service>>) -> Response {
    match svc.store.list(100) {
        Ok(records) => Json(json!({ "builds": records })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    }
}

async fn status(State(svc): State<Arc<Service>>, Path(id): Path<String>) -> Response {
    if !valid_id(&id) {
        return not_found(&id);
    }
    match svc.get(&id) {
        Ok(Some(rec)) => Json(rec).into_response(),
        Ok(None) => not_found(&id),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
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
async fn action(State(svc): State<Arc<Service>>, Path(id_action): Path<String>) -> Response {
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
    match svc.cancel(id) {
        Ok(was) => (
            StatusCode::ACCEPTED,
            Json(json!({ "id": id, "cancelling": true, "was": was })),
        )
            .into_response(),
        Err(e @ CancelError::NotFound(_)) => error(StatusCode::NOT_FOUND, "not-found", e),
        Err(e @ CancelError::Ended(..)) => error(StatusCode::CONFLICT, "ended", e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    }
}

/// `GET /v1/builds/{id}/log`: `text/plain`, chunked, one line per event,
/// streamed while the build runs and closed when it ends.
async fn log(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !valid_id(&id) {
        return not_found(&id);
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
    match svc.get(&id) {
        Ok(Some(_)) => {}
        Ok(None) => return not_found(&id),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
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
