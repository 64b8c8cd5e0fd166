//! # pushpark-model: the call-parking protocol, written once
//!
//! A caller's INVITE arrives for a callee whose phones sleep. The [`Core`] decides what the
//! server does: forward the call to the devices that are reachable, park it and push the
//! others, deliver it to each device as it wakes and registers, and give the caller exactly
//! one final response — answered, busy, declined, cancelled, timed out.
//!
//! The core is sans-IO in the manner of quinn-proto and str0m: no sockets, no clock, no
//! randomness. [`Core::step`] takes the time and an [`Event`] and appends [`Effect`]s, the
//! instructions the runtime carries out. The `checker` feature adds the stateright model
//! ([`checker`]) that explores every interleaving of the environment around this very core.
//!
//! The protocol in prose, with its outcome table and named properties: `specs/parking.md`.

mod config;
mod core;
mod effect;
mod event;
mod fault;
mod ids;

#[cfg(feature = "checker")]
pub mod checker;

pub use crate::config::Config;
pub use crate::core::Core;
pub use crate::effect::{AppReply, Effect, EndReason, Timer};
pub use crate::event::{Callee, Event, Flow, PushAnswer, Target, TokenUse};
pub use crate::fault::Fault;
pub use crate::ids::{AorId, CallId, DeviceId, Millis};
