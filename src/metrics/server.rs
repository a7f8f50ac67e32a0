//! The readiness latch and the HTTP server for `/metrics`, `/healthz` and `/readyz`.
//!
//! At most [`MAX_CONNECTIONS`] connections are open at once, each with a bounded read buffer.
//! When a new one arrives at the cap, the connection whose last request (or accept) is the
//! oldest is closed to make room: silent connections, however many, cannot lock the scraper out.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics};

/// Connections open at once (the server is meant for a scraper and a health checker, usually on
/// loopback). A new connection beyond it closes the one idle the longest.
const MAX_CONNECTIONS: usize = 64;
/// Read buffer cap per connection (hyper's minimum is 8 KiB; its default ~400 KiB): request
/// headers larger than this are refused, and memory stays bounded at the connection cap.
const MAX_BUF_SIZE: usize = 16 * 1024;
/// A client must send its request headers within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, open requests get this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Whether the agent is ready: set after its first check round, read by `/readyz` and for
/// systemd's `READY=1`. Cheap to clone; all clones share one state.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<watch::Sender<bool>>);

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    /// Not ready yet.
    pub fn new() -> Self {
        Self(Arc::new(watch::Sender::new(false)))
    }

    pub fn set_ready(&self, ready: bool) {
        self.0.send_replace(ready);
    }

    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }

    /// Wait until ready (returns at once if already ready).
    pub async fn wait_ready(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|ready| *ready).await;
    }
}

/// Binding the metrics listener failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Bind the metrics listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// Serve `GET /metrics` (text format 0.0.4), `/healthz` (200 "ok" while the process runs) and
/// `/readyz` (200 when `readiness` is set, else 503) until `shutdown` is cancelled; then stop
/// accepting, let open requests finish (bounded) and return. Other paths get 404, methods other
/// than GET and HEAD 405. Makes `ccm_agent_ready` follow `readiness`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    metrics.attach_readiness(&readiness);
    let app = Arc::new(App { metrics, readiness });
    let tracker = TaskTracker::new();
    let connections = Arc::new(Connections::default());
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(error = %e, "metrics server: accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let admitted = connections.admit();
        let app = app.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let evicted = admitted.evicted.clone();
            let service = service_fn(move |req| {
                admitted.touch();
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.handle(&req)) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_BUF_SIZE);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "metrics server: connection ended with an error");
                    }
                }
                _ = evicted.cancelled() => {
                    tracing::debug!("metrics server: too many connections, closed the one idle the longest");
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
                }
            }
        });
    }
    drop(listener);
    tracker.close();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await;
}

/// The open connections, each with the sequence number of its latest activity (accept or
/// request), so that one over the cap closes the least recently active instead of being refused.
#[derive(Default)]
struct Connections {
    open: Mutex<HashMap<u64, Open>>,
    sequence: AtomicU64,
}

struct Open {
    last_active: Arc<AtomicU64>,
    evict: CancellationToken,
}

impl Connections {
    fn next(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a new connection; at the cap, first evicts the least recently active one.
    fn admit(self: &Arc<Self>) -> Admitted {
        let id = self.next();
        let last_active = Arc::new(AtomicU64::new(id));
        let evicted = CancellationToken::new();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        while open.len() >= MAX_CONNECTIONS {
            let Some(oldest) = open
                .iter()
                .min_by_key(|(_, c)| c.last_active.load(Ordering::Relaxed))
                .map(|(id, _)| *id)
            else {
                break;
            };
            if let Some(c) = open.remove(&oldest) {
                c.evict.cancel();
            }
        }
        open.insert(
            id,
            Open {
                last_active: last_active.clone(),
                evict: evicted.clone(),
            },
        );
        Admitted {
            id,
            last_active,
            evicted,
            connections: self.clone(),
        }
    }
}

/// One connection's place in [`Connections`]; leaving it (the task ending) frees the place.
struct Admitted {
    id: u64,
    last_active: Arc<AtomicU64>,
    /// Cancelled when a newer connection takes this one's place.
    evicted: CancellationToken,
    connections: Arc<Connections>,
}

impl Admitted {
    /// A request arrived: this connection is now the most recently active.
    fn touch(&self) {
        self.last_active
            .store(self.connections.next(), Ordering::Relaxed);
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self
            .connections
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        open.remove(&self.id);
    }
}

struct App {
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

impl App {
    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        match req.uri().path() {
            "/metrics" => match self.metrics.encode() {
                Ok(body) => {
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
                    resp
                }
                Err(e) => {
                    tracing::error!(error = %e, "metrics server: encoding metrics failed");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "encoding metrics failed\n",
                    )
                }
            },
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.readiness.is_ready() => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
