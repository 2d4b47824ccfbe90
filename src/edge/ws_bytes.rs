//! MQTT over WebSocket as a byte stream: every binary message's bytes are read in order, and
//! every write goes out as one binary message (the MQTT session writes whole packets).
//!
//! Built on tokio-tungstenite, the WebSocket stack the bridge (`/ws`, through axum) uses, so
//! Cradle carries one. Pings are answered and a client's close is answered with a close by
//! tungstenite itself; a text message is not MQTT: the socket is closed with `1003`
//! (unsupported data) and the session reads the end of the stream.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// A WebSocket connection read and written as bytes.
pub(crate) struct WsBytes<S> {
    ws: WebSocketStream<S>,
    /// What is left of the last binary message read.
    pending: Bytes,
    /// A close this side must still send (after a text message), then end of stream.
    refusing: Option<CloseFrame>,
    /// The stream ended (closed, or refused).
    done: bool,
}

impl<S> WsBytes<S> {
    /// Wraps an accepted WebSocket.
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            pending: Bytes::new(),
            refusing: None,
            done: false,
        }
    }
}

fn to_io(error: WsError) -> io::Error {
    match error {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::ErrorKind::NotConnected.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsBytes<S> {
    /// Sends the close of a refused socket (`1003` after a text message), then ends.
    fn poll_refuse(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut ws = Pin::new(&mut self.ws);
        if let Some(frame) = self.refusing.take() {
            match ws.as_mut().poll_ready(cx) {
                Poll::Pending => {
                    self.refusing = Some(frame);
                    return Poll::Pending;
                }
                Poll::Ready(Ok(())) => {
                    let _ = ws.as_mut().start_send(Message::Close(Some(frame)));
                }
                Poll::Ready(Err(_)) => {}
            }
        }
        let _ = ready!(ws.poll_flush(cx));
        self.done = true;
        Poll::Ready(())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsBytes<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.refusing.is_some() {
                ready!(this.poll_refuse(cx));
            }
            if this.done {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(bytes))) => this.pending = bytes,
                Some(Ok(Message::Text(_))) => {
                    this.refusing = Some(CloseFrame {
                        code: CloseCode::Unsupported,
                        reason: "Text messages are not supported".into(),
                    });
                }
                // Pings are answered, and a close is answered, by tungstenite on the next
                // poll; the stream then ends.
                Some(Ok(_)) => {}
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) | None => {
                    this.done = true;
                }
                Some(Err(error)) => return Poll::Ready(Err(to_io(error))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsBytes<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut ws = Pin::new(&mut self.get_mut().ws);
        ready!(ws.as_mut().poll_ready(cx)).map_err(to_io)?;
        ws.start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(to_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(to_io)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.get_mut().ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(error) => Poll::Ready(Err(to_io(error))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// A server-side `WsBytes` and a client WebSocket, joined by an in-memory pipe.
    async fn pair() -> (
        WsBytes<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
        let client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        (WsBytes::new(server), client)
    }

    #[tokio::test]
    async fn binary_messages_read_as_one_byte_stream_and_writes_leave_as_messages() {
        let (mut server, mut client) = pair().await;
        client.send(Message::binary(vec![1, 2, 3])).await.unwrap();
        client.send(Message::binary(vec![4, 5])).await.unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [1, 2, 3, 4, 5]);
        server.write_all(&[9, 8, 7]).await.unwrap();
        server.flush().await.unwrap();
        let message = client.next().await.unwrap().unwrap();
        assert_eq!(message, Message::binary(vec![9, 8, 7]));
    }

    #[tokio::test]
    async fn a_client_close_is_answered_and_ends_the_stream() {
        let (mut server, mut client) = pair().await;
        client.close(None).await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0);
        // The client sees the server's close answer, then the end.
        let answer = client.next().await.unwrap().unwrap();
        assert!(matches!(answer, Message::Close(_)), "{answer:?}");
    }

    #[tokio::test]
    async fn a_text_message_is_refused_with_1003_and_ends_the_stream() {
        let (mut server, mut client) = pair().await;
        client.send(Message::text("hello")).await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0);
        let Message::Close(Some(frame)) = client.next().await.unwrap().unwrap() else {
            panic!("a close frame was expected");
        };
        assert_eq!(frame.code, CloseCode::Unsupported);
    }
}
