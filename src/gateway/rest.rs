//! REST routes (`/api/v1/...`, `/healthz`, `/readyz`, `/metrics`) as warp filters.
//!
//! Media routes stream: an upload's body goes to the service as a [`ByteStream`] chunk by chunk,
//! and a download is served from the media store's stream; neither is ever buffered whole.
//!
//! Every handler returns `Result<T, Error>`; [`respond`] renders both arms, so the error
//! envelope, status and `Retry-After` come from one place. Rejections warp produces by itself
//! (unknown path, wrong method, oversized body) are rendered into the same envelope by
//! [`rejection`].

use super::PeerAddr;
use crate::address::Address;
use crate::error::{Error, ErrorBody, ErrorObject};
use crate::media::ByteStream;
use crate::service::{ChatService, Identity, MediaDownload, SendOutcome, SendRequest};
use crate::storage::HistoryPage;
use bytes::{Buf, Bytes};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

type Resp = BoxedFilter<(Response,)>;

/// Renders a handler's result: `status` and JSON on success, the error envelope otherwise.
fn respond<T: serde::Serialize>(status: StatusCode, result: Result<T, Error>) -> Response {
    match result {
        Ok(v) => warp::reply::with_status(warp::reply::json(&v), status).into_response(),
        Err(e) => error_response(&e),
    }
}

fn error_response(e: &Error) -> Response {
    if matches!(e, Error::Internal(_) | Error::Backend(_)) {
        tracing::error!(error = %e, code = e.code(), "request failed");
    }
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = warp::reply::with_status(warp::reply::json(&e.body()), status).into_response();
    if let Some(secs) = e.retry_after_secs()
        && let Ok(v) = http::HeaderValue::from_str(&secs.to_string())
    {
        resp.headers_mut().insert(http::header::RETRY_AFTER, v);
    }
    resp
}

/// Parses a JSON object body. serde would also accept a JSON array for a struct; the protocol
/// says objects, so anything else is refused.
fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, Error> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| Error::InvalidRequest(format!("invalid JSON body: {e}")))?;
    if !value.is_object() {
        return Err(Error::InvalidRequest("the request body must be a JSON object".into()));
    }
    serde_json::from_value(value).map_err(|e| Error::InvalidRequest(format!("invalid request body: {e}")))
}

fn parse_address(s: &str) -> Result<Address, Error> {
    s.parse()
}

/// Filters shared by the routes.
fn with_svc(svc: ChatService) -> impl Filter<Extract = (ChatService,), Error = Infallible> + Clone {
    warp::any().map(move || svc.clone())
}

fn bearer() -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone {
    warp::header::optional::<String>("authorization")
        .or(warp::any().map(|| None))
        .unify()
        .map(|h: Option<String>| {
            h.map(|v| match v.split_once(' ') {
                Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim().to_string(),
                _ => String::new(),
            })
        })
}

fn json_body(limit: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::body::content_length_limit(limit).and(warp::body::bytes())
}

