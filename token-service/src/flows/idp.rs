//! Signing in at the organisation's identity provider for a pending flow, in two steps each
//! side of the provider: `start` checks the flow and draws this sign-in's secrets, and after
//! the provider's authorization URL is known, `started` stores them; `callback` checks the
//! provider's answer, and after the code exchange, `signed_in_at_provider` records the
//! user's claims and continues the flow as after a password.

use super::authorize::Params;
use super::browser::{
    check_binding, pending_full, settle, settle_step, Answer, Browser, Cookies, Halt, Outcome,
    Refusal, Step,
};
use super::{hash_secret, pkce, random_token, sign_in};
use crate::oidc::claims::IdpUser;
use crate::oidc::error::IdpError;
use crate::oidc::tokens::IdpTokens;
use crate::store::{IdpLogin, IdpUserRecord, PendingFlow};

/// A sign-in at the identity provider must come back within this long.
pub const IDP_LOGIN_TTL: i64 = 600;

/// A sign-in at the provider about to begin: a fresh `state`, `nonce` and PKCE verifier for
/// a pending flow of this browser.
pub struct IdpBegin {
    flow: PendingFlow,
    pub state: String,
    pub nonce: String,
    verifier: String,
}

impl IdpBegin {
    /// The PKCE challenge the provider's authorization URL carries.
    pub fn code_challenge(&self) -> String {
        pkce::s256_challenge(&self.verifier)
    }
}

/// `GET /login/idp?flow=`: the flow must still wait for a sign-in in this browser.
pub fn start(b: &Browser<'_>, query: &Params, cookies: Cookies) -> anyhow::Result<Step<IdpBegin>> {
    settle_step(check_start(b, query, cookies).map(Step::Next))
}

fn check_start(b: &Browser<'_>, query: &Params, cookies: Cookies) -> Result<IdpBegin, Halt> {
    let flow_id = query.get("flow").ok_or(Refusal::Expired)?;
    let flow = b.store.flow(flow_id, b.now)?.ok_or(Refusal::Expired)?;
    if flow.user.is_some() {
        // Past sign-in, waiting for consent.
        return Err(Refusal::Expired.into());
    }
    check_binding(&flow.browser, cookies.binding.as_deref())?;
    Ok(IdpBegin {
        flow,
        state: random_token(),
        nonce: random_token(),
        verifier: random_token(),
    })
}

/// The provider's authorization URL for `begin` is known (or the provider is unavailable):
/// store the sign-in, bound to the browser, then off to the provider.
pub fn started(
    b: &Browser<'_>,
    begin: IdpBegin,
    provider: &str,
    authorization_url: Result<String, IdpError>,
) -> anyhow::Result<Answer> {
    settle(store_login(b, begin, provider, authorization_url))
}

fn store_login(
    b: &Browser<'_>,
    begin: IdpBegin,
    provider: &str,
    authorization_url: Result<String, IdpError>,
) -> Result<Answer, Halt> {
    let url = authorization_url.map_err(|e| {
        tracing::warn!(error = %e, "identity provider unavailable");
        failed(provider, e)
    })?;
    let IdpBegin {
        flow,
        state,
        nonce,
        verifier,
    } = begin;
    let login = IdpLogin {
        flow_id: flow.id.clone(),
        browser: flow.browser.clone(),
        nonce,
        pkce_verifier: b.vault.seal_login_verifier(&flow.id, &verifier)?,
        expires_at: flow.expires_at.min(b.now + IDP_LOGIN_TTL),
    };
    // Each start stores a sign-in of its own: a pending record like a flow.
    if !b
        .store
        .insert_idp_login(&hash_secret(&state), &login, b.pending)?
    {
        return Err(pending_full().into());
    }
    Ok(Answer::new(Outcome::IdpAuthorize(url)))
}

fn failed(provider: &str, error: IdpError) -> Refusal {
    Refusal::IdpFailed {
        provider: provider.to_owned(),
        error,
    }
}

