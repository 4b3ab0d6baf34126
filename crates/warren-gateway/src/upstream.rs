//! Upstreams: how the gateway's HTTP client reaches sandboxes. Every sandbox gets a
//! name of its own (`g<generation>.sandbox`), which keys the connection pool, and the
//! connector maps that name to the sandbox's endpoint, entering its network namespace
//! through the runtime's connector. Many sandboxes listen on the same `127.0.0.1` port,
//! each in its own namespace; their names keep their connections apart.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context as TaskContext, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use warren_runtime::{Connector, Endpoint};

/// A sandbox as the proxy addresses it.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The authority of URIs to this sandbox, e.g. `g1795873594556.sandbox`.
    pub authority: String,
    pub endpoint: Endpoint,
}

/// The name-to-endpoint table, and the connector the HTTP client uses.
#[derive(Clone)]
pub struct Upstreams {
    routes: Arc<RwLock<HashMap<String, Endpoint>>>,
    connector: Connector,
}

impl Upstreams {
    pub fn new(connector: Connector) -> Self {
        Self {
            routes: Arc::default(),
            connector,
        }
    }

    pub fn insert(&self, generation: u64, endpoint: Endpoint) -> Upstream {
        let authority = format!("g{generation}.sandbox");
        self.routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(authority.clone(), endpoint.clone());
        Upstream {
            authority,
            endpoint,
        }
    }

    pub fn remove(&self, upstream: &Upstream) {
        self.routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&upstream.authority);
    }

    pub fn connector(&self) -> &Connector {
        &self.connector
    }
}

type Connecting =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<tokio::net::TcpStream>>> + Send>>;

impl tower_service::Service<Uri> for Upstreams {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let endpoint = uri.host().and_then(|host| {
            self.routes
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(host)
                .cloned()
        });
        let connector = self.connector.clone();
        Box::pin(async move {
            let endpoint =
                endpoint.ok_or_else(|| std::io::Error::other("no such sandbox (it stopped)"))?;
            Ok(TokioIo::new(connector.connect(&endpoint).await?))
        })
    }
}
