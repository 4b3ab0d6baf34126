//! Carries a request to the tenant's agent and the answer back, streaming both ways.
//!
//! HTTP: the request goes out on a pooled connection with hop-by-hop headers and the
//! gateway's own credential (query parameters, bearer header, session cookie) removed,
//! so an agent never sees a signature. The response body is streamed back holding the
//! tenant's lease until its last byte, so a long download keeps the sandbox awake.
//!
//! WebSocket: the gateway opens its own WebSocket to the agent first, so the client's
//! `101` carries the subprotocol the agent chose, and an agent that refuses the
//! upgrade is answered with its own status. Then messages are relayed one by one;
//! a close on either side is passed on with its code, and an agent that vanishes
//! without one is reported to the client as 1011.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use warren_core::ErrorCode;

use crate::error::ApiError;
use crate::tenant::Lease;
use crate::websocket;
use crate::{Context, sleep_until_opt};

/// How long one side of a closing WebSocket may take to answer the other's close.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Headers that describe one hop, never forwarded (RFC 9110, 7.6.1).
const HOP_BY_HOP: [header::HeaderName; 8] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HeaderName::from_static("keep-alive"),
];

/// What the edge tells the proxy about the gateway's own credential.
pub struct Strip<'a> {
    pub authorization: bool,
    pub cookie_name: &'a str,
}

fn clean_headers(headers: &mut HeaderMap, strip: &Strip<'_>) {
    // Names listed in `Connection` are hop-by-hop too.
    let listed: Vec<header::HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| header::HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&listed) {
        headers.remove(name);
    }
    if strip.authorization {
        headers.remove(header::AUTHORIZATION);
    }
    let cookies: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.split_once('=').map_or(*c, |(n, _)| n) != strip.cookie_name)
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if !cookies.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cookies.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
}

/// Proxies one HTTP request to the agent at `address`.
pub async fn http(
    ctx: &Context,
    address: SocketAddr,
    path_and_query: &str,
    mut request: Request<Body>,
    strip: &Strip<'_>,
    lease: Lease,
) -> Result<Response<Body>, ApiError> {
    let uri = format!("http://{address}{path_and_query}")
        .parse()
        .map_err(|_| ApiError::new(ErrorCode::Internal, "cannot build the upstream URI"))?;
    *request.uri_mut() = uri;
    *request.version_mut() = http::Version::HTTP_11;
    clean_headers(request.headers_mut(), strip);
    let response = ctx.client.request(request).await.map_err(|e| {
        tracing::warn!(%address, error = %e, "request to the sandbox failed");
        ApiError::new(ErrorCode::SandboxUnreachable, "the sandbox did not answer").retry_after(1)
    })?;
    let (mut parts, body) = response.into_parts();
    clean_headers(
        &mut parts.headers,
        &Strip {
            authorization: false,
            cookie_name: "",
        },
    );
    Ok(Response::from_parts(
        parts,
        Body::new(LeasedBody {
            inner: body,
            _lease: lease,
        }),
    ))
}

/// A response body that keeps the tenant's sandbox leased until it is fully sent.
struct LeasedBody {
    inner: Incoming,
    _lease: Lease,
}

impl HttpBody for LeasedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Headers of the client's upgrade request that the agent should see.
const WS_FORWARDED: [header::HeaderName; 5] = [
    header::SEC_WEBSOCKET_PROTOCOL,
    header::ORIGIN,
    header::USER_AGENT,
    header::COOKIE,
    header::ACCEPT_LANGUAGE,
];

/// Proxies a WebSocket upgrade to the agent at `address`.
pub async fn websocket(
    address: SocketAddr,
    path_and_query: &str,
    mut request: Request<Body>,
    strip: &Strip<'_>,
    lease: Lease,
) -> Result<Response<Body>, ApiError> {
    // Check the client's half of the handshake before opening the agent's.
    if websocket::accept(request.headers(), None).is_none() {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "a WebSocket upgrade needs Sec-WebSocket-Key and version 13",
        ));
    }
    let unreachable = || {
        ApiError::new(
            ErrorCode::SandboxUnreachable,
            "the sandbox did not accept the WebSocket",
        )
        .retry_after(1)
    };
    let mut upstream = format!("ws://{address}{path_and_query}")
        .into_client_request()
        .map_err(|_| unreachable())?;
    let mut headers = request.headers().clone();
    clean_headers(&mut headers, strip);
    for name in WS_FORWARDED {
        for value in headers.get_all(&name) {
            upstream.headers_mut().append(name.clone(), value.clone());
        }
    }
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|_| unreachable())?;
    stream.set_nodelay(true).ok();
    let (agent, agent_response) = match tokio_tungstenite::client_async_with_config(
        upstream,
        stream,
        Some(websocket::config()),
    )
    .await
    {
        Ok(pair) => pair,
        Err(tungstenite::Error::Http(refusal)) => {
            // The agent said no: pass its answer on.
            let (parts, body) = refusal.into_parts();
            return Ok(Response::from_parts(
                parts,
                Body::from(body.unwrap_or_default()),
            ));
        }
        Err(e) => {
            tracing::warn!(%address, error = %e, "WebSocket handshake with the sandbox failed");
            return Err(unreachable());
        }
    };
    let protocol = agent_response.headers().get(header::SEC_WEBSOCKET_PROTOCOL);
    let Some(response) = websocket::accept(request.headers(), protocol) else {
        return Err(ApiError::new(
            ErrorCode::AuthMalformed,
            "not a valid WebSocket upgrade request",
        ));
    };
    let upgrade = websocket::on_upgrade(&mut request);
    tokio::spawn(async move {
        match websocket::server_stream(upgrade).await {
            Ok(client) => relay(client, agent, lease).await,
            Err(e) => tracing::debug!(error = %e, "client upgrade failed"),
        }
    });
    Ok(response)
}

