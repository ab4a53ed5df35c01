//! Ending access: the user's sign-out at the issuer and an administrator's revocation. Both
//! end grants (refresh-token families and codes not yet redeemed) in the store and put them
//! in the revocation feed, from which every filter refuses their TEs within seconds.

use anyhow::Context;

use super::hash_secret;
use crate::config::Config;
use crate::flows::app::SignOutKey;
use crate::identity;
use crate::store::{GrantFilter, Revoked, Store};

/// Where a sign-out leaves the issuer's sign-in session (the issuer's own, or after an
/// app's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignOut {
    /// The sign-in session ended (the browser forgets its cookie).
    SignedOut,
    /// A live session and no proof the user asked: the sign-out form, with its CSRF token.
    Confirm { csrf: String },
    /// No live session: nothing to end.
    NotSignedIn,
    /// The form did not come from our sign-out page (CSRF token, origin): nothing ends.
    NotConfirmed,
}

/// `GET {issuer}/sign-out` (and an app's sign-out without the filter's ticket): the form,
/// with a CSRF token bound to the browser's session, or "not signed in".
pub fn page(
    store: &dyn Store,
    key: &SignOutKey,
    session: Option<String>,
    now: i64,
) -> anyhow::Result<SignOut> {
    let live = match session {
        Some(secret) => store.session(&hash_secret(&secret), now)?.map(|_| secret),
        None => None,
    };
    Ok(match live {
        Some(secret) => SignOut::Confirm {
            csrf: key.csrf(&secret),
        },
        None => SignOut::NotSignedIn,
    })
}

/// `POST {issuer}/sign-out`, from our own page (CSRF token bound to the session cookie, same
/// origin): ends everything the signed-in user holds — every sign-in session, app session,
/// grant and code, in every browser and client.
pub fn confirmed(
    store: &dyn Store,
    key: &SignOutKey,
    csrf: &str,
    session: Option<String>,
    same_origin: bool,
    now: i64,
    feed_until: i64,
) -> anyhow::Result<SignOut> {
    let Some(secret) = asked(key, csrf, session, same_origin) else {
        return Ok(SignOut::NotConfirmed);
    };
    let Some(session) = store.session(&hash_secret(&secret), now)? else {
        return Ok(SignOut::NotSignedIn);
    };
    let ended = store.revoke_user(&session.user, &GrantFilter::default(), now, feed_until)?;
    tracing::info!(
        sub = %session.user,
        grants = ended.grant_ids.len(),
        sessions = ended.sessions,
        app_sessions = ended.app_sessions,
        codes = ended.codes,
        "signed out everywhere"
    );
    Ok(SignOut::SignedOut)
}

/// The session secret of a sign-out form the user sent: the CSRF token bound to its session
/// cookie, from our own origin. `None`: nothing proves the user asked.
pub(super) fn asked(
    key: &SignOutKey,
    csrf: &str,
    session: Option<String>,
    same_origin: bool,
) -> Option<String> {
    let valid = session.as_deref().is_some_and(|secret| {
        super::constant_time_eq(key.csrf(secret).as_bytes(), csrf.as_bytes())
    });
    session.filter(|_| valid && same_origin)
}

/// What an administrator asked to end (`warden-token-service revoke`).
#[derive(Debug, Clone, Default)]
pub struct Revocation {
    /// The user's key: the email of a local user, `{iss}#{sub}` for the identity provider's.
    pub user: String,
    pub client_id: Option<String>,
    /// A route's name; its grants are those for its MCP server URL.
    pub route: Option<String>,
}

/// Ends the grants `what` names (all of the user's, with their sessions, when it names no
/// client and no route).
pub fn revoke(
    config: &Config,
    store: &dyn Store,
    what: &Revocation,
    now: i64,
) -> anyhow::Result<Revoked> {
    anyhow::ensure!(!what.user.is_empty(), "--user must not be empty");
    let resource = match &what.route {
        None => None,
        Some(name) => {
            let route = config
                .route_by_name(name)
                .with_context(|| format!("--route {name}: no route of that name in the config"))?;
            anyhow::ensure!(
                route.server().is_some(),
                "--route {name}: not an MCP server route (grants are for servers)"
            );
            Some(route.resource())
        }
    };
    let filter = GrantFilter {
        client_id: what.client_id.clone(),
        resource,
    };
    let ended = store.revoke_user(&what.user, &filter, now, config.revocation_expires_at(now))?;
    tracing::info!(
        sub = %what.user,
        client_id = ?what.client_id,
        route = ?what.route,
        grants = ended.grant_ids.len(),
        sessions = ended.sessions,
        codes = ended.codes,
        "revoked by an administrator"
    );
    Ok(ended)
}

/// At start: users holding grants or sessions whom the config no longer names (a local user
/// removed from it, the users of a provider no longer configured) lose everything they hold,
/// into the revocation feed. Returns how many users that was.
pub fn end_removed_users(config: &Config, store: &dyn Store, now: i64) -> anyhow::Result<usize> {
    let removed: Vec<String> = store
        .users_with_live_grants(now)?
        .into_iter()
        .filter(|user| !identity::configured(config, user))
        .collect();
    for user in &removed {
        let ended = store.revoke_user(
            user,
            &GrantFilter::default(),
            now,
            config.revocation_expires_at(now),
        )?;
        tracing::info!(
            sub = %user,
            grants = ended.grant_ids.len(),
            sessions = ended.sessions,
            app_sessions = ended.app_sessions,
            "the config no longer names the user: access ended"
        );
    }
    Ok(removed.len())
}
