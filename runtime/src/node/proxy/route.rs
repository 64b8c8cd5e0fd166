//! What may steer where the proxy sends a request or a response, and the MACs that make it
//! unforgeable (RFC 5626 §5.2 in spirit; keyed SipHash-2-4, 80 bits kept).
//!
//! - A **route token**, the user part of our Record-Route, names the two flows of a dialog
//!   (`pp-<caller flow>-<device flow>-<mac>`), MACed with the node's key over those flows and
//!   the dialog's Call-ID. A request routed through us must carry one that verifies for its
//!   own Call-ID: a forged token, or one lifted from another dialog, gets 403, and nothing is
//!   sent anywhere.
//! - A **path token**, the user part of the RFC 3327 Path a node of a cluster stores with a
//!   binding (`pp-f<flow>.<boot>-<mac>`), names the device's flow on that node in this run
//!   of it, MACed with the key every node of the cluster shares. Another node sends the
//!   device's INVITE with it as its Route; the node that holds the flow relays it there.
//!   A token of an earlier run names no flow, since flow ids start again.
//! - A **stateless branch**, our Via branch on a request forwarded without a transaction,
//!   is MACed over the branch it answers and the address the response goes back to, so a
//!   response is relayed only where the request came from.
//! - **Targets**: where no flow leads, a request goes by address (the dialog's remote target,
//!   or the next Route), but never to this server itself, an unspecified, multicast or
//!   broadcast address, nor, unless a listener is there itself or the operator allows it, to
//!   loopback, link-local or private networks.

use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use siphasher::sip128::{Hasher128, SipHasher24};
use subtle::ConstantTimeEq;

use crate::auth::Secret;
use crate::config::Transport;
use crate::transport::FlowId;

/// The prefix of route tokens.
const TOKEN: &str = "pp-";
/// Hex characters of MAC kept in tokens and branches: 80 bits.
const MAC_HEX: usize = 20;

/// The keys of the route tokens and of the stateless branches.
pub(crate) struct RouteKey {
    /// 128 bits, derived from the node's secret.
    key: [u8; 16],
}

impl RouteKey {
    /// Keys derived from the node's secret, apart from the nonces'.
    pub(crate) fn new(secret: &Secret) -> Self {
        let derived = secret.derive(b"pushpark route tokens");
        let mut key = [0u8; 16];
        key.copy_from_slice(&derived[..16]);
        Self { key }
    }

    /// SipHash-2-4 with a 128-bit output, keyed: a PRF made to authenticate short inputs,
    /// a few hundred instructions where HMAC-SHA256 takes ten thousand on the INVITE's path.
    /// 80 bits of it are kept (RFC 5626 §5.2 keeps 80 of HMAC-SHA1).
    fn mac(&self, parts: &[&[u8]]) -> String {
        let mut mac = SipHasher24::new_with_key(&self.key);
        for part in parts {
            mac.write(&(part.len() as u64).to_be_bytes());
            mac.write(part);
        }
        let tag = mac.finish128().as_bytes();
        hex::encode(&tag[..MAC_HEX / 2])
    }

    /// The route token of a dialog between `caller` and `device` flows, for `call_id`.
    pub(crate) fn token(&self, caller: FlowId, device: FlowId, call_id: &str) -> String {
        let (a, b) = (caller.0.to_string(), device.0.to_string());
        let mac = self.mac(&[b"token", a.as_bytes(), b.as_bytes(), call_id.as_bytes()]);
        format!("{TOKEN}{a}-{b}-{mac}")
    }