/// Relays messages both ways until both sides have closed.
///
/// A close from one side is passed to the other, and both streams are then read until
/// they end: reading is what lets tungstenite send its reply to a close, so a side is
/// only done when its stream ends, not when its close frame arrives.
async fn relay<C, A>(client: C, agent: A, lease: Lease)
where
    C: futures_util::Stream<Item = Result<Message, tungstenite::Error>>
        + futures_util::Sink<Message>
        + Unpin,
    A: futures_util::Stream<Item = Result<Message, tungstenite::Error>>
        + futures_util::Sink<Message>
        + Unpin,
{
    let (mut client_tx, mut client_rx) = client.split();
    let (mut agent_tx, mut agent_rx) = agent.split();
    let (mut client_done, mut agent_done) = (false, false);
    let mut closing_since: Option<tokio::time::Instant> = None;
    while !(client_done && agent_done) {
        let grace = closing_since.map(|t| t + CLOSE_GRACE);
        tokio::select! {
            item = client_rx.next(), if !client_done => {
                let farewell = close(CloseCode::Away, "client went away");
                client_done = pass_on(item, &mut agent_tx, &lease, &mut closing_since, farewell).await;
            }
            item = agent_rx.next(), if !agent_done => {
                let farewell = close(CloseCode::Error, "sandbox stopped");
                agent_done = pass_on(item, &mut client_tx, &lease, &mut closing_since, farewell).await;
            }
            _ = sleep_until_opt(grace) => break,
        }
    }
}

/// Passes one item read from a side to the other side. Returns whether the reading
/// side has ended; a side that ends without a close makes the other get `farewell`.
async fn pass_on<S: futures_util::Sink<Message> + Unpin>(
    item: Option<Result<Message, tungstenite::Error>>,
    to: &mut S,
    lease: &Lease,
    closing_since: &mut Option<tokio::time::Instant>,
    farewell: Message,
) -> bool {
    match item {
        // Each hop answers its own pings.
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => false,
        Some(Ok(close @ Message::Close(_))) => {
            closing_since.get_or_insert_with(tokio::time::Instant::now);
            let _ = to.send(close).await;
            false
        }
        Some(Ok(message)) => {
            lease.touch();
            let _ = to.send(message).await;
            false
        }
        None | Some(Err(_)) => {
            if closing_since.is_none() {
                *closing_since = Some(tokio::time::Instant::now());
                let _ = to.send(farewell).await;
            }
            true
        }
    }
}

fn close(code: CloseCode, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_headers_drops_hop_by_hop_and_the_gateways_credential() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-hop"),
        );
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer u.1.sig"),
        );
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; warren_session=u.1.sig"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        clean_headers(
            &mut headers,
            &Strip {
                authorization: true,
                cookie_name: "warren_session",
            },
        );
        let mut names: Vec<_> = headers.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, ["accept", "cookie"]);
        assert_eq!(headers.get(header::COOKIE).unwrap(), "a=1; b=2");
    }

    #[test]
    fn an_authorization_the_gateway_did_not_use_is_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer for-the-agent"),
        );
        headers.insert(header::COOKIE, HeaderValue::from_static("warren_session=x"));
        clean_headers(
            &mut headers,
            &Strip {
                authorization: false,
                cookie_name: "warren_session",
            },
        );
        assert_eq!(
            headers.get(header::AUTHORIZATION).unwrap(),
            "Bearer for-the-agent"
        );
        assert!(
            headers.get(header::COOKIE).is_none(),
            "an emptied cookie header is removed"
        );
    }
}
