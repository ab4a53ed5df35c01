//! The browser side of an MCP client's authorization: the `/authorize` request, the sign-in
//! form, what follows a sign-in (password or identity provider), and the consent form.

use super::authorize::{self, AuthorizeError, AuthorizeGrant, Params};
use super::browser::{
    begin_sign_in, check_binding, pending_full, settle, settle_step, shown_email, store_flow,
    user_exists, Answer, Browser, ConsentPrompt, Cookies, Halt, Outcome, Refusal, SetCookie,
    SignInPrompt, Step, FLOW_TTL, SESSION_TTL,
};
use super::{
    app, app_sign_in, consent, constant_time_eq, hash_secret, login, lookup_client, random_id,
    random_token, split_scope, RegisteredClient,
};
use crate::store::{FlowUser, PendingFlow, Session};

/// Wrong passwords allowed per pending sign-in before it is dropped. (Per account, the
/// throttle in `flows::login` applies on top.)
pub const MAX_LOGIN_ATTEMPTS: u32 = 5;

/// An MCP client's authorization request (`GET /authorize`): an error for the client or a
/// page, else, signed in, the code (or the upstream account first) or the consent page, and
/// otherwise the sign-in.
pub fn authorize(b: &Browser<'_>, params: &Params, cookies: Cookies) -> anyhow::Result<Answer> {
    settle(authorize_request(b, params, cookies))
}

fn authorize_request(b: &Browser<'_>, params: &Params, cookies: Cookies) -> Result<Answer, Halt> {
    let issuer = &b.config.authorization_server.issuer;
    let client = match params.get("client_id") {
        Some(id) => lookup_client(b.config, b.store, b.documents, id, b.now)?,
        None => None,
    };
    let grant = match authorize::validate(b.config, params, client.as_ref()) {
        Ok(g) => g,
        Err(AuthorizeError::Page(msg)) => return Err(Refusal::BadRequest(msg).into()),
        Err(AuthorizeError::UnknownClient(msg)) => return Err(Refusal::InvalidClient(msg).into()),
        Err(e) => {
            tracing::info!(error = ?e, "authorization request rejected");
            return match authorize::error_url(&e, issuer) {
                Some(url) => Ok(Answer::new(Outcome::ErrorToClient(url?))),
                None => Err(Refusal::BadRequest("invalid request".into()).into()),
            };
        }
    };
    let Some(client) = client else {
        return Err(Refusal::InvalidClient("unknown client_id".into()).into());
    };
    let binding = super::browser::binding(cookies.binding);
    let bound = SetCookie::Binding(binding.clone());

    // Already signed in: issue the code straight away if this client is approved,
    // otherwise ask for consent.
    if let Some(secret) = cookies.session {
        if let Some(session) = b.store.session(&hash_secret(&secret), b.now)? {
            if user_exists(b, &session.user)? {
                let answer = if !consent::required(b.store, &client, &grant, &session.user)? {
                    finish_authorization(
                        b,
                        grant,
                        &session.user,
                        &session.sid,
                        &hash_secret(&binding),
                    )?
                } else {
                    let user = FlowUser {
                        user: session.user,
                        sid: session.sid,
                    };
                    begin_consent(b, &client, grant, hash_secret(&binding), user, &secret)?
                };
                return Ok(answer.set(bound));
            }
        }
    }
    let outcome = begin_sign_in(b, grant, None, &binding, client.display_name())?;
    Ok(Answer::new(outcome).set(bound))
}

