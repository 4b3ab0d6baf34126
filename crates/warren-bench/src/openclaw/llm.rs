//! A model provider of the benchmark's own on 127.0.0.1: OpenAI's
//! `POST /v1/chat/completions`, answered at once with the same short stream of
//! server-sent events ("echo", then the end), so that a chat turn's time is OpenClaw's
//! and warren's, not a model's. It counts the completions it served; anything else is
//! answered 404. It stops when dropped.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The whole answer to every completion: one chunk of content, the end, `[DONE]`.
const STREAM: &str = concat!(
    r#"data: {"id":"x","object":"chat.completion.chunk","created":0,"model":"echo-model","choices":[{"index":0,"delta":{"role":"assistant","content":"echo"},"finish_reason":null}]}"#,
    "\n\n",
    r#"data: {"id":"x","object":"chat.completion.chunk","created":0,"model":"echo-model","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
    "\n\n",
    "data: [DONE]\n\n",
);

pub struct FakeLlm {
    pub address: SocketAddr,
    completions: Arc<AtomicUsize>,
    server: JoinHandle<()>,
}

impl FakeLlm {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let address = listener.local_addr()?;
        let completions = Arc::new(AtomicUsize::new(0));
        let served = completions.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let served = served.clone();
                let service =
                    hyper::service::service_fn(move |request| answer(request, served.clone()));
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Ok(Self {
            address,
            completions,
            server,
        })
    }

    /// Completions served so far.
    pub fn completions(&self) -> usize {
        self.completions.load(Ordering::Relaxed)
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer(
    request: Request<Incoming>,
    completions: Arc<AtomicUsize>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let known = request.method() == Method::POST && request.uri().path() == "/v1/chat/completions";
    // The whole request is read first, as a provider would.
    let _ = request.into_body().collect().await;
    let mut response = Response::new(Full::new(Bytes::new()));
    if !known {
        *response.status_mut() = StatusCode::NOT_FOUND;
        return Ok(response);
    }
    completions.fetch_add(1, Ordering::Relaxed);
    *response.body_mut() = Full::new(Bytes::from_static(STREAM.as_bytes()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_of_the_stream_is_one_data_line() {
        let events: Vec<&str> = STREAM.split_terminator("\n\n").collect();
        assert_eq!(events.len(), 3);
        for event in &events[..2] {
            let chunk: serde_json::Value =
                serde_json::from_str(event.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(chunk["object"], "chat.completion.chunk");
        }
        assert_eq!(events[2], "data: [DONE]");
    }
}
