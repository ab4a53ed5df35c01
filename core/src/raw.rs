//! Reading JSON strings without copying them: borrowed from the input unless they have escapes;
//! and reading a JSON object, only an object, into a struct.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, Visitor};
use serde::Deserialize;

/// The JSON object `json` read into `T`; `None` for anything else. serde reads a struct from an
/// array of its fields' values too (`["tok", 1, 2]`): an answer of the internal API is an
/// object with named fields, or it is not one.
pub fn object<'a, T: Deserialize<'a>>(json: &'a [u8]) -> Option<T> {
    let start = json
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))?;
    if json.get(start) != Some(&b'{') {
        return None;
    }
    serde_json::from_slice(json).ok()
}

/// A JSON string, borrowed from the input unless it has escapes.
pub struct Text<'a>(pub Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
        Ok(Text(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
        Ok(Text(Cow::Owned(v.to_owned())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug, PartialEq)]
    struct Pair {
        a: String,
        b: i64,
    }

    #[test]
    fn only_an_object_is_read_into_a_struct() {
        assert_eq!(
            object::<Pair>(b" \r\n\t{\"a\": \"x\", \"b\": 1}"),
            Some(Pair {
                a: "x".into(),
                b: 1
            })
        );
        // serde_json alone reads the array as the struct.
        assert!(serde_json::from_slice::<Pair>(br#"["x", 1]"#).is_ok());
        for bad in [
            &br#"["x", 1]"#[..],
            b"",
            b"   ",
            b"{",
            b"null",
            b"\x0c{\"a\":\"x\",\"b\":1}",
        ] {
            assert_eq!(object::<Pair>(bad), None, "{bad:?}");
        }
    }
}
