//! Sync handlers: one per topic family, each fed by the bus, each acknowledging every
//! message on every path (a poison message is logged, counted and acknowledged, never
//! redelivered forever).

pub use crate::topics::DURABLE_FILTERS;

pub mod pending;
pub mod retained;
pub mod session_input;
pub mod sessions;
pub mod stations;
pub mod status;
