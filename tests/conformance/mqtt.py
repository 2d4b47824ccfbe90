#!/usr/bin/env python3
"""MQTT 3.1.1 and 5 conformance checks against a broker, with Eclipse paho-mqtt 2.x.

    python3 tests/conformance/mqtt.py HOST PORT CHECK [CHECK...]

CONF_TRANSPORT=websockets speaks MQTT over WebSocket (path /mqtt, subprotocol mqtt);
CONF_CA=file turns TLS on, verifying the server against that CA.
CONF_ACCOUNT=a and CONF_DEVICES=client:secret,client:secret give the accounts-mode check
its devices.

Each check prints `ok CHECK` or `FAIL CHECK: why` and the exit status is the number of failed
checks. Topics live under accounts/conf/ so that they pass Cradle's open-mode edge.
"""
import os
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

HOST, PORT = sys.argv[1], int(sys.argv[2])
TRANSPORT = os.environ.get("CONF_TRANSPORT", "tcp")
CA = os.environ.get("CONF_CA")
V5, V311 = mqtt.MQTTv5, mqtt.MQTTv311


class Fail(Exception):
    pass


def topic(name):
    return f"accounts/conf/clients/{name}-{uuid.uuid4().hex[:8]}/data"


class Client:
    """A paho client with its deliveries, SUBACK codes and CONNACK flags collected."""

    def __init__(self, client_id=None, proto=V5, clean=True, props=None, will=None, login=None):
        self.id = client_id or "c" + uuid.uuid4().hex[:10]
        self.proto = proto
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.id, protocol=proto,
                             transport=TRANSPORT,
                             **({} if proto == V5 else {"clean_session": clean}))
        if TRANSPORT == "websockets":
            self.c.ws_set_options(path="/mqtt")
        if CA:
            self.c.tls_set(ca_certs=CA)
        self.clean, self.props = clean, props
        self.messages, self.subacks, self.connack = [], [], None
        self.cv = threading.Condition()
        self.c.on_message = self._msg
        self.c.on_subscribe = self._sub
        self.c.on_connect = self._conn
        self.gone = threading.Event()
        self.c.on_disconnect = lambda *a: self.gone.set()
        if will:
            self.c.will_set(**will)
        if login:
            self.c.username_pw_set(*login)

    def _msg(self, c, u, m):
        with self.cv:
            self.messages.append(m)
            self.cv.notify_all()

    def _sub(self, c, u, mid, codes, props):
        with self.cv:
            self.subacks.append([int(x.value) if hasattr(x, "value") else int(x) for x in codes])
            self.cv.notify_all()

    def _conn(self, c, u, flags, rc, props):
        with self.cv:
            self.connack = (flags, rc, props)
            self.cv.notify_all()

    def connect(self, keepalive=30):
        kw = {}
        if self.proto == V5:
            kw["clean_start"] = self.clean
            if self.props is not None:
                kw["properties"] = self.props
        self.c.connect(HOST, PORT, keepalive, **kw)
        self.c.loop_start()
        self.wait(lambda: self.connack is not None, "CONNACK")
        if self.connack[1] != 0:
            raise Fail(f"{self.id} refused: {self.connack[1]}")
        return self

    def wait(self, cond, what, timeout=5.0):
        with self.cv:
            if not self.cv.wait_for(cond, timeout):
                raise Fail(f"{self.id}: no {what} within {timeout} s")

    def subscribe(self, filt, qos=1, options=None, props=None):
        n = len(self.subacks)
        if self.proto == V5:
            self.c.subscribe(filt, options=options or SubscribeOptions(qos=qos), properties=props)
        else:
            self.c.subscribe(filt, qos)
        self.wait(lambda: len(self.subacks) > n, "SUBACK")
        return self.subacks[-1]

    def publish(self, t, payload, qos=1, retain=False, props=None):
        info = self.c.publish(t, payload, qos=qos, retain=retain, properties=props)
        if qos > 0:
            info.wait_for_publish(5)
        return info

    def got(self, n=1, timeout=5.0):
        self.wait(lambda: len(self.messages) >= n, f"{n} message(s)", timeout)
        return self.messages

    def quiet(self, secs=0.7):
        time.sleep(secs)
        return self.messages

    def disconnect(self, props=None):
        """Sends DISCONNECT and waits until paho has written it and closed the socket."""
        self.c.disconnect(properties=props)
        self.gone.wait(5)
        self.c.loop_stop()

    def drop(self):
        """Closes the socket without DISCONNECT (as a lost device)."""
        self.c.loop_stop()
        self.c.socket().close()


