//! Serves the HTTP API with hyper directly, with the bounds `axum::serve` does not have:
//!
//! - **header timeout** (`http.header_timeout_ms`): a connection that has not sent a request's
//!   complete headers in time is closed. The clock runs whenever the server waits for a
//!   request, so an idle keep-alive connection is closed after the same time (counted as
//!   `cradle_http_idle_closed_total` when it has served a request before, else as
//!   `cradle_http_refused_total{reason="header_timeout"}`);
//! - **body timeout** (`http.body_timeout_ms`): a request body not fully received in time is
//!   cut; a handler still reading it answers 408 and the connection is closed
//!   (`reason="body_timeout"`);
//! - **connection cap** (`http.max_connections`): a connection beyond it is accepted, answered
//!   `503` with a JSON body (when the socket takes it at once) and closed immediately, so it
//!   holds a descriptor for microseconds only (`reason="connection_limit"`). An upgraded
//!   WebSocket leaves the count: the bridge bounds its sessions;
//! - **write timeout** (`http.write_timeout_ms`): a response the client takes no byte of in
//!   time closes the connection (`reason="write_timeout"`), so a client that never reads
//!   cannot hold a slot for ever. Not applied once the connection is upgraded to a WebSocket
//!   (the bridge has `websocket.write_timeout_ms`);
//! - request headers larger than `MAX_HEADER_BYTES` are refused with 431 by hyper.
//!
//! Graceful shutdown as before: when `stop` resolves the listener closes, idle connections
//! close, requests in flight finish, and the future returns once every connection has ended.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::metrics::{HttpMetrics, HttpRefusal};
use super::ApiError;
use crate::config::HttpConfig;

/// A response extension: the response streams for as long as the client follows it (the
/// live event stream), so its connection leaves `http.max_connections`' count once the
/// response starts (`stream.max_followers` bounds those instead).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeavesCount;

/// Largest request head (request line and headers) hyper buffers; larger ones get 431.
pub(crate) const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The bounds of the HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// See `http.header_timeout_ms`.
    pub header_timeout: Duration,
    /// See `http.body_timeout_ms`.
    pub body_timeout: Duration,
    /// See `http.max_connections`.
    pub(crate) max_connections: usize,
    /// See `http.write_timeout_ms`.
    pub write_timeout: Duration,
}

impl From<&HttpConfig> for Limits {
    fn from(c: &HttpConfig) -> Self {
        Self {
            header_timeout: Duration::from_millis(c.header_timeout_ms),
            body_timeout: Duration::from_millis(c.body_timeout_ms),
            max_connections: c.max_connections,
            write_timeout: Duration::from_millis(c.write_timeout_ms),
        }
    }
}

/// Serves `app` on `listener` until `stop` resolves, then drains (see the module docs).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<HttpMetrics>,
    stop: impl Future<Output = ()>,
) {
    let app = app.layer(axum::middleware::from_fn_with_state(
        (limits.body_timeout, metrics.clone()),
        body_deadline,
    ));
    let max = limits.max_connections.clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(max));
    let refusal = refusal_response();
    let (close_tx, close_rx) = watch::channel(false);
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of descriptors (EMFILE) or a connection reset before it was
                    // accepted: pause rather than spin, then go on.
                    tracing::warn!(%error, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.refused(HttpRefusal::ConnectionLimit);
            tracing::debug!(%peer, limit = max, "HTTP connection refused: http.max_connections reached");
            // A fresh socket's send buffer is empty, so this write does not block; if it
            // cannot be written at once, the connection is closed without an answer.
            let _ = stream.try_write(refusal.as_bytes());
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            peer,
            app.clone(),
            limits,
            metrics.clone(),
            close_rx.clone(),
            slot,
        ));
    }
    drop(listener);
    let _ = close_tx.send(true);
    // Every connection holds a slot until it ends.
    let _ = slots.acquire_many(max as u32).await;
}

