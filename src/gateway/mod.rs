//! The gateway: one port serving REST (warp) and Socket.IO (socketioxide), and its lifecycle.
//!
//! Requests under `/socket.io/` go to Socket.IO; everything else falls through to warp. The
//! gateway parses input, authenticates, calls the [`ChatService`] and renders results and
//! errors. Architecture invariant: no business rule lives here; if a handler needs an `if`
//! about chat semantics, that `if` belongs in the service.

mod client_ip;
mod fanout;
mod reorder;
mod rest;
mod socket;

use crate::bus::EndReason;
use crate::error::Result;
use crate::service::ChatService;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use socketioxide::SocketIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The TCP peer of a request, inserted by the accept loop (warp cannot see it otherwise).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Serves until `stop` is cancelled, then shuts down gracefully: stops accepting, tells every
/// socket `session:end {"code":"shutdown"}`, closes them, and waits (bounded by `grace`) for
/// in-flight HTTP requests.
pub async fn serve(listener: TcpListener, svc: ChatService, stop: CancellationToken, grace: Duration) -> Result<()> {
    let limits = svc.config().limits.clone();
    let (sio_layer, io) = SocketIo::builder()
        .max_payload(limits.max_frame_bytes as u64)
        .ws_max_message_size(limits.max_frame_bytes)
        .ws_max_frame_size(limits.max_frame_bytes)
        .max_buffer_size(limits.socket_buffer_packets)
        .build_layer();
    socket::register(&io, svc.clone());
    let fanout_task = tokio::spawn(fanout::run(io.clone(), svc.backends().bus.subscribe()));

    let routes = rest::routes(svc.clone());
    let app = tower::ServiceBuilder::new()
        .layer(sio_layer)
        .service(warp::service(routes));

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app
            .clone()
            .map_request(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                req
            });
        let service = TowerToHyperService::new(app);
        let builder = auto::Builder::new(TokioExecutor::new());
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: closing sockets");
    let end = serde_json::json!({ "code": EndReason::Shutdown.code() });
    if let Err(e) = io.emit("session:end", &end).await {
        tracing::debug!(error = %e, "could not tell every socket about the shutdown");
    }
    io.close().await;
    fanout_task.abort();
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(grace_secs = grace.as_secs(), "some connections did not finish in time");
    }
    Ok(())
}
