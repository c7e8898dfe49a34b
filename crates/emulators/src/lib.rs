//! In-process stand-ins for the systems the controller talks to, for tests and the sandbox.
//!
//! The Bindle server is the REAL bindle crate server. Hippo is an *emulator* that follows
//! `shared/reference/hippo/HIPPO-API.md`; it is not Hippo.
pub mod bindle_server;
pub mod faults;
pub mod hippo;
pub mod nomad;
pub mod sandbox;
mod serve;
mod state_file;
