//! The HTTP surface: routes, handlers, the upload path and the OpenAPI document.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Extension, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fruits_catalog::Lang;
use serde::{Deserialize, Serialize};
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::{OpenApi, ToSchema};

use crate::answer::{FruitFacts, FruitList, Identification, Kind, RankedKind};
use crate::error::{ApiError, ErrorBody};
use crate::identify::{self, Ask};
use crate::limits::{client_key, UPLOAD_GRACE};
use crate::AppState;

type Shared = State<Arc<AppState>>;

const PAGE: &str = include_str!("../web/index.html");

/// Every route of the service on one listener (no `--admin-listen`).
pub fn router(state: Arc<AppState>) -> Router {
    let all = consumer_routes(&state)
        .merge(operator_routes(&state))
        .route("/readyz", get(readyz));
    finish(all, state)
}

/// What the public listener serves beside an admin listener: no metrics,
/// no reload, and a readiness answer that says only ready or draining.
pub fn public_router(state: Arc<AppState>) -> Router {
    let public = consumer_routes(&state).route("/readyz", get(readyz_public));
    finish(public, state)
}

/// What the admin listener serves: health, full readiness, metrics, reload.
pub fn admin_router(state: Arc<AppState>) -> Router {
    let admin = operator_routes(&state)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    finish(admin, state)
}

/// The page, the API for photos and facts, health and the OpenAPI document.
fn consumer_routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    let limited = Router::new()
        .route("/v1/identify", post(identify_photo))
        .route("/v1/fruits", get(list_fruits))
        .route("/v1/fruits/{label}", get(one_fruit))
        .route_layer(from_fn_with_state(state.clone(), rate_limit));
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
        .merge(limited)
}

/// What tells or changes the service's internals: metrics and reload.
fn operator_routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    let limited = Router::new()
        .route("/v1/admin/reload", post(reload))
        .route_layer(from_fn_with_state(state.clone(), rate_limit));
    Router::new().route("/metrics", get(metrics)).merge(limited)
}

/// Fallbacks, and the layers every request goes through.
fn finish(routes: Router<Arc<AppState>>, state: Arc<AppState>) -> Router {
    routes
        .fallback(|| async { ApiError::not_found("no such page") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed here",
            )
        })
        .layer(from_fn_with_state(state.clone(), observe))
        .layer(from_fn_with_state(state.clone(), identify_client))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("internal error").into_response()
        }))
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Fruits!",
        description = "Photo of a fruit in, the fruit and what to know about it out. Photos are never stored or logged."
    ),
    paths(identify_photo, list_fruits, one_fruit, reload, healthz, readyz, metrics),
    components(schemas(
        ErrorBody,
        Identification,
        Kind,
        RankedKind,
        FruitFacts,
        FruitList,
        Ready,
        Reloaded,
        UploadForm,
        PhotoBytes
    ))
)]
struct ApiDoc;

/// The OpenAPI document of this service, generated from the code.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
}

/// Times every request out, counts it, and logs it (never its body).
async fn observe(State(s): Shared, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = request.method().clone();
    let start = Instant::now();
    let response = match tokio::time::timeout(s.limits.request_timeout, next.run(request)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("the request took over {:?}", s.limits.request_timeout),
        )
        .into_response(),
    };
    let status = response.status().as_u16();
    s.metrics.request(&route, status);
    if let Some(code) = response.extensions().get::<ErrorCode>() {
        s.metrics.error(code.0);
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    tracing::debug!(%method, route, status, ms = format!("{ms:.1}"), "request");
    response
}

/// The error code of an error response, for the metrics.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// Whom a request counts against (see [`client_key`]): its address, or its
/// IPv6 /64, or what a trusted proxy says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client(pub IpAddr);

async fn identify_client(State(s): Shared, mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let forwarded = request.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok());
    let client = Client(client_key(peer, forwarded, &s.trusted_proxies));
    request.extensions_mut().insert(client);
    next.run(request).await
}