/// The raw answer to a connection over the cap.
fn refusal_response() -> String {
    let body = serde_json::json!({"error": {
        "code": "too_many_connections",
        "message": "http.max_connections reached: retry later",
    }})
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Moves `cradle_http_connections` for as long as it lives.
struct OpenConnection(Arc<HttpMetrics>);

impl OpenConnection {
    fn new(metrics: Arc<HttpMetrics>) -> Self {
        metrics.open.fetch_add(1, Relaxed);
        metrics.accepted.fetch_add(1, Relaxed);
        Self(metrics)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

async fn connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    app: Router,
    limits: Limits,
    metrics: Arc<HttpMetrics>,
    mut close: watch::Receiver<bool>,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let _open = OpenConnection::new(metrics.clone());
    let slot = Arc::new(std::sync::Mutex::new(Some(slot)));
    let held = slot.clone();
    let requests = Arc::new(AtomicU64::new(0));
    let counted = requests.clone();
    let upgraded = Arc::new(AtomicBool::new(false));
    let switched = upgraded.clone();
    let write_timed_out = Arc::new(AtomicBool::new(false));
    let io = WriteDeadline {
        io: stream,
        limit: limits.write_timeout,
        stalled: None,
        upgraded,
        timed_out: write_timed_out.clone(),
    };
    let tower = TowerToHyperService::new(app);
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            counted.fetch_add(1, Relaxed);
            // The caller's address: secret verifications are limited per source address.
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let response = hyper::service::Service::call(&tower, request);
            let switched = switched.clone();
            let held = held.clone();
            async move {
                let response = response.await?;
                note_response(&response, &switched, &held);
                Ok::<_, std::convert::Infallible>(response)
            }
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut closing = false;
    let result = loop {
        tokio::select! {
            result = conn.as_mut() => break result,
            _ = close.wait_for(|c| *c), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(error) = result {
        if write_timed_out.load(Relaxed) {
            metrics.refused(HttpRefusal::WriteTimeout);
            tracing::debug!("HTTP connection closed: the client took no response byte within http.write_timeout_ms");
        } else if error.is_timeout() {
            if requests.load(Relaxed) == 0 {
                metrics.refused(HttpRefusal::HeaderTimeout);
                tracing::debug!("HTTP connection closed: no complete request headers within http.header_timeout_ms");
            } else {
                metrics.idle_closed.fetch_add(1, Relaxed);
            }
        } else {
            tracing::trace!(%error, "HTTP connection ended with an error");
        }
    }
}

/// What a response says of its connection: an upgrade (the write deadline no longer
/// applies), or a stream that leaves `http.max_connections`' count (its slot is released).
fn note_response<B>(
    response: &axum::http::Response<B>,
    upgraded: &AtomicBool,
    slot: &std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
) {
    if response.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS {
        upgraded.store(true, Relaxed);
    }
    if response.extensions().get::<LeavesCount>().is_some() {
        drop(slot.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

/// The connection's socket: a write that makes no progress for `limit` fails (and the
/// connection ends), until the connection is upgraded.
struct WriteDeadline {
    io: TcpStream,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    upgraded: Arc<AtomicBool>,
    timed_out: Arc<AtomicBool>,
}

impl WriteDeadline {
    fn progress<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending if self.upgraded.load(Relaxed) => Poll::Pending,
            Poll::Pending => {
                let limit = self.limit;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.timed_out.store(true, Relaxed);
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "http.write_timeout_ms: the client takes no response",
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncRead for WriteDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.progress(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.progress(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.progress(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Gives every request body `http.body_timeout_ms` from the request's headers to arrive;
/// past it, the body is cut, and a handler that was reading it answers 408 (`Connection:
/// close`: the rest of the body is never read).
async fn body_deadline(
    State((timeout, metrics)): State<(Duration, Arc<HttpMetrics>)>,
    request: Request,
    next: Next,
) -> Response {
    let cut = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            cut: cut.clone(),
        })
    });
    let response = next.run(request).await;
    if !cut.load(Relaxed) {
        return response;
    }
    metrics.refused(HttpRefusal::BodyTimeout);
    tracing::debug!("HTTP request body cut: not received within http.body_timeout_ms");
    let mut response = ApiError::BodyTimeout(timeout.as_millis() as u64).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The body did not arrive within `http.body_timeout_ms`.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within http.body_timeout_ms")]
pub(crate) struct BodyTimedOut;

/// A request body that fails with [`BodyTimedOut`] once its deadline has passed while more of
/// it is awaited.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    cut: Arc<AtomicBool>,
}

impl HttpBody for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.cut.load(Relaxed) {
            return Poll::Ready(Some(Err(BodyTimedOut.into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.cut.store(true, Relaxed);
                    Poll::Ready(Some(Err(BodyTimedOut.into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_complete_http_response_with_a_json_body() {
        let r = refusal_response();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "too_many_connections");
    }
}
