//! Carries a request to the tenant's agent and the answer back, streaming both ways.
//!
//! HTTP: the request goes out on a pooled connection with hop-by-hop headers and the
//! gateway's own credential (query parameters, bearer header, session cookie) removed,
//! so an agent never sees a signature. The response body is streamed back holding the
//! tenant's lease until its last byte, so a long download keeps the sandbox awake.
//!
//! WebSocket: the upgrade goes to the agent first, so the client's `101` is the agent's
//! (subprotocol and extensions included), and an agent that refuses the upgrade is
//! answered with its own status. Then the two connections are joined byte for byte;
//! closes pass through with their codes, and an agent that vanishes without one is
//! reported to the client as 1011.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument as _;
use warren_core::ErrorCode;

use crate::error::ApiError;
use crate::metrics::{Direction, Protocol};
use crate::tenant::Lease;
use crate::upstream::Upstream;
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

/// A client's claims about proxies before warren, which warren cannot vouch for and
/// an agent would take for a proxy it does not trust (OpenClaw then treats a request
/// from its own loopback as remote): never forwarded.
const FORWARDING_CLAIMS: [&str; 5] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
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
    for name in FORWARDING_CLAIMS {
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

/// Proxies one HTTP request to the agent at `upstream`.
pub async fn http(
    ctx: &Context,
    upstream: &Upstream,
    path_and_query: &str,
    mut request: Request<Body>,
    strip: &Strip<'_>,
    lease: Lease,
) -> Result<Response<Body>, ApiError> {
    let uri = format!("http://{}{path_and_query}", upstream.authority)
        .parse()
        .map_err(|_| ApiError::new(ErrorCode::Internal, "cannot build the upstream URI"))?;
    *request.uri_mut() = uri;
    *request.version_mut() = http::Version::HTTP_11;
    clean_headers(request.headers_mut(), strip);
    let to_agent = ctx
        .metrics
        .proxied_bytes(Protocol::Http, Direction::ToAgent);
    let request = request.map(|body| Body::new(Metered::new(body, to_agent, None)));
    let response = ctx.client.request(request).await.map_err(|e| {
        tracing::warn!(upstream = %upstream.authority, error = %e, "request to the sandbox failed");
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
    Ok(Response::from_parts(parts, answer_body(ctx, body, lease)))
}

/// An agent's answer as the client's body: counted, and leasing the sandbox.
fn answer_body(ctx: &Context, body: Incoming, lease: Lease) -> Body {
    let to_client = ctx
        .metrics
        .proxied_bytes(Protocol::Http, Direction::ToClient);
    Body::new(Metered::new(body, to_client, Some(lease)))
}

/// A body passed through with its bytes counted (`warren_proxied_bytes_total`); with a
/// lease, the tenant's sandbox stays leased until the body is fully sent, so a long
/// download keeps it awake.
struct Metered<B> {
    inner: B,
    bytes: Counter,
    _lease: Option<Lease>,
}

impl<B> Metered<B> {
    fn new(inner: B, bytes: Counter, lease: Option<Lease>) -> Self {
        Self {
            inner,
            bytes,
            _lease: lease,
        }
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for Metered<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            self.bytes.inc_by(data.len() as u64);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Headers of the client's upgrade request that the agent should see. The key and
/// extensions go through as they are, so the agent's answer is the client's answer and
/// whatever the two negotiate (permessage-deflate included) works end to end.
const WS_FORWARDED: [header::HeaderName; 7] = [
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::SEC_WEBSOCKET_EXTENSIONS,
    header::ORIGIN,
    header::USER_AGENT,
    header::COOKIE,
];

/// Headers of the agent's `101` that the client should see.
const WS_ANSWERED: [header::HeaderName; 3] = [
    header::SEC_WEBSOCKET_ACCEPT,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::SEC_WEBSOCKET_EXTENSIONS,
];

/// Proxies a WebSocket upgrade to the agent at `upstream`.
///
/// The upgrade is forwarded as an HTTP request on a fresh connection; an agent that
/// refuses is answered with its own response. With `inject` (an OpenClaw agent), the
/// client's `connect` request gets the tenant's token (see `openclaw`). After both `101`s the two connections
/// are joined byte for byte (as nginx does), with a frame-header tracker on each
/// direction that sees closes and activity without touching payloads.
pub async fn websocket(
    ctx: &Arc<Context>,
    upstream: &Upstream,
    path_and_query: &str,
    mut request: Request<Body>,
    strip: &Strip<'_>,
    lease: Lease,
    inject: Option<warren_core::Secret>,
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
    let address = upstream.endpoint.addr;
    let stream = ctx
        .upstreams
        .connector()
        .connect(&upstream.endpoint)
        .await
        .map_err(|_| unreachable())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| {
            tracing::warn!(%address, error = %e, "cannot open a connection to the sandbox");
            unreachable()
        })?;
    tokio::spawn(connection.with_upgrades());

    let mut headers = request.headers().clone();
    clean_headers(&mut headers, strip);
    let mut upstream = Request::get(path_and_query)
        .header(header::HOST, address.to_string())
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .body(Body::empty())
        .map_err(|_| unreachable())?;
    for name in WS_FORWARDED {
        // OpenClaw refuses a browser's `Origin` (warren's address, not its own); warren
        // has authenticated the user, and its cookie is SameSite=Lax. Its frames are
        // read (see `openclaw`), so they must not be compressed.
        if inject.is_some() && (name == header::ORIGIN || name == header::SEC_WEBSOCKET_EXTENSIONS)
        {
            continue;
        }
        for value in headers.get_all(&name) {
            upstream.headers_mut().append(name.clone(), value.clone());
        }
    }
    let mut answer = sender.send_request(upstream).await.map_err(|e| {
        tracing::warn!(%address, error = %e, "WebSocket handshake with the sandbox failed");
        unreachable()
    })?;
    if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The agent said no: pass its answer on.
        let (mut parts, body) = answer.into_parts();
        clean_headers(
            &mut parts.headers,
            &Strip {
                authorization: false,
                cookie_name: "",
            },
        );
        return Ok(Response::from_parts(parts, answer_body(ctx, body, lease)));
    }
    let agent_upgrade = hyper::upgrade::on(&mut answer);
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .body(Body::empty())
        .map_err(|_| unreachable())?;
    for name in WS_ANSWERED {
        if let Some(value) = answer.headers().get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    let client_upgrade = websocket::on_upgrade(&mut request);
    let ctx = ctx.clone();
    ctx.relays.send_modify(|n| *n += 1);
    let relaying = async move {
        // Counted until it ends, however it ends.
        struct Counted<'a>(&'a tokio::sync::watch::Sender<usize>);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                self.0.send_modify(|n| *n -= 1);
            }
        }
        let _counted = Counted(&ctx.relays);
        match tokio::try_join!(client_upgrade, agent_upgrade) {
            Ok((client, agent)) => {
                let (client, agent) = (TokioIo::new(client), TokioIo::new(agent));
                match inject {
                    Some(token) => {
                        use crate::openclaw::{Filter, Filtered};
                        let client = Filtered::new(client, Filter::InjectToken(token));
                        let agent = Filtered::new(agent, Filter::explain_auth());
                        relay(client, agent, lease, &ctx).await
                    }
                    None => relay(client, agent, lease, &ctx).await,
                }
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade did not complete"),
        }
    };
    // Its lines carry the request's id and tenant.
    tokio::spawn(relaying.instrument(tracing::Span::current()));
    Ok(response)
}

/// The close frame a client gets when its agent vanished without one: 1011, as a
/// server (unmasked) frame.
const SANDBOX_GONE: &[u8] = b"\x88\x11\x03\xf3sandbox stopped";
/// The same while the gateway shuts down: 1012 (service restart), so a client knows
/// to come back.
const RESTARTING: &[u8] = b"\x88\x14\x03\xf4gateway restarting";

/// Joins the client and agent connections until both directions have ended, the close
/// handshake is complete (a close frame has been delivered each way), or one direction
/// has ended and the other did not follow within `CLOSE_GRACE`.
///
/// One task copies both ways (`copy_bidirectional`); each side's wrapper watches the
/// frames written to it, so the relay knows when closes were delivered, and writes
/// the 1011 close to a client whose agent vanished without one.
async fn relay<C, A>(client: C, agent: A, lease: Lease, ctx: &Context)
where
    C: AsyncRead + AsyncWrite + Unpin,
    A: AsyncRead + AsyncWrite + Unpin,
{
    let state = RelayState::default();
    let mut closing = ctx.closing.subscribe();
    let bytes = |direction| ctx.metrics.proxied_bytes(Protocol::WebSocket, direction);
    let to_client = bytes(Direction::ToClient);
    let mut client = Side::new(client, &state, Some(&ctx.draining), &lease, to_client);
    let mut agent = Side::new(agent, &state, None, &lease, bytes(Direction::ToAgent));
    let failed = {
        let copy =
            tokio::io::copy_bidirectional_with_sizes(&mut client, &mut agent, 16 * 1024, 16 * 1024);
        tokio::pin!(copy);
        let mut grace: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                result = &mut copy => break result.is_err(),
                _ = state.changed.notified() => {
                    if state.closes_delivered() {
                        break false;
                    }
                    // A close or an end one way: the other way gets CLOSE_GRACE to follow.
                    grace.get_or_insert_with(|| tokio::time::Instant::now() + CLOSE_GRACE);
                }
                _ = sleep_until_opt(grace) => break false,
                // The gateway goes: the client gets 1012 (at a frame boundary).
                _ = closing.wait_for(|c| *c) => break true,
            }
        }
    };
    // A reset (an agent killed with unread data) ends the copy with an error and no
    // shutdown: the client still deserves its 1011.
    if failed {
        let _ = tokio::time::timeout(
            CLOSE_GRACE,
            std::future::poll_fn(|cx| Pin::new(&mut client).poll_shutdown(cx)),
        )
        .await;
    }
}

