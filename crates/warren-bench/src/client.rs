//! The benchmark's clients: one HTTP/1.1 keep-alive connection, and one WebSocket.
//! Both set `TCP_NODELAY`, as every proxy under test does towards its upstream.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A response, read to its end.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// One HTTP/1.1 connection, reused for every request.
pub struct HttpConn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl HttpConn {
    pub async fn connect(address: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(address)
            .await
            .with_context(|| format!("cannot connect to {address}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self {
            sender,
            host: address.to_string(),
        })
    }

    /// Whether the connection can take a request: false once the server has closed it
    /// (a client then opens another, without sending anything on this one).
    pub async fn is_open(&mut self) -> bool {
        self.sender.ready().await.is_ok()
    }

    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        cookie: Option<&str>,
        body: Bytes,
    ) -> anyhow::Result<Answer> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.host);
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        self.send(request.body(Full::new(body))?).await
    }

    /// `GET path` with `Authorization: Bearer <token>` (the admin API, `/metrics`).
    pub async fn get_as_admin(&mut self, path: &str, token: &str) -> anyhow::Result<Answer> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(header::HOST, &self.host)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))?;
        self.send(request).await
    }

    async fn send(&mut self, request: Request<Full<Bytes>>) -> anyhow::Result<Answer> {
        self.sender.ready().await.context("the connection closed")?;
        let response = self.sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await?.to_bytes(),
        })
    }

    pub async fn get(&mut self, path: &str, cookie: Option<&str>) -> anyhow::Result<Answer> {
        self.request(Method::GET, path, cookie, Bytes::new()).await
    }

    /// `POST /echo` with `body`; fails unless the same body comes back with 200.
    pub async fn echo(&mut self, cookie: Option<&str>, body: &Bytes) -> anyhow::Result<Answer> {
        let answer = self
            .request(Method::POST, "/echo", cookie, body.clone())
            .await?;
        if answer.status != StatusCode::OK || answer.body != *body {
            bail!(
                "POST /echo answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
        }
        Ok(answer)
    }
}

/// What a WebSocket brought next.
pub enum WsEvent {
    Text(String),
    /// A close frame, with its code if it had one.
    Closed(Option<u16>),
    /// An error, or the end of the stream without a close frame.
    Broken(String),
}

/// One WebSocket to `/ws`.
pub struct WsConn {
    socket: tokio_tungstenite::WebSocketStream<TcpStream>,
}

impl WsConn {
    pub async fn connect(address: SocketAddr, cookie: Option<&str>) -> anyhow::Result<Self> {
        let mut request = format!("ws://{address}/ws").into_client_request()?;
        if let Some(cookie) = cookie {
            request
                .headers_mut()
                .insert(header::COOKIE, cookie.parse()?);
        }
        let stream = TcpStream::connect(address)
            .await
            .with_context(|| format!("cannot connect to {address}"))?;
        stream.set_nodelay(true)?;
        let (socket, _) = tokio_tungstenite::client_async(request, stream)
            .await
            .with_context(|| format!("WebSocket handshake with {address}/ws failed"))?;
        Ok(Self { socket })
    }

    /// Sends `text` and waits for its echo.
    pub async fn round_trip(&mut self, text: &str) -> anyhow::Result<()> {
        self.socket.send(Message::text(text)).await?;
        loop {
            match self.socket.next().await.context("the WebSocket closed")?? {
                Message::Text(echo) if echo.as_str() == text => return Ok(()),
                Message::Text(other) => bail!("expected the echo of {text:?}, got {other:?}"),
                Message::Close(frame) => bail!("the WebSocket closed: {frame:?}"),
                _ => continue,
            }
        }
    }

    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        Ok(self.socket.send(Message::text(text)).await?)
    }

    /// The next text message, or how the connection ended (pings, pongs and binary
    /// messages are skipped; tungstenite answers pings itself).
    pub async fn next_event(&mut self) -> WsEvent {
        loop {
            match self.socket.next().await {
                Some(Ok(Message::Text(text))) => return WsEvent::Text(text.as_str().to_owned()),
                Some(Ok(Message::Close(frame))) => {
                    return WsEvent::Closed(frame.map(|f| u16::from(f.code)));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return WsEvent::Broken(e.to_string()),
                None => return WsEvent::Broken("the connection ended".into()),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
        // Read until the peer's close (briefly), so the proxy sees a clean end.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.socket.next().await {}
        })
        .await;
    }
}

/// `GET path` on a connection of its own, with `Connection: close`, as a fresh client
/// makes it: the status, once the whole answer has been read.
pub async fn get_once(address: SocketAddr, path: &str, cookie: &str) -> anyhow::Result<StatusCode> {
    let mut stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let head = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("no status line in {head:?}"))?;
    Ok(StatusCode::from_u16(status)?)
}

/// Whether an error is a refused connection (nothing listens on the port).
pub fn is_refused(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}
