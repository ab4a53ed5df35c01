//! The fast path of `inspect_with`: one pass over a plain request body that fills the same
//! `Envelope` the serde visitors do, with the same key checks (`KeysSeen`, look-alike
//! members), without serde's machinery. It never refuses anything: whatever it does not read
//! plainly (an escape or any byte outside printable ASCII in a key or in a string it keeps,
//! a control character or a lone surrogate's `\u` escape in a string it drops, a number
//! other than a short integer, nesting past `MAX_DEPTH`, a batch, a message that is not an
//! object, any syntax error, any key the checks refuse) gives `None`, and the serde path
//! reads the body and decides. The strings it drops (most of them the arguments' values) may
//! hold any text and escapes, as tool calls' arguments often do. So what it accepts, the
//! serde path accepts the same way (a differential test in `jsonrpc.rs` holds it to that).

use std::borrow::Cow;

use super::envelope::{
    look_alike_member, Arguments, Captured, Envelope, KeysSeen, Params, ParamsValue, Scalar, Top,
    ENVELOPE_KEYS, META_PROTOCOL_VERSION, PARAMS_KEYS,
};

/// Deeper bodies go the serde path (its limit is 128).
const MAX_DEPTH: usize = 16;
/// Integers up to this many digits fit an `i64`; longer ones go the serde path.
const MAX_DIGITS: usize = 18;
// The digit fold in `integer` cannot overflow below 19 digits.
const _: () = assert!(MAX_DIGITS <= 18);

/// The envelope of a lone message, when the body is plain; `None`: read it the serde way.
pub(super) fn scan(body: &[u8], with_arguments: bool) -> Option<Top<'_>> {
    if with_arguments {
        return None;
    }
    let mut s = Scanner {
        text: "",
        b: body,
        i: 0,
    };
    s.ws();
    // Only an object is a lone message here (a batch, anything else goes the serde way at
    // once); then one UTF-8 check of the whole body (a word at a time over ASCII), so each
    // string is a slice of it, not checked again. A body that is not UTF-8 is the serde pass's
    // to refuse.
    if s.peek()? != b'{' {
        return None;
    }
    s.text = std::str::from_utf8(body).ok()?;
    let message = s.message()?;
    s.ws();
    (s.i == body.len()).then_some(Top::One(message))
}

/// How many bytes at the start of `rest` a plain string may hold: printable ASCII other than
/// `"` and `\\`. Eight bytes are tested at once while none of them stops the run (a long
/// argument would otherwise cost a test per byte, more than the serde pass's own skip); the
/// eight that hold the stop are then read one by one.
pub(crate) fn plain_run(rest: &[u8]) -> usize {
    run::<true>(rest)
}

/// How many bytes at the start of `rest` a string's text runs without a quote, an escape or a
/// control character: what a skipped string may hold between its escapes (the body was
/// checked UTF-8 once, so any other byte is text).
fn text_run(rest: &[u8]) -> usize {
    run::<false>(rest)
}

/// The run before the first `"`, `\` or byte below 0x20, and with `PRINTABLE` before the
/// first byte above 0x7e too: eight bytes at a time, then the stop's word byte by byte.
fn run<const PRINTABLE: bool>(rest: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Exact for "some byte of `v` is zero" (and below, "some byte is below 0x20"): a borrow
    // can only mark a byte above one that really matched.
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let stops_at = |c: u8| c == b'"' || c == b'\\' || c < 0x20 || (PRINTABLE && c > 0x7e);
    let mut at = 0;
    for chunk in rest.chunks_exact(8) {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let x = u64::from_le_bytes(bytes);
        let mut stops = (x.wrapping_sub(ONES * 0x20) & !x & HIGH)
            | has_zero(x ^ (ONES * u64::from(b'"')))
            | has_zero(x ^ (ONES * u64::from(b'\\')));
        if PRINTABLE {
            stops |= (x & HIGH) | has_zero(x ^ (ONES * 0x7f));
        }
        if stops != 0 {
            break;
        }
        at += 8;
    }
    let tail = rest.get(at..).unwrap_or_default();
    at + tail.iter().position(|&c| stops_at(c)).unwrap_or(tail.len())
}

