//! The `Content-Type` of an MCP request, read as the most lenient server behind the gateway
//! reads it. The official TypeScript SDK (and Express's body parsers) decode the body by its
//! `charset` parameter, `utf-7` included, before `JSON.parse`: `"+AHQ-ools/call"` is
//! `tools/call` to such a server and an unknown method to a reader of UTF-8 bytes. So a request
//! is judged only when every reader must decode its body as UTF-8 JSON: one `Content-Type`
//! (Envoy joins repeated ones with a comma), of type `application/json`, with at most one
//! `charset`, and that one UTF-8.

/// Why a `Content-Type` cannot be judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Another media type than `application/json` (or none).
    NotJson,
    /// Several types (two headers, or one joined with a comma), a repeated `charset`, or
    /// parameters that do not parse: servers disagree on what such a value means.
    Ambiguous(&'static str),
    /// A `charset` other than UTF-8: the server would decode other characters than the
    /// filter reads.
    Charset(String),
}

impl Problem {
    pub fn message(&self) -> String {
        match self {
            Problem::NotJson => "MCP requests must be Content-Type: application/json".into(),
            Problem::Ambiguous(why) => {
                format!("the Content-Type cannot be read one way only: {why}")
            }
            Problem::Charset(c) => format!(
                "the request body must be UTF-8: Content-Type charset {c:?} is not accepted"
            ),
        }
    }
}

/// Judges the request's `Content-Type` values (every header of that name, in order).
pub fn judge(values: &[&str]) -> Result<(), Problem> {
    let value = match values {
        [] => return Err(Problem::NotJson),
        [one] => *one,
        _ => return Err(Problem::Ambiguous("more than one Content-Type header")),
    };
    let mut types = Segments::new(value, b',');
    if types.by_ref().count() > 1 {
        return Err(Problem::Ambiguous("several media types joined with ','"));
    }
    if types.unterminated {
        return Err(Problem::Ambiguous("an unterminated quoted string"));
    }
    let mut parts = Segments::new(value, b';');
    let essence = parts.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(Problem::NotJson);
    }
    let mut charset: Option<String> = None;
    for param in parts {
        let param = param.trim();
        if param.is_empty() {
            // `application/json;` — tolerated by every parser.
            continue;
        }
        let Some((name, raw)) = param.split_once('=') else {
            return Err(Problem::Ambiguous("a parameter without a value"));
        };
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(Problem::Ambiguous("a parameter name that is not a token"));
        }
        let value = unquote(raw.trim())?;
        if name.eq_ignore_ascii_case("charset") {
            if charset.is_some() {
                return Err(Problem::Ambiguous("charset given twice"));
            }
            charset = Some(value);
        }
    }
    match charset {
        Some(c) if !c.trim().eq_ignore_ascii_case("utf-8") => Err(Problem::Charset(c)),
        _ => Ok(()),
    }
}

/// RFC 9110 `token` characters.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A parameter value: a token, or a quoted string with `\` escapes.
fn unquote(raw: &str) -> Result<String, Problem> {
    let Some(inner) = raw.strip_prefix('"') else {
        if raw.is_empty() || !raw.bytes().all(is_token_byte) {
            return Err(Problem::Ambiguous("a parameter value that is not a token"));
        }
        return Ok(raw.to_owned());
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    loop {
        match chars.next() {
            None => return Err(Problem::Ambiguous("an unterminated quoted string")),
            Some('"') => break,
            Some('\\') => match chars.next() {
                Some(c) => out.push(c),
                None => return Err(Problem::Ambiguous("an unterminated quoted string")),
            },
            Some(c) => out.push(c),
        }
    }
    if chars.next().is_some() {
        return Err(Problem::Ambiguous("text after a quoted string"));
    }
    Ok(out)
}

/// The parts of a value between `sep`s that are not inside a quoted string (no allocation:
/// this runs on every MCP request).
struct Segments<'a> {
    rest: Option<&'a str>,
    sep: u8,
    /// The last part ended inside a quoted string.
    unterminated: bool,
}

impl<'a> Segments<'a> {
    fn new(value: &'a str, sep: u8) -> Self {
        Self {
            rest: Some(value),
            sep,
            unterminated: false,
        }
    }
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, &b) in rest.as_bytes().iter().enumerate() {
            if escaped {
                escaped = false;
            } else if quoted && b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = !quoted;
            } else if !quoted && b == self.sep {
                self.rest = rest.get(i + 1..);
                return rest.get(..i);
            }
        }
        self.rest = None;
        self.unterminated = quoted;
        Some(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_in_utf8_is_accepted_in_every_spelling() {
        for ok in [
            "application/json",
            "Application/JSON",
            " application/json ",
            "application/json;",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "application/json; CHARSET=\"utf-8\"",
            "application/json; charset = utf-8",
            "application/json; charset=\"UTF-8\"; profile=\"x;y\"",
        ] {
            assert_eq!(judge(&[ok]), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn other_charsets_are_refused_in_every_spelling() {
        for bad in [
            "application/json; charset=utf-7",
            "application/json; charset=UTF-7",
            "application/json; CharSet=\"utf-7\"",
            "application/json; charset = utf-7 ",
            "application/json; charset=\"u\\tf-7\"",
            "application/json; charset=utf-16",
            "application/json; charset=utf-16le",
            "application/json; charset=iso-8859-1",
            "application/json; charset=utf8",
            "application/json; charset=\"\"",
        ] {
            assert!(
                matches!(judge(&[bad]), Err(Problem::Charset(_))),
                "{bad:?}: {:?}",
                judge(&[bad])
            );
        }
    }

    #[test]
    fn values_that_readers_could_take_two_ways_are_refused() {
        for bad in [
            "application/json; charset=utf-8; charset=utf-7",
            "application/json; charset=utf-7; charset=utf-8",
            "application/json; charset=utf-8; Charset=utf-8",
            "application/json, text/plain",
            "application/json; charset=utf-8,application/json; charset=utf-7",
            "application/json; charset",
            "application/json; charset=\"utf-8",
            "application/json; charset=\"utf-8\"x",
            "application/json; =utf-8",
            "application/json; charset=utf 8",
        ] {
            assert!(
                matches!(judge(&[bad]), Err(Problem::Ambiguous(_))),
                "{bad:?}: {:?}",
                judge(&[bad])
            );
        }
        assert!(matches!(
            judge(&["application/json", "application/json"]),
            Err(Problem::Ambiguous(_))
        ));
        // A comma inside a quoted parameter is not a second type.
        assert_eq!(judge(&["application/json; profile=\"a,b\""]), Ok(()));
    }

    #[test]
    fn other_media_types_are_not_json() {
        for bad in [
            "text/plain",
            "application/jsonx",
            "application/json-seq",
            "",
        ] {
            assert_eq!(judge(&[bad]), Err(Problem::NotJson), "{bad:?}");
        }
        assert_eq!(judge(&[]), Err(Problem::NotJson));
    }
}
