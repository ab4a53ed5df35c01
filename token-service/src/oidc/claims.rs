//! The ID token's checks and the user the gateway makes of the provider's claims. Pure, so the
//! rules are unit-tested without a provider.

use serde_json::{Map, Value};

use super::error::IdpError;
use crate::config::OidcConfig;

/// A user signed in through the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpUser {
    /// The gateway's key for the user: `{iss}#{sub}` (an issuer URL has no fragment, so the
    /// key is unambiguous and two providers never collide).
    pub key: String,
    pub email: String,
    pub name: String,
    pub groups: Vec<String>,
}

pub fn user_key(iss: &str, sub: &str) -> String {
    format!("{iss}#{sub}")
}

pub fn string(claims: &Map<String, Value>, name: &str) -> Option<String> {
    claims.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// OIDC Core §3.1.3.7 (items 2–4, 9–11), after the signature checked out. `nonce` is `None`
/// for an ID token from a refresh, which belongs to no sign-in (§12.2).
pub fn check_id_token(
    claims: &Map<String, Value>,
    issuer: &str,
    client_id: &str,
    nonce: Option<&str>,
    now: i64,
    leeway: i64,
) -> Result<(), IdpError> {
    let invalid = |m: &str| Err(IdpError::Invalid(m.to_owned()));
    if string(claims, "iss").as_deref() != Some(issuer) {
        return invalid("the ID token was issued by another provider");
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !audiences.contains(&client_id) {
        return invalid("the ID token was issued to another application");
    }
    let azp = string(claims, "azp");
    if (audiences.len() > 1 || azp.is_some()) && azp.as_deref() != Some(client_id) {
        return invalid("the ID token was issued to another application (azp)");
    }
    match claims.get("exp").and_then(Value::as_i64) {
        Some(exp) if now < exp.saturating_add(leeway) => {}
        Some(_) => return invalid("the ID token has expired"),
        None => return invalid("the ID token has no expiry"),
    }
    match claims.get("iat").and_then(Value::as_i64) {
        Some(iat) if iat <= now.saturating_add(leeway) => {}
        _ => return invalid("the ID token's issue time is missing or in the future"),
    }
    if let Some(nonce) = nonce {
        let presented = string(claims, "nonce").unwrap_or_default();
        if !crate::digest::constant_time_eq(presented.as_bytes(), nonce.as_bytes()) {
            return invalid("the ID token does not belong to this sign-in (nonce mismatch)");
        }
    }
    match string(claims, "sub") {
        Some(s) if !s.is_empty() && s.len() <= 255 => Ok(()),
        _ => invalid("the ID token has no valid subject"),
    }
}

/// A claim by name, or by a dotted path into nested objects (`realm_access.roles`). The whole
/// name is tried first, since namespaced claims (`https://example.com/groups`) contain dots.
/// A `null` claim is an absent one (then userinfo may have it).
pub fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path).filter(|v| !v.is_null()) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut v = claims.get(parts.next()?)?;
    for part in parts {
        v = v.as_object()?.get(part)?;
    }
    Some(v).filter(|v| !v.is_null())
}

/// Groups are a list of strings, or one string.
pub fn groups(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether the ID token lacks a claim the gateway wants (the userinfo endpoint may have it).
pub fn lacks_profile(claims: &Map<String, Value>, groups_claim: &str) -> bool {
    string(claims, "email").is_none()
        || (string(claims, "name").is_none() && string(claims, "preferred_username").is_none())
        || lookup(claims, groups_claim).is_none()
}

fn verified(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        // Some providers send it as a string.
        Value::String(s) => Some(s == "true"),
        _ => None,
    }
}

