//! The devices: N phones `dev0` … `dev<N-1>` multiplexed over a few links.
//!
//! Each device has a fixed `+sip.instance` and push token (`tok<i>`) and REGISTERs once at
//! the start, all with one REGISTER Call-ID each and a rising CSeq. Which links they use:
//!
//! * **UDP**: `--sockets` sockets; device `i` always uses socket `i mod K`. The generated
//!   configuration sets `awake_window = "0s"`, so a device with a push token on UDP is asleep
//!   to the server once its previous call is over (its BYE went through the server), and
//!   every call for it is parked; its wake-up REGISTER comes from its own socket, and the
//!   parked INVITE goes back to it.
//! * **TCP, relay**: `--sockets` connections that stay open: the devices are reachable over
//!   them.
//! * **TCP, park and hold**: a device on an open connection is awake to the server, so the
//!   first REGISTERs go over connections that are closed once every device is registered.
//!   A woken device REGISTERs over a *wake link*: one of `--sockets` connections, each
//!   replaced by a fresh one every [`ROTATE`]. A replaced connection closes when its last
//!   call ends, and only then do the devices woken over it go back to the pool, asleep, so
//!   that their next call is parked again.
//!
//! The pool of free devices is first in, first out: a device just freed is the last to be
//! picked again, which gives the server time to notice a closed connection.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pushpark::config::Transport;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::link::{Link, Side};
use super::router::Router;
use super::sip::{self, Branch};
use super::{Mode, Options};

/// How long a wake link takes new wake-ups before a fresh connection replaces it.
pub(crate) const ROTATE: Duration = Duration::from_millis(50);
/// First REGISTERs in flight at once (a server's default UDP receive buffer holds about a
/// hundred datagrams).
const REGISTER_WINDOW: usize = 64;
/// A first REGISTER unanswered this long is sent again…
const REGISTER_RETRY: Duration = Duration::from_millis(500);
/// …this many times in all.
const REGISTER_TRIES: u32 = 20;

/// The devices, their links and the pool of free ones.
pub(crate) struct Devices {
    count: u32,
    push: bool,
    run: u32,
    server: SocketAddr,
    cseq: Box<[AtomicU32]>,
    /// The links devices register over (UDP; TCP relay; TCP park and hold: only the
    /// first REGISTERs).
    links: Mutex<Vec<Arc<Link>>>,
    wake: Option<Arc<WakeLinks>>,
    reaper: Option<AbortHandle>,
    free: mpsc::UnboundedSender<u32>,
}

impl Devices {
    /// Opens the devices' links; returns the devices and the pool of free ones (all free).
    pub async fn open(
        options: &Options,
        server: SocketAddr,
        router: &Arc<Router>,
        run: u32,
    ) -> io::Result<(Devices, mpsc::UnboundedReceiver<u32>)> {
        let count = u32::try_from(options.device_count()).unwrap_or(u32::MAX);
        let mut links = Vec::with_capacity(options.sockets);
        for _ in 0..options.sockets.max(1) {
            links.push(Link::open(options.transport, Side::Device, server, router).await?);
        }
        let (free, pool) = mpsc::unbounded_channel();
        for dev in 0..count {
            let _ = free.send(dev);
        }
        let (wake, reaper) = if options.transport == Transport::Tcp && options.mode == Mode::Park {
            let wake = Arc::new(WakeLinks {
                slots: (0..options.sockets.max(1))
                    .map(|_| tokio::sync::Mutex::new(None))
                    .collect(),
                server,
                router: Arc::clone(router),
                free: free.clone(),
            });
            let reaper = tokio::spawn(Arc::clone(&wake).reap()).abort_handle();
            (Some(wake), Some(reaper))
        } else {
            (None, None)
        };
        let devices = Devices {
            count,
            push: options.mode != Mode::Relay,
            run,
            server,
            cseq: (0..count).map(|_| AtomicU32::new(0)).collect(),
            links: Mutex::new(links),
            wake,
            reaper,
            free,
        };
        Ok((devices, pool))
    }

