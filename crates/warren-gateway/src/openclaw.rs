//! What the gateway does for OpenClaw agents on a WebSocket: OpenClaw's protocol opens
//! with the client's `connect` request, whose `params.auth.token` must be the agent's
//! gateway token. The user's client does not know it (warren keeps it), so the first
//! frame a client sends is read whole and, if it is that `connect` request, its `auth`
//! is replaced with the tenant's token before it goes on; every other byte passes as
//! it is. A first frame that is not JSON, not a text frame, fragmented or larger than
//! `MAX_FRAME` goes on untouched (OpenClaw then refuses it, as it would anyway). In the
//! other direction, OpenClaw's answer to that `connect`, if it refuses the token (only
//! a gateway whose signing secret changed while the agent ran can cause it), gets a
//! message that makes sense to a user who never had a token; its codes stay.
//!
//! `GET /api/history` of an OpenClaw tenant is answered by the gateway itself: it opens
//! OpenClaw's protocol with the tenant's token and asks `chat.history`.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use warren_core::Secret;

/// The largest frame that is read whole to be rewritten.
const MAX_FRAME: usize = 1 << 20;

/// A connection whose first frames go through a `Filter` (see the module).
pub struct Filtered<T> {
    io: T,
    filter: Filter,
    state: State,
}

/// What is done to the first frames of one direction of an OpenClaw WebSocket.
pub enum Filter {
    /// The client's: its first frame, if OpenClaw's `connect`, gets this token.
    InjectToken(Secret),
    /// OpenClaw's: its answer to the `connect`, if a refusal of the token, gets a
    /// message a user can act on; looked for in this many frames at most.
    ExplainAuth(usize),
}

/// How many of OpenClaw's first frames may come before its answer to the `connect`
/// (the challenge, events).
const FRAMES_BEFORE_ANSWER: usize = 8;

impl Filter {
    pub fn explain_auth() -> Self {
        Filter::ExplainAuth(FRAMES_BEFORE_ANSWER)
    }

    /// What goes on in place of `frame` (`None`: the frame itself), and whether the
    /// filter is done with the stream.
    fn apply(&mut self, frame: &[u8]) -> (Option<Vec<u8>>, bool) {
        match self {
            Filter::InjectToken(token) => (rewrite(frame, token.expose()), true),
            Filter::ExplainAuth(left) => {
                *left = left.saturating_sub(1);
                let (out, answered) = explain(frame);
                (out, answered || *left == 0)
            }
        }
    }
}

enum State {
    /// Gathering a frame.
    Gathering(Vec<u8>),
    /// Handing out `.0` from `.1` on; then gathering again from `.2`, or, with `None`,
    /// passing everything through.
    Serving(Vec<u8>, usize, Option<Vec<u8>>),
    Through,
}

impl<T> Filtered<T> {
    pub fn new(io: T, filter: Filter) -> Self {
        Self {
            io,
            filter,
            state: State::Gathering(Vec::new()),
        }
    }
}

/// The header of the frame that `bytes` starts with, once all of it has come.
struct Header {
    /// FIN and the opcode.
    first: u8,
    /// The masking key (all zero when unmasked).
    mask: [u8; 4],
    masked: bool,
    /// Where the payload starts, and its length.
    at: usize,
    len: usize,
}

impl Header {
    fn parse(bytes: &[u8]) -> Option<Self> {
        let (&first, &b1) = (bytes.first()?, bytes.get(1)?);
        let (len, mut at) = match b1 & 0x7f {
            126 => (
                u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?) as u64,
                4,
            ),
            127 => (u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?), 10),
            n => (n as u64, 2),
        };
        let masked = b1 & 0x80 != 0;
        let mut mask = [0u8; 4];
        if masked {
            mask.copy_from_slice(bytes.get(at..at + 4)?);
            at += 4;
        }
        Some(Self {
            first,
            mask,
            masked,
            at,
            len: usize::try_from(len).ok()?,
        })
    }

    /// The whole frame's size, header included.
    fn size(&self) -> Option<usize> {
        self.at.checked_add(self.len)
    }
}