struct Scanner<'a> {
    /// The body, checked UTF-8 once; `b` is its bytes.
    text: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// JSON's whitespace.
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// A string of printable ASCII without escapes: the input's own bytes.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let rest = self.b.get(start..)?;
        let len = plain_run(rest);
        // Only the closing quote ends a plain string; an escape or any other byte leaves the
        // body to the serde pass.
        if rest.get(len) != Some(&b'"') {
            return None;
        }
        self.i = start + len + 1;
        self.text.get(start..start + len)
    }

    /// A string only checked and dropped (serde's `Strict` never reads it): besides what
    /// `string` takes, any text (the body is UTF-8) and the escapes serde takes, surrogate
    /// pairs included (`json.dumps` writes an emoji so). A lone surrogate's `\u` escape and a
    /// control character go to the serde pass, which refuses them.
    fn skip_string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            self.i += text_run(self.b.get(self.i..)?);
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(());
                }
                b'\\' => self.escape()?,
                _ => return None,
            }
        }
    }

    /// `\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r`, `\t`, or a UTF-16 code unit's `\u` escape: one that
    /// is not a surrogate half, or a leading half followed by a trailing one's.
    fn escape(&mut self) -> Option<()> {
        self.eat(b'\\')?;
        match self.peek()? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
            b'u' => match self.code_unit()? {
                0xd800..=0xdbff => {
                    self.eat(b'\\')?;
                    if !(0xdc00..=0xdfff).contains(&self.code_unit()?) {
                        return None;
                    }
                }
                0xdc00..=0xdfff => return None,
                _ => {}
            },
            _ => return None,
        }
        Some(())
    }

    /// `u` and four hex digits: the code unit they name.
    fn code_unit(&mut self) -> Option<u32> {
        self.eat(b'u')?;
        let hex = self.b.get(self.i..self.i + 4)?;
        let unit = hex
            .iter()
            .try_fold(0_u32, |v, &h| Some(v * 16 + char::from(h).to_digit(16)?))?;
        self.i += 4;
        Some(unit)
    }

    /// `0` or `-?[1-9][0-9]*` of at most `MAX_DIGITS` digits (serde reads `-0` as a float).
    fn integer(&mut self) -> Option<serde_json::Number> {
        let negative = self.eat(b'-').is_some();
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        let digits = self.b.get(start..self.i)?;
        let first = *digits.first()?;
        if digits.len() > MAX_DIGITS
            || (first == b'0' && (digits.len() > 1 || negative))
            || matches!(self.peek(), Some(b'.' | b'e' | b'E'))
        {
            return None;
        }
        let value = digits
            .iter()
            .fold(0_u64, |v, d| v * 10 + u64::from(d - b'0'));
        Some(if negative {
            serde_json::Number::from(-i64::try_from(value).ok()?)
        } else {
            serde_json::Number::from(value)
        })
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// An object, each member handed to `member` (which must read its value); its keys
    /// checked as every object's are.
    fn object(
        &mut self,
        depth: usize,
        mut member: impl FnMut(&mut Self, &'a str, usize) -> Option<()>,
    ) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        let mut seen = KeysSeen::default();
        loop {
            self.ws();
            let key = self.string()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            member(self, key, depth + 1)?;
            seen.add(Cow::Borrowed(key)).ok()?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.eat(b'[')?;
        self.ws();
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            self.ws();
            self.skip(depth + 1)?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Any value, checked and dropped (serde's `Strict`).
    fn skip(&mut self, depth: usize) -> Option<()> {
        if self.peek()? == b'"' {
            return self.skip_string();
        }
        self.scalar(depth).map(drop)
    }

    /// Any value, reduced to what the checks ask of it (serde's `ScalarVisitor`).
    fn scalar(&mut self, depth: usize) -> Option<Scalar<'a>> {
        Some(match self.peek()? {
            b'{' => {
                self.object(depth, |s, _, d| s.skip(d))?;
                Scalar::Object
            }
            b'[' => {
                self.array(depth)?;
                Scalar::Array
            }
            b'"' => Scalar::Str(Cow::Borrowed(self.string()?)),
            b't' => {
                self.literal(b"true")?;
                Scalar::Bool
            }
            b'f' => {
                self.literal(b"false")?;
                Scalar::Bool
            }
            b'n' => {
                self.literal(b"null")?;
                Scalar::Null
            }
            _ => Scalar::Number(self.integer()?),
        })
    }

    /// A message (serde's `MessageSeed`): only an object is read here.
    fn message(&mut self) -> Option<Captured<'a>> {
        if self.peek()? != b'{' {
            return None;
        }
        let mut env = Envelope::default();
        self.object(0, |s, key, d| {
            match key {
                "jsonrpc" => env.jsonrpc = Some(s.scalar(d)?),
                "id" => env.id = Some(s.scalar(d)?),
                "method" => env.method = Some(s.scalar(d)?),
                "params" => env.params = Some(s.params(d)?),
                "result" | "error" => {
                    s.skip(d)?;
                    env.has_result_or_error = true;
                }
                other => {
                    if env.look_alike.is_none() {
                        env.look_alike = look_alike_member(other, ENVELOPE_KEYS);
                    }
                    s.skip(d)?;
                }
            }
            Some(())
        })?;
        Some(Captured::Object(env))
    }

    /// `params` (serde's `ParamsSeed`, its arguments only checked).
    fn params(&mut self, depth: usize) -> Option<ParamsValue<'a>> {
        match self.peek()? {
            b'{' => {
                let mut p = Params::default();
                self.object(depth, |s, key, d| {
                    match key {
                        "name" => p.name = Some(s.scalar(d)?),
                        "uri" => p.uri = Some(s.scalar(d)?),
                        "taskId" => p.task_id = Some(s.scalar(d)?),
                        "arguments" => {
                            p.arguments = Some(match s.scalar(d)? {
                                Scalar::Object => Arguments::Object(None),
                                _ => Arguments::Other,
                            })
                        }
                        "_meta" => p.meta_protocol_version = s.meta(d)?,
                        other => {
                            if p.look_alike.is_none() {
                                p.look_alike = look_alike_member(other, PARAMS_KEYS);
                            }
                            s.skip(d)?;
                        }
                    }
                    Some(())
                })?;
                Some(ParamsValue::Object(p))
            }
            b'[' => {
                self.array(depth)?;
                Some(ParamsValue::Array)
            }
            _ => {
                self.skip(depth)?;
                Some(ParamsValue::Other)
            }
        }
    }

    /// `params._meta` (serde's `MetaSeed`): its protocol version, when it is an object holding
    /// a string there.
    fn meta(&mut self, depth: usize) -> Option<Option<String>> {
        if self.peek()? != b'{' {
            self.skip(depth)?;
            return Some(None);
        }
        let mut version = None;
        self.object(depth, |s, key, d| {
            if key == META_PROTOCOL_VERSION {
                if let Scalar::Str(v) = s.scalar(d)? {
                    version = Some(v.into_owned());
                }
            } else {
                s.skip(d)?;
            }
            Some(())
        })?;
        Some(version)
    }
}

