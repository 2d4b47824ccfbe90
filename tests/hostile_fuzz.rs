//! Hostile input against the real `cradle` binary: a seeded, bounded mutation fuzzer.
//!
//! Each test starts Cradle, builds cases from a corpus of valid inputs (MQTT 3.1.1 and 5
//! packets with every property kind, the bridge's JSON frames and raw WebSocket frames on
//! `/ws`, HTTP requests on the real routes), mutates them (bit flips, byte insert / delete /
//! replace, length-field tweaks, truncation, duplication, splicing, interesting values) and
//! sends them. After each case the log is read for a panic; after every batch a fresh client
//! with valid credentials must still round-trip a message, `/readyz` must answer 200, and
//! nothing may have crossed accounts: a canary device of account `b` subscribed to
//! `accounts/b/#` receives nothing but its own status, nothing account `a`'s connections
//! receive mentions the canary, and `b`'s events are the canary's alone.
//!
//! Budget and seed come from the environment:
//!
//! - `CRADLE_FUZZ_SEED`: the seed (decimal or `0x…`; default fixed, printed by every test);
//! - `CRADLE_FUZZ_CASES`: cases per test (default: a small budget, see [`Budget`]);
//! - `CRADLE_FUZZ_BATCH`: cases between two liveness checks (default 100);
//! - `CRADLE_FUZZ_CASE`: run that one case index alone (to reproduce a failure).
//!
//! The long run: `CRADLE_FUZZ_CASES=100000 cargo test --release --test hostile_fuzz --
//! --nocapture`. A failure prints the seed, the case index and the bytes of the last cases.

use cradle_testkit as common;

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{cli, Cradle};
use futures_util::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// The canary's client id in account `b`: no byte any client of `a` receives may contain it.
const CANARY: &str = "cnry-b";
/// The connection id in the canary's retained status (also must never reach `a`).
const CANARY_CONNECTION: &str = "cnry-b-secret-conn";
const ADMIN: &str = "fuzz-admin-token";
/// Client ids of account `a` the fuzzing workers connect as (one per worker).
const WORKERS: usize = 4;

// ---------------------------------------------------------------------------------------------
// Seed, budget, PRNG
// ---------------------------------------------------------------------------------------------

/// The fixed seed every run starts with.
const FIXED_SEED: u64 = 0x5EED_C4AD_1E00_0012;

/// The seeds to run, one after another: `CRADLE_FUZZ_SEED` (one or several, comma-separated;
/// `scripts/test` passes the fixed seed and one derived from the commit), else the fixed one.
fn seeds() -> Vec<u64> {
    match std::env::var("CRADLE_FUZZ_SEED") {
        Ok(list) => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                let parsed = match s.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => s.parse(),
                };
                parsed.unwrap_or_else(|_| panic!("CRADLE_FUZZ_SEED: {s:?} is not a number"))
            })
            .collect(),
        Err(_) => vec![FIXED_SEED],
    }
}

/// Cases per test: `CRADLE_FUZZ_CASES`, else the test's small default.
struct Budget {
    cases: u64,
    batch: u64,
    only: Option<u64>,
}

impl Budget {
    fn from_env(default_cases: u64) -> Budget {
        let num = |k: &str| {
            std::env::var(k).ok().map(|v| {
                v.trim()
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("{k}={v:?}"))
            })
        };
        Budget {
            cases: num("CRADLE_FUZZ_CASES").unwrap_or(default_cases),
            batch: num("CRADLE_FUZZ_BATCH").unwrap_or(100).max(1),
            only: num("CRADLE_FUZZ_CASE"),
        }
    }
}

/// SplitMix64: tiny, deterministic, good enough to drive mutations.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    /// The generator of one case: the same (seed, target, index) always gives the same case.
    fn for_case(seed: u64, target: &str, index: u64) -> Rng {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in target.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        let mut r = Rng(seed ^ h ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn u16(&mut self) -> u16 {
        let any = self.next() as u16;
        *self.pick(&[0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, any])
    }
    fn u32(&mut self) -> u32 {
        let any = self.next() as u32;
        *self.pick(&[0, 1, 60, 0x7F, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF, any])
    }
}

// ---------------------------------------------------------------------------------------------
// Interesting values and byte-level mutations
// ---------------------------------------------------------------------------------------------

/// Strings (not all valid UTF-8) that parsers tend to get wrong.
const INTERESTING: &[&[u8]] = &[
    b"",
    b"+",
    b"#",
    b"/",
    b"$",
    b"+/#",
    b"$SYS/broker/uptime",
    b"$share/g/accounts/a/#",
    b"$share//#",
    "é".as_bytes(),
    "é/x".as_bytes(),
    "日本/x".as_bytes(),
    "\u{10348}".as_bytes(),
    "\u{FEFF}".as_bytes(),
    b"a\0b",
    b"\xC0\x80",
    b"\xFF\xFE",
    b"\xED\xA0\x80",
    b"\xF4\x90\x80\x80",
    b"accounts/b/#",
    b"accounts/+/clients/+/status",
    b"accounts/a/#",
    b"accounts/a/clients/+/webrtc_inbox",
    b"//",
    b"a/+/#/b",
    b"\r\n\r\n",
    b"%00",
    b"..",
];

/// Byte sequences inserted as they are: varint extremes, multi-byte UTF-8, wildcards.
const INTERESTING_BYTES: &[&[u8]] = &[
    b"\x00",
    b"\xFF",
    b"\x7F",
    b"\x80",
    b"\xFF\xFF\xFF\x7F",
    b"\xFF\xFF\xFF\xFF\x7F",
    b"\x80\x80\x80\x00",
    b"\xFF\xFF",
    b"\x00\x00",
    "é".as_bytes(),
    "日".as_bytes(),
    "\u{10348}".as_bytes(),
    b"+",
    b"#",
    b"/",
    b"$",
];

/// Applies 1 to 4 random mutations to `data`; `others` feed splicing.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, length_fields: &[usize], others: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        match rng.below(12) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(4);
                let b = rng.bytes(n);
                data.splice(i..i, b);
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below(len - i).min(8);
                data.drain(i..i + n);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                data[i] = *rng.pick(&[0, 0xFF, 0x7F, 0x80, 0x01, b'/', b'+', b'#', b'$']);
            }
            4 => {
                let i = rng.below(len + 1);
                let ins = rng.pick(INTERESTING_BYTES).to_vec();
                data.splice(i..i, ins);
            }
            5 if len > 1 => {
                // the fixed header's remaining length
                let v = *rng.pick(&[0u8, 1, 2, 0x7F, 0x80, 0xFF]);
                data[1] = v;
            }
            6 if !length_fields.is_empty() => {
                // a string, binary or property length inside the packet
                let i = *rng.pick(length_fields);
                if i < len {
                    let v = data[i];
                    data[i] =
                        *rng.pick(&[v.wrapping_add(1), v.wrapping_sub(1), 0, 0xFF, 0x7F, 0x80]);
                }
            }
            7 if len > 0 => {
                let n = rng.below(len);
                data.truncate(n);
            }
            8 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let copy = data[i..i + n].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, copy);
            }
            9 if !others.is_empty() => {
                let other = rng.pick(others);
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            10 if len > 1 => {
                let i = rng.below(len - 1);
                let v = *rng.pick(&[[0u8, 0], [0xFF, 0xFF], [0x7F, 0xFF], [0x80, 0x00]]);
                data[i..i + 2].copy_from_slice(&v);
            }
            _ => {
                let i = rng.below(len + 1);
                let ins = rng.pick(INTERESTING).to_vec();
                data.splice(i..i, ins);
            }
        }
    }
}