def check(cond, why):
    if not cond:
        raise Fail(why)


CHECKS = {}


def conformance(fn):
    CHECKS[fn.__name__] = fn
    return fn


def main():
    failed = 0
    for name in sys.argv[3:]:
        try:
            CHECKS[name]()
            print(f"ok {name}", flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported by name
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
    sys.exit(failed)


def props(kind=PacketTypes.PUBLISH, **kw):
    p = Properties(kind)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


@conformance
def persistent_session_v311():
    """clean_session=0: subscription kept, QoS 1 queued while offline, session present."""
    t, cid = topic("persist"), "p" + uuid.uuid4().hex[:10]
    s = Client(cid, V311, clean=False).connect()
    s.subscribe(t, 1)
    s.disconnect()
    p = Client(proto=V311).connect()
    for i in range(3):
        p.publish(t, f"m{i}", qos=1)
    p.disconnect()
    s = Client(cid, V311, clean=False).connect()
    check(s.connack[0].session_present, "session present = 0 for a kept session")
    got = [m.payload for m in s.got(3)]
    check(got == [b"m0", b"m1", b"m2"], f"queued messages: {got}")
    s.disconnect()
    s = Client(cid, V311, clean=True).connect()
    check(not s.connack[0].session_present, "clean session reported a present session")
    s.disconnect()


@conformance
def inflight_redelivered_v311():
    """A QoS 1 message delivered but not acknowledged when the connection drops is delivered
    again to the resumed session, with its packet id and DUP set (MQTT 3.1.1 §4.4), then the
    session goes on with new messages."""
    inflight_redelivered(V311)


@conformance
def inflight_redelivered_v5():
    """The same for MQTT 5 (§4.4), the session kept by its Session Expiry Interval; a retained
    message sent on subscribe is redelivered too."""
    inflight_redelivered(V5)


def inflight_redelivered(proto):
    t, cid = topic("inflight"), "i" + uuid.uuid4().hex[:10]
    keep = props(PacketTypes.CONNECT, SessionExpiryInterval=60) if proto == V5 else None
    pub = Client(proto=proto).connect()
    pub.publish(t, b"retained", qos=1, retain=True)
    time.sleep(0.3)
    s = Client(cid, proto, clean=False, props=keep)
    s.c.manual_ack_set(True)
    s.connect()
    s.subscribe(t, 1)
    pub.publish(t, b"unacked", qos=1)
    first = s.got(2)
    check([(m.payload, m.dup) for m in first] == [(b"retained", False), (b"unacked", False)],
          f"first deliveries {[(m.payload, m.dup) for m in first]}")
    s.drop()
    time.sleep(0.3)
    back = Client(cid, proto, clean=False, props=keep).connect()
    check(back.connack[0].session_present, "session not present")
    again = back.got(2)
    check([(m.payload, m.mid, m.dup) for m in again] == [(m.payload, m.mid, True) for m in first],
          f"redelivered {[(m.payload, m.mid, m.dup) for m in again]}, "
          f"first {[(m.payload, m.mid) for m in first]}")
    pub.publish(t, b"next", qos=1)
    check(back.got(3)[2].payload == b"next", "the session did not go on")
    check(len(back.quiet(0.5)) == 3, "a message arrived twice")
    pub.publish(t, b"", qos=1, retain=True)


@conformance
def session_expiry_v5():
    """Session Expiry Interval: kept within it, gone after it."""
    t, cid = topic("expiry"), "e" + uuid.uuid4().hex[:10]
    s = Client(cid, V5, clean=True, props=props(PacketTypes.CONNECT, SessionExpiryInterval=60)).connect()
    s.subscribe(t, 1)
    s.disconnect()
    p = Client().connect()
    p.publish(t, b"while-away", qos=1)
    s = Client(cid, V5, clean=False, props=props(PacketTypes.CONNECT, SessionExpiryInterval=60)).connect()
    check(s.connack[0].session_present, "session present = 0 within the expiry")
    check([m.payload for m in s.got(1)] == [b"while-away"], "queued message not delivered")
    s.disconnect(props(PacketTypes.DISCONNECT, SessionExpiryInterval=0))
    # An external broker ends the session after it closed the socket: the next CONNECT of
    # the client id a moment later, as a device's reconnect comes.
    time.sleep(0.3)
    s = Client(cid, V5, clean=False).connect()
    check(not s.connack[0].session_present, "session kept after expiry 0 at DISCONNECT")
    s.disconnect()


@conformance
def retained_qos_is_min_of_publish_and_grant():
    t = topic("retqos")
    p = Client().connect()
    p.publish(t, b"r0", qos=0, retain=True)
    time.sleep(0.3)
    s = Client().connect()
    s.subscribe(t, 1)
    m = s.got(1)[0]
    check(m.retain and m.qos == 0, f"retained QoS {m.qos}, retain {m.retain}: want 0, True")
    s2 = Client(proto=V311).connect()
    p.publish(t, b"r1", qos=1, retain=True)
    time.sleep(0.3)
    s2.subscribe(t, 0)
    m = s2.got(1)[0]
    check(m.qos == 0 and m.payload == b"r1", f"granted 0, got QoS {m.qos}")
    p.publish(t, b"", qos=1, retain=True)


@conformance
def publish_properties_pass_through():
    t = topic("props")
    s = Client().connect()
    s.subscribe(t, 1)
    p = Client().connect()
    pp = props(PayloadFormatIndicator=1, ContentType="application/json",
               ResponseTopic=t + "/reply", CorrelationData=b"\x01\x02",
               UserProperty=[("k", "v"), ("k", "w")])
    p.publish(t, b'{"a":1}', qos=1, props=pp)
    m = s.got(1)[0]
    got = m.properties
    check(getattr(got, "PayloadFormatIndicator", None) == 1, f"payload format: {got}")
    check(getattr(got, "ContentType", None) == "application/json", f"content type: {got}")
    check(getattr(got, "ResponseTopic", None) == t + "/reply", f"response topic: {got}")
    check(getattr(got, "CorrelationData", None) == b"\x01\x02", f"correlation data: {got}")
    check(getattr(got, "UserProperty", None) == [("k", "v"), ("k", "w")], f"user properties: {got}")


@conformance
def will_keeps_its_v5_properties():
    t = topic("will")
    s = Client().connect()
    s.subscribe(t, 1)
    wp = props(PacketTypes.WILLMESSAGE, ContentType="text/plain", PayloadFormatIndicator=1,
               UserProperty=[("why", "test")])
    d = Client(will={"topic": t, "payload": b"gone", "qos": 1, "properties": wp}).connect()
    time.sleep(0.2)
    d.drop()
    m = s.got(1)[0]
    check(m.payload == b"gone", f"will payload {m.payload}")
    got = m.properties
    check(getattr(got, "ContentType", None) == "text/plain", f"will content type: {got}")
    check(getattr(got, "UserProperty", None) == [("why", "test")], f"will user props: {got}")
    check(getattr(got, "PayloadFormatIndicator", None) == 1, f"will payload format: {got}")


@conformance
def will_delay_interval():
    t = topic("willdelay")
    s = Client().connect()
    s.subscribe(t, 1)
    cid = "w" + uuid.uuid4().hex[:10]
    wp = props(PacketTypes.WILLMESSAGE, WillDelayInterval=2)
    cp = props(PacketTypes.CONNECT, SessionExpiryInterval=10)
    d = Client(cid, props=cp, will={"topic": t, "payload": b"late", "qos": 1, "properties": wp}).connect()
    time.sleep(0.2)
    d.drop()
    check(s.quiet(1.0) == [], "will published before its delay")
    d = Client(cid, clean=False, props=cp).connect()  # reconnect within the delay cancels it
    check(s.quiet(2.0) == [], "will published although the client reconnected")
    d.disconnect()
    d = Client(cid, props=cp, will={"topic": t, "payload": b"late", "qos": 1, "properties": wp}).connect()
    time.sleep(0.2)
    d.drop()
    check([m.payload for m in s.got(1, timeout=5)] == [b"late"], "will not published after delay")


@conformance
def no_local():
    """No Local: a client's own messages skip its No Local subscription, not another's."""
    t = topic("nolocal")
    c = Client().connect()
    c.subscribe(t, options=SubscribeOptions(qos=1, noLocal=True))
    other = Client().connect()
    other.subscribe(t, 1)
    for i in range(3):
        c.publish(t, f"mine{i}".encode(), qos=1)
    Client().connect().publish(t, b"theirs", qos=1)
    check([m.payload for m in c.got(1)] == [b"theirs"], f"No Local got {[m.payload for m in c.messages]}")
    check(len(other.got(4)) == 4, "a subscriber without No Local missed messages")
    check(len(c.quiet(0.5)) == 1, "own message delivered later")


@conformance
def retain_as_published_and_handling():
    t = topic("rap")
    p = Client().connect()
    p.publish(t, b"old", qos=1, retain=True)
    time.sleep(0.3)
    a = Client().connect()
    a.subscribe(t, options=SubscribeOptions(qos=1, retainAsPublished=True))
    check(a.got(1)[0].retain, "retained on subscribe without retain flag")
    p.publish(t, b"live", qos=1, retain=True)
    m = a.got(2)[1]
    check(m.retain, "Retain As Published: live retained message lost its flag")
    b = Client().connect()
    b.subscribe(t, options=SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND))
    check(b.quiet() == [], "Retain Handling 2: retained message sent")
    c = Client().connect()
    c.subscribe(t, options=SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB))
    c.got(1)
    c.subscribe(t, options=SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB))
    check(len(c.quiet()) == 1, "Retain Handling 1: retained message resent on an existing subscription")
    p.publish(t, b"", qos=1, retain=True)


