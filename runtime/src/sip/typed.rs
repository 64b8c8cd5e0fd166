//! Typed views of header values, parsed on demand from a [`Message`].

use std::net::IpAddr;

use super::error::SyntaxError;
use super::message::{as_text, Message, Method};
use super::name::HeaderName;
use super::syntax::{is_token, is_token_char, quoted_end, trim_lws, Params};
use super::uri::{Host, Uri};

/// `name-addr` or `addr-spec` with header parameters (From, To, Contact, Route, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// Display name: without the quotes if it was quoted (quoted-pairs kept as written).
    pub display_name: Option<&'a str>,
    /// The URI.
    pub uri: Uri<'a>,
    /// The URI text as written.
    pub uri_raw: &'a str,
    /// The URI was enclosed in `<>`. (A registrar may reject an unbracketed URI with
    /// `?headers`, RFC 4475 regbadct; this parser infers the brackets.)
    pub bracketed: bool,
    /// Header parameters (`tag`, `expires`, `q`, `+sip.instance`, `reg-id`, ...).
    pub params: Params<'a>,
}

impl<'a> NameAddr<'a> {
    /// Parse one `name-addr` / `addr-spec` followed by parameters. `what` names the header
    /// in errors. Accepts `caller<sip:..>` (RFC 4475 lwsdisp); rejects unterminated quotes,
    /// non-token unquoted display names and LWS inside `<>`.
    pub fn parse(s: &'a str, what: &'static str) -> Result<NameAddr<'a>, SyntaxError> {
        let e = SyntaxError(what);
        let s = trim_lws(s);
        let b = s.as_bytes();
        let (display_name, rest) = if b.first() == Some(&b'"') {
            let end = quoted_end(b, 0).ok_or(e)?;
            let rest = trim_lws(&s[end..]);
            if !rest.starts_with('<') {
                return Err(e);
            }
            (Some(&s[1..end - 1]), rest)
        } else if let Some(lt) = memchr::memchr(b'<', b) {
            let dn = trim_lws(&s[..lt]);
            if !dn
                .bytes()
                .all(|c| is_token_char(c) || c == b' ' || c == b'\t')
            {
                return Err(e);
            }
            ((!dn.is_empty()).then_some(dn), &s[lt..])
        } else {
            let semi = memchr::memchr(b';', b).unwrap_or(b.len());
            let uri_raw = trim_lws(&s[..semi]);
            let uri = Uri::parse(uri_raw).map_err(|_| e)?;
            let params = Params::parse(&s[semi..], what)?;
            return Ok(NameAddr {
                display_name: None,
                uri,
                uri_raw,
                bracketed: false,
                params,
            });
        };
        let gt = memchr::memchr(b'>', rest.as_bytes()).ok_or(e)?;
        let uri_raw = &rest[1..gt];
        let uri = Uri::parse(uri_raw).map_err(|_| e)?;
        let params = Params::parse(&rest[gt + 1..], what)?;
        Ok(NameAddr {
            display_name,
            uri,
            uri_raw,
            bracketed: true,
            params,
        })
    }

    /// `tag` parameter.
    pub fn tag(&self) -> Option<&'a str> {
        self.params.get("tag").flatten()
    }

    /// A header parameter (unquoted value).
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        self.params.get(name)
    }
}

/// One Contact value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contact<'a> {
    /// `Contact: *` (REGISTER removing all bindings).
    Star,
    /// A contact address.
    Addr(NameAddr<'a>),
}

impl<'a> Contact<'a> {
    /// Parse one Contact value.
    pub fn parse(s: &'a str) -> Result<Contact<'a>, SyntaxError> {
        if trim_lws(s) == "*" {
            return Ok(Contact::Star);
        }
        NameAddr::parse(s, "Contact").map(Contact::Addr)
    }

    /// The address, unless this is `*`.
    pub fn addr(&self) -> Option<&NameAddr<'a>> {
        match self {
            Contact::Star => None,
            Contact::Addr(a) => Some(a),
        }
    }

    /// `expires` header parameter (`None` if absent or not a number).
    pub fn expires(&self) -> Option<u32> {
        self.addr()?.param("expires")??.parse().ok()
    }

