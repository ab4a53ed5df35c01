//! The browser side of `mcp: client` routes: an app's sign-in (`/app/sign-in`: the route's
//! policy, then a one-time app code back to the filter) and connecting an upstream account
//! for a server (`/mcp/connect`, then back to the app).

use super::app as flow;
use super::authorize::Params;
use super::browser::{
    begin_sign_in, pending_full, settle, user_exists, Answer, Browser, Cookies, Halt, Outcome,
    Refusal, SetCookie,
};
use super::hash_secret;
use super::sign_out;
pub use super::sign_out::SignOut;
use crate::config::RouteConfig;
use crate::identity;
use crate::store::{Continuation, Session, Store};

/// `GET /app/sign-in?route=&return_to=&nonce=`: the filter sends a browser without an app
/// session here.
pub fn sign_in(b: &Browser<'_>, query: &Params, cookies: Cookies) -> anyhow::Result<Answer> {
    settle(begin_app_sign_in(b, query, cookies))
}

fn begin_app_sign_in(b: &Browser<'_>, query: &Params, cookies: Cookies) -> Result<Answer, Halt> {
    let route = query
        .get("route")
        .and_then(|r| b.config.client_route(r))
        .ok_or(Refusal::UnknownApp)?;
    let return_to = query.get("return_to").unwrap_or("");
    if !flow::valid_return_to(route, return_to) {
        return Err(Refusal::ForeignReturnTo.into());
    }
    let nonce = query.get("nonce").unwrap_or("");
    if !flow::valid_nonce(nonce) {
        return Err(Refusal::IncompleteLink.into());
    }
    let next = Continuation::AppSignIn {
        route: route.name.clone(),
        return_to: return_to.to_owned(),
        nonce: nonce.to_owned(),
    };
    begin_or_continue(b, route, return_to, next, cookies)
}

/// `GET /mcp/connect?route=&redirect_url=`: connect the user's upstream account for a
/// server, then back to the app's page.
pub fn connect(b: &Browser<'_>, query: &Params, cookies: Cookies) -> anyhow::Result<Answer> {
    settle(begin_connect(b, query, cookies))
}

fn begin_connect(b: &Browser<'_>, query: &Params, cookies: Cookies) -> Result<Answer, Halt> {
    let redirect_url = query.get("redirect_url").unwrap_or("");
    // Never a redirect to anywhere else: this cannot become an open redirect.
    let Some(app) = flow::connect_redirect_route(b.config, redirect_url) else {
        tracing::info!("connect refused: redirect_url is not on an mcp: client route");
        return Err(Refusal::NotAnAppPage.into());
    };
    let route = query
        .get("route")
        .and_then(|r| b.config.server_routes().find(|x| x.name == r))
        .ok_or(Refusal::UnknownServer)?;
    let next = Continuation::Connect {
        route: route.name.clone(),
        redirect_url: redirect_url.to_owned(),
    };
    begin_or_continue(b, app, redirect_url, next, cookies)
}

/// With a live session at the issuer: continue at once. Otherwise a pending flow with the
/// continuation, and the sign-in page (or the identity provider).
fn begin_or_continue(
    b: &Browser<'_>,
    app: &RouteConfig,
    url: &str,
    next: Continuation,
    cookies: Cookies,
) -> Result<Answer, Halt> {
    let binding = super::browser::binding(cookies.binding);
    let bound = SetCookie::Binding(binding.clone());
    if let Some(secret) = cookies.session {
        if let Some(session) = b.store.session(&hash_secret(&secret), b.now)? {
            if user_exists(b, &session.user)? {
                let outcome = continue_signed_in(b, next, &session, &hash_secret(&binding))?;
                return Ok(Answer::new(outcome).set(bound));
            }
        }
    }
    let request = flow::stand_in_grant(app, url);
    let outcome = begin_sign_in(b, request, Some(next), &binding, &app.name)?;
    Ok(Answer::new(outcome).set(bound))
}

