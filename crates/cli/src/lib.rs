//! The `hippo-gitops` command line: its arguments, the composition root that builds the core's
//! context from them, the commands and their renderers. `main.rs` sets up the process (the
//! allocator, logging, the runtime) and runs [`cli::run`].
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod history;
pub mod progress_line;
pub mod render;
pub mod sandbox_args;
