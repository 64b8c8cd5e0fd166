//! pushpark: a SIP registrar and stateful proxy that parks calls for mobile apps that sleep.
//!
//! Every call-level decision is made by the pure core of the `pushpark-model` crate; this
//! crate is the shell around it, one module per concept:
//!
//! | module | what lives there |
//! |---|---|
//! | [`config`] | the TOML configuration and its embedded defaults |
//! | [`driver`] | the core driver: feeds the core with the time, keeps its timers |
//! | [`demo`] | `pushpark demo`: scripted calls through the core on a simulated clock |

pub mod config;
pub mod demo;
pub mod driver;