@conformance
def resubscription_replaces_the_subscription_v5():
    """A SUBSCRIBE to a filter already held replaces it: new QoS, retained resent (handling 0)."""
    t = topic("resub")
    p = Client().connect()
    p.publish(t, b"ret", qos=1, retain=True)
    time.sleep(0.3)
    s = Client().connect()
    s.subscribe(t, 0)
    check([(m.payload, m.qos) for m in s.got(1)] == [(b"ret", 0)], "retained at granted QoS 0")
    check(s.subscribe(t, 1) == [1], f"re-subscription granted {s.subacks[-1]}")
    m = s.got(2)[1]
    check((m.payload, m.qos, m.retain) == (b"ret", 1, True),
          f"Retain Handling 0 on a re-subscription: got {(m.payload, m.qos, m.retain)}")
    p.publish(t, b"live", qos=1)
    m = s.got(3)[2]
    check((m.payload, m.qos) == (b"live", 1), f"live message after re-subscription: {(m.payload, m.qos)}")
    check(len(s.quiet(0.5)) == 3, "a message arrived twice after the re-subscription")
    p.publish(t, b"", qos=1, retain=True)


@conformance
def resubscription_resends_retained_v311():
    """MQTT 3.1.1 §3.8.4: retained messages are re-sent on a replacing SUBSCRIBE; QoS follows it."""
    t = topic("resub311")
    p = Client(proto=V311).connect()
    p.publish(t, b"ret", qos=1, retain=True)
    time.sleep(0.3)
    s = Client(proto=V311).connect()
    s.subscribe(t, 1)
    s.got(1)
    s.subscribe(t, 0)
    m = s.got(2)[1]
    check((m.payload, m.qos) == (b"ret", 0), f"re-subscription at QoS 0 got {(m.payload, m.qos)}")
    p.publish(t, b"live", qos=1)
    m = s.got(3)[2]
    check((m.payload, m.qos) == (b"live", 0), f"live message not at the new QoS 0: {m.qos}")
    p.publish(t, b"", qos=1, retain=True)


