//! Deprovisioning at the organisation's identity provider (issue 18): each of its users who
//! holds something live here is checked again there at most every
//! `identity_provider.oidc.recheck_seconds`, by a background task on every replica.
//!
//! A round leases one due user at a time in the store (so two replicas never check, and so
//! never refresh, the same user at once), reads the user back under the lease, and asks the
//! provider (`OidcProvider::recheck`). Then:
//! * vouched for: the claims (groups, name, email) and the tokens (a rotated refresh token)
//!   are written back under the lease, and the next TE carries the new claims;
//! * refused (`invalid_grant`, userinfo `401`, nothing left to check with): `revoke_user`
//!   ends every grant, code, session and app session, and the feed gets the user;
//! * no answer (unreachable, a server error, an answer failing a check): nothing is revoked,
//!   the failure is logged and counted, and the user is tried again at a later round. An
//!   unreachable provider ends the round: the other users would only wait out timeouts too.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::oidc::claims::IdpUser;
use crate::oidc::error::IdpError;
use crate::oidc::OidcProvider;
use crate::state::AppState;
use crate::store::{self, GrantFilter, IdpUserRecord, Store};

/// Between rounds.
pub const ROUND_EVERY: Duration = Duration::from_secs(30);
/// Users one round checks at most (a backlog goes on at the next round).
pub const USERS_PER_ROUND: usize = 100;
/// How long a replica holds a user it checks: well past the provider's timeouts for the few
/// requests of one check, so the lease never runs out under a check in progress.
const LEASE_SECONDS: i64 = 120;
/// A user whose check got no answer is tried again this much later (at a later round).
pub const RETRY_SECONDS: i64 = 30;

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundOutcome {
    pub checked: u64,
    pub revoked: u64,
    pub failed: u64,
}

enum Checked {
    Vouched,
    Revoked,
    Failed { unreachable: bool },
}

/// One round as `holder` (this replica's name): checks the users due now, up to
/// `USERS_PER_ROUND`. Nothing to do without an identity provider.
pub async fn round(state: &AppState, holder: &str) -> anyhow::Result<RoundOutcome> {
    let (Some(provider), Some(oidc)) = (state.oidc(), &state.config().identity_provider.oidc)
    else {
        return Ok(RoundOutcome::default());
    };
    let every = oidc.recheck_every();
    let mut out = RoundOutcome::default();
    for _ in 0..USERS_PER_ROUND {
        let now = state.now();
        let h = holder.to_owned();
        let leased = in_store(state, move |st| {
            st.lease_idp_check(&h, now - every, now, now + LEASE_SECONDS)
        })
        .await?;
        let Some(record) = leased else {
            break;
        };
        match check(state, provider, holder, record).await? {
            Checked::Vouched => out.checked += 1,
            Checked::Revoked => out.revoked += 1,
            Checked::Failed { unreachable } => {
                out.failed += 1;
                if unreachable {
                    break;
                }
            }
        }
    }
    Ok(out)
}

async fn check(
    state: &AppState,
    provider: &OidcProvider,
    holder: &str,
    record: IdpUserRecord,
) -> anyhow::Result<Checked> {
    let known = IdpUser {
        key: record.key.clone(),
        email: record.email.clone(),
        name: record.name.clone(),
        groups: record.groups.clone(),
    };
    let tokens = state.vault().open_idp_tokens(&record);
    let answer = provider.recheck(&known, &tokens, state.now()).await;
    // Sealed now: a refresh may have rotated the refresh token, whatever the check came to.
    let (refresh_token, access_token) =
        state.vault().seal_idp_tokens(&record.key, &answer.tokens)?;
    let counters = state.recheck_counters();
    let now = state.now();
    let holder = holder.to_owned();
    match answer.user {
        Ok(user) => {
            if user != known {
                tracing::info!(sub = %user.key, "the identity provider changed the user's claims");
            }
            let checked = IdpUserRecord {
                key: record.key,
                email: user.email,
                name: user.name,
                groups: user.groups,
                updated_at: now,
                refresh_token,
                access_token,
                checked_at: now,
            };
            let sub = checked.key.clone();
            let written = in_store(state, move |st| st.finish_idp_check(&holder, &checked)).await?;
            if !written {
                // Only when a check outlived its lease: the other replica's result stands.
                tracing::warn!(sub = %sub, "another replica took over the user's check; this result is dropped");
            }
            counters.checked.fetch_add(1, Ordering::Relaxed);
            Ok(Checked::Vouched)
        }
        Err(refusal @ (IdpError::Refused(_) | IdpError::Claims(_))) => {
            let feed_until = state.config().revocation_expires_at(now);
            let key = record.key.clone();
            let ended = in_store(state, move |st| {
                let ended = st.revoke_user(&key, &GrantFilter::default(), now, feed_until)?;
                // The tokens are worthless now; the next sign-in brings new ones.
                let done = IdpUserRecord {
                    refresh_token: None,
                    access_token: None,
                    checked_at: now,
                    ..record
                };
                st.finish_idp_check(&holder, &done)?;
                Ok(ended)
            })
            .await?;
            tracing::info!(
                sub = %known.key,
                reason = %refusal,
                grants = ended.grant_ids.len(),
                sessions = ended.sessions,
                app_sessions = ended.app_sessions,
                "the identity provider no longer vouches for the user: access ended"
            );
            counters.revoked.fetch_add(1, Ordering::Relaxed);
            Ok(Checked::Revoked)
        }
        Err(e) => {
            let unreachable = matches!(e, IdpError::Unavailable(_));
            tracing::warn!(
                sub = %known.key,
                error = %e,
                "checking the user at the identity provider failed; trying again at a later round"
            );
            counters.failed.fetch_add(1, Ordering::Relaxed);
            let deferred = IdpUserRecord {
                refresh_token,
                access_token,
                ..record
            };
            in_store(state, move |st| {
                st.defer_idp_check(&holder, &deferred, now + RETRY_SECONDS)
            })
            .await?;
            Ok(Checked::Failed { unreachable })
        }
    }
}

/// Store work on the blocking pool.
async fn in_store<T, F>(state: &AppState, f: F) -> anyhow::Result<T>
where
    F: FnOnce(&dyn Store) -> store::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let st = state.store().clone();
    Ok(tokio::task::spawn_blocking(move || f(&*st)).await??)
}
