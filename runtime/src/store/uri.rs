//! The little URI handling the store needs: find the RFC 8599 `pn-*` parameters of a Contact
//! URI, and the same URI with them left out (the key that "same contact URI" compares).
//!
//! This is not a SIP URI parser. It only splits the URI parameters off a URI that the SIP layer
//! has already parsed and accepted; it never fails, and leaves anything it does not understand
//! untouched.

use super::PushParams;

/// The URI parameters of `uri`: the `;`-separated part after the host, before any `?headers`.
///
/// The user part of a SIP URI may itself contain `;` (e.g. `sip:+1;phone-context=x@host`), so the
/// parameters are searched only after the last `@` of the URI (or after the scheme when there is
/// no user part).
fn split_params(uri: &str) -> (&str, &str, &str) {
    let (base, headers) = match uri.find('?') {
        Some(i) => uri.split_at(i),
        None => (uri, ""),
    };
    let host_start = base.rfind('@').map_or(0, |i| i + 1);
    match base[host_start..].find(';') {
        Some(i) => {
            let (head, params) = base.split_at(host_start + i);
            (head, params, headers)
        }
        None => (base, "", headers),
    }
}

/// Whether a URI parameter (as `name` or `name=value`) is one of RFC 8599's `pn-*` parameters.
fn is_pn_param(param: &str) -> bool {
    let name = param.split('=').next().unwrap_or(param);
    name.len() >= 3 && name[..3].eq_ignore_ascii_case("pn-")
}

/// The value of the URI parameter `name` (case-insensitive) in `uri`, if present with a value.
fn param_value<'a>(uri: &'a str, name: &str) -> Option<&'a str> {
    let (_, params, _) = split_params(uri);
    params
        .split(';')
        .filter_map(|p| p.split_once('='))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// The push parameters carried in a Contact URI, if it carries both `pn-provider` and `pn-prid`.
///
/// A Contact with `pn-provider` alone is an RFC 8599 §4.1.2 query for supported providers, not
/// a push registration, so it yields `None`. Values are kept as written (not unescaped): the
/// store only compares them with what the same phone sends next time.
pub(super) fn push_params(uri: &str) -> Option<PushParams> {
    let provider = param_value(uri, "pn-provider")?;
    let prid = param_value(uri, "pn-prid")?;
    Some(PushParams {
        provider: provider.to_owned(),
        prid: prid.to_owned(),
        param: param_value(uri, "pn-param").map(str::to_owned),
    })
}

/// The contact URI with every `pn-*` parameter left out, otherwise verbatim.
///
/// Two Contacts are "the same contact URI" for binding replacement when these keys are equal:
/// a phone that kept its address but got a new push token must replace its binding, not add one.
pub(super) fn contact_key(uri: &str) -> String {
    let (head, params, headers) = split_params(uri);
    let mut key = String::with_capacity(uri.len());
    key.push_str(head);
    for p in params
        .split(';')
        .filter(|p| !p.is_empty() && !is_pn_param(p))
    {
        key.push(';');
        key.push_str(p);
    }
    key.push_str(headers);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_params_are_read_from_uri_parameters_case_insensitively() {
        let p = push_params("sip:alice@10.0.0.1:5060;transport=tcp;PN-Provider=apns;pn-prid=00fc13adff78;pn-param=ABCD.com.example.voip")
            .expect("push params");
        assert_eq!(p.provider, "apns");
        assert_eq!(p.prid, "00fc13adff78");
        assert_eq!(p.param.as_deref(), Some("ABCD.com.example.voip"));
    }

    #[test]
    fn provider_without_prid_is_a_query_not_push_params() {
        assert_eq!(push_params("sip:alice@host;pn-provider=fcm"), None);
    }

    #[test]
    fn semicolons_in_the_user_part_are_not_parameters() {
        assert_eq!(
            push_params("sip:+1;pn-provider=x;pn-prid=y@host;transport=tls"),
            None
        );
        assert_eq!(
            contact_key("sip:+1;pn-provider=x@host;pn-prid=t;transport=tls"),
            "sip:+1;pn-provider=x@host;transport=tls"
        );
    }

    #[test]
    fn contact_key_drops_only_pn_parameters_and_keeps_headers() {
        assert_eq!(
            contact_key("sip:a@h:5060;pn-provider=fcm;transport=tcp;pn-prid=T:1;ob?X=1"),
            "sip:a@h:5060;transport=tcp;ob?X=1"
        );
        assert_eq!(contact_key("sip:a@h"), "sip:a@h");
    }
}
