//! The upstream provider sends the browser back (`{issuer}/upstream/callback`) after the
//! user connected (or refused to connect) their account: `callback` checks the answer, and
//! after the vault exchanged the code, `connected` answers the MCP client (a code) or the
//! app (its page).

use super::authorize::{self, Params};
use super::browser::{
    check_binding, settle, settle_step, user_exists, Answer, Browser, Cookies, Halt, Outcome,
    Refusal, Step,
};
use crate::store::UpstreamFlow;
use crate::vault::provider::ProviderError;

/// A callback with a code to exchange for the user's upstream token.
pub struct UpstreamAnswer {
    pub flow: UpstreamFlow,
    pub code: String,
}

/// The callback (`?state=&code=` or `?state=&error=`): the flow `state` names is taken
/// (single use), must belong to this browser, and its sign-in must still stand.
pub fn callback(
    b: &Browser<'_>,
    query: &Params,
    cookies: Cookies,
) -> anyhow::Result<Step<UpstreamAnswer>> {
    settle_step(check_callback(b, query, cookies))
}

fn check_callback(
    b: &Browser<'_>,
    query: &Params,
    cookies: Cookies,
) -> Result<Step<UpstreamAnswer>, Halt> {
    let state = query.get("state").ok_or(Refusal::Expired)?;
    let flow = b.vault.take_flow(state, b.now)?.ok_or(Refusal::Expired)?;
    check_binding(&flow.browser, cookies.binding.as_deref())?;
    let provider = provider_name(b, &flow);
    if let Some(e) = query.get("error") {
        tracing::info!(sub = %flow.user, route = %flow.route, error = %e, "upstream consent refused");
        return to_client(
            b,
            &flow,
            "access_denied",
            format!("{provider} refused to connect the account ({e})"),
        )
        .map(Step::Answer);
    }
    let Some(code) = query.get("code") else {
        return to_client(
            b,
            &flow,
            "server_error",
            format!("{provider} sent no authorization code"),
        )
        .map(Step::Answer);
    };
    // The sign-in must still stand (the session may have ended, the user been removed)
    // before anything is exchanged or stored for it.
    if !signed_in(b, &flow)? {
        return Err(Refusal::Expired.into());
    }
    Ok(Step::Next(UpstreamAnswer {
        code: code.to_owned(),
        flow,
    }))
}

/// The vault exchanged the code (and stored the token), or the provider refused or could
/// not be reached.
pub fn connected(
    b: &Browser<'_>,
    answer: UpstreamAnswer,
    exchange: Result<(), ProviderError>,
) -> anyhow::Result<Answer> {
    settle(answer_after(b, answer.flow, exchange))
}

fn answer_after(
    b: &Browser<'_>,
    flow: UpstreamFlow,
    exchange: Result<(), ProviderError>,
) -> Result<Answer, Halt> {
    let provider = provider_name(b, &flow);
    match exchange {
        Ok(()) => {}
        Err(ProviderError::Refused(why)) => {
            tracing::info!(sub = %flow.user, route = %flow.route, reason = %why, "upstream code exchange refused");
            return to_client(
                b,
                &flow,
                "access_denied",
                format!("{provider} refused to issue a token ({why})"),
            );
        }
        Err(ProviderError::Unavailable(why)) => {
            tracing::warn!(sub = %flow.user, route = %flow.route, reason = %why, "upstream code exchange failed");
            return to_client(
                b,
                &flow,
                "temporarily_unavailable",
                format!("{provider} could not be reached; try again"),
            );
        }
    }
    // The sign-in must still stand: the session may have ended meanwhile.
    if !signed_in(b, &flow)? {
        return Err(Refusal::Expired.into());
    }
    // A connect from an app: back to the app's page (checked when the connect began).
    if let Some(url) = flow.redirect_url {
        tracing::info!(sub = %flow.user, route = %flow.route, "upstream account connected from an app");
        return Ok(Answer::new(Outcome::BackToApp(url)));
    }
    let code = authorize::issue_code(b.store, &flow.request, &flow.user, &flow.sid, b.now)?;
    tracing::info!(client_id = %flow.request.client_id, sub = %flow.user, "upstream account connected; code issued");
    Ok(Answer::new(Outcome::CodeToClient(authorize::success_url(
        &flow.request,
        &b.config.authorization_server.issuer,
        &code,
    )?)))
}

fn provider_name(b: &Browser<'_>, flow: &UpstreamFlow) -> String {
    b.vault
        .provider(&flow.route)
        .map(|p| p.name())
        .unwrap_or_default()
}

fn signed_in(b: &Browser<'_>, flow: &UpstreamFlow) -> anyhow::Result<bool> {
    Ok(user_exists(b, &flow.user)? && b.store.session_live(&flow.sid, b.now)?)
}

