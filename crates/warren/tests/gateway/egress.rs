//! Egress ports: a sandbox with no network reaches its upstream (a model provider)
//! through a port on its own loopback that the gateway serves, with the operator's
//! key put in by the gateway; a restarted gateway serves the sandboxes it takes back.

use super::harness::Gateway;

/// An agent (Python's standard library) that answers `/healthz`, and any other path by
/// asking its egress for the same path (`/down/...` through the `down` egress), with a
/// key of its own guessing, and returning what it got.
const AGENT: &str = r#"
import http.server, os, urllib.error, urllib.request
host, port = os.environ["WARREN_AGENT_ADDR"].rsplit(":", 1)
class Agent(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            body = b"ok"
        else:
            egress = 18791 if self.path.startswith("/down/") else 18790
            ask = urllib.request.Request("http://127.0.0.1:%d%s" % (egress, self.path),
                                         headers={"Authorization": "Bearer the-agents-guess"})
            try:
                body = urllib.request.urlopen(ask, timeout=10).read()
            except urllib.error.HTTPError as e:
                body = b"%d " % e.code + e.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((host, int(port)), Agent).serve_forever()
"#;

/// An upstream on the host's loopback that answers what it was asked, and with what key.
async fn upstream() -> std::net::SocketAddr {
    let answer = |request: axum::extract::Request| async move {
        let key = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("no key")
            .to_owned();
        format!("upstream saw {} with {key}", request.uri())
    };
    let app = axum::Router::new().fallback(answer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn a_sandbox_without_network_reaches_its_upstream_with_a_key_it_never_holds() {
    reaches_its_upstream(0).await;
}

#[tokio::test]
async fn a_pooled_sandbox_reaches_its_upstream_too() {
    reaches_its_upstream(2).await;
}

/// Two tenants' agents ask through their egress, with `pool` sandboxes kept ready (and
/// claimed).
async fn reaches_its_upstream(pool: usize) {
    let up = upstream().await;
    // A port nothing listens on.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("agent.py");
    std::fs::write(&script, AGENT).unwrap();
    let mut gw = Gateway::start_with(
        &format!(
            "sleep_after = \"never\"\n\
             [agent]\nkind = \"command\"\ncommand = [\"/usr/bin/python3\", \"{script}\"]\n\
             [agent.egress.llm]\nupstream = \"http://{up}/base/\"\nport = 18790\napi_key_env = \"OPERATOR_KEY\"\n\
             [agent.egress.down]\nupstream = \"http://{down}\"\nport = 18791\n\
             [runtime]\nro_paths = [\"{script}\"]\npool = {pool}\n",
            script = script.display()
        ),
        &[("OPERATOR_KEY", "sk-the-operators")],
    );
    gw.wait_for_pool(pool as u64);
    let want = "upstream saw /base/v1/models?limit=2 with Bearer sk-the-operators";
    for user in ["user_a", "user_b"] {
        let reply = gw.get_as(user, "/v1/models?limit=2").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body, want, "{user}");
    }
    // An upstream that is not there: the agent gets a 502 with a stable code.
    let reply = gw.get_as("user_a", "/down/x").await;
    assert!(
        reply.body.starts_with("502 ") && reply.body.contains("egress_unreachable"),
        "{}",
        reply.body
    );
    assert!(!gw.log().contains("sk-the-operators"));

    // A restarted gateway takes the same sandbox back and serves its egress again.
    let pid = gw.agent_pid("user_a").await;
    gw.restart();
    let reply = gw.get_as("user_a", "/v1/models?limit=2").await;
    assert_eq!(reply.body, want);
    assert_eq!(
        gw.agent_pid("user_a").await,
        pid,
        "the same sandbox, taken back"
    );
}