async fn rate_limit(State(s): Shared, Extension(client): Extension<Client>, request: Request, next: Next) -> Response {
    if let Err(wait) = s.rate.check(client.0, Instant::now()) {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests: slow down",
        )
        .retry_after(wait)
        .into_response();
    }
    next.run(request).await
}

async fn page() -> Response {
    let mut response = Html(PAGE).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' blob: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct IdentifyQuery {
    /// `en` or `fr`; else the `Accept-Language` header; else `en`.
    lang: Option<String>,
    /// How many ranked predictions (1 to 20, default 5).
    top: Option<usize>,
    /// Look at parts of the photo too (default true): the answer is their
    /// mean with the whole, and several fruits become `regions`.
    regions: Option<bool>,
}

/// A multipart upload.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The photo: JPEG, PNG or WebP.
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
}

/// A raw image body.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct PhotoBytes(#[allow(dead_code)] Vec<u8>);

/// Names the fruits in a photo.
#[utoipa::path(
    post,
    path = "/v1/identify",
    params(IdentifyQuery),
    request_body(
        description = "The photo, as the raw body with its image content type, or as the multipart field `image`.",
        content(
            (PhotoBytes = "image/jpeg"),
            (PhotoBytes = "image/png"),
            (PhotoBytes = "image/webp"),
            (UploadForm = "multipart/form-data")
        )
    ),
    responses(
        (status = 200, description = "What the photo shows", body = Identification),
        (status = 400, description = "Empty body, bad multipart or bad query", body = ErrorBody),
        (status = 408, description = "The upload came too slowly (`upload_too_slow`)", body = ErrorBody),
        (status = 413, description = "Upload over the body limit", body = ErrorBody),
        (status = 415, description = "Not an image content type", body = ErrorBody),
        (status = 422, description = "Not an image, corrupt or truncated, or over the pixel limit", body = ErrorBody),
        (status = 429, description = "Over the per-client rate limit", body = ErrorBody),
        (status = 503, description = "Busy or timed out", body = ErrorBody),
    )
)]
async fn identify_photo(
    State(s): Shared,
    Extension(client): Extension<Client>,
    query: Result<Query<IdentifyQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Identification>, ApiError> {
    let ask = ask_of(query, &headers, &s)?;
    // Taken first, before the photo counts as in progress and before its
    // upload is read: a reload from here on does not change the model this
    // request is answered with.
    let model = s.model.current();
    let _in_flight = InFlight::enter(&s, client)?;
    let bytes = read_upload(&headers, body, s.limits.body_bytes, s.limits.min_upload_rate).await?;
    let worker = s.workers.clone().acquire_owned().await.map_err(|_| busy())?;
    let start = Instant::now();
    let catalog = s.catalog;
    let answer = tokio::task::spawn_blocking(move || {
        let _worker = worker;
        identify::identify(&model, catalog, &bytes, &ask)
    })
    .await
    .map_err(|_| ApiError::internal("identification failed"))??;
    s.metrics.identified(start.elapsed());
    Ok(Json(answer))
}

fn ask_of(
    query: Result<Query<IdentifyQuery>, QueryRejection>,
    headers: &HeaderMap,
    s: &AppState,
) -> Result<Ask, ApiError> {
    let Query(q) = query?;
    let top = q.top.unwrap_or(5);
    if !(1..=20).contains(&top) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "top must be between 1 and 20",
        ));
    }
    Ok(Ask {
        lang: lang_of(q.lang.as_deref(), headers)?,
        top,
        regions: q.regions.unwrap_or(true),
        localise: true,
        max_pixels: s.limits.pixels,
    })
}

fn lang_of(query: Option<&str>, headers: &HeaderMap) -> Result<Lang, ApiError> {
    match query {
        Some(l) => {
            Lang::parse(l).ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", "lang must be en or fr"))
        }
        None => Ok(headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .and_then(Lang::from_accept_language)
            .unwrap_or_default()),
    }
}