/// The user approved (or needs not approve) the client: issue the code, unless the server
/// needs an upstream account the user has not connected, in which case the browser goes to
/// the provider first and the code is issued at the upstream callback (`flows::upstream`).
fn finish_authorization(
    b: &Browser<'_>,
    grant: AuthorizeGrant,
    email: &str,
    sid: &str,
    browser_hash: &str,
) -> Result<Answer, Halt> {
    let upstream_route = b
        .config
        .route_by_resource(&grant.resource)
        .filter(|r| r.has_upstream_oauth())
        .map(|r| r.name.clone());
    if let Some(route) = upstream_route {
        if !b.vault.holds_usable(email, &route, b.now)? {
            if let Some(reason) = b.vault.upstream_unavailable(&route) {
                tracing::warn!(sub = %email, route = %route, reason = %reason, "the upstream account cannot be connected now");
                let url = authorize::response_url(
                    &grant.redirect_uri,
                    &b.config.authorization_server.issuer,
                    &[
                        ("error", "temporarily_unavailable"),
                        ("error_description", &reason),
                    ],
                    grant.state.as_deref(),
                )?;
                return Ok(Answer::new(Outcome::ErrorToClient(url)));
            }
            let url = b
                .vault
                .begin(&route, grant, email, sid, browser_hash, b.pending, None)?
                .ok_or_else(pending_full)?;
            tracing::info!(sub = %email, route = %route, "connecting the upstream account");
            return Ok(Answer::new(Outcome::UpstreamConnect(url)));
        }
    }
    let code = authorize::issue_code(b.store, &grant, email, sid, b.now)?;
    tracing::info!(client_id = %grant.client_id, sub = %email, scope = %grant.scope, "code issued");
    Ok(Answer::new(Outcome::CodeToClient(authorize::success_url(
        &grant,
        &b.config.authorization_server.issuer,
        &code,
    )?)))
}

/// Starts the consent step: a new single-use flow bound to this browser and session;
/// `session_secret` is the browser's session cookie, which the form's CSRF token is bound to.
fn begin_consent(
    b: &Browser<'_>,
    client: &RegisteredClient,
    request: AuthorizeGrant,
    browser_hash: String,
    user: FlowUser,
    session_secret: &str,
) -> Result<Answer, Halt> {
    let flow = PendingFlow {
        id: random_token(),
        csrf: random_token(),
        request,
        expires_at: b.now + FLOW_TTL,
        browser: browser_hash,
        user: Some(user.clone()),
        next: None,
    };
    store_flow(b, &flow)?;
    tracing::info!(client_id = %flow.request.client_id, sub = %user.user, "asking for consent");
    Ok(Answer::new(Outcome::ConsentPage(Box::new(ConsentPrompt {
        flow_id: flow.id.clone(),
        csrf: consent::csrf_token(&flow.csrf, session_secret),
        client_name: client.display_name().to_owned(),
        client_id: client.client_id.clone(),
        verified: client.pre_registered,
        document_host: client.document_host.clone(),
        redirect_uri: flow.request.redirect_uri.clone(),
        resource: flow.request.resource.clone(),
        scopes: split_scope(&flow.request.scope),
        email: shown_email(b, &user.user),
        upstream: b
            .config
            .route_by_resource(&flow.request.resource)
            .filter(|r| r.has_upstream_oauth())
            .and_then(|r| b.vault.provider(&r.name))
            .map(|p| p.name()),
    }))))
}

/// A sign-in whose form checked out and whose attempt is reserved; its password is next.
pub struct LoginAttempt {
    flow: PendingFlow,
    pub email: String,
    pub password: String,
    throttle: login::Throttle,
    pub reservation: login::Reservation,
    /// The device cookie the browser presented, replaced on success.
    device_cookie: Option<String>,
}

/// The sign-in form (`POST /login`): checks the form and reserves the attempt (or refuses
/// it while its throttle bucket is locked); the caller checks the password, then calls
/// `login_finish` (or `login::abandoned`).
pub fn login_begin(
    b: &Browser<'_>,
    form: &Params,
    cookies: Cookies,
) -> anyhow::Result<Step<LoginAttempt>> {
    settle_step(reserve_attempt(b, form, cookies).map(Step::Next))
}

