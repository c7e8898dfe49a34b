//! hippo-gitops: converge Hippo, Bindle and Nomad to declarative deploy files.
//!
//! # Layout
//! Data flows one way: [`spec`] (parse, validate, package local bindles) → [`observe`]
//! (snapshot of Hippo and Bindle) → [`diff`] (pure: desired + observed → plan) → [`apply`]
//! → [`status`]. Only `observe` and `apply` do network I/O. See ARCHITECTURE.md.
#![forbid(unsafe_code)]

pub mod emulator;
pub mod package;
pub mod spec;
pub mod bindles;
pub mod hippo;
pub mod retry;
pub mod secret;
pub mod stats;
pub mod apply;
pub mod diff;
pub mod observe;
pub mod cli;
pub mod config;
pub mod status;