/// What the two sides of a relay have seen, as bits: a close frame delivered to the
/// client or to the agent, and the end of the copy towards each.
#[derive(Default)]
struct RelayState {
    bits: AtomicU8,
    changed: tokio::sync::Notify,
}

impl RelayState {
    fn set(&self, bit: u8) {
        if self.bits.fetch_or(bit, Ordering::AcqRel) & bit == 0 {
            self.changed.notify_one();
        }
    }

    fn has(&self, bits: u8) -> bool {
        self.bits.load(Ordering::Acquire) & bits == bits
    }

    fn any_close(&self) -> bool {
        self.bits.load(Ordering::Acquire) & (CLOSE_TO_CLIENT | CLOSE_TO_AGENT) != 0
    }

    fn closes_delivered(&self) -> bool {
        self.has(CLOSE_TO_CLIENT | CLOSE_TO_AGENT)
    }
}

const CLOSE_TO_CLIENT: u8 = 1;
const CLOSE_TO_AGENT: u8 = 2;
const ENDED_TO_CLIENT: u8 = 4;
const ENDED_TO_AGENT: u8 = 8;

/// One side of a relay: reads pass through; writes are followed frame by frame.
struct Side<'a, T> {
    io: T,
    state: &'a RelayState,
    /// (close delivered, copy ended) bits for writes to this side.
    bits: (u8, u8),
    lease: &'a Lease,
    frames: FrameTracker,
    /// Bytes written to this side (`warren_proxied_bytes_total`).
    bytes: Counter,
    /// The client side only: the gateway's draining flag, and which farewell close
    /// frame (`SANDBOX_GONE` or `RESTARTING`) is being written and how much of it.
    farewell: Option<Farewell<'a>>,
}

