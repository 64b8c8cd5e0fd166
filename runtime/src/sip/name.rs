//! Header names: case-insensitive, compact forms folded to the long form.

macro_rules! header_names {
    ($( $var:ident => $canon:literal, $lower:literal $(, $compact:literal)? ; )*) => {
        /// A header field name, normalised: matching is case-insensitive and the compact
        /// forms of RFC 3261 §7.3.3 (and later RFCs) map to the long form.
        /// Names this module does not know are [`HeaderName::Other`]; their spelling is kept
        /// on the header itself.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum HeaderName {
            $(
                #[doc = $canon]
                $var,
            )*
            /// Any other (extension) header.
            Other,
        }

        impl HeaderName {
            /// The canonical spelling (`"Call-ID"`, `"Via"`, ...); `None` for
            /// [`HeaderName::Other`].
            pub fn canonical(self) -> Option<&'static str> {
                match self {
                    $( HeaderName::$var => Some($canon), )*
                    HeaderName::Other => None,
                }
            }

            fn from_lower(name: &[u8]) -> HeaderName {
                match name {
                    $( $lower => HeaderName::$var, )*
                    $( $( [$compact] => HeaderName::$var, )? )*
                    _ => HeaderName::Other,
                }
            }

            /// The compact form (`'v'` for Via), if there is one.
            pub fn compact(self) -> Option<char> {
                match self {
                    $( $( HeaderName::$var => Some($compact as char), )? )*
                    _ => None,
                }
            }
        }
    };
}

header_names! {
    Accept => "Accept", b"accept";
    AcceptContact => "Accept-Contact", b"accept-contact", b'a';
    AcceptEncoding => "Accept-Encoding", b"accept-encoding";
    AcceptLanguage => "Accept-Language", b"accept-language";
    AlertInfo => "Alert-Info", b"alert-info";
    Allow => "Allow", b"allow";
    AllowEvents => "Allow-Events", b"allow-events", b'u';
    AuthenticationInfo => "Authentication-Info", b"authentication-info";
    Authorization => "Authorization", b"authorization";
    CallId => "Call-ID", b"call-id", b'i';
    CallInfo => "Call-Info", b"call-info";
    Contact => "Contact", b"contact", b'm';
    ContentDisposition => "Content-Disposition", b"content-disposition";
    ContentEncoding => "Content-Encoding", b"content-encoding", b'e';
    ContentLanguage => "Content-Language", b"content-language";
    ContentLength => "Content-Length", b"content-length", b'l';
    ContentType => "Content-Type", b"content-type", b'c';
    CSeq => "CSeq", b"cseq";
    Date => "Date", b"date";
    ErrorInfo => "Error-Info", b"error-info";
    Event => "Event", b"event", b'o';
    Expires => "Expires", b"expires";
    FeatureCaps => "Feature-Caps", b"feature-caps";
    FlowTimer => "Flow-Timer", b"flow-timer";
    From => "From", b"from", b'f';
    Identity => "Identity", b"identity", b'y';
    IdentityInfo => "Identity-Info", b"identity-info", b'n';
    InReplyTo => "In-Reply-To", b"in-reply-to";
    MaxForwards => "Max-Forwards", b"max-forwards";
    MimeVersion => "MIME-Version", b"mime-version";
    MinExpires => "Min-Expires", b"min-expires";
    MinSe => "Min-SE", b"min-se";
    Organization => "Organization", b"organization";
    PAssertedIdentity => "P-Asserted-Identity", b"p-asserted-identity";
    PPreferredIdentity => "P-Preferred-Identity", b"p-preferred-identity";
    Path => "Path", b"path";
    Priority => "Priority", b"priority";
    Privacy => "Privacy", b"privacy";
    ProxyAuthenticate => "Proxy-Authenticate", b"proxy-authenticate";
    ProxyAuthorization => "Proxy-Authorization", b"proxy-authorization";
    ProxyRequire => "Proxy-Require", b"proxy-require";
    RAck => "RAck", b"rack";
    Reason => "Reason", b"reason";
    RecordRoute => "Record-Route", b"record-route";
    ReferTo => "Refer-To", b"refer-to", b'r';
    ReferredBy => "Referred-By", b"referred-by", b'b';
    RejectContact => "Reject-Contact", b"reject-contact", b'j';
    Replaces => "Replaces", b"replaces";
    ReplyTo => "Reply-To", b"reply-to";
    RequestDisposition => "Request-Disposition", b"request-disposition", b'd';
    Require => "Require", b"require";
    RetryAfter => "Retry-After", b"retry-after";
    Route => "Route", b"route";
    RSeq => "RSeq", b"rseq";
    Server => "Server", b"server";
    SessionExpires => "Session-Expires", b"session-expires", b'x';
    Subject => "Subject", b"subject", b's';
    SubscriptionState => "Subscription-State", b"subscription-state";
    Supported => "Supported", b"supported", b'k';
    Timestamp => "Timestamp", b"timestamp";
    To => "To", b"to", b't';
    Unsupported => "Unsupported", b"unsupported";
    UserAgent => "User-Agent", b"user-agent";
    Via => "Via", b"via", b'v';
    Warning => "Warning", b"warning";
    WwwAuthenticate => "WWW-Authenticate", b"www-authenticate";
}

/// Longest known header name ("Authentication-Info", "P-Preferred-Identity" are 20).
const MAX_KNOWN: usize = 24;

impl HeaderName {
    /// Classify a header name as it appears on the wire (any case, compact or long).
    pub fn from_bytes(name: &[u8]) -> HeaderName {
        if name.is_empty() || name.len() > MAX_KNOWN {
            return HeaderName::Other;
        }
        let mut buf = [0u8; MAX_KNOWN];
        for (d, s) in buf.iter_mut().zip(name) {
            *d = s.to_ascii_lowercase();
        }
        HeaderName::from_lower(&buf[..name.len()])
    }

    /// Classify a header name given as text (see [`HeaderName::from_bytes`]).
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(name: &str) -> HeaderName {
        HeaderName::from_bytes(name.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_case() {
        assert_eq!(HeaderName::from_str("v"), HeaderName::Via);
        assert_eq!(HeaderName::from_str("V"), HeaderName::Via);
        assert_eq!(HeaderName::from_str("vIa"), HeaderName::Via);
        assert_eq!(HeaderName::from_str("i"), HeaderName::CallId);
        assert_eq!(HeaderName::from_str("CALL-id"), HeaderName::CallId);
        assert_eq!(HeaderName::from_str("l"), HeaderName::ContentLength);
        assert_eq!(HeaderName::from_str("m"), HeaderName::Contact);
        assert_eq!(HeaderName::from_str("k"), HeaderName::Supported);
        assert_eq!(
            HeaderName::from_str("MaX-fOrWaRdS"),
            HeaderName::MaxForwards
        );
        assert_eq!(HeaderName::from_str("C%6Fntact"), HeaderName::Other);
        assert_eq!(HeaderName::from_str("q"), HeaderName::Other);
        assert_eq!(HeaderName::Via.canonical(), Some("Via"));
        assert_eq!(HeaderName::CallId.compact(), Some('i'));
    }
}