/// The first panic in the log's complete lines after `offset` (which moves past them), with
/// the lines that follow it. Only new lines are read, so a long run's log costs nothing.
fn panic_in_log(path: &std::path::Path, offset: &mut u64) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(SeekFrom::Start(*offset)).ok()?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).ok()?;
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    *offset += complete as u64;
    let text = strip_ansi(&String::from_utf8_lossy(&bytes));
    let i = text.find("panicked")?;
    let start = text[..i].rfind('\n').map_or(0, |n| n + 1);
    Some(
        text[start..]
            .lines()
            .take(12)
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// The log without terminal colour codes.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    const MAX: usize = 2048;
    let shown: String = bytes.iter().take(MAX).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > MAX {
        format!("{shown}… ({} bytes)", bytes.len())
    } else {
        shown
    }
}

// ---------------------------------------------------------------------------------------------
// MQTT packets, built by hand so every field and length can be chosen (and broken)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    V4,
    V5,
}

/// A packet under construction: the body, and where its length fields are.
#[derive(Default)]
struct Body {
    bytes: Vec<u8>,
    lengths: Vec<usize>,
}

impl Body {
    fn u8(&mut self, v: u8) {
        self.bytes.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.bytes.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes.extend_from_slice(&v.to_be_bytes());
    }
    fn varint(&mut self, mut v: u32) {
        loop {
            let mut b = (v & 0x7F) as u8;
            v >>= 7;
            if v > 0 {
                b |= 0x80;
            }
            self.bytes.push(b);
            if v == 0 {
                break;
            }
        }
    }
    /// A two-byte-length string or binary.
    fn str(&mut self, s: &[u8]) {
        self.lengths.push(self.bytes.len() + 1);
        self.u16(s.len() as u16);
        self.bytes.extend_from_slice(s);
    }
    /// An MQTT 5 property list.
    fn props(&mut self, props: &Props) {
        self.lengths.push(self.bytes.len());
        self.varint(props.0.bytes.len() as u32);
        let base = self.bytes.len();
        self.lengths
            .extend(props.0.lengths.iter().map(|i| base + i));
        self.bytes.extend_from_slice(&props.0.bytes);
    }
    /// The packet: `byte1`, the remaining length, the body.
    fn packet(self, byte1: u8) -> Frame {
        let mut head = Body::default();
        head.u8(byte1);
        head.varint(self.bytes.len() as u32);
        let off = head.bytes.len();
        let mut bytes = head.bytes;
        bytes.extend_from_slice(&self.bytes);
        Frame {
            bytes,
            lengths: self.lengths.iter().map(|i| i + off).collect(),
        }
    }
}

/// An encoded packet and the offsets of its length fields.
struct Frame {
    bytes: Vec<u8>,
    lengths: Vec<usize>,
}

#[derive(Default)]
struct Props(Body);

impl Props {
    fn byte(&mut self, id: u8, v: u8) {
        self.0.u8(id);
        self.0.u8(v);
    }
    fn u16(&mut self, id: u8, v: u16) {
        self.0.u8(id);
        self.0.u16(v);
    }
    fn u32(&mut self, id: u8, v: u32) {
        self.0.u8(id);
        self.0.u32(v);
    }
    fn varint(&mut self, id: u8, v: u32) {
        self.0.u8(id);
        self.0.varint(v);
    }
    fn str(&mut self, id: u8, s: &[u8]) {
        self.0.u8(id);
        self.0.str(s);
    }
    fn pair(&mut self, k: &[u8], v: &[u8]) {
        self.0.u8(0x26);
        self.0.str(k);
        self.0.str(v);
    }
}

/// Who the fuzzed connection is and what it may name.
struct MqttCtx {
    /// `Some((account, secret))` for a device of `a`; `None` in open mode.
    login: Option<(String, String)>,
    client_id: String,
}

impl MqttCtx {
    fn account(&self) -> &str {
        self.login.as_ref().map(|l| l.0.as_str()).unwrap_or("open")
    }
}

fn small_str(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 => rng.pick(INTERESTING).to_vec(),
        1 => b"application/json".to_vec(),
        2 => "ünïcødé ✓".as_bytes().to_vec(),
        _ => {
            let n = rng.below(12);
            (0..n).map(|_| b'a' + rng.below(26) as u8).collect()
        }
    }
}

fn user_props(rng: &mut Rng, p: &mut Props) {
    for _ in 0..rng.below(3) {
        let k = small_str(rng);
        let v = small_str(rng);
        p.pair(&k, &v);
    }
}

/// A topic a fuzzed client might publish to: mostly ones the ACL allows, some it refuses,
/// some another account owns, some only a broken parser would accept.
fn topic(rng: &mut Rng, ctx: &MqttCtx) -> Vec<u8> {
    let a = ctx.account();
    let c = &ctx.client_id;
    let other = *rng.pick(&["fz0", "fz1", "fz2", "fz3", "probe", "pwa0", "x"]);
    let t = match rng.below(12) {
        0..=2 => format!("accounts/{a}/clients/{c}/status"),
        3..=4 => format!("accounts/{a}/clients/{other}/webrtc_inbox"),
        5 => format!("accounts/{a}/baby_stations/{c}"),
        6 => format!("accounts/{a}/parent_stations/{c}"),
        7 => format!("accounts/{a}/clients/{other}/status"),
        // another account's inbox (never the canary's name: see `World::crossed`)
        8 => "accounts/b/clients/fz0/webrtc_inbox".to_string(),
        9 => {
            let mut t = rng.pick(INTERESTING).to_vec();
            if rng.chance(50) {
                t.extend_from_slice(b"/x");
            }
            return t;
        }
        _ => {
            let levels = [
                "accounts",
                a,
                "b",
                "clients",
                "+",
                "#",
                "status",
                "webrtc_inbox",
                "é",
                "$SYS",
                c,
                "",
                "日本",
                "probe",
            ];
            let n = 1 + rng.below(6);
            (0..n)
                .map(|_| *rng.pick(&levels))
                .collect::<Vec<_>>()
                .join("/")
        }
    };
    let mut t = t.into_bytes();
    if rng.chance(10) {
        // one interesting character somewhere in an otherwise good topic
        let i = rng.below(t.len() + 1);
        let ins = rng.pick(INTERESTING_BYTES).to_vec();
        t.splice(i..i, ins);
    }
    t
}

fn filter(rng: &mut Rng, ctx: &MqttCtx) -> Vec<u8> {
    let a = ctx.account();
    let c = &ctx.client_id;
    let f = match rng.below(10) {
        0 => format!("accounts/{a}/#"),
        1 => format!("accounts/{a}/clients/+/status"),
        2 => format!("accounts/{a}/clients/{c}/webrtc_inbox"),
        3 => format!("$share/g/accounts/{a}/#"),
        4 => "accounts/b/#".to_string(),
        5 => "accounts/+/clients/+/status".to_string(),
        6 => "#".to_string(),
        7 => return rng.pick(INTERESTING).to_vec(),
        _ => return topic(rng, ctx),
    };
    f.into_bytes()
}

