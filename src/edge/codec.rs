//! Frame-level MQTT helpers for the edge's relay loop.
//!
//! Most packets cross the edge untouched: the relay only needs each frame's boundaries and
//! type, and for a PUBLISH its topic (and, in MQTT 5, a topic alias). Those are read here
//! from the raw bytes without decoding the packet; the packets the edge must change or
//! answer itself (CONNECT, SUBSCRIBE, SUBACK, aliased PUBLISH) go through `rumqttc`'s
//! `mqttbytes` codecs.

use bytes::{BufMut, BytesMut};

/// MQTT control packet types, by the high nibble of the first byte.
pub mod kind {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub(crate) const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;
}

/// The protocol a connection speaks, from its CONNECT's protocol level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// MQTT 3.1.1 (level 4).
    V4,
    /// MQTT 5 (level 5).
    V5,
}

/// Why a frame cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The packet is larger than the configured limit.
    #[error("packet larger than the limit")]
    TooLarge,
    /// The bytes are not an MQTT packet.
    #[error("malformed packet")]
    Malformed,
}

/// One frame's fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The first byte (type and flags).
    pub byte1: u8,
    /// Length of the fixed header (1 + remaining-length bytes).
    pub header_len: usize,
    /// Length of the whole frame.
    pub frame_len: usize,
}

impl Header {
    /// The packet type (see [`kind`]).
    pub fn kind(&self) -> u8 {
        self.byte1 >> 4
    }
}

/// Reads the fixed header at the start of `buf`: `Ok(None)` when more bytes are needed.
pub fn header(buf: &[u8], max_frame: usize) -> Result<Option<Header>, FrameError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    let mut remaining: usize = 0;
    let mut shift = 0;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        remaining += ((b & 0x7f) as usize) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(FrameError::Malformed);
        }
    }
    let frame_len = i + remaining;
    if frame_len > max_frame {
        return Err(FrameError::TooLarge);
    }
    Ok(Some(Header {
        byte1,
        header_len: i,
        frame_len,
    }))
}

/// The protocol level of a CONNECT frame, if it names MQTT 3.1.1 or 5.
pub fn connect_proto(frame: &[u8], h: &Header) -> Option<Proto> {
    let body = frame.get(h.header_len..)?;
    let name_len = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    if body.get(2..2 + name_len)? != b"MQTT" {
        return None;
    }
    match body.get(2 + name_len)? {
        4 => Some(Proto::V4),
        5 => Some(Proto::V5),
        _ => None,
    }
}

/// The parts of a PUBLISH the edge checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishView<'a> {
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// The topic as sent (empty when an MQTT 5 alias stands for it).
    pub topic: &'a str,
    /// Packet id (0 for QoS 0).
    pub pkid: u16,
    /// MQTT 5: the topic alias property, if any.
    pub alias: Option<u16>,
    /// The payload.
    pub payload: &'a [u8],
}

/// Reads the topic, packet id and (MQTT 5) topic alias of a PUBLISH frame without copying.
pub fn publish_view<'a>(
    frame: &'a [u8],
    h: &Header,
    proto: Proto,
) -> Result<PublishView<'a>, FrameError> {
    let qos = (h.byte1 >> 1) & 0b11;
    if qos == 3 {
        return Err(FrameError::Malformed);
    }
    let mut body = frame.get(h.header_len..).ok_or(FrameError::Malformed)?;
    let topic_len = take_u16(&mut body)? as usize;
    let topic = body.get(..topic_len).ok_or(FrameError::Malformed)?;
    let topic = std::str::from_utf8(topic).map_err(|_| FrameError::Malformed)?;
    body = &body[topic_len..];
    let pkid = if qos > 0 { take_u16(&mut body)? } else { 0 };
    let mut alias = None;
    if proto == Proto::V5 {
        let props_len = take_varint(&mut body)?;
        let mut props = body.get(..props_len).ok_or(FrameError::Malformed)?;
        body = &body[props_len..];
        while !props.is_empty() {
            let (id, property) = take_publish_property(&mut props)?;
            if id == 0x23 {
                let mut value = &property[1..];
                alias = Some(take_u16(&mut value)?);
            }
        }
    }
    Ok(PublishView {
        qos,
        topic,
        pkid,
        alias,
        payload: body,
    })
}