    /// How many devices.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The server the devices register on.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    fn link(&self, dev: u32) -> Option<Arc<Link>> {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        (!links.is_empty()).then(|| Arc::clone(&links[dev as usize % links.len()]))
    }

    /// The local ports of the device links (the UDP sockets, over UDP).
    pub fn local_ports(&self) -> Vec<u16> {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links.iter().map(|l| l.local().addr.port()).collect()
    }

    /// The next CSeq of device `dev`'s REGISTERs.
    pub fn next_cseq(&self, dev: u32) -> u32 {
        self.cseq[dev as usize].fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Whether the devices register with push parameters.
    pub fn push(&self) -> bool {
        self.push
    }

    /// REGISTERs every device once (a window of them in flight, retransmitted when
    /// unanswered); an error names the first device that was refused or never answered.
    pub async fn register_all(&self, router: &Router) -> Result<(), String> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        router.set_registrations(Some(tx));
        let result = self.register_each(&mut rx).await;
        router.set_registrations(None);
        result
    }

    fn send_first_register(&self, dev: u32, cseq: u32) -> Result<(), String> {
        let link = self.link(dev).ok_or("no device link")?;
        let branch = Branch::Registration {
            dev,
            run: self.run,
            cseq,
        };
        let bytes = sip::register(link.local(), self.run, dev, cseq, self.push, branch);
        if link.send(&bytes, self.server) {
            Ok(())
        } else {
            Err(format!("dev{dev}: cannot send REGISTER"))
        }
    }

    async fn register_each(
        &self,
        answers: &mut mpsc::UnboundedReceiver<(u32, u16)>,
    ) -> Result<(), String> {
        let mut pending: HashMap<u32, (Instant, u32, u32)> = HashMap::new();
        let mut next = 0;
        let mut done = 0;
        let mut last_scan = Instant::now();
        while done < self.count {
            while pending.len() < REGISTER_WINDOW && next < self.count {
                let cseq = self.next_cseq(next);
                self.send_first_register(next, cseq)?;
                pending.insert(next, (Instant::now(), 1, cseq));
                next += 1;
            }
            match tokio::time::timeout(REGISTER_RETRY / 4, answers.recv()).await {
                Ok(Some((dev, code))) => {
                    if pending.remove(&dev).is_some() {
                        if code == 503 {
                            return Err(format!(
                                "dev{dev}: REGISTER shed (503): the server was overloaded \
                                 before the calls began"
                            ));
                        }
                        if code != 200 {
                            return Err(format!("dev{dev}: REGISTER answered {code}"));
                        }
                        done += 1;
                    }
                }
                Ok(None) => return Err("registration answers stopped".to_owned()),
                Err(_) => {}
            }
            if last_scan.elapsed() < REGISTER_RETRY / 4 {
                continue;
            }
            last_scan = Instant::now();
            let late: Vec<u32> = pending
                .iter()
                .filter(|(_, (sent, _, _))| sent.elapsed() >= REGISTER_RETRY)
                .map(|(&dev, _)| dev)
                .collect();
            for dev in late {
                let Some(entry) = pending.get_mut(&dev) else {
                    continue;
                };
                if entry.1 >= REGISTER_TRIES {
                    return Err(format!("dev{dev}: REGISTER never answered"));
                }
                entry.0 = Instant::now();
                entry.1 += 1;
                let cseq = entry.2;
                self.send_first_register(dev, cseq)?;
            }
        }
        Ok(())
    }

    /// TCP park and hold: closes the connections the first REGISTERs went over, so the
    /// server takes every device to be asleep.
    pub fn fall_asleep(&self, transport: Transport, mode: Mode) {
        if transport == Transport::Tcp && mode != Mode::Relay {
            let links = std::mem::take(&mut *self.links.lock().unwrap_or_else(|p| p.into_inner()));
            for link in links {
                link.close();
            }
        }
    }

    /// The link device `dev` wakes up on (TCP park: a wake link, to give back with
    /// [`Self::release`]).
    pub async fn wake_link(&self, dev: u32) -> io::Result<(Arc<Link>, Option<Arc<WakeLink>>)> {
        match &self.wake {
            Some(wake) => {
                let link = wake.acquire(dev).await?;
                Ok((Arc::clone(&link.link), Some(link)))
            }
            None => self
                .link(dev)
                .map(|link| (link, None))
                .ok_or_else(|| io::Error::other("no device link")),
        }
    }

    /// Device `dev`'s call ended: it goes back to the pool, at once or (woken over a wake
    /// link) when that link closes.
    pub fn release(&self, dev: u32, woken_over: Option<Arc<WakeLink>>) {
        match woken_over {
            Some(link) => link.release(dev, &self.free),
            None => {
                let _ = self.free.send(dev);
            }
        }
    }

    /// Closes every link.
    pub fn shutdown(&self) {
        if let Some(reaper) = &self.reaper {
            reaper.abort();
        }
        for link in self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            link.shutdown();
        }
        if let Some(wake) = &self.wake {
            wake.shutdown();
        }
    }
}

