//! The server's message path without sockets or a running loop: SIP datagrams in, SIP
//! datagrams out, through the very [`State`] the event loop drives (parse, transactions,
//! registrar, proxy, the call-parking core, its effects, serialisation, the store's
//! thread). The benches measure the server's own cost with it, free of the kernel's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::metrics::Gauges;
use crate::push::{PushProvider, PushReports};
use crate::server::{Input, PushTag, StartError, State};
use crate::sip::{self, ParseError};
use crate::store::{Store, StoreOptions};
use crate::transport::{Inbound, Outbox, Transports};

/// A server whose UDP listener is an in-memory list, fed one datagram at a time.
pub struct Pipeline {
    state: State,
    local: SocketAddr,
    outbox: Outbox,
    inputs: mpsc::UnboundedReceiver<Input>,
    reports: PushReports<PushTag>,
}

impl Pipeline {
    /// A server on `config` (its store in memory) listening at `local` over UDP, with
    /// `extra` push providers beside the configured ones. Call it inside a tokio runtime:
    /// push providers run as its tasks.
    pub fn new(
        config: Config,
        local: SocketAddr,
        extra: HashMap<String, Arc<dyn PushProvider>>,
    ) -> Result<Self, StartError> {
        // Nothing arrives through the transports: datagrams come in by `receive`.
        let (inbound, _) = mpsc::channel(1);
        let (transports, outbox) = Transports::in_memory(&[local], inbound);
        let store = Store::open_in_memory(&StoreOptions::default())?;
        let (state, inputs, reports) = State::new(config, transports, store, extra)?;
        Ok(Self {
            state,
            local,
            outbox,
            inputs,
            reports,
        })
    }

    /// A datagram from `peer` arrives and is handled as far as it goes without waiting.
    pub fn receive(&mut self, peer: SocketAddr, datagram: Bytes) -> Result<(), ParseError> {
        let message = sip::parse_datagram_bytes(datagram)?;
        let flow = self.state.transports.udp_flow(self.local, peer);
        self.state.on_inbound(Inbound::Message { flow, message });
        Ok(())
    }

    /// Waits for the store's thread to answer one write (a REGISTER's), and acts on it.
    /// Returns false if the store's thread has ended. Call it outside async code.
    pub fn complete_store_write(&mut self) -> bool {
        loop {
            match self.inputs.blocking_recv() {
                Some(Input::Nothing) => continue,
                Some(input) => {
                    self.state.on_input(input);
                    return true;
                }
                None => return false,
            }
        }
    }

    /// Hands the push outcomes that have arrived to the core; returns how many.
    pub fn push_outcomes(&mut self) -> usize {
        let mut n = 0;
        while let Ok(report) = self.reports.try_recv() {
            self.state.on_push_report(report);
            n += 1;
        }
        n
    }

    /// The datagrams sent since the last call, with the address each went to.
    pub fn take_sent(&self) -> Vec<(SocketAddr, Bytes)> {
        std::mem::take(&mut *self.outbox.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// What the server holds right now.
    pub fn gauges(&self) -> Gauges {
        self.state.gauges()
    }
}