@conformance
def only_a_retained_empty_publish_deletes():
    t = topic("retdel")
    p = Client().connect()
    p.publish(t, b"kept", qos=1, retain=True)
    p.publish(t, b"", qos=1, retain=False)
    time.sleep(0.3)
    s = Client().connect()
    s.subscribe(t, 1)
    check([m.payload for m in s.got(1)] == [b"kept"], "a plain empty PUBLISH deleted the retained one")
    p.publish(t, b"", qos=1, retain=True)
    time.sleep(0.3)
    s2 = Client().connect()
    s2.subscribe(t, 1)
    check(s2.quiet() == [], "a retained empty PUBLISH did not delete")


@conformance
def message_expiry():
    t, cid = topic("msgexp"), "x" + uuid.uuid4().hex[:10]
    cp = props(PacketTypes.CONNECT, SessionExpiryInterval=60)
    s = Client(cid, props=cp).connect()
    s.subscribe(t, 1)
    s.disconnect()
    p = Client().connect()
    p.publish(t, b"short", qos=1, props=props(MessageExpiryInterval=1))
    p.publish(t, b"long", qos=1, props=props(MessageExpiryInterval=60))
    time.sleep(2.2)
    s = Client(cid, clean=False, props=cp).connect()
    got = s.got(1)
    time.sleep(0.5)
    check([m.payload for m in got] == [b"long"], f"expired message delivered: {[m.payload for m in got]}")
    left = getattr(got[0].properties, "MessageExpiryInterval", None)
    check(left is not None and left <= 58, f"expiry not lowered by the time waited: {left}")


