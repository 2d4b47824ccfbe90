//! Pure deciders: `decide(command, state) -> decision` and `evolve(state, event) -> state`,
//! the rules around them, and pure computations over recorded values (usage).
//! No I/O and no clock: every timestamp arrives on the command.

pub mod connection;
pub mod session;
pub mod usage;