    /// `q` header parameter as thousandths (`q=0.5` → 500).
    pub fn q(&self) -> Option<u16> {
        let v = self.addr()?.param("q")??;
        let (i, f) = v.split_once('.').unwrap_or((v, ""));
        if i.len() != 1 || f.len() > 3 || !f.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let i: u16 = i.parse().ok()?;
        let mut frac = 0u16;
        for k in 0..3 {
            frac = frac * 10 + f.as_bytes().get(k).map(|d| (d - b'0') as u16).unwrap_or(0);
        }
        let q = i * 1000 + frac;
        (q <= 1000).then_some(q)
    }

    /// `+sip.instance` (RFC 5626), unquoted: usually `<urn:uuid:...>`.
    pub fn sip_instance(&self) -> Option<&'a str> {
        self.addr()?.param("+sip.instance").flatten()
    }

    /// `reg-id` (RFC 5626).
    pub fn reg_id(&self) -> Option<u32> {
        self.addr()?.param("reg-id")??.parse().ok()
    }
}

/// One Via value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via<'a> {
    /// Protocol name (`SIP`).
    pub protocol: &'a str,
    /// Protocol version (`2.0`).
    pub version: &'a str,
    /// Transport (`UDP`, `TCP`, `TLS`, `SCTP`, `WS`, or anything else).
    pub transport: &'a str,
    /// sent-by host.
    pub host: Host<'a>,
    /// sent-by host as written.
    pub host_raw: &'a str,
    /// sent-by port.
    pub port: Option<u16>,
    /// Parameters.
    pub params: Params<'a>,
}

const VIA: SyntaxError = SyntaxError("Via");

impl<'a> Via<'a> {
    /// Parse one Via value (LWS allowed around `/`, `;`, `=`: RFC 4475 wsinv).
    pub fn parse(s: &'a str) -> Result<Via<'a>, SyntaxError> {
        let s = trim_lws(s);
        let (protocol, r) = token_then(s, b'/')?;
        let (version, r) = token_then(r, b'/')?;
        let r = trim_lws_start(r);
        let tend = r.bytes().position(|c| !is_token_char(c)).unwrap_or(r.len());
        let transport = &r[..tend];
        let r = &r[tend..];
        if transport.is_empty() || !r.starts_with([' ', '\t']) {
            return Err(VIA);
        }
        let r = trim_lws_start(r);
        let rb = r.as_bytes();
        let host_end = if rb.first() == Some(&b'[') {
            memchr::memchr(b']', rb).ok_or(VIA)? + 1
        } else {
            rb.iter()
                .position(|&c| matches!(c, b':' | b';' | b' ' | b'\t'))
                .unwrap_or(rb.len())
        };
        let host_raw = &r[..host_end];
        let host = Host::parse(host_raw, false).map_err(|_| VIA)?;
        let mut r = trim_lws_start(&r[host_end..]);
        let mut port = None;
        if let Some(p) = r.strip_prefix(':') {
            let p = trim_lws_start(p);
            let end = p
                .bytes()
                .position(|c| !c.is_ascii_digit())
                .unwrap_or(p.len());
            if end == 0 || end > 5 {
                return Err(VIA);
            }
            port = Some(p[..end].parse::<u16>().map_err(|_| VIA)?);
            r = &p[end..];
        }
        let params = Params::parse(r, "Via")?;
        let via = Via {
            protocol,
            version,
            transport,
            host,
            host_raw,
            port,
            params,
        };
        // One pass over the parameters; as with `Params::get`, the first of a name counts.
        let mut seen = [false; 4];
        for param in via.params.iter() {
            let known = ["received", "rport", "ttl", "branch"]
                .iter()
                .position(|n| param.name.eq_ignore_ascii_case(n));
            let Some(k) = known.filter(|&k| !std::mem::replace(&mut seen[k], true)) else {
                continue;
            };
            let value = param.value();
            let valid = match (k, value) {
                (0, Some(v)) => Host::parse(v, true).ok().and_then(|h| h.ip()).is_some(),
                (1, Some(v)) => v.parse::<u16>().is_ok(),
                (2, Some(v)) => v.parse::<u8>().is_ok(),
                (1, None) | (3, Some(_)) => true,
                _ => false,
            };
            if !valid {
                return Err(VIA);
            }
        }
        Ok(via)
    }

    /// `branch` parameter.
    pub fn branch(&self) -> Option<&'a str> {
        self.params.get("branch").flatten()
    }

