//! Property tests of the parsers hostile input reaches first: the edge's frame codec
//! (`edge::codec`), the topic contract (`topics`), the ACL (`edge::acl`) and the bridge's
//! client frames (`ws::protocol`). Every parser must answer any bytes without panicking, and
//! what Cradle builds must parse back to what it was built from.
//!
//! `PROPTEST_CASES=10000 cargo test --release --test properties` runs a longer search.

use bytes::{Bytes, BytesMut};
use cradle::domain::connection::{parse_status_payload, ConnectionCommand, DisconnectReason};
use cradle::edge::acl::{is_valid_filter, may_publish, may_subscribe, Principal};
use cradle::edge::codec::{
    connect_proto, disconnect_reason, header, kind, packet_id, publish_view, put_ack, put_connack,
    put_disconnect, FrameError, Header, Proto,
};
use cradle::topics::{
    is_valid_id, parse_status_topic, status_topic, ClientKey, DropReason, MAX_ID_LEN,
};
use cradle::ws::protocol::{parse_client_frame, stamp, ClientFrame, ServerFrame};
use proptest::prelude::*;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use serde_json::Value;

/// A valid id: 1 to 128 of `A-Z a-z 0-9 - _ . : @`.
fn id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:@-]{1,128}"
}

/// Strings rich in what topic and id parsers get wrong.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z/+#$é日 .:@_-]{0,40}",
        proptest::collection::vec(
            prop_oneof![
                Just("accounts"),
                Just("clients"),
                Just("status"),
                Just("webrtc_inbox"),
                Just("baby_stations"),
                Just("a"),
                Just("b"),
                Just("+"),
                Just("#"),
                Just(""),
                Just("é"),
                Just("$SYS"),
                Just("$share"),
            ],
            0..8
        )
        .prop_map(|levels| levels.join("/")),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        // floats that survive serde_json's parser exactly (it is not exact for every f64:
        // without its `float_roundtrip` feature the last digit may change)
        prop::sample::select(vec![0.5, -2.25, 1e10, 1.5e-5, f64::MAX]).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn reason() -> impl Strategy<Value = DisconnectReason> {
    prop_oneof![
        Just(DisconnectReason::Clean),
        Just(DisconnectReason::Lost),
        Just(DisconnectReason::KeepaliveTimeout),
        Just(DisconnectReason::Takeover),
        Just(DisconnectReason::ServerShutdown),
        Just(DisconnectReason::Kicked),
        Just(DisconnectReason::SlowConsumer),
    ]
}