/// `frame` with `params.auth` set to `token` if it is OpenClaw's `connect` request, as
/// a new masked text frame; otherwise `None` (it goes on as it was).
fn rewrite(bytes: &[u8], token: &str) -> Option<Vec<u8>> {
    let (header, mut request) = json_frame(bytes)?;
    // Masked, as every client frame must be.
    if !header.masked || request["type"] != "req" || request["method"] != "connect" {
        return None;
    }
    let params = request.get_mut("params")?.as_object_mut()?;
    params.insert("auth".into(), serde_json::json!({ "token": token }));
    Some(encode_text(
        &serde_json::to_vec(&request).ok()?,
        Some(header.mask),
    ))
}

/// For one of OpenClaw's frames: a refusal of the `connect` for its token (`AUTH_*`),
/// with a message that makes sense to the user of warren, who never had a token (only
/// a gateway with another signing secret than the one the agent was started with can
/// cause it); and whether this was the answer to the `connect`.
fn explain(bytes: &[u8]) -> (Option<Vec<u8>>, bool) {
    let Some((header, mut answer)) = json_frame(bytes) else {
        return (None, false);
    };
    if header.masked || answer["type"] != "res" {
        return (None, false);
    }
    let refused = answer["ok"] == false
        && answer["error"]["details"]["code"]
            .as_str()
            .is_some_and(|code| code.starts_with("AUTH_"));
    if !refused {
        return (None, true);
    }
    answer["error"]["message"] = AUTH_REFUSED.into();
    (
        serde_json::to_vec(&answer)
            .ok()
            .map(|payload| encode_text(&payload, None)),
        true,
    )
}

/// What a user is told when their agent refuses the token warren gave it.
pub const AUTH_REFUSED: &str = "your agent did not accept the credentials warren keeps for it: \
     the deployment's signing secret changed while it ran. Nothing is lost; it takes the \
     new one when it next starts (after it sleeps), or an operator can restart it now";

/// The header and JSON payload of `bytes` if it is a whole, final text frame of JSON.
fn json_frame(bytes: &[u8]) -> Option<(Header, serde_json::Value)> {
    let header = Header::parse(bytes)?;
    if header.first != 0x81 {
        return None;
    }
    let mask = header.mask;
    let payload: Vec<u8> = bytes
        .get(header.at..header.size()?)?
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    Some((header, serde_json::from_slice(&payload).ok()?))
}