@conformance
def subscription_identifiers():
    t = topic("subid")
    s = Client().connect()
    s.subscribe(t, 1, props=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=42))
    Client().connect().publish(t, b"x", qos=1)
    got = getattr(s.got(1)[0].properties, "SubscriptionIdentifier", None)
    check(got == [42], f"subscription identifier {got}")


@conformance
def client_topic_alias():
    t = topic("alias")
    s = Client().connect()
    s.subscribe(t, 1)
    p = Client().connect()
    p.publish(t, b"first", qos=1, props=props(TopicAlias=1))
    p.publish("", b"second", qos=1, props=props(TopicAlias=1))
    got = s.got(2)
    check([(m.topic, m.payload) for m in got] == [(t, b"first"), (t, b"second")], f"aliased: {got}")


@conformance
def server_topic_aliases_are_per_topic():
    """A subscriber that allows topic aliases (Topic Alias Maximum 10) under a wildcard gets
    each topic with its own alias, then the alias alone (MQTT 5 §3.3.2.3.4). Neither paho
    (Python) nor libmosquitto 2.0 decodes aliases the server sends, so this subscriber reads
    the PUBLISH packets off a plain socket; paho publishes."""
    import socket
    import struct

    def frame(kind, body):
        n, rl = len(body), b""
        while True:
            n, b = n // 128, n % 128
            rl += bytes([b | (0x80 if n else 0)])
            if not n:
                return bytes([kind]) + rl + body

    def s16(b):
        return struct.pack(">H", len(b)) + b

    base = topic("salias").rsplit("/", 2)[0]
    sock = socket.create_connection((HOST, PORT), timeout=5)
    alias_max = bytes([0x22]) + struct.pack(">H", 10)
    sock.sendall(frame(0x10, s16(b"MQTT") + bytes([5, 2]) + struct.pack(">H", 30)
                       + bytes([len(alias_max)]) + alias_max + s16(b"sa" + uuid.uuid4().hex[:8].encode())))
    sock.sendall(frame(0x82, struct.pack(">H", 1) + b"\x00" + s16(f"{base}/+/x".encode()) + b"\x00"))
    buf = b""

    def packet():
        nonlocal buf
        while True:
            if len(buf) >= 2:
                n, mult, i = 0, 1, 1
                while buf[i] & 0x80:
                    n, mult, i = n + (buf[i] & 0x7F) * mult, mult * 128, i + 1
                n += (buf[i] & 0x7F) * mult
                if len(buf) >= i + 1 + n:
                    p, buf = buf[: i + 1 + n], buf[i + 1 + n:]
                    return p[0], p[i + 1:]
            buf += sock.recv(4096)

    check(packet()[0] == 0x20, "no CONNACK")
    check(packet()[0] == 0x90, "no SUBACK")
    pub = Client().connect()
    got = []
    for name in ["a", "b", "a", "b"]:
        pub.publish(f"{base}/{name}/x", name.encode(), qos=0)
        kind, body = packet()
        check(kind == 0x30, f"not a QoS 0 PUBLISH: {kind:#x}")
        tlen = struct.unpack(">H", body[:2])[0]
        t, rest = body[2: 2 + tlen].decode(), body[2 + tlen:]
        plen, props_ = rest[0], rest[1: 1 + rest[0]]
        alias = struct.unpack(">H", props_[1:3])[0] if props_[:1] == b"\x23" else None
        got.append((t.rsplit("/", 2)[-2] if t else "", alias, rest[1 + plen:].decode()))
        time.sleep(0.1)
    sock.close()
    check(got == [("a", 1, "a"), ("b", 2, "b"), ("", 1, "a"), ("", 2, "b")], f"aliases: {got}")


