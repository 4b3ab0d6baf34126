//! Starts the real `warren` binary on 127.0.0.1:0 with a config of the test's choosing,
//! and talks to it over real sockets: HTTP through hyper, WebSockets through
//! tokio-tungstenite. Dropping a `Gateway` stops it and every sandbox it ran (SIGINT),
//! also those a `stop` (SIGTERM) or a `crash` left running.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use warren_core::TenantId;
use warren_core::auth::Signer;
use warren_core::sandbox::SandboxState;
use warren_state::{SqliteStore, StateStore};

/// How often a test looks again at a condition it waits for.
pub const POLL: Duration = Duration::from_millis(20);

pub const SECRET: &str = "test-signing-secret-0123456789abcdef";

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub stderr: PathBuf,
    env: Vec<(String, String)>,
    /// A `stop` or `crash` may have left sandboxes running.
    left_sandboxes: bool,
    signer: Signer,
    client: Client<HttpConnector, Full<Bytes>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub bytes: Bytes,
    /// The body as text, lossily.
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The stable error code of an error reply.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Starts `warren serve` with `<dir>/warren.toml` and data in `<dir>/data`, listening on
/// `listen` (an address, or `takeover` to take the running gateway's socket); returns
/// once it printed its address.
fn spawn(dir: &Path, listen: &str, env: &[(String, String)], stderr: &Path) -> (Child, SocketAddr) {
    try_spawn(dir, listen, env, stderr).unwrap_or_else(|e| panic!("{e}"))
}

fn try_spawn(
    dir: &Path,
    listen: &str,
    env: &[(String, String)],
    stderr: &Path,
) -> Result<(Child, SocketAddr), String> {
    let how = match listen {
        "takeover" => vec!["--takeover"],
        addr => vec!["--listen", addr],
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(stderr)
        .unwrap();
    let mut child = Command::new(warren_bin())
        .arg("serve")
        .args(how)
        .arg("--config")
        .arg(dir.join("warren.toml"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("WARREN_SIGNING_SECRET")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run warren: {e}"))?;
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line);
    match line
        .trim()
        .strip_prefix("warren listening on http://")
        .and_then(|a| a.parse().ok())
    {
        Some(addr) => Ok((child, addr)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "gateway did not start: {line:?}\n{}",
                std::fs::read_to_string(stderr).unwrap_or_default()
            ))
        }
    }
}

/// A directory with `warren.toml` (`config` plus the test secret), its data dir
/// (`data`) not made yet.
pub fn config_dir(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("warren.toml"),
        format!("{config}\n[auth]\nsigning_secret = \"{SECRET}\"\n"),
    )
    .unwrap();
    dir
}

pub fn warren_bin() -> &'static str {
    env!("CARGO_BIN_EXE_warren")
}