    /// The two flows a token names, if it is ours and was made for `call_id`.
    pub(crate) fn verify(&self, token: &str, call_id: &str) -> Option<(FlowId, FlowId)> {
        let mut parts = token.strip_prefix(TOKEN)?.split('-');
        let (a, b, mac) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let (flow_a, flow_b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
        // The canonical decimal form only: the MAC is over these very digits.
        if a != flow_a.to_string() || b != flow_b.to_string() {
            return None;
        }
        let expected = self.mac(&[b"token", a.as_bytes(), b.as_bytes(), call_id.as_bytes()]);
        let good: bool = expected.as_bytes().ct_eq(mac.as_bytes()).into();
        good.then_some((FlowId(flow_a), FlowId(flow_b)))
    }

    /// The path token of `flow` in the run `boot` of this node.
    pub(crate) fn path_token(&self, flow: FlowId, boot: u64) -> String {
        let (f, b) = (flow.0.to_string(), format!("{boot:x}"));
        let mac = self.mac(&[b"path", f.as_bytes(), b.as_bytes()]);
        format!("{TOKEN}f{f}.{b}-{mac}")
    }

    /// The flow a path token names, if a node sharing our key made it in the run `boot`.
    pub(crate) fn verify_path(&self, token: &str, boot: u64) -> Option<FlowId> {
        let (named, mac) = token
            .strip_prefix(TOKEN)?
            .strip_prefix('f')?
            .split_once('-')?;
        let (f, b) = named.split_once('.')?;
        let flow: u64 = f.parse().ok()?;
        if f != flow.to_string() || b != format!("{boot:x}") {
            return None;
        }
        let expected = self.mac(&[b"path", f.as_bytes(), b.as_bytes()]);
        let good: bool = expected.as_bytes().ct_eq(mac.as_bytes()).into();
        good.then_some(FlowId(flow))
    }

    /// Our branch for a request forwarded without a transaction: `prefix` and a MAC over the
    /// branch of the request and the transport and address its response goes back to.
    pub(crate) fn branch(
        &self,
        prefix: &str,
        incoming: &str,
        transport: &str,
        back_to: SocketAddr,
    ) -> String {
        format!("{prefix}{}", self.branch_mac(incoming, transport, back_to))
    }

    fn branch_mac(&self, incoming: &str, transport: &str, back_to: SocketAddr) -> String {
        let back_to = back_to.to_string();
        let transport = transport.to_ascii_uppercase();
        self.mac(&[
            b"branch",
            incoming.as_bytes(),
            transport.as_bytes(),
            back_to.as_bytes(),
        ])
    }

    /// Whether `branch` (after `prefix`) is ours for a response going back to `back_to`
    /// over `transport`, on the request whose branch was `incoming`.
    pub(crate) fn verify_branch(
        &self,
        branch: &str,
        prefix: &str,
        incoming: &str,
        transport: &str,
        back_to: SocketAddr,
    ) -> bool {
        let Some(mac) = branch.strip_prefix(prefix) else {
            return false;
        };
        let expected = self.branch_mac(incoming, transport, back_to);
        expected.as_bytes().ct_eq(mac.as_bytes()).into()
    }
}

/// Where requests may be sent by address.
pub(crate) struct Targets {
    /// Our own listeners: never a target.
    own: Vec<SocketAddr>,
    /// Networks allowed although loopback, link-local or private: those of our listeners,
    /// and the operator's.
    allowed: Vec<IpNet>,
}

impl Targets {
    pub(crate) fn new(listeners: &[(Transport, SocketAddr)], allowed: &[IpNet]) -> Self {
        let mut nets: Vec<IpNet> = allowed.to_vec();
        // A listener inside such a network serves it: its peers are there.
        nets.extend(
            listeners
                .iter()
                .map(|(_, addr)| addr.ip())
                .filter(|ip| !ip.is_unspecified())
                .filter_map(home_net),
        );
        Self {
            own: listeners.iter().map(|&(_, a)| a).collect(),
            allowed: nets,
        }
    }

    /// Whether a request may be sent to `addr`.
    pub(crate) fn allow(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip();
        let own = self
            .own
            .iter()
            .any(|a| a.port() == addr.port() && (a.ip() == ip || a.ip().is_unspecified()));
        let never = ip.is_unspecified()
            || ip.is_multicast()
            || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
            || addr.port() == 0;
        !own && !never && (!restricted(ip) || self.allowed.iter().any(|n| n.contains(&ip)))
    }
}

/// Loopback, link-local or private: inside the operator's network.
fn restricted(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_private()
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| restricted(IpAddr::V4(v4)))
        }
    }
}