def refusal_reasons(request_problem_info):
    """A SUBSCRIBE refused in open mode ($SYS through a shared subscription) and a retained
    PUBLISH on a topic that is never retained: (SUBACK codes, SUBACK Reason String, PUBACK
    code, PUBACK Reason String)."""
    kw = {} if request_problem_info else {"RequestProblemInformation": 0}
    c = Client(props=props(PacketTypes.CONNECT, **kw)).connect()
    subprops = {}
    c.c.on_subscribe = lambda cl, u, mid, codes, p: (
        subprops.update(codes=[int(x.value) for x in codes], why=getattr(p, "ReasonString", None)),
        c._sub(cl, u, mid, codes, p))
    c.subscribe("$share/g/$SYS/#", 1)
    acks = {}
    done = threading.Event()
    c.c.on_publish = lambda cl, u, mid, rc, p: (
        acks.update(rc=int(rc.value), why=getattr(p, "ReasonString", None)), done.set())
    c.c.publish(topic("inbox").replace("/data", "/webrtc_inbox"), b"{}", qos=1, retain=True)
    check(done.wait(5), "no PUBACK")
    c.disconnect()
    return subprops["codes"], subprops["why"], acks["rc"], acks["why"]


@conformance
def reason_strings_on_refusals():
    """MQTT 5 refusals carry a Reason String: CONNACK, SUBACK, PUBACK and DISCONNECT."""
    codes, sub_why, rc, pub_why = refusal_reasons(True)
    check(codes == [0x87] and sub_why and "filter" in sub_why, f"SUBACK {codes} {sub_why!r}")
    check(rc == 0x83 and pub_why and "retained" in pub_why, f"PUBACK {rc:#x} {pub_why!r}")
    inbox = topic("will").replace("/data", "/webrtc_inbox")
    w = Client(will={"topic": inbox, "payload": b"{}", "retain": True})
    w.c.connect(HOST, PORT, 30, clean_start=True)
    w.c.loop_start()
    w.wait(lambda: w.connack is not None, "CONNACK")
    w.c.loop_stop()
    why = getattr(w.connack[2], "ReasonString", None)
    check(int(w.connack[1].value) == 0x9A and why and "Will" in why, f"CONNACK {w.connack[1]} {why!r}")
    ends = []
    k = Client()
    k.c.on_disconnect = lambda cl, u, flags, rc, p: ends.append((int(rc.value), getattr(p, "ReasonString", None)))
    k.connect()
    k.c.publish("", b"x", qos=0, properties=props(TopicAlias=7))
    k.wait(lambda: ends, "DISCONNECT")
    check(ends[0][0] >= 0x80 and ends[0][1], f"DISCONNECT {ends}")


@conformance
def request_problem_information_0_keeps_acks_bare():
    """Request Problem Information 0: the SUBACK and PUBACK refusals carry no Reason String."""
    codes, sub_why, rc, pub_why = refusal_reasons(False)
    check((codes, sub_why, rc, pub_why) == ([0x87], None, 0x83, None),
          f"got {(codes, sub_why, rc, pub_why)}")


