//! The per-packet work of a connection: the client's frames (PUBLISH checks and topic
//! aliases, SUBSCRIBE, retained quotas) and the broker's (SUBACK completion).

use super::*;

impl Conn {
    /// Counts the publishes of the last batch against the bucket.
    pub(super) fn take_publish_tokens(&mut self) -> Option<Duration> {
        let n = std::mem::take(&mut self.publishes);
        self.bucket.take(n)
    }
}

/// A Will's MQTT 5 properties as its PUBLISH carries them (MQTT 5 §3.1.3.2: all but the
/// Will Delay Interval).
pub(super) fn will_publish_properties(p: &v5::LastWillProperties) -> v5::PublishProperties {
    v5::PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        topic_alias: None,
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.clone(),
        subscription_identifiers: Vec::new(),
        content_type: p.content_type.clone(),
    }
}

/// The Session Expiry Interval an MQTT 5 DISCONNECT carries, if any.
pub(super) fn disconnect_session_expiry(frame: BytesMut) -> Option<u32> {
    let mut frame = frame;
    match v5::Packet::read(&mut frame, None) {
        Ok(v5::Packet::Disconnect(d)) => d.properties.and_then(|p| p.session_expiry_interval),
        _ => None,
    }
}

pub(super) fn empty_connack_properties() -> v5::ConnAckProperties {
    v5::ConnAckProperties {
        session_expiry_interval: None,
        receive_max: None,
        max_qos: None,
        retain_available: None,
        max_packet_size: None,
        assigned_client_identifier: None,
        topic_alias_max: None,
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}

/// Writes an MQTT 5 PUBLISH to `to_up` with its resolved `topic` and without its Topic
/// Alias; a PUBLISH that does not decode closes the connection.
pub(super) fn forward_unaliased(
    frame: BytesMut,
    h: &Header,
    topic: Bytes,
    to_up: &mut BytesMut,
) -> Result<(), End> {
    let mut p = v5::Publish::read(v5_fixed(h), frame.freeze()).map_err(|_| End::Kicked {
        v5_reason: reason::PROTOCOL_ERROR,
    })?;
    p.topic = topic;
    if let Some(props) = p.properties.as_mut() {
        props.topic_alias = None;
    }
    v5::Packet::Publish(p)
        .write(to_up, None)
        .map_err(|_| End::Kicked {
            v5_reason: reason::PROTOCOL_ERROR,
        })?;
    Ok(())
}

/// Builds the mqttbytes fixed header of a frame the edge has already measured.
pub(super) fn v4_fixed(h: &Header) -> rumqttc::mqttbytes::FixedHeader {
    rumqttc::mqttbytes::FixedHeader::new(h.byte1, h.header_len - 1, h.frame_len - h.header_len)
}

pub(super) fn v5_fixed(h: &Header) -> v5::FixedHeader {
    v5::FixedHeader::new(h.byte1, h.header_len - 1, h.frame_len - h.header_len)
}

impl Conn {
    /// One violation more; past the limit the connection is kicked.
    pub(super) fn violation(&mut self) -> Result<(), End> {
        self.violations += 1;
        if self.violations > self.shared.settings.max_violations {
            tracing::warn!(
                violations = self.violations,
                "disconnecting: too many refused packets"
            );
            return Err(End::Kicked {
                v5_reason: reason::NOT_AUTHORIZED,
            });
        }
        Ok(())
    }

    /// Processes whole frames from the client: forwards, answers or refuses each.
    pub(super) fn device_frames(
        &mut self,
        buf: &mut BytesMut,
        to_up: &mut BytesMut,
        to_dev: &mut BytesMut,
    ) -> Result<Option<End>, End> {
        let max = self.shared.settings.max_packet_bytes;
        loop {
            let h = match codec::header(buf, max) {
                Ok(Some(h)) if buf.len() >= h.frame_len => h,
                Ok(_) => return Ok(None),
                Err(e) => {
                    self.shared.metrics.protocol_error(e);
                    return Err(End::from_frame_error(e));
                }
            };
            let frame = buf.split_to(h.frame_len);
            match h.kind() {
                kind::PUBLISH => self.publish(frame, &h, to_up, to_dev)?,
                kind::SUBSCRIBE => self.subscribe(frame, &h, to_up, to_dev)?,
                kind::PINGREQ => codec::put_pingresp(to_dev),
                kind::DISCONNECT => {
                    let will_fires = self.proto == Proto::V5
                        && codec::disconnect_reason(&frame, &h) == reason::DISCONNECT_WITH_WILL;
                    let session_expiry = match self.proto {
                        Proto::V5 => disconnect_session_expiry(frame),
                        Proto::V4 => None,
                    };
                    return Ok(Some(End::Disconnect {
                        will_fires,
                        session_expiry,
                    }));
                }
                kind::PUBREL => {
                    let pkid = codec::packet_id(&frame, &h).map_err(End::from_frame_error)?;
                    if self
                        .rare
                        .as_mut()
                        .is_some_and(|r| r.local_qos2.remove(&pkid))
                    {
                        codec::put_ack(to_dev, kind::PUBCOMP, pkid, self.proto, 0, None);
                    } else {
                        to_up.extend_from_slice(&frame);
                    }
                }
                kind::PUBACK | kind::PUBREC | kind::PUBCOMP | kind::UNSUBSCRIBE => {
                    to_up.extend_from_slice(&frame)
                }
                _ => {
                    self.shared.metrics.protocol_error(FrameError::Malformed);
                    return Err(End::Kicked {
                        v5_reason: reason::PROTOCOL_ERROR,
                    });
                }
            }
        }
    }

    /// One PUBLISH from the client: its topic resolved and checked (ACL, retained rules,
    /// inbox stamp), then forwarded, or answered and refused.
    pub(super) fn publish(
        &mut self,
        frame: BytesMut,
        h: &Header,
        to_up: &mut BytesMut,
        to_dev: &mut BytesMut,
    ) -> Result<(), End> {
        self.publishes += 1;
        let proto = self.proto;
        let v = codec::publish_view(&frame, h, proto).map_err(End::from_frame_error)?;
        let (qos, pkid) = (v.qos, v.pkid);
        if qos == 2 {
            // A new QoS 2 flow with this packet id: any earlier refused one with it is over,
            // and this one's PUBREL belongs to whoever handles this PUBLISH.
            if let Some(r) = self.rare.as_mut() {
                r.local_qos2.remove(&pkid);
            }
        }
        let resolved = self.resolve_topic(v.alias, v.topic)?;
        let topic: &str = &resolved;
        if !may_publish(&self.principal, topic) {
            self.shared.metrics.acl_drop(crate::edge::AclDrop::Publish);
            tracing::warn!(topic, "PUBLISH refused: not allowed for this client");
            self.answer_refused(qos, pkid, reason::NOT_AUTHORIZED, to_dev);
            return self.violation();
        }
        if h.byte1 & 0x01 != 0 {
            self.admit_retained(topic, v.payload.len(), qos, pkid, to_dev)?;
            if self.retain_refused {
                self.retain_refused = false;
                return Ok(());
            }
        }
        if topic.ends_with("/status") {
            lifecycle::observe_status(&mut self.reported, &self.client_id, topic, v.payload);
            // The device's own report names the MQTT connection it is about, so the status
            // decider meets it with the edge's observed start.
            let own = self.reported.as_ref().is_some_and(|r| r.topic == topic);
            if let (true, Some(edge)) = (own, self.edge.as_deref()) {
                if let Some(stamped) = lifecycle::stamp_status(v.payload, edge) {
                    let out =
                        crate::edge::inbox::rebuild_publish(&frame, h, proto, topic, &stamped)
                            .map_err(End::from_frame_error)?;
                    to_up.extend_from_slice(&out);
                    return Ok(());
                }
            }
        }
        // Inbox messages carry `from` = the authenticated sender, whatever the sender wrote.
        if let Some(stamped) =
            crate::edge::inbox::stamp_publish(&frame, h, proto, topic, v.payload, &self.client_id)
        {
            let refused = match stamped {
                Ok(out) => {
                    to_up.extend_from_slice(&out);
                    return Ok(());
                }
                Err(drop) => drop,
            };
            self.shared.metrics.inbox_drop(refused);
            tracing::warn!(topic, reason = refused.as_str(), "inbox message dropped");
            let code = crate::edge::inbox::PAYLOAD_FORMAT_INVALID;
            self.answer_refused(qos, pkid, code, to_dev);
            return Ok(());
        }
        if v.alias.is_none() {
            to_up.extend_from_slice(&frame);
            return Ok(());
        }
        // MQTT 5 alias: forward the resolved topic without the alias, so the broker's alias
        // table can never disagree with what the edge checked.
        let topic = Bytes::copy_from_slice(topic.as_bytes());
        drop(resolved); // it may borrow `frame`, which goes on below
        forward_unaliased(frame, h, topic, to_up)
    }

    /// The topic a PUBLISH means: its own, or the one its MQTT 5 alias stands for (an alias
    /// given with a topic is recorded). A missing topic or an unknown or zero alias closes
    /// the connection.
    pub(super) fn resolve_topic<'a>(
        &mut self,
        alias: Option<u16>,
        topic: &'a str,
    ) -> Result<std::borrow::Cow<'a, str>, End> {
        Ok(match alias {
            None if topic.is_empty() => {
                return Err(End::Kicked {
                    v5_reason: reason::PROTOCOL_ERROR,
                })
            }
            None => topic.into(),
            Some(0) => {
                return Err(End::Kicked {
                    v5_reason: reason::TOPIC_ALIAS_INVALID,
                })
            }
            Some(alias) if topic.is_empty() => {
                match self.rare.as_ref().and_then(|r| r.aliases.get(&alias)) {
                    Some(t) => t.clone().into(),
                    None => {
                        return Err(End::Kicked {
                            v5_reason: reason::TOPIC_ALIAS_INVALID,
                        })
                    }
                }
            }
            Some(alias) => {
                // Set even when the PUBLISH is refused below: the client now means that topic
                // by this alias, and its later uses must be refused too, not delivered to the
                // alias's previous topic. Bounded in count and bytes.
                self.set_alias(alias, topic)?;
                topic.into()
            }
        })
    }

    /// Records an MQTT 5 topic alias the client set: at most [`MAX_ALIASES`] aliases and
    /// [`MAX_ALIAS_BYTES`] bytes of their topics per connection; beyond either the connection
    /// is closed (DISCONNECT 0x94 topic alias invalid).
    pub(super) fn set_alias(&mut self, alias: u16, topic: &str) -> Result<(), End> {
        let rare = self.rare.get_or_insert_with(Default::default);
        let old = rare.aliases.get(&alias).map_or(0, String::len);
        let bytes = rare.alias_bytes - old + topic.len();
        if (old == 0 && rare.aliases.len() >= MAX_ALIASES) || bytes > MAX_ALIAS_BYTES {
            return Err(End::Kicked {
                v5_reason: reason::TOPIC_ALIAS_INVALID,
            });
        }
        rare.aliases.insert(alias, topic.to_string());
        rare.alias_bytes = bytes;
        Ok(())
    }

    /// Answers a PUBLISH the edge refused or dropped: PUBACK for QoS 1, PUBREC for QoS 2 (MQTT
    /// 5 with `code`), and for QoS 2 remembers the packet id so that the edge completes the
    /// client's PUBREL itself (on either protocol; MQTT 5 ends the flow on a PUBREC with an
    /// error code, but a client may still send PUBREL, which the broker never saw).
    pub(super) fn answer_refused(&mut self, qos: u8, pkid: u16, code: u8, to_dev: &mut BytesMut) {
        let why = codec::reason_text(kind::PUBACK, code).filter(|_| self.explain.acks);
        match qos {
            1 => codec::put_ack(to_dev, kind::PUBACK, pkid, self.proto, code, why),
            2 => {
                codec::put_ack(to_dev, kind::PUBREC, pkid, self.proto, code, why);
                self.rare
                    .get_or_insert_with(Default::default)
                    .local_qos2
                    .insert(pkid);
            }
            _ => {}
        }
    }

    /// Checks a retained PUBLISH against the topic contract and the account's retained quota.
    /// A refusal is answered (MQTT 5: reason 0x83 for a topic that is never retained, 0x97
    /// over the quota; 3.1.1 acknowledges) and sets `retain_refused`; a retained PUBLISH on a
    /// never-retained topic also counts as a violation.
    pub(super) fn admit_retained(
        &mut self,
        topic: &str,
        payload_len: usize,
        qos: u8,
        pkid: u16,
        to_dev: &mut BytesMut,
    ) -> Result<(), End> {
        let account = crate::edge::retained::ledger_key(&self.principal);
        let (code, violation) = if !may_retain(topic) {
            tracing::warn!(
                topic,
                "retained PUBLISH refused: this topic is never retained"
            );
            (reason::IMPLEMENTATION_SPECIFIC, true)
        } else {
            match self
                .shared
                .retained
                .admit(account, topic, payload_len, &self.shared.metrics)
            {
                Ok(()) => return Ok(()),
                Err(crate::edge::retained::RetainRefused::Quota) => {
                    tracing::warn!(
                        topic,
                        "retained PUBLISH refused: the account's retained quota is full"
                    );
                    (reason::QUOTA_EXCEEDED, false)
                }
            }
        };
        self.shared.metrics.retained_refused(!violation);
        self.retain_refused = true;
        self.answer_refused(qos, pkid, code, to_dev);
        if violation {
            self.violation()?;
        }
        Ok(())
    }

    pub(super) fn subscribe(
        &mut self,
        frame: BytesMut,
        h: &Header,
        to_up: &mut BytesMut,
        to_dev: &mut BytesMut,
    ) -> Result<(), End> {
        let bytes = frame.freeze();
        let malformed = End::Kicked {
            v5_reason: reason::PROTOCOL_ERROR,
        };
        let mask = match self.proto {
            Proto::V4 => {
                let mut s =
                    v4::Subscribe::read(v4_fixed(h), bytes.clone()).map_err(|_| malformed)?;
                let Some(mask) = self.filter_mask(s.filters.iter().map(|f| f.path.as_str())) else {
                    to_up.extend_from_slice(&bytes);
                    return Ok(());
                };
                if mask.iter().all(|ok| !ok) {
                    let codes = vec![v4::SubscribeReasonCode::Failure; mask.len()];
                    let _ = v4::SubAck::new(s.pkid, codes).write(to_dev);
                } else {
                    let mut keep = mask.iter();
                    s.filters.retain(|_| *keep.next().unwrap_or(&false));
                    let _ = s.write(to_up);
                    self.rare
                        .get_or_insert_with(Default::default)
                        .pending_subs
                        .insert(s.pkid, mask.clone());
                }
                mask
            }
            Proto::V5 => {
                let mut s =
                    v5::Subscribe::read(v5_fixed(h), bytes.clone()).map_err(|_| malformed)?;
                let Some(mask) = self.filter_mask(s.filters.iter().map(|f| f.path.as_str())) else {
                    to_up.extend_from_slice(&bytes);
                    return Ok(());
                };
                if mask.iter().all(|ok| !ok) {
                    let ack = v5::SubAck {
                        pkid: s.pkid,
                        return_codes: vec![v5::SubscribeReasonCode::NotAuthorized; mask.len()],
                        properties: self.explain_suback(None),
                    };
                    let _ = ack.write(to_dev);
                } else {
                    let mut keep = mask.iter();
                    s.filters.retain(|_| *keep.next().unwrap_or(&false));
                    let _ = s.write(to_up);
                    self.rare
                        .get_or_insert_with(Default::default)
                        .pending_subs
                        .insert(s.pkid, mask.clone());
                }
                mask
            }
        };
        for _ in mask.iter().filter(|ok| !**ok) {
            self.violation()?;
        }
        Ok(())
    }

    /// Which of a SUBSCRIBE's filters this client may use; `None` when all may (the packet
    /// passes unchanged). Each refused filter is logged and counted.
    pub(super) fn filter_mask<'a>(
        &self,
        filters: impl Iterator<Item = &'a str>,
    ) -> Option<Vec<bool>> {
        let mut refused = false;
        let mask = filters
            .map(|filter| {
                let ok = may_subscribe(&self.principal, filter);
                if !ok {
                    refused = true;
                    self.shared
                        .metrics
                        .acl_drop(crate::edge::AclDrop::Subscribe);
                    tracing::warn!(
                        filter,
                        "SUBSCRIBE filter refused: not allowed for this client"
                    );
                }
                ok
            })
            .collect();
        refused.then_some(mask)
    }

    /// Processes whole frames from the broker: swallows the edge's own PINGRESPs and
    /// completes SUBACKs of SUBSCRIBEs the edge trimmed.
    pub(super) fn broker_frames(
        &mut self,
        buf: &mut BytesMut,
        to_dev: &mut BytesMut,
    ) -> Result<(), End> {
        loop {
            let h = match codec::header(buf, usize::MAX) {
                Ok(Some(h)) if buf.len() >= h.frame_len => h,
                Ok(_) => return Ok(()),
                Err(_) => return Err(End::UpstreamClosed),
            };
            let frame = buf.split_to(h.frame_len);
            match h.kind() {
                kind::PINGRESP => {}
                kind::SUBACK
                    if self
                        .rare
                        .as_ref()
                        .is_some_and(|r| !r.pending_subs.is_empty()) =>
                {
                    let pkid = codec::packet_id(&frame, &h).map_err(|_| End::UpstreamClosed)?;
                    match self
                        .rare
                        .as_mut()
                        .and_then(|r| r.pending_subs.remove(&pkid))
                    {
                        Some(mask) => self.complete_suback(frame, &h, &mask, to_dev)?,
                        None => to_dev.extend_from_slice(&frame),
                    }
                }
                _ => to_dev.extend_from_slice(&frame),
            }
        }
    }

    /// The properties of a SUBACK that refuses a filter: the broker's, with the refusal's
    /// Reason String when the client asked for them.
    pub(super) fn explain_suback(
        &self,
        properties: Option<v5::SubAckProperties>,
    ) -> Option<v5::SubAckProperties> {
        if !self.explain.acks {
            return properties;
        }
        let mut properties = properties.unwrap_or(v5::SubAckProperties {
            reason_string: None,
            user_properties: Vec::new(),
        });
        properties.reason_string =
            codec::reason_text(kind::SUBACK, reason::NOT_AUTHORIZED).map(String::from);
        Some(properties)
    }

    pub(super) fn complete_suback(
        &self,
        frame: BytesMut,
        h: &Header,
        mask: &[bool],
        to_dev: &mut BytesMut,
    ) -> Result<(), End> {
        let bytes = frame.freeze();
        match self.proto {
            Proto::V4 => {
                let ack = v4::SubAck::read(v4_fixed(h), bytes).map_err(|_| End::UpstreamClosed)?;
                let mut granted = ack.return_codes.into_iter();
                let codes = mask
                    .iter()
                    .map(|ok| match ok {
                        true => granted.next().unwrap_or(v4::SubscribeReasonCode::Failure),
                        false => v4::SubscribeReasonCode::Failure,
                    })
                    .collect();
                let _ = v4::SubAck::new(ack.pkid, codes).write(to_dev);
            }
            Proto::V5 => {
                let ack = v5::SubAck::read(v5_fixed(h), bytes).map_err(|_| End::UpstreamClosed)?;
                let mut granted = ack.return_codes.into_iter();
                let codes = mask
                    .iter()
                    .map(|ok| match ok {
                        true => granted
                            .next()
                            .unwrap_or(v5::SubscribeReasonCode::Unspecified),
                        false => v5::SubscribeReasonCode::NotAuthorized,
                    })
                    .collect();
                let _ = v5::SubAck {
                    pkid: ack.pkid,
                    return_codes: codes,
                    properties: self.explain_suback(ack.properties),
                }
                .write(to_dev);
            }
        }
        Ok(())
    }
}