fn v5_qos(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

fn v4_qos(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

proptest! {
    // ---------------------------------------------------------------- edge::codec

    /// Any bytes: a header, a need for more bytes, or an error; never a panic, and a header
    /// it reads is consistent with the bytes and the limit.
    #[test]
    fn codec_header_reads_any_bytes(buf in proptest::collection::vec(any::<u8>(), 0..16), max in 0usize..(1 << 29)) {
        if let Ok(Some(h)) = header(&buf, max) {
            prop_assert_eq!(h.byte1, buf[0]);
            prop_assert!((2..=5).contains(&h.header_len), "{:?}", h);
            prop_assert!(h.frame_len >= h.header_len);
            prop_assert!(h.frame_len <= max);
            prop_assert_eq!(h.kind(), buf[0] >> 4);
        }
    }

    /// The frame readers accept any bytes with any header, even one that lies about the
    /// frame (as a header of a truncated or spliced frame would).
    #[test]
    fn codec_readers_never_panic(
        frame in proptest::collection::vec(any::<u8>(), 0..300),
        byte1 in any::<u8>(),
        header_len in 0usize..320,
        frame_len in any::<usize>(),
    ) {
        let h = Header { byte1, header_len, frame_len };
        for proto in [Proto::V4, Proto::V5] {
            let _ = publish_view(&frame, &h, proto);
        }
        let _ = connect_proto(&frame, &h);
        let _ = packet_id(&frame, &h);
        let _ = disconnect_reason(&frame, &h);
    }

    /// Any bytes framed by `header` itself, as the relay loop does.
    #[test]
    fn codec_readers_accept_whatever_header_accepts(
        frame in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        if let Ok(Some(h)) = header(&frame, 1 << 20) {
            if h.frame_len <= frame.len() {
                let frame = &frame[..h.frame_len];
                for proto in [Proto::V4, Proto::V5] {
                    if let Ok(v) = publish_view(frame, &h, proto) {
                        prop_assert!(v.qos < 3);
                        prop_assert!(v.topic.len() + v.payload.len() <= frame.len());
                    }
                }
                let _ = connect_proto(frame, &h);
                let _ = packet_id(frame, &h);
                let _ = disconnect_reason(frame, &h);
            }
        }
    }

    /// An MQTT 3.1.1 PUBLISH built by rumqttc reads back as built.
    #[test]
    fn codec_v4_publish_round_trips(
        topic in any::<String>(),
        qos in 0u8..3,
        pkid in 1u16..,
        payload in proptest::collection::vec(any::<u8>(), 0..200),
        retain in any::<bool>(),
    ) {
        let mut p = v4::Publish::new(topic.clone(), v4_qos(qos), payload.clone());
        p.retain = retain;
        if qos > 0 {
            p.pkid = pkid;
        }
        let mut out = BytesMut::new();
        v4::Packet::Publish(p).write(&mut out, 1 << 20).unwrap();
        let h = header(&out, 1 << 20).unwrap().unwrap();
        prop_assert_eq!(h.frame_len, out.len());
        prop_assert_eq!(h.kind(), kind::PUBLISH);
        let v = publish_view(&out, &h, Proto::V4).unwrap();
        prop_assert_eq!(v.topic, topic.as_str());
        prop_assert_eq!(v.qos, qos);
        prop_assert_eq!(v.pkid, if qos > 0 { pkid } else { 0 });
        prop_assert_eq!(v.alias, None);
        prop_assert_eq!(v.payload, &payload[..]);
    }

    /// An MQTT 5 PUBLISH with any mix of properties reads back as built, its alias found
    /// among the others.
    #[test]
    fn codec_v5_publish_round_trips(
        topic in any::<String>(),
        qos in 0u8..3,
        pkid in 1u16..,
        payload in proptest::collection::vec(any::<u8>(), 0..200),
        format in proptest::option::of(0u8..2),
        expiry in proptest::option::of(any::<u32>()),
        alias in proptest::option::of(any::<u16>()),
        response_topic in proptest::option::of(any::<String>()),
        correlation in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
        user in proptest::collection::vec((any::<String>(), any::<String>()), 0..3),
        content_type in proptest::option::of(any::<String>()),
    ) {
        let props = v5::PublishProperties {
            payload_format_indicator: format,
            message_expiry_interval: expiry,
            topic_alias: alias,
            response_topic,
            correlation_data: correlation.map(Bytes::from),
            user_properties: user,
            subscription_identifiers: vec![],
            content_type,
        };
        let mut p = v5::Publish::new(topic.clone(), v5_qos(qos), payload.clone(), Some(props));
        if qos > 0 {
            p.pkid = pkid;
        }
        let mut out = BytesMut::new();
        v5::Packet::Publish(p).write(&mut out, None).unwrap();
        let h = header(&out, 1 << 24).unwrap().unwrap();
        prop_assert_eq!(h.frame_len, out.len());
        let v = publish_view(&out, &h, Proto::V5).unwrap();
        prop_assert_eq!(v.topic, topic.as_str());
        prop_assert_eq!(v.qos, qos);
        prop_assert_eq!(v.pkid, if qos > 0 { pkid } else { 0 });
        prop_assert_eq!(v.alias, alias);
        prop_assert_eq!(v.payload, &payload[..]);
    }

    /// Every cut of a valid PUBLISH short of its end is an error, never a panic nor a
    /// different PUBLISH with a shorter topic.
    #[test]
    fn codec_truncated_publish_is_refused(
        topic in "[a-z/]{1,40}",
        qos in 1u8..3,
        pkid in 1u16..,
        props in any::<bool>(),
        cut_at in any::<prop::sample::Index>(),
    ) {
        let mut out = BytesMut::new();
        let proto = if props {
            let pp = v5::PublishProperties { topic_alias: Some(3), ..Default::default() };
            let mut p = v5::Publish::new(topic.clone(), v5_qos(qos), "x", Some(pp));
            p.pkid = pkid;
            v5::Packet::Publish(p).write(&mut out, None).unwrap();
            Proto::V5
        } else {
            let mut p = v4::Publish::new(topic.clone(), v4_qos(qos), "x");
            p.pkid = pkid;
            v4::Packet::Publish(p).write(&mut out, 1 << 20).unwrap();
            Proto::V4
        };
        let h = header(&out, 1 << 20).unwrap().unwrap();
        // cut inside the variable header (topic, packet id, properties): the payload is
        // the last byte, and at least it is cut off
        let end = out.len() - 1;
        let cut = h.header_len + cut_at.index(end - h.header_len);
        prop_assert_eq!(publish_view(&out[..cut], &h, proto), Err(FrameError::Malformed));
    }

    /// The protocol level of any CONNECT rumqttc builds.
    #[test]
    fn codec_connect_proto_reads_the_level(client_id in any::<String>(), keep_alive in any::<u16>()) {
        let mut out = BytesMut::new();
        let mut c = v4::Connect::new(client_id.clone());
        c.keep_alive = keep_alive;
        v4::Packet::Connect(c).write(&mut out, 1 << 20).unwrap();
        let h = header(&out, 1 << 20).unwrap().unwrap();
        prop_assert_eq!(connect_proto(&out, &h), Some(Proto::V4));
        let mut out = BytesMut::new();
        v5::Packet::Connect(
            v5::Connect { keep_alive, client_id, clean_start: true, properties: None },
            None,
            None,
        )
        .write(&mut out, None)
        .unwrap();
        let h = header(&out, 1 << 20).unwrap().unwrap();
        prop_assert_eq!(connect_proto(&out, &h), Some(Proto::V5));
    }

    /// What the edge writes itself decodes with rumqttc, and `packet_id` reads it back.
    #[test]
    fn codec_written_acks_decode(pkid in 1u16.., reason in any::<u8>(), which in 0usize..3) {
        let k = [kind::PUBACK, kind::PUBREC, kind::PUBCOMP][which];
        let mut out = BytesMut::new();
        put_ack(&mut out, k, pkid, Proto::V4, reason, Some("why"));
        let h = header(&out, 100).unwrap().unwrap();
        prop_assert_eq!(packet_id(&out, &h), Ok(pkid));
        let p = v4::Packet::read(&mut out, 100).unwrap();
        let got = match p {
            v4::Packet::PubAck(a) => a.pkid,
            v4::Packet::PubRec(a) => a.pkid,
            v4::Packet::PubComp(a) => a.pkid,
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        };
        prop_assert_eq!(got, pkid);
        let mut out = BytesMut::new();
        put_ack(&mut out, k, pkid, Proto::V5, reason, Some("why"));
        let h = header(&out, 100).unwrap().unwrap();
        prop_assert_eq!(packet_id(&out, &h), Ok(pkid));
    }

    #[test]
    fn codec_written_connack_and_disconnect_decode(code in any::<u8>(), reason in any::<u8>()) {
        let mut out = BytesMut::new();
        put_connack(&mut out, Proto::V4, code, Some("why"));
        let h = header(&out, 100).unwrap().unwrap();
        prop_assert_eq!((h.kind(), h.frame_len), (kind::CONNACK, out.len()));
        let mut out = BytesMut::new();
        put_connack(&mut out, Proto::V5, code, Some("why"));
        let h = header(&out, 100).unwrap().unwrap();
        prop_assert_eq!((h.kind(), h.frame_len), (kind::CONNACK, out.len()));
        let mut out = BytesMut::new();
        put_disconnect(&mut out, Proto::V5, reason, Some("why"));
        let h = header(&out, 100).unwrap().unwrap();
        prop_assert_eq!(h.frame_len, out.len());
        prop_assert_eq!(disconnect_reason(&out, &h), reason);
    }

    // ---------------------------------------------------------------- topics

    #[test]
    fn topics_status_topic_round_trips(a in id(), c in id()) {
        prop_assert_eq!(
            parse_status_topic(&status_topic(&a, &c)),
            Ok(ClientKey { account_id: a, client_id: c })
        );
    }

    /// Any string: a key only when the string is exactly that key's status topic.
    #[test]
    fn topics_status_topic_parses_any_string(t in nasty_string()) {
        if let Ok(key) = parse_status_topic(&t) {
            prop_assert!(is_valid_id(&key.account_id) && is_valid_id(&key.client_id));
            prop_assert_eq!(status_topic(&key.account_id, &key.client_id), t);
        }
    }

    /// `is_valid_id` is exactly its documented rule.
    #[test]
    fn topics_valid_id_is_the_documented_charset(s in prop_oneof![any::<String>(), id(), "[a-z/+#é ]{0,3}"]) {
        let rule = !s.is_empty()
            && s.len() <= MAX_ID_LEN
            && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c));
        prop_assert_eq!(is_valid_id(&s), rule);
    }

    /// Any payload: a command or a drop reason; never a panic, never over the size limit.
    #[test]
    fn topics_status_payload_parses_any_bytes(
        payload in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            json().prop_map(|v| v.to_string().into_bytes()),
        ],
        max in 0usize..300,
    ) {
        let r = parse_status_payload(&payload, max);
        if payload.len() > max {
            prop_assert_eq!(r, Err(DropReason::Oversize));
        } else if let Ok(cmd) = r {
            prop_assert!(is_valid_id(cmd.connection_id()));
        }
    }

    /// A well-formed status (as a device writes it) parses to the command it states.
    #[test]
    fn topics_status_payload_round_trips(
        connection_id in id(),
        at_millis in 1i64..,
        connected in any::<bool>(),
        reason in proptest::option::of(reason()),
    ) {
        let payload = if connected {
            serde_json::json!({"type": "connected", "connection_id": connection_id, "at_millis": at_millis})
        } else {
            let mut v = serde_json::json!({"type": "disconnected", "connection_id": connection_id, "at_millis": at_millis});
            if let Some(r) = reason {
                v["reason"] = r.as_str().into();
            }
            v
        };
        let cmd = parse_status_payload(payload.to_string().as_bytes(), 4096).unwrap();
        let expected = if connected {
            ConnectionCommand::Connect { connection_id, at_millis, edge: None, observed: false }
        } else {
            ConnectionCommand::Disconnect {
                connection_id,
                reason: reason.unwrap_or(DisconnectReason::Lost),
                at_millis,
                edge: None,
            }
        };
        prop_assert_eq!(cmd, expected);
    }

    // ---------------------------------------------------------------- edge::acl

    /// Tenancy: whatever a device of `a` may publish or subscribe lies under `accounts/a/`,
    /// has no wildcard in a published topic, and no `$` filter passes but a shared
    /// subscription (`$share/{group}/`) whose filter does.
    #[test]
    fn acl_a_device_stays_in_its_account(
        a in id(),
        c in id(),
        other in nasty_string(),
        levels in proptest::collection::vec(0usize..14, 1..7),
    ) {
        let names = [
            "accounts", &a, "b", "clients", &c, "+", "#", "", "status", "webrtc_inbox",
            "baby_stations", "$share", "é", &other,
        ];
        let t: String = levels.iter().map(|i| names[*i]).collect::<Vec<_>>().join("/");
        let device = Principal::Device { account_id: a.clone(), client_id: c };
        let prefix = format!("accounts/{a}/");
        if may_publish(&device, &t) {
            prop_assert!(t.starts_with(&prefix), "{}", t);
            prop_assert!(!t.contains('+') && !t.contains('#'), "{}", t);
        }
        // A shared subscription is judged by its filter: `$share/{group}/` then the filter.
        let inner = t
            .strip_prefix("$share/")
            .and_then(|rest| rest.split_once('/'))
            .map_or(t.as_str(), |(_, f)| f);
        if may_subscribe(&device, &t) {
            prop_assert!(inner.starts_with(&prefix), "{}", t);
        }
        if may_subscribe(&Principal::Operator, &t) {
            prop_assert!(inner.starts_with("accounts/") && inner.ends_with("/status"), "{}", t);
        }
        prop_assert!(!may_publish(&Principal::Operator, &t));
        if t.starts_with('$') {
            prop_assert!(!is_valid_filter(&t));
        }
    }

    // ---------------------------------------------------------------- ws::protocol

    /// Any text: a frame or an error with one of the documented codes.
    #[test]
    fn ws_client_frames_parse_any_text(text in prop_oneof![
        any::<String>(),
        json().prop_map(|v| v.to_string()),
        (json(), nasty_string(), any::<bool>()).prop_map(|(data, to, extra)| {
            let mut v = serde_json::json!({"type": "signal", "to": to, "data": data});
            if extra {
                v["extra"] = 1.into();
            }
            v.to_string()
        }),
    ]) {
        match parse_client_frame(&text) {
            Ok(ClientFrame::Signal { to, to_connection, .. }) => {
                prop_assert!(is_valid_id(&to));
                prop_assert!(to_connection.as_deref().is_none_or(is_valid_id));
            }
            Ok(_) => {}
            Err(e) => prop_assert!(
                ["invalid_json", "unknown_type", "invalid_frame"].contains(&e.code),
                "{:?}", e
            ),
        }
    }

    /// A valid signal frame parses to what it says.
    #[test]
    fn ws_signal_frames_round_trip(to in id(), to_connection in proptest::option::of(id()), data in json()) {
        let mut v = serde_json::json!({"type": "signal", "to": to, "data": data});
        if let Some(c) = &to_connection {
            v["to_connection"] = c.clone().into();
        }
        let frame = parse_client_frame(&v.to_string()).unwrap();
        prop_assert_eq!(frame, ClientFrame::Signal { to, to_connection, data });
    }

    /// Every server frame is one JSON object with its `seq` and its fields, whatever it
    /// carries.
    #[test]
    fn ws_server_frames_are_stamped_json(seq in any::<u64>(), code in any::<String>(), message in any::<String>(), data in json(), from in any::<String>()) {
        for frame in [
            ServerFrame::Error { code: code.clone(), message: message.clone() },
            ServerFrame::Signal { from: from.clone(), from_connection: None, data: data.clone() },
            ServerFrame::Ping,
        ] {
            let text = stamp(seq, &frame);
            let mut v: Value = serde_json::from_str(&text).unwrap();
            let fields = v.as_object_mut().unwrap();
            prop_assert_eq!(fields.remove("seq").and_then(|s| s.as_u64()), Some(seq));
            prop_assert_eq!(v, serde_json::to_value(&frame).unwrap());
        }
    }
}