fn busy() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        "too many photos in progress: retry shortly",
    )
    .retry_after(1)
}

/// A place among the photos in progress, one of its client's, given back on drop.
struct InFlight<'a> {
    state: &'a AppState,
    client: Client,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl<'a> InFlight<'a> {
    fn enter(state: &'a AppState, client: Client) -> Result<Self, ApiError> {
        let permit = state.in_flight.try_acquire().map_err(|_| busy())?;
        if !state.places.take(client.0) {
            return Err(busy());
        }
        state.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(Self {
            state,
            client,
            _permit: permit,
        })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.state.places.give_back(self.client.0);
        self.state.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The photo's bytes from a raw image body or the multipart field `image`,
/// refusing other content types, anything over `limit` bytes, and uploads
/// slower than `min_rate` bytes per second on average (after [`UPLOAD_GRACE`]).
pub async fn read_upload(headers: &HeaderMap, body: Body, limit: usize, min_rate: f64) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::body_too_large(limit));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let multipart = mime == "multipart/form-data";
    if !multipart && !mime.starts_with("image/") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the photo as an image/jpeg, image/png or image/webp body, or as multipart/form-data field 'image'",
        ));
    }
    let bytes = read_body(body, limit, min_rate).await?;
    if multipart {
        multipart_image(content_type, bytes).await
    } else {
        Ok(bytes)
    }
}

/// The whole body, at most `limit` bytes, arriving at `min_rate` bytes per
/// second on average once [`UPLOAD_GRACE`] has passed: each wait for the
/// next chunk ends when the average would fall under it.
async fn read_body(body: Body, limit: usize, min_rate: f64) -> Result<Bytes, ApiError> {
    use futures::StreamExt;
    let start = tokio::time::Instant::now();
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    loop {
        let next = if min_rate > 0.0 {
            // At most a day: `Duration` cannot hold every quotient.
            let at_rate = Duration::from_secs_f64(((bytes.len() as f64 + 1.0) / min_rate).min(86_400.0));
            tokio::time::timeout_at(start + UPLOAD_GRACE.max(at_rate), stream.next()).await
        } else {
            Ok(stream.next().await)
        };
        let chunk = match next {
            Err(_) => return Err(too_slow(min_rate)),
            Ok(None) => return Ok(Bytes::from(bytes)),
            Ok(Some(Err(_))) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    "the upload was interrupted",
                ))
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        if bytes.len() + chunk.len() > limit {
            return Err(ApiError::body_too_large(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
}

fn too_slow(min_rate: f64) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "upload_too_slow",
        format!(
            "the upload came slower than {:.0} KiB/s: send it again on a better connection",
            min_rate / 1024.0
        ),
    )
}

async fn multipart_image(content_type: &str, bytes: Bytes) -> Result<Bytes, ApiError> {
    let bad = |e: multer::Error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_multipart",
            format!("bad multipart body: {e}"),
        )
    };
    let boundary = multer::parse_boundary(content_type).map_err(bad)?;
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(bytes) });
    let mut form = multer::Multipart::new(stream, boundary);
    while let Some(field) = form.next_field().await.map_err(bad)? {
        if field.name() == Some("image") {
            return field.bytes().await.map_err(bad);
        }
    }
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        "missing_image_field",
        "the multipart body has no field named 'image'",
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LangQuery {
    /// `en` or `fr`; else the `Accept-Language` header; else `en`.
    lang: Option<String>,
}

/// The catalogue: facts about every class.
#[utoipa::path(get, path = "/v1/fruits", params(LangQuery),
    responses((status = 200, body = FruitList), (status = 400, body = ErrorBody)))]