/// The user from the ID token's claims, gaps filled from userinfo.
pub fn user(
    config: &OidcConfig,
    issuer: &str,
    id_token: &Map<String, Value>,
    userinfo: Option<&Map<String, Value>>,
) -> Result<IdpUser, IdpError> {
    let pick =
        |name: &str| lookup(id_token, name).or_else(|| userinfo.and_then(|u| lookup(u, name)));
    let sub = string(id_token, "sub").unwrap_or_default();
    let email = pick("email")
        .and_then(Value::as_str)
        .and_then(|e| {
            // Domains are case-insensitive and `domain`/`email` policies compare exactly: the
            // provider's spelling (`Alice@Contoso.com`) must not decide whether they match.
            let (local, domain) = e.trim().rsplit_once('@')?;
            Some(format!("{local}@{}", domain.to_ascii_lowercase()))
        })
        .ok_or_else(|| {
            IdpError::Claims(
                "the identity provider did not share an email address (is the email scope granted?)"
                    .into(),
            )
        })?;
    if pick("email_verified").and_then(verified) == Some(false) && !config.allow_unverified_email {
        return Err(IdpError::Claims(format!(
            "the identity provider has not verified the email address {email}"
        )));
    }
    let name = pick("name")
        .or_else(|| pick("preferred_username"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let groups = pick(&config.groups_claim).map(groups).unwrap_or_default();
    Ok(IdpUser {
        key: user_key(issuer, &sub),
        email,
        name,
        groups,
    })
}

/// The user `sub` as a check at the provider describes them: the refreshed ID token's claims
/// first, then userinfo's, then, for a claim neither carries, what was `known` (providers that
/// release some claims only at sign-in must not lose the user their email or groups).
pub fn rechecked_user(
    config: &OidcConfig,
    issuer: &str,
    sub: &str,
    id_token: Option<&Map<String, Value>>,
    userinfo: Option<&Map<String, Value>>,
    known: &IdpUser,
) -> Result<IdpUser, IdpError> {
    let mut first = id_token.cloned().unwrap_or_default();
    first.insert("sub".into(), Value::String(sub.to_owned()));
    let fresh = |names: &[&str]| {
        names.iter().any(|n| {
            lookup(&first, n).is_some() || userinfo.is_some_and(|u| lookup(u, n).is_some())
        })
    };
    let mut rest = userinfo.cloned().unwrap_or_default();
    let groups: Vec<Value> = known.groups.iter().cloned().map(Value::String).collect();
    for (names, value) in [
        (&["email"][..], Value::String(known.email.clone())),
        (
            &["name", "preferred_username"][..],
            Value::String(known.name.clone()),
        ),
        (&[config.groups_claim.as_str()][..], Value::Array(groups)),
    ] {
        if !fresh(names) {
            // `lookup` tries the whole name first, so a dotted groups claim lands here too.
            rest.insert(names[0].to_owned(), value);
        }
    }
    user(config, issuer, &first, Some(&rest))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn good() -> Map<String, Value> {
        map(
            json!({"iss": "https://idp", "aud": "warden", "exp": 1000, "iat": 900,
                   "nonce": "n1", "sub": "u1"}),
        )
    }

    fn check(c: &Map<String, Value>) -> Result<(), IdpError> {
        check_id_token(c, "https://idp", "warden", Some("n1"), 950, 60)
    }

    #[test]
    fn id_token_checks() {
        assert_eq!(check(&good()), Ok(()));
        let with = |k: &str, v: Value| {
            let mut c = good();
            c.insert(k.into(), v);
            check(&c)
        };
        let without = |k: &str| {
            let mut c = good();
            c.remove(k);
            check(&c)
        };
        assert!(with("iss", json!("https://other")).is_err());
        assert!(with("aud", json!("other")).is_err());
        assert_eq!(with("aud", json!(["warden"])), Ok(()));
        // Several audiences need azp naming us; azp naming another client is refused.
        assert!(with("aud", json!(["warden", "other"])).is_err());
        assert!(with("azp", json!("other")).is_err());
        assert_eq!(with("azp", json!("warden")), Ok(()));
        assert!(with("exp", json!(800)).is_err());
        assert_eq!(with("exp", json!(900)), Ok(()), "within the leeway");
        assert!(without("exp").is_err());
        assert!(with("iat", json!(1100)).is_err());
        assert!(with("nonce", json!("n2")).is_err());
        assert!(without("nonce").is_err());
        assert!(with("sub", json!("")).is_err());
        assert!(without("sub").is_err());
        // A refreshed ID token belongs to no sign-in: any nonce, or none, passes.
        let mut refreshed = good();
        refreshed.remove("nonce");
        assert_eq!(
            check_id_token(&refreshed, "https://idp", "warden", None, 950, 60),
            Ok(())
        );
    }

    #[test]
    fn a_check_takes_fresh_claims_and_keeps_known_ones_the_provider_left_out() {
        let known = IdpUser {
            key: "https://idp#u1".into(),
            email: "a@example.com".into(),
            name: "A".into(),
            groups: vec!["old".into()],
        };
        let c = config("realm_access.roles");
        // Nothing fresh: what was known.
        let u = rechecked_user(&c, "https://idp", "u1", None, None, &known).unwrap();
        assert_eq!(u, known);
        // Fresh groups (nested) and name win; the email nobody sent is kept.
        let id = map(json!({"sub": "u1", "preferred_username": "ay"}));
        let info = map(json!({"sub": "u1", "realm_access": {"roles": ["new"]}}));
        let u = rechecked_user(&c, "https://idp", "u1", Some(&id), Some(&info), &known).unwrap();
        assert_eq!(u.groups, vec!["new"]);
        assert_eq!(u.name, "ay");
        assert_eq!(u.email, "a@example.com");
        // An empty group list is news too: the user left every group.
        let info = map(json!({"sub": "u1", "realm_access": {"roles": []}}));
        let u = rechecked_user(&c, "https://idp", "u1", None, Some(&info), &known).unwrap();
        assert!(u.groups.is_empty());
        // The provider now says the email is unverified: refused as at sign-in.
        let info = map(json!({"sub": "u1", "email_verified": false}));
        assert!(matches!(
            rechecked_user(&c, "https://idp", "u1", None, Some(&info), &known),
            Err(IdpError::Claims(_))
        ));
    }

    fn config(groups_claim: &str) -> OidcConfig {
        serde_yaml::from_str(&format!(
            "{{issuer: 'https://idp', client_id: warden, groups_claim: '{groups_claim}'}}"
        ))
        .unwrap()
    }

    #[test]
    fn claims_from_the_id_token_or_userinfo() {
        let id = map(json!({"sub": "u1", "email": "a@example.com", "name": "A",
                            "realm_access": {"roles": ["admin", 3]},
                            "https://example.com/groups": "ops"}));
        let u = user(&config("realm_access.roles"), "https://idp", &id, None).unwrap();
        assert_eq!(u.key, "https://idp#u1");
        assert_eq!(u.groups, vec!["admin"]);
        let u = user(
            &config("https://example.com/groups"),
            "https://idp",
            &id,
            None,
        )
        .unwrap();
        assert_eq!(u.groups, vec!["ops"]);

        let bare = map(json!({"sub": "u1"}));
        assert!(lacks_profile(&bare, "groups"));
        let info = map(json!({"sub": "u1", "email": "b@example.com",
                              "preferred_username": "bee", "groups": ["x"]}));
        let u = user(&config("groups"), "https://idp", &bare, Some(&info)).unwrap();
        assert_eq!(
            (u.email.as_str(), u.name.as_str()),
            ("b@example.com", "bee")
        );
        assert_eq!(u.groups, vec!["x"]);
        assert!(matches!(
            user(&config("groups"), "https://idp", &bare, None),
            Err(IdpError::Claims(_))
        ));

        // Claims the ID token sends as null are absent: userinfo is asked, and its answer used.
        let nulls = map(json!({"sub": "u1", "email": null, "name": null, "groups": null}));
        assert!(lacks_profile(&nulls, "groups"));
        let u = user(&config("groups"), "https://idp", &nulls, Some(&info)).unwrap();
        assert_eq!(
            (u.email.as_str(), u.name.as_str()),
            ("b@example.com", "bee")
        );
        assert_eq!(u.groups, vec!["x"]);
    }

    #[test]
    fn the_email_domain_is_lowercased() {
        let id = map(json!({"sub": "u1", "email": " Alice.Smith@Contoso.COM "}));
        let u = user(&config("groups"), "https://idp", &id, None).unwrap();
        assert_eq!(u.email, "Alice.Smith@contoso.com");
        let none = map(json!({"sub": "u1", "email": "no-at-sign"}));
        assert!(user(&config("groups"), "https://idp", &none, None).is_err());
    }

    #[test]
    fn unverified_email_is_refused_unless_allowed() {
        let id = map(json!({"sub": "u1", "email": "a@example.com", "email_verified": false}));
        assert!(matches!(
            user(&config("groups"), "https://idp", &id, None),
            Err(IdpError::Claims(_))
        ));
        let id_str = map(json!({"sub": "u1", "email": "a@example.com", "email_verified": "false"}));
        assert!(user(&config("groups"), "https://idp", &id_str, None).is_err());
        let mut allowing = config("groups");
        allowing.allow_unverified_email = true;
        assert!(user(&allowing, "https://idp", &id, None).is_ok());
        // Providers that never send the claim (Entra ID) are not refused for it.
        let silent = map(json!({"sub": "u1", "email": "a@example.com"}));
        assert!(user(&config("groups"), "https://idp", &silent, None).is_ok());
    }
}
