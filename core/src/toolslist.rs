//! Filters a `tools/list` result down to the tools the caller may call, for JSON responses and
//! for SSE streams (parsed event by event; chunks may split events and UTF-8 sequences anywhere).

use serde_json::Value;

/// Rewrites one JSON-RPC message if it is the result of `request_id`'s `tools/list`.
/// Returns `None` when the message is something else (pass it through untouched).
pub fn filter_message(
    message: &[u8],
    request_id: &Value,
    visible: &dyn Fn(&str) -> bool,
) -> Option<(Vec<u8>, usize)> {
    let mut v: Value = serde_json::from_slice(message).ok()?;
    if v.get("id") != Some(request_id) {
        return None;
    }
    let tools = v.get_mut("result")?.get_mut("tools")?.as_array_mut()?;
    let before = tools.len();
    tools.retain(|t| t.get("name").and_then(Value::as_str).is_some_and(visible));
    let removed = before - tools.len();
    serde_json::to_vec(&v).ok().map(|bytes| (bytes, removed))
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
