//! The SSE `tools/list` filter (`toolslist::SseToolsFilter`): where the network splits a
//! stream (mid-event, mid-line, mid-UTF-8) never changes what the client receives or what is
//! removed.
//!
//! Input: two bytes picking the split points, then the stream.

use warden_core::toolslist::SseToolsFilter;

/// Runs the filter over a stream delivered in the given chunks.
fn filter(chunks: &[&[u8]]) -> Option<(Vec<u8>, usize)> {
    let hide = |name: &str| !name.starts_with("delete_");
    let mut filter = SseToolsFilter::new(serde_json::json!(1), 1 << 20);
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        out.extend(filter.push(chunk, i + 1 == chunks.len(), &hide).ok()?);
    }
    Some((out, filter.removed))
}

/// What `run` can decide: the stream passed whole, or with tools removed.
pub const OUTCOMES: &[&str] = &["kept", "removed"];

pub fn run(data: &[u8]) -> &'static str {
    let [a, b, stream @ ..] = data else {
        return "kept";
    };
    let (x, y) = {
        let (x, y) = (
            usize::from(*a).min(stream.len()),
            usize::from(*b).min(stream.len()),
        );
        (x.min(y), x.max(y))
    };
    let whole = filter(&[stream]);
    let split = filter(&[&stream[..x], &stream[x..y], &stream[y..]]);
    assert_eq!(whole, split, "split at {x}/{y}");
    match whole {
        // Only an unfinished event beyond the limit is refused, never a whole stream.
        None => panic!("a whole stream refused"),
        Some((_, 0)) => "kept",
        Some(_) => "removed",
    }
}

/// `tools/list` answers as servers stream them: one event, several, CRLF lines, comments.
pub fn seeds() -> Vec<Vec<u8>> {
    let list = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo","inputSchema":{"type":"object"}},{"name":"delete_all","inputSchema":{"type":"object"}}]}}"#;
    [
        format!("event: message\ndata: {list}\n\n"),
        format!("id: 1\r\ndata: {list}\r\n\r\n"),
        format!(": keep-alive\n\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}}\n\ndata: {list}\n\n"),
        format!("data: {}\ndata: {}\n\n", &list[..40], &list[40..]),
        "retry: 1000\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":-1,\"message\":\"ünïcode\"}}\n\n".into(),
    ]
    .iter()
    .enumerate()
    .map(|(i, s)| {
        let mut seed = vec![(i * 17 + 3) as u8, (i * 41 + 60) as u8];
        seed.extend_from_slice(s.as_bytes());
        seed
    })
    .collect()
}
