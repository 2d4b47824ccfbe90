//! Sync handlers: one per topic family, each fed by the bus, each acknowledging every
//! message on every path (a poison message is logged, counted and acknowledged, never
//! redelivered forever).

pub(crate) mod metrics;
pub mod pending;
pub mod retained;
pub(crate) mod session_input;
pub mod sessions;
pub mod stations;
pub mod status;