/// The loopback, link-local or private network `ip` is in, if any.
fn home_net(ip: IpAddr) -> Option<IpNet> {
    let nets = [
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    ];
    nets.iter()
        .filter_map(|n| n.parse::<IpNet>().ok())
        .find(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> RouteKey {
        RouteKey::new(&Secret::from_bytes(&[9; 32]).expect("a key"))
    }

    #[test]
    fn a_token_verifies_only_for_its_own_flows_and_dialog() {
        let key = key();
        let token = key.token(FlowId(7), FlowId(1_000_001), "abc@host");
        assert!(token.starts_with("pp-7-1000001-"));
        assert_eq!(
            key.verify(&token, "abc@host"),
            Some((FlowId(7), FlowId(1_000_001)))
        );
        assert_eq!(key.verify(&token, "other@host"), None, "another dialog");
        let forged = token.replace("pp-7-", "pp-8-");
        assert_eq!(key.verify(&forged, "abc@host"), None, "another flow");
        assert_eq!(key.verify("pp-7-1000001", "abc@host"), None, "no MAC");
        assert_eq!(
            key.verify(&token.replace("pp-7-", "pp-07-"), "abc@host"),
            None,
            "digits spelt otherwise"
        );
        assert_eq!(key.verify(&format!("{token}-x"), "abc@host"), None);
        let other = RouteKey::new(&Secret::from_bytes(&[8; 32]).expect("a key"));
        assert_eq!(other.verify(&token, "abc@host"), None, "another node's key");
    }

    #[test]
    fn a_path_token_verifies_only_for_its_flow_and_run() {
        let key = key();
        let token = key.path_token(FlowId(42), 0xbeef);
        assert!(token.starts_with("pp-f42.beef-"), "{token}");
        assert_eq!(key.verify_path(&token, 0xbeef), Some(FlowId(42)));
        assert_eq!(key.verify_path(&token, 0xbeee), None, "another run");
        let forged = token.replace("pp-f42.", "pp-f43.");
        assert_eq!(key.verify_path(&forged, 0xbeef), None, "another flow");
        assert_eq!(key.verify_path("pp-f42.beef", 0xbeef), None, "no MAC");
        assert_eq!(key.verify(&token, "abc@host"), None, "no dialog token");
        let other = RouteKey::new(&Secret::from_bytes(&[8; 32]).expect("a key"));
        assert_eq!(
            other.verify_path(&token, 0xbeef),
            None,
            "another cluster's key"
        );
    }

    #[test]
    fn a_stateless_branch_verifies_only_for_where_the_request_came_from() {
        let key = key();
        let back: SocketAddr = "192.0.2.7:5060".parse().expect("an address");
        let branch = key.branch("z9hG4bKpps", "z9hG4bKabc", "UDP", back);
        assert!(key.verify_branch(&branch, "z9hG4bKpps", "z9hG4bKabc", "udp", back));
        let elsewhere: SocketAddr = "127.0.0.1:22".parse().expect("an address");
        assert!(!key.verify_branch(&branch, "z9hG4bKpps", "z9hG4bKabc", "UDP", elsewhere));
        assert!(!key.verify_branch(&branch, "z9hG4bKpps", "z9hG4bKxyz", "UDP", back));
        assert!(!key.verify_branch(&branch, "z9hG4bKpps", "z9hG4bKabc", "TCP", back));
        assert!(!key.verify_branch("z9hG4bKpps0123", "z9hG4bKpps", "z9hG4bKabc", "UDP", back));
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn a_public_server_sends_nothing_to_itself_nor_inside_the_operators_network() {
        let targets = Targets::new(&[(Transport::Udp, addr("198.51.100.1:5060"))], &[]);
        for denied in [
            "198.51.100.1:5060",
            "0.0.0.0:5060",
            "127.0.0.1:5060",
            "10.1.2.3:5060",
            "172.20.0.1:5060",
            "192.168.1.1:5060",
            "169.254.1.1:5060",
            "100.64.0.1:5060",
            "255.255.255.255:5060",
            "224.0.0.1:5060",
            "[::1]:5060",
            "[fe80::1]:5060",
            "[fd00::1]:5060",
            "[::ffff:127.0.0.1]:5060",
            "203.0.113.9:0",
        ] {
            assert!(!targets.allow(addr(denied)), "{denied}");
        }
        for allowed in [
            "198.51.100.1:5070",
            "203.0.113.9:5060",
            "[2001:db8::1]:5060",
        ] {
            assert!(targets.allow(addr(allowed)), "{allowed}");
        }
        let configured = Targets::new(
            &[(Transport::Udp, addr("198.51.100.1:5060"))],
            &["10.0.0.0/8".parse().expect("a net")],
        );
        assert!(
            configured.allow(addr("10.1.2.3:5060")),
            "the operator allowed it"
        );
    }

    #[test]
    fn a_server_on_loopback_or_a_private_network_may_send_there() {
        let targets = Targets::new(&[(Transport::Udp, addr("127.0.0.1:5060"))], &[]);
        assert!(targets.allow(addr("127.0.0.1:40000")));
        assert!(!targets.allow(addr("127.0.0.1:5060")), "itself");
        assert!(!targets.allow(addr("10.0.0.1:5060")));
        let lan = Targets::new(&[(Transport::Udp, addr("192.168.1.10:5060"))], &[]);
        assert!(lan.allow(addr("192.168.7.7:5060")));
        assert!(!lan.allow(addr("127.0.0.1:5060")));
        let any = Targets::new(&[(Transport::Udp, addr("0.0.0.0:5060"))], &[]);
        assert!(
            !any.allow(addr("127.0.0.1:5060")),
            "bound everywhere: not itself"
        );
        assert!(
            !any.allow(addr("192.0.2.1:5060")),
            "any address of its own, on its port"
        );
        assert!(any.allow(addr("192.0.2.1:5070")));
    }
}