/// The provider's answer, checked: its code is to be exchanged for the user.
pub struct IdpAnswer {
    login: IdpLogin,
    pub code: String,
    pub verifier: String,
}

impl IdpAnswer {
    /// The nonce the ID token must carry.
    pub fn nonce(&self) -> &str {
        &self.login.nonce
    }
}

/// The provider sends the browser back (`{issuer}/login/callback?state=&code=`): the sign-in
/// `state` names is taken (single use) and must belong to this browser.
pub fn callback(
    b: &Browser<'_>,
    query: &Params,
    cookies: Cookies,
    provider: &str,
) -> anyhow::Result<Step<IdpAnswer>> {
    settle_step(check_callback(b, query, cookies, provider).map(Step::Next))
}

fn check_callback(
    b: &Browser<'_>,
    query: &Params,
    cookies: Cookies,
    provider: &str,
) -> Result<IdpAnswer, Halt> {
    let state = query.get("state").ok_or(Refusal::IdpUnknown)?;
    let login = b
        .store
        .take_idp_login(&hash_secret(state), b.now)?
        .ok_or(Refusal::IdpUnknown)?;
    check_binding(&login.browser, cookies.binding.as_deref())?;
    if let Some(e) = query.get("error") {
        // The provider's own words are not shown beyond a short error code.
        let code: String = e
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        tracing::info!(error = %code, "identity provider sign-in refused");
        let provider = provider.to_owned();
        return Err(if code == "access_denied" {
            Refusal::IdpDeclined { provider }
        } else {
            Refusal::IdpError { provider, code }
        }
        .into());
    }
    let Some(code) = query.get("code") else {
        return Err(Refusal::IdpNoCode {
            provider: provider.to_owned(),
        }
        .into());
    };
    let verifier = b
        .vault
        .open_login_verifier(&login.flow_id, &login.pkce_verifier)
        .ok_or(Refusal::IdpUnknown)?;
    Ok(IdpAnswer {
        login,
        code: code.to_owned(),
        verifier,
    })
}

/// The code exchange's result: record the user's claims and the provider's tokens (sealed, to
/// check the user again with), then continue the pending flow (single use, like the password
/// form).
pub fn signed_in_at_provider(
    b: &Browser<'_>,
    answer: IdpAnswer,
    provider: &str,
    user: Result<(IdpUser, IdpTokens), IdpError>,
) -> anyhow::Result<Answer> {
    settle(record_user(b, answer, provider, user))
}