/// A final text frame holding `payload`, masked with `mask` if given (a client's).
fn encode_text(payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let bit = if mask.is_some() { 0x80 } else { 0 };
    let mut out = vec![0x81];
    match payload.len() {
        n if n < 126 => out.push(bit | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = mask.unwrap_or_default();
    if bit != 0 {
        out.extend_from_slice(&mask);
    }
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

impl<T: AsyncRead + Unpin> AsyncRead for Filtered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Through => return Pin::new(&mut this.io).poll_read(cx, buf),
                State::Serving(bytes, at, next) => {
                    let n = (bytes.len() - *at).min(buf.remaining());
                    buf.put_slice(&bytes[*at..*at + n]);
                    *at += n;
                    if *at == bytes.len() {
                        this.state = match next.take() {
                            Some(rest) => State::Gathering(rest),
                            None => State::Through,
                        };
                    }
                    return Poll::Ready(Ok(()));
                }
                State::Gathering(gathered) => {
                    let size = Header::parse(gathered).and_then(|h| h.size());
                    let whole = size.filter(|size| gathered.len() >= *size);
                    let too_large = size.is_some_and(|s| s > MAX_FRAME);
                    if let Some(size) = whole {
                        let mut rest = gathered.split_off(size);
                        let frame = std::mem::take(gathered);
                        let (out, done) = this.filter.apply(&frame);
                        let mut out = out.unwrap_or(frame);
                        this.state = if done {
                            out.append(&mut rest);
                            State::Serving(out, 0, None)
                        } else {
                            State::Serving(out, 0, Some(rest))
                        };
                        continue;
                    }
                    if too_large {
                        this.state = State::Serving(std::mem::take(gathered), 0, None);
                        continue;
                    }
                    let mut chunk = [0u8; 8192];
                    let mut read = ReadBuf::new(&mut chunk);
                    std::task::ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
                    if read.filled().is_empty() {
                        // The stream ended within a frame: pass on what came.
                        let gathered = std::mem::take(gathered);
                        this.state = match gathered.is_empty() {
                            true => State::Through,
                            false => State::Serving(gathered, 0, None),
                        };
                        continue;
                    }
                    gathered.extend_from_slice(read.filled());
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Filtered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How long `history` waits for each answer of OpenClaw's.
const HISTORY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The tenant's recent chat history (`chat.history` of session `main`, at most `limit`
/// messages), as OpenClaw answers it.
pub async fn history(
    connector: &warren_runtime::Connector,
    endpoint: &warren_runtime::Endpoint,
    token: &Secret,
    limit: u32,
) -> Result<serde_json::Value, crate::error::ApiError> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use warren_core::ErrorCode;

    let failed = |what: String| {
        crate::error::ApiError::new(
            ErrorCode::SandboxUnreachable,
            format!("OpenClaw's history: {what}"),
        )
        .retry_after(1)
    };
    let stream = connector
        .connect(endpoint)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let url = format!("ws://{}/", endpoint.addr);
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let connect = serde_json::json!({
        "type": "req", "id": "warren-connect", "method": "connect",
        "params": {
            "minProtocol": 4, "maxProtocol": 4,
            "client": {"id": "cli", "version": env!("CARGO_PKG_VERSION"), "platform": "linux", "mode": "cli"},
            "role": "operator", "scopes": ["operator.read"],
            "caps": [], "commands": [], "permissions": {},
            "auth": {"token": token.expose()}, "locale": "en", "userAgent": "warren"
        }
    });
    let history = serde_json::json!({
        "type": "req", "id": "warren-history", "method": "chat.history",
        "params": {"sessionKey": "main", "limit": limit}
    });
    // The challenge comes first; the connect is answered, then the history.
    let mut sent_history = false;
    ws.send(Message::text(connect.to_string()))
        .await
        .map_err(|e| failed(e.to_string()))?;
    loop {
        let frame = match tokio::time::timeout(HISTORY_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => return Err(failed(e.to_string())),
            Ok(None) => return Err(failed("the connection ended".into())),
            Err(_) => return Err(failed("no answer in time".into())),
        };
        let Ok(frame) = serde_json::from_str::<serde_json::Value>(&frame) else {
            continue;
        };
        if frame["type"] != "res" {
            continue;
        }
        if frame["ok"] != true {
            let message = frame["error"]["message"].as_str().unwrap_or("refused");
            return Err(failed(message.to_owned()));
        }
        match frame["id"].as_str() {
            Some("warren-connect") if !sent_history => {
                sent_history = true;
                ws.send(Message::text(history.to_string()))
                    .await
                    .map_err(|e| failed(e.to_string()))?;
            }
            Some("warren-history") => {
                let _ = ws.close(None).await;
                return Ok(frame["payload"].clone());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    const MASK: [u8; 4] = [1, 2, 3, 4];

    fn masked(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        encode_text(payload, Some(mask))
    }

    fn unmasked_payload(bytes: &[u8]) -> serde_json::Value {
        let header = Header::parse(bytes).unwrap();
        let mask = header.mask;
        let payload: Vec<u8> = bytes[header.at..header.size().unwrap()]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        serde_json::from_slice(&payload).unwrap()
    }

    async fn through(input: Vec<u8>, chunk: usize) -> Vec<u8> {
        filtered(
            input,
            chunk,
            Filter::InjectToken(Secret::new("the-tenant-token")),
        )
        .await
    }

    async fn filtered(input: Vec<u8>, chunk: usize, filter: Filter) -> Vec<u8> {
        // A reader that hands out `chunk` bytes at a time, as a slow client would.
        let (mut writer, reader) = tokio::io::duplex(64);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in input.chunks(chunk) {
                writer.write_all(piece).await.unwrap();
            }
        });
        let mut out = Vec::new();
        Filtered::new(reader, filter)
            .read_to_end(&mut out)
            .await
            .unwrap();
        out
    }

    #[tokio::test]
    async fn a_connect_request_gets_the_tenants_token_whatever_the_client_sent() {
        let connect = serde_json::json!({"type": "req", "id": "c1", "method": "connect",
            "params": {"minProtocol": 4, "auth": {"token": "guessed", "password": "x"}}});
        let first = masked(connect.to_string().as_bytes(), MASK);
        let second = masked(b"{\"type\":\"req\",\"method\":\"chat.send\"}", MASK);
        for chunk in [1, 7, 4096] {
            let out = through([first.clone(), second.clone()].concat(), chunk).await;
            let size = Header::parse(&out).unwrap().size().unwrap();
            let request = unmasked_payload(&out[..size]);
            assert_eq!(
                request["params"]["auth"],
                serde_json::json!({"token": "the-tenant-token"})
            );
            assert_eq!(request["params"]["minProtocol"], 4);
            assert_eq!(&out[size..], &second[..], "the rest passes as it was");
        }
    }

    #[tokio::test]
    async fn other_first_frames_pass_untouched() {
        let other = masked(b"{\"type\":\"req\",\"method\":\"chat.send\"}", MASK);
        let not_json = masked(b"hello", MASK);
        let binary = [&[0x82u8, 0x80 | 2][..], &MASK, &[9, 9]].concat();
        let large = masked(&vec![b' '; 70_000], MASK);
        for input in [other, not_json, binary, large, b"\x81".to_vec(), Vec::new()] {
            assert_eq!(through(input.clone(), 5).await, input);
        }
    }

    fn server_text(value: serde_json::Value) -> Vec<u8> {
        encode_text(value.to_string().as_bytes(), None)
    }

    #[tokio::test]
    async fn a_refusal_of_the_token_is_explained_to_the_user_and_nothing_else_changes() {
        let challenge = server_text(
            serde_json::json!({"type": "event", "event": "connect.challenge",
            "payload": {"nonce": "n"}}),
        );
        let refused = server_text(serde_json::json!({"type": "res", "id": "c1", "ok": false,
            "error": {"code": "INVALID_REQUEST",
                "message": "unauthorized: gateway token mismatch (use this gateway's gateway.auth.token or pair the device)",
                "details": {"code": "AUTH_TOKEN_MISMATCH"}}}));
        let close = b"\x88\x02\x03\xf0".to_vec();
        for chunk in [1, 3, 4096] {
            let input = [challenge.clone(), refused.clone(), close.clone()].concat();
            let out = filtered(input, chunk, Filter::explain_auth()).await;
            assert_eq!(
                &out[..challenge.len()],
                &challenge[..],
                "the challenge passes"
            );
            let (header, answer) = json_frame(&out[challenge.len()..]).unwrap();
            assert!(!header.masked);
            assert_eq!(answer["error"]["message"], AUTH_REFUSED);
            assert_eq!(
                answer["error"]["details"]["code"], "AUTH_TOKEN_MISMATCH",
                "codes stay"
            );
            assert_eq!(answer["id"], "c1");
            let end = challenge.len() + header.size().unwrap();
            assert_eq!(&out[end..], &close[..], "the close passes as it was");
        }
        // A welcome, other refusals and what follows the answer pass untouched.
        let hello = server_text(serde_json::json!({"type": "res", "id": "c1", "ok": true,
            "payload": {"type": "hello-ok"}}));
        let other = server_text(serde_json::json!({"type": "res", "id": "c1", "ok": false,
            "error": {"code": "INVALID_REQUEST", "details": {"code": "PROTOCOL_MISMATCH"}}}));
        for input in [
            [challenge.clone(), hello.clone(), refused.clone()].concat(),
            [other, refused.clone()].concat(),
        ] {
            assert_eq!(
                filtered(input.clone(), 5, Filter::explain_auth()).await,
                input
            );
        }
    }
}
