//! URIs: SIP/SIPS URIs in full (RFC 3261 §19.1, RFC 5118 IPv6 references, RFC 8599 `pn-*`
//! parameters as ordinary URI parameters), other schemes as opaque text.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::error::SyntaxError;
use super::syntax::{unescape, Params};

const E: SyntaxError = SyntaxError("URI");

/// Any URI: SIP/SIPS parsed, anything else (`tel:`, `isbn:`, `http:`) kept opaque.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uri<'a> {
    /// `sip:` or `sips:`.
    Sip(SipUri<'a>),
    /// Another scheme.
    Other {
        /// Scheme as written.
        scheme: &'a str,
        /// Everything after the `:`.
        opaque: &'a str,
    },
}

impl<'a> Uri<'a> {
    /// Parse a URI. Whitespace, `<`, `>` and `"` are never part of a URI.
    pub fn parse(s: &'a str) -> Result<Uri<'a>, SyntaxError> {
        let colon = s.find(':').ok_or(E)?;
        let scheme = &s[..colon];
        let sb = scheme.as_bytes();
        if sb.is_empty()
            || !sb[0].is_ascii_alphabetic()
            || !sb
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        {
            return Err(E);
        }
        let rest = &s[colon + 1..];
        if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
            return SipUri::parse_rest(scheme.len() == 4, rest).map(Uri::Sip);
        }
        if rest.is_empty()
            || rest
                .bytes()
                .any(|c| c <= b' ' || c >= 0x7f || matches!(c, b'<' | b'>' | b'"'))
        {
            return Err(E);
        }
        Ok(Uri::Other {
            scheme,
            opaque: rest,
        })
    }

    /// The SIP URI, if this is one.
    pub fn as_sip(&self) -> Option<&SipUri<'a>> {
        match self {
            Uri::Sip(u) => Some(u),
            Uri::Other { .. } => None,
        }
    }
}

/// A host: domain name, IPv4 address or IPv6 reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host<'a> {
    /// A host name as written (compare case-insensitively).
    Domain(&'a str),
    /// A dotted-quad IPv4 address.
    V4(Ipv4Addr),
    /// An IPv6 address (written in `[...]` in URIs and Via sent-by).
    V6(Ipv6Addr),
}

impl<'a> Host<'a> {
    /// Parse a host: `[v6]`, dotted quad, or host name. With `bare_v6` an IPv6 address
    /// without brackets is also accepted (Via `received`, RFC 5118 §4.5).
    pub fn parse(s: &'a str, bare_v6: bool) -> Result<Host<'a>, SyntaxError> {
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(E)?;
            return parse_v6(inner).map(Host::V6);
        }
        if bare_v6 && s.contains(':') {
            return parse_v6(s).map(Host::V6);
        }
        let b = s.as_bytes();
        if b.is_empty() || b.len() > 255 {
            return Err(E);
        }
        if b.iter().all(|c| c.is_ascii_digit() || *c == b'.') {
            return s.parse::<Ipv4Addr>().map(Host::V4).map_err(|_| E);
        }
        if b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
            && b[0] != b'.'
            && b[0] != b'-'
        {
            return Ok(Host::Domain(s));
        }
        Err(E)
    }

    /// The IP address, if the host is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Domain(_) => None,
            Host::V4(a) => Some(IpAddr::V4(*a)),
            Host::V6(a) => Some(IpAddr::V6(*a)),
        }
    }
}

impl std::fmt::Display for Host<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::V4(a) => write!(f, "{a}"),
            Host::V6(a) => write!(f, "[{a}]"),
        }
    }
}

/// Parse an IPv6 address. Tolerates the RFC 3261 ABNF bug of RFC 5118 §4.10
/// (`2001:db8:::192.0.2.1`, three colons) by dropping the extra colon.
fn parse_v6(s: &str) -> Result<Ipv6Addr, SyntaxError> {
    if let Ok(a) = s.parse::<Ipv6Addr>() {
        return Ok(a);
    }
    if s.len() <= 64 && s.contains(":::") && !s.contains("::::") {
        return s
            .replacen(":::", "::", 1)
            .parse::<Ipv6Addr>()
            .map_err(|_| E);
    }
    Err(E)
}

