//! What a REGISTER does to its AOR's bindings, decided once for every backend: a pure
//! function from the bindings the AOR holds to the ones it holds after, with no database in
//! sight. SQLite runs it inside its transaction, Redis between `WATCH` and `EXEC`; both only
//! read the AOR's bindings before and write what [`plan`] decided after, so the replacement
//! rules of [`super::Store::apply`] cannot drift apart between them.

use std::cmp::Ordering;

use super::{uri, Binding, BindingId, Change, ContactSpec, Register, StoreError};

/// Where a binding of the plan is, or will be, stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Slot {
    /// Stored already, under this id.
    Stored(BindingId),
    /// Made by this REGISTER (the n-th new one): the backend gives it an id when it writes
    /// it. New bindings sort after stored ones, in the order made, as ids are handed out.
    New(usize),
}

/// One binding of the AOR after the REGISTER.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub slot: Slot,
    /// The binding; for a [`Slot::New`] one, `id` is a placeholder until the backend writes it.
    pub binding: Binding,
    /// Written by this REGISTER: to store, and exempt from its own out-of-order check.
    pub written: bool,
}

/// What a REGISTER does: the stored bindings it removes, and the AOR's bindings after it
/// (expired ones not removed included), in slot order.
#[derive(Debug)]
pub(super) struct Plan {
    pub removed: Vec<BindingId>,
    pub entries: Vec<Entry>,
}

/// The latest expiry a binding may have, in unix seconds: what every backend holds exactly
/// (Redis scores are doubles, exact up to 2^53; SQLite integers are signed).
const LATEST: u64 = (1 << 53) - 1;

/// Checks a REGISTER before anything is read.
pub(super) fn validate(aor: &str, register: &Register) -> Result<(), StoreError> {
    let invalid = |m: &str| Err(StoreError::Invalid(m.to_owned()));
    if aor.is_empty() {
        return invalid("empty AOR");
    }
    if register.call_id.is_empty() {
        return invalid("empty Call-ID");
    }
    if register.changes.len() > 1 && register.changes.contains(&Change::RemoveAll) {
        return invalid("Contact: * must be the only Contact (RFC 3261 §10.3 step 6)");
    }
    for change in &register.changes {
        let spec = match change {
            Change::Upsert { expires_at, .. } if *expires_at > LATEST => {
                return invalid("expiry beyond what the store can hold");
            }
            Change::Upsert { contact, .. } | Change::Remove(contact) => contact,
            Change::RemoveAll => continue,
        };
        if spec.contact.is_empty() {
            return invalid("empty Contact URI");
        }
        if spec.q.is_some_and(|q| q > 1000) {
            return invalid("q above 1000 thousandths");
        }
        if spec
            .push
            .as_ref()
            .is_some_and(|p| p.prid.is_empty() || p.provider.is_empty())
        {
            return invalid("empty pn-provider or pn-prid");
        }
    }
    Ok(())
}

