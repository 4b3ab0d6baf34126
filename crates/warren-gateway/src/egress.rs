//! Egress: ports on a sandbox's own loopback that the gateway serves, forwarding each
//! request to a configured upstream (a model provider) with a credential the sandbox
//! never holds. The listening socket is made inside the sandbox's network namespace,
//! so only that sandbox reaches it, with `network = "none"` as well; what the agent
//! sent as `Authorization` is dropped and the operator's key put in its place.

use std::sync::Arc;

use axum::body::Body;
use axum::response::IntoResponse;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use warren_core::config::EgressConfig;
use warren_core::{ErrorCode, Secret};
use warren_runtime::{Connector, Sandbox};

use crate::error::ApiError;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Incoming>;

/// One egress port of an agent profile, ready to serve.
#[derive(Clone)]
pub struct Route {
    pub name: String,
    pub port: u16,
    /// The upstream's scheme and authority.
    origin: String,
    /// The upstream's path prefix, without a trailing `/`.
    prefix: String,
    key: Option<Arc<Secret>>,
}

impl Route {
    /// `config` with its key read from `env`; the message names what is missing.
    pub fn new(
        name: &str,
        config: &EgressConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let uri: Uri = config
            .upstream
            .parse()
            .map_err(|e| format!("egress.{name}.upstream: {e}"))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(format!(
                "egress.{name}.upstream: {:?} has no scheme or host",
                config.upstream
            ));
        };
        let key = match &config.api_key_env {
            None => None,
            Some(var) => {
                let value = env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
                    format!("egress.{name}.api_key_env: the gateway's environment has no {var}")
                })?;
                HeaderValue::from_str(&format!("Bearer {value}")).map_err(|_| {
                    format!("egress.{name}.api_key_env: {var} is not a valid header value")
                })?;
                Some(Arc::new(Secret::new(value)))
            }
        };
        Ok(Self {
            name: name.to_owned(),
            port: config.port,
            origin: format!("{scheme}://{authority}"),
            prefix: uri.path().trim_end_matches('/').to_owned(),
            key,
        })
    }

    /// The address the agent uses, as its configuration names it.
    pub fn local_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The upstream address of a request for `path_and_query`, which must be a path
    /// (so that it can only extend the upstream's, never change its host).
    fn upstream_uri(&self, path_and_query: &str) -> Option<Uri> {
        if !path_and_query.starts_with('/') {
            return None;
        }
        // A dot segment, raw or encoded, would climb out of the prefix at an upstream
        // that normalizes paths.
        let path = path_and_query.split('?').next().unwrap_or_default();
        let climbs = path.split('/').any(|segment| {
            let segment = segment.to_ascii_lowercase().replace("%2e", ".");
            segment == "." || segment == ".."
        });
        if climbs {
            return None;
        }
        let uri: Uri = format!("{}{}{}", self.origin, self.prefix, path_and_query)
            .parse()
            .ok()?;
        let same =
            uri.authority().map(|a| a.as_str()) == self.origin.split_once("://").map(|(_, a)| a);
        same.then_some(uri)
    }
}

/// The client egress requests go upstream with: HTTP, and HTTPS checked against the
/// system's roots.
#[derive(Clone)]
pub struct Egress {
    client: HttpsClient,
}

impl Egress {
    pub fn new() -> std::io::Result<Self> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    /// Serves `routes` on the loopback of `sandbox` until it ends.
    pub async fn serve(
        &self,
        connector: &Connector,
        sandbox: &Sandbox,
        routes: &[Route],
    ) -> std::io::Result<()> {
        for route in routes {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], route.port));
            let listener = connector
                .listen(sandbox.endpoint.netns.as_ref(), addr)
                .await?;
            let route = route.clone();
            let client = self.client.clone();
            let mut exited = sandbox.exited.clone();
            let tenant = sandbox.tenant.clone();
            tokio::spawn(async move {
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = exited.wait_for(Option::is_some) => return,
                    };
                    let Ok((stream, _)) = accepted else {
                        // Out of descriptors, say: not a reason to spin.
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    };
                    let route = route.clone();
                    let client = client.clone();
                    let tenant = tenant.clone();
                    let service = hyper::service::service_fn(move |request| {
                        let (route, client, tenant) =
                            (route.clone(), client.clone(), tenant.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                forward(&client, &route, &tenant, request).await,
                            )
                        }
                    });
                    // Each connection, and the upstream request it waits on, ends
                    // with the sandbox.
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    let mut exited = exited.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = connection => {}
                            _ = exited.wait_for(Option::is_some) => {}
                        }
                    });
                }
            });
        }
        Ok(())
    }
}

