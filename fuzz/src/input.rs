//! Reading a fuzz input as fields: lines, the last field taking the rest of the bytes. Seeds
//! stay readable, and most mutations change one field while keeping the others.

use std::borrow::Cow;

pub struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self(data)
    }

    /// The next line, without its `\n` (empty once the input is used up).
    pub fn line(&mut self) -> &'a [u8] {
        match self.0.iter().position(|b| *b == b'\n') {
            Some(i) => {
                let (line, rest) = (&self.0[..i], &self.0[i + 1..]);
                self.0 = rest;
                line
            }
            None => std::mem::take(&mut self.0),
        }
    }

    /// The next line as text (bytes that are not UTF-8 replaced).
    pub fn text(&mut self) -> Cow<'a, str> {
        String::from_utf8_lossy(self.line())
    }

    /// Everything not read yet.
    pub fn rest(self) -> &'a [u8] {
        self.0
    }

    /// The rest, split into lines (none for an empty rest).
    pub fn lines(self) -> Vec<&'a [u8]> {
        if self.0.is_empty() {
            Vec::new()
        } else {
            self.0.split(|b| *b == b'\n').collect()
        }
    }
}

/// Flips bit `n` (modulo the length) of `bytes`.
pub fn flip_bit(bytes: &mut [u8], n: u64) {
    if bytes.is_empty() {
        return;
    }
    let bit = n % (bytes.len() as u64 * 8);
    bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
}

/// The words of a mode line (`sign k1 flip 12`), and the number after `key`, if any.
pub struct Words<'a>(Vec<&'a str>);

impl<'a> Words<'a> {
    pub fn new(line: &'a str) -> Self {
        Self(line.split_whitespace().collect())
    }

    pub fn first(&self) -> &'a str {
        self.0.first().copied().unwrap_or_default()
    }

    pub fn has(&self, word: &str) -> bool {
        self.0.contains(&word)
    }

    /// The word after `key` (`kid k2` → `k2`).
    pub fn after(&self, key: &str) -> Option<&'a str> {
        let i = self.0.iter().position(|w| *w == key)?;
        self.0.get(i + 1).copied()
    }

    pub fn number_after(&self, key: &str) -> Option<u64> {
        self.after(key)?.parse().ok()
    }

    /// The signed number after `key` (`now -5`).
    pub fn int_after(&self, key: &str) -> Option<i64> {
        self.after(key)?.parse().ok()
    }
}

/// Joins fields into an input the way `Fields` reads them back (for seeds).
pub fn join(fields: &[&[u8]]) -> Vec<u8> {
    fields.join(&b'\n')
}