fn payload(rng: &mut Rng, ctx: &MqttCtx) -> Vec<u8> {
    match rng.below(8) {
        0..=2 => format!(
            r#"{{"type":"{}","connection_id":"{}-{}","at_millis":{}}}"#,
            rng.pick(&["connected", "disconnected", "bogus"]),
            ctx.client_id,
            rng.below(1000),
            1_700_000_000_000u64 + rng.below(1 << 20) as u64
        )
        .into_bytes(),
        3 => br#"{"from":"fz0","data":{"sdp":"offer"}}"#.to_vec(),
        4 => Vec::new(),
        5 => {
            let n = rng.below(64);
            rng.bytes(n)
        }
        6 => vec![b'x'; *rng.pick(&[1000usize, 20_000, 300_000])],
        _ => {
            let n = "é".repeat(rng.below(10));
            format!(r#"{{"type":"connected","connection_id":"{n}","at_millis":-1}}"#).into_bytes()
        }
    }
}

fn connect(rng: &mut Rng, ctx: &MqttCtx, proto: Proto) -> Frame {
    let mut b = Body::default();
    b.str(b"MQTT");
    b.u8(match proto {
        Proto::V4 => 4,
        Proto::V5 => 5,
    });
    let will = rng.chance(30);
    let will_qos = rng.below(3) as u8;
    let will_retain = rng.chance(50);
    let mut flags = 0x02; // clean session
    if will {
        flags |= 0x04 | (will_qos << 3) | if will_retain { 0x20 } else { 0 };
    }
    let login = ctx.login.clone().or_else(|| {
        // open mode: sometimes a user name anyway
        rng.chance(20)
            .then(|| ("someone".to_string(), String::new()))
    });
    if let Some((_, p)) = &login {
        flags |= 0x80;
        if !p.is_empty() {
            flags |= 0x40;
        }
    }
    b.u8(flags);
    b.u16(*rng.pick(&[0, 5, 30, 60, 0xFFFF]));
    if proto == Proto::V5 {
        let mut p = Props::default();
        if rng.chance(50) {
            p.u32(0x11, rng.u32());
        }
        if rng.chance(50) {
            p.u16(0x21, rng.u16());
        }
        if rng.chance(40) {
            p.u32(0x27, rng.u32());
        }
        if rng.chance(50) {
            p.u16(0x22, rng.u16());
        }
        if rng.chance(30) {
            p.byte(0x19, rng.below(2) as u8);
        }
        if rng.chance(30) {
            p.byte(0x17, rng.below(2) as u8);
        }
        if rng.chance(5) {
            p.str(0x15, b"SCRAM-SHA-1");
            let d = small_str(rng);
            p.str(0x16, &d);
        }
        user_props(rng, &mut p);
        b.props(&p);
    }
    let id = if ctx.login.is_none() && rng.chance(10) {
        Vec::new()
    } else {
        ctx.client_id.clone().into_bytes()
    };
    b.str(&id);
    if will {
        if proto == Proto::V5 {
            let mut p = Props::default();
            if rng.chance(40) {
                p.u32(0x18, rng.u32());
            }
            if rng.chance(40) {
                p.byte(0x01, rng.below(2) as u8);
            }
            if rng.chance(40) {
                p.u32(0x02, rng.u32());
            }
            if rng.chance(40) {
                let s = small_str(rng);
                p.str(0x03, &s);
            }
            if rng.chance(30) {
                let t = topic(rng, ctx);
                p.str(0x08, &t);
            }
            if rng.chance(30) {
                let d = rng.bytes(8);
                p.str(0x09, &d);
            }
            user_props(rng, &mut p);
            b.props(&p);
        }
        let t = if rng.chance(70) {
            format!(
                "accounts/{}/clients/{}/status",
                ctx.account(),
                ctx.client_id
            )
            .into_bytes()
        } else {
            topic(rng, ctx)
        };
        b.str(&t);
        let pl = format!(
            r#"{{"type":"disconnected","connection_id":"{}-w","at_millis":1}}"#,
            ctx.client_id
        );
        b.str(pl.as_bytes());
    }
    if let Some((u, p)) = &login {
        b.str(u.as_bytes());
        if !p.is_empty() {
            b.str(p.as_bytes());
        }
    }
    b.packet(0x10)
}

/// Packet ids a case uses: few, so acks often name a packet in flight.
fn pkid(rng: &mut Rng) -> u16 {
    *rng.pick(&[1, 2, 3, 0, 0xFFFF])
}

fn publish(rng: &mut Rng, ctx: &MqttCtx, proto: Proto) -> Frame {
    let qos = *rng.pick(&[0u8, 1, 1, 2]);
    let retain = rng.chance(20);
    let dup = rng.chance(5);
    let mut b = Body::default();
    let alias_only = proto == Proto::V5 && rng.chance(15);
    let t = if alias_only {
        Vec::new()
    } else {
        topic(rng, ctx)
    };
    b.str(&t);
    if qos > 0 {
        b.u16(pkid(rng));
    }
    if proto == Proto::V5 {
        let mut p = Props::default();
        // each kind of PUBLISH property, alone or together
        if rng.chance(40) {
            p.byte(0x01, rng.below(2) as u8);
        }
        if rng.chance(40) {
            p.u32(0x02, rng.u32());
        }
        if rng.chance(40) {
            let s = small_str(rng);
            p.str(0x03, &s);
        }
        if rng.chance(30) {
            let r = topic(rng, ctx);
            p.str(0x08, &r);
        }
        if rng.chance(30) {
            let d = {
                let n = rng.below(16);
                rng.bytes(n)
            };
            p.str(0x09, &d);
        }
        if alias_only || rng.chance(25) {
            p.u16(0x23, *rng.pick(&[1, 2, 3, 0, 1024, 1025, 0xFFFF]));
        }
        if rng.chance(5) {
            p.varint(0x0B, rng.below(300) as u32);
        }
        if rng.chance(40) {
            user_props(rng, &mut p);
        }
        b.props(&p);
    }
    let pl = payload(rng, ctx);
    b.bytes.extend_from_slice(&pl);
    b.packet(0x30 | (dup as u8) << 3 | qos << 1 | retain as u8)
}

fn subscribe(rng: &mut Rng, ctx: &MqttCtx, proto: Proto) -> Frame {
    let mut b = Body::default();
    b.u16(pkid(rng));
    if proto == Proto::V5 {
        let mut p = Props::default();
        if rng.chance(30) {
            p.varint(0x0B, *rng.pick(&[0, 1, 127, 128, 268_435_455]));
        }
        user_props(rng, &mut p);
        b.props(&p);
    }
    for _ in 0..1 + rng.below(3) {
        let f = filter(rng, ctx);
        b.str(&f);
        let options = match proto {
            // QoS, no local, retain as published, retain handling
            Proto::V5 => {
                rng.below(3) as u8
                    | (rng.chance(30) as u8) << 2
                    | (rng.chance(30) as u8) << 3
                    | (rng.below(3) as u8) << 4
            }
            Proto::V4 => rng.below(3) as u8,
        };
        b.u8(options);
    }
    b.packet(0x82)
}

fn unsubscribe(rng: &mut Rng, ctx: &MqttCtx, proto: Proto) -> Frame {
    let mut b = Body::default();
    b.u16(pkid(rng));
    if proto == Proto::V5 {
        let mut p = Props::default();
        user_props(rng, &mut p);
        b.props(&p);
    }
    for _ in 0..1 + rng.below(2) {
        let f = filter(rng, ctx);
        b.str(&f);
    }
    b.packet(0xA2)
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP.
fn ack(rng: &mut Rng, proto: Proto) -> Frame {
    let byte1 = *rng.pick(&[0x40, 0x50, 0x62, 0x70]);
    let mut b = Body::default();
    b.u16(pkid(rng));
    if proto == Proto::V5 && rng.chance(60) {
        b.u8(*rng.pick(&[0x00, 0x10, 0x80, 0x87, 0x92]));
        if rng.chance(60) {
            let mut p = Props::default();
            if rng.chance(50) {
                let s = small_str(rng);
                p.str(0x1F, &s);
            }
            user_props(rng, &mut p);
            b.props(&p);
        }
    }
    b.packet(byte1)
}

fn disconnect(rng: &mut Rng, proto: Proto) -> Frame {
    let mut b = Body::default();
    if proto == Proto::V5 && rng.chance(70) {
        b.u8(*rng.pick(&[0x00, 0x04, 0x80, 0x81, 0x8E, 0x93]));
        let mut p = Props::default();
        if rng.chance(30) {
            p.u32(0x11, rng.u32());
        }
        if rng.chance(30) {
            let s = small_str(rng);
            p.str(0x1F, &s);
        }
        if rng.chance(10) {
            p.str(0x1C, b"elsewhere:1883");
        }
        user_props(rng, &mut p);
        b.props(&p);
    }
    b.packet(0xE0)
}

fn auth(rng: &mut Rng) -> Frame {
    let mut b = Body::default();
    b.u8(*rng.pick(&[0x00, 0x18, 0x19]));
    let mut p = Props::default();
    p.str(0x15, b"SCRAM-SHA-1");
    if rng.chance(60) {
        let d = {
            let n = rng.below(32);
            rng.bytes(n)
        };
        p.str(0x16, &d);
    }
    if rng.chance(30) {
        let s = small_str(rng);
        p.str(0x1F, &s);
    }
    user_props(rng, &mut p);
    b.props(&p);
    b.packet(0xF0)
}

/// One MQTT case: the bytes of a whole session (CONNECT, then packets) as a list of writes.
fn mqtt_case(rng: &mut Rng, ctx: &MqttCtx) -> (Vec<Vec<u8>>, Proto) {
    let proto = if rng.chance(50) { Proto::V5 } else { Proto::V4 };
    let mut frames = vec![connect(rng, ctx, proto)];
    for _ in 0..1 + rng.below(6) {
        let f = match rng.below(20) {
            0..=8 => publish(rng, ctx, proto),
            9..=11 => subscribe(rng, ctx, proto),
            12 => unsubscribe(rng, ctx, proto),
            13..=15 => ack(rng, proto),
            16 => Body::default().packet(0xC0),
            17 => disconnect(rng, proto),
            18 => auth(rng),
            _ => {
                // a packet type a client never sends (CONNACK, SUBACK, PINGRESP, reserved)
                let n = rng.below(6);
                let b = Body {
                    bytes: rng.bytes(n),
                    lengths: Vec::new(),
                };
                b.packet(*rng.pick(&[0x20, 0x90, 0xB0, 0xD0, 0x00, 0x11, 0x33 | 0x06]))
            }
        };
        frames.push(f);
    }
    let plain: Vec<Vec<u8>> = frames.iter().map(|f| f.bytes.clone()).collect();
    let mut out = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let mut bytes = f.bytes.clone();
        // the CONNECT mostly stays valid so that the packets behind it reach the ACL
        let p = if i == 0 { 8 } else { 50 };
        if rng.chance(p) {
            mutate(rng, &mut bytes, &f.lengths, &plain);
            if rng.chance(50) {
                fix_remaining_length(&mut bytes);
            }
        }
        if rng.chance(3) {
            out.push(bytes.clone()); // duplicated
        }
        out.push(bytes);
    }
    // sometimes one write, sometimes split at random points
    if rng.chance(70) {
        return (vec![out.concat()], proto);
    }
    let all = out.concat();
    let mut writes = Vec::new();
    let mut rest = &all[..];
    while !rest.is_empty() {
        let n = 1 + rng.below(rest.len());
        writes.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    (writes, proto)
}

/// Rewrites the fixed header's remaining length to the actual body, so the mutation hits
/// the packet's inside rather than its framing.
fn fix_remaining_length(bytes: &mut Vec<u8>) {
    if bytes.is_empty() {
        return;
    }
    let mut i = 1;
    while i < bytes.len() && i < 5 && bytes[i] & 0x80 != 0 {
        i += 1;
    }
    let body = bytes.get(i + 1..).map(<[u8]>::to_vec).unwrap_or_default();
    let b = Body {
        bytes: body,
        lengths: Vec::new(),
    };
    let byte1 = bytes[0];
    *bytes = b.packet(byte1).bytes;
}

// ---------------------------------------------------------------------------------------------
// Sending a case and watching the log
// ---------------------------------------------------------------------------------------------

/// Writes `writes` to a fresh TCP connection and returns what came back before the server
/// closed or went quiet. `Err` only when the server could not be reached at all.
async fn exchange(port: u16, writes: &[Vec<u8>], quiet: Duration) -> Result<Vec<u8>, String> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(5),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .map_err(|_| format!("connect to port {port} timed out"))?
    .map_err(|e| format!("connect to port {port}: {e}"))?;
    let _ = s.set_nodelay(true);
    for w in writes {
        if s.write_all(w).await.is_err() {
            break;
        }
        if writes.len() > 1 {
            tokio::task::yield_now().await;
        }
    }
    Ok(read_until_quiet(
        &mut s,
        Duration::from_secs(1),
        quiet,
        Duration::from_secs(3),
    )
    .await)
}

async fn read_until_quiet(
    s: &mut TcpStream,
    first: Duration,
    quiet: Duration,
    total: Duration,
) -> Vec<u8> {
    let mut got = Vec::new();
    let deadline = Instant::now() + total;
    let mut buf = [0u8; 16384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        // the first answer (a CONNACK, a response) may wait for a password check on a busy
        // machine: up to `first`; after it, `quiet` without a byte ends the exchange
        let wait = if got.is_empty() { first } else { quiet };
        match tokio::time::timeout(wait.min(left), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

/// What every test shares: the seed, the target's name, the last cases (for the report),
/// and the first failure.
struct Run {
    seed: u64,
    target: &'static str,
    log_path: std::path::PathBuf,
    recent: Mutex<VecDeque<(u64, String)>>,
    failure: Mutex<Option<String>>,
    /// Cases whose connection was accepted (MQTT: CONNACK 0): a fuzzer whose every case is
    /// refused at the door tests nothing behind it.
    accepted: std::sync::atomic::AtomicU64,
    /// How far the workers have read the log.
    log_offset: Mutex<u64>,
}

impl Run {
    fn new(seed: u64, target: &'static str, cradle: &Cradle) -> Arc<Run> {
        eprintln!("hostile_fuzz {target}: CRADLE_FUZZ_SEED={seed:#x}");
        Arc::new(Run {
            seed,
            target,
            log_path: cradle.stderr_path.clone(),
            recent: Mutex::new(VecDeque::new()),
            failure: Mutex::new(None),
            accepted: Default::default(),
            log_offset: Mutex::new(0),
        })
    }

    fn rng(&self, index: u64) -> Rng {
        Rng::for_case(self.seed, self.target, index)
    }

    fn record(&self, index: u64, what: String) {
        let mut r = self.recent.lock().unwrap();
        r.push_back((index, what));
        if r.len() > 2 * WORKERS {
            r.pop_front();
        }
    }

    fn failed(&self) -> bool {
        self.failure.lock().unwrap().is_some()
    }

    /// Records the first failure with the cases that led to it.
    fn fail(&self, index: u64, why: &str) {
        let mut f = self.failure.lock().unwrap();
        if f.is_some() {
            return;
        }
        let cases: String = self
            .recent
            .lock()
            .unwrap()
            .iter()
            .map(|(i, w)| format!("  case {i}: {w}\n"))
            .collect();
        *f = Some(format!(
            "hostile_fuzz {target}: {why}\n  at case {index}; reproduce with CRADLE_FUZZ_SEED={seed:#x} CRADLE_FUZZ_CASE=<case> cargo test --test hostile_fuzz {target}\n  the last cases (in flight on {WORKERS} workers):\n{cases}",
            target = self.target,
            seed = self.seed,
        ));
    }

    /// Do the log's lines since the last look show a panic?
    fn panicked_since_last_look(&self) -> Option<String> {
        panic_in_log(&self.log_path, &mut self.log_offset.lock().unwrap())
    }

    fn finish(&self, cradle: &Cradle) {
        if let Some(f) = self.failure.lock().unwrap().take() {
            let log = strip_ansi(&cradle.log());
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!("{f}\ncradle's log (last lines):\n{}", tail.join("\n"));
        }
    }
}

/// Runs `case` under every seed of [`seeds`] in turn, a fresh [`Run`] each (its seed printed),
/// checking the world after every batch; the first seed that fails ends the test, naming
/// the seed and the case to replay.
async fn fuzz_seeds<F, Fut>(world: &Arc<World>, target: &'static str, budget: &Budget, case: F)
where
    F: Fn(Arc<Run>, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    for seed in seeds() {
        let run = Run::new(seed, target, &world.cradle);
        drive(&run, budget, case.clone(), |end| {
            let world = world.clone();
            async move { world.check(end).await }
        })
        .await;
        run.finish(&world.cradle);
    }
}

/// Runs `cases` cases on `WORKERS` concurrent workers, `batch` at a time, calling `check`
/// after every batch; stops at the first failure.
async fn drive<F, Fut, C, CFut>(run: &Arc<Run>, budget: &Budget, case: F, mut check: C)
where
    F: Fn(Arc<Run>, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
    C: FnMut(u64) -> CFut,
    CFut: std::future::Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    if let Err(e) = check(0).await {
        run.fail(0, &format!("before any case: {e}"));
        return;
    }
    let (first, end) = match budget.only {
        Some(i) => (i, i + 1),
        None => (0, budget.cases),
    };
    let mut at = first;
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    while at < end && !run.failed() {
        let stop = (at + budget.batch).min(end);
        let mut tasks = Vec::new();
        for w in 0..WORKERS {
            let run = run.clone();
            let case = case.clone();
            let done = done.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = at + w as u64;
                while i < stop && !run.failed() {
                    // the client a case connects as follows from its index, so `CRADLE_FUZZ_CASE`
                    // replays it byte for byte
                    case(run.clone(), (i % WORKERS as u64) as usize, i).await;
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let Some(p) = run.panicked_since_last_look() {
                        run.fail(i, &format!("the log shows a panic:\n{p}"));
                    }
                    i += WORKERS as u64;
                }
            }));
        }
        for t in tasks {
            if let Err(e) = t.await {
                run.fail(at, &format!("the harness panicked: {e}"));
            }
        }
        if run.failed() {
            break;
        }
        if let Err(e) = check(stop).await {
            run.fail(stop, &format!("after the batch ending at case {stop}: {e}"));
        }
        at = stop;
    }
    eprintln!(
        "hostile_fuzz {}: {} cases in {:.1?}, {} accepted",
        run.target,
        done.load(std::sync::atomic::Ordering::Relaxed),
        started.elapsed(),
        run.accepted.load(std::sync::atomic::Ordering::Relaxed),
    );
}

// ---------------------------------------------------------------------------------------------
// The world: Cradle with accounts a and b, and the checks after every batch
// ---------------------------------------------------------------------------------------------

struct World {
    _dir: tempfile::TempDir,
    cradle: Cradle,
    /// Device secrets of `a`'s fuzzing clients `fz0..fz3` (empty in open mode).
    secrets: Vec<String>,
    /// `a`'s probe device secret (`None` in open mode).
    probe: Option<String>,
    /// A bearer token of `a`.
    token: Option<String>,
    canary: Option<Canary>,
    /// A second token of `a` for the bridge's raw-socket cases.
    token2: Option<String>,
    /// How far the batch checks have read the log.
    log_offset: Mutex<u64>,
}

impl World {
    /// Cradle with accounts `a` and `b`: four fuzzing devices and a probe in `a`, the
    /// canary in `b` (connected, subscribed to `accounts/b/#`, its status retained).
    async fn accounts() -> World {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("fuzz.db").display());
        cli(&db, &["accounts", "create", "a"]);
        cli(&db, &["accounts", "create", "b"]);
        let issue = |acct: &str, client: &str| {
            cli(
                &db,
                &[
                    "credentials",
                    "issue",
                    "--account",
                    acct,
                    "--client",
                    client,
                ],
            )
        };
        let secrets: Vec<String> = (0..WORKERS)
            .map(|w| issue("a", &format!("fz{w}")))
            .collect();
        let probe = issue("a", "probe");
        let canary_secret = issue("b", CANARY);
        let token = cli(&db, &["credentials", "issue", "--account", "a", "--token"]);
        let token2 = cli(&db, &["credentials", "issue", "--account", "a", "--token"]);
        // The fuzzers' bad secrets and tokens come from 127.0.0.1, and the verification gate
        // delays that source (up to auth.failure_delay_max_ms) as it would an attacker. The
        // liveness probe connects from the same address: a verified secret cached for the
        // whole run keeps it out of that queue (with the default 60 s, every run longer than
        // a minute found the probe waiting behind the fuzzers and timing out).
        let config = dir.path().join("fuzz.toml");
        std::fs::write(&config, "[auth]\ncache_secs = 86400\n").unwrap();
        let cradle = Cradle::spawn_ready(
            dir.path(),
            &db,
            &[
                ("CRADLE_ADMIN_TOKEN", ADMIN.to_string()),
                ("CRADLE_CONFIG", config.display().to_string()),
            ],
        )
        .await;
        let canary = Canary::start(cradle.mqtt_port, &canary_secret).await;
        World {
            _dir: dir,
            cradle,
            secrets,
            probe: Some(probe),
            token: Some(token),
            token2: Some(token2),
            canary: Some(canary),
            log_offset: Mutex::new(0),
        }
    }

    /// Cradle with no account: open mode (loopback).
    async fn open() -> World {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("fuzz.db").display());
        let cradle = Cradle::spawn_ready(dir.path(), &db, &[]).await;
        World {
            _dir: dir,
            cradle,
            secrets: Vec::new(),
            probe: None,
            token: None,
            token2: None,
            canary: None,
            log_offset: Mutex::new(0),
        }
    }

    fn ctx(&self, worker: usize) -> MqttCtx {
        MqttCtx {
            login: self
                .secrets
                .get(worker)
                .map(|s| ("a".to_string(), s.clone())),
            client_id: format!("fz{worker}"),
        }
    }

    /// The checks after every batch.
    async fn check(&self, batch_end: u64) -> Result<(), String> {
        if let Some(p) = panic_in_log(
            &self.cradle.stderr_path,
            &mut self.log_offset.lock().unwrap(),
        ) {
            return Err(format!("the log shows a panic:\n{p}"));
        }
        self.ready().await?;
        // a panic the broker caught is still a panic (counted when the series exists)
        let metrics = self.cradle.metrics().await;
        if let Some(line) = metrics.lines().find(|l| {
            l.starts_with("cradle_broker_panics_total")
                && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) > Some(0.0)
        }) {
            return Err(format!("the broker caught a panic: {line}"));
        }
        let (port, id, login, topic) = match &self.probe {
            Some(secret) => (
                self.cradle.mqtt_port,
                "probe",
                Some(("a", secret.as_str())),
                "accounts/a/clients/probe/webrtc_inbox".to_string(),
            ),
            None => (
                self.cradle.mqtt_port,
                "probe",
                None,
                "probe/round-trip".to_string(),
            ),
        };
        round_trip(port, id, login, &topic, batch_end)
            .await
            .map_err(|e| format!("a fresh client with valid credentials: {e}"))?;
        if let Some(canary) = &self.canary {
            canary.check()?;
            self.b_is_untouched().await?;
        }
        Ok(())
    }

    async fn ready(&self) -> Result<(), String> {
        let url = format!("{}/readyz", self.cradle.http);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = String::new();
        while Instant::now() < deadline {
            match reqwest::get(&url).await {
                Ok(r) if r.status() == 200 => return Ok(()),
                Ok(r) => last = format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("/readyz did not answer 200 within 10 s: {last}"))
    }

    /// `b`'s events are the canary's alone and it has no sessions: nothing `a` did landed
    /// in `b`'s store.
    async fn b_is_untouched(&self) -> Result<(), String> {
        let http = reqwest::Client::new();
        let get = |path: String| {
            http.get(format!("{}{path}", self.cradle.http))
                .bearer_auth(ADMIN)
                .send()
        };
        let events: serde_json::Value = get("/v1/accounts/b/events?after=0&limit=1000".into())
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        for e in events["events"].as_array().into_iter().flatten() {
            let text = e.to_string();
            if !text.contains(CANARY) {
                return Err(format!(
                    "account b has an event that is not the canary's: {text}"
                ));
            }
        }
        for route in ["baby-stations", "parent-stations"] {
            let body: serde_json::Value = get(format!("/v1/accounts/b/{route}"))
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            let list = body[route.replace('-', "_")].as_array().cloned();
            if list.as_ref().is_some_and(|l| !l.is_empty()) {
                return Err(format!("account b has {route} it never started: {body}"));
            }
        }
        Ok(())
    }

    /// Something a client of `a` received mentions `b`'s canary?
    fn crossed(received: &[u8]) -> bool {
        received
            .windows(CANARY.len())
            .any(|w| w == CANARY.as_bytes())
    }
}