/// How long a connection to an upstream may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long an upstream may take to start its answer (a model's first token).
const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// The pause after a failed accept.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// Hop-by-hop headers, which concern one connection and are not passed on.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Sends `request` upstream with the route's credential; the answer streams back as
/// it comes (a model's tokens, one server-sent event at a time).
async fn forward(
    client: &HttpsClient,
    route: &Route,
    tenant: &warren_core::TenantId,
    request: Request<Incoming>,
) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match route.upstream_uri(path) {
        Some(uri) => uri,
        None => {
            return ApiError::new(ErrorCode::BadRequest, "not a path this egress can forward")
                .into_response();
        }
    };
    // Names listed in `Connection` are hop-by-hop too.
    let listed: Vec<String> = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(listed.iter().map(String::as_str))
    {
        parts.headers.remove(name);
    }
    parts.headers.remove(header::HOST);
    parts.headers.remove(header::AUTHORIZATION);
    if let Some(key) = &route.key {
        let value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
            .expect("checked when the route was made");
        parts.headers.insert(header::AUTHORIZATION, value);
    }
    tracing::debug!(%tenant, egress = %route.name, method = %parts.method, path = parts.uri.path(), "egress");
    let answer = tokio::time::timeout(
        RESPONSE_TIMEOUT,
        client.request(Request::from_parts(parts, body)),
    );
    match answer.await {
        Ok(Ok(response)) => {
            let (mut parts, body) = response.into_parts();
            for name in HOP_BY_HOP {
                parts.headers.remove(name);
            }
            Response::from_parts(parts, Body::new(body))
        }
        failed => {
            let error = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {RESPONSE_TIMEOUT:?}"),
            };
            tracing::warn!(%tenant, egress = %route.name, %error, "egress upstream unreachable");
            let message = format!("egress {} could not reach its upstream", route.name);
            ApiError::new(ErrorCode::EgressUnreachable, message).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(upstream: &str) -> Route {
        let config = EgressConfig {
            upstream: upstream.into(),
            port: 18790,
            api_key_env: Some("KEY".into()),
        };
        Route::new("llm", &config, |_| Some("sk-1".into())).unwrap()
    }

    #[test]
    fn a_request_only_ever_extends_the_upstreams_path() {
        let r = route("https://api.example.com/v1/");
        let uri = |p: &str| r.upstream_uri(p).map(|u| u.to_string());
        assert_eq!(
            uri("/chat/completions?x=1").as_deref(),
            Some("https://api.example.com/v1/chat/completions?x=1")
        );
        assert_eq!(
            uri("//evil.example/x").as_deref(),
            Some("https://api.example.com/v1//evil.example/x")
        );
        for bad in [
            "*",
            "@evil.example/",
            "",
            "/../admin",
            "/a/%2E%2e/b",
            "/./x?q=1",
        ] {
            assert_eq!(uri(bad), None, "{bad}");
        }
        assert_eq!(
            route("http://127.0.0.1:9").local_url(),
            "http://127.0.0.1:18790"
        );
    }

    #[test]
    fn a_key_named_but_not_in_the_environment_is_refused() {
        let config = EgressConfig {
            upstream: "http://x".into(),
            port: 1,
            api_key_env: Some("NOT_SET".into()),
        };
        let error = Route::new("llm", &config, |_| None).err().unwrap();
        assert!(
            error.contains("egress.llm.api_key_env") && error.contains("NOT_SET"),
            "{error}"
        );
    }
}
