//! Filters a `tools/list` result down to the tools the caller may call, for JSON responses and
//! for SSE streams (parsed event by event; chunks may split events and UTF-8 sequences anywhere).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// Rewrites one JSON-RPC message if it is the result of `request_id`'s `tools/list`.
/// Returns `None` when the message is something else (pass it through untouched).
///
/// Only `result.tools` changes: every other member, and every tool kept, is copied byte for
/// byte from the upstream's answer, so nothing is parsed into a tree or re-encoded.
pub fn filter_message(
    message: &[u8],
    request_id: &Value,
    visible: &dyn Fn(&str) -> bool,
) -> Option<(Vec<u8>, usize)> {
    let top: Members<'_> = serde_json::from_slice(message).ok()?;
    let id: Value = serde_json::from_str(top.get("id")?.get()).ok()?;
    if &id != request_id {
        return None;
    }
    let result: Members<'_> = serde_json::from_str(top.get("result")?.get()).ok()?;
    let tools: Vec<&RawValue> = serde_json::from_str(result.get("tools")?.get()).ok()?;
    let before = tools.len();
    let kept: Vec<&RawValue> = tools
        .into_iter()
        .filter(|tool| {
            // A tool whose name cannot be read unambiguously (not an object, no string
            // `name`, `name` twice) is not shown.
            serde_json::from_str::<ToolName<'_>>(tool.get()).is_ok_and(|t| visible(&t.name))
        })
        .collect();
    let removed = before - kept.len();

    let mut out = Vec::with_capacity(message.len());
    top.write(&mut out, |key, out| {
        if key != "result" {
            return false;
        }
        result.write(out, |key, out| {
            if key != "tools" {
                return false;
            }
            out.push(b'[');
            for (i, tool) in kept.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(tool.get().as_bytes());
            }
            out.push(b']');
            true
        });
        true
    });
    Some((out, removed))
}

#[derive(Deserialize)]
struct ToolName<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

/// An object's members in order, each value as its raw text. A repeated key keeps its last
/// value, as `serde_json` reads it.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Members<'a> {
    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// Writes the object; `replace` may write a member's value itself (returns true).
    fn write(&self, out: &mut Vec<u8>, mut replace: impl FnMut(&str, &mut Vec<u8>) -> bool) {
        out.push(b'{');
        for (i, (key, value)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Writing a string to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, key);
            out.push(b':');
            if !replace(key, out) {
                out.extend_from_slice(value.get().as_bytes());
            }
        }
        out.push(b'}');
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(MembersVisitor)
    }
}

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Members<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
        let mut members: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::new();
        while let Some(Key(key)) = map.next_key()? {
            let value: &'de RawValue = map.next_value()?;
            match members.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => members.push((key, value)),
            }
        }
        Ok(Members(members))
    }
}

/// A member name, borrowed from the input unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }
}

/// Incremental SSE rewriter. Complete events are emitted as soon as their blank line arrives;
/// only the event in progress is held back, up to `max_event_bytes`.
#[derive(Debug)]
pub struct SseToolsFilter {
    carry: Vec<u8>,
    max_event_bytes: usize,
    request_id: Value,
    /// Tools hidden so far (for the counter and the log).
    pub removed: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTooLarge;

impl SseToolsFilter {
    pub fn new(request_id: Value, max_event_bytes: usize) -> Self {
        Self {
            carry: Vec::new(),
            max_event_bytes,
            request_id,
            removed: 0,
        }
    }

