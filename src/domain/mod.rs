//! Pure deciders: `decide(command, state) -> decision` and `evolve(state, event) -> state`.
//! No I/O and no clock: every timestamp arrives on the command.

pub mod connection;
pub mod session;