/// Reads one MQTT 5 PUBLISH property from the front of `props`: its identifier and its whole
/// bytes (identifier included). An identifier a PUBLISH may not carry is malformed.
pub(crate) fn take_publish_property<'a>(
    props: &mut &'a [u8],
) -> Result<(u8, &'a [u8]), FrameError> {
    let start = *props;
    let (&id, rest) = start.split_first().ok_or(FrameError::Malformed)?;
    *props = rest;
    match id {
        0x01 => skip(props, 1)?,
        0x02 => skip(props, 4)?,
        0x23 => skip(props, 2)?,
        0x03 | 0x08 | 0x09 => {
            let n = take_u16(props)? as usize;
            skip(props, n)?
        }
        0x0B => {
            take_varint(props)?;
        }
        0x26 => {
            for _ in 0..2 {
                let n = take_u16(props)? as usize;
                skip(props, n)?
            }
        }
        _ => return Err(FrameError::Malformed),
    }
    Ok((id, &start[..start.len() - props.len()]))
}

/// The packet id at the start of a PUBACK/PUBREC/PUBREL/PUBCOMP/SUBACK/UNSUBSCRIBE body.
pub fn packet_id(frame: &[u8], h: &Header) -> Result<u16, FrameError> {
    let mut body = frame.get(h.header_len..).ok_or(FrameError::Malformed)?;
    take_u16(&mut body)
}

/// MQTT 5 DISCONNECT's reason code (0 when absent).
pub fn disconnect_reason(frame: &[u8], h: &Header) -> u8 {
    frame.get(h.header_len).copied().unwrap_or(0)
}

/// Reads a big-endian u16 from the front of `b`.
pub(crate) fn take_u16(b: &mut &[u8]) -> Result<u16, FrameError> {
    if b.len() < 2 {
        return Err(FrameError::Malformed);
    }
    let v = u16::from_be_bytes([b[0], b[1]]);
    *b = &b[2..];
    Ok(v)
}

/// Skips `n` bytes at the front of `b`.
pub(crate) fn skip(b: &mut &[u8], n: usize) -> Result<(), FrameError> {
    if b.len() < n {
        return Err(FrameError::Malformed);
    }
    *b = &b[n..];
    Ok(())
}

/// Reads an MQTT variable byte integer from the front of `b`.
pub(crate) fn take_varint(b: &mut &[u8]) -> Result<usize, FrameError> {
    let mut value = 0usize;
    for i in 0..4 {
        let byte = *b.get(i).ok_or(FrameError::Malformed)?;
        value += ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            *b = &b[i + 1..];
            return Ok(value);
        }
    }
    Err(FrameError::Malformed)
}

/// Appends a packet with a packet id and (MQTT 5) an optional reason code: PUBACK, PUBREC,
/// PUBCOMP; with a reason code, MQTT 5 may carry `why` as its Reason String.
pub fn put_ack(
    out: &mut BytesMut,
    kind: u8,
    pkid: u16,
    proto: Proto,
    reason: u8,
    why: Option<&str>,
) {
    out.put_u8(kind << 4);
    if proto == Proto::V5 && reason != 0 {
        // Without a Reason String the property section is left out (MQTT 5 §3.4.2.2.1).
        let why = reason_string(why);
        out.put_u8((3 + why.map_or(0, |w| reason_section_len(Some(w)))) as u8);
        out.put_u16(pkid);
        out.put_u8(reason);
        if why.is_some() {
            put_reason_section(out, why);
        }
    } else {
        out.put_u8(2);
        out.put_u16(pkid);
    }
}

/// The longest Reason String the edge sends: a whole property section stays under 128 bytes
/// (one-byte lengths).
const MAX_REASON_STRING: usize = 100;

/// `why` as it is sent: cut to at most [`MAX_REASON_STRING`] bytes on a character boundary.
/// Every length written for it comes from this one cut.
fn reason_string(why: Option<&str>) -> Option<&str> {
    why.map(|w| {
        let mut end = w.len().min(MAX_REASON_STRING);
        while !w.is_char_boundary(end) {
            end -= 1;
        }
        &w[..end]
    })
}

/// Bytes of the property section holding a (cut) Reason String, property length included.
fn reason_section_len(why: Option<&str>) -> usize {
    why.map_or(1, |w| 4 + w.len())
}

