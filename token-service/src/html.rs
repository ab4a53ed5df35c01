//! The few HTML pages the service renders. Every interpolated value is escaped; every page
//! forbids framing (clickjacking) and caching.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Adds the headers every HTML page carries.
pub fn secure_headers(resp: &mut Response) {
    let h = resp.headers_mut();
    // No `form-action`: browsers apply it to the redirect that follows the login POST,
    // which goes to the client's redirect URI.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:26rem;margin:4rem auto;padding:0 1rem}\
label{display:block;margin-top:1rem}input{width:100%;padding:.4rem;box-sizing:border-box}\
button,a.button{margin-top:1.5rem;padding:.5rem 1.2rem}a.button{display:inline-block;border:1px solid #555;color:inherit;text-decoration:none}.error{color:#b00020}.muted{color:#555;font-size:.9rem}";

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let doc = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>",
        escape(title)
    );
    let mut resp = (status, Html(doc)).into_response();
    secure_headers(&mut resp);
    resp
}

pub fn error_page(status: StatusCode, message: &str) -> Response {
    page(
        status,
        "Sign-in error",
        &format!(
            "<h1>Sign-in error</h1><p class=\"error\">{}</p>\
             <p class=\"muted\">Return to the application and try again.</p>",
            escape(message)
        ),
    )
}

/// A plain notice (signed out, …).
pub fn info_page(status: StatusCode, title: &str, message: &str) -> Response {
    page(
        status,
        title,
        &format!("<h1>{}</h1><p>{}</p>", escape(title), escape(message)),
    )
}

/// Asks before ending the sign-in session: a page any site can send a browser to, so the
/// sign-out itself is this form's `POST`, with a CSRF token.
pub fn sign_out_form(action: &str, csrf: &str) -> Response {
    page(
        StatusCode::OK,
        "Sign out",
        &format!(
            "<h1>Sign out?</h1><p>You are signed in to the MCP gateway. Signing out ends the \
             sign-in and every application session that came with it.</p>\
             <form method=\"post\" action=\"{}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Sign out</button></form>",
            escape(action),
            escape(csrf)
        ),
    )
}

/// The issuer's sign-out: everything the user holds ends.
pub fn sign_out_everywhere_form(action: &str, csrf: &str) -> Response {
    page(
        StatusCode::OK,
        "Sign out",
        &format!(
            "<h1>Sign out everywhere?</h1><p>You are signed in to the MCP gateway. Signing out \
             ends every sign-in, application session and MCP client access you hold, on every \
             device: each must sign in again.</p>\
             <form method=\"post\" action=\"{}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Sign out everywhere</button></form>",
            escape(action),
            escape(csrf)
        ),
    )
}

pub struct LoginForm<'a> {
    pub action: &'a str,
    pub flow_id: &'a str,
    pub csrf: &'a str,
    pub client_name: &'a str,
    pub redirect_host: &'a str,
    pub email: &'a str,
    pub error: Option<&'a str>,
    /// The organisation's identity provider: its name and where its sign-in starts.
    pub idp: Option<(&'a str, &'a str)>,
    /// The issuer's sign-out page.
    pub sign_out: &'a str,
}

/// The link every sign-in page carries to the issuer's sign-out.
fn sign_out_link(href: &str) -> String {
    format!(
        "<p class=\"muted\"><a id=\"sign-out\" href=\"{}\">Sign out of the MCP gateway</a></p>",
        escape(href)
    )
}

