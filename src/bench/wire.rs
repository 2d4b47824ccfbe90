//! The bench's own MQTT 3.1.1 framing for the broker-path scenarios: PUBLISH and PUBACK
//! encoded by hand into one buffer, and frames split off a read buffer and read with the
//! edge's own codec (`edge::codec`: fixed header, PUBLISH view, packet id).
//!
//! rumqttc's event loop moves every packet through a channel and a state machine; on two
//! shared cores it took more CPU than either broker under test, so the broker-path figures
//! were the client's. These few functions cost a copy per message and nothing else.

use bytes::{BufMut, Bytes, BytesMut};

use super::BenchError;
use crate::edge::codec::{self, Header, Proto};

pub use codec::kind::{PUBACK, PUBLISH, SUBACK};

/// An MQTT 3.1.1 DISCONNECT.
pub const DISCONNECT: [u8; 2] = [codec::kind::DISCONNECT << 4, 0];

/// One whole frame split off the read buffer.
#[derive(Debug)]
pub struct Frame {
    header: Header,
    frame: Bytes,
}

fn malformed(e: codec::FrameError) -> BenchError {
    BenchError::Target(format!("from the broker: {e}"))
}

impl Frame {
    /// The packet type.
    pub fn kind(&self) -> u8 {
        self.header.kind()
    }

    /// A PUBLISH's packet id (0 at QoS 0) and payload.
    pub fn publish(&self) -> Result<(u16, &[u8]), BenchError> {
        let view = codec::publish_view(&self.frame, &self.header, Proto::V4).map_err(malformed)?;
        Ok((view.pkid, view.payload))
    }

    /// A PUBACK's or SUBACK's packet id (0 when it has none).
    pub fn pkid(&self) -> u16 {
        codec::packet_id(&self.frame, &self.header).unwrap_or(0)
    }
}

fn put_remaining(buf: &mut BytesMut, len: usize) {
    // The bench's frames are far below the 256 MiB limit.
    let _ = crate::edge::codec::put_varint(buf, len);
}

/// Appends a PUBLISH of `payload` on `topic` (`pkid` is written only at QoS 1 and 2).
pub(crate) fn put_publish(buf: &mut BytesMut, topic: &str, qos: u8, pkid: u16, payload: &[u8]) {
    let id = if qos > 0 { 2 } else { 0 };
    buf.put_u8((PUBLISH << 4) | (qos << 1));
    put_remaining(buf, 2 + topic.len() + id + payload.len());
    buf.put_u16(topic.len() as u16);
    buf.put_slice(topic.as_bytes());
    if qos > 0 {
        buf.put_u16(pkid);
    }
    buf.put_slice(payload);
}

/// Appends a PUBACK.
pub(crate) fn put_puback(buf: &mut BytesMut, pkid: u16) {
    codec::put_ack(buf, PUBACK, pkid, Proto::V4, 0, None);
}

/// Appends a SUBSCRIBE of one filter.
pub(crate) fn put_subscribe(buf: &mut BytesMut, pkid: u16, filter: &str, qos: u8) {
    buf.put_u8(0x82);
    put_remaining(buf, 2 + 2 + filter.len() + 1);
    buf.put_u16(pkid);
    buf.put_u16(filter.len() as u16);
    buf.put_slice(filter.as_bytes());
    buf.put_u8(qos);
}

/// Splits the next whole frame off `buf`, or `None` until more bytes arrive.
pub fn next_frame(buf: &mut BytesMut) -> Result<Option<Frame>, BenchError> {
    match codec::header(buf, usize::MAX).map_err(malformed)? {
        Some(header) if buf.len() >= header.frame_len => Ok(Some(Frame {
            header,
            frame: buf.split_to(header.frame_len).freeze(),
        })),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_round_trips_through_the_frame_splitter_in_pieces() {
        let mut wire = BytesMut::new();
        put_publish(&mut wire, "bench/t", 1, 7, &[9u8; 300]);
        put_puback(&mut wire, 8);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in wire.chunks(5) {
            buf.extend_from_slice(chunk);
            while let Some(f) = next_frame(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].kind(), PUBLISH);
        let (pkid, payload) = frames[0].publish().unwrap();
        assert_eq!((pkid, payload.len(), payload[0]), (7, 300, 9));
        assert_eq!((frames[1].kind(), frames[1].pkid()), (PUBACK, 8));
        assert!(buf.is_empty());
    }

    #[test]
    fn a_qos0_publish_has_no_packet_id_and_a_subscribe_encodes_as_rumqttc_reads_it() {
        let mut wire = BytesMut::new();
        put_publish(&mut wire, "t", 0, 99, b"12345678");
        let f = next_frame(&mut wire).unwrap().unwrap();
        assert_eq!(f.publish().unwrap(), (0, &b"12345678"[..]));
        let mut sub = BytesMut::new();
        put_subscribe(&mut sub, 1, "bench/+/t", 1);
        let read = rumqttc::mqttbytes::v4::Packet::read(&mut sub, 1024).unwrap();
        assert!(matches!(read, rumqttc::mqttbytes::v4::Packet::Subscribe(s)
            if s.pkid == 1 && s.filters[0].path == "bench/+/t"));
    }
}