fn reserve_attempt(b: &Browser<'_>, form: &Params, cookies: Cookies) -> Result<LoginAttempt, Halt> {
    let flow_id = form.get("flow").ok_or(Refusal::Expired)?;
    let flow = b.store.flow(flow_id, b.now)?.ok_or(Refusal::Expired)?;
    if flow.user.is_some() {
        // A flow waiting for consent is past sign-in.
        return Err(Refusal::Expired.into());
    }
    check_binding(&flow.browser, cookies.binding.as_deref())?;
    let csrf = form.get("csrf").unwrap_or("");
    if !constant_time_eq(csrf.as_bytes(), flow.csrf.as_bytes()) {
        return Err(Refusal::SignInForged.into());
    }
    let email = form.get("email").unwrap_or("").trim().to_owned();
    let password = form.get("password").unwrap_or("").to_owned();
    let throttle = login::throttle_for(b.store, &email, cookies.device.as_deref(), b.now)?;
    let Some(reservation) = login::reserve(b.store, &throttle, b.now)? else {
        tracing::warn!(
            trusted_device = throttle.device.is_some(),
            "sign-in refused: too many recent failures for this account"
        );
        return Err(Refusal::TooManyAttempts.into());
    };
    Ok(LoginAttempt {
        flow,
        email,
        password,
        throttle,
        reservation,
        device_cookie: cookies.device,
    })
}

/// Records the verdict on a reserved attempt and answers it; `user` is the signed-in user's
/// email when the password was right.
pub fn login_finish(
    b: &Browser<'_>,
    attempt: LoginAttempt,
    user: Option<String>,
) -> anyhow::Result<Answer> {
    settle(verdict(b, attempt, user))
}

fn verdict(b: &Browser<'_>, attempt: LoginAttempt, user: Option<String>) -> Result<Answer, Halt> {
    let store = b.store;
    let LoginAttempt {
        flow,
        email,
        throttle,
        reservation,
        device_cookie,
        ..
    } = attempt;
    let Some(user) = user.and_then(|e| b.config.user(&e)) else {
        login::failed(store, &reservation, b.now)?;
        let attempts = store.record_failed_login(&flow.id)?;
        tracing::info!(attempts, "sign-in failed");
        if attempts >= MAX_LOGIN_ATTEMPTS {
            store.delete_flow(&flow.id)?;
            return Err(Refusal::TooManyAttempts.into());
        }
        let name = match &flow.next {
            // An app sign-in or a connect: the stand-in request names the app.
            Some(_) => flow
                .request
                .client_id
                .strip_prefix(app::APP_CLIENT_PREFIX)
                .unwrap_or(&flow.request.client_id)
                .to_owned(),
            None => lookup_client(b.config, store, b.documents, &flow.request.client_id, b.now)?
                .map(|c| c.display_name().to_owned())
                .unwrap_or_else(|| flow.request.client_id.clone()),
        };
        return Ok(Answer::new(Outcome::SignInPage(SignInPrompt::of(
            &flow, name, &email, true,
        ))));
    };
    login::succeeded(store, &reservation)?;

    // The flow is single use: a second submission of the same form does nothing.
    if !store.delete_flow(&flow.id)? {
        return Err(Refusal::Expired.into());
    }
    let device = login::remember_device(store, &throttle, device_cookie.as_deref(), b.now)?;
    Ok(signed_in(b, flow, &user.email)?.set(SetCookie::Device(device)))
}

/// A user proved who they are (password or identity provider) in the browser of `flow`:
/// start their session, then ask for consent or answer the client (or, for an app sign-in
/// or a connect, continue there).
pub(super) fn signed_in(b: &Browser<'_>, flow: PendingFlow, user: &str) -> Result<Answer, Halt> {
    let store = b.store;
    let client = match &flow.next {
        Some(_) => None,
        None => Some(
            lookup_client(b.config, store, b.documents, &flow.request.client_id, b.now)?
                .ok_or(Refusal::Expired)?,
        ),
    };
    let secret = random_token();
    let session = Session {
        sid: random_id(),
        user: user.to_owned(),
        created_at: b.now,
        expires_at: b.now + SESSION_TTL,
    };
    store.insert_session(&hash_secret(&secret), &session)?;
    tracing::info!(client_id = %flow.request.client_id, sub = %user, sid = %session.sid, "signed in");
    let session_cookie = SetCookie::Session(secret.clone());
    let client = match (client, flow.next.clone()) {
        (_, Some(next)) => {
            // The sign-in stands even when the app or server refuses the user (403 page).
            let outcome = match app_sign_in::continue_signed_in(b, next, &session, &flow.browser) {
                Ok(o) => o,
                Err(Halt::Refused(r)) => Outcome::Refused(r),
                Err(Halt::Failed(e)) => Outcome::Failed(e),
            };
            return Ok(Answer::new(outcome).set(session_cookie));
        }
        (Some(c), None) => c,
        (None, None) => return Err(Refusal::Expired.into()),
    };
    let answer = if consent::required(store, &client, &flow.request, user)? {
        let who = FlowUser {
            user: user.to_owned(),
            sid: session.sid.clone(),
        };
        begin_consent(b, &client, flow.request, flow.browser, who, &secret)?
    } else {
        finish_authorization(b, flow.request, user, &session.sid, &flow.browser)?
    };
    Ok(answer.set(session_cookie))
}

