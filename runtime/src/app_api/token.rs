//! The answer token of a call push (specs/parking.md §9): it names the call and the device
//! the push went to, and when it expires, MACed (HMAC-SHA256, 128 bits kept) with a key
//! derived from the node's secret and bound to this run of the node, so that only the pushed
//! device can answer, only for that call, and only until the token expires.
//!
//! `pa1.<boot>.<call>.<device>.<expires>.<mac>`: the run's boot id (16 hex digits), the
//! core's call and device ids and the expiry (seconds since the Unix epoch) in canonical
//! decimal, and 32 hex digits of MAC over all of them. The app treats it as opaque.

use hmac::{Hmac, Mac};
use pushpark_model::{CallId, DeviceId};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::auth::Secret;

const PREFIX: &str = "pa1";
/// Hex digits of MAC kept: 128 bits.
const MAC_HEX: usize = 32;
/// The longest token worth looking at: the longest a server mints, with room to spare.
pub const MAX_TOKEN_LEN: usize = 128;

/// What a token presented to the app API turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verified {
    /// One of ours, for this call and device, not expired.
    Good(CallId, DeviceId),
    /// One of ours, expired: the call is over by now.
    Expired,
    /// One of ours from an earlier run of the node: its call ended with that run.
    EarlierRun,
    /// Not one of ours: malformed, forged or altered.
    Invalid,
}

/// The key of the answer tokens of one run of the node.
pub struct AnswerKey {
    key: Vec<u8>,
    boot: u64,
}

impl AnswerKey {
    /// The key derived from the node's `secret` (apart from its other keys), for the run
    /// `boot` (a random number each start).
    pub fn new(secret: &Secret, boot: u64) -> Self {
        Self {
            key: secret.derive(b"pushpark answer tokens"),
            boot,
        }
    }

    fn mac(&self, boot: &str, call: &str, device: &str, expires: &str) -> String {
        // HMAC takes a key of any length: `new_from_slice` cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
        for part in [boot, call, device, expires] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        hex::encode(&mac.finalize().into_bytes()[..MAC_HEX / 2])
    }

    /// The token for `device`'s answer to `call`, good until `expires` (Unix seconds).
    pub fn mint(&self, call: CallId, device: DeviceId, expires: u64) -> String {
        let boot = format!("{:016x}", self.boot);
        let (c, d, e) = (
            call.0.to_string(),
            device.0.to_string(),
            expires.to_string(),
        );
        let mac = self.mac(&boot, &c, &d, &e);
        format!("{PREFIX}.{boot}.{c}.{d}.{e}.{mac}")
    }

    /// What `token` is, at `unix_now` (Unix seconds).
    pub fn verify(&self, token: &str, unix_now: u64) -> Verified {
        let Some(parts) = parse(token) else {
            return Verified::Invalid;
        };
        let [boot, call, device, expires, mac] = parts;
        let expected = self.mac(boot, call, device, expires);
        if !bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) {
            return Verified::Invalid;
        }
        let number = |s: &str| s.parse::<u64>().ok();
        let (Some(boot), Some(call), Some(device), Some(expires)) = (
            u64::from_str_radix(boot, 16).ok(),
            number(call),
            number(device),
            number(expires),
        ) else {
            return Verified::Invalid;
        };
        if boot != self.boot {
            Verified::EarlierRun
        } else if unix_now > expires {
            Verified::Expired
        } else {
            Verified::Good(CallId(call), DeviceId(device))
        }
    }
}

/// The five fields after the prefix, each in the one form a server mints (canonical
/// decimal, lowercase hex of fixed length), or `None`.
fn parse(token: &str) -> Option<[&str; 5]> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let mut fields = token.split('.');
    if fields.next()? != PREFIX {
        return None;
    }
    let parts: [&str; 5] = [
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    ];
    let hex =
        |s: &str, len| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let decimal = |s: &str| s.parse::<u64>().is_ok_and(|n| n.to_string() == s);
    let canonical = fields.next().is_none()
        && hex(parts[0], 16)
        && parts[1..4].iter().all(|s| decimal(s))
        && hex(parts[4], MAC_HEX);
    canonical.then_some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn key(boot: u64) -> AnswerKey {
        AnswerKey::new(&Secret::from_bytes(&[7; 32]).expect("a key"), boot)
    }

    #[test]
    fn a_token_names_its_call_and_device_until_it_expires() {
        let key = key(0xfeed);
        let token = key.mint(CallId(42), DeviceId(7), NOW + 60);
        assert!(token.len() <= MAX_TOKEN_LEN, "{token}");
        assert_eq!(
            key.verify(&token, NOW),
            Verified::Good(CallId(42), DeviceId(7))
        );
        assert_eq!(
            key.verify(&token, NOW + 60),
            Verified::Good(CallId(42), DeviceId(7))
        );
        assert_eq!(key.verify(&token, NOW + 61), Verified::Expired);
    }

    #[test]
    fn a_token_of_an_earlier_run_or_another_server_is_not_good() {
        let token = key(1).mint(CallId(1), DeviceId(1), NOW + 60);
        assert_eq!(key(2).verify(&token, NOW), Verified::EarlierRun);
        let other = AnswerKey::new(&Secret::from_bytes(&[8; 32]).expect("a key"), 1);
        assert_eq!(other.verify(&token, NOW), Verified::Invalid);
    }

    #[test]
    fn an_altered_or_malformed_token_is_invalid() {
        let key = key(3);
        let token = key.mint(CallId(5), DeviceId(9), NOW + 60);
        // Another device, another call, a later expiry: each breaks the MAC.
        for (from, to) in [
            (".9.", ".8."),
            (".5.", ".6."),
            (".1800000060.", ".1900000060."),
        ] {
            let altered = token.replacen(from, to, 1);
            assert_ne!(altered, token);
            assert_eq!(key.verify(&altered, NOW), Verified::Invalid, "{altered}");
        }
        let mac_flipped = format!("{}0", &token[..token.len() - 1]);
        let non_canonical = token.replacen(".5.", ".05.", 1);
        for bad in [
            "",
            "pa1",
            "pa1.....",
            &token.to_uppercase(),
            &format!("{token}.1"),
            &format!("x{token}"),
            &mac_flipped,
            &non_canonical,
            &"a".repeat(10_000),
        ] {
            assert_eq!(key.verify(bad, NOW), Verified::Invalid, "{bad}");
        }
    }
}
