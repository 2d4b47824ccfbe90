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
//! HTTP /v1/... reads the read models; the live feed (one per replica) follows the log up to
//! its settled position and streams every committed event to followers (SSE); presence history
//! is computed from the log; cradle-monitor follows the status wildcard or the event stream.
//! ```
//!
//! Beyond one machine (`broker.mode = "external"`): replicas share an external broker and one
//! PostgreSQL; the edge relays to that broker ([`endpoint`]), the bus consumes the handled
//! families through shared subscriptions with a retained replay after every connect
//! ([`bus`]), and each replica subscribes what its WebSocket sessions need ([`ws::inbox`]).
//!
//! ## Layers
//!
//! Imports point one way; nothing imports a module above it (no import circle):
//!
//! ```text
//! bins --> server --> http --> control --> (edge, ws);  (http, ws) --> sync --> (bus, domain, store)
//! http --> feed --> store
//! edge --> auth --> accounts --> store;  broker (the vendored rumqttd, wired by Cradle)
//! plumbing at the bottom, importing nothing above it: config, topics, clock, ids, retry,
//!   mqtt_client, endpoint, rate, metrics, tasks, telemetry
//! ```
//!
//! ## One status message, function by function
//!
//! [`edge`]'s `accept_loop` and `connection` → `edge::session::serve` (`read_connect`,
//! `authenticate`, `vet`, `admit`, `Conn::open`) → `Conn::relay` → `Conn::device_batch` →
//! `Conn::publish` (`resolve_topic`, [`edge::acl::may_publish`]) → rumqttd's router (PATCH 13),
//! which holds the PUBACK (PATCH 27) → [`bus`]'s `BusLoop::forward`, by
//! `server::route_table` → [`sync::status::run`] (`accept`: [`topics::parse_status_topic`],
//! [`domain::connection::parse_status_payload`]) → `commit_until_done` → `apply_batch_cached`
//! (`load_rows`, [`domain::connection::decide`], `domain::connection::evolve`, `project`,
//! `StoreTx::append`, `StoreTx::upsert_clients`, `StoreTx::commit`) → `Acker::ack` → the
//! router releases the device's PUBACK → `Conn::deliver`. The README's Design section tells
//! it step by step.
//!
//! ## Who owns what
//!
//! - [`server`]: `cradle serve`: builds the parts from one config in the order that keeps every
//!   promise, the route table from topic filters to handlers (`server::route_table`), runs
//!   until the shutdown future resolves, then drains in order.
//! - [`http`]: axum API served by hyper with header, body and write timeouts and a connection
//!   cap ([`http::serve`]): `PUT`/`DELETE /sessions/{id}`,
//!   `/v1/accounts/{id}/clients|events|connections|baby-stations|parent-stations|usage`,
//!   the administration routes (`http::admin`: accounts, credentials, rotation, bulk
//!   provisioning, disconnect and bans, every action recorded as an `admin.*` event; on
//!   `http.admin_listen` when set), `/healthz`, `/readyz`, `/metrics`, and `GET /ws`'s handshake (origin, subprotocols, credential, client
//!   id, resume, the bridge's admission: every refusal before the `101`) before the socket goes
//!   to the bridge; `http::origins` holds `http.allowed_origins` and the CORS layer;
//!   `http::stream` serves the live event stream (Server-Sent Events, resumable by
//!   `Last-Event-ID`, bounded by `stream.max_followers` outside `http.max_connections`);
//!   `http::history` answers presence history (a client's connections in a window,
//!   availability, every client's state at an instant) from the log; `http::dashboard` serves
//!   the operators' page.
//! - `feed`: the live feed of the event log, one per replica: wakes on this process's
//!   commits and polls for other replicas', reads only up to the store's settled position,
//!   and hands every event to the stream's followers through a bounded broadcast.
//! - [`ws`]: the legacy WebSocket bridge: sessions, seq and replay (`ws::hub`), one socket
//!   (`ws::socket`), [`ws::inbox`] (a replica's subscriptions), `ws::handover` (sessions in
//!   the store across a restart), `ws::transfer` (sessions moving between replicas),
//!   [`ws::protocol`] (frames, close codes).
//! - [`sync`]: one handler per topic family: [`sync::status`] (batching commits),
//!   [`sync::stations`] (baby- and parent-station announcements), [`sync::sessions`] (commands,
//!   parked starts, the grace sweep, announcements, read queries); `sync::session_input`
//!   validates starts; [`sync::retained`] rebuilds the embedded broker's retained state from
//!   the store at start; [`sync::pending`] keeps pending session starts in the store.
//! - [`control`]: how a decision (a revocation, an account's deletion, a kick) reaches live
//!   connections on every replica: ended here at once, published on `cradle/control` for the
//!   others; [`domain::control`] says which connections it names. [`replicas`]: the replicas
//!   that share an external broker know each other (retained presence) and gather the live
//!   connections of all of them.
//! - [`tasks`]: what a panic costs (see Plumbing).
//! - [`bus`]: Cradle's QoS 1 subscriber: routes each topic family to its handler, acks in
//!   delivery order, reconnects.
//! - [`domain`]: pure deciders, `decide(command, state)` and `evolve(state, event)`
//!   ([`domain::connection`], [`domain::session`] with the grace rule), [`domain::usage`] and
//!   [`domain::presence`] (connections rebuilt from a client's log: history, availability,
//!   state at an instant), with given/when/then tests.
//! - [`store`]: sea-orm event log and read models on SQLite or PostgreSQL, with migrations;
//!   `store::bans` (bans in force), `store::audit` (administrative actions as events, and
//!   an account's erase), `store::follow` (the settled position: following the log in commit
//!   order, on PostgreSQL too), `store::retention` (`store.retention_days`).
//! - [`admin_client`]: what `cradle accounts` / `cradle credentials` act through: the store,
//!   or a running Cradle's admin API (`--server`).
//! - [`edge`]: the MQTT edge devices reach (TCP, WebSocket, TLS): authenticates, hands each
//!   device's packets to the broker from its own task (`edge::uplink`), checks every packet
//!   ([`edge::acl`]), counts retained messages per account ([`edge::retained`]), stamps `from`
//!   on inbox messages ([`edge::inbox`]), vouches for every connection's start and reports
//!   its end, naming each MQTT connection (`edge_connection_id`) on its statuses
//!   (`edge::lifecycle`), and holds MQTT 5 Wills for their delay (`edge::wills`); its
//!   publisher of starts, ends and Wills speaks MQTT 5 ([`edge::publisher`]).
//! - [`auth`]: who may connect: device, operator and anonymous (open mode) CONNECTs.
//! - [`accounts`]: accounts and credentials (salted BLAKE2b digests, `accounts::hashing`;
//!   argon2id for secrets issued before); `accounts::gate` bounds every verification.
//! - [`broker`]: the embedded rumqttd broker, on loopback listeners behind the edge; a device's
//!   PUBACK for a status or station message waits until the bus has committed it.
//! - [`migrate`]: `cradle migrate`: copies a whole store (SQLite to PostgreSQL) in one
//!   transaction and verifies each table's row count and checksum.
//! - [`monitor`]: the `cradle-monitor` live view (statuses over MQTT, or the event stream
//!   with `--events`, [`monitor::events`]); [`bench`](mod@bench): `cradle-bench` scenarios and the
//!   `BENCHMARKS.md` report.
//! - Plumbing: [`config`] (one typed config: defaults, TOML, `CRADLE_*`, flags), [`topics`]
//!   (the topic contract: names, filters, ids, the one parser of topic shapes), `clock`
//!   (the recording clock), [`ids`] (random ids and secrets), [`retry`] (`Backoff`),
//!   `mqtt_client` (client options, `EventSource` and `drive`, the one event-loop task),
//!   [`endpoint`] (where the broker is, for every client and relayed link), [`rate`] (token
//!   buckets), [`metrics`] (the registry: typed labeled counters, the families each part
//!   owns and registers, `edge::metrics`, `sync::metrics`, `http::metrics` among them,
//!   rendered as Prometheus text), [`tasks`] (what a panic costs: a client's task ends alone,
//!   a critical task's makes Cradle not ready and exit; `cradle_task_panics_total`),
//!   [`telemetry`] (logging).

pub mod accounts;
pub mod admin_client;
pub mod auth;
pub mod bench;
pub mod broker;
pub mod bus;
pub(crate) mod clock;
pub mod config;
pub mod control;
pub mod domain;
pub mod edge;
pub mod endpoint;
pub(crate) mod feed;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod migrate;
pub mod monitor;
pub(crate) mod mqtt_client;
pub mod rate;
pub mod replicas;
pub mod retry;
pub mod server;
pub mod store;
pub mod sync;
pub mod tasks;
pub mod telemetry;
pub mod topics;
pub mod ws;
