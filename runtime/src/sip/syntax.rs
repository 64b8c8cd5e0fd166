//! Lexical helpers shared by the typed views: tokens, LWS, quoted strings, list splitting
//! and `;name=value` parameter lists.

use super::error::SyntaxError;

const TOKEN: u8 = 1;
const PVALUE: u8 = 2;

/// Character classes, one lookup per octet.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let token = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        let pv = token
            || matches!(
                b,
                b'[' | b']' | b':' | b'/' | b'&' | b'$' | b'(' | b')' | b'@'
            );
        t[i] = ((token as u8) * TOKEN) | ((pv as u8) * PVALUE);
        i += 1;
    }
    t
};

/// RFC 3261 `token` character: alphanum / `-.!%*_+`'~`.
#[inline]
pub fn is_token_char(b: u8) -> bool {
    CLASS[b as usize] & TOKEN != 0
}

/// True if `s` is a non-empty RFC 3261 token.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

/// Trim SP / HT (and stray CR/LF) on both ends.
#[inline]
pub fn trim_lws(s: &str) -> &str {
    s.trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n'))
}

/// Given `s[start] == '"'`, the index just past the closing quote (quoted-pairs honoured).
pub fn quoted_end(s: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Strip one pair of surrounding double quotes, if present (quoted-pairs stay escaped).
pub fn unquote(s: &str) -> &str {
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        &s[1..s.len() - 1]
    } else {
        s
    }
}

/// Iterator over the comma-separated elements of a header value. Commas inside quoted
/// strings and inside `<...>` do not split. Elements are LWS-trimmed and may be empty.
/// An unterminated quoted string or `<` yields one error and ends the iteration.
pub struct CommaSplit<'a> {
    s: &'a str,
    pos: usize,
    done: bool,
    what: &'static str,
}

impl<'a> CommaSplit<'a> {
    /// Split `s`; errors are reported as `SyntaxError(what)`.
    pub fn new(s: &'a str, what: &'static str) -> Self {
        CommaSplit {
            s,
            pos: 0,
            done: false,
            what,
        }
    }
}

/// Index of the first top-level comma in `s` (outside quotes and `<>`), `Ok(None)` if none.
pub fn top_comma(s: &str) -> Result<Option<usize>, ()> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => i = quoted_end(b, i).ok_or(())?,
            b'<' => i = memchr::memchr(b'>', &b[i..]).ok_or(())? + i + 1,
            b',' => return Ok(Some(i)),
            _ => i += 1,
        }
    }
    Ok(None)
}

impl<'a> Iterator for CommaSplit<'a> {
    type Item = Result<&'a str, SyntaxError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let rest = &self.s[self.pos..];
        match top_comma(rest) {
            Err(()) => {
                self.done = true;
                Some(Err(SyntaxError(self.what)))
            }
            Ok(Some(i)) => {
                self.pos += i + 1;
                Some(Ok(trim_lws(&rest[..i])))
            }
            Ok(None) => {
                self.done = true;
                Some(Ok(trim_lws(rest)))
            }
        }
    }
}

/// A parameter list (`;a=b;c;d="q"`), validated once, iterated on demand.
/// Names compare case-insensitively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Params<'a> {
    raw: &'a str,
}

/// One parameter of a [`Params`] list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    /// The name as written.
    pub name: &'a str,
    /// The value as written (quotes kept), `None` for a flag parameter.
    pub raw_value: Option<&'a str>,
}

impl<'a> Param<'a> {
    /// The value with surrounding quotes removed (`+sip.instance="<urn:uuid:..>"` gives
    /// `<urn:uuid:..>`).
    pub fn value(&self) -> Option<&'a str> {
        self.raw_value.map(unquote)
    }
}

/// Is `b` allowed in an unquoted parameter value? (Lenient union of `token`, `host`
/// (IPv6 references) and URI `paramchar`.)
#[inline]
fn is_pvalue_char(b: u8) -> bool {
    CLASS[b as usize] & PVALUE != 0
}

impl<'a> Params<'a> {
    /// An empty list.
    pub const EMPTY: Params<'static> = Params { raw: "" };