    /// True if the branch starts with the RFC 3261 magic cookie `z9hG4bK` and has more
    /// after it (RFC 4475 badbranch has only the cookie: the transaction layer decides).
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch()
            .is_some_and(|b| b.len() > 7 && b.starts_with("z9hG4bK"))
    }

    /// `received` parameter, with or without `[]` around IPv6 (RFC 5118 §4.5).
    pub fn received(&self) -> Option<IpAddr> {
        Host::parse(self.params.get("received")??, true).ok()?.ip()
    }

    /// `rport`: `None` absent, `Some(None)` empty (request asks for it), `Some(Some(p))`.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.params
            .get("rport")
            .map(|v| v.and_then(|p| p.parse().ok()))
    }

    /// `maddr` parameter.
    pub fn maddr(&self) -> Option<&'a str> {
        self.params.get("maddr").flatten()
    }

    /// `ttl` parameter.
    pub fn ttl(&self) -> Option<u8> {
        self.params.get("ttl")??.parse().ok()
    }
}

fn trim_lws_start(s: &str) -> &str {
    s.trim_start_matches([' ', '\t'])
}

/// A token, optional LWS, then `sep`; returns (token, rest after sep).
fn token_then(s: &str, sep: u8) -> Result<(&str, &str), SyntaxError> {
    let s = trim_lws_start(s);
    let end = s.bytes().position(|c| !is_token_char(c)).unwrap_or(s.len());
    let tok = &s[..end];
    let r = trim_lws_start(&s[end..]);
    if tok.is_empty() || r.as_bytes().first() != Some(&sep) {
        return Err(VIA);
    }
    Ok((tok, &r[1..]))
}

/// CSeq: sequence number (≤ 2^32−1) and method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    /// Sequence number.
    pub seq: u32,
    /// Method token as written.
    pub method: &'a str,
}

impl<'a> CSeq<'a> {
    /// Parse a CSeq value (leading zeros allowed, RFC 4475 wsinv `0009`).
    pub fn parse(s: &'a str) -> Result<CSeq<'a>, SyntaxError> {
        let e = SyntaxError("CSeq");
        let s = trim_lws(s);
        let end = s
            .bytes()
            .position(|c| !c.is_ascii_digit())
            .unwrap_or(s.len());
        let seq = parse_decimal_u32(&s[..end]).ok_or(e)?;
        let rest = &s[end..];
        if !rest.starts_with([' ', '\t']) {
            return Err(e);
        }
        let method = trim_lws(rest);
        if !is_token(method) {
            return Err(e);
        }
        Ok(CSeq { seq, method })
    }

    /// The method, classified.
    pub fn method(&self) -> Method {
        Method::from_token(self.method)
    }
}

/// Parse `1*DIGIT` into a u32 (leading zeros fine, overflow → `None`).
pub fn parse_decimal_u32(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.bytes().try_fold(0u32, |a, d| {
        a.checked_mul(10)?.checked_add((d - b'0') as u32)
    })
}

/// Content-Type: `type/subtype;params`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentType<'a> {
    /// Media type (`application`).
    pub mtype: &'a str,
    /// Subtype (`sdp`).
    pub subtype: &'a str,
    /// Parameters (`boundary`, `charset`).
    pub params: Params<'a>,
}