@conformance
def server_keep_alive():
    """Against a Cradle with mqtt.max_keep_alive_secs = 2: an MQTT 5 client asking for none or
    for more is told 2 (Server Keep Alive) and held to it; one within it keeps its own; an
    MQTT 3.1.1 client asking for more is refused."""
    def server_ka(keepalive):
        c = Client().connect(keepalive=keepalive)
        return c, getattr(c.connack[2], "ServerKeepAlive", None)

    for asked in (0, 60):
        c, ska = server_ka(asked)
        check(ska == 2, f"keep-alive {asked}: Server Keep Alive {ska}")
        c.disconnect()
    c, ska = server_ka(1)
    check(ska is None, f"keep-alive 1 within the maximum: Server Keep Alive {ska}")
    c.disconnect()
    silent, _ = server_ka(0)
    silent.c.loop_stop()
    sock = silent.c.socket()
    sock.setblocking(True)
    sock.settimeout(6)
    start, got = time.time(), b""
    try:
        while True:
            d = sock.recv(64)
            if not d:
                break
            got += d
    except OSError:
        pass
    waited = time.time() - start
    check(got[:1] == b"\xe0" and got[2:3] == b"\x8d" and 1.0 < waited < 5.5,
          f"a silent client held to 2 s got {got!r} after {waited:.1f} s")
    old = Client(proto=V311)
    old.c.connect(HOST, PORT, 60)
    old.c.loop_start()
    old.wait(lambda: old.connack is not None, "CONNACK")
    old.c.loop_stop()
    check(old.connack[1].is_failure, f"3.1.1 keep-alive 60 over the maximum: {old.connack[1]}")


@conformance
def accounts_v5_session_properties_and_refusals():
    """With accounts (CONF_ACCOUNT, CONF_DEVICES = "client:secret,client:secret"): a device's
    MQTT 5 session keeps what another device of its account published while it was away and
    redelivers an unacknowledged message with its packet id and DUP, properties intact; a
    filter and a topic outside what the device may use are refused with reason strings."""
    account = os.environ["CONF_ACCOUNT"]
    (d1, s1), (d2, s2) = [d.split(":", 1) for d in os.environ["CONF_DEVICES"].split(",")][:2]
    keep = props(PacketTypes.CONNECT, SessionExpiryInterval=60)
    filt = f"accounts/{account}/parent_stations/+"
    mine = f"accounts/{account}/parent_stations/{d2}"
    s = Client(d1, props=keep, login=(account, s1))
    s.c.manual_ack_set(True)
    s.connect()
    check(s.subscribe(filt, 1) == [1], f"SUBACK {s.subacks}")
    check(s.subscribe(f"accounts/other-{account}/#", 1) == [0x87], "a foreign filter granted")
    p = Client(d2, login=(account, s2)).connect()
    p.publish(mine, b"unacked", qos=1, props=props(UserProperty=[("k", "v")]))
    first = s.got(1)[0]
    s.drop()
    time.sleep(0.3)
    p.publish(mine, b"while-away", qos=1)
    info = p.c.publish(f"accounts/{account}/parent_stations/{d1}", b"forged", qos=1)
    info.wait_for_publish(5)
    back = Client(d1, clean=False, props=keep, login=(account, s1)).connect()
    check(back.connack[0].session_present, "session not present")
    got = back.got(2)
    check([(m.payload, m.mid, m.dup) for m in got][0] == (b"unacked", first.mid, True),
          f"redelivered {[(m.payload, m.mid, m.dup) for m in got]}")
    check(got[0].properties.UserProperty == [("k", "v")], "user property lost")
    check(got[1].payload == b"while-away", f"queued: {got[1].payload}")
    check(len(back.quiet(0.5)) == 2, "a foreign publish reached the subscriber")


@conformance
def keep_alive_0_is_accepted():
    c = Client().connect(keepalive=0)
    p = c.connack[2]
    check(c.connack[1] == 0, "keep-alive 0 refused")
    rm = getattr(p, "ReceiveMaximum", 65535)
    check(1 <= rm <= 65535, f"receive maximum {rm}")
    c.disconnect()


@conformance
def receive_maximum_2_loses_nothing():
    """A client that accepts 2 QoS 1 messages in flight still gets all 10, in order."""
    t = topic("recvmax")
    s = Client(props=props(PacketTypes.CONNECT, ReceiveMaximum=2)).connect()
    s.subscribe(t, 1)
    p = Client().connect()
    for i in range(10):
        p.publish(t, f"{i}".encode(), qos=1)
    got = [m.payload for m in s.got(10)]
    check(got == [f"{i}".encode() for i in range(10)], f"got {got}")