/// The user is signed in (session `session`, in the browser whose binding hashes to
/// `browser_hash`): finish the app sign-in or the connect.
pub(super) fn continue_signed_in(
    b: &Browser<'_>,
    next: Continuation,
    session: &Session,
    browser_hash: &str,
) -> Result<Outcome, Halt> {
    let config = b.config;
    let user = identity::resolve(config, b.store, &session.user)?.ok_or(Refusal::Expired)?;
    match next {
        Continuation::AppSignIn {
            route,
            return_to,
            nonce,
        } => {
            let app = config.client_route(&route).ok_or(Refusal::Expired)?;
            if !flow::app_allows(config, app, &user, &session.sid) {
                tracing::info!(route = %app.name, sub = %user.sub, "app sign-in refused by the route's policy");
                return Err(Refusal::AppDenied {
                    email: user.email,
                    app: app.name.clone(),
                }
                .into());
            }
            let url = flow::issue_code(b.store, app, session, &return_to, &nonce, b.now)?;
            tracing::info!(route = %app.name, sub = %user.sub, "app sign-in: code issued");
            Ok(Outcome::BackToApp(url))
        }
        Continuation::Connect {
            route,
            redirect_url,
        } => {
            let app = flow::connect_redirect_route(config, &redirect_url)
                .ok_or(Refusal::ReturnNotAllowed)?;
            let server = config
                .server_routes()
                .find(|r| r.name == route)
                .ok_or(Refusal::UnknownServer)?;
            let claims = flow::policy_claims(
                config,
                &user,
                &server.resource(),
                &flow::app_client_id(&app.name),
                &session.sid,
            );
            if !flow::route_allows(server, &claims, Some("initialize")) {
                return Err(Refusal::ServerDenied {
                    email: user.email,
                    server: server.name.clone(),
                }
                .into());
            }
            if !server.has_upstream_oauth()
                || b.vault.holds_usable(&session.user, &server.name, b.now)?
            {
                return Ok(Outcome::BackToApp(redirect_url));
            }
            if let Some(reason) = b.vault.upstream_unavailable(&server.name) {
                return Err(Refusal::UpstreamUnavailable {
                    server: server.name.clone(),
                    reason,
                }
                .into());
            }
            let url = b
                .vault
                .begin(
                    &server.name,
                    flow::stand_in_grant(app, &redirect_url),
                    &session.user,
                    &session.sid,
                    browser_hash,
                    b.pending,
                    Some(redirect_url.clone()),
                )?
                .ok_or_else(pending_full)?;
            tracing::info!(sub = %user.sub, route = %server.name, "connecting the upstream account for an app");
            Ok(Outcome::UpstreamConnect(url))
        }
    }
}

/// After an app's sign-out (the filter ended the app session). With the filter's `ticket`
/// (proof that the sign-out was asked for on the app's own page), the sign-in session ends
/// too, and every other app session of it; without one this is a page any site could send a
/// browser to, so it only asks.
pub fn signed_out(
    store: &dyn Store,
    key: &flow::SignOutKey,
    ticket: Option<&str>,
    session: Option<String>,
    now: i64,
    feed_until: i64,
) -> anyhow::Result<SignOut> {
    if let Some(sid) = ticket.and_then(|t| key.ticket_sid(t, now)) {
        if store.revoke_sid(&sid, now, feed_until)? {
            tracing::info!(sid = %sid, "signed out");
        }
        return Ok(SignOut::SignedOut);
    }
    sign_out::page(store, key, session, now)
}