async fn recv10<T>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>) -> Option<T> {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .ok()
        .flatten()
}

/// Connects, subscribes `topic`, publishes a nonce to it and waits for it (10 s each step).
async fn round_trip(
    port: u16,
    id: &str,
    login: Option<(&str, &str)>,
    topic: &str,
    nonce: u64,
) -> Result<(), String> {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    if let Some((u, p)) = login {
        o.set_credentials(u, p);
    }
    let (client, mut el) = AsyncClient::new(o, 10);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let e = el.poll().await;
            let stop = e.is_err();
            if tx.send(e.map_err(|e| e.to_string())).is_err() || stop {
                return;
            }
        }
    });
    let step = |what: &'static str| format!("no {what} within 10 s");
    let result = async {
        // CONNACK
        loop {
            match recv10(&mut rx).await {
                Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("connection failed: {e}")),
                None => return Err(step("CONNACK")),
            }
        }
        client
            .subscribe(topic, QoS::AtLeastOnce)
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match recv10(&mut rx).await {
                Some(Ok(Event::Incoming(Packet::SubAck(a)))) => {
                    if a.return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    {
                        return Err(format!("SUBSCRIBE {topic} refused"));
                    }
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("connection failed: {e}")),
                None => return Err(step("SUBACK")),
            }
        }
        // A JSON object: inbox payloads must be one (the edge stamps `from` into it).
        let nonce = format!("round-trip {nonce}");
        let body = serde_json::json!({ "data": nonce }).to_string();
        client
            .publish(topic, QoS::AtLeastOnce, false, body)
            .await
            .map_err(|e| e.to_string())?;
        // One deadline for the delivery: keep-alive traffic must not extend the wait.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let ours = |payload: &[u8]| {
            serde_json::from_slice::<serde_json::Value>(payload)
                .is_ok_and(|v| v["data"] == nonce.as_str())
        };
        loop {
            let next = tokio::time::timeout_at(deadline, recv10(&mut rx))
                .await
                .unwrap_or(None);
            match next {
                Some(Ok(Event::Incoming(Packet::Publish(p)))) if ours(&p.payload) => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("connection failed: {e}")),
                None => return Err(step("delivery of its own publish")),
            }
        }
    }
    .await;
    let _ = client.try_disconnect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    task.abort();
    result
}

