//! # Cradle
//!
//! The realtime backbone of a baby-monitor product: devices and parent stations speak MQTT,
//! Cradle embeds the broker, turns every client's connection status into durable events and
//! read models, and bridges legacy WebSocket clients onto the same topics.
//!
//! ## Data flow
//!
//! ```text
//! device --MQTT--> edge (auth, ACL, lifecycle) --loopback--> broker (rumqttd)
//!   --bus (rumqttc, QoS 1, manual ack)--> sync handler
//!   --> domain decider (pure) --> store (events + read models, one transaction) --> ack
//! HTTP /v1/... reads the read models; cradle-monitor follows the status wildcard.
//! ```
//!
//! Beyond one machine (`broker.mode = "external"`): replicas share an external broker and one
//! PostgreSQL; the edge relays to that broker ([`endpoint`]), the bus consumes the handled
//! families through shared subscriptions with a retained replay after every connect
//! ([`bus`]), and each replica subscribes what its WebSocket sessions need ([`ws::inbox`]).
//!
//! ## Layout
//!
//! - [`accounts`]: accounts and credentials (salted BLAKE2b digests, [`accounts::hashing`]; argon2id
//!   for secrets issued before), for the MQTT edge and HTTP auth; [`accounts::gate`] bounds every
//!   verification (at once, per source address, a growing delay after failures).
//! - [`config`]: one typed config (defaults, TOML file, `CRADLE_*` environment, flags).
//! - [`topics`]: the topic contract: topic names, ids, status payload parsing, drop reasons.
//! - [`auth`]: who may connect: device, operator and anonymous (open mode) CONNECTs.
//! - [`edge`]: the MQTT edge devices reach (TCP, WebSocket, TLS): authenticates, hands each
//!   device's packets to the broker from its own task ([`edge::uplink`]), checks every packet ([`edge::acl`]), counts retained messages per account
//!   ([`edge::retained`]), stamps `from` on inbox messages ([`edge::inbox`]), reports every
//!   connection's end ([`edge::lifecycle`]) and holds MQTT 5 Wills for their delay
//!   ([`edge::wills`]); its publisher of ends and Wills speaks MQTT 5 ([`edge::publisher`]).
//! - [`broker`]: the embedded rumqttd broker, on loopback listeners behind the edge; a device's
//!   PUBACK for a status or station message waits until the bus has committed it.
//! - [`endpoint`]: where the broker is (embedded loopback, or an external `mqtt://` /
//!   `mqtts://` cluster with credentials) for every Cradle client and relayed link.
//! - [`bus`]: Cradle's own MQTT client; routes each topic family to its handler, reconnects.
//! - [`clock`] and [`mqtt_client`]: plumbing at the bottom (the recording clock; the options
//!   and event-loop set-up of Cradle's publishing MQTT clients).
//! - [`sync`]: one handler per topic family: [`sync::status`] (batching commits),
//!   [`sync::stations`] (baby- and parent-station announcements), and [`sync::sessions`]
//!   (session starts and ends from HTTP and MQTT, pending starts, clean-disconnect and
//!   grace-period ends, the session read models); [`sync::session_input`] validates starts;
//!   [`sync::retained`] rebuilds the embedded broker's retained state from the store at start;
//!   [`sync::pending`] keeps pending session starts in the store for every replica.
//! - [`domain`]: pure deciders ([`domain::connection`], [`domain::session`]) with
//!   given/when/then tests.
//! - [`store`]: sea-orm event log and read models on SQLite or PostgreSQL, with migrations.
//! - [`migrate`]: `cradle migrate`: copies a whole store (SQLite to PostgreSQL) in one
//!   transaction, keeping every key, and verifies each table's row count and checksum.
//! - [`ws`]: the legacy WebSocket bridge (`GET /ws`): ConnectionHub, seq and replay, resume;
//!   [`ws::inbox`] subscribes each session's inbox, presence and lists on an external broker;
//!   [`ws::handover`] carries the sessions through the store across a graceful restart;
//!   [`ws::transfer`] moves them between replicas, to the replica a resume reaches and away
//!   from a replica that shuts down.
//! - [`http`]: axum API served by hyper with header, body and write timeouts and a connection
//!   cap ([`http::serve`]): `PUT`/`DELETE /sessions/{id}`,
//!   `/v1/accounts/{id}/clients|events|baby-stations|parent-stations|usage`, `/healthz`,
//!   `/readyz`, `/metrics`.
//! - [`rate`]: the token bucket behind the edge's and the bridge's rate limits.
//! - [`metrics`]: lock-free counters rendered as Prometheus text.
//! - [`monitor`]: the `cradle-monitor` live view.
//! - [`bench`]: `cradle-bench` scenarios (one module each) and the `BENCHMARKS.md` report.
//! - [`server`]: start-up and graceful shutdown of `cradle serve`.
//! - [`telemetry`]: logging set-up.

pub mod accounts;
pub mod auth;
pub mod bench;
pub mod broker;
pub mod bus;
pub(crate) mod clock;
pub mod config;
pub mod domain;
pub mod edge;
pub mod endpoint;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod migrate;
pub mod monitor;
pub(crate) mod mqtt_client;
pub mod rate;
pub mod retry;
pub mod server;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod topics;
pub mod ws;