    /// Validate `s`, which must be empty or start (after LWS) with `;`. LWS around `;` and
    /// `=` is allowed (header parameters). Empty names (`;;`) are errors (RFC 4475 badinv01).
    pub fn parse(s: &'a str, what: &'static str) -> Result<Params<'a>, SyntaxError> {
        let t = trim_lws(s);
        if t.is_empty() {
            return Ok(Params { raw: "" });
        }
        if !t.starts_with(';') {
            return Err(SyntaxError(what));
        }
        let p = Params { raw: &t[1..] };
        let mut it = p.raw_iter();
        while let Some(r) = it.next_param() {
            let param = r.map_err(|_| SyntaxError(what))?;
            if !is_token(param.name) {
                return Err(SyntaxError(what));
            }
            if let Some(v) = param.raw_value {
                if v.starts_with('"') {
                    if quoted_end(v.as_bytes(), 0) != Some(v.len()) {
                        return Err(SyntaxError(what));
                    }
                } else if v.is_empty() || !v.bytes().all(is_pvalue_char) {
                    return Err(SyntaxError(what));
                }
            }
        }
        Ok(p)
    }

    /// The list as written, without the leading `;`.
    pub fn as_str(&self) -> &'a str {
        self.raw
    }

    /// True if there is no parameter.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    fn raw_iter(&self) -> RawParams<'a> {
        RawParams {
            s: self.raw,
            pos: 0,
            done: self.raw.is_empty(),
        }
    }

    /// Iterate over the parameters.
    pub fn iter(&self) -> impl Iterator<Item = Param<'a>> + 'a {
        let mut it = self.raw_iter();
        std::iter::from_fn(move || {
            it.next_param().map(|r| {
                r.unwrap_or(Param {
                    name: "",
                    raw_value: None,
                })
            })
        })
    }

    /// Look a parameter up: `None` if absent, `Some(None)` if present without value,
    /// `Some(Some(v))` with the unquoted value.
    pub fn get(&self, name: &str) -> Option<Option<&'a str>> {
        self.iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .map(|p| p.value())
    }

    /// True if the parameter is present (with or without a value).
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

struct RawParams<'a> {
    s: &'a str,
    pos: usize,
    done: bool,
}

impl<'a> RawParams<'a> {
    fn next_param(&mut self) -> Option<Result<Param<'a>, ()>> {
        if self.done {
            return None;
        }
        let b = self.s.as_bytes();
        let start = self.pos;
        let mut i = start;
        let mut eq = None;
        while i < b.len() {
            match memchr::memchr3(b'"', b'=', b';', &b[i..]) {
                Some(k) => i += k,
                None => {
                    i = b.len();
                    break;
                }
            }
            match b[i] {
                b'"' => match quoted_end(b, i) {
                    Some(e) => i = e,
                    None => {
                        self.done = true;
                        return Some(Err(()));
                    }
                },
                b'=' if eq.is_none() => {
                    eq = Some(i);
                    i += 1;
                }
                b';' => break,
                _ => i += 1,
            }
        }
        if i >= b.len() {
            self.done = true;
        } else {
            self.pos = i + 1;
        }
        let item = &self.s[start..i.min(b.len())];
        Some(Ok(match eq {
            Some(e) => Param {
                name: trim_lws(&self.s[start..e]),
                raw_value: Some(trim_lws(&self.s[e + 1..i.min(b.len())])),
            },
            None => Param {
                name: trim_lws(item),
                raw_value: None,
            },
        }))
    }
}

/// Undo `%HH` escapes once (RFC 4475 esc01: `%25%34%31` becomes `%41`). Invalid escapes
/// are kept literally. The result is bytes: `%00` is a legitimate NUL (RFC 4475 escnull).
pub fn unescape(s: &str) -> std::borrow::Cow<'_, [u8]> {
    let b = s.as_bytes();
    if memchr::memchr(b'%', b).is_none() {
        return std::borrow::Cow::Borrowed(b);
    }
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comma_split_respects_quotes_and_brackets() {
        let v: Vec<_> = CommaSplit::new(r#""a, b" <sip:x@y;p=1,2>;q=1 , <sip:z>"#, "t").collect();
        assert_eq!(v, vec![Ok(r#""a, b" <sip:x@y;p=1,2>;q=1"#), Ok("<sip:z>")]);
        let v: Vec<_> = CommaSplit::new(r#""unterminated, x"#, "t").collect();
        assert_eq!(v, vec![Err(SyntaxError("t"))]);
    }

    #[test]
    fn params() {
        let p = Params::parse(
            r#" ; tag = 98asjd8 ;+sip.instance="<urn:uuid:0001;x>";reg-id=1;lr"#,
            "p",
        )
        .unwrap();
        assert_eq!(p.get("TAG"), Some(Some("98asjd8")));
        assert_eq!(p.get("+sip.instance"), Some(Some("<urn:uuid:0001;x>")));
        assert_eq!(p.get("reg-id"), Some(Some("1")));
        assert_eq!(p.get("lr"), Some(None));
        assert_eq!(p.get("nope"), None);
        assert!(Params::parse(";;", "p").is_err());
        assert!(Params::parse(";a=\"x", "p").is_err());
        assert!(Params::parse(";a=", "p").is_err());
        assert!(Params::parse("x", "p").is_err());
    }

    #[test]
    fn unescape_once() {
        assert_eq!(&*unescape("v%61lue%25%34%31"), b"value%41");
        assert_eq!(&*unescape("%00"), b"\0");
        assert_eq!(&*unescape("50%"), b"50%");
        assert_eq!(&*unescape("%4"), b"%4");
    }
}