/// Config for an agent that is `/bin/sh -c <script>`, which may run the echo agent as
/// `warren_bin() echo-agent`: the warren binary is made visible in the sandbox wherever
/// the checkout is (under `/tmp`, say, which sandboxes see as their own).
pub fn shell_agent(script: &str) -> String {
    format!(
        "[agent]\nkind = \"command\"\ncommand = [\"/bin/sh\", \"-c\", \"{script}\"]\n\
         [runtime]\nro_paths = [\"{}\"]\n",
        warren_bin()
    )
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Gateway {
    /// Starts `warren serve` with `config` (TOML) plus the test secret.
    pub fn start(config: &str) -> Self {
        Self::start_with(config, &[])
    }

    pub fn start_with(config: &str, env: &[(&str, &str)]) -> Self {
        Self::start_in(config_dir(config), env)
    }

    /// Starts `warren serve` on `dir`, made by `config_dir` (and perhaps prepared since).
    pub fn start_in(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Self {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let stderr = dir.path().join("gateway.log");
        let (child, addr) = spawn(dir.path(), "127.0.0.1:0", &env, &stderr);
        Self {
            child,
            addr,
            dir,
            stderr,
            env,
            left_sandboxes: false,
            signer: Signer::new(SECRET.as_bytes()),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Stops the gateway (SIGTERM, waiting for it to exit) and starts a new one with
    /// the same config and data dir on the same address, as an upgrade would.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Kills the gateway with SIGKILL (a crash) and waits for it to be gone.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.left_sandboxes = true;
    }

    /// Starts a successor with `--takeover` (an upgrade): it takes the listening socket
    /// and the sandboxes. Returns the old gateway's process, which drains and exits.
    pub fn take_over(&mut self) -> Child {
        let (child, addr) = spawn(self.dir.path(), "takeover", &self.env, &self.stderr);
        assert_eq!(addr, self.addr);
        std::mem::replace(&mut self.child, child)
    }

    /// Starts a stopped gateway again, on the same address, config and data dir.
    pub fn start_again(&mut self) {
        let (child, addr) = spawn(
            self.dir.path(),
            &self.addr.to_string(),
            &self.env,
            &self.stderr,
        );
        assert_eq!(addr, self.addr);
        self.child = child;
        self.left_sandboxes = false;
        // Kept-alive connections went with the old process.
        self.client = Client::builder(TokioExecutor::new()).build_http();
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `userId=..&exp=..&sig=..`, valid for an hour.
    pub fn query(&self, user: &str) -> String {
        self.signer
            .query(&TenantId::parse(user).unwrap(), now_secs() + 3600)
    }

    /// `<user>.<exp>.<sig>`, for the header and the cookie.
    pub fn token(&self, user: &str) -> String {
        self.signer
            .token(&TenantId::parse(user).unwrap(), now_secs() + 3600)
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    pub async fn request(&self, request: Request<Full<Bytes>>) -> Reply {
        let response = self
            .client
            .request(request)
            .await
            .expect("the gateway answers");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            bytes: body,
        }
    }

    pub async fn get(&self, path_and_query: &str) -> Reply {
        self.request(
            Request::get(self.url(path_and_query))
                .body(Full::default())
                .unwrap(),
        )
        .await
    }

    /// Waits until the runtime's warm pool holds `ready` empty sandboxes (`/readyz`).
    /// Plain blocking HTTP: callable from sync code inside a test's runtime.
    pub fn wait_for_pool(&self, ready: u64) {
        use std::io::{Read as _, Write as _};
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut stream = std::net::TcpStream::connect(self.addr).unwrap();
            write!(stream, "GET /readyz HTTP/1.0\r\nHost: warren\r\n\r\n").unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
            let readyz: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            if readyz["pool_ready"].as_u64() == Some(ready) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the pool never held {ready}: {answer}"
            );
            std::thread::sleep(POLL);
        }
    }

    /// A call of the admin API (or `/metrics`) with the gateway's admin token.
    pub async fn admin(&self, method: http::Method, path: &str, body: &str) -> Reply {
        let token = std::fs::read_to_string(self.data_dir().join("admin-token")).unwrap();
        let request = Request::builder()
            .method(method)
            .uri(self.url(path))
            .header("authorization", format!("Bearer {}", token.trim()))
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        self.request(request).await
    }

    /// GET with the user's credential as query parameters.
    pub async fn get_as(&self, user: &str, path: &str) -> Reply {
        let sep = if path.contains('?') { '&' } else { '?' };
        self.get(&format!("{path}{sep}{}", self.query(user))).await
    }

    pub async fn status(&self, user: &str) -> serde_json::Value {
        let reply = self.get_as(user, "/api/status").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()
    }

    pub async fn state(&self, user: &str) -> String {
        self.status(user).await["state"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Polls `/api/status` until the user's sandbox is in `state`.
    pub async fn wait_for_state(&self, user: &str, state: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let now = self.state(user).await;
            if now == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{user} stayed {now}, expected {state}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn history(&self, user: &str) -> Vec<String> {
        let reply = self.get_as(user, "/api/history").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Opens `/ws` as `user`, authenticated by query parameters.
    pub async fn ws(&self, user: &str) -> Ws {
        let url = format!("ws://{}/ws?{}", self.addr, self.query(user));
        let (ws, response) = tokio_tungstenite::connect_async(url.into_client_request().unwrap())
            .await
            .expect("upgrade");
        assert_eq!(response.status(), 101);
        ws
    }

    /// The state store the gateway writes, opened beside it.
    pub fn state_store(&self) -> SqliteStore {
        SqliteStore::open(&self.data_dir().join("state.db")).unwrap()
    }

    /// The pid of the user's running agent, from the state store.
    pub async fn agent_pid(&self, user: &str) -> u32 {
        let record = self
            .state_store()
            .sandbox(&TenantId::parse(user).unwrap())
            .await
            .unwrap()
            .expect("a sandbox record");
        assert_eq!(record.state, SandboxState::Ready);
        record.identity.and_then(|i| i.pid).expect("a pid")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM: the gateway exits and leaves running sandboxes for the next one.
    /// Returns its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.left_sandboxes = true;
        self.end(nix::sys::signal::Signal::SIGTERM)
    }

    /// SIGINT: the gateway stops every sandbox, then exits. Returns its exit status.
    pub fn shut_down(&mut self) -> std::process::ExitStatus {
        self.end(nix::sys::signal::Signal::SIGINT)
    }

    /// Sends `signal`, then waits for the gateway to exit (SIGKILL after 30 s).
    fn end(&mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().unwrap();
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.shut_down();
        } else if self.left_sandboxes {
            // A gateway of the same data dir takes them back, then stops them all
            // (without panicking: this may run while a failed test unwinds).
            let listen = self.addr.to_string();
            if let Ok((child, _)) = try_spawn(self.dir.path(), &listen, &self.env, &self.stderr) {
                self.child = child;
                self.shut_down();
            }
        }
    }
}

/// Sends a text message and returns the next text message received.
/// The close frame that comes next on `ws` (other messages skipped), within `within`.
pub async fn next_close(
    ws: &mut Ws,
    within: Duration,
) -> Option<tokio_tungstenite::tungstenite::protocol::CloseFrame> {
    loop {
        match tokio::time::timeout(within, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no close within {within:?}"))
        {
            Some(Ok(Message::Close(frame))) => return frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

pub async fn echo(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an echo within 10 s")
        {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text echo, got {other:?}"),
        }
    }
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits until `pid` is gone.
pub async fn wait_gone(pid: u32, within: Duration) {
    let deadline = Instant::now() + within;
    while process_alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still alive");
        tokio::time::sleep(POLL).await;
    }
}

/// Runs `warren` with arguments; returns (exit code, stdout, stderr).
pub fn run_warren(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(warren_bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("WARREN_SIGNING_SECRET")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
