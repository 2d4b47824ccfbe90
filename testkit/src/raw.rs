//! The raw MQTT clients: exact bytes written with rumqttc's codecs over a plain TCP
//! connection, for what a client library will not send (keep-alive 0, topic aliases, sizes,
//! reason codes).

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use rumqttc::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A TCP connection to an MQTT listener and the bytes read from it not yet parsed.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    async fn open(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        Conn {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Writes `bytes`, ignoring a connection the server closed.
    async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next packet `parse` reads, or `None` once the server closed the connection (or
    /// 5 s passed).
    async fn read<P, E>(&mut self, parse: impl Fn(&mut BytesMut) -> Result<P, E>) -> Option<P> {
        loop {
            if let Ok(p) = parse(&mut self.buf) {
                return Some(p);
            }
            match tokio::time::timeout(Duration::from_secs(5), self.stream.read_buf(&mut self.buf))
                .await
            {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }
}

/// A raw MQTT 3.1.1 client: exact bytes, for keep-alive and size tests.
pub struct RawV4(Conn);

impl RawV4 {
    /// Connects `client_id` to `port` (with `login` and `keep_alive` seconds) and returns the
    /// client with the CONNACK's code; panics on any other answer.
    pub async fn connect(
        port: u16,
        client_id: &str,
        login: Option<(&str, &str)>,
        keep_alive: u16,
    ) -> (RawV4, u8) {
        Self::connect_with_will(port, client_id, login, keep_alive, None).await
    }

    /// [`RawV4::connect`] with a retained QoS 1 Last Will (topic, payload).
    pub async fn connect_with_will(
        port: u16,
        client_id: &str,
        login: Option<(&str, &str)>,
        keep_alive: u16,
        will: Option<(&str, &str)>,
    ) -> (RawV4, u8) {
        let mut c = RawV4(Conn::open(port).await);
        let mut connect = v4::Connect::new(client_id);
        connect.keep_alive = keep_alive;
        connect.last_will = will.map(|(t, p)| v4::LastWill::new(t, p, QoS::AtLeastOnce, true));
        if let Some((u, p)) = login {
            connect.set_login(u, p);
        }
        let mut out = BytesMut::new();
        v4::Packet::Connect(connect)
            .write(&mut out, 1 << 20)
            .unwrap();
        c.send(&out).await;
        match c.read().await {
            Some(v4::Packet::ConnAck(a)) => {
                let code = a.code as u8;
                (c, code)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Writes `bytes` as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.0.send(bytes).await;
    }

    /// Publishes `payload` to `topic`, QoS 1 with packet id `pkid`.
    pub async fn publish(&mut self, topic: &str, payload: &[u8], pkid: u16) {
        self.write_publish(topic, payload, pkid, false).await;
    }

    /// Publishes QoS 1 with the retain flag and waits for its PUBACK; panics on any other
    /// packet.
    pub async fn publish_retained(&mut self, topic: &str, payload: &[u8], pkid: u16) {
        self.write_publish(topic, payload, pkid, true).await;
        match self.read().await {
            Some(v4::Packet::PubAck(a)) if a.pkid == pkid => {}
            other => panic!("expected PUBACK {pkid}, got {other:?}"),
        }
    }

    async fn write_publish(&mut self, topic: &str, payload: &[u8], pkid: u16, retain: bool) {
        let mut p = v4::Publish::new(topic, QoS::AtLeastOnce, payload.to_vec());
        p.pkid = pkid;
        p.retain = retain;
        let mut out = BytesMut::new();
        v4::Packet::Publish(p).write(&mut out, 1 << 20).unwrap();
        self.send(&out).await;
    }

    /// The next packet, or `None` once the server closed the connection (or 5 s passed).
    pub async fn read(&mut self) -> Option<v4::Packet> {
        self.0.read(|buf| v4::Packet::read(buf, 1 << 20)).await
    }
}

/// A raw MQTT 5 client: topic aliases and reason codes.
pub struct RawV5(Conn);

impl RawV5 {
    /// Connects `client_id` to `port` (clean start, with `login` and `keep_alive` seconds) and
    /// returns the client with the CONNACK's code; panics on any other answer.
    pub async fn connect(
        port: u16,
        client_id: &str,
        login: Option<(&str, &str)>,
        keep_alive: u16,
    ) -> (RawV5, v5::ConnectReturnCode) {
        Self::connect_with_will(port, client_id, login, keep_alive, None).await
    }

    /// [`RawV5::connect`] with a retained QoS 1 Last Will (topic, payload).
    pub async fn connect_with_will(
        port: u16,
        client_id: &str,
        login: Option<(&str, &str)>,
        keep_alive: u16,
        will: Option<(&str, &str)>,
    ) -> (RawV5, v5::ConnectReturnCode) {
        let mut c = RawV5(Conn::open(port).await);
        let connect = v5::Connect {
            keep_alive,
            client_id: client_id.into(),
            clean_start: true,
            properties: None,
        };
        let login = login.map(|(u, p)| v5::Login::new(u, p));
        let will = will.map(|(t, p)| {
            v5::LastWill::new(t, p, rumqttc::v5::mqttbytes::QoS::AtLeastOnce, true, None)
        });
        let mut out = BytesMut::new();
        v5::Packet::Connect(connect, will, login)
            .write(&mut out, None)
            .unwrap();
        c.0.stream.write_all(&out).await.unwrap();
        match c.read().await {
            Some(v5::Packet::ConnAck(a)) => (c, a.code),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Writes `bytes` as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.0.send(bytes).await;
    }

    /// Publishes `payload` to `topic` (or, with `alias`, under that topic alias), QoS 1 with
    /// packet id `pkid`.
    pub async fn publish(&mut self, topic: &str, alias: Option<u16>, payload: &[u8], pkid: u16) {
        let props = alias.map(|a| v5::PublishProperties {
            topic_alias: Some(a),
            ..Default::default()
        });
        let p = v5::Publish::new(
            topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            payload.to_vec(),
            props,
        );
        self.write_publish(p, pkid, false).await;
    }

    /// Publishes QoS 1 with the retain flag and returns the PUBACK's reason.
    pub async fn publish_retained(
        &mut self,
        topic: &str,
        payload: &[u8],
        pkid: u16,
    ) -> v5::PubAckReason {
        let p = v5::Publish::new(
            topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            payload.to_vec(),
            None,
        );
        self.write_publish(p, pkid, true).await;
        self.puback().await
    }

    async fn write_publish(&mut self, mut p: v5::Publish, pkid: u16, retain: bool) {
        p.pkid = pkid;
        p.retain = retain;
        let mut out = BytesMut::new();
        v5::Packet::Publish(p).write(&mut out, None).unwrap();
        self.0.send(&out).await;
    }

    /// The next packet's PUBACK reason; panics on any other packet.
    pub async fn puback(&mut self) -> v5::PubAckReason {
        match self.read().await {
            Some(v5::Packet::PubAck(a)) => a.reason,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }

    /// The next packet, or `None` once the server closed the connection (or 5 s passed).
    pub async fn read(&mut self) -> Option<v5::Packet> {
        self.0.read(|buf| v5::Packet::read(buf, None)).await
    }
}
