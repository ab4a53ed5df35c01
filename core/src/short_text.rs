//! Text kept without an allocation when it is short, as the values a warm request carries
//! almost always are: the header values the MCP judgement reads (`POST`, `application/json`,
//! `2025-06-18`, a UUID request id), the JSON-RPC method and the tool's name. Longer text goes
//! to the heap, so nothing is cut.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

/// Bytes as text, invalid UTF-8 replaced (never dropped), as `String::from_utf8_lossy`. Valid
/// text, as nearly every header value is, is borrowed after the standard check, which reads
/// ASCII a word at a time; `from_utf8_lossy` alone walks it a byte at a time.
pub fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Text up to this many bytes is kept inline (a UUID `x-request-id` is 36).
const INLINE: usize = 46;
// The inline length is kept in a byte.
const _: () = assert!(INLINE <= u8::MAX as usize);

#[derive(Clone, PartialEq, Eq)]
pub struct ShortText(Repr);

/// Private, so only `new` ever writes the inline bytes (what makes `as_str` sound).
#[derive(Clone, PartialEq, Eq)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl ShortText {
    pub fn new(text: &str) -> Self {
        let mut bytes = [0u8; INLINE];
        match bytes.get_mut(..text.len()) {
            Some(slot) => {
                slot.copy_from_slice(text.as_bytes());
                ShortText(Repr::Inline {
                    // At most INLINE, which fits a byte.
                    len: text.len() as u8,
                    bytes,
                })
            }
            None => ShortText(Repr::Heap(text.into())),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, bytes } => {
                let text = bytes.get(..usize::from(*len)).unwrap_or_default();
                // SAFETY: `new` copied these bytes from a whole `&str`, and `Repr` is private to
                // this file, where nothing else writes them: they are UTF-8. Read on every comparison of the warm path: checking again would cost
                // more than the allocation this type saves.
                unsafe { std::str::from_utf8_unchecked(text) }
            }
            Repr::Heap(text) => text,
        }
    }
}

impl Default for ShortText {
    fn default() -> Self {
        ShortText::new("")
    }
}

impl Deref for ShortText {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for ShortText {
    fn from(text: &str) -> Self {
        ShortText::new(text)
    }
}

impl From<String> for ShortText {
    fn from(text: String) -> Self {
        ShortText::new(&text)
    }
}

impl PartialEq<str> for ShortText {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ShortText {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for ShortText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ShortText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_inline_and_long_ones_whole_on_the_heap() {
        let id = "5f0c7a1e-3b1d-4a8e-9c61-2f1e8d7b6a10";
        assert!(matches!(ShortText::new(id).0, Repr::Inline { .. }));
        assert_eq!(ShortText::new(id).as_str(), id);
        let exact = "x".repeat(INLINE);
        assert!(matches!(ShortText::new(&exact).0, Repr::Inline { .. }));
        assert_eq!(&*ShortText::new(&exact), exact);
        let long = "y".repeat(INLINE + 1);
        assert!(matches!(ShortText::new(&long).0, Repr::Heap(_)));
        assert_eq!(&*ShortText::new(&long), long);
        let multibyte = "é".repeat(INLINE / 2);
        assert_eq!(ShortText::new(&multibyte).as_str(), multibyte);
        assert_eq!(ShortText::default().as_str(), "");
    }
}
