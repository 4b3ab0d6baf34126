//! `warren echo-agent`: the built-in agent every sandbox runs by default.
//!
//! - `GET /healthz`: 200 once listening (the gateway's readiness probe).
//! - `GET /ws`: a WebSocket that answers each text frame with the same text, after
//!   appending it to `history.jsonl` in the workspace.
//! - `GET /api/history`: `{"messages": [{"at_ms": .., "text": ..}, ..]}`, oldest first.
//! - `/echo`: answers any request with its body (for benchmarks and streaming tests).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::serve::ListenerExt;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use tokio_tungstenite::tungstenite::Message;
use warren_gateway::websocket;

/// The file, in the workspace, that holds every message received.
const HISTORY_FILE: &str = "history.jsonl";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to listen.
    #[arg(long, env = "WARREN_AGENT_ADDR", default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// The workspace that holds the history (default: the current directory).
    #[arg(long, env = "WARREN_WORKSPACE")]
    workspace: Option<PathBuf>,
}

struct Agent {
    history_path: PathBuf,
    history: Mutex<std::fs::File>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    at_ms: u64,
    text: String,
}

impl Agent {
    /// Appends one message to the history file; the reply is sent only after this.
    fn record(&self, text: &str) -> std::io::Result<()> {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut line = serde_json::to_vec(&Entry {
            at_ms,
            text: text.to_owned(),
        })?;
        line.push(b'\n');
        let mut file = self.history.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(&line)
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let workspace = match args.workspace {
        Some(dir) => dir,
        None => std::env::current_dir()?,
    };
    std::fs::create_dir_all(&workspace)
        .with_context(|| format!("cannot create {}", workspace.display()))?;
    let history_path = workspace.join(HISTORY_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&history_path)
        .with_context(|| format!("cannot open {}", history_path.display()))?;
    let agent = Arc::new(Agent {
        history_path,
        history: Mutex::new(file),
    });
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/history", get(history))
        .route("/ws", get(ws))
        .route("/echo", any(|body: Body| async move { body }))
        .with_state(agent);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app).await.context("serving")
        })
}

async fn history(State(agent): State<Arc<Agent>>) -> Response {
    let text = match tokio::fs::read_to_string(&agent.history_path).await {
        Ok(t) => t,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let messages: Vec<Entry> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    axum::Json(serde_json::json!({ "messages": messages })).into_response()
}

async fn ws(State(agent): State<Arc<Agent>>, mut request: Request<Body>) -> Response {
    let Some(response) = websocket::accept(request.headers(), None) else {
        return (StatusCode::BAD_REQUEST, "expected a WebSocket upgrade").into_response();
    };
    let upgrade = websocket::on_upgrade(&mut request);
    tokio::spawn(async move {
        let Ok(mut socket) = websocket::server_stream(upgrade).await else {
            return;
        };
        while let Some(Ok(message)) = socket.next().await {
            let reply = match message {
                Message::Text(text) => {
                    if let Err(e) = agent.record(&text) {
                        eprintln!("echo-agent: cannot record a message: {e}");
                        break;
                    }
                    Message::Text(text)
                }
                Message::Binary(data) => Message::Binary(data),
                // After a close, reading on sends tungstenite's reply and then ends.
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    });
    response
}