/// Applies `register` to `stored`, every binding `aor` holds now (expired ones too), by the
/// rules of [`super::Store::apply`]. Fails, deciding nothing, on an out-of-order REGISTER
/// or one that leaves the AOR more than `max_bindings` unexpired bindings.
pub(super) fn plan(
    aor: &str,
    register: &Register,
    now: u64,
    mut stored: Vec<Binding>,
) -> Result<Plan, StoreError> {
    validate(aor, register)?;
    stored.sort_by_key(|b| b.id);
    let mut entries: Vec<Entry> = stored
        .into_iter()
        .map(|binding| Entry {
            slot: Slot::Stored(binding.id),
            binding,
            written: false,
        })
        .collect();
    let mut removed = Vec::new();
    let mut made = 0;
    let mut remove = |entries: &mut Vec<Entry>, index: usize| {
        if let Slot::Stored(id) = entries.remove(index).slot {
            removed.push(id);
        }
    };
    for change in &register.changes {
        match change {
            Change::RemoveAll => {
                for entry in &entries {
                    check_order(entry, register, now)?;
                }
                while !entries.is_empty() {
                    remove(&mut entries, 0);
                }
            }
            Change::Remove(spec) => {
                if let Some(index) = find_match(&entries, spec) {
                    check_order(&entries[index], register, now)?;
                    remove(&mut entries, index);
                }
            }
            Change::Upsert {
                contact,
                expires_at,
            } => {
                let found = find_match(&entries, contact);
                if let Some(index) = found {
                    check_order(&entries[index], register, now)?;
                }
                if *expires_at <= now {
                    if let Some(index) = found {
                        remove(&mut entries, index);
                    }
                    continue;
                }
                let slot = found.map(|i| entries[i].slot);
                // Other bindings holding the same push token are stale copies of this phone.
                while let Some(index) = entries
                    .iter()
                    .position(|e| Some(e.slot) != slot && same_token(&e.binding, contact))
                {
                    remove(&mut entries, index);
                }
                let binding = Binding {
                    id: match slot {
                        Some(Slot::Stored(id)) => id,
                        _ => BindingId(0),
                    },
                    aor: aor.to_owned(),
                    contact: contact.contact.clone(),
                    instance: contact.instance.clone(),
                    reg_id: contact.reg_id,
                    push: contact.push.clone(),
                    pnsreg: contact.pnsreg,
                    q: contact.q,
                    call_id: register.call_id.clone(),
                    cseq: register.cseq,
                    expires_at: *expires_at,
                    updated_at: now,
                    path: contact.path.clone(),
                };
                match slot.and_then(|s| entries.iter_mut().find(|e| e.slot == s)) {
                    Some(entry) => {
                        entry.binding = binding;
                        entry.written = true;
                    }
                    None => {
                        entries.push(Entry {
                            slot: Slot::New(made),
                            binding,
                            written: true,
                        });
                        made += 1;
                    }
                }
            }
        }
    }
    let live = entries
        .iter()
        .filter(|e| e.binding.expires_at > now)
        .count();
    if live > register.max_bindings {
        return Err(StoreError::TooManyBindings {
            aor: aor.to_owned(),
            max: register.max_bindings,
        });
    }
    Ok(Plan { removed, entries })
}

impl Plan {
    /// The AOR's unexpired bindings after the REGISTER, ordered by id, once the backend has
    /// given every new binding its id (`id_of`).
    pub(super) fn bindings(&self, now: u64) -> Vec<Binding> {
        let mut live: Vec<Binding> = self
            .entries
            .iter()
            .filter(|e| e.binding.expires_at > now)
            .map(|e| e.binding.clone())
            .collect();
        live.sort_by(|a, b| a.id.cmp(&b.id).then(Ordering::Equal));
        live
    }
}

/// RFC 3261 §10.3 step 7. An expired binding no longer exists as far as the RFC is
/// concerned, and one this request already wrote is not out of order with it.
fn check_order(entry: &Entry, register: &Register, now: u64) -> Result<(), StoreError> {
    let b = &entry.binding;
    if b.expires_at > now
        && !entry.written
        && b.call_id == register.call_id
        && b.cseq >= register.cseq
    {
        return Err(StoreError::OutOfOrder {
            id: b.id,
            call_id: b.call_id.clone(),
            stored_cseq: b.cseq,
            cseq: register.cseq,
        });
    }
    Ok(())
}

/// The binding that `spec` replaces, by the first rule of [`super::Store::apply`] that
/// finds one.
fn find_match(entries: &[Entry], spec: &ContactSpec) -> Option<usize> {
    if let Some(instance) = &spec.instance {
        let found = entries.iter().position(|e| {
            e.binding.instance.as_ref() == Some(instance) && e.binding.reg_id == spec.reg_id
        });
        if found.is_some() {
            return found;
        }
    }
    if spec.push.is_some() {
        let found = entries.iter().position(|e| same_token(&e.binding, spec));
        if found.is_some() {
            return found;
        }
    }
    let key = uri::contact_key(&spec.contact);
    entries.iter().position(|e| {
        let b = &e.binding;
        uri::contact_key(&b.contact) == key
            && (b.instance.is_none() || spec.instance.is_none() || b.instance == spec.instance)
    })
}

/// Whether `binding` holds the push token (provider, prid and param) of `spec`.
fn same_token(binding: &Binding, spec: &ContactSpec) -> bool {
    spec.push.is_some() && binding.push == spec.push
}