async fn list_fruits(
    State(s): Shared,
    query: Result<Query<LangQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<FruitList>, ApiError> {
    let lang = lang_of(query?.0.lang.as_deref(), &headers)?;
    let mut fruits: Vec<FruitFacts> = s.catalog.all().map(|f| FruitFacts::new(f, lang)).collect();
    fruits.sort_by(|a, b| a.label.cmp(&b.label));
    Ok(Json(FruitList { fruits }))
}

/// Facts about one class, by its label (the training folder name).
#[utoipa::path(get, path = "/v1/fruits/{label}", params(("label" = String, Path, description = "e.g. `Apple Braeburn 1`"), LangQuery),
    responses((status = 200, body = FruitFacts), (status = 404, body = ErrorBody)))]
async fn one_fruit(
    State(s): Shared,
    Path(label): Path<String>,
    query: Result<Query<LangQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<FruitFacts>, ApiError> {
    let lang = lang_of(query?.0.lang.as_deref(), &headers)?;
    let fruit = s.catalog.get(&label).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_fruit",
            format!("no fruit is labelled '{label}'"),
        )
    })?;
    Ok(Json(FruitFacts::new(fruit, lang)))
}

/// The answer of a successful reload.
#[derive(Debug, Serialize, ToSchema)]
pub struct Reloaded {
    pub model: String,
    pub previous: String,
}

/// Reloads the model bundle from where it was first loaded; requests in
/// flight finish on the old model. Needs `Authorization: Bearer $FRUITS_ADMIN_TOKEN`.
#[utoipa::path(post, path = "/v1/admin/reload",
    responses((status = 200, body = Reloaded), (status = 401, body = ErrorBody),
        (status = 404, description = "No admin token configured", body = ErrorBody),
        (status = 503, description = "The new model failed to load; the old one keeps answering", body = ErrorBody)))]
async fn reload(State(s): Shared, headers: HeaderMap) -> Result<Json<Reloaded>, ApiError> {
    let Some(token) = &s.admin_token else {
        return Err(ApiError::not_found(
            "the admin endpoint is off: set FRUITS_ADMIN_TOKEN to turn it on",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same(given.as_bytes(), token.as_bytes()) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is needed",
        ));
    }
    let previous = s.model.current().id.clone();
    let model = s
        .reload()
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "reload_failed", e))?;
    Ok(Json(Reloaded { model, previous }))
}

/// Compares secrets in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "Up")))]
async fn healthz() -> Json<HashMap<&'static str, &'static str>> {
    Json(HashMap::from([("status", "ok")]))
}

/// Whether to send traffic here.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    pub status: String,
    pub model: String,
    /// The bundle's data digest: what the model learned from.
    pub data: String,
    pub classes: usize,
    pub threshold: f32,
    /// `calibrated` (on the held-out split), `configured` or `default`.
    pub threshold_source: String,
}

/// Ready when a model is loaded and the server is not shutting down.
#[utoipa::path(get, path = "/readyz", responses((status = 200, body = Ready), (status = 503, body = Ready)))]
async fn readyz(State(s): Shared) -> Response {
    let model = s.model.current();
    let draining = s.draining.load(Ordering::Relaxed);
    let ready = Ready {
        status: if draining { "draining" } else { "ready" }.into(),
        model: model.id.clone(),
        data: model.data.clone(),
        classes: model.classes(),
        threshold: model.threshold,
        threshold_source: model.threshold_source.into(),
    };
    let status = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(ready)).into_response()
}

/// Readiness on the public listener when an admin listener is configured:
/// ready or draining, nothing about the model or the service's state.
async fn readyz_public(State(s): Shared) -> Response {
    let draining = s.draining.load(Ordering::Relaxed);
    let (status, text) = if draining {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::OK, "ready")
    };
    (status, Json(HashMap::from([("status", text)]))).into_response()
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(s): Shared) -> Response {
    let model = s.model.current();
    let loaded = model
        .loaded_at
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let text = s.metrics.render(&model.id, model.classes(), loaded);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}