/// The sign-out form: ends the sign-in session of the browser that shows the CSRF token
/// bound to its session cookie, posted from our own origin.
pub fn sign_out_confirmed(
    store: &dyn Store,
    key: &flow::SignOutKey,
    csrf: &str,
    session: Option<String>,
    same_origin: bool,
    now: i64,
    feed_until: i64,
) -> anyhow::Result<SignOut> {
    let Some(secret) = sign_out::asked(key, csrf, session, same_origin) else {
        return Ok(SignOut::NotConfirmed);
    };
    if let Some(sid) = store.revoke_session(&hash_secret(&secret), now, feed_until)? {
        tracing::info!(sid = %sid, "signed out");
    }
    Ok(SignOut::SignedOut)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use crate::flows::browser::testing::*;
    use crate::flows::browser::{binding, SignInPrompt, Step};
    use crate::flows::random_token;
    use crate::flows::sign_in::{login_begin, login_finish};
    use crate::store::Sessions;

    const NONCE: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const PAGE: &str = "https://app.example.com/ui/page";

    fn app_sign_in(extra: &[(&str, &str)]) -> Params {
        let mut p = vec![("route", "app"), ("return_to", PAGE), ("nonce", NONCE)];
        for (k, v) in extra {
            p.retain(|(pk, _)| pk != k);
            p.push((k, v));
        }
        params(&p)
    }

    fn connecting(route: &str, redirect_url: &str) -> Params {
        params(&[("route", route), ("redirect_url", redirect_url)])
    }

    fn refusal(a: Answer) -> Refusal {
        match a.outcome {
            Outcome::Refused(r) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn an_app_sign_in_is_checked_then_signs_in_or_goes_back_with_a_code() {
        let svc = Service::new();
        let b = svc.browser();
        let bind = binding(None);
        let go =
            |q: &Params, session: Option<&str>| sign_in(&b, q, cookies(&bind, session)).unwrap();
        assert_eq!(
            refusal(go(&app_sign_in(&[("route", "srv")]), None)),
            Refusal::UnknownApp
        );
        assert_eq!(
            refusal(go(
                &app_sign_in(&[("return_to", "https://evil.example/ui")]),
                None
            )),
            Refusal::ForeignReturnTo
        );
        assert_eq!(
            refusal(go(&app_sign_in(&[("nonce", "short")]), None)),
            Refusal::IncompleteLink
        );
        let a = go(&app_sign_in(&[]), None);
        assert_eq!(a.cookies, vec![SetCookie::Binding(bind.clone())]);
        assert!(matches!(&a.outcome, Outcome::SignInPage(p) if p.client_name == "app"));
        let alice = svc.session_of(EMAIL);
        let a = go(&app_sign_in(&[]), Some(&alice));
        assert!(matches!(&a.outcome, Outcome::BackToApp(u)
            if u.starts_with("https://app.example.com/.warden/app/callback?code=")));
        assert_eq!(a.cookies, vec![SetCookie::Binding(bind.clone())]);
        let bob = svc.session_of(BOB);
        let a = go(&app_sign_in(&[]), Some(&bob));
        assert!(a.cookies.is_empty());
        assert_eq!(
            refusal(a),
            Refusal::AppDenied {
                email: BOB.into(),
                app: "app".into()
            }
        );
    }

    #[test]
    fn a_password_sign_in_stands_even_when_the_app_refuses_the_user() {
        let svc = Service::new();
        let b = svc.browser();
        let bind = binding(None);
        let a = sign_in(&b, &app_sign_in(&[]), cookies(&bind, None)).unwrap();
        let Outcome::SignInPage(SignInPrompt { flow_id, csrf, .. }) = a.outcome else {
            panic!("expected the sign-in page");
        };
        let form = params(&[("flow", &flow_id), ("csrf", &csrf), ("email", BOB)]);
        let Step::Next(attempt) = login_begin(&b, &form, cookies(&bind, None)).unwrap() else {
            panic!("expected an attempt");
        };
        let a = login_finish(&b, attempt, Some(BOB.into())).unwrap();
        assert!(matches!(
            a.cookies.as_slice(),
            [SetCookie::Session(_), SetCookie::Device(_)]
        ));
        assert!(matches!(
            a.outcome,
            Outcome::Refused(Refusal::AppDenied { .. })
        ));
    }

    #[test]
    fn a_connect_returns_only_to_an_app_and_connects_what_the_server_needs() {
        let svc = Service::new();
        let b = svc.browser();
        let bind = binding(None);
        let alice = svc.session_of(EMAIL);
        let go = |q: &Params| connect(&b, q, cookies(&bind, Some(&alice))).unwrap();
        assert_eq!(
            refusal(go(&connecting("gh", "https://evil.example/"))),
            Refusal::NotAnAppPage
        );
        assert_eq!(
            refusal(go(&connecting("app", PAGE))),
            Refusal::UnknownServer
        );
        assert_eq!(
            refusal(go(&connecting("admin", PAGE))),
            Refusal::ServerDenied {
                email: EMAIL.into(),
                server: "admin".into()
            }
        );
        // Nothing to connect: straight back.
        assert!(matches!(go(&connecting("srv", PAGE)).outcome, Outcome::BackToApp(u) if u == PAGE));
        assert!(
            matches!(go(&connecting("gh", PAGE)).outcome, Outcome::UpstreamConnect(u)
            if u.starts_with("http://127.0.0.1:9301/authorize?"))
        );
        // Not signed in: the sign-in page first.
        let a = connect(&b, &connecting("gh", PAGE), cookies(&bind, None)).unwrap();
        assert!(matches!(a.outcome, Outcome::SignInPage(_)));
    }

    #[test]
    fn a_pending_connect_whose_page_is_no_longer_an_app_is_refused() {
        let svc = Service::new();
        let b = svc.browser();
        let session = Session {
            sid: "sid".into(),
            user: EMAIL.into(),
            created_at: NOW,
            expires_at: NOW + 60,
        };
        let next = Continuation::Connect {
            route: "srv".into(),
            redirect_url: "https://gone.example/".into(),
        };
        assert!(matches!(
            continue_signed_in(&b, next, &session, &random_token()),
            Err(Halt::Refused(Refusal::ReturnNotAllowed))
        ));
    }

    #[test]
    fn a_sign_out_ends_the_session_with_a_ticket_or_a_confirmed_form_only() {
        let svc = Service::new();
        let store = svc.store.as_ref();
        let key = flow::SignOutKey::derive("credential-of-at-least-thirty-two-chars");
        let alice = svc.session_of(EMAIL);
        let sid = store
            .session(&hash_secret(&alice), NOW)
            .unwrap()
            .unwrap()
            .sid;
        let out = |ticket: Option<&str>, session: Option<&str>| {
            signed_out(
                store,
                &key,
                ticket,
                session.map(str::to_owned),
                NOW,
                NOW + 330,
            )
            .unwrap()
        };
        // No ticket (or a forged one): only asked.
        let csrf = key.csrf(&alice);
        assert_eq!(
            out(Some("forged"), Some(&alice)),
            SignOut::Confirm { csrf: csrf.clone() }
        );
        assert_eq!(out(None, None), SignOut::NotSignedIn);
        // The form, from elsewhere or with another token: nothing ends.
        let confirm = |csrf: &str, same_origin: bool| {
            sign_out_confirmed(
                store,
                &key,
                csrf,
                Some(alice.clone()),
                same_origin,
                NOW,
                NOW + 330,
            )
            .unwrap()
        };
        assert_eq!(confirm("forged", true), SignOut::NotConfirmed);
        assert_eq!(confirm(&csrf, false), SignOut::NotConfirmed);
        assert!(store.session_live(&sid, NOW).unwrap());
        assert_eq!(confirm(&csrf, true), SignOut::SignedOut);
        assert!(!store.session_live(&sid, NOW).unwrap());
        assert_eq!(out(None, Some(&alice)), SignOut::NotSignedIn);
        // The filter's ticket ends the session at once.
        let bob = svc.session_of(BOB);
        let sid = store.session(&hash_secret(&bob), NOW).unwrap().unwrap().sid;
        assert_eq!(out(Some(&key.ticket(&sid, NOW)), None), SignOut::SignedOut);
        assert!(!store.session_live(&sid, NOW).unwrap());
    }
}