/// The consent form (`POST /consent`): from the session the flow was started in, with its
/// CSRF token; approve (remember it, then the code) or deny (an error for the client).
pub fn consent(b: &Browser<'_>, form: &Params, cookies: Cookies) -> anyhow::Result<Answer> {
    settle(decide_consent(b, form, cookies))
}

fn decide_consent(b: &Browser<'_>, form: &Params, cookies: Cookies) -> Result<Answer, Halt> {
    let issuer = &b.config.authorization_server.issuer;
    let flow_id = form.get("flow").ok_or(Refusal::Expired)?;
    let flow = b.store.flow(flow_id, b.now)?.ok_or(Refusal::Expired)?;
    let Some(user) = flow.user.clone() else {
        // Not signed in yet: this flow belongs to the login form.
        return Err(Refusal::Expired.into());
    };
    check_binding(&flow.browser, cookies.binding.as_deref())?;
    // The decision must come from the session the flow was started in.
    let secret = cookies.session.ok_or(Refusal::ConsentForged)?;
    let session = b
        .store
        .session(&hash_secret(&secret), b.now)?
        .filter(|se| se.sid == user.sid && se.user == user.user)
        .ok_or(Refusal::ConsentForged)?;
    let csrf = form.get("csrf").unwrap_or("");
    let expected = consent::csrf_token(&flow.csrf, &secret);
    if !constant_time_eq(csrf.as_bytes(), expected.as_bytes()) {
        return Err(Refusal::ConsentForged.into());
    }
    let approved = match form.get("decision") {
        Some("approve") => true,
        Some("deny") => false,
        _ => return Err(Refusal::NoDecision.into()),
    };
    // Single use, whatever the decision.
    if !b.store.delete_flow(&flow.id)? {
        return Err(Refusal::Expired.into());
    }
    let grant = flow.request;
    if !approved {
        tracing::info!(client_id = %grant.client_id, sub = %session.user, "consent denied");
        let url = authorize::response_url(
            &grant.redirect_uri,
            issuer,
            &[
                ("error", "access_denied"),
                ("error_description", "the user denied the request"),
            ],
            grant.state.as_deref(),
        )?;
        return Ok(Answer::new(Outcome::ErrorToClient(url)));
    }
    if !user_exists(b, &session.user)? {
        return Err(Refusal::Expired.into());
    }
    consent::remember(b.store, &grant, &session.user, b.now)?;
    tracing::info!(client_id = %grant.client_id, sub = %session.user, scope = %grant.scope, "consent given");
    finish_authorization(b, grant, &session.user, &session.sid, &flow.browser)
}

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use crate::flows::browser::binding;
    use crate::flows::browser::testing::*;

    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    /// An authorization request of `client` for the plain MCP server.
    pub fn request(client: &str, extra: &[(&str, &str)]) -> Params {
        let mut p = vec![
            ("response_type", "code"),
            ("client_id", client),
            ("redirect_uri", "http://127.0.0.1/cb"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
            ("resource", "http://127.0.0.1:9000/mcp"),
            ("state", "st"),
        ];
        for (k, v) in extra {
            p.retain(|(pk, _)| pk != k);
            p.push((k, v));
        }
        params(&p)
    }

    fn refusal(a: Answer) -> Refusal {
        match a.outcome {
            Outcome::Refused(r) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn sign_in_page(a: Answer) -> SignInPrompt {
        match a.outcome {
            Outcome::SignInPage(p) => p,
            other => panic!("expected the sign-in page, got {other:?}"),
        }
    }

    fn consent_page(a: &Answer) -> ConsentPrompt {
        match &a.outcome {
            Outcome::ConsentPage(p) => (**p).clone(),
            other => panic!("expected the consent page, got {other:?}"),
        }
    }

    fn session_cookie(a: &Answer) -> String {
        a.cookies
            .iter()
            .find_map(|c| match c {
                SetCookie::Session(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn authorize_answers_the_client_or_signs_in_or_asks() {
        let svc = Service::new();
        let b = svc.browser();
        let bind = binding(None);
        // A client that cannot be trusted with a redirect: a page, and no cookie.
        let a = authorize(&b, &request("nobody", &[]), cookies(&bind, None)).unwrap();
        assert!(a.cookies.is_empty());
        assert_eq!(
            refusal(a),
            Refusal::InvalidClient("unknown client_id".into())
        );
        // A known client's bad request: back to it with the error.
        let a = authorize(
            &b,
            &request("cli", &[("response_type", "token")]),
            cookies(&bind, None),
        )
        .unwrap();
        assert!(a.cookies.is_empty());
        assert!(matches!(&a.outcome, Outcome::ErrorToClient(u)
            if u.contains("error=unsupported_response_type") && u.contains("state=st")));
        // Not signed in: the sign-in page, the browser bound.
        let a = authorize(&b, &request("cli", &[]), cookies(&bind, None)).unwrap();
        assert_eq!(a.cookies, vec![SetCookie::Binding(bind.clone())]);
        let p = sign_in_page(a);
        assert_eq!((p.client_name.as_str(), p.wrong_password), ("CLI", false));
        // Signed in, the client not yet approved: the consent page.
        let alice = svc.session_of(EMAIL);
        let a = authorize(&b, &request("cli", &[]), cookies(&bind, Some(&alice))).unwrap();
        let p = consent_page(&a);
        assert_eq!((p.email.as_str(), p.verified), (EMAIL, true));
        assert_eq!(p.csrf.len(), 43);
        assert_eq!(a.cookies, vec![SetCookie::Binding(bind.clone())]);
        // A client the operator lets skip consent: the code at once.
        let a = authorize(&b, &request("trusted", &[]), cookies(&bind, Some(&alice))).unwrap();
        assert!(matches!(&a.outcome, Outcome::CodeToClient(u)
            if u.starts_with("http://127.0.0.1/cb?code=") && u.contains("state=st")));
        // A server needing an upstream account not connected yet: to the provider first.
        let gh = request("trusted", &[("resource", "http://127.0.0.1:9001/mcp")]);
        let a = authorize(&b, &gh, cookies(&bind, Some(&alice))).unwrap();
        assert!(matches!(&a.outcome, Outcome::UpstreamConnect(u)
            if u.starts_with("http://127.0.0.1:9301/authorize?")));
    }

    /// A pending sign-in of this browser, at its sign-in page.
    fn pending(svc: &Service, bind: &str) -> SignInPrompt {
        let a = authorize(&svc.browser(), &request("cli", &[]), cookies(bind, None)).unwrap();
        sign_in_page(a)
    }

    fn form(p: &SignInPrompt, email: &str) -> Params {
        params(&[
            ("flow", p.flow_id.as_str()),
            ("csrf", p.csrf.as_str()),
            ("email", email),
            ("password", "pw"),
        ])
    }

    fn attempt(step: Step<LoginAttempt>) -> LoginAttempt {
        match step {
            Step::Next(a) => a,
            Step::Answer(a) => panic!("expected an attempt, got {:?}", a.outcome),
        }
    }

    fn refused<T>(step: Step<T>) -> Refusal {
        match step {
            Step::Answer(a) => refusal(a),
            Step::Next(_) => panic!("expected a refusal"),
        }
    }

    #[test]
    fn the_sign_in_form_is_checked_and_throttled() {
        let svc = Service::new();
        let b = svc.browser();
        let bind = binding(None);
        let p = pending(&svc, &bind);
        let begin = |form: &Params, bind: &str| login_begin(&b, form, cookies(bind, None)).unwrap();
        assert_eq!(refused(begin(&params(&[]), &bind)), Refusal::Expired);
        assert_eq!(
            refused(begin(&form(&p, EMAIL), &binding(None))),
            Refusal::OtherBrowser
        );
        let forged = params(&[
            ("flow", p.flow_id.as_str()),
            ("csrf", "x"),
            ("email", EMAIL),
        ]);
        assert_eq!(refused(begin(&forged, &bind)), Refusal::SignInForged);
        // Wrong passwords: the page again (401), until the flow is dropped.
        for n in 1..=MAX_LOGIN_ATTEMPTS {
            let a = attempt(begin(&form(&p, EMAIL), &bind));
            let answer = login_finish(&b, a, None).unwrap();
            if n < MAX_LOGIN_ATTEMPTS {
                let again = sign_in_page(answer);
                assert!(again.wrong_password);
                assert_eq!(again.email, EMAIL);
            } else {
                assert_eq!(refusal(answer), Refusal::TooManyAttempts);
            }
        }
        assert_eq!(refused(begin(&form(&p, EMAIL), &bind)), Refusal::Expired);
        // The account's throttle now refuses untrusted browsers before any password check.
        let p = pending(&svc, &bind);
        assert_eq!(
            refused(begin(&form(&p, EMAIL), &bind)),
            Refusal::TooManyAttempts
        );
    }

    #[test]
    fn a_sign_in_starts_a_session_then_asks_for_consent_and_the_decision_answers_the_client() {
        let svc = Service::new();
        let b = svc.browser();
        let bind = binding(None);
        let p = pending(&svc, &bind);
        let a = attempt(login_begin(&b, &form(&p, EMAIL), cookies(&bind, None)).unwrap());
        let answer = login_finish(&b, a, Some(EMAIL.into())).unwrap();
        assert!(matches!(
            answer.cookies.as_slice(),
            [SetCookie::Session(_), SetCookie::Device(_)]
        ));
        let session = session_cookie(&answer);
        let ask = consent_page(&answer);
        // The same form again: the flow is gone.
        assert_eq!(
            refused(login_begin(&b, &form(&p, EMAIL), cookies(&bind, None)).unwrap()),
            Refusal::Expired
        );

        let decide = |ask: &ConsentPrompt, csrf: &str, decision: &str, session: Option<&str>| {
            let form = params(&[
                ("flow", ask.flow_id.as_str()),
                ("csrf", csrf),
                ("decision", decision),
            ]);
            consent(&b, &form, cookies(&bind, session)).unwrap()
        };
        assert_eq!(
            refusal(decide(&ask, &ask.csrf, "approve", None)),
            Refusal::ConsentForged
        );
        assert_eq!(
            refusal(decide(&ask, "forged", "approve", Some(&session))),
            Refusal::ConsentForged
        );
        assert_eq!(
            refusal(decide(&ask, &ask.csrf, "maybe", Some(&session))),
            Refusal::NoDecision
        );
        let denied = decide(&ask, &ask.csrf, "deny", Some(&session));
        assert!(matches!(&denied.outcome, Outcome::ErrorToClient(u)
            if u.contains("error=access_denied") && u.contains("state=st")));
        // Denied is not remembered: asked again, and approved.
        let again = authorize(&b, &request("cli", &[]), cookies(&bind, Some(&session))).unwrap();
        let ask = consent_page(&again);
        let approved = decide(&ask, &ask.csrf, "approve", Some(&session));
        assert!(matches!(&approved.outcome, Outcome::CodeToClient(u)
            if u.starts_with("http://127.0.0.1/cb?code=")));
        assert_eq!(
            refusal(decide(&ask, &ask.csrf, "approve", Some(&session))),
            Refusal::Expired
        );
        // Approved is remembered: the next authorization gets its code at once.
        let next = authorize(&b, &request("cli", &[]), cookies(&bind, Some(&session))).unwrap();
        assert!(matches!(next.outcome, Outcome::CodeToClient(_)));
    }
}
