//! `from` on inbox messages is Cradle's word, not the sender's.
//!
//! A PUBLISH a client sends through the edge to `accounts/{a}/clients/{c}/webrtc_inbox` gets
//! its payload's `from` set to the client id the edge authenticated (any `from` the sender
//! wrote is overwritten), so no client of an account can pose as another one in signalling.
//! A payload that is not a JSON object is dropped (acknowledged, logged, counted): there is
//! nowhere to write `from`. The bridge sets `from` the same way for a WebSocket client's
//! `signal` frame (the session's client id).
//!
//! Pure functions: `stamp_from` rewrites a payload, `rebuild_publish` re-encodes a
//! PUBLISH frame with its resolved topic and a new payload, `stamp_publish` does both for
//! an inbox topic.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;

use super::codec::{skip, take_publish_property, take_u16, take_varint, FrameError, Header, Proto};
use crate::topics::{parse_topic, Family};

/// MQTT 5 reason code of the PUBACK (PUBREC) of a dropped inbox message: payload format
/// invalid. MQTT 3.1.1 gets a plain PUBACK.
pub(crate) const PAYLOAD_FORMAT_INVALID: u8 = 0x99;

/// Why an inbox message was dropped at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InboxDrop {
    /// The payload is not a JSON object (not JSON, another JSON value, or empty).
    NotJsonObject,
    /// The PUBLISH frame could not be re-encoded (it did not decode).
    Malformed,
}

impl InboxDrop {
    /// Every reason, in metric order.
    pub(crate) const ALL: [InboxDrop; 2] = [Self::NotJsonObject, Self::Malformed];

    /// Metric label (`cradle_mqtt_messages_dropped_total{family="inbox",reason}`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotJsonObject => "not_json_object",
            Self::Malformed => "malformed",
        }
    }
}

/// Whether `topic` is an inbox, `accounts/{a}/clients/{c}/webrtc_inbox`.
pub(crate) fn is_inbox_topic(topic: &str) -> bool {
    parse_topic(topic).is_some_and(|t| t.family == Family::Inbox)
}

/// The payload with `from` set to `sender_client_id` (overwriting the sender's); other
/// fields are kept. A payload that is not a JSON object is refused.
pub(crate) fn stamp_from(sender_client_id: &str, payload: &[u8]) -> Result<Bytes, InboxDrop> {
    let mut value: Value = serde_json::from_slice(payload).map_err(|_| InboxDrop::NotJsonObject)?;
    let object = value.as_object_mut().ok_or(InboxDrop::NotJsonObject)?;
    object.insert("from".into(), Value::String(sender_client_id.to_string()));
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|_| InboxDrop::NotJsonObject)
}

/// For a PUBLISH to an inbox topic (`topic` resolved from any MQTT 5 alias): the frame to
/// forward, with `from` stamped as `sender_client_id`, the full topic and no alias.
/// `None` for any other topic (forward the frame as it is).
pub(crate) fn stamp_publish(
    frame: &[u8],
    h: &Header,
    proto: Proto,
    topic: &str,
    payload: &[u8],
    sender_client_id: &str,
) -> Option<Result<BytesMut, InboxDrop>> {
    if !is_inbox_topic(topic) {
        return None;
    }
    Some(stamp_from(sender_client_id, payload).and_then(|stamped| {
        rebuild_publish(frame, h, proto, topic, &stamped).map_err(|_| InboxDrop::Malformed)
    }))
}

