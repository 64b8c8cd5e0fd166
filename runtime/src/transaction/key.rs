//! Transaction identifiers: the matching rules of RFC 3261 §17.1.3 (client) and §17.2.3
//! (server), built by the caller from already-parsed header strings.

use std::fmt;

/// The RFC 3261 branch magic cookie (§8.1.1.7). Branches without it come from RFC 2543
/// elements; this module does not implement the RFC 2543 matching fallback (§17.2.3), so
/// [`Key::server`] and [`Key::client`] reject them and the caller answers statelessly.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// The facts about a request method that transactions care about.
///
/// Methods are case-sensitive tokens (RFC 3261 §7.1): `invite` is an unknown method, not INVITE.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// INVITE: uses the INVITE state machines (RFC 3261 §17.1.1, §17.2.1).
    Invite,
    /// ACK: never creates a transaction; matches the INVITE server transaction (§17.2.3).
    Ack,
    /// CANCEL: a non-INVITE transaction of its own (§9.1, §9.2).
    Cancel,
    /// Any other method (REGISTER, MESSAGE, BYE, ...): non-INVITE machines (§17.1.2, §17.2.2).
    Other(String),
}

impl Method {
    /// Classifies a method token from the request line or the CSeq header (case-sensitive).
    pub fn from_token(token: &str) -> Method {
        match token {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "CANCEL" => Method::Cancel,
            other => Method::Other(other.to_owned()),
        }
    }

    /// The method token.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Cancel => "CANCEL",
            Method::Other(token) => token,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which side of a transaction a [`Key`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// We sent the request (RFC 3261 §17.1).
    Client,
    /// We received the request (RFC 3261 §17.2).
    Server,
}

/// Why a [`Key`] could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// The top Via branch does not start with `z9hG4bK` (RFC 3261 §17.2.3 RFC 2543 fallback
    /// not supported; §8.1.1.7 requires the cookie of every RFC 3261 element).
    MissingMagicCookie,
    /// The top Via sent-by is empty.
    EmptySentBy,
    /// ACK never has a client transaction: the ACK for a non-2xx is generated inside the INVITE
    /// client transaction (§17.1.1.3) and the ACK for a 2xx is sent by the TU (RFC 6026 §7.2).
    AckHasNoClientTransaction,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::MissingMagicCookie => {
                write!(f, "Via branch lacks the {MAGIC_COOKIE} magic cookie")
            }
            KeyError::EmptySentBy => f.write_str("Via sent-by is empty"),
            KeyError::AckHasNoClientTransaction => {
                f.write_str("ACK does not create a client transaction")
            }
        }
    }
}

impl std::error::Error for KeyError {}

/// Identifies one transaction in a [`Transactions`](super::Transactions) table.
///
/// Build it with [`Key::server`] for a received request and with [`Key::client`] for a request
/// we send and for the responses to it. Branch and sent-by are compared case-insensitively
/// (tokens and host names, RFC 3261 §7.3.1); the method is case-sensitive (§7.1).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    role: Role,
    branch: String,
    sent_by: String,
    method: Method,
}

fn checked_branch(branch: &str) -> Result<String, KeyError> {
    let has_cookie = branch
        .get(..MAGIC_COOKIE.len())
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(MAGIC_COOKIE));
    if has_cookie {
        Ok(branch.to_ascii_lowercase())
    } else {
        Err(KeyError::MissingMagicCookie)
    }
}

impl Key {
    /// Server transaction key for a received request (RFC 3261 §17.2.3): the top Via `branch`,
    /// the top Via `sent_by` (`host[:port]` as it appears in the Via), and the request method,
    /// where ACK is folded onto INVITE so that an ACK for a non-2xx final finds its INVITE
    /// transaction. CANCEL keeps its own method and so is its own transaction.
    pub fn server(branch: &str, sent_by: &str, method: &Method) -> Result<Key, KeyError> {
        let branch = checked_branch(branch)?;
        let sent_by = sent_by.trim();
        if sent_by.is_empty() {
            return Err(KeyError::EmptySentBy);
        }
        let method = match method {
            Method::Ack => Method::Invite,
            other => other.clone(),
        };
        Ok(Key {
            role: Role::Server,
            branch,
            sent_by: sent_by.to_ascii_lowercase(),
            method,
        })
    }

    /// Client transaction key (RFC 3261 §17.1.3): the branch of the top Via we put in the request,
    /// and the method — for a response, the method of its CSeq header. A 487 to an INVITE and the
    /// 200 to its CANCEL share the branch but not the CSeq method, so they match different
    /// transactions.
    pub fn client(branch: &str, method: &Method) -> Result<Key, KeyError> {
        if *method == Method::Ack {
            return Err(KeyError::AckHasNoClientTransaction);
        }
        Ok(Key {
            role: Role::Client,
            branch: checked_branch(branch)?,
            sent_by: String::new(),
            method: method.clone(),
        })
    }

    /// Client or server.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The branch, lower-cased.
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// The sent-by, lower-cased; empty for client keys.
    pub fn sent_by(&self) -> &str {
        &self.sent_by
    }

    /// The transaction's method: INVITE for an INVITE server transaction matched by an ACK.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// For the server key of a received CANCEL: the key of the INVITE server transaction it
    /// cancels (RFC 3261 §9.2: same matching as §17.2.3 but with method INVITE). `None` for
    /// any other key.
    pub fn cancelled_invite(&self) -> Option<Key> {
        (self.role == Role::Server && self.method == Method::Cancel).then(|| Key {
            method: Method::Invite,
            ..self.clone()
        })
    }

    /// For the key of an INVITE client transaction: the client key of the CANCEL that cancels
    /// it, which reuses the INVITE's branch (RFC 3261 §9.1). `None` for any other key.
    pub fn cancel(&self) -> Option<Key> {
        (self.role == Role::Client && self.method == Method::Invite).then(|| Key {
            method: Method::Cancel,
            ..self.clone()
        })
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.role {
            Role::Client => write!(f, "client {} {}", self.method, self.branch),
            Role::Server => write!(f, "server {} {} {}", self.method, self.branch, self.sent_by),
        }
    }
}
