//! hippo-gitops: converge Hippo, Bindle and Nomad to declarative deploy files.
//!
//! # Layout
//! Data flows one way: [`spec`] (parse, validate, package local bindles) → [`observe`]
//! (snapshot of Hippo and Bindle) → [`diff`] (pure: desired + observed → plan) → [`apply`]
//! → [`status`]. Only `observe` and `apply` do network I/O. See ARCHITECTURE.md.
#![forbid(unsafe_code)]

pub mod apply;
pub mod bindles;
pub mod delivery;
pub mod diff;
pub mod duration;
pub mod events;
pub mod gate;
pub mod hippo;
pub mod nomad;
pub mod observe;
pub mod package;
pub mod private_file;
pub mod probe;
pub mod progress;
pub mod range_rule;
pub mod retry;
pub mod secret;
pub mod spec;
pub mod stats;
pub mod status;
pub mod sync;
mod transport;
pub mod walk;
