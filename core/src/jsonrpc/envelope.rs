//! What the one strict pass keeps of a JSON-RPC body, and the key checks every object gets:
//! shared by the serde visitors (`jsonrpc.rs`) and the scanner (`scan.rs`), which fill the same
//! envelope, so neither depends on the other's file.

use std::borrow::Cow;
use std::collections::HashSet;

use serde_json::Value;

use crate::names::{fold, is_folded};

/// The members of a message the filter reads, and of its `params`, each with its `fold`.
pub(super) const ENVELOPE_KEYS: &[(&str, &str)] = &[
    ("jsonrpc", "jsonrpc"),
    ("id", "id"),
    ("method", "method"),
    ("params", "params"),
    ("result", "result"),
    ("error", "error"),
];
pub(super) const PARAMS_KEYS: &[(&str, &str)] = &[
    ("name", "name"),
    ("arguments", "arguments"),
    ("uri", "uri"),
    ("taskId", "taskid"),
    ("_meta", "meta"),
];

/// A key that is not one the filter reads but that a lenient server would read as one
/// (`Method`, `params `, `na\u200bme`): the server would act on a member the filter never saw.
pub(super) fn look_alike_member(key: &str, known: &[(&str, &'static str)]) -> Option<String> {
    if known.iter().any(|(exact, _)| *exact == key) {
        return None;
    }
    let folded = fold(key);
    known.iter().find(|(_, f)| *f == folded).map(|(member, _)| {
        format!(
            "member {key:?} differs from {member:?} only by case, whitespace or invisible characters"
        )
    })
}

/// Where a request states its protocol version in the body (2026-07-28).
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

// Large on the stack on purpose: a box would be an allocation per request.
#[allow(clippy::large_enum_variant)]
pub(super) enum Top<'a> {
    One(Captured<'a>),
    Batch(Vec<Captured<'a>>),
}

/// A message as the parse kept it: an object's interesting members, or not an object.
#[allow(clippy::large_enum_variant)]
pub(super) enum Captured<'a> {
    Object(Envelope<'a>),
    Other,
}

#[derive(Default)]
pub(super) struct Envelope<'a> {
    pub(super) jsonrpc: Option<Scalar<'a>>,
    pub(super) id: Option<Scalar<'a>>,
    pub(super) method: Option<Scalar<'a>>,
    pub(super) params: Option<ParamsValue<'a>>,
    pub(super) has_result_or_error: bool,
    pub(super) look_alike: Option<String>,
}

/// A value reduced to what the checks ask of it.
pub(super) enum Scalar<'a> {
    Str(Cow<'a, str>),
    Number(serde_json::Number),
    Null,
    Bool,
    Array,
    Object,
}

/// `params` as the parse kept it: its members when it is an object (not boxed: one
/// allocation fewer per call).
pub(super) enum ParamsValue<'a> {
    Object(Params<'a>),
    Array,
    /// Any other value (refused).
    Other,
}

#[derive(Default)]
pub(super) struct Params<'a> {
    pub(super) name: Option<Scalar<'a>>,
    pub(super) uri: Option<Scalar<'a>>,
    pub(super) task_id: Option<Scalar<'a>>,
    pub(super) arguments: Option<Arguments>,
    pub(super) meta_protocol_version: Option<String>,
    pub(super) look_alike: Option<String>,
}

impl<'a> Params<'a> {
    pub(super) fn named(&self, key: &str) -> Option<&Scalar<'a>> {
        match key {
            "name" => self.name.as_ref(),
            "uri" => self.uri.as_ref(),
            "taskId" => self.task_id.as_ref(),
            _ => None,
        }
    }
}

pub(super) enum Arguments {
    /// An object: its tree when it was asked for.
    Object(Option<Value>),
    Other,
}

/// Objects up to this many keys are checked by comparing with each key before; bigger ones
/// switch to hash sets, so the check stays linear.
pub(super) const LINEAR_KEYS: usize = 8;

/// The keys of one object so far, and the folded forms of those that are not already folded
/// (usually none): a key that folds to another key of the object is a duplicate to a lenient
/// reader (Go's encoding/json matches keys case-insensitively, and the last one wins). Small
/// objects, nearly all of them, are checked without allocating.
pub(super) struct KeysSeen<'a> {
    pub(super) exact: [Cow<'a, str>; LINEAR_KEYS],
    pub(super) exact_len: usize,
    pub(super) exact_set: HashSet<Cow<'a, str>>,
    pub(super) folded: Vec<String>,
    pub(super) folded_set: HashSet<String>,
}

impl Default for KeysSeen<'_> {
    fn default() -> Self {
        Self {
            exact: std::array::from_fn(|_| Cow::Borrowed("")),
            exact_len: 0,
            exact_set: HashSet::new(),
            folded: Vec::new(),
            folded_set: HashSet::new(),
        }
    }
}

impl<'a> KeysSeen<'a> {
    fn has_exact(&self, key: &str) -> bool {
        if self.exact_set.is_empty() {
            self.exact[..self.exact_len].iter().any(|k| k == key)
        } else {
            self.exact_set.contains(key)
        }
    }

    fn has_folded(&self, key: &str) -> bool {
        if self.folded_set.is_empty() {
            self.folded.iter().any(|k| k == key)
        } else {
            self.folded_set.contains(key)
        }
    }

    pub(super) fn add(&mut self, key: Cow<'a, str>) -> Result<(), String> {
        if self.has_exact(&key) {
            return Err(format!("duplicate key {key:?}"));
        }
        let collides = if is_folded(&key) {
            self.has_folded(&key)
        } else {
            let f = fold(&key);
            let collides = self.has_exact(&f) || self.has_folded(&f);
            if self.folded_set.is_empty() && self.folded.len() < LINEAR_KEYS {
                self.folded.push(f);
            } else {
                self.folded_set.extend(self.folded.drain(..));
                self.folded_set.insert(f);
            }
            collides
        };
        if collides {
            return Err(format!(
                "key {key:?} differs from another key of the object only by case, whitespace or invisible characters"
            ));
        }
        if self.exact_set.is_empty() && self.exact_len < LINEAR_KEYS {
            self.exact[self.exact_len] = key;
            self.exact_len += 1;
        } else {
            let short = &mut self.exact[..self.exact_len];
            self.exact_set.extend(short.iter_mut().map(std::mem::take));
            self.exact_len = 0;
            self.exact_set.insert(key);
        }
        Ok(())
    }
}
