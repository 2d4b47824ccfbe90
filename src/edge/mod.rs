//! The MQTT edge: what devices connect to. Today: the access rules it enforces.

pub mod acl;
