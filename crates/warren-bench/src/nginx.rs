//! nginx as the anchor: a reverse proxy to the same echo agent, configured the way
//! one would for this job (upstream keep-alive, HTTP/1.1 upstream, WebSocket upgrade
//! on `/ws`), with every path it writes in a temporary directory.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use anyhow::Context as _;
use tokio::process::Command;

use crate::launch::{Spawned, free_port, wait_http_ok};

pub struct Nginx {
    pub process: Spawned,
    pub address: SocketAddr,
}

/// The configuration: `keepalive_requests` is raised on both sides so one keep-alive
/// connection stays one connection for a whole run (the default closes it after 1000
/// requests, which warren never does).
fn config(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> String {
    let dir = dir.display();
    format!(
        r#"daemon off;
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;

    upstream agent {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}

    server {{
        listen {listen};

        location / {{
            proxy_pass http://agent;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}

        location /ws {{
            proxy_pass http://agent;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 300s;
        }}
    }}
}}
"#
    )
}

impl Nginx {
    /// Starts `nginx` (the program at `program`) in `dir`, proxying to `upstream`.
    pub async fn start(program: &Path, dir: &Path, upstream: SocketAddr) -> anyhow::Result<Self> {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        std::fs::create_dir_all(dir)?;
        // Workers run as an unprivileged user when nginx starts as root; they must be
        // able to reach the temp paths.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config(dir, address, upstream))?;
        let mut command = Command::new(program);
        command
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null());
        let mut process = Spawned::spawn("nginx", command, &dir.join("stderr.log"))
            .with_context(|| format!("is nginx installed? ({})", program.display()))?;
        wait_http_ok(&mut process, address, "/healthz").await?;
        Ok(Self { process, address })
    }
}
