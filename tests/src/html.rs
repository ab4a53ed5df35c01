//! A deliberately small HTML form scanner: enough to play the browser against the token
//! service's login and consent pages without depending on their exact markup.

/// One `<input>` (or `<textarea>` / `<select>` treated as an input without a value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub name: String,
    pub value: String,
    /// Lower-cased `type` attribute (`text` when absent).
    pub kind: String,
}

/// A submit button (`<button>` or `<input type=submit>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Button {
    pub name: Option<String>,
    pub value: Option<String>,
    /// Visible text (for `<input type=submit>` its value).
    pub text: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    pub action: Option<String>,
    /// Lower-cased method, `get` when absent.
    pub method: String,
    pub inputs: Vec<Input>,
    pub buttons: Vec<Button>,
}

impl Form {
    pub fn has_password(&self) -> bool {
        self.inputs.iter().any(|i| i.kind == "password")
    }
}

/// Decodes the handful of entities that appear in attribute values.
pub fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        let Some(end) = rest.find(';').filter(|&e| e <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some('\u{a0}'),
            _ => {
                if let Some(hex) = entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                {
                    u32::from_str_radix(hex, 16).ok().and_then(char::from_u32)
                } else if let Some(dec) = entity.strip_prefix('#') {
                    dec.parse::<u32>().ok().and_then(char::from_u32)
                } else {
                    None
                }
            }
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

struct Tag {
    name: String,
    closing: bool,
    attrs: Vec<(String, Option<String>)>,
    /// Byte offset just after the tag's `>`.
    end: usize,
}

impl Tag {
    fn attr(&self, name: &str) -> Option<String> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| decode_entities(v.as_deref().unwrap_or("")))
    }
}

/// Parses the tag starting at `start` (which points at `<`).
fn parse_tag(html: &str, start: usize) -> Option<Tag> {
    let bytes = html.as_bytes();
    let mut i = start + 1;
    let closing = bytes.get(i) == Some(&b'/');
    if closing {
        i += 1;
    }
    let name_start = i;
    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'-') {
        i += 1;
    }
    if i == name_start {
        return None;
    }
    let name = html[name_start..i].to_ascii_lowercase();
    let mut attrs = Vec::new();
    loop {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
            i += 1;
        }
        if i >= bytes.len() {
            return None;
        }
        if bytes[i] == b'>' {
            return Some(Tag {
                name,
                closing,
                attrs,
                end: i + 1,
            });
        }
        let attr_start = i;
        while i < bytes.len()
            && !bytes[i].is_ascii_whitespace()
            && !matches!(bytes[i], b'=' | b'>' | b'/')
        {
            i += 1;
        }
        let attr_name = html[attr_start..i].to_ascii_lowercase();
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if bytes.get(i) == Some(&b'=') {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            let value = match bytes.get(i) {
                Some(&q @ (b'"' | b'\'')) => {
                    let vstart = i + 1;
                    let vend = vstart + html[vstart..].find(q as char)?;
                    i = vend + 1;
                    html[vstart..vend].to_owned()
                }
                _ => {
                    let vstart = i;
                    while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'>' {
                        i += 1;
                    }
                    html[vstart..i].to_owned()
                }
            };
            attrs.push((attr_name, Some(value)));
        } else if !attr_name.is_empty() {
            attrs.push((attr_name, None));
        } else {
            i += 1;
        }
    }
}

fn strip_tags(s: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    decode_entities(out.trim())
}