/// Appends a property section: its length, then the (cut) Reason String (0x1F) if any.
fn put_reason_section(out: &mut BytesMut, why: Option<&str>) {
    match why {
        None => out.put_u8(0),
        Some(w) => {
            out.put_u8(3 + w.len() as u8);
            out.put_u8(0x1F);
            out.put_u16(w.len() as u16);
            out.put_slice(w.as_bytes());
        }
    }
}

/// What a refusal or an end the edge sends means at Cradle's edge, for the MQTT 5 Reason
/// String of the packet `kind` carrying reason `code` (`None` for codes the edge never sends).
pub(crate) fn reason_text(kind: u8, code: u8) -> Option<&'static str> {
    Some(match (kind, code) {
        (kind::CONNACK, connack::V5_MALFORMED) => "malformed CONNECT",
        (kind::CONNACK, connack::V5_CLIENT_ID_NOT_VALID) => "client id not valid",
        (kind::CONNACK, connack::V5_NOT_AUTHORIZED) => {
            "not authorized: unknown login or secret, or a client id or Will topic it may not use"
        }
        (kind::CONNACK, connack::V5_SERVER_UNAVAILABLE) => "the broker is unavailable; retry later",
        (kind::CONNACK, connack::V5_SERVER_BUSY) => "server busy; retry later",
        (kind::CONNACK, connack::V5_BANNED) => "banned for a while by an administrator",
        (kind::CONNACK, connack::V5_PACKET_TOO_LARGE) => {
            "CONNECT larger than mqtt.max_connect_bytes"
        }
        (kind::CONNACK, connack::V5_QUOTA_EXCEEDED) => {
            "too many connections (mqtt.max_connections)"
        }
        (kind::CONNACK, connack::V5_PAYLOAD_FORMAT_INVALID) => {
            "a Will on an inbox topic must be a JSON object"
        }
        (kind::CONNACK, connack::V5_RETAIN_NOT_SUPPORTED) => {
            "this Will may not be retained: the topic is never retained or the quota is full"
        }
        (kind::PUBACK | kind::PUBREC, reason::NOT_AUTHORIZED) => {
            "not authorized: the topic is outside what this client may publish"
        }
        (kind::PUBACK | kind::PUBREC, reason::IMPLEMENTATION_SPECIFIC) => {
            "messages on this topic are never retained"
        }
        (kind::PUBACK | kind::PUBREC, reason::QUOTA_EXCEEDED) => {
            "the account's retained message quota is full"
        }
        (kind::SUBACK, reason::NOT_AUTHORIZED) => {
            "not authorized: the filter is outside what this client may read"
        }
        (kind::DISCONNECT, reason::NOT_AUTHORIZED) => {
            "too many refused packets (mqtt.max_violations)"
        }
        (kind::DISCONNECT, reason::PROTOCOL_ERROR) => "protocol error",
        (kind::DISCONNECT, reason::SERVER_SHUTTING_DOWN) => "server shutting down",
        (kind::DISCONNECT, reason::KEEP_ALIVE_TIMEOUT) => "nothing received within 1.5 keep-alives",
        (kind::DISCONNECT, reason::SESSION_TAKEN_OVER) => {
            "another connection with this client id took over"
        }
        (kind::DISCONNECT, reason::TOPIC_ALIAS_INVALID) => {
            "topic alias unknown or over the edge's alias limits"
        }
        (kind::DISCONNECT, reason::PACKET_TOO_LARGE) => "packet larger than mqtt.max_packet_bytes",
        (kind::DISCONNECT, reason::ADMINISTRATIVE_ACTION) => "disconnected by an operator",
        (kind::DISCONNECT, reason::UNSPECIFIED) => "the connection to the broker ended",
        _ => return None,
    })
}

/// Appends PINGRESP.
pub(crate) fn put_pingresp(out: &mut BytesMut) {
    out.put_slice(&[kind::PINGRESP << 4, 0]);
}

/// Appends PINGREQ.
pub(crate) fn put_pingreq(out: &mut BytesMut) {
    out.put_slice(&[kind::PINGREQ << 4, 0]);
}

/// Appends DISCONNECT; MQTT 5 carries `reason` and `why` as its Reason String (MQTT 3.1.1
/// servers send no DISCONNECT, so for V4 this is only used upstream, towards the broker).
pub fn put_disconnect(out: &mut BytesMut, proto: Proto, reason: u8, why: Option<&str>) {
    if proto == Proto::V5 && reason != 0 {
        // reason code and a property section, empty without `why` (some decoders insist on
        // the empty one)
        let why = reason_string(why);
        out.put_slice(&[
            kind::DISCONNECT << 4,
            (1 + reason_section_len(why)) as u8,
            reason,
        ]);
        put_reason_section(out, why);
    } else {
        out.put_slice(&[kind::DISCONNECT << 4, 0]);
    }
}

