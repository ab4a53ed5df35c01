//! Per-client user consent (confused-deputy protection): a signed-in user approves each
//! (client, resource, scope set) once; the approval is remembered in the store.

use super::{hash_secret, split_scope, RegisteredClient};
use crate::flows::authorize::AuthorizeGrant;
use crate::store::Store;

/// Whether `approved` (a stored space-separated scope set) covers every scope in `requested`.
pub fn covers(approved: &str, requested: &str) -> bool {
    let approved = split_scope(approved);
    split_scope(requested).iter().all(|s| approved.contains(s))
}

/// The union of two scope sets, in first-seen order.
pub fn merge(approved: &str, requested: &str) -> String {
    let mut out = split_scope(approved);
    for s in split_scope(requested) {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out.join(" ")
}

/// Whether `email` must approve `client` before a code is issued for `grant`.
pub fn required(
    store: &dyn Store,
    client: &RegisteredClient,
    grant: &AuthorizeGrant,
    email: &str,
) -> anyhow::Result<bool> {
    // Only the operator can waive consent, and only for clients it registered itself.
    if client.pre_registered && client.skip_consent {
        return Ok(false);
    }
    Ok(
        match store.consent(email, &grant.client_id, &grant.resource)? {
            Some(approved) => !covers(&approved, &grant.scope),
            None => true,
        },
    )
}

/// Records an approval, widening any earlier approval for the same client and resource.
pub fn remember(
    store: &dyn Store,
    grant: &AuthorizeGrant,
    email: &str,
    now: i64,
) -> anyhow::Result<()> {
    let previous = store
        .consent(email, &grant.client_id, &grant.resource)?
        .unwrap_or_default();
    Ok(store.record_consent(
        email,
        &grant.client_id,
        &grant.resource,
        &merge(&previous, &grant.scope),
        now,
    )?)
}

/// The CSRF token of a consent form: bound to the pending flow (its secret) and to the
/// browser's sign-in session (the session cookie), so neither alone can forge it.
pub fn csrf_token(flow_secret: &str, session_secret: &str) -> String {
    hash_secret(&format!("consent\n{flow_secret}\n{session_secret}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_sets() {
        assert!(covers("a b", "b"));
        assert!(covers("a b", ""));
        assert!(!covers("a", "a b"));
        assert!(!covers("", "a"));
        assert_eq!(merge("a b", "c a"), "a b c");
        assert_eq!(merge("", "x"), "x");
        assert_ne!(csrf_token("f", "s1"), csrf_token("f", "s2"));
        assert_ne!(csrf_token("f1", "s"), csrf_token("f2", "s"));
    }
}