/// Re-encodes a PUBLISH `frame` with `topic` in full, no topic alias, and `payload`; the
/// flags (DUP, QoS, RETAIN), the packet id and the other MQTT 5 properties are kept.
pub(crate) fn rebuild_publish(
    frame: &[u8],
    h: &Header,
    proto: Proto,
    topic: &str,
    payload: &[u8],
) -> Result<BytesMut, FrameError> {
    let qos = (h.byte1 >> 1) & 0b11;
    let mut body = frame.get(h.header_len..).ok_or(FrameError::Malformed)?;
    let topic_len = take_u16(&mut body)? as usize;
    skip(&mut body, topic_len)?;
    let pkid = if qos > 0 {
        Some(take_u16(&mut body)?)
    } else {
        None
    };
    let mut props = BytesMut::new();
    if proto == Proto::V5 {
        let len = take_varint(&mut body)?;
        let mut all = body.get(..len).ok_or(FrameError::Malformed)?;
        while !all.is_empty() {
            let (id, property) = take_publish_property(&mut all)?;
            if id != 0x23 {
                props.put_slice(property);
            }
        }
    }
    let topic_bytes = topic.as_bytes();
    let topic_len = u16::try_from(topic_bytes.len()).map_err(|_| FrameError::Malformed)?;
    let mut rest = BytesMut::with_capacity(topic_bytes.len() + payload.len() + props.len() + 12);
    rest.put_u16(topic_len);
    rest.put_slice(topic_bytes);
    if let Some(pkid) = pkid {
        rest.put_u16(pkid);
    }
    if proto == Proto::V5 {
        super::codec::put_varint(&mut rest, props.len())?;
        rest.put_slice(&props);
    }
    rest.put_slice(payload);
    let mut out = BytesMut::with_capacity(rest.len() + 5);
    out.put_u8(h.byte1);
    super::codec::put_varint(&mut out, rest.len())?;
    out.put_slice(&rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::codec::{header, publish_view};
    use rumqttc::mqttbytes::v4;
    use rumqttc::v5::mqttbytes::v5;

    fn json(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn a_forged_from_is_overwritten_with_the_authenticated_sender() {
        let out = stamp_from(
            "baby",
            br#"{"from":"pwa","data":{"sdp":"x"},"to_connection":null}"#,
        )
        .unwrap();
        let v = json(&out);
        assert_eq!(v["from"], "baby");
        assert_eq!(v["data"]["sdp"], "x");
        assert!(v.as_object().unwrap().contains_key("to_connection"));
    }

    #[test]
    fn a_message_without_from_gets_the_sender_as_from() {
        let v = json(&stamp_from("baby", br#"{"data":1}"#).unwrap());
        assert_eq!(v["from"], "baby");
        assert_eq!(v["data"], 1);
    }

    #[test]
    fn a_payload_that_is_not_a_json_object_is_dropped() {
        for bad in [
            &b""[..],
            b"hello",
            b"[1,2]",
            b"\"s\"",
            b"42",
            b"null",
            b"{",
            b"\xff",
        ] {
            assert_eq!(
                stamp_from("baby", bad),
                Err(InboxDrop::NotJsonObject),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn only_inbox_topics_are_stamped() {
        assert!(is_inbox_topic("accounts/a/clients/c/webrtc_inbox"));
        assert!(!is_inbox_topic("accounts/a/clients/c/status"));
        assert!(!is_inbox_topic("accounts/a/baby_stations/c"));
        assert!(!is_inbox_topic("x/accounts/a/clients/c/webrtc_inbox"));
        let h = header(&[0x30, 0x02, 0, 0], 100).unwrap().unwrap();
        assert!(stamp_publish(&[0x30, 0x02, 0, 0], &h, Proto::V4, "a/b", b"", "c").is_none());
    }

    #[test]
    fn a_stamped_v4_publish_keeps_its_flags_and_packet_id() {
        let mut p = v4::Publish::new(
            "accounts/a/clients/pwa/webrtc_inbox",
            rumqttc::QoS::AtLeastOnce,
            br#"{"from":"pwa","data":2}"#.to_vec(),
        );
        p.pkid = 7;
        p.retain = true;
        p.dup = true;
        let mut frame = BytesMut::new();
        v4::Packet::Publish(p).write(&mut frame, 1 << 20).unwrap();
        let h = header(&frame, 1 << 20).unwrap().unwrap();
        let view = publish_view(&frame, &h, Proto::V4).unwrap();
        let out = stamp_publish(&frame, &h, Proto::V4, view.topic, view.payload, "baby")
            .unwrap()
            .unwrap();
        let mut buf = out.clone();
        let v4::Packet::Publish(q) = v4::Packet::read(&mut buf, 1 << 20).unwrap() else {
            panic!("not a publish")
        };
        assert_eq!(q.topic, "accounts/a/clients/pwa/webrtc_inbox");
        assert_eq!(
            (q.pkid, q.qos, q.retain, q.dup),
            (7, rumqttc::QoS::AtLeastOnce, true, true)
        );
        assert_eq!(json(&q.payload)["from"], "baby");
        assert_eq!(json(&q.payload)["data"], 2);
    }

    #[test]
    fn a_stamped_v5_publish_loses_its_alias_and_keeps_its_other_properties() {
        let props = v5::PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            topic_alias: Some(3),
            response_topic: Some("r/t".into()),
            correlation_data: Some(Bytes::from_static(b"cd")),
            user_properties: vec![("k".into(), "v".into())],
            subscription_identifiers: vec![],
            content_type: Some("application/json".into()),
        };
        let mut p = v5::Publish::new(
            "",
            rumqttc::v5::mqttbytes::QoS::AtMostOnce,
            br#"{"data":"x"}"#.to_vec(),
            Some(props),
        );
        p.retain = false;
        let mut frame = BytesMut::new();
        v5::Packet::Publish(p).write(&mut frame, None).unwrap();
        let h = header(&frame, 1 << 20).unwrap().unwrap();
        let view = publish_view(&frame, &h, Proto::V5).unwrap();
        assert_eq!((view.topic, view.alias), ("", Some(3)));
        // the topic the alias stood for, as the edge resolved it
        let topic = "accounts/a/clients/baby/webrtc_inbox";
        let out = stamp_publish(&frame, &h, Proto::V5, topic, view.payload, "pwa2")
            .unwrap()
            .unwrap();
        let mut buf = out.clone();
        let v5::Packet::Publish(q) = v5::Packet::read(&mut buf, None).unwrap() else {
            panic!("not a publish")
        };
        assert_eq!(q.topic, topic.as_bytes());
        assert_eq!(json(&q.payload)["from"], "pwa2");
        let props = q.properties.unwrap();
        assert_eq!(props.topic_alias, None);
        assert_eq!(props.payload_format_indicator, Some(1));
        assert_eq!(props.message_expiry_interval, Some(60));
        assert_eq!(props.response_topic.as_deref(), Some("r/t"));
        assert_eq!(props.correlation_data.as_deref(), Some(&b"cd"[..]));
        assert_eq!(
            props.user_properties,
            vec![("k".to_string(), "v".to_string())]
        );
        assert_eq!(props.content_type.as_deref(), Some("application/json"));
    }

    #[test]
    fn a_truncated_frame_is_malformed_not_a_panic() {
        let h = Header {
            byte1: 0x32,
            header_len: 2,
            frame_len: 5,
        };
        for frame in [&[0x32u8, 3, 0][..], &[0x32, 3, 0, 1], &[0x32, 3, 0, 0, 0]] {
            assert!(rebuild_publish(frame, &h, Proto::V5, "t", b"{}").is_err());
        }
    }
}