#[cfg(test)]
mod tests {
    use super::{plain_run, text_run};

    fn by_bytes(rest: &[u8]) -> usize {
        rest.iter()
            .position(|&c| c == b'"' || c == b'\\' || !(0x20..=0x7e).contains(&c))
            .unwrap_or(rest.len())
    }

    fn text_by_bytes(rest: &[u8]) -> usize {
        rest.iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
            .unwrap_or(rest.len())
    }

    /// Both word tests against their byte rules.
    fn both_stop_where_the_byte_rules_do(rest: &[u8]) {
        assert_eq!(plain_run(rest), by_bytes(rest), "plain {rest:?}");
        assert_eq!(text_run(rest), text_by_bytes(rest), "text {rest:?}");
    }

    /// Every byte value, at every place of runs of 0 to 33 bytes (none, one or several
    /// eight-byte words and a tail), ends the run where the byte-by-byte rule does: alone in
    /// its word, and again with a second stop three bytes after it.
    #[test]
    fn the_word_test_stops_where_the_byte_rule_does() {
        for len in 0..=33 {
            for at in 0..=len {
                for byte in 0..=u8::MAX {
                    let mut rest = vec![b'a'; len];
                    if let Some(b) = rest.get_mut(at) {
                        *b = byte;
                    }
                    both_stop_where_the_byte_rules_do(&rest);
                    if let Some(b) = rest.get_mut(at + 3) {
                        *b = b'"';
                    }
                    both_stop_where_the_byte_rules_do(&rest);
                }
            }
        }
        // Neighbours whose borrows could spill into each other.
        for a in 0..=u8::MAX {
            for b in [0x00, 0x1f, 0x20, 0x21, 0x22, 0x5c, 0x7e, 0x7f, 0x80, 0xff] {
                let rest = [b'x', a, b, b'y', b'z', a, b, b'w', b'q'];
                both_stop_where_the_byte_rules_do(&rest);
            }
        }
    }
}
