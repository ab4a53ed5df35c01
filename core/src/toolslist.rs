//! Filters a `tools/list` result down to the tools the caller may call, for JSON responses and
//! for SSE streams (parsed event by event; chunks may split events and UTF-8 sequences anywhere).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::rc::Rc;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::raw::Text;
use crate::token::Identity;

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
    // One pass over the answer finds the tools; a second reads each tool's name.
    let answer: Answer<'_> = serde_json::from_slice(message).ok()?;
    let id: Value = serde_json::from_str(answer.raw("id")?.get()).ok()?;
    if &id != request_id {
        return None;
    }
    // A repeated member counts as its last value, as clients read it.
    let result = answer.members.iter().find_map(|(k, m)| match m {
        Member::Result(r) if k == "result" => Some(r.as_ref()),
        _ => None,
    })??;
    let tools = result.members.iter().find_map(|(k, m)| match m {
        ResultMember::Tools(t) if k == "tools" => Some(t.as_ref()),
        _ => None,
    })??;
    let kept: Vec<&RawValue> = tools
        .iter()
        .copied()
        .filter(|tool| {
            // A tool whose name cannot be read unambiguously (not an object, no string
            // `name`, `name` twice) is not shown.
            serde_json::from_str::<ToolName<'_>>(tool.get()).is_ok_and(|t| visible(&t.name))
        })
        .collect();
    let removed = tools.len() - kept.len();

    let mut out = Vec::with_capacity(message.len());
    write_object(&mut out, &answer.members, |member, out| match member {
        Member::Raw(raw) => out.extend_from_slice(raw.get().as_bytes()),
        // Only one `result` is kept, and it is an object (checked above).
        Member::Result(None) => out.extend_from_slice(b"null"),
        Member::Result(Some(result)) => {
            write_object(out, &result.members, |member, out| match member {
                ResultMember::Raw(raw) => out.extend_from_slice(raw.get().as_bytes()),
                ResultMember::Tools(None) => out.extend_from_slice(b"null"),
                ResultMember::Tools(Some(_)) => {
                    out.push(b'[');
                    for (i, tool) in kept.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(tool.get().as_bytes());
                    }
                    out.push(b']');
                }
            })
        }
    });
    Some((out, removed))
}

/// A JSON-RPC answer read for `tools/list` filtering: every member as raw text, except
/// `result`, whose members are raw text except `tools`, whose elements are raw text.
struct Answer<'a> {
    members: Vec<(Cow<'a, str>, Member<'a>)>,
}

enum Member<'a> {
    Raw(&'a RawValue),
    /// `result`, when it is an object.
    Result(Option<ResultMembers<'a>>),
}

struct ResultMembers<'a> {
    members: Vec<(Cow<'a, str>, ResultMember<'a>)>,
}

enum ResultMember<'a> {
    Raw(&'a RawValue),
    /// `tools`, when it is an array.
    Tools(Option<Vec<&'a RawValue>>),
}

impl<'a> Answer<'a> {
    fn raw(&self, key: &str) -> Option<&'a RawValue> {
        self.members.iter().find_map(|(k, m)| match m {
            Member::Raw(raw) if k == key => Some(*raw),
            _ => None,
        })
    }
}

/// Keeps the last value of a repeated key, as `serde_json` reads it.
fn set_member<'a, T>(members: &mut Vec<(Cow<'a, str>, T)>, key: Cow<'a, str>, value: T) {
    match members.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => members.push((key, value)),
    }
}

fn write_object<T>(
    out: &mut Vec<u8>,
    members: &[(Cow<'_, str>, T)],
    mut value: impl FnMut(&T, &mut Vec<u8>),
) {
    out.push(b'{');
    for (i, (key, member)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing a string to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, key);
        out.push(b':');
        value(member, out);
    }
    out.push(b'}');
}

impl<'de> Deserialize<'de> for Answer<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Answer<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON-RPC answer")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Answer<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(Text(key)) = map.next_key()? {
                    let member = if key == "result" {
                        Member::Result(map.next_value_seed(IfKind(b'{', PhantomData))?)
                    } else {
                        Member::Raw(map.next_value()?)
                    };
                    set_member(&mut members, key, member);
                }
                Ok(Answer { members })
            }
        }
        d.deserialize_map(V)
    }
}

/// A member read as `T` when its raw text starts with `kind` (`{` or `[`), and skipped
/// otherwise: an earlier duplicate of another type must not stop the last one from being
/// filtered.
struct IfKind<T>(u8, PhantomData<T>);

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for IfKind<T> {
    type Value = Option<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let raw: &'de RawValue = Deserialize::deserialize(d)?;
        if raw.get().as_bytes().first() == Some(&self.0) {
            serde_json::from_str(raw.get())
                .map(Some)
                .map_err(serde::de::Error::custom)
        } else {
            Ok(None)
        }
    }
}

impl<'de> Deserialize<'de> for ResultMembers<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ResultMembers<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a result object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ResultMembers<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(Text(key)) = map.next_key()? {
                    let member = if key == "tools" {
                        ResultMember::Tools(map.next_value_seed(IfKind(b'[', PhantomData))?)
                    } else {
                        ResultMember::Raw(map.next_value()?)
                    };
                    set_member(&mut members, key, member);
                }
                Ok(ResultMembers { members })
            }
        }
        d.deserialize_map(V)
    }
}