/// A SIP or SIPS URI, borrowed from the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri<'a> {
    /// `sips:` rather than `sip:`.
    pub secure: bool,
    /// The user part as written (escapes kept; may hold `;`, RFC 4475 semiuri).
    pub user: Option<&'a str>,
    /// The password as written.
    pub password: Option<&'a str>,
    /// The host.
    pub host: Host<'a>,
    /// The host as written (brackets included for IPv6).
    pub host_raw: &'a str,
    /// The port, if given.
    pub port: Option<u16>,
    /// URI parameters (`transport`, `lr`, `pn-provider`, ...).
    pub params: Params<'a>,
    /// The `?headers` part as written (without `?`), if any.
    pub headers: Option<&'a str>,
}

impl<'a> SipUri<'a> {
    /// Parse a `sip:` / `sips:` URI.
    pub fn parse(s: &'a str) -> Result<SipUri<'a>, SyntaxError> {
        match Uri::parse(s)? {
            Uri::Sip(u) => Ok(u),
            Uri::Other { .. } => Err(E),
        }
    }

    fn parse_rest(secure: bool, s: &'a str) -> Result<SipUri<'a>, SyntaxError> {
        if s.bytes()
            .any(|c| c <= b' ' || c >= 0x7f || matches!(c, b'<' | b'>' | b'"'))
        {
            return Err(E);
        }
        let (userinfo, hostpart) = match memchr::memchr(b'@', s.as_bytes()) {
            Some(at) => (Some(&s[..at]), &s[at + 1..]),
            None => (None, s),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(ui) => match ui.find(':') {
                Some(c) => (Some(&ui[..c]), Some(&ui[c + 1..])),
                None => (Some(ui), None),
            },
        };
        if user == Some("") {
            return Err(E);
        }
        let hb = hostpart.as_bytes();
        let host_end = if hb.first() == Some(&b'[') {
            memchr::memchr(b']', hb).ok_or(E)? + 1
        } else {
            hb.iter()
                .position(|&c| matches!(c, b':' | b';' | b'?'))
                .unwrap_or(hb.len())
        };
        let host_raw = &hostpart[..host_end];
        let host = Host::parse(host_raw, false)?;
        let mut rest = &hostpart[host_end..];
        let mut port = None;
        if let Some(r) = rest.strip_prefix(':') {
            let end = r
                .bytes()
                .position(|c| matches!(c, b';' | b'?'))
                .unwrap_or(r.len());
            let digits = &r[..end];
            if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|c| c.is_ascii_digit())
            {
                return Err(E);
            }
            port = Some(digits.parse::<u16>().map_err(|_| E)?);
            rest = &r[end..];
        }
        let (params_raw, headers) = match rest.find('?') {
            Some(q) => (&rest[..q], Some(&rest[q + 1..])),
            None => (rest, None),
        };
        let params = Params::parse(params_raw, "URI")?;
        Ok(SipUri {
            secure,
            user,
            password,
            host,
            host_raw,
            port,
            params,
            headers,
        })
    }

    /// The user part with `%HH` escapes undone once (bytes: `%00` is a NUL).
    pub fn user_unescaped(&self) -> Option<std::borrow::Cow<'a, [u8]>> {
        self.user.map(unescape)
    }