/// A device of account `b` subscribed to `accounts/b/#`: it may receive its own status and
/// nothing else.
struct Canary {
    got: Arc<Mutex<Vec<(String, String)>>>,
    _client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Canary {
    async fn start(port: u16, secret: &str) -> Canary {
        let mut o = MqttOptions::new(CANARY, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_credentials("b", secret);
        let (client, mut el) = AsyncClient::new(o, 100);
        let got = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = {
            let got = got.clone();
            let client = client.clone();
            tokio::spawn(async move {
                let mut ready = Some(ready_tx);
                loop {
                    match el.poll().await {
                        // (again after every reconnect: the session is clean)
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = client.try_subscribe("accounts/b/#", QoS::AtLeastOnce);
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            got.lock().unwrap().push((
                                p.topic.clone(),
                                String::from_utf8_lossy(&p.payload).into_owned(),
                            ));
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            })
        };
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("the canary subscribed")
            .unwrap();
        let status = format!(
            r#"{{"type":"connected","connection_id":"{CANARY_CONNECTION}","at_millis":1700000000000}}"#
        );
        client
            .publish(
                format!("accounts/b/clients/{CANARY}/status"),
                QoS::AtLeastOnce,
                true,
                status,
            )
            .await
            .unwrap();
        Canary {
            got,
            _client: client,
            task,
        }
    }

    fn check(&self) -> Result<(), String> {
        let own = format!("accounts/b/clients/{CANARY}/status");
        let got = self.got.lock().unwrap();
        match got.iter().find(|(t, _)| *t != own) {
            Some((t, p)) => Err(format!(
                "the canary of account b received a message it did not send: {t} {p:?}"
            )),
            None => Ok(()),
        }
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// MQTT
// ---------------------------------------------------------------------------------------------

async fn fuzz_mqtt(world: World, target: &'static str, default_cases: u64) {
    let budget = Budget::from_env(default_cases);
    let world = Arc::new(world);
    let ports = [world.cradle.mqtt_port, world.cradle.v5_port];
    let w2 = world.clone();
    let case = move |run: Arc<Run>, worker: usize, index: u64| {
        let world = w2.clone();
        async move {
            let mut rng = run.rng(index);
            let ctx = world.ctx(worker);
            let (writes, proto) = mqtt_case(&mut rng, &ctx);
            let port = *rng.pick(&ports);
            run.record(
                index,
                format!(
                    "MQTT {proto:?} as {} to port {port}, {} write(s): {}",
                    ctx.client_id,
                    writes.len(),
                    hex(&writes.concat())
                ),
            );
            match exchange(port, &writes, Duration::from_millis(40)).await {
                Err(e) => run.fail(index, &e),
                Ok(got) if ctx.login.is_some() && World::crossed(&got) => run.fail(
                    index,
                    &format!("a client of a received b's canary: {}", hex(&got)),
                ),
                Ok(got) => {
                    // CONNACK (3.1.1: 20 02 flags 00; 5: 20 len flags 00)
                    if got.len() >= 4 && got[0] == 0x20 && got[3] == 0 {
                        run.accepted
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }
    };
    fuzz_seeds(&world, target, &budget, case).await;
}

/// Devices of account `a` send mutated MQTT 3.1.1 and 5 sessions to both MQTT listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_packets_from_authenticated_devices_never_panic_nor_cross_accounts() {
    fuzz_mqtt(World::accounts().await, "mqtt_accounts", 1000).await;
}

/// Anonymous clients (open mode: publish anywhere) send mutated MQTT sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_packets_in_open_mode_never_panic() {
    fuzz_mqtt(World::open().await, "mqtt_open", 500).await;
}

// ---------------------------------------------------------------------------------------------
// WebSocket bridge
// ---------------------------------------------------------------------------------------------

fn json_value(rng: &mut Rng, depth: usize) -> String {
    let leaf = |rng: &mut Rng| -> String {
        match rng.below(9) {
            0 => "null".into(),
            1 => "true".into(),
            2 => rng
                .pick(&[
                    "0",
                    "-0",
                    "1e308",
                    "-1e-308",
                    "123456789012345678901234567890",
                    "1.5",
                ])
                .to_string(),
            3 => {
                let s = *rng.pick(INTERESTING);
                serde_json::to_string(&String::from_utf8_lossy(s)).unwrap()
            }
            4 => "\"\\ud800\"".into(),
            5 => serde_json::to_string(&"x".repeat(rng.below(300))).unwrap(),
            _ => serde_json::to_string(&String::from_utf8_lossy(&small_str(rng))).unwrap(),
        }
    };
    if depth == 0 || rng.chance(40) {
        return leaf(rng);
    }
    let n = rng.below(4);
    if rng.chance(50) {
        let items: Vec<String> = (0..n).map(|_| json_value(rng, depth - 1)).collect();
        format!("[{}]", items.join(","))
    } else {
        let items: Vec<String> = (0..n)
            .map(|_| {
                let k = serde_json::to_string(&String::from_utf8_lossy(&small_str(rng))).unwrap();
                format!("{k}:{}", json_value(rng, depth - 1))
            })
            .collect();
        format!("{{{}}}", items.join(","))
    }
}

fn ws_id(rng: &mut Rng) -> String {
    let s = *rng.pick(&[
        "fz0", "probe", "pwa0", "pwa1", "", "a/b", "+", "#", "é", "x y", "$SYS",
    ]);
    if rng.chance(5) {
        "i".repeat(*rng.pick(&[128usize, 129, 5000]))
    } else {
        s.to_string()
    }
}

/// A client frame of the bridge protocol (docs/websocket.md), valid or nearly.
fn bridge_frame(rng: &mut Rng) -> String {
    let text = match rng.below(10) {
        0..=4 => {
            let mut fields = vec![
                r#""type":"signal""#.to_string(),
                format!(r#""to":{}"#, serde_json::to_string(&ws_id(rng)).unwrap()),
                format!(r#""data":{}"#, json_value(rng, 4)),
            ];
            if rng.chance(30) {
                fields.push(format!(
                    r#""to_connection":{}"#,
                    serde_json::to_string(&ws_id(rng)).unwrap()
                ));
            }
            if rng.chance(10) {
                fields.push(r#""from":"fz9""#.to_string());
            }
            if rng.chance(10) {
                fields.remove(rng.below(fields.len()));
            }
            format!("{{{}}}", fields.join(","))
        }
        5 => r#"{"type":"ping"}"#.into(),
        6 => r#"{"type":"pong"}"#.into(),
        7 => format!(r#"{{"type":{}}}"#, json_value(rng, 1)),
        8 => json_value(rng, 3),
        _ => {
            let d = *rng.pick(&[64usize, 127, 128, 129, 3000]);
            format!("{}{}", "[".repeat(d), "]".repeat(d))
        }
    };
    if rng.chance(40) {
        let mut b = text.into_bytes();
        mutate(rng, &mut b, &[], &[]);
        String::from_utf8_lossy(&b).into_owned()
    } else {
        text
    }
}

/// A raw WebSocket frame from a client: any FIN/RSV/opcode, masked or not, any length
/// encoding (also one that lies).
fn raw_ws_frame(rng: &mut Rng) -> Vec<u8> {
    let opcode = match rng.below(10) {
        0..=3 => 1,
        4 => 2,
        5 => 0,
        6 => 8,
        7 => 9,
        8 => 10,
        _ => rng.below(16) as u8,
    };
    let fin = !rng.chance(15);
    let rsv = if rng.chance(10) {
        (rng.below(7) as u8 + 1) << 4
    } else {
        0
    };
    let payload: Vec<u8> = match rng.below(6) {
        0 | 1 => bridge_frame(rng).into_bytes(),
        2 => b"\xFF\xFE\xC0\x80 not utf-8".to_vec(),
        3 => {
            let mut p = (*rng.pick(&[1000u16, 1005, 1006, 999, 4000, 65535, 0]))
                .to_be_bytes()
                .to_vec();
            p.extend_from_slice(&small_str(rng));
            p
        }
        4 => vec![b'p'; *rng.pick(&[126usize, 65535, 70_000])],
        _ => {
            let n = rng.below(40);
            rng.bytes(n)
        }
    };
    let masked = !rng.chance(10);
    let mut f = vec![(fin as u8) << 7 | rsv | opcode];
    let mask_bit = (masked as u8) << 7;
    let lie = rng.chance(10);
    let len = if lie {
        *rng.pick(&[0u64, 1, 125, 126, 65535, 1 << 40, u64::MAX >> 1, u64::MAX])
    } else {
        payload.len() as u64
    };
    if len < 126 && !rng.chance(5) {
        f.push(mask_bit | len as u8);
    } else if len <= 0xFFFF && !rng.chance(5) {
        f.push(mask_bit | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(mask_bit | 127);
        f.extend_from_slice(&len.to_be_bytes());
    }
    let key = rng.bytes(4);
    if masked {
        f.extend_from_slice(&key);
    }
    f.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| if masked { b ^ key[i % 4] } else { *b }),
    );
    if rng.chance(15) {
        mutate(rng, &mut f, &[1], &[]);
    }
    f
}

/// Checks a server frame: JSON with a `seq`, never `b`'s canary.
fn check_server_text(text: &str) -> Result<(), String> {
    if World::crossed(text.as_bytes()) {
        return Err(format!("a socket of a received b's canary: {text}"));
    }
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("server frame is not JSON ({e}): {text}"))?;
    if !v["seq"].is_u64() {
        return Err(format!("server frame without seq: {text}"));
    }
    Ok(())
}

/// One bridge case through a real WebSocket client: 1 to 8 frames (mostly mutated JSON text;
/// also binary, ping, close), then read what comes back.
async fn ws_client_case(
    http: &str,
    token: &str,
    rng: &mut Rng,
    worker: usize,
    sent: &mut Vec<String>,
) -> Result<(), String> {
    let url = format!(
        "{}/ws?client_id=pwa{worker}&token={token}",
        http.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(&url),
    )
    .await
    .map_err(|_| "upgrade timed out".to_string())?
    .map_err(|e| format!("a valid upgrade was refused: {e}"))?;
    for _ in 0..1 + rng.below(8) {
        let m = match rng.below(10) {
            0..=6 => Message::text(bridge_frame(rng)),
            7 => {
                let n = rng.below(100);
                Message::binary(rng.bytes(n))
            }
            8 => {
                let n = rng.below(100);
                Message::Ping(rng.bytes(n).into())
            }
            _ => Message::Pong(Vec::new().into()),
        };
        sent.push(format!("{m:?}"));
        if ws.send(m).await.is_err() {
            break;
        }
    }
    if rng.chance(30) {
        let _ = ws.close(None).await;
    }
    let deadline = Instant::now() + Duration::from_millis(300);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left.min(Duration::from_millis(60)), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => check_server_text(t.as_str())?,
            Ok(Some(Ok(Message::Binary(b)))) => {
                return Err(format!("the server sent a binary frame: {}", hex(&b)))
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    Ok(())
}

/// One bridge case on a raw socket: a real upgrade, then raw frames.
async fn ws_raw_case(
    port: u16,
    token: &str,
    rng: &mut Rng,
    worker: usize,
) -> (Vec<u8>, Result<(), String>) {
    let handshake = format!(
        "GET /ws?client_id=raw{worker}&token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut frames = Vec::new();
    for _ in 0..1 + rng.below(5) {
        frames.extend(raw_ws_frame(rng));
    }
    let result = async {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(handshake.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                _ => {
                    return Err(format!(
                        "no upgrade answer: {}",
                        String::from_utf8_lossy(&head)
                    ))
                }
            }
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            return Err(format!(
                "a valid upgrade was refused: {}",
                String::from_utf8_lossy(&head)
            ));
        }
        let _ = s.write_all(&frames).await;
        let got = read_until_quiet(
            &mut s,
            Duration::from_millis(60),
            Duration::from_millis(60),
            Duration::from_millis(500),
        )
        .await;
        if World::crossed(&got) || World::crossed(&head) {
            return Err(format!("a socket of a received b's canary: {}", hex(&got)));
        }
        Ok(())
    }
    .await;
    (frames, result)
}

/// The bridge: mutated JSON frames through a real client and raw frames after a real
/// upgrade, as account `a`'s token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_never_panic_nor_cross_accounts() {
    let world = World::accounts().await;
    let budget = Budget::from_env(200);
    let target = "websocket";
    let world = Arc::new(world);
    let w2 = world.clone();
    let case = move |run: Arc<Run>, worker: usize, index: u64| {
        let world = w2.clone();
        async move {
            let mut rng = run.rng(index);
            if rng.chance(50) {
                let token = world.token.clone().unwrap();
                let mut sent = Vec::new();
                let result =
                    ws_client_case(&world.cradle.http, &token, &mut rng, worker, &mut sent).await;
                run.record(
                    index,
                    format!("WebSocket client pwa{worker} sent: {}", sent.join(" | ")),
                );
                match result {
                    Ok(()) => {
                        run.accepted
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => run.fail(index, &e),
                }
            } else {
                let token = world.token2.clone().unwrap();
                let port: u16 = world
                    .cradle
                    .http
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                let (frames, result) = ws_raw_case(port, &token, &mut rng, worker).await;
                run.record(
                    index,
                    format!("raw WebSocket frames as raw{worker}: {}", hex(&frames)),
                );
                match result {
                    Ok(()) => {
                        run.accepted
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => run.fail(index, &e),
                }
            }
        }
    };
    fuzz_seeds(&world, target, &budget, case).await;
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

fn http_request(rng: &mut Rng, token: &str) -> Vec<u8> {
    let acct = *rng.pick(&["a", "a", "a", "b", "é", "%2e%2e", "a%2Fb", ""]);
    let sid = *rng.pick(&["s-1", "s-2", "s-3", "s-1", "s-é", "s%00", "", "s/1"]);
    let (method, path, body): (&str, String, Option<String>) = match rng.below(12) {
        0 => ("GET", format!("/v1/accounts/{acct}/clients"), None),
        1 => (
            "GET",
            format!(
                "/v1/accounts/{acct}/events?after={}&limit={}",
                rng.pick(&["0", "-1", "18446744073709551616", "x"]),
                rng.pick(&["1", "0", "1000000", "-5"])
            ),
            None,
        ),
        2 => ("GET", format!("/v1/accounts/{acct}/baby-stations"), None),
        3 => ("GET", format!("/v1/accounts/{acct}/parent-stations"), None),
        4 => (
            "GET",
            format!(
                "/v1/accounts/{acct}/usage?from={}&to={}",
                rng.u32(),
                rng.u32()
            ),
            None,
        ),
        5..=7 => {
            let legacy = rng.chance(30);
            let body = if legacy {
                format!(
                    r#"{{"id":"{sid}","host_connection_id":"fz0-1","name":{},"started_at":"{}"}}"#,
                    serde_json::to_string(&String::from_utf8_lossy(&small_str(rng))).unwrap(),
                    rng.pick(&[
                        "2026-11-22T21:24:15.224Z",
                        "1969-12-31T23:59:59Z",
                        "9999-99-99",
                        ""
                    ])
                )
            } else {
                format!(
                    r#"{{"session_id":"{sid}","client_id":"fz0","connection_id":"fz0-1","name":{},"started_at_millis":{}}}"#,
                    serde_json::to_string(&String::from_utf8_lossy(&small_str(rng))).unwrap(),
                    rng.pick(&[
                        "1795382655224",
                        "1795382655225",
                        "1795382655226",
                        "0",
                        "-1",
                        "1e400",
                        "\"x\""
                    ])
                )
            };
            ("PUT", format!("/sessions/{sid}"), Some(body))
        }
        8 => ("DELETE", format!("/sessions/{sid}"), None),
        9 => (
            *rng.pick(&["GET", "HEAD"]),
            rng.pick(&[
                "/readyz",
                "/healthz",
                "/metrics",
                "/ws?client_id=x",
                "/",
                "/nope",
            ])
            .to_string(),
            None,
        ),
        10 => (
            *rng.pick(&["POST", "OPTIONS", "PATCH", "TRACE", "G\0T", "CONNECT"]),
            format!("/v1/accounts/{acct}/clients"),
            Some(json_value(rng, 2)),
        ),
        _ => ("GET", format!("/{}", "a/".repeat(rng.below(3000))), None),
    };
    // a request line the parser accepts most of the time, so that most cases reach a route
    let version = if rng.chance(85) {
        "HTTP/1.1"
    } else {
        *rng.pick(&["HTTP/1.0", "HTTP/2.0", "HTTP/9.9", "FTP/1"])
    };
    let mut req = format!("{method} {path} {version}\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    match rng.below(10) {
        0 => {}
        1 => req.push_str("Authorization: Bearer not.a-token\r\n"),
        2 => req.push_str(&format!("Authorization: Basic {token}\r\n")),
        _ => req.push_str(&format!("Authorization: Bearer {token}\r\n")),
    }
    if rng.chance(30) {
        req.push_str(&format!(
            "X-Cradle-Account: {}\r\n",
            rng.pick(&["a", "b", "é", ""])
        ));
    }
    if rng.chance(5) {
        req.push_str(&format!("X-Junk: {}\r\n", "j".repeat(rng.below(20_000))));
    }
    let mut body = body.unwrap_or_default();
    if !body.is_empty() && rng.chance(40) {
        // the body alone, its length still announced right: the route's parser sees it
        let mut b = body.into_bytes();
        mutate(rng, &mut b, &[], &[]);
        body = String::from_utf8_lossy(&b).into_owned();
    }
    let chunked = !body.is_empty() && rng.chance(15);
    if chunked {
        req.push_str("Transfer-Encoding: chunked\r\n\r\n");
        req.push_str(&format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()));
    } else {
        if !body.is_empty() || rng.chance(10) {
            let len = match rng.below(10) {
                0 => "100000000".to_string(),
                1 => "-1".to_string(),
                2 => (body.len() + 5).to_string(),
                _ => body.len().to_string(),
            };
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {len}\r\n"
            ));
        }
        req.push_str("\r\n");
        req.push_str(&body);
    }
    let mut bytes = req.into_bytes();
    // anywhere (mostly caught by the HTTP parser: 400 without a body)
    if rng.chance(30) {
        mutate(rng, &mut bytes, &[], &[]);
    }
    bytes
}

/// Requests on the real routes with `a`'s token: mutated request lines, headers and bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_never_panic_nor_cross_accounts() {
    let world = World::accounts().await;
    let budget = Budget::from_env(200);
    let target = "http";
    let world = Arc::new(world);
    let w2 = world.clone();
    let statuses: Arc<Mutex<std::collections::BTreeMap<String, u64>>> = Arc::default();
    let s2 = statuses.clone();
    let case = move |run: Arc<Run>, _worker: usize, index: u64| {
        let world = w2.clone();
        let statuses = s2.clone();
        async move {
            let mut rng = run.rng(index);
            let req = http_request(&mut rng, world.token.as_deref().unwrap());
            run.record(index, format!("HTTP {:?}", String::from_utf8_lossy(&req)));
            let port: u16 = world
                .cradle
                .http
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            match exchange(port, &[req], Duration::from_millis(100)).await {
                Err(e) => run.fail(index, &e),
                Ok(got) => {
                    // "HTTP/1.1 400 invalid_body": the status and the error code, if any
                    let text = String::from_utf8_lossy(&got);
                    let code = text
                        .split("\"code\":\"")
                        .nth(1)
                        .and_then(|c| c.split('"').next())
                        .unwrap_or("");
                    let status = format!("{} {code}", text.get(..12).unwrap_or(&text));
                    *statuses.lock().unwrap().entry(status).or_default() += 1;
                    if !got.is_empty() {
                        run.accepted
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    if World::crossed(&got) {
                        run.fail(
                            index,
                            &format!(
                                "a request with a's token read b's canary: {}",
                                String::from_utf8_lossy(&got)
                            ),
                        );
                    }
                }
            }
        }
    };
    fuzz_seeds(&world, target, &budget, case).await;
    eprintln!("hostile_fuzz http: answers {:?}", statuses.lock().unwrap());
}