/// The `tools/list` answers filtered last, per worker: a client that lists again, and gets the
/// same answer from its server, gets the same filtered answer without another parse. The
/// result depends only on the answer's bytes, the route and the caller's identity (the verified
/// token's, shared through the token cache), all compared exactly.
#[derive(Default)]
pub struct FilteredLists {
    entries: Vec<FilteredList>,
    next: usize,
}

struct FilteredList {
    route: usize,
    identity: Rc<Identity>,
    request_id: Value,
    answer: Vec<u8>,
    filtered: Vec<u8>,
    removed: usize,
}

/// Answers kept at once, and the largest kept (so the cache holds at most 16 × 2 × 256 KiB).
const MAX_LISTS: usize = 16;
const MAX_LIST_BYTES: usize = 256 * 1024;

impl FilteredLists {
    /// The filtered form of `answer` for this caller, if it was filtered before.
    pub fn get(
        &self,
        route: usize,
        identity: &Rc<Identity>,
        request_id: &Value,
        answer: &[u8],
    ) -> Option<(&[u8], usize)> {
        self.entries
            .iter()
            .find(|e| {
                e.route == route
                    && Rc::ptr_eq(&e.identity, identity)
                    && e.answer.len() == answer.len()
                    && &e.request_id == request_id
                    && same_bytes(&e.answer, answer)
            })
            .map(|e| (e.filtered.as_slice(), e.removed))
    }

    pub fn put(
        &mut self,
        route: usize,
        identity: &Rc<Identity>,
        request_id: &Value,
        answer: &[u8],
        filtered: &[u8],
        removed: usize,
    ) {
        if answer.len() > MAX_LIST_BYTES || filtered.len() > MAX_LIST_BYTES {
            return;
        }
        let entry = FilteredList {
            route,
            identity: Rc::clone(identity),
            request_id: request_id.clone(),
            answer: answer.to_vec(),
            filtered: filtered.to_vec(),
            removed,
        };
        if self.entries.len() < MAX_LISTS {
            self.entries.push(entry);
        } else {
            // Oldest first out.
            self.entries[self.next % MAX_LISTS] = entry;
            self.next = (self.next + 1) % MAX_LISTS;
        }
    }
}

/// Byte equality eight bytes at a time (a byte loop in Wasm otherwise).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tails_equal = a8.remainder() == b8.remainder();
    tails_equal
        && a8.zip(b8).all(|(x, y)| {
            let word = |c: &[u8]| {
                <[u8; 8]>::try_from(c)
                    .map(u64::from_ne_bytes)
                    .unwrap_or_default()
            };
            word(x) == word(y)
        })
}

#[derive(Deserialize)]
struct ToolName<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
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
    fn an_earlier_duplicate_of_another_type_does_not_stop_the_filter() {
        for list in [
            r#"{"jsonrpc":"2.0","id":3,"result":{"tools":null,"tools":[{"name":"delete_db"},{"name":"ok"}]}}"#,
            r#"{"jsonrpc":"2.0","id":3,"result":0,"result":{"tools":[{"name":"delete_db"},{"name":"ok"}]}}"#,
            r#"{"jsonrpc":"2.0","id":3,"result":{"tools":{},"tools":[{"name":"delete_db"},{"name":"ok"}]}}"#,
            r#"{"jsonrpc":"2.0","id":3,"result":[1],"result":{"tools":"x","tools":[{"name":"delete_db"},{"name":"ok"}]}}"#,
        ] {
            let (out, removed) = filter_message(list.as_bytes(), &3.into(), &visible)
                .unwrap_or_else(|| panic!("not filtered: {list}"));
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["result"]["tools"], json!([{"name": "ok"}]), "{list}");
            assert_eq!(removed, 1);
        }
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

    fn someone() -> Rc<Identity> {
        Rc::new(Identity {
            claims: serde_json::from_value(json!({"iss": "i", "sub": "s", "aud": "a"})).unwrap(),
            expires_at: 0,
            issued_at: None,
        })
    }

    #[test]
    fn a_filtered_list_is_reused_only_for_the_same_caller_route_id_and_answer() {
        let mut lists = FilteredLists::default();
        let (alice, bob) = (someone(), someone());
        let (out, removed) = filter_message(LIST.as_bytes(), &3.into(), &visible).unwrap();
        lists.put(0, &alice, &3.into(), LIST.as_bytes(), &out, removed);
        assert_eq!(
            lists.get(0, &alice, &3.into(), LIST.as_bytes()),
            Some((out.as_slice(), 1))
        );
        assert!(
            lists.get(0, &bob, &3.into(), LIST.as_bytes()).is_none(),
            "another identity"
        );
        assert!(
            lists.get(1, &alice, &3.into(), LIST.as_bytes()).is_none(),
            "another route"
        );
        assert!(
            lists.get(0, &alice, &4.into(), LIST.as_bytes()).is_none(),
            "another id"
        );
        let changed = LIST.replace("whoami", "whoamj");
        assert!(
            lists
                .get(0, &alice, &3.into(), changed.as_bytes())
                .is_none(),
            "another answer"
        );
        for i in 0..MAX_LISTS {
            lists.put(0, &bob, &json!(i), b"{}", b"{}", 0);
        }
        assert!(
            lists.get(0, &alice, &3.into(), LIST.as_bytes()).is_none(),
            "bounded"
        );
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