async fn authed(svc: &ChatService, bearer: Option<String>) -> Result<Identity, Error> {
    svc.authenticate(bearer.as_deref()).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    message: String,
    signature: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchMe {
    display_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRoom {
    name: String,
    #[serde(default)]
    members: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddressBody {
    address: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostMessage {
    body: String,
    client_msg_id: String,
    #[serde(default)]
    deliver_at: Option<String>,
    #[serde(default)]
    media: Vec<String>,
}

/// `POST /api/v1/media?name=...`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    #[serde(default)]
    name: Option<String>,
}

/// warp's streamed reply wants a `Sync` stream; a [`ByteStream`] is only `Send`. The mutex is
/// never locked: `poll_next` has `&mut self` and uses `Mutex::get_mut`.
struct SyncStream(std::sync::Mutex<ByteStream>);

impl Stream for SyncStream {
    type Item = std::io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let inner = self.get_mut().0.get_mut().unwrap_or_else(|p| p.into_inner());
        inner.poll_next_unpin(cx)
    }
}

/// A request body as the service's [`ByteStream`], chunk by chunk.
fn byte_stream<S, B>(body: S) -> ByteStream
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf,
{
    body.map(|chunk| {
        chunk
            .map(|mut buf| buf.copy_to_bytes(buf.remaining()))
            .map_err(std::io::Error::other)
    })
    .boxed()
}

/// A download as a streamed 200 with the stored type and size. User-supplied bytes are served
/// as an attachment, never sniffed and sandboxed, so an uploaded HTML or SVG file cannot run
/// script in this origin.
fn media_response(download: MediaDownload) -> Response {
    let mut resp = warp::reply::stream(SyncStream(std::sync::Mutex::new(download.body))).into_response();
    let headers = resp.headers_mut();
    let content_type = http::HeaderValue::from_str(&download.meta.content_type)
        .unwrap_or_else(|_| http::HeaderValue::from_static("application/octet-stream"));
    headers.insert(http::header::CONTENT_TYPE, content_type);
    headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(download.size));
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        http::header::CONTENT_DISPOSITION,
        http::HeaderValue::from_static("attachment"),
    );
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("private, max-age=86400"),
    );
    resp
}

/// Parses `after_seq` / `before_seq` / `limit` with clear errors.
fn history_query(raw: &str) -> Result<(HistoryPage, Option<usize>), Error> {
    let mut after = None;
    let mut before = None;
    let mut limit = None;
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let num = |name: &str| {
            v.parse::<i64>()
                .map_err(|_| Error::InvalidRequest(format!("{name} must be an integer")))
        };
        match k {
            "after_seq" => after = Some(num("after_seq")?.max(0)),
            "before_seq" => before = Some(num("before_seq")?),
            "limit" => {
                let n = num("limit")?;
                if n < 1 {
                    return Err(Error::InvalidRequest("limit must be at least 1".into()));
                }
                limit = Some(usize::try_from(n).unwrap_or(usize::MAX));
            }
            _ => return Err(Error::InvalidRequest(format!("unknown query parameter `{k}`"))),
        }
    }
    let page = match (after, before) {
        (Some(_), Some(_)) => return Err(Error::InvalidRequest("give after_seq or before_seq, not both".into())),
        (Some(a), None) => HistoryPage::After(a),
        (None, Some(b)) => HistoryPage::Before(b),
        (None, None) => HistoryPage::Before(i64::MAX),
    };
    Ok((page, limit))
}