/// The connections woken devices REGISTER over (TCP park).
pub(crate) struct WakeLinks {
    slots: Box<[tokio::sync::Mutex<Option<Arc<WakeLink>>>]>,
    server: SocketAddr,
    router: Arc<Router>,
    free: mpsc::UnboundedSender<u32>,
}

/// One wake link: a connection, and the devices woken over it.
pub(crate) struct WakeLink {
    link: Arc<Link>,
    opened: Instant,
    state: Mutex<WakeState>,
}

#[derive(Default)]
struct WakeState {
    /// Calls whose device woke over the link and that have not ended.
    active: usize,
    /// No more wake-ups: close when the last call ends.
    retired: bool,
    /// Devices whose call ended, waiting for the link to close.
    woken: Vec<u32>,
}

impl WakeLinks {
    async fn acquire(&self, dev: u32) -> io::Result<Arc<WakeLink>> {
        let mut slot = self.slots[dev as usize % self.slots.len()].lock().await;
        if let Some(current) = slot.as_ref().filter(|c| c.opened.elapsed() < ROTATE) {
            current.state().active += 1;
            return Ok(Arc::clone(current));
        }
        if let Some(old) = slot.take() {
            old.retire(&self.free);
        }
        let link = Link::tcp(Side::Device, self.server, &self.router).await?;
        let wake = Arc::new(WakeLink {
            link,
            opened: Instant::now(),
            state: Mutex::new(WakeState {
                active: 1,
                ..WakeState::default()
            }),
        });
        *slot = Some(Arc::clone(&wake));
        Ok(wake)
    }

    /// Retires links that have taken wake-ups long enough, also when no wake-up comes to
    /// replace them (otherwise their devices would never be freed).
    async fn reap(self: Arc<Self>) {
        loop {
            tokio::time::sleep(ROTATE / 2).await;
            for slot in self.slots.iter() {
                let mut slot = slot.lock().await;
                if slot.as_ref().is_some_and(|c| c.opened.elapsed() >= ROTATE) {
                    if let Some(old) = slot.take() {
                        old.retire(&self.free);
                    }
                }
            }
        }
    }

    fn shutdown(&self) {
        for slot in self.slots.iter() {
            if let Ok(mut slot) = slot.try_lock() {
                if let Some(wake) = slot.take() {
                    wake.link.shutdown();
                }
            }
        }
    }
}

impl WakeLink {
    fn state(&self) -> std::sync::MutexGuard<'_, WakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn release(&self, dev: u32, free: &mpsc::UnboundedSender<u32>) {
        let mut state = self.state();
        state.active = state.active.saturating_sub(1);
        state.woken.push(dev);
        if state.retired && state.active == 0 {
            self.close(&mut state, free);
        }
    }

    fn retire(&self, free: &mpsc::UnboundedSender<u32>) {
        let mut state = self.state();
        state.retired = true;
        if state.active == 0 {
            self.close(&mut state, free);
        }
    }

    fn close(&self, state: &mut WakeState, free: &mpsc::UnboundedSender<u32>) {
        self.link.close();
        for dev in state.woken.drain(..) {
            let _ = free.send(dev);
        }
    }
}