@conformance
def receive_maximum_bounds_unacknowledged_deliveries():
    """Receive Maximum 2 with manual acks: two in flight until they are acknowledged."""
    t = topic("recvmax2")
    s = Client(props=props(PacketTypes.CONNECT, ReceiveMaximum=2))
    s.c.manual_ack_set(True)
    s.connect()
    s.subscribe(t, 1)
    p = Client().connect()
    for i in range(6):
        p.publish(t, f"{i}".encode(), qos=1)
    check(len(s.quiet(0.8)) == 2, f"in flight beyond Receive Maximum 2: {len(s.messages)}")
    for m in list(s.messages):
        s.c.ack(m.mid, m.qos)
    s.got(4)
    check(len(s.quiet(0.8)) == 4, f"after two acks: {len(s.messages)}")
    for m in s.messages[2:]:
        s.c.ack(m.mid, m.qos)
    got = [m.payload for m in s.got(6)]
    check(got == [f"{i}".encode() for i in range(6)], f"order: {got}")


@conformance
def maximum_packet_size_to_client():
    t = topic("maxpkt")
    s = Client(props=props(PacketTypes.CONNECT, MaximumPacketSize=256)).connect()
    s.subscribe(t, 1)
    p = Client().connect()
    p.publish(t, b"x" * 1024, qos=1)
    p.publish(t, b"small", qos=1)
    got = s.got(1)
    time.sleep(0.3)
    check([m.payload for m in got] == [b"small"], "packet over the client's Maximum Packet Size sent")


@conformance
def maximum_packet_size_qos2_discard_completes():
    """A QoS 2 delivery over the client's Maximum Packet Size is discarded as if sent: with a
    Receive Maximum of 1, the next message still arrives."""
    t = topic("maxpkt2")
    s = Client(props=props(PacketTypes.CONNECT, MaximumPacketSize=256, ReceiveMaximum=1)).connect()
    s.subscribe(t, 2)
    p = Client().connect()
    p.publish(t, b"x" * 1024, qos=2)
    p.publish(t, b"next", qos=2)
    p.publish(t, b"last", qos=1)
    got = [m.payload for m in s.got(2)]
    check(got == [b"next", b"last"], f"got {got}")


@conformance
def maximum_packet_size_from_server():
    c = Client().connect()
    mps = getattr(c.connack[2], "MaximumPacketSize", None)
    check(mps is not None and mps > 0, f"CONNACK Maximum Packet Size {mps}")


@conformance
def shared_subscription_v5():
    t = topic("share")
    a, b = Client().connect(), Client().connect()
    ca = a.subscribe(f"$share/g/{t}", 1)
    cb = b.subscribe(f"$share/g/{t}", 1)
    check(ca[0] <= 2 and cb[0] <= 2, f"SUBACK {ca} {cb}")
    p = Client().connect()
    for i in range(10):
        p.publish(t, f"{i}".encode(), qos=1)
    time.sleep(1.0)
    n = len(a.messages) + len(b.messages)
    check(n == 10, f"shared group got {n} of 10")


@conformance
def unsubscribe_ends_only_that_subscription():
    """UNSUBSCRIBE of one shared subscription (or of the plain filter) leaves the client's
    other subscriptions on the same topic delivering, and the unsubscribed one silent."""
    t = topic("unsub")
    s = Client().connect()
    for f in (f"$share/g1/{t}", f"$share/g2/{t}", t):
        s.subscribe(f, 1)
    p = Client().connect()
    p.publish(t, b"three", qos=1)
    s.got(3)
    check(len(s.quiet(0.5)) == 3, f"three subscriptions gave {len(s.messages)} copies")
    for f, left in ((f"$share/g1/{t}", 2), (t, 1)):
        n = len(s.messages)
        s.c.unsubscribe(f)
        time.sleep(0.3)
        p.publish(t, f"after {f}".encode(), qos=1)
        time.sleep(0.7)
        check(len(s.messages) - n == left, f"after unsubscribing {f}: {len(s.messages) - n} copies, not {left}")


@conformance
def shared_subscription_suback_v311():
    t = topic("share311")
    a = Client(proto=V311).connect()
    code = a.subscribe(f"$share/g/{t}", 1)
    check(code[0] in (0, 1, 2, 0x80), f"SUBACK code {code} is not a 3.1.1 code")


if __name__ == "__main__":
    main()
