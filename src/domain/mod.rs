//! Pure deciders: `decide(command, state) -> decision` and `evolve(state, event) -> state`,
//! the rules around them, and pure computations over recorded values (usage).
//! No I/O and no clock: every timestamp arrives on the command.

/// Version of every event payload shape (connection and session events), stored with each
/// event.
pub(crate) const EVENT_VERSION: i32 = 1;

pub mod connection;
pub mod control;
pub mod presence;
pub mod session;
pub mod usage;