pub fn login_form(status: StatusCode, f: &LoginForm<'_>) -> Response {
    let error = f
        .error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    let idp = f
        .idp
        .map(|(name, href)| {
            format!(
                "<p><a class=\"button\" id=\"idp-sign-in\" href=\"{}\">Sign in with {}</a></p>\
                 <p class=\"muted\">or with a local account:</p>",
                escape(href),
                escape(name)
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<h1>Sign in</h1>\
         <p class=\"muted\"><strong>{client}</strong> ({host}) is asking to access an MCP server on your behalf.</p>\
         {error}{idp}\
         <form method=\"post\" action=\"{action}\">\
         <input type=\"hidden\" name=\"flow\" value=\"{flow}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label>Email<input type=\"email\" name=\"email\" value=\"{email}\" autocomplete=\"username\" required autofocus></label>\
         <label>Password<input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>\
         <button type=\"submit\">Sign in</button></form>{sign_out}",
        client = escape(f.client_name),
        host = escape(f.redirect_host),
        action = escape(f.action),
        flow = escape(f.flow_id),
        csrf = escape(f.csrf),
        email = escape(f.email),
        sign_out = sign_out_link(f.sign_out),
    );
    page(status, "Sign in", &body)
}

pub struct ConsentForm<'a> {
    pub action: &'a str,
    pub flow_id: &'a str,
    pub csrf: &'a str,
    pub client_name: &'a str,
    pub client_id: &'a str,
    /// Registered by the operator (true) or through DCR (false: the name is self-asserted).
    pub verified: bool,
    /// The host serving the client's metadata document (CIMD), when it is identified by one:
    /// the name is that host's word.
    pub document_host: Option<&'a str>,
    pub redirect_host: &'a str,
    pub resource: &'a str,
    pub scopes: &'a [String],
    pub email: &'a str,
    /// The upstream provider this server needs an account at (`upstream_oauth2`), if any.
    pub upstream: Option<&'a str>,
    /// The issuer's sign-out page.
    pub sign_out: &'a str,
}

pub fn consent_form(status: StatusCode, f: &ConsentForm<'_>) -> Response {
    let unverified = match f.document_host {
        _ if f.verified => String::new(),
        Some(host) => {
            let elsewhere = if host.eq_ignore_ascii_case(f.redirect_host) {
                String::new()
            } else {
                format!(
                    "<p class=\"error\" id=\"redirect-elsewhere\">Warning: you will be sent back to \
                     <strong>{redirect}</strong>, not to <strong>{host}</strong>, the host that \
                     identifies this application. Approve only if you expect that.</p>",
                    redirect = escape(f.redirect_host),
                    host = escape(host),
                )
            };
            format!(
                "<p class=\"muted\" id=\"document-host\">This application is identified by \
                 <strong>{host}</strong>, which serves its description; the name is that \
                 site's word.</p>{elsewhere}",
                host = escape(host),
            )
        }
        None => "<p class=\"error\">This application registered itself: its name is <strong>unverified</strong>. \
         Approve only if you started this sign-in from an application you trust.</p>"
            .to_owned(),
    };
    let label = match f.document_host {
        _ if f.verified => String::new(),
        Some(host) => format!(" (from {})", escape(host)),
        None => " (unverified)".to_owned(),
    };
    let scopes = if f.scopes.is_empty() {
        "<li>access to the MCP server (no specific scopes)</li>".to_owned()
    } else {
        f.scopes
            .iter()
            .map(|s| format!("<li><code>{}</code></li>", escape(s)))
            .collect::<String>()
    };
    let upstream = match f.upstream {
        Some(p) => format!(
            "<p>This server acts with your own account at <strong>{}</strong>: after you \
             approve, you will be sent there to connect it.</p>",
            escape(p)
        ),
        None => String::new(),
    };
    // Deny comes first so that it is the form's default (Enter) action.
    let body = format!(
        "<h1>Allow access?</h1>\
         <p><strong>{client}</strong>{label} wants to access an MCP server on your behalf.</p>\
         {unverified}\
         <p class=\"muted\">Client ID: <code>{client_id}</code><br>\
         You will be sent back to: <strong>{host}</strong><br>\
         Signed in as: {email}</p>\
         <p>Resource: <code>{resource}</code></p>\
         <p>Scopes:</p><ul>{scopes}</ul>\
         {upstream}\
         <form method=\"post\" action=\"{action}\">\
         <input type=\"hidden\" name=\"flow\" value=\"{flow}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button> \
         <button type=\"submit\" name=\"decision\" value=\"approve\">Approve</button></form>\
         {sign_out}",
        client = escape(f.client_name),
        label = label,
        client_id = escape(f.client_id),
        host = escape(f.redirect_host),
        email = escape(f.email),
        resource = escape(f.resource),
        action = escape(f.action),
        flow = escape(f.flow_id),
        csrf = escape(f.csrf),
        sign_out = sign_out_link(f.sign_out),
    );
    page(status, "Allow access?", &body)
}