pub fn routes(svc: ChatService) -> BoxedFilter<(Response,)> {
    let body_limit = svc.config().limits.max_http_body_bytes as u64;
    let metrics_handle = crate::metrics::install();
    let api = warp::path("api").and(warp::path("v1"));
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();

    let healthz: Resp = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&json!({"status": "ok"})).into_response())
        .boxed();

    let readyz: Resp = warp::path!("readyz")
        .and(warp::get())
        .and(with_svc(svc.clone()))
        .then(|svc: ChatService| async move {
            let checks = svc.readiness().await;
            let ready = checks.iter().all(|(_, r)| r.is_ok());
            let backends: serde_json::Map<String, serde_json::Value> = checks
                .into_iter()
                .map(|(name, r)| (name.to_string(), json!(match r { Ok(()) => "ok".to_string(), Err(e) => e.code().to_string() })))
                .collect();
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            let body = if ready {
                json!({"status": "ready", "backends": backends})
            } else {
                json!({"status": "unavailable", "backends": backends, "error": {"code": "backend_unavailable", "message": "a backend is unreachable"}})
            };
            warp::reply::with_status(warp::reply::json(&body), status).into_response()
        })
        .boxed();

    let metrics: Resp = warp::path!("metrics")
        .and(warp::get())
        .and(with_svc(svc.clone()))
        .then(move |svc: ChatService| {
            let handle = metrics_handle.clone();
            async move {
                if let Ok((online, depth)) = svc.live_gauges().await {
                    metrics::gauge!("coolchat_online_users").set(online as f64);
                    metrics::gauge!("coolchat_queue_depth").set(depth as f64);
                }
                let text = crate::metrics::render(&handle);
                warp::reply::with_header(text, "content-type", "text/plain; version=0.0.4").into_response()
            }
        })
        .boxed();

    let nonce: Resp = api
        .and(warp::path!("auth" / "nonce"))
        .and(warp::get())
        .and(with_svc(svc.clone()))
        .and(warp::ext::optional::<PeerAddr>())
        .and(warp::header::optional::<String>("x-forwarded-for"))
        .then(
            |svc: ChatService, peer: Option<PeerAddr>, forwarded: Option<String>| async move {
                let key = peer
                    .map(|p| {
                        let trusted = &svc.config().server.trusted_proxies;
                        super::client_ip::client_ip(p.0.ip(), forwarded.as_deref(), trusted).to_string()
                    })
                    .unwrap_or_default();
                respond(StatusCode::OK, svc.issue_nonce(&key).await)
            },
        )
        .boxed();

    let verify: Resp = api
        .and(warp::path!("auth" / "verify"))
        .and(warp::post())
        .and(with_svc(svc.clone()))
        .and(json_body(body_limit))
        .then(|svc: ChatService, body: Bytes| async move {
            let result = async {
                let req: VerifyBody = parse_json(&body)?;
                svc.sign_in(&req.message, &req.signature).await
            }
            .await;
            respond(StatusCode::OK, result)
        })
        .boxed();

    let logout: Resp = api
        .and(warp::path!("auth" / "logout"))
        .and(warp::post())
        .and(with_svc(svc.clone()))
        .and(bearer())
        .then(|svc: ChatService, bearer: Option<String>| async move {
            let result = async {
                let who = authed(&svc, bearer).await?;
                svc.logout(&who).await
            }
            .await;
            match result {
                Ok(()) => StatusCode::NO_CONTENT.into_response(),
                Err(e) => error_response(&e),
            }
        })
        .boxed();

    let me_get: Resp = api
        .and(warp::path!("me"))
        .and(warp::get())
        .and(with_svc(svc.clone()))
        .and(bearer())
        .then(|svc: ChatService, bearer: Option<String>| async move {
            let result = async {
                let who = authed(&svc, bearer).await?;
                svc.user(who.address).await
            }
            .await;
            respond(StatusCode::OK, result)
        })
        .boxed();

    let me_patch: Resp = api
        .and(warp::path!("me"))
        .and(warp::patch())
        .and(with_svc(svc.clone()))
        .and(bearer())
        .and(json_body(body_limit))
        .then(|svc: ChatService, bearer: Option<String>, body: Bytes| async move {
            let result = async {
                let who = authed(&svc, bearer).await?;
                let req: PatchMe = parse_json(&body)?;
                svc.set_display_name(&who, req.display_name).await
            }
            .await;
            respond(StatusCode::OK, result)
        })
        .boxed();

    let user_get: Resp = api
        .and(warp::path!("users" / String))
        .and(warp::get())
        .and(with_svc(svc.clone()))
        .and(bearer())
        .then(|address: String, svc: ChatService, bearer: Option<String>| async move {
            let result = async {
                authed(&svc, bearer).await?;
                svc.user(parse_address(&address)?).await
            }
            .await;
            respond(StatusCode::OK, result)
        })
        .boxed();

    let rooms_create: Resp = api
        .and(warp::path!("rooms"))
        .and(warp::post())
        .and(with_svc(svc.clone()))
        .and(bearer())
        .and(json_body(body_limit))
        .then(|svc: ChatService, bearer: Option<String>, body: Bytes| async move {
            let result = async {
                let who = authed(&svc, bearer).await?;
                let req: CreateRoom = parse_json(&body)?;
                let members = req
                    .members
                    .iter()
                    .map(|m| parse_address(m))
                    .collect::<Result<Vec<_>, _>>()?;
                svc.create_room(&who, &req.name, &members).await
            }
            .await;
            respond(StatusCode::CREATED, result)
        })
        .boxed();

    let rooms_list: Resp = api
        .and(warp::path!("rooms"))
        .and(warp::get())
        .and(with_svc(svc.clone()))
        .and(bearer())
        .then(|svc: ChatService, bearer: Option<String>| async move {
            let result = async {
                let who = authed(&svc, bearer).await?;
                Ok(json!({"rooms": svc.rooms(&who).await?}))
            }
            .await;
            respond(StatusCode::OK, result)
        })
        .boxed();

    let room_get: Resp = api
        .and(warp::path!("rooms" / String))
        .and(warp::get())
        .and(with_svc(svc.clone()))
        .and(bearer())
        .then(|room_id: String, svc: ChatService, bearer: Option<String>| async move {
            let result = async {
                let who = authed(&svc, bearer).await?;
                svc.room(&who, &room_id).await
            }
            .await;
            respond(StatusCode::OK, result)
        })
        .boxed();

    let member_add: Resp = api
        .and(warp::path!("rooms" / String / "members"))
        .and(warp::post())
        .and(with_svc(svc.clone()))
        .and(bearer())
        .and(json_body(body_limit))
        .then(
            |room_id: String, svc: ChatService, bearer: Option<String>, body: Bytes| async move {
                let result = async {
                    let who = authed(&svc, bearer).await?;
                    let req: AddressBody = parse_json(&body)?;
                    svc.add_member(&who, &room_id, parse_address(&req.address)?).await
                }
                .await;
                respond(StatusCode::OK, result)
            },
        )
        .boxed();

    let member_remove: Resp = api
        .and(warp::path!("rooms" / String / "members" / String))
        .and(warp::delete())
        .and(with_svc(svc.clone()))
        .and(bearer())
        .then(
            |room_id: String, address: String, svc: ChatService, bearer: Option<String>| async move {
                let result = async {
                    let who = authed(&svc, bearer).await?;
                    svc.remove_member(&who, &room_id, parse_address(&address)?).await
                }
                .await;
                respond(StatusCode::OK, result)
            },
        )
        .boxed();

    let dm_open: Resp = api
        .and(warp::path!("dms"))
        .and(warp::post())
        .and(with_svc(svc.clone()))
        .and(bearer())
        .and(json_body(body_limit))
        .then(|svc: ChatService, bearer: Option<String>, body: Bytes| async move {
            let result = async {
                let who = authed(&svc, bearer).await?;
                let req: AddressBody = parse_json(&body)?;
                svc.open_dm(&who, parse_address(&req.address)?).await
            }
            .await;
            match result {
                Ok((room, true)) => respond(StatusCode::CREATED, Ok(room)),
                Ok((room, false)) => respond(StatusCode::OK, Ok(room)),
                Err(e) => error_response(&e),
            }
        })
        .boxed();

    let reads: Resp = api
        .and(warp::path!("rooms" / String / "reads"))
        .and(warp::get())
        .and(with_svc(svc.clone()))
        .and(bearer())
        .then(|room_id: String, svc: ChatService, bearer: Option<String>| async move {
            let result = async {
                let who = authed(&svc, bearer).await?;
                Ok(json!({ "reads": svc.read_markers(&who, &room_id).await? }))
            }
            .await;
            respond(StatusCode::OK, result)
        })
        .boxed();

    let history: Resp = api
        .and(warp::path!("rooms" / String / "messages"))
        .and(warp::get())
        .and(with_svc(svc.clone()))
        .and(bearer())
        .and(raw_query)
        .then(
            |room_id: String, svc: ChatService, bearer: Option<String>, query: String| async move {
                let result = async {
                    let who = authed(&svc, bearer).await?;
                    let (page, limit) = history_query(&query)?;
                    svc.history(&who, &room_id, page, limit).await
                }
                .await;
                respond(StatusCode::OK, result)
            },
        )
        .boxed();

    let post_message: Resp = api
        .and(warp::path!("rooms" / String / "messages"))
        .and(warp::post())
        .and(with_svc(svc.clone()))
        .and(bearer())
        .and(json_body(body_limit))
        .then(
            |room_id: String, svc: ChatService, bearer: Option<String>, body: Bytes| async move {
                let result = async {
                    let who = authed(&svc, bearer).await?;
                    let req: PostMessage = parse_json(&body)?;
                    svc.send(
                        &who,
                        SendRequest {
                            room_id,
                            body: req.body,
                            client_msg_id: req.client_msg_id,
                            deliver_at: req.deliver_at,
                            media: req.media,
                        },
                    )
                    .await
                }
                .await;
                match result {
                    Ok(SendOutcome::Sent { message, created: true }) => respond(StatusCode::CREATED, Ok(message)),
                    Ok(SendOutcome::Sent {
                        message,
                        created: false,
                    }) => respond(StatusCode::OK, Ok(message)),
                    Ok(SendOutcome::Scheduled { scheduled, .. }) => {
                        respond(StatusCode::ACCEPTED, Ok(json!({"scheduled": scheduled})))
                    }
                    Err(e) => error_response(&e),
                }
            },
        )
        .boxed();

    // The upload's own limit replaces `max_http_body_bytes`; a missing Content-Length is 411 and
    // an announced length over the limit 413, both before any byte is read.
    let max_upload = svc.config().media.max_upload_bytes;
    let media_upload: Resp = api
        .and(warp::path!("media"))
        .and(warp::post())
        .and(with_svc(svc.clone()))
        .and(bearer())
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::query::<UploadQuery>())
        .and(warp::body::content_length_limit(max_upload))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream().map(byte_stream))
        .then(
            |svc: ChatService,
             bearer: Option<String>,
             content_type: Option<String>,
             query: UploadQuery,
             length: Option<u64>,
             body: ByteStream| async move {
                let result = async {
                    let who = authed(&svc, bearer).await?;
                    let content_type = content_type
                        .ok_or_else(|| Error::InvalidRequest("a Content-Type header is required".into()))?;
                    svc.upload_media(&who, &content_type, query.name, body, length).await
                }
                .await;
                respond(StatusCode::CREATED, result)
            },
        )
        .boxed();

    let media_get: Resp = api
        .and(warp::path!("media" / String))
        .and(warp::get())
        .and(with_svc(svc.clone()))
        .and(bearer())
        .then(|id: String, svc: ChatService, bearer: Option<String>| async move {
            let result = async {
                let who = authed(&svc, bearer).await?;
                svc.download_media(&who, &id).await
            }
            .await;
            match result {
                Ok(download) => media_response(download),
                Err(e) => error_response(&e),
            }
        })
        .boxed();

    healthz
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(nonce)
        .unify()
        .or(verify)
        .unify()
        .or(logout)
        .unify()
        .or(me_get)
        .unify()
        .or(me_patch)
        .unify()
        .or(user_get)
        .unify()
        .or(rooms_create)
        .unify()
        .or(rooms_list)
        .unify()
        .or(room_get)
        .unify()
        .or(member_add)
        .unify()
        .or(member_remove)
        .unify()
        .or(dm_open)
        .unify()
        .or(reads)
        .unify()
        .or(history)
        .unify()
        .or(post_message)
        .unify()
        .or(media_upload)
        .unify()
        .or(media_get)
        .unify()
        .recover(rejection)
        .unify()
        .boxed()
}

/// Renders warp's own rejections in the v1 error envelope.
async fn rejection(r: Rejection) -> Result<Response, Infallible> {
    let (status, code, message) = if r.is_not_found() {
        (StatusCode::NOT_FOUND, "not_found", "no such route".to_string())
    } else if r.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body is too large".to_string(),
        )
    } else if r.find::<warp::reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "a Content-Length header is required".to_string(),
        )
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this route".to_string(),
        )
    } else if let Some(e) = r.find::<warp::reject::InvalidHeader>() {
        (StatusCode::BAD_REQUEST, "invalid_request", e.to_string())
    } else {
        (StatusCode::BAD_REQUEST, "invalid_request", format!("{r:?}"))
    };
    let body = ErrorBody {
        error: ErrorObject {
            code: code.to_string(),
            message,
        },
    };
    Ok(warp::reply::with_status(warp::reply::json(&body), status).into_response())
}