impl<'a> ContentType<'a> {
    /// Parse a Content-Type value.
    pub fn parse(s: &'a str) -> Result<ContentType<'a>, SyntaxError> {
        let e = SyntaxError("Content-Type");
        let s = trim_lws(s);
        let semi = s.find(';').unwrap_or(s.len());
        let (t, st) = s[..semi].split_once('/').ok_or(e)?;
        let (t, st) = (trim_lws(t), trim_lws(st));
        if !is_token(t) || !is_token(st) {
            return Err(e);
        }
        Ok(ContentType {
            mtype: t,
            subtype: st,
            params: Params::parse(&s[semi..], "Content-Type")?,
        })
    }

    /// Case-insensitive match against `type/subtype`.
    pub fn is(&self, mtype: &str, subtype: &str) -> bool {
        self.mtype.eq_ignore_ascii_case(mtype) && self.subtype.eq_ignore_ascii_case(subtype)
    }
}

fn text(m: &Message, name: HeaderName) -> Option<Result<&str, SyntaxError>> {
    m.first(name).map(|v| as_text(v, name))
}

impl Message {
    /// All Via values (every line, every comma-separated value), top first.
    pub fn vias(&self) -> impl Iterator<Item = Result<Via<'_>, SyntaxError>> + '_ {
        self.elements(HeaderName::Via)
            .map(|r| r.map_err(|_| VIA).and_then(Via::parse))
    }

    /// The top Via (`None` if there is no Via).
    pub fn top_via(&self) -> Option<Result<Via<'_>, SyntaxError>> {
        self.vias().next()
    }