/// Appends an MQTT 5 DISCONNECT (normal, 0x00) carrying a Session Expiry Interval: the one
/// the client's own DISCONNECT set, relayed to an external broker.
pub(crate) fn put_disconnect_session_expiry(out: &mut BytesMut, secs: u32) {
    // reason, property length 5, Session Expiry Interval (0x11) and its four bytes
    out.put_slice(&[kind::DISCONNECT << 4, 7, 0, 5, 0x11]);
    out.put_u32(secs);
}

/// Appends a CONNACK refusing or accepting the connection with `code` (a 3.1.1 return code
/// or an MQTT 5 reason code, already chosen for `proto`); MQTT 5 carries `why` as its Reason
/// String.
pub fn put_connack(out: &mut BytesMut, proto: Proto, code: u8, why: Option<&str>) {
    match proto {
        Proto::V4 => out.put_slice(&[kind::CONNACK << 4, 2, 0, code]),
        // session present 0, reason, properties (empty without `why`)
        Proto::V5 => {
            let why = reason_string(why);
            out.put_slice(&[
                kind::CONNACK << 4,
                (2 + reason_section_len(why)) as u8,
                0,
                code,
            ]);
            put_reason_section(out, why);
        }
    }
}

/// CONNACK codes the edge sends itself.
pub(crate) mod connack {
    /// 3.1.1: unacceptable protocol version.
    pub(crate) const V4_BAD_PROTOCOL: u8 = 1;
    /// 3.1.1: identifier rejected.
    pub(crate) const V4_IDENTIFIER_REJECTED: u8 = 2;
    /// 3.1.1: server unavailable.
    pub(crate) const V4_SERVER_UNAVAILABLE: u8 = 3;
    /// 3.1.1: not authorized.
    pub(crate) const V4_NOT_AUTHORIZED: u8 = 5;
    /// 5: client identifier not valid.
    pub(crate) const V5_CLIENT_ID_NOT_VALID: u8 = 0x85;
    /// 5: not authorized.
    pub(crate) const V5_NOT_AUTHORIZED: u8 = 0x87;
    /// 5: banned (an administrator banned the client for a while).
    pub(crate) const V5_BANNED: u8 = 0x8A;
    /// 5: server unavailable.
    pub(crate) const V5_SERVER_UNAVAILABLE: u8 = 0x88;
    /// 5: quota exceeded (connection limit).
    pub(crate) const V5_QUOTA_EXCEEDED: u8 = 0x97;
    /// MQTT 5: server busy.
    pub(crate) const V5_SERVER_BUSY: u8 = 0x89;
    /// MQTT 5: packet too large.
    pub(crate) const V5_PACKET_TOO_LARGE: u8 = 0x95;
    /// MQTT 5: retain not supported (a retained Will on a topic that is never retained).
    pub(crate) const V5_RETAIN_NOT_SUPPORTED: u8 = 0x9A;
    /// MQTT 5: payload format invalid (an inbox Will that is not a JSON object).
    pub(crate) const V5_PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    /// 5: malformed packet.
    pub(crate) const V5_MALFORMED: u8 = 0x81;
}

/// MQTT 5 reason codes the edge sends itself in PUBACK/PUBREC/SUBACK/DISCONNECT.
pub mod reason {
    pub(crate) const NOT_AUTHORIZED: u8 = 0x87;
    /// PUBACK/PUBREC: implementation specific error (a retained message on a topic that is
    /// never retained).
    pub(crate) const IMPLEMENTATION_SPECIFIC: u8 = 0x83;
    /// PUBACK/PUBREC: quota exceeded (the account's retained quota).
    pub(crate) const QUOTA_EXCEEDED: u8 = 0x97;
    pub(crate) const PROTOCOL_ERROR: u8 = 0x82;
    /// DISCONNECT: unspecified error (the link to the broker ended).
    pub(crate) const UNSPECIFIED: u8 = 0x80;
    pub(crate) const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub(crate) const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    pub(crate) const SESSION_TAKEN_OVER: u8 = 0x8E;
    pub(crate) const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub(crate) const PACKET_TOO_LARGE: u8 = 0x95;
    pub(crate) const ADMINISTRATIVE_ACTION: u8 = 0x98;
    /// DISCONNECT from a client: "disconnect with Will message".
    pub(crate) const DISCONNECT_WITH_WILL: u8 = 0x04;
}

