//! Sync handlers: one per topic family, each fed by the bus, each acknowledging every
//! message on every path (a poison message is logged, counted and acknowledged, never
//! redelivered forever).

/// The families whose messages are durable on arrival: with the embedded broker, a device's
/// PUBACK for a QoS 1 message on them (PUBCOMP for QoS 2) leaves only once the bus has
/// acknowledged it, which its handler does once the effect is committed (rumqttd CRADLE
/// PATCH 27). The bus subscribes them exactly so.
pub const DURABLE_FILTERS: [&str; 3] = [
    crate::topics::STATUS_FILTER,
    stations::BABY_STATIONS_FILTER,
    stations::PARENT_STATIONS_FILTER,
];

pub mod pending;
pub mod retained;
pub mod session_input;
pub mod sessions;
pub mod stations;
pub mod status;