    /// From (first From header).
    pub fn from_header(&self) -> Option<Result<NameAddr<'_>, SyntaxError>> {
        text(self, HeaderName::From).map(|r| r.and_then(|s| NameAddr::parse(s, "From")))
    }

    /// To (first To header).
    pub fn to_header(&self) -> Option<Result<NameAddr<'_>, SyntaxError>> {
        text(self, HeaderName::To).map(|r| r.and_then(|s| NameAddr::parse(s, "To")))
    }

    /// Call-ID (`word [@ word]`: non-empty, no whitespace).
    pub fn call_id(&self) -> Option<Result<&str, SyntaxError>> {
        text(self, HeaderName::CallId).map(|r| {
            r.and_then(|s| {
                if s.is_empty() || s.bytes().any(|c| c <= b' ' || c == 0x7f) {
                    Err(SyntaxError("Call-ID"))
                } else {
                    Ok(s)
                }
            })
        })
    }

    /// CSeq.
    pub fn cseq(&self) -> Option<Result<CSeq<'_>, SyntaxError>> {
        text(self, HeaderName::CSeq).map(|r| r.and_then(CSeq::parse))
    }

    /// Max-Forwards as written (0–255; leading zeros allowed).
    pub fn max_forwards(&self) -> Option<Result<u8, SyntaxError>> {
        let e = SyntaxError("Max-Forwards");
        text(self, HeaderName::MaxForwards).map(|r| {
            r.and_then(|s| {
                parse_decimal_u32(s)
                    .and_then(|v| u8::try_from(v).ok())
                    .ok_or(e)
            })
        })
    }

    /// Max-Forwards, 70 when absent (RFC 3261 §16.6 step 3); `Err` if malformed.
    pub fn max_forwards_or_default(&self) -> Result<u8, SyntaxError> {
        self.max_forwards().unwrap_or(Ok(70))
    }

    /// Content-Length value, if exactly one valid header.
    pub fn content_length(&self) -> Option<usize> {
        match self.content_length_state() {
            super::message::ContentLength::Value(n) => Some(n),
            _ => None,
        }
    }

    /// Expires header (delta-seconds; overflow beyond 2^32−1 is an error — the registrar
    /// may then apply its default, RFC 4475 scalar02).
    pub fn expires(&self) -> Option<Result<u32, SyntaxError>> {
        text(self, HeaderName::Expires)
            .map(|r| r.and_then(|s| parse_decimal_u32(s).ok_or(SyntaxError("Expires"))))
    }

    /// All Contact values (`*` included), in order.
    pub fn contacts(&self) -> impl Iterator<Item = Result<Contact<'_>, SyntaxError>> + '_ {
        self.elements(HeaderName::Contact)
            .map(|r| r.and_then(Contact::parse))
    }

    /// All Route values, top first.
    pub fn routes(&self) -> impl Iterator<Item = Result<NameAddr<'_>, SyntaxError>> + '_ {
        self.elements(HeaderName::Route)
            .map(|r| r.and_then(|s| NameAddr::parse(s, "Route")))
    }

    /// All Record-Route values, top first.
    pub fn record_routes(&self) -> impl Iterator<Item = Result<NameAddr<'_>, SyntaxError>> + '_ {
        self.elements(HeaderName::RecordRoute)
            .map(|r| r.and_then(|s| NameAddr::parse(s, "Record-Route")))
    }

    /// Option tags of a Require / Proxy-Require / Supported / Unsupported header (all lines).
    /// A Supported header may be empty (RFC 3261 §20.37: its option tags are optional).
    pub fn option_tags(&self, name: HeaderName) -> Result<Vec<&str>, SyntaxError> {
        let what = name.canonical().unwrap_or("option tags");
        let mut out = Vec::new();
        if name == HeaderName::Supported
            && self
                .values(name)
                .all(|v| v.iter().all(|b| b.is_ascii_whitespace()))
        {
            return Ok(out);
        }
        for t in self.elements(name) {
            let t = t?;
            if !is_token(t) {
                return Err(SyntaxError(what));
            }
            out.push(t);
        }
        Ok(out)
    }

    /// Content-Type.
    pub fn content_type(&self) -> Option<Result<ContentType<'_>, SyntaxError>> {
        text(self, HeaderName::ContentType).map(|r| r.and_then(ContentType::parse))
    }

    /// The Request-URI, parsed (`None` for a response). Any whitespace in it is an error.
    pub fn request_uri(&self) -> Option<Result<Uri<'_>, SyntaxError>> {
        self.request_uri_str().map(Uri::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_supported_is_no_option_tag_but_an_empty_require_is_malformed() {
        let request = |headers: &str| {
            let text = format!(
                "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.7;branch=z9hG4bK1\r\n\
                 Call-ID: c\r\nCSeq: 1 OPTIONS\r\n{headers}Content-Length: 0\r\n\r\n"
            );
            crate::sip::parse_datagram(text.as_bytes()).expect("parses")
        };
        let baresip = request("Supported:\r\n");
        assert_eq!(baresip.option_tags(HeaderName::Supported), Ok(vec![]));
        let tags = request("Supported: gruu, outbound\r\n");
        assert_eq!(
            tags.option_tags(HeaderName::Supported),
            Ok(vec!["gruu", "outbound"])
        );
        let require = request("Require:\r\n");
        assert!(require.option_tags(HeaderName::Require).is_err());
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(
            r#""J Rosenberg \\\"" <sip:jdrosen@example.com> ; tag = 98asjd8"#,
            "From",
        )
        .unwrap();
        assert_eq!(n.display_name, Some(r#"J Rosenberg \\\""#));
        assert_eq!(n.tag(), Some("98asjd8"));
        let n = NameAddr::parse("caller<sip:caller@example.com>;tag=323", "From").unwrap();
        assert_eq!(n.display_name, Some("caller"));
        assert_eq!(n.uri_raw, "sip:caller@example.com");
        let n =
            NameAddr::parse("sip:+19725552222@gw1.example.net;unknownparam", "Contact").unwrap();
        assert!(!n.bracketed);
        assert!(n.params.contains("unknownparam"));
        assert!(n.uri.as_sip().unwrap().params.is_empty());
        let n =
            NameAddr::parse("<sip:+19725552222@gw1.example.net;unknownparam>", "Contact").unwrap();
        assert!(n.params.is_empty());
        assert!(n.uri.as_sip().unwrap().params.contains("unknownparam"));
        let n = NameAddr::parse(
            "token1~` token2'+_ token3*%!.- <sip:mundane@example.com>",
            "From",
        )
        .unwrap();
        assert_eq!(n.display_name, Some("token1~` token2'+_ token3*%!.-"));
        assert!(NameAddr::parse("\"Mr. J. User <sip:j.user@example.com>", "To").is_err());
        assert!(
            NameAddr::parse("Bell, Alexander <sip:a.g.bell@example.com>;tag=43", "From").is_err()
        );
        assert!(NameAddr::parse("\"Watson, Thomas\" < sip:t.watson@example.org >", "To").is_err());
        assert!(NameAddr::parse("isbn:2983792873", "To").is_ok());
    }

    #[test]
    fn contact_instance_and_pn() {
        let s = r#"<sip:bob@[2001:db8::1]:5071;transport=tcp;pn-provider=apns;pn-param=ABCD1234.com.example.app.voip;pn-prid=00fc13ad>;+sip.instance="<urn:uuid:3f8b1c2e-0000-4000-8000-000000000001>";reg-id=1;expires=600;q=0.7"#;
        let c = Contact::parse(s).unwrap();
        assert_eq!(
            c.sip_instance(),
            Some("<urn:uuid:3f8b1c2e-0000-4000-8000-000000000001>")
        );
        assert_eq!(c.reg_id(), Some(1));
        assert_eq!(c.expires(), Some(600));
        assert_eq!(c.q(), Some(700));
        let u = c.addr().unwrap().uri.as_sip().unwrap().clone();
        assert_eq!(u.pn_prid(), Some("00fc13ad"));
        assert_eq!(u.host, Host::V6("2001:db8::1".parse().unwrap()));
        assert_eq!(Contact::parse(" * ").unwrap(), Contact::Star);
    }

    #[test]
    fn via_forms() {
        let v = Via::parse("SIP  /   2.0 /UDP    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!((v.protocol, v.version, v.transport), ("SIP", "2.0", "UDP"));
        assert_eq!(v.branch(), Some("390skdjuw"));
        assert!(!v.has_rfc3261_branch());
        let v =
            Via::parse("SIP/2.0/TCP spindle.example.com   ;\n branch  =   z9hG4bK9ikj8").unwrap();
        assert_eq!(v.host, Host::Domain("spindle.example.com"));
        assert!(v.has_rfc3261_branch());
        let v =
            Via::parse("SIP/2.0/UDP [2001:db8::9:1]:6050;branch=z9hG4bKas3-111;received=[2001:db8::9:255];rport=5061")
                .unwrap();
        assert_eq!(v.port, Some(6050));
        assert_eq!(v.received(), Some("2001:db8::9:255".parse().unwrap()));
        assert_eq!(v.rport(), Some(Some(5061)));
        let v = Via::parse(
            "SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bKas3;rport",
        )
        .unwrap();
        assert_eq!(v.received(), Some("2001:db8::9:255".parse().unwrap()));
        assert_eq!(v.rport(), Some(None));
        let v = Via::parse(
            "SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en;maddr=224.2.0.1;ttl=16",
        )
        .unwrap();
        assert_eq!(v.transport, "UNKNOWN");
        assert_eq!(v.ttl(), Some(16));
        assert_eq!(v.maddr(), Some("224.2.0.1"));
        let v = Via::parse("SIP/2.0/UDP [::ffff:192.0.2.10]:19823;branch=z9hG4bKbh19").unwrap();
        assert_eq!(v.port, Some(19823));
        for bad in [
            "SIP/2.0/UDP 192.0.2.15;;",
            "SIP/2.0/UDP",
            "SIP/2.0 host",
            "SIP/2.0/UDP h;received=host.name",
            "SIP/2.0/UDP h:x",
            "",
            "SIP/2.0/UDP h;ttl=300",
        ] {
            assert!(Via::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cseq_and_numbers() {
        assert_eq!(
            CSeq::parse("0009 INVITE").unwrap(),
            CSeq {
                seq: 9,
                method: "INVITE"
            }
        );
        assert_eq!(CSeq::parse("4294967295 ACK").unwrap().seq, u32::MAX);
        assert!(CSeq::parse("4294967296 ACK").is_err());
        assert!(CSeq::parse("36893488147419103232 REGISTER").is_err());
        assert!(CSeq::parse("1INVITE").is_err());
        assert!(CSeq::parse("-1 INVITE").is_err());
        assert!(CSeq::parse("1").is_err());
        let ct = ContentType::parse("multipart/mixed;boundary=7a9cbec02ceef655").unwrap();
        assert!(ct.is("MULTIPART", "mixed"));
        assert_eq!(ct.params.get("boundary"), Some(Some("7a9cbec02ceef655")));
    }
}