struct Farewell<'a> {
    draining: &'a AtomicBool,
    frame: Option<&'static [u8]>,
    sent: usize,
}

impl<'a, T> Side<'a, T> {
    /// The client's side (with the draining flag) or the agent's (`None`).
    fn new(
        io: T,
        state: &'a RelayState,
        draining: Option<&'a AtomicBool>,
        lease: &'a Lease,
        bytes: Counter,
    ) -> Self {
        let bits = if draining.is_some() {
            (CLOSE_TO_CLIENT, ENDED_TO_CLIENT)
        } else {
            (CLOSE_TO_AGENT, ENDED_TO_AGENT)
        };
        Self {
            io,
            state,
            bits,
            lease,
            frames: FrameTracker::default(),
            bytes,
            farewell: draining.map(|draining| Farewell {
                draining,
                frame: None,
                sent: 0,
            }),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Side<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Side<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let written = std::task::ready!(Pin::new(&mut this.io).poll_write(cx, data))?;
        this.frames.feed(&data[..written]);
        this.bytes.inc_by(written as u64);
        this.lease.touch();
        if this.frames.saw_close {
            this.state.set(this.bits.0);
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// The copy towards this side has ended. A client whose agent vanished without a
    /// close gets 1011 first (1012 if the gateway is shutting down).
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        while let Some(farewell) = this.farewell.as_mut()
            && !this.state.any_close()
            && (farewell.sent > 0 || this.frames.at_boundary())
        {
            let frame = *farewell.frame.get_or_insert_with(|| {
                if farewell.draining.load(Ordering::Acquire) {
                    RESTARTING
                } else {
                    SANDBOX_GONE
                }
            });
            if farewell.sent == frame.len() {
                break;
            }
            match std::task::ready!(Pin::new(&mut this.io).poll_write(cx, &frame[farewell.sent..]))?
            {
                0 => this.farewell = None,
                n => farewell.sent += n,
            }
        }
        this.state.set(this.bits.1);
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Follows frame boundaries in one direction of a WebSocket by reading headers only
/// (RFC 6455, 5.2), to notice a close frame.
#[derive(Default)]
struct FrameTracker {
    /// The header bytes of the frame being read.
    header: Vec<u8>,
    /// Payload bytes of the current frame still to pass.
    skip: u64,
    /// The current frame is a close.
    in_close: bool,
    saw_close: bool,
}

impl FrameTracker {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = (self.skip.min(data.len() as u64)) as usize;
                self.skip -= n as u64;
                data = &data[n..];
            } else {
                self.header.push(data[0]);
                data = &data[1..];
                if let Some((opcode, payload)) = parse_frame_header(&self.header) {
                    self.in_close = opcode == 0x8;
                    self.skip = payload;
                    self.header.clear();
                }
            }
            // A close counts once all of it (code and reason) has passed.
            if self.in_close && self.skip == 0 {
                self.saw_close = true;
            }
        }
    }

    /// Between two frames: a frame written now would not land inside another.
    fn at_boundary(&self) -> bool {
        self.header.is_empty() && self.skip == 0
    }
}

/// The opcode and payload length of a complete frame header, or `None` while more
/// header bytes are needed.
fn parse_frame_header(h: &[u8]) -> Option<(u8, u64)> {
    if h.len() < 2 {
        return None;
    }
    let masked = h[1] & 0x80 != 0;
    let (extended, short) = match h[1] & 0x7f {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(n as u64)),
    };
    let total = 2 + extended + if masked { 4 } else { 0 };
    if h.len() < total {
        return None;
    }
    let len = short.unwrap_or_else(|| {
        h[2..2 + extended]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | *b as u64)
    });
    Some((h[0] & 0x0f, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_headers_drops_hop_by_hop_forwarding_claims_and_the_gateways_credential() {
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
        headers.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        headers.insert(header::FORWARDED, HeaderValue::from_static("for=10.0.0.1"));
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
    fn the_frame_tracker_follows_headers_across_reads_and_sees_a_close() {
        // A masked 300-byte binary frame (16-bit length), then a masked close frame,
        // fed one byte at a time and then all at once.
        let mut stream = vec![0x82, 0x80 | 126, 0x01, 0x2c, 1, 2, 3, 4];
        stream.extend(std::iter::repeat_n(0x88u8, 300)); // payload bytes that look like closes
        stream.extend([0x88, 0x82, 9, 9, 9, 9, 0x03, 0xe8]);
        let mut bytewise = FrameTracker::default();
        for (i, b) in stream.iter().enumerate() {
            bytewise.feed(std::slice::from_ref(b));
            assert_eq!(
                bytewise.saw_close,
                i == stream.len() - 1 || (bytewise.saw_close && i > 308),
                "at byte {i}"
            );
        }
        let mut whole = FrameTracker::default();
        whole.feed(&stream);
        assert!(whole.saw_close);
        let mut text_only = FrameTracker::default();
        text_only.feed(&stream[..308]);
        assert!(!text_only.saw_close, "a payload is never read as a header");
        assert_eq!(
            parse_frame_header(&[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
            Some((1, 65536))
        );
        assert_eq!(SANDBOX_GONE.len(), 2 + 0x11);
        assert_eq!(RESTARTING.len(), 2 + 0x14);
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
