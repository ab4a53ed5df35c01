//! Reading JSON without building a tree: an object's members as borrowed raw text, so only
//! what is needed is decoded, and what is passed on is copied byte for byte.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// An object's members in order, each value as its raw text. A repeated key keeps its last
/// value, as `serde_json` reads it.
pub struct Members<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Members<'a> {
    /// Reads an object's members; anything else is an error.
    pub fn parse(raw: &'a str) -> Option<Members<'a>> {
        serde_json::from_str(raw).ok()
    }

    /// Reads the members of a raw value, if it is an object.
    pub fn parse_raw(raw: &'a RawValue) -> Option<Members<'a>> {
        if kind(raw) == b'{' {
            Self::parse(raw.get())
        } else {
            None
        }
    }

    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_ref())
    }

    /// Writes the object; `replace` may write a member's value itself (returns true).
    pub fn write(&self, out: &mut Vec<u8>, mut replace: impl FnMut(&str, &mut Vec<u8>) -> bool) {
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
        while let Some(Text(key)) = map.next_key()? {
            let value: &'de RawValue = map.next_value()?;
            match members.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => members.push((key, value)),
            }
        }
        Ok(Members(members))
    }
}

/// A JSON string, borrowed from the input unless it has escapes.
pub struct Text<'a>(pub Cow<'a, str>);

impl<'a> Text<'a> {
    /// The string a raw value holds, if it is one.
    pub fn of(raw: &'a RawValue) -> Option<Cow<'a, str>> {
        serde_json::from_str::<Text<'a>>(raw.get())
            .ok()
            .map(|t| t.0)
    }
}

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

/// The first byte of a raw value: what kind of value it is.
pub fn kind(raw: &RawValue) -> u8 {
    raw.get().as_bytes().first().copied().unwrap_or_default()
}
