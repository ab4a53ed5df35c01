//! `Mcp-Session-Id` unwrapping (`session::inbound`, `SessionKey::unwrap` / `wrap`).
//!
//! The decision is `None` for no header, `Repeated` for several, and for one header
//! `Upstream(id)` exactly when it unwraps, `Unknown` otherwise. A session id that unwraps
//! re-wraps to the very same bytes for the same (route, subject), and opens for no other
//! route, subject or key. Every upstream id of at most `MAX_UPSTREAM_ID_BYTES` wraps into
//! visible ASCII that unwraps back to it, and any one-bit change of a wrapped id is refused.
//!
//! Input: the route line, the subject line, then the presented header values, one a line
//! (each also tried as an upstream id).

use warden_core::session::{inbound, Inbound, SessionKey, MAX_UPSTREAM_ID_BYTES};

use crate::fixtures::session_key;
use crate::input::{flip_bit, join, Fields};

/// What `run` can decide (`session::Inbound`).
pub const OUTCOMES: &[&str] = &["none", "upstream", "unknown", "repeated"];

pub fn run(data: &[u8]) -> &'static str {
    let mut f = Fields::new(data);
    let route = f.text().into_owned();
    let subject = f.text().into_owned();
    let presented = f.lines();
    let key = session_key();
    let decision = inbound(&key, &route, &subject, &presented);
    match (presented.as_slice(), &decision) {
        ([], Inbound::None) => {}
        ([one], Inbound::Upstream(id)) => opens_only_for_its_owner(&key, &route, &subject, one, id),
        ([one], Inbound::Unknown) => assert_eq!(key.unwrap(&route, &subject, one), None),
        (many, Inbound::Repeated) if many.len() > 1 => {}
        (p, d) => panic!("{} session ids decided {d:?}", p.len()),
    }
    for id in &presented {
        wraps_and_unwraps(&key, &route, &subject, id);
    }
    match decision {
        Inbound::None => "none",
        Inbound::Upstream(_) => "upstream",
        Inbound::Unknown => "unknown",
        Inbound::Repeated => "repeated",
    }
}

fn opens_only_for_its_owner(
    key: &SessionKey,
    route: &str,
    subject: &str,
    presented: &[u8],
    id: &[u8],
) {
    assert_eq!(
        key.wrap(route, subject, id).as_deref().map(str::as_bytes),
        Some(presented),
        "an id that unwraps re-wraps to itself"
    );
    assert_eq!(key.unwrap(&format!("{route}x"), subject, presented), None);
    assert_eq!(key.unwrap(route, &format!("{subject}x"), presented), None);
    assert_eq!(
        SessionKey::from_random([4; 32]).unwrap(route, subject, presented),
        None
    );
}

fn wraps_and_unwraps(key: &SessionKey, route: &str, subject: &str, id: &[u8]) {
    let Some(wrapped) = key.wrap(route, subject, id) else {
        assert!(id.len() > MAX_UPSTREAM_ID_BYTES, "a short id did not wrap");
        return;
    };
    assert!(id.len() <= MAX_UPSTREAM_ID_BYTES);
    assert!(wrapped.bytes().all(|b| b.is_ascii_graphic()), "{wrapped:?}");
    assert_eq!(
        key.unwrap(route, subject, wrapped.as_bytes()).as_deref(),
        Some(id)
    );
    assert_eq!(
        inbound(key, route, subject, &[wrapped.as_bytes()]),
        Inbound::Upstream(id.to_vec())
    );
    // A few one-bit changes, spread over the id and the tag.
    let bits = wrapped.len() as u64 * 8;
    for n in [0, 17, bits / 2 + 3, bits - 1, id.len() as u64 * 13 + 5] {
        let mut changed = wrapped.clone().into_bytes();
        flip_bit(&mut changed, n);
        assert_eq!(
            key.unwrap(route, subject, &changed),
            None,
            "bit {n} of {wrapped:?} changed and still opened"
        );
    }
}

/// Wrapped ids of the unit tests' routes and users, a raw upstream id, a swapped wrapper,
/// junk, and the longest id.
pub fn seeds() -> Vec<Vec<u8>> {
    let key = session_key();
    let wrapped = key.wrap("demo", "alice", b"3f2a-upstream").unwrap();
    let other = key.wrap("demo", "bob", b"id-2").unwrap();
    let longest = key
        .wrap("demo", "alice", &[b'x'; MAX_UPSTREAM_ID_BYTES])
        .unwrap();
    let swapped = format!(
        "{}.{}",
        other.rsplit_once('.').unwrap().0,
        wrapped.rsplit_once('.').unwrap().1
    );
    let seed = |route: &str, subject: &str, ids: &[&str]| {
        let mut fields = vec![route.as_bytes(), subject.as_bytes()];
        fields.extend(ids.iter().map(|s| s.as_bytes()));
        join(&fields)
    };
    vec![
        seed("demo", "alice", &[&wrapped]),
        seed("demo", "bob", &[&wrapped]),
        seed("other", "alice", &[&wrapped]),
        seed("demo", "alice", &[&wrapped, &wrapped]),
        seed("demo", "alice", &[]),
        seed("demo", "alice", &["3f2a-upstream"]),
        seed("demo", "alice", &[&swapped]),
        seed("demo", "alice", &["w1..", "w1.!!!.???"]),
        seed("demo", "alice", &[&longest]),
        seed("demo", "demo@example.com", &["w1.MTIz.AAAA"]),
    ]
}
