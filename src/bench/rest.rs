//! The REST calls the bench makes: sign-in, room setup, history pages, `/metrics` scrapes.
//! Every non-2xx answer becomes [`BenchError::Http`] with the protocol's error code.

use super::error::BenchError;
use super::login::{Identity, NonceGrant, siwe_text};
use super::net::Net;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorCode,
}

#[derive(Deserialize)]
struct ErrorCode {
    code: String,
}

/// Sends `req`, decodes a 2xx JSON body into `T`, or turns the error envelope into an error.
async fn call<T: DeserializeOwned>(what: &'static str, req: reqwest::RequestBuilder) -> Result<T, BenchError> {
    let resp = req
        .send()
        .await
        .map_err(|e| BenchError::transport_chain(http_error_kind(&e), &e))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| BenchError::transport_chain("http_body", &e))?;
    if !status.is_success() {
        let code = serde_json::from_slice::<ErrorEnvelope>(&bytes)
            .map(|e| e.error.code)
            .unwrap_or_else(|_| "none".into());
        return Err(BenchError::Http {
            what,
            status: status.as_u16(),
            code,
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| BenchError::Protocol(format!("{what}: unexpected body: {e}")))
}

fn http_error_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "http_timeout"
    } else if e.is_connect() {
        "http_connect"
    } else {
        "http_transport"
    }
}

#[derive(Deserialize)]
struct SignedIn {
    token: String,
}

/// The whole SIWE flow for user `i`: nonce, sign, verify. Returns the session token.
pub async fn sign_in(net: &Net, i: usize, who: &Identity) -> Result<String, BenchError> {
    let http = net.http(i);
    let grant: NonceGrant = call("auth/nonce", http.get(net.url("/api/v1/auth/nonce"))).await?;
    let text = siwe_text(&grant, who, time::OffsetDateTime::now_utc());
    let (message, signature) = who.sign_siwe(&text)?;
    let signed: SignedIn = call(
        "auth/verify",
        http.post(net.url("/api/v1/auth/verify"))
            .json(&json!({"message": message, "signature": signature})),
    )
    .await?;
    Ok(signed.token)
}

/// The part of a room the bench needs.
#[derive(Debug, Clone, Deserialize)]
pub struct RoomView {
    pub id: String,
}

pub async fn create_room(
    net: &Net,
    i: usize,
    token: &str,
    name: &str,
    members: &[String],
) -> Result<RoomView, BenchError> {
    call(
        "rooms",
        net.http(i)
            .post(net.url("/api/v1/rooms"))
            .bearer_auth(token)
            .json(&json!({"name": name, "members": members})),
    )
    .await
}

pub async fn open_dm(net: &Net, i: usize, token: &str, other: &str) -> Result<RoomView, BenchError> {
    call(
        "dms",
        net.http(i)
            .post(net.url("/api/v1/dms"))
            .bearer_auth(token)
            .json(&json!({"address": other})),
    )
    .await
}

/// A message as history returns it (only what the bench checks).
#[derive(Debug, Clone, Deserialize)]
pub struct HistoryMessage {
    pub seq: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HistoryPage {
    pub messages: Vec<HistoryMessage>,
    pub has_more: bool,
}

/// `GET /api/v1/rooms/{id}/messages?before_seq=N&limit=L` (descending).
pub async fn history_before(
    net: &Net,
    i: usize,
    token: &str,
    room_id: &str,
    before_seq: i64,
    limit: usize,
) -> Result<HistoryPage, BenchError> {
    let url = net.url(&format!(
        "/api/v1/rooms/{room_id}/messages?before_seq={before_seq}&limit={limit}"
    ));
    call("history", net.http(i).get(url).bearer_auth(token)).await
}

/// `POST /api/v1/rooms/{id}/messages`: used to seed history.
pub async fn post_message(
    net: &Net,
    i: usize,
    token: &str,
    room_id: &str,
    body: &str,
    client_msg_id: &str,
) -> Result<(), BenchError> {
    let url = net.url(&format!("/api/v1/rooms/{room_id}/messages"));
    let _: serde_json::Value = call(
        "post message",
        net.http(i)
            .post(url)
            .bearer_auth(token)
            .json(&json!({"body": body, "client_msg_id": client_msg_id})),
    )
    .await?;
    Ok(())
}

/// Process figures of the node from `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerProcess {
    pub rss_bytes: f64,
    pub cpu_seconds: f64,
}

pub async fn scrape_metrics(net: &Net) -> Result<ServerProcess, BenchError> {
    let resp = net
        .http(0)
        .get(net.url("/metrics"))
        .send()
        .await
        .map_err(|e| BenchError::transport("metrics", e))?;
    if !resp.status().is_success() {
        return Err(BenchError::Http {
            what: "metrics",
            status: resp.status().as_u16(),
            code: "none".into(),
        });
    }
    let text = resp.text().await.map_err(|e| BenchError::transport("metrics", e))?;
    parse_process_metrics(&text).ok_or_else(|| BenchError::Protocol("metrics: no process figures".into()))
}

/// Reads `process_resident_memory_bytes` and `process_cpu_seconds_total` from Prometheus text.
pub fn parse_process_metrics(text: &str) -> Option<ServerProcess> {
    let mut rss = None;
    let mut cpu = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        match name {
            "process_resident_memory_bytes" => rss = value.parse().ok(),
            "process_cpu_seconds_total" => cpu = value.parse().ok(),
            _ => {}
        }
    }
    Some(ServerProcess {
        rss_bytes: rss?,
        cpu_seconds: cpu?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_metrics() {
        let text = "# HELP x\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 1048576\n\
                    coolchat_sockets_connected 3\nprocess_cpu_seconds_total 12.340\n";
        assert_eq!(
            parse_process_metrics(text),
            Some(ServerProcess {
                rss_bytes: 1048576.0,
                cpu_seconds: 12.34
            })
        );
        assert_eq!(parse_process_metrics("process_resident_memory_bytes 1\n"), None);
        assert_eq!(parse_process_metrics(""), None);
    }
}