/// All forms in the document, in order. Inputs outside any form are ignored.
pub fn forms(html: &str) -> Vec<Form> {
    let mut forms = Vec::new();
    let mut current: Option<Form> = None;
    let mut pos = 0;
    while let Some(off) = html[pos..].find('<') {
        let start = pos + off;
        if html[start..].starts_with("<!--") {
            pos = html[start..]
                .find("-->")
                .map_or(html.len(), |e| start + e + 3);
            continue;
        }
        let Some(tag) = parse_tag(html, start) else {
            pos = start + 1;
            continue;
        };
        pos = tag.end;
        match (tag.name.as_str(), tag.closing) {
            ("script" | "style", false) => {
                let close = format!("</{}", tag.name);
                pos = html[pos..]
                    .to_ascii_lowercase()
                    .find(&close)
                    .map_or(html.len(), |e| pos + e);
            }
            ("form", false) => {
                if let Some(f) = current.take() {
                    forms.push(f);
                }
                current = Some(Form {
                    action: tag.attr("action"),
                    method: tag
                        .attr("method")
                        .unwrap_or_else(|| "get".into())
                        .to_ascii_lowercase(),
                    ..Form::default()
                });
            }
            ("form", true) => {
                if let Some(f) = current.take() {
                    forms.push(f);
                }
            }
            ("input", false) => {
                let Some(form) = current.as_mut() else {
                    continue;
                };
                let kind = tag
                    .attr("type")
                    .unwrap_or_else(|| "text".into())
                    .to_ascii_lowercase();
                if kind == "submit" {
                    form.buttons.push(Button {
                        name: tag.attr("name"),
                        value: tag.attr("value"),
                        text: tag.attr("value").unwrap_or_default(),
                    });
                } else if let Some(name) = tag.attr("name") {
                    if matches!(kind.as_str(), "checkbox" | "radio")
                        && tag.attr("checked").is_none()
                    {
                        continue;
                    }
                    form.inputs.push(Input {
                        name,
                        value: tag.attr("value").unwrap_or_default(),
                        kind,
                    });
                }
            }
            ("button", false) => {
                let Some(form) = current.as_mut() else {
                    continue;
                };
                let kind = tag
                    .attr("type")
                    .unwrap_or_else(|| "submit".into())
                    .to_ascii_lowercase();
                let text_end = html[pos..]
                    .to_ascii_lowercase()
                    .find("</button")
                    .map_or(html.len(), |e| pos + e);
                let text = strip_tags(&html[pos..text_end]);
                if kind == "submit" {
                    form.buttons.push(Button {
                        name: tag.attr("name"),
                        value: tag.attr("value"),
                        text,
                    });
                }
            }
            ("textarea" | "select", false) => {
                if let (Some(form), Some(name)) = (current.as_mut(), tag.attr("name")) {
                    form.inputs.push(Input {
                        name,
                        value: String::new(),
                        kind: tag.name.clone(),
                    });
                }
            }
            _ => {}
        }
    }
    if let Some(f) = current.take() {
        forms.push(f);
    }
    forms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_login_and_consent_forms() {
        let page = r#"<!doctype html><html><body>
          <!-- <form action="/nope"> -->
          <form method="POST" action="/login?x=1&amp;y=2">
            <input type="hidden" name="csrf" value="a&quot;b">
            <input type=hidden name=flow value=f123>
            <label>Email <input type="email" name="email" autofocus></label>
            <input type="password" name="password">
            <button type="submit">Sign <b>in</b></button>
          </form>
          <form method="post" action="/consent">
            <input type="hidden" name="csrf" value="c">
            <button name="decision" value="deny">Deny</button>
            <button name="decision" value="allow">Allow</button>
          </form></body></html>"#;
        let forms = forms(page);
        assert_eq!(forms.len(), 2);
        assert_eq!(forms[0].action.as_deref(), Some("/login?x=1&y=2"));
        assert_eq!(forms[0].method, "post");
        assert!(forms[0].has_password());
        assert_eq!(forms[0].inputs[0].value, "a\"b");
        assert_eq!(forms[0].inputs[1].value, "f123");
        assert_eq!(forms[0].buttons[0].text, "Sign in");
        assert_eq!(forms[1].buttons.len(), 2);
        assert_eq!(forms[1].buttons[1].value.as_deref(), Some("allow"));
    }
}