/// Appends an MQTT variable byte integer (a remaining length); over 268,435,455 is
/// `TooLarge`.
pub(crate) fn put_varint(out: &mut BytesMut, mut n: usize) -> Result<(), FrameError> {
    if n > 268_435_455 {
        return Err(FrameError::TooLarge);
    }
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if n == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_disconnect_with_a_session_expiry_reads_back_as_one() {
        let mut out = BytesMut::new();
        super::put_disconnect_session_expiry(&mut out, 300);
        match rumqttc::v5::mqttbytes::v5::Packet::read(&mut out, None) {
            Ok(rumqttc::v5::mqttbytes::v5::Packet::Disconnect(d)) => {
                assert_eq!(
                    d.properties.and_then(|p| p.session_expiry_interval),
                    Some(300)
                );
            }
            other => panic!("{other:?}"),
        }
    }

    use super::*;
    use bytes::Bytes;
    use rumqttc::mqttbytes::v4;
    use rumqttc::v5::mqttbytes::v5;

    fn v4_publish(topic: &str, qos: rumqttc::QoS, pkid: u16) -> BytesMut {
        let mut p = v4::Publish::new(topic, qos, b"hello".to_vec());
        p.pkid = pkid;
        let mut out = BytesMut::new();
        v4::Packet::Publish(p).write(&mut out, 1 << 20).unwrap();
        out
    }

    #[test]
    fn a_header_needs_all_its_length_bytes() {
        assert_eq!(header(&[], 100), Ok(None));
        assert_eq!(header(&[0x30], 100), Ok(None));
        assert_eq!(header(&[0x30, 0x80], 100), Ok(None));
        let h = header(&[0x30, 0x05], 100).unwrap().unwrap();
        assert_eq!((h.kind(), h.header_len, h.frame_len), (3, 2, 7));
    }

    #[test]
    fn a_frame_over_the_limit_is_too_large_before_it_arrives() {
        assert_eq!(header(&[0x30, 0xff, 0x7f], 1000), Err(FrameError::TooLarge));
        assert_eq!(
            header(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], 1 << 30),
            Err(FrameError::Malformed)
        );
    }

    #[test]
    fn a_v4_publish_view_reads_topic_pkid_and_payload() {
        let f = v4_publish("accounts/a/clients/c/status", rumqttc::QoS::AtLeastOnce, 7);
        let h = header(&f, 1 << 20).unwrap().unwrap();
        let v = publish_view(&f, &h, Proto::V4).unwrap();
        assert_eq!(v.topic, "accounts/a/clients/c/status");
        assert_eq!((v.qos, v.pkid, v.alias), (1, 7, None));
        assert_eq!(v.payload, b"hello");
    }

    #[test]
    fn a_v5_publish_view_finds_the_topic_alias_among_other_properties() {
        let props = v5::PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            topic_alias: Some(3),
            response_topic: Some("r".into()),
            correlation_data: Some(Bytes::from_static(b"x")),
            user_properties: vec![("k".into(), "v".into())],
            subscription_identifiers: vec![],
            content_type: Some("json".into()),
        };
        let p = v5::Publish::new(
            "",
            rumqttc::v5::mqttbytes::QoS::AtMostOnce,
            "hi",
            Some(props),
        );
        let mut f = BytesMut::new();
        v5::Packet::Publish(p).write(&mut f, None).unwrap();
        let h = header(&f, 1 << 20).unwrap().unwrap();
        let v = publish_view(&f, &h, Proto::V5).unwrap();
        assert_eq!(v.topic, "");
        assert_eq!(v.alias, Some(3));
        assert_eq!(v.payload, b"hi");
    }

    #[test]
    fn a_truncated_publish_is_malformed_not_a_panic() {
        let f = v4_publish("abc", rumqttc::QoS::AtLeastOnce, 1);
        let h = header(&f, 1 << 20).unwrap().unwrap();
        for cut in h.header_len..f.len() - 5 {
            assert!(publish_view(&f[..cut], &h, Proto::V4).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn connect_proto_reads_the_level() {
        let mut f = BytesMut::new();
        v4::Packet::Connect(v4::Connect::new("c"))
            .write(&mut f, 1 << 20)
            .unwrap();
        let h = header(&f, 1 << 20).unwrap().unwrap();
        assert_eq!(connect_proto(&f, &h), Some(Proto::V4));
        let mut f = BytesMut::new();
        v5::Packet::Connect(
            v5::Connect {
                keep_alive: 10,
                client_id: "c".into(),
                clean_start: true,
                properties: None,
            },
            None,
            None,
        )
        .write(&mut f, None)
        .unwrap();
        let h = header(&f, 1 << 20).unwrap().unwrap();
        assert_eq!(connect_proto(&f, &h), Some(Proto::V5));
    }

    #[test]
    fn acks_match_the_codec() {
        let mut out = BytesMut::new();
        put_ack(
            &mut out,
            kind::PUBACK,
            9,
            Proto::V4,
            reason::NOT_AUTHORIZED,
            Some("x"),
        );
        let p = v4::Packet::read(&mut out, 100).unwrap();
        assert_eq!(p, v4::Packet::PubAck(v4::PubAck::new(9)));
        let mut out = BytesMut::new();
        put_ack(
            &mut out,
            kind::PUBACK,
            9,
            Proto::V5,
            reason::NOT_AUTHORIZED,
            None,
        );
        match v5::Packet::read(&mut out, None).unwrap() {
            v5::Packet::PubAck(a) => {
                assert_eq!(a.pkid, 9);
                assert_eq!(a.reason, v5::PubAckReason::NotAuthorized);
            }
            other => panic!("{other:?}"),
        }
    }
    /// Given a refusal with a Reason String, when rumqttc reads the packet, then it has the
    /// code and the string, on CONNACK, PUBACK, PUBREC and DISCONNECT alike.
    #[test]
    fn reason_strings_decode_with_rumqttc() {
        let why = reason_text(kind::PUBACK, reason::QUOTA_EXCEEDED);
        let mut out = BytesMut::new();
        put_ack(
            &mut out,
            kind::PUBREC,
            7,
            Proto::V5,
            reason::QUOTA_EXCEEDED,
            why,
        );
        match v5::Packet::read(&mut out, None).unwrap() {
            v5::Packet::PubRec(a) => {
                assert_eq!(a.reason, v5::PubRecReason::QuotaExceeded);
                assert_eq!(a.properties.unwrap().reason_string.as_deref(), why);
            }
            other => panic!("{other:?}"),
        }
        let why = reason_text(kind::CONNACK, connack::V5_NOT_AUTHORIZED);
        let mut out = BytesMut::new();
        put_connack(&mut out, Proto::V5, connack::V5_NOT_AUTHORIZED, why);
        match v5::Packet::read(&mut out, None).unwrap() {
            v5::Packet::ConnAck(a) => {
                assert_eq!(a.code, v5::ConnectReturnCode::NotAuthorized);
                assert_eq!(a.properties.unwrap().reason_string.as_deref(), why);
            }
            other => panic!("{other:?}"),
        }
        let long = "é".repeat(80);
        let mut out = BytesMut::new();
        put_disconnect(&mut out, Proto::V5, reason::PROTOCOL_ERROR, Some(&long));
        match v5::Packet::read(&mut out, None).unwrap() {
            v5::Packet::Disconnect(d) => {
                assert_eq!(d.reason_code, v5::DisconnectReasonCode::ProtocolError);
                let got = d.properties.unwrap().reason_string.unwrap();
                assert_eq!(got, "é".repeat(50), "cut at a character boundary");
            }
            other => panic!("{other:?}"),
        }
        // A character across the cut: the lengths written are those of the cut string.
        let across = format!("ab{}", "€".repeat(40));
        for proto_packet in 0..3 {
            let mut out = BytesMut::new();
            match proto_packet {
                0 => put_disconnect(&mut out, Proto::V5, reason::PROTOCOL_ERROR, Some(&across)),
                1 => put_connack(&mut out, Proto::V5, connack::V5_MALFORMED, Some(&across)),
                _ => put_ack(&mut out, kind::PUBACK, 3, Proto::V5, 0x87, Some(&across)),
            }
            let h = header(&out, 1 << 10).unwrap().unwrap();
            assert_eq!(
                h.frame_len,
                out.len(),
                "remaining length matches what was written"
            );
            v5::Packet::read(&mut out, None).expect("decodes");
        }
    }
}
