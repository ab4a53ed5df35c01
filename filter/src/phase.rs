//! Where one HTTP stream stands: what it waits for, or what was decided for it, as one value.
//! The request path (`request.rs`) moves it; every wait is left by the answer it waits for.
//!
//! ```text
//! Deciding ──► PassedThrough                       (not the filter's to judge)
//!    │    ──► Answered                             (a local reply; nothing goes upstream)
//!    │    ──► AwaitingKeys(Decision) ──► Deciding  (the JWKS answered, or never will)
//!    │    ──► AwaitingBody ──► Deciding            (the body ended: judge it)
//!    │    ──► AwaitingCredentials ──► Forwarded    (every look-up answered)
//!    │    ──► AwaitingApp ──► Deciding             (a client route's look-up answered)
//!    │    ──► AwaitingKeys(AppToken) ──► Deciding  (the JWKS for the app TE answered)
//!    └────► Forwarded                              (allowed, with what it needs)
//! any ──► Ended                                    (Envoy is done with the stream)
//! ```

use warden_core::app::Secret;

use crate::head::OwnedHead;

/// The progress of one stream.
pub enum Phase {
    /// The head is being read and decided: also the state between two waits, within one
    /// callback.
    Deciding,
    /// Paused until the JWKS fetch answers.
    AwaitingKeys(KeysFor),
    /// Authorized, on an MCP route; paused until the body ends: a POST body to judge, or a
    /// GET / DELETE that must turn out empty.
    AwaitingBody,
    /// Allowed; paused until the token service answers each credential look-up. Both may
    /// be in flight at once.
    AwaitingCredentials(Credentials),
    /// A client route's look-up (sign-in callback, the session's TE, sign-out), by call-out
    /// token.
    AwaitingApp(u32),
    /// Not the filter's to judge (no MCP or client route): it goes on untouched.
    PassedThrough,
    /// Allowed and on its way upstream; the response path takes over.
    Forwarded,
    /// A local reply went out: nothing of this request may continue upstream.
    Answered,
    /// The stream is over; a late answer must not touch it.
    Ended,
}

/// What a stream waiting for the JWKS does with it.
pub enum KeysFor {
    /// Runs the access decision again, on the head it kept (boxed: waits are rare, and the
    /// phase of every other stream stays small).
    Decision(Box<OwnedHead>),
    /// Checks the token service's app TE again (its key was unknown): the TE and its expiry.
    AppToken(Secret, i64),
}

/// The credential look-ups in flight, by call-out token.
#[derive(Default)]
pub struct Credentials {
    /// The identity assertion.
    pub assertion: Option<u32>,
    /// The user's upstream token (TI).
    pub upstream_token: Option<u32>,
}

impl Phase {
    /// Nothing may move upstream while the request is undecided or after it was refused.
    pub fn holds_request(&self) -> bool {
        matches!(
            self,
            Phase::AwaitingKeys(_)
                | Phase::AwaitingCredentials(_)
                | Phase::AwaitingApp(_)
                | Phase::Answered
        )
    }

    /// Waits for one more credential look-up, alongside one already in flight.
    pub fn await_credential(&mut self, record: impl FnOnce(&mut Credentials)) {
        if let Phase::AwaitingCredentials(pending) = self {
            record(pending);
            return;
        }
        let mut pending = Credentials::default();
        record(&mut pending);
        *self = Phase::AwaitingCredentials(pending);
    }

    /// The call-out tokens of the look-ups this stream waits for.
    pub fn lookups(&self) -> impl Iterator<Item = u32> {
        let (a, b) = match self {
            Phase::AwaitingCredentials(c) => (c.assertion, c.upstream_token),
            Phase::AwaitingApp(token) => (Some(*token), None),
            _ => (None, None),
        };
        a.into_iter().chain(b)
    }
}