    /// Feeds a chunk; returns the bytes to send downstream now.
    pub fn push(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
        visible: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<u8>, EventTooLarge> {
        let mut carry = std::mem::take(&mut self.carry);
        carry.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(carry.len());
        let mut start = 0;
        while let Some(len) = event_end(&carry[start..]) {
            let event = &carry[start..start + len];
            match self.rewrite(event, visible) {
                Some(rewritten) => out.extend_from_slice(&rewritten),
                None => out.extend_from_slice(event),
            }
            start += len;
        }
        carry.drain(..start);
        self.carry = carry;
        if end_of_stream {
            // A stream ending mid-event: pass what is left as it is (nothing to parse).
            out.append(&mut self.carry);
        } else if self.carry.len() > self.max_event_bytes {
            return Err(EventTooLarge);
        }
        Ok(out)
    }

    fn rewrite(&mut self, event: &[u8], visible: &dyn Fn(&str) -> bool) -> Option<Vec<u8>> {
        let text = std::str::from_utf8(event).ok()?;
        let mut data = String::new();
        let mut other_lines = Vec::new();
        for line in text.split_inclusive('\n') {
            let bare = line.trim_end_matches(['\r', '\n']);
            if let Some(rest) = bare.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
            } else if !bare.is_empty() {
                other_lines.push(bare);
            }
        }
        let (filtered, removed) = filter_message(data.as_bytes(), &self.request_id, visible)?;
        self.removed += removed;
        let mut out = Vec::with_capacity(filtered.len() + 64);
        for line in other_lines {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&filtered);
        out.extend_from_slice(b"\n\n");
        Some(out)
    }
}

/// Length of the first complete event (through its terminating blank line), if any.
/// SSE lines end in `\n`, `\r\n` or `\r`.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    let mut line_empty = true;
    while i < buf.len() {
        let eol = match buf[i] {
            b'\n' => 1,
            b'\r' if buf.get(i + 1) == Some(&b'\n') => 2,
            // A lone `\r` at the chunk's end may be the first half of `\r\n`: wait for more.
            b'\r' if i + 1 == buf.len() => return None,
            b'\r' => 1,
            _ => {
                line_empty = false;
                i += 1;
                continue;
            }
        };
        if line_empty {
            return Some(i + eol);
        }
        line_empty = true;
        i += eol;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn visible(name: &str) -> bool {
        !name.starts_with("delete_")
    }

    const LIST: &str = r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"whoami","description":"héllo ✓"},{"name":"delete_db"}]}}"#;

    #[test]
    fn json_result_is_filtered() {
        let (out, removed) = filter_message(LIST.as_bytes(), &3.into(), &visible).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 1);
        assert_eq!(v["result"]["tools"][0]["name"], "whoami");
        assert_eq!(removed, 1);
        assert!(
            filter_message(LIST.as_bytes(), &4.into(), &visible).is_none(),
            "other ids pass"
        );
    }

    #[test]
    fn only_the_tools_change_and_everything_else_is_kept_as_sent() {
        let list = r#"{"jsonrpc":"2.0","id":"a\"b","result":{"tools":[{"name":"delete_db"},{"name":"x","inputSchema":{"type":"object","properties":{"q":{"type":"string"}}}},7,{"name":1},{"name":"delete_x","name":"y"},{"title":"none"}],"nextCursor":"c1","_meta":{"k\u00e9":[1,2.50]}}}"#;
        let (out, removed) = filter_message(list.as_bytes(), &json!("a\"b"), &visible).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"jsonrpc":"2.0","id":"a\"b","result":{"tools":[{"name":"x","inputSchema":{"type":"object","properties":{"q":{"type":"string"}}}}],"nextCursor":"c1","_meta":{"k\u00e9":[1,2.50]}}}"#,
        );
        assert_eq!(removed, 5, "unreadable tools are not shown");
    }

    #[test]
    fn a_repeated_member_is_read_as_its_last_value() {
        let list = r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"whoami"}],"tools":[{"name":"delete_db"},{"name":"ok"}]}}"#;
        let (out, removed) = filter_message(list.as_bytes(), &3.into(), &visible).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["result"]["tools"], json!([{"name": "ok"}]));
        assert_eq!(removed, 1);
    }

    #[test]
    fn other_messages_are_left_alone() {
        for other in [
            r#"[{"jsonrpc":"2.0","id":3,"result":{"tools":[]}}]"#,
            r#"{"jsonrpc":"2.0","id":3,"error":{"code":1,"message":"m"}}"#,
            r#"{"jsonrpc":"2.0","id":3,"result":{"tools":{}}}"#,
            r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[]}"#,
        ] {
            assert!(
                filter_message(other.as_bytes(), &3.into(), &visible).is_none(),
                "{other}"
            );
        }
    }

    #[test]
    fn sse_split_anywhere_including_mid_utf8() {
        let stream = format!(
            "event: message\nid: e1\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{{}}}}\n\nevent: message\r\ndata: {LIST}\r\n\r\n"
        );
        let bytes = stream.as_bytes();
        for split in 0..bytes.len() {
            for split2 in [split, (split + 7).min(bytes.len())] {
                let mut f = SseToolsFilter::new(3.into(), 1 << 20);
                let mut out = f.push(&bytes[..split], false, &visible).unwrap();
                out.extend(f.push(&bytes[split..split2], false, &visible).unwrap());
                out.extend(f.push(&bytes[split2..], true, &visible).unwrap());
                let text = String::from_utf8(out).unwrap();
                assert!(
                    text.contains("notifications/progress"),
                    "non-list events pass"
                );
                assert!(text.contains("whoami") && text.contains("héllo ✓"));
                assert!(!text.contains("delete_db"), "split at {split}: {text}");
                assert_eq!(f.removed, 1);
            }
        }
    }

    #[test]
    fn complete_events_are_not_held_back() {
        let mut f = SseToolsFilter::new(3.into(), 1 << 20);
        let out = f
            .push(
                b"data: {\"jsonrpc\":\"2.0\",\"method\":\"x\"}\n\ndata: {\"jso",
                false,
                &visible,
            )
            .unwrap();
        assert_eq!(out, b"data: {\"jsonrpc\":\"2.0\",\"method\":\"x\"}\n\n");
    }

    #[test]
    fn oversized_event_is_an_error() {
        let mut f = SseToolsFilter::new(3.into(), 16);
        assert_eq!(f.push(&[b'x'; 64], false, &visible), Err(EventTooLarge));
    }
}