    /// A URI parameter: `None` absent, `Some(None)` flag, `Some(Some(v))` value.
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        self.params.get(name)
    }

    /// RFC 8599 `pn-provider` (may be present without value: "query all").
    pub fn pn_provider(&self) -> Option<Option<&'a str>> {
        self.param("pn-provider")
    }

    /// RFC 8599 `pn-prid`.
    pub fn pn_prid(&self) -> Option<&'a str> {
        self.param("pn-prid").flatten()
    }

    /// RFC 8599 `pn-param`.
    pub fn pn_param(&self) -> Option<&'a str> {
        self.param("pn-param").flatten()
    }

    /// RFC 8599 `pn-purr`.
    pub fn pn_purr(&self) -> Option<&'a str> {
        self.param("pn-purr").flatten()
    }

    /// `transport` parameter.
    pub fn transport(&self) -> Option<&'a str> {
        self.param("transport").flatten()
    }

    /// True if the `lr` parameter is present (loose routing).
    pub fn lr(&self) -> bool {
        self.params.contains("lr")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sip(s: &str) -> SipUri<'_> {
        SipUri::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn basic() {
        let u = sip("sip:alice:secret@example.com:5070;transport=tcp;lr?Subject=hi");
        assert_eq!(u.user, Some("alice"));
        assert_eq!(u.password, Some("secret"));
        assert_eq!(u.host, Host::Domain("example.com"));
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.transport(), Some("tcp"));
        assert!(u.lr());
        assert_eq!(u.headers, Some("Subject=hi"));
        assert!(sip("sips:example.com").secure);
        assert_eq!(
            sip("sip:192.0.2.1").host,
            Host::V4("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn ipv6() {
        let u = sip("sip:bob@[::1]:5060");
        assert_eq!(u.host, Host::V6("::1".parse().unwrap()));
        assert_eq!(u.port, Some(5060));
        let u = sip("sip:[2001:db8::10:5070]");
        assert_eq!(u.host, Host::V6("2001:db8::10:5070".parse().unwrap()));
        assert_eq!(u.port, None);
        let u = sip("sip:ted@[::ffff:192.0.2.2]");
        assert_eq!(u.host, Host::V6("::ffff:192.0.2.2".parse().unwrap()));
        let u = sip("sip:user@[2001:db8:::192.0.2.1]");
        assert_eq!(u.host, Host::V6("2001:db8::192.0.2.1".parse().unwrap()));
        assert!(SipUri::parse("sip:2001:db8::10").is_err());
        assert!(SipUri::parse("sip:[2001:db8::10").is_err());
        assert_eq!(Host::V6("::1".parse().unwrap()).to_string(), "[::1]");
    }

    #[test]
    fn tricky_user_parts() {
        let u = sip("sip:user;par=u%40example.net@example.com");
        assert_eq!(u.user, Some("user;par=u%40example.net"));
        assert_eq!(u.host, Host::Domain("example.com"));
        let u = sip("sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com");
        assert_eq!(
            u.user,
            Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
        );
        assert_eq!(
            u.password,
            Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")
        );
        let u = sip("sip:null-%00-null@example.com");
        assert_eq!(u.user_unescaped().unwrap().as_ref(), b"null-\0-null");
    }

    #[test]
    fn pn_params() {
        let u = sip("sip:bob@127.0.0.1:5071;pn-provider=apns;pn-param=ABCD1234.com.example.app.voip;pn-prid=00fc13ad;pn-purr=x1");
        assert_eq!(u.pn_provider(), Some(Some("apns")));
        assert_eq!(u.pn_param(), Some("ABCD1234.com.example.app.voip"));
        assert_eq!(u.pn_prid(), Some("00fc13ad"));
        assert_eq!(u.pn_purr(), Some("x1"));
        assert_eq!(sip("sip:a@b;pn-provider").pn_provider(), Some(None));
    }

    #[test]
    fn rejects() {
        for bad in [
            "sip:",
            "sip:@host",
            "sip:host:",
            "sip:host:99999",
            "sip:a b@c",
            "<sip:a@b>",
            "sip:a@b;;",
            "nocolon",
            "1x:abc",
            "sip:host:12x",
        ] {
            assert!(Uri::parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            Uri::parse("isbn:2983792873"),
            Ok(Uri::Other { scheme: "isbn", .. })
        ));
        assert!(matches!(
            Uri::parse("soap.beep://192.0.2.103:3002"),
            Ok(Uri::Other { .. })
        ));
    }
}