fn record_user(
    b: &Browser<'_>,
    answer: IdpAnswer,
    provider: &str,
    user: Result<(IdpUser, IdpTokens), IdpError>,
) -> Result<Answer, Halt> {
    let (user, tokens) = user.map_err(|e| {
        tracing::warn!(error = %e, "identity provider sign-in failed");
        failed(provider, e)
    })?;
    let flow = b
        .store
        .flow(&answer.login.flow_id, b.now)?
        .ok_or(Refusal::Expired)?;
    // A flow past sign-in does not sign in again.
    if flow.user.is_some() || !b.store.delete_flow(&flow.id)? {
        return Err(Refusal::Expired.into());
    }
    let (refresh_token, access_token) = b.vault.seal_idp_tokens(&user.key, &tokens)?;
    // The sign-in is the provider vouching for the user: the next check is due from now.
    b.store.put_idp_user(&IdpUserRecord {
        key: user.key.clone(),
        email: user.email,
        name: user.name,
        groups: user.groups,
        updated_at: b.now,
        refresh_token,
        access_token,
        checked_at: b.now,
    })?;
    sign_in::signed_in(b, flow, &user.key)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use crate::flows::browser::testing::*;
    use crate::flows::browser::{binding, SetCookie};
    use crate::flows::sign_in;
    use crate::store::SignIns;

    const SSO: &str = "Example SSO";

    fn with_idp(max_pending: u64) -> Service {
        Service::with(&Setup {
            oidc: true,
            max_pending,
            ..Setup::default()
        })
    }

    /// A pending flow of this browser, waiting at the sign-in page.
    fn pending(svc: &Service, bind: &str) -> String {
        let q = sign_in::tests::request("cli", &[]);
        match sign_in::authorize(&svc.browser(), &q, cookies(bind, None))
            .unwrap()
            .outcome
        {
            Outcome::SignInPage(p) => p.flow_id,
            other => panic!("expected the sign-in page, got {other:?}"),
        }
    }

    fn begin(svc: &Service, flow_id: &str, bind: &str) -> Step<IdpBegin> {
        start(
            &svc.browser(),
            &params(&[("flow", flow_id)]),
            cookies(bind, None),
        )
        .unwrap()
    }

    fn refusal<T>(step: Step<T>) -> Refusal {
        match step {
            Step::Answer(Answer {
                outcome: Outcome::Refused(r),
                ..
            }) => r,
            Step::Answer(a) => panic!("expected a refusal, got {:?}", a.outcome),
            Step::Next(_) => panic!("expected a refusal"),
        }
    }

    /// A sign-in at the provider under way for this browser: its `state`.
    fn under_way(svc: &Service, bind: &str) -> String {
        let flow_id = pending(svc, bind);
        let Step::Next(begin) = begin(svc, &flow_id, bind) else {
            panic!("expected a start");
        };
        let state = begin.state.clone();
        let url = Ok("https://sso.example/authorize?x".to_owned());
        let a = started(&svc.browser(), begin, SSO, url).unwrap();
        assert!(
            matches!(a.outcome, Outcome::IdpAuthorize(u) if u == "https://sso.example/authorize?x")
        );
        state
    }

    #[test]
    fn a_start_needs_a_pending_flow_of_this_browser_and_room_to_store() {
        let svc = with_idp(10);
        let bind = binding(None);
        assert_eq!(refusal(begin(&svc, "unknown", &bind)), Refusal::Expired);
        let flow_id = pending(&svc, &bind);
        assert_eq!(
            refusal(begin(&svc, &flow_id, &binding(None))),
            Refusal::OtherBrowser
        );
        let Step::Next(b) = begin(&svc, &flow_id, &bind) else {
            panic!("expected a start");
        };
        assert_eq!(b.code_challenge(), pkce::s256_challenge(&b.verifier));
        let down = Err(IdpError::Unavailable("timeout".into()));
        let a = started(&svc.browser(), b, SSO, down).unwrap();
        assert!(
            matches!(a.outcome, Outcome::Refused(Refusal::IdpFailed { provider, .. }) if provider == SSO)
        );
        // The flow itself fills the only pending slot: the sign-in cannot be stored.
        let full = with_idp(1);
        let flow_id = pending(&full, &bind);
        let Step::Next(b) = begin(&full, &flow_id, &bind) else {
            panic!("expected a start");
        };
        let a = started(&full.browser(), b, SSO, Ok("https://sso.example/".into())).unwrap();
        assert!(matches!(a.outcome, Outcome::Refused(Refusal::PendingFull)));
    }

    #[test]
    fn the_callback_is_checked_before_any_exchange() {
        let svc = with_idp(10);
        let bind = binding(None);
        let back = |q: &[(&str, &str)], bind: &str| {
            callback(&svc.browser(), &params(q), cookies(bind, None), SSO).unwrap()
        };
        assert_eq!(refusal(back(&[], &bind)), Refusal::IdpUnknown);
        assert_eq!(
            refusal(back(&[("state", "unknown"), ("code", "c")], &bind)),
            Refusal::IdpUnknown
        );
        let state = under_way(&svc, &bind);
        assert_eq!(
            refusal(back(&[("state", &state), ("code", "c")], &binding(None))),
            Refusal::OtherBrowser
        );
        // Single use: the state is gone now.
        assert_eq!(
            refusal(back(&[("state", &state), ("code", "c")], &bind)),
            Refusal::IdpUnknown
        );
        let state = under_way(&svc, &bind);
        assert_eq!(
            refusal(back(
                &[("state", &state), ("error", "access_denied")],
                &bind
            )),
            Refusal::IdpDeclined {
                provider: SSO.into()
            }
        );
        let state = under_way(&svc, &bind);
        assert_eq!(
            refusal(back(
                &[("state", &state), ("error", "server_error<script>")],
                &bind
            )),
            Refusal::IdpError {
                provider: SSO.into(),
                code: "server_errorscript".into()
            }
        );
        let state = under_way(&svc, &bind);
        assert_eq!(
            refusal(back(&[("state", &state)], &bind)),
            Refusal::IdpNoCode {
                provider: SSO.into()
            }
        );
    }

    fn exchange(svc: &Service, bind: &str) -> IdpAnswer {
        let state = under_way(svc, bind);
        let q = params(&[("state", &state), ("code", "the-code")]);
        match callback(&svc.browser(), &q, cookies(bind, None), SSO).unwrap() {
            Step::Next(a) => a,
            Step::Answer(a) => panic!("expected an exchange, got {:?}", a.outcome),
        }
    }

    fn carol() -> IdpUser {
        IdpUser {
            key: "http://127.0.0.1:9400#carol".into(),
            email: "carol@example.com".into(),
            name: "Carol".into(),
            groups: vec![],
        }
    }

    #[test]
    fn the_exchange_signs_the_user_in_once() {
        let svc = with_idp(10);
        let bind = binding(None);
        let answer = exchange(&svc, &bind);
        assert_eq!(answer.code, "the-code");
        assert_eq!(answer.nonce().len(), 43);
        let refused = Err(IdpError::Invalid("nonce mismatch".into()));
        let a = signed_in_at_provider(&svc.browser(), answer, SSO, refused).unwrap();
        assert!(matches!(
            a.outcome,
            Outcome::Refused(Refusal::IdpFailed {
                error: IdpError::Invalid(_),
                ..
            })
        ));

        let answer = exchange(&svc, &bind);
        let flow_id = answer.login.flow_id.clone();
        let a = signed_in_at_provider(
            &svc.browser(),
            answer,
            SSO,
            Ok((carol(), IdpTokens::default())),
        )
        .unwrap();
        assert!(matches!(a.cookies.as_slice(), [SetCookie::Session(_)]));
        assert!(matches!(&a.outcome, Outcome::ConsentPage(p) if p.email == "carol@example.com"));
        assert!(svc.store.flow(&flow_id, NOW).unwrap().is_none());
    }

    #[test]
    fn a_flow_signed_in_meanwhile_is_not_signed_in_again() {
        let svc = with_idp(10);
        let bind = binding(None);
        let first = exchange(&svc, &bind);
        // A second sign-in at the provider for the same flow, started before the first ended.
        let Step::Next(b) = begin(&svc, &first.login.flow_id, &bind) else {
            panic!("expected a start");
        };
        let state = b.state.clone();
        started(&svc.browser(), b, SSO, Ok("https://sso.example/".into())).unwrap();
        let q = params(&[("state", &state), ("code", "c2")]);
        let Step::Next(second) = callback(&svc.browser(), &q, cookies(&bind, None), SSO).unwrap()
        else {
            panic!("expected an exchange");
        };
        signed_in_at_provider(
            &svc.browser(),
            first,
            SSO,
            Ok((carol(), IdpTokens::default())),
        )
        .unwrap();
        let a = signed_in_at_provider(
            &svc.browser(),
            second,
            SSO,
            Ok((carol(), IdpTokens::default())),
        )
        .unwrap();
        assert!(a.cookies.is_empty());
        assert!(matches!(a.outcome, Outcome::Refused(Refusal::Expired)));
    }
}