/// Back to the MCP client's redirect URI with an error.
fn to_client(
    b: &Browser<'_>,
    flow: &UpstreamFlow,
    error: &str,
    description: String,
) -> Result<Answer, Halt> {
    let url = authorize::response_url(
        &flow.request.redirect_uri,
        &b.config.authorization_server.issuer,
        &[("error", error), ("error_description", &description)],
        flow.request.state.as_deref(),
    )?;
    Ok(Answer::new(Outcome::ErrorToClient(url)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use crate::flows::browser::binding;
    use crate::flows::browser::testing::*;
    use crate::flows::{app_sign_in, hash_secret, sign_in};
    use crate::store::Sessions;

    const GH: &str = "http://127.0.0.1:9001/mcp";
    const PAGE: &str = "https://app.example.com/ui/page";

    /// The `state` of the provider URL an answer sends the browser to.
    fn state_of(a: Answer) -> String {
        let Outcome::UpstreamConnect(url) = a.outcome else {
            panic!("expected the provider, got {:?}", a.outcome);
        };
        url::Url::parse(&url)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .into_owned()
    }

    /// Alice, signed in, sent to the provider by an MCP client's authorization.
    fn for_client(svc: &Service, bind: &str, alice: &str) -> String {
        let q = sign_in::tests::request("trusted", &[("resource", GH)]);
        state_of(sign_in::authorize(&svc.browser(), &q, cookies(bind, Some(alice))).unwrap())
    }

    /// Alice, signed in, sent to the provider by an app's connect.
    fn for_app(svc: &Service, bind: &str, alice: &str) -> String {
        let q = params(&[("route", "gh"), ("redirect_url", PAGE)]);
        state_of(app_sign_in::connect(&svc.browser(), &q, cookies(bind, Some(alice))).unwrap())
    }

    fn back(svc: &Service, q: &[(&str, &str)], bind: &str) -> Step<UpstreamAnswer> {
        callback(&svc.browser(), &params(q), cookies(bind, None)).unwrap()
    }

    fn outcome<T>(step: Step<T>) -> Outcome {
        match step {
            Step::Answer(a) => a.outcome,
            Step::Next(_) => panic!("expected an answer"),
        }
    }

    fn next(step: Step<UpstreamAnswer>) -> UpstreamAnswer {
        match step {
            Step::Next(a) => a,
            Step::Answer(a) => panic!("expected an exchange, got {:?}", a.outcome),
        }
    }

    #[test]
    fn the_callback_is_checked_before_any_exchange() {
        let svc = Service::new();
        let bind = binding(None);
        let alice = svc.session_of(EMAIL);
        assert!(matches!(
            outcome(back(&svc, &[], &bind)),
            Outcome::Refused(Refusal::Expired)
        ));
        assert!(matches!(
            outcome(back(&svc, &[("state", "unknown"), ("code", "c")], &bind)),
            Outcome::Refused(Refusal::Expired)
        ));
        let state = for_client(&svc, &bind, &alice);
        assert!(matches!(
            outcome(back(
                &svc,
                &[("state", &state), ("code", "c")],
                &binding(None)
            )),
            Outcome::Refused(Refusal::OtherBrowser)
        ));
        let state = for_client(&svc, &bind, &alice);
        let refused = back(
            &svc,
            &[("state", &state), ("error", "access_denied")],
            &bind,
        );
        assert!(matches!(outcome(refused), Outcome::ErrorToClient(u)
            if u.contains("error=access_denied") && u.contains("state=st")));
        let state = for_client(&svc, &bind, &alice);
        assert!(matches!(outcome(back(&svc, &[("state", &state)], &bind)),
            Outcome::ErrorToClient(u) if u.contains("error=server_error")));
        // The sign-in ended meanwhile: nothing is exchanged for it.
        let state = for_client(&svc, &bind, &alice);
        svc.store
            .revoke_session(&hash_secret(&alice), NOW, NOW + 330)
            .unwrap();
        assert!(matches!(
            outcome(back(&svc, &[("state", &state), ("code", "c")], &bind)),
            Outcome::Refused(Refusal::Expired)
        ));
    }

    #[test]
    fn after_the_exchange_the_client_gets_its_code_or_the_error() {
        let svc = Service::new();
        let bind = binding(None);
        let alice = svc.session_of(EMAIL);
        let exchanged = |result: Result<(), ProviderError>| {
            let state = for_client(&svc, &bind, &alice);
            let answer = next(back(&svc, &[("state", &state), ("code", "c")], &bind));
            assert_eq!(answer.code, "c");
            connected(&svc.browser(), answer, result).unwrap().outcome
        };
        assert!(
            matches!(exchanged(Err(ProviderError::Refused("invalid_grant".into()))),
            Outcome::ErrorToClient(u) if u.contains("error=access_denied"))
        );
        assert!(
            matches!(exchanged(Err(ProviderError::Unavailable("503".into()))),
            Outcome::ErrorToClient(u) if u.contains("error=temporarily_unavailable"))
        );
        assert!(matches!(exchanged(Ok(())),
            Outcome::CodeToClient(u) if u.starts_with("http://127.0.0.1/cb?code=")));
    }

    #[test]
    fn after_the_exchange_an_app_gets_its_page_while_the_sign_in_stands() {
        let svc = Service::new();
        let bind = binding(None);
        let alice = svc.session_of(EMAIL);
        let state = for_app(&svc, &bind, &alice);
        let answer = next(back(&svc, &[("state", &state), ("code", "c")], &bind));
        assert!(
            matches!(connected(&svc.browser(), answer, Ok(())).unwrap().outcome,
            Outcome::BackToApp(u) if u == PAGE)
        );
        let state = for_app(&svc, &bind, &alice);
        let answer = next(back(&svc, &[("state", &state), ("code", "c")], &bind));
        svc.store
            .revoke_session(&hash_secret(&alice), NOW, NOW + 330)
            .unwrap();
        assert!(matches!(
            connected(&svc.browser(), answer, Ok(())).unwrap().outcome,
            Outcome::Refused(Refusal::Expired)
        ));
    }
}
