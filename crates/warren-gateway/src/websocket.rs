//! The server side of a WebSocket handshake over hyper's upgrade, shared by the edge
//! (towards clients) and the echo agent. The client side is tokio-tungstenite's.

use axum::body::Body;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

pub type ServerStream = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Frames and messages larger than this are refused (the peer gets a close).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

/// Whether a request asks to become a WebSocket.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has_token(header::CONNECTION, "upgrade") && has_token(header::UPGRADE, "websocket")
}

/// The `101 Switching Protocols` answer to an upgrade request, or `None` if the
/// request lacks a usable `Sec-WebSocket-Key` or version 13.
pub fn accept(headers: &HeaderMap, protocol: Option<&HeaderValue>) -> Option<Response<Body>> {
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return None;
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        )
        .body(Body::empty())
        .ok()?;
    if let Some(protocol) = protocol {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol.clone());
    }
    Some(response)
}

/// Takes the pending upgrade out of a request; await it after answering `101`.
pub fn on_upgrade<B>(request: &mut Request<B>) -> hyper::upgrade::OnUpgrade {
    hyper::upgrade::on(request)
}

/// Completes the upgrade into a server-side WebSocket stream.
pub async fn server_stream(
    upgrade: hyper::upgrade::OnUpgrade,
) -> Result<ServerStream, hyper::Error> {
    let upgraded = upgrade.await?;
    Ok(
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config()))
            .await,
    )
}
