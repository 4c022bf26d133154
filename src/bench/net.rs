//! Connections to the node: HTTP clients for REST, websocket streams for Socket.IO, optional
//! source-address binding (to get past the ~28k ephemeral ports of one source address), TLS
//! (webpki roots, or accept-anything with `--insecure`), and a lean websocket configuration.

use super::error::BenchError;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// A Socket.IO websocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Everything needed to reach the node.
pub struct Net {
    /// `http(s)://host[:port]`, no trailing slash.
    pub origin: String,
    /// `ws(s)://host[:port]/socket.io/?EIO=4&transport=websocket`.
    pub ws_url: String,
    /// Where TCP connections go (resolved once).
    pub addr: SocketAddr,
    /// One HTTP client per source address (a single one when none are given).
    http: Vec<reqwest::Client>,
    sources: Vec<IpAddr>,
    connector: Option<Connector>,
    ws_config: WebSocketConfig,
}

impl Net {
    pub async fn new(url: &str, insecure: bool, sources: &[IpAddr], pool_per_client: usize) -> Result<Net, BenchError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| BenchError::Usage(format!("--url: {e}")))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| BenchError::Usage("--url has no host".into()))?
            .to_string();
        let port = parsed
            .port_or_known_default()
            .ok_or_else(|| BenchError::Usage("--url has no port".into()))?;
        let tls = match parsed.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(BenchError::Usage(format!(
                    "--url scheme `{other}` is not http or https"
                )));
            }
        };
        let authority = match parsed.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let origin = format!("{}://{authority}", parsed.scheme());
        let ws_url = format!(
            "{}://{authority}/socket.io/?EIO=4&transport=websocket",
            if tls { "wss" } else { "ws" }
        );
        // `Url::host_str` keeps the brackets of IPv6 literals; the resolver wants them off.
        let lookup_host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let addr = tokio::net::lookup_host((lookup_host.as_str(), port))
            .await
            .map_err(|e| BenchError::transport("dns", format!("{host}: {e}")))?
            .next()
            .ok_or_else(|| BenchError::transport("dns", format!("{host}: no address")))?;

        let connector = match (tls, insecure) {
            (false, _) => Some(Connector::Plain),
            // webpki roots, the crate's default connector.
            (true, false) => None,
            (true, true) => Some(Connector::Rustls(Arc::new(insecure_tls_config()?))),
        };

        let mut http = Vec::new();
        let locals: Vec<Option<IpAddr>> = if sources.is_empty() {
            vec![None]
        } else {
            sources.iter().copied().map(Some).collect()
        };
        for local in locals {
            let client = reqwest::Client::builder()
                .use_rustls_tls()
                .danger_accept_invalid_certs(insecure)
                .local_address(local)
                .pool_max_idle_per_host(pool_per_client)
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(60))
                .tcp_nodelay(true)
                .build()
                .map_err(|e| BenchError::transport("http_client", e))?;
            http.push(client);
        }

        let ws_config = WebSocketConfig::default()
            // 20k sockets: a small eagerly allocated read buffer, writes go straight out.
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .max_write_buffer_size(1024 * 1024)
            .max_message_size(Some(16 * 1024 * 1024))
            .max_frame_size(Some(16 * 1024 * 1024));

        Ok(Net {
            origin,
            ws_url,
            addr,
            http,
            sources: sources.to_vec(),
            connector,
            ws_config,
        })
    }

    /// The HTTP client of user `i` (round-robin over source addresses).
    pub fn http(&self, i: usize) -> &reqwest::Client {
        // `http` is never empty (see `new`).
        &self.http[i % self.http.len()]
    }

    /// The source address user `i` binds to, if any.
    pub fn source(&self, i: usize) -> Option<IpAddr> {
        if self.sources.is_empty() {
            None
        } else {
            Some(self.sources[i % self.sources.len()])
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    /// Opens the websocket of user `i`: TCP (bound to its source address), TLS, upgrade.
    pub async fn connect_ws(&self, i: usize) -> Result<Ws, BenchError> {
        let stream = match self.source(i) {
            None => TcpStream::connect(self.addr)
                .await
                .map_err(|e| BenchError::transport("tcp_connect", e))?,
            Some(ip) => {
                let socket = match (ip, self.addr) {
                    (IpAddr::V4(_), SocketAddr::V4(_)) => TcpSocket::new_v4(),
                    (IpAddr::V6(_), SocketAddr::V6(_)) => TcpSocket::new_v6(),
                    _ => {
                        return Err(BenchError::Usage(format!(
                            "source address {ip} and server address {} are not the same IP version",
                            self.addr
                        )));
                    }
                }
                .map_err(|e| BenchError::transport("tcp_socket", e))?;
                // Lets bind() reuse ports whose old connections sit in TIME_WAIT.
                socket
                    .set_reuseaddr(true)
                    .map_err(|e| BenchError::transport("tcp_socket", e))?;
                socket
                    .bind(SocketAddr::new(ip, 0))
                    .map_err(|e| BenchError::transport("tcp_bind", e))?;
                socket
                    .connect(self.addr)
                    .await
                    .map_err(|e| BenchError::transport("tcp_connect", e))?
            }
        };
        let _ = stream.set_nodelay(true);
        let (ws, _response) = tokio_tungstenite::client_async_tls_with_config(
            self.ws_url.as_str(),
            stream,
            Some(self.ws_config),
            self.connector.clone(),
        )
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => BenchError::Http {
                what: "websocket upgrade",
                status: resp.status().as_u16(),
                code: "upgrade_refused".into(),
            },
            other => BenchError::transport_chain("ws_handshake", &other),
        })?;
        Ok(ws)
    }
}

/// A TLS client configuration that accepts any certificate (`--insecure`).
fn insecure_tls_config() -> Result<rustls::ClientConfig, BenchError> {
    // ring is the provider this crate builds rustls with (Cargo.toml); its deprecation is about
    // the missing post-quantum key exchange, which does not matter for a test client.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| BenchError::transport("tls_config", e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    Ok(config)
}

/// Accepts every server certificate. Signatures are still checked against the certificate the
/// server sent, so the handshake is a real one; only the trust decision is skipped.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls_are_derived_from_the_origin() {
        let net = Net::new("http://127.0.0.1:9/ignored/path", false, &[], 4).await;
        let Ok(net) = net else { panic!("builds") };
        assert_eq!(net.origin, "http://127.0.0.1:9");
        assert_eq!(net.ws_url, "ws://127.0.0.1:9/socket.io/?EIO=4&transport=websocket");
        assert_eq!(net.url("/metrics"), "http://127.0.0.1:9/metrics");
        let Ok(net) = Net::new("https://127.0.0.1", true, &[], 4).await else {
            panic!("builds")
        };
        assert_eq!(net.ws_url, "wss://127.0.0.1/socket.io/?EIO=4&transport=websocket");
        assert_eq!(net.addr.port(), 443);
        let ips: Vec<IpAddr> = vec![[127, 0, 0, 1].into(), [127, 0, 0, 2].into()];
        let Ok(net) = Net::new("http://127.0.0.1:9", false, &ips, 4).await else {
            panic!("builds")
        };
        assert_eq!(net.source(0), Some(ips[0]));
        assert_eq!(net.source(3), Some(ips[1]));
        assert!(Net::new("ws://127.0.0.1:9", false, &[], 4).await.is_err());
    }
}
