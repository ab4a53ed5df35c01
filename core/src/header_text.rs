//! A request header's value kept without an allocation when it is short, as the values the MCP
//! judgement reads almost always are (`POST`, `application/json`, `2025-06-18`, a UUID
//! request id). Longer values go to the heap, so nothing is cut.

use std::fmt;
use std::ops::Deref;

/// Values up to this many bytes are kept inline (a UUID `x-request-id` is 36).
const INLINE: usize = 46;

#[derive(Clone, PartialEq, Eq)]
pub enum HeaderText {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl HeaderText {
    pub fn new(text: &str) -> Self {
        let mut bytes = [0u8; INLINE];
        match bytes.get_mut(..text.len()) {
            Some(slot) => {
                slot.copy_from_slice(text.as_bytes());
                HeaderText::Inline {
                    // At most INLINE, which fits a byte.
                    len: text.len() as u8,
                    bytes,
                }
            }
            None => HeaderText::Heap(text.into()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // Always a whole `&str` copied in by `new`: the check cannot fail.
            HeaderText::Inline { len, bytes } => {
                std::str::from_utf8(bytes.get(..usize::from(*len)).unwrap_or_default())
                    .unwrap_or_default()
            }
            HeaderText::Heap(text) => text,
        }
    }
}

impl Default for HeaderText {
    fn default() -> Self {
        HeaderText::new("")
    }
}

impl Deref for HeaderText {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for HeaderText {
    fn from(text: &str) -> Self {
        HeaderText::new(text)
    }
}

impl From<String> for HeaderText {
    fn from(text: String) -> Self {
        HeaderText::new(&text)
    }
}

impl PartialEq<str> for HeaderText {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for HeaderText {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for HeaderText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for HeaderText {
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
        assert!(matches!(HeaderText::new(id), HeaderText::Inline { .. }));
        assert_eq!(HeaderText::new(id).as_str(), id);
        let exact = "x".repeat(INLINE);
        assert!(matches!(HeaderText::new(&exact), HeaderText::Inline { .. }));
        assert_eq!(&*HeaderText::new(&exact), exact);
        let long = "y".repeat(INLINE + 1);
        assert!(matches!(HeaderText::new(&long), HeaderText::Heap(_)));
        assert_eq!(&*HeaderText::new(&long), long);
        let multibyte = "é".repeat(INLINE / 2);
        assert_eq!(HeaderText::new(&multibyte).as_str(), multibyte);
        assert_eq!(HeaderText::default().as_str(), "");
    }
}
