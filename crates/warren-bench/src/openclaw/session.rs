//! A user's client of OpenClaw through warren: a WebSocket to `/ws` with a signed
//! URL, OpenClaw's own protocol (v4) on it. The client sends no token: warren puts
//! the tenant's into the `connect` request. Every wait has a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// How long the upgrade may wait: a whole start (`start_timeout` is 120 s) and more.
const UPGRADE_DEADLINE: Duration = Duration::from_secs(150);
/// How long OpenClaw may stay silent while an answer is due.
const FRAME_DEADLINE: Duration = Duration::from_secs(60);

pub struct Session {
    socket: WebSocketStream<TcpStream>,
}

impl Session {
    /// Opens `/ws?<query>`: returns once warren has answered the upgrade (after the
    /// start, if the sandbox was asleep), with the `Server-Timing` of that answer, which
    /// only an upgrade that waited for a start carries.
    pub async fn open(address: SocketAddr, query: &str) -> anyhow::Result<(Self, Option<String>)> {
        let request = format!("ws://{address}/ws?{query}").into_client_request()?;
        let stream = TcpStream::connect(address)
            .await
            .with_context(|| format!("cannot connect to {address}"))?;
        stream.set_nodelay(true)?;
        let upgrade = tokio_tungstenite::client_async(request, stream);
        let (socket, response) = tokio::time::timeout(UPGRADE_DEADLINE, upgrade)
            .await
            .with_context(|| format!("no answer to the upgrade within {UPGRADE_DEADLINE:?}"))?
            .context("the WebSocket upgrade failed")?;
        let timing = response
            .headers()
            .get("server-timing")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((Self { socket }, timing))
    }

    /// OpenClaw's handshake: its `connect.challenge`, then a `connect` without a token;
    /// fails unless the answer is `hello-ok`.
    pub async fn connect(&mut self) -> anyhow::Result<()> {
        let challenge = self.next_frame().await?;
        ensure!(
            challenge["event"] == "connect.challenge",
            "OpenClaw's first frame should be its connect.challenge, was {challenge}"
        );
        self.send(json!({
            "type": "req", "id": "c1", "method": "connect",
            "params": {
                "minProtocol": 4, "maxProtocol": 4,
                "client": {"id": "cli", "version": "1", "platform": "linux", "mode": "cli"},
                "role": "operator", "scopes": ["operator.read", "operator.write"],
                "caps": [], "commands": [], "permissions": {}, "auth": {},
                "locale": "en", "userAgent": "warren-bench"
            }
        }))
        .await?;
        loop {
            let frame = self.next_frame().await?;
            if frame["type"] == "res" && frame["id"] == "c1" {
                ensure!(
                    frame["ok"] == true && frame["payload"]["type"] == "hello-ok",
                    "the connect was refused: {frame}"
                );
                return Ok(());
            }
        }
    }

    /// Sends `message` to session `main` (`chat.send`, `id` also its idempotency key)
    /// and waits for the final `chat` event of the reply; fails on an `error` or
    /// `aborted` one.
    pub async fn chat(&mut self, id: &str, message: &str) -> anyhow::Result<()> {
        self.send(json!({
            "type": "req", "id": id, "method": "chat.send",
            "params": {"sessionKey": "main", "message": message, "idempotencyKey": id}
        }))
        .await?;
        loop {
            let frame = self.next_frame().await?;
            if frame["type"] == "res" && frame["id"] == id {
                ensure!(frame["ok"] == true, "chat.send was refused: {frame}");
            }
            if frame["event"] == "chat" {
                // Between them come `delta` and `status` (what OpenClaw is doing).
                match frame["payload"]["state"].as_str() {
                    Some("final") => return Ok(()),
                    Some("error" | "aborted") => bail!("the reply failed: {frame}"),
                    _ => {}
                }
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.socket.next().await {}
        })
        .await;
    }

    async fn send(&mut self, frame: Value) -> anyhow::Result<()> {
        Ok(self.socket.send(Message::text(frame.to_string())).await?)
    }

    /// The next text frame, as JSON.
    async fn next_frame(&mut self) -> anyhow::Result<Value> {
        loop {
            let message = tokio::time::timeout(FRAME_DEADLINE, self.socket.next())
                .await
                .with_context(|| format!("OpenClaw said nothing for {FRAME_DEADLINE:?}"))?
                .context("the WebSocket ended")??;
            match message {
                Message::Text(text) => return Ok(serde_json::from_str(text.as_str())?),
                Message::Close(frame) => bail!("the WebSocket was closed: {frame:?}"),
                _ => continue,
            }
        }
    }
}
