//! The request headers in one host call and one allocation: the host's serialized map, kept
//! as it came, with the filter's fields as ranges into it. (The SDK's `get_map_bytes` copies
//! every name and value into allocations of their own.)

use std::ops::Range;
use std::ptr::null_mut;

#[link(wasm_import_module = "env")]
extern "C" {
    // The ABI's `proxy_get_header_map_pairs`; the status is read as a number so that no value
    // the host returns can be an invalid enum.
    #[link_name = "proxy_get_header_map_pairs"]
    fn get_header_map_pairs(map_type: u32, data: *mut *mut u8, size: *mut usize) -> u32;
}

const REQUEST_HEADERS: u32 = 0;
const STATUS_OK: u32 = 0;

/// The host's serialization: a `u32` count, then a (`u32` name length, `u32` value length)
/// pair per header, then each name and value followed by a NUL byte (all little-endian).
pub struct HeaderBlock {
    bytes: Vec<u8>,
}

impl HeaderBlock {
    pub fn request() -> Self {
        let mut data: *mut u8 = null_mut();
        let mut size: usize = 0;
        // SAFETY: the host writes a buffer it allocated through this module's allocator
        // (`proxy_on_memory_allocate`, a `Vec<u8>` of exactly `size` bytes), which is
        // ours to own and free, as the SDK's own `get_map_bytes` does.
        let bytes = unsafe {
            if get_header_map_pairs(REQUEST_HEADERS, &mut data, &mut size) == STATUS_OK
                && !data.is_null()
            {
                Vec::from_raw_parts(data, size, size)
            } else {
                Vec::new()
            }
        };
        Self { bytes }
    }

    pub fn empty() -> Self {
        Self { bytes: Vec::new() }
    }

    #[cfg(test)]
    fn from_bytes(bytes: Vec<u8>) -> Self {
        Self { bytes }
    }

    pub fn get(&self, range: &Range<usize>) -> &[u8] {
        self.bytes.get(range.clone()).unwrap_or_default()
    }

    /// Every header as (name, range of the value). A malformed block yields what it can.
    pub fn pairs(&self) -> impl Iterator<Item = (&[u8], Range<usize>)> {
        let b = &self.bytes;
        let word = move |at: usize| -> Option<usize> {
            let w: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
            Some(u32::from_le_bytes(w) as usize)
        };
        let count = word(0).unwrap_or(0);
        let mut data = 4usize.saturating_add(count.saturating_mul(8));
        (0..count).map_while(move |i| {
            let name_len = word(4 + i * 8)?;
            let value_len = word(8 + i * 8)?;
            let name = b.get(data..data.checked_add(name_len)?)?;
            let value_start = data + name_len + 1;
            let value_end = value_start.checked_add(value_len)?;
            if value_end > b.len() {
                return None;
            }
            data = value_end + 1;
            Some((name, value_start..value_end))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serialize(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (n, v) in pairs {
            out.extend((n.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (n, v) in pairs {
            out.extend(n.as_bytes());
            out.push(0);
            out.extend(v.as_bytes());
            out.push(0);
        }
        out
    }

    #[test]
    fn reads_every_pair_in_order() {
        let block = HeaderBlock::from_bytes(serialize(&[
            (":method", "POST"),
            ("authorization", "Bearer a"),
            ("authorization", "Bearer b"),
            ("empty", ""),
        ]));
        let got: Vec<(String, String)> = block
            .pairs()
            .map(|(n, r)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(block.get(&r)).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (":method", "POST"),
                ("authorization", "Bearer a"),
                ("authorization", "Bearer b"),
                ("empty", ""),
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
    }

    #[test]
    fn a_truncated_block_yields_what_it_can_and_never_panics() {
        let full = serialize(&[(":path", "/mcp"), ("x", "y")]);
        for cut in 0..full.len() {
            let block = HeaderBlock::from_bytes(full[..cut].to_vec());
            assert!(block.pairs().count() <= 2);
        }
        let mut lying = full.clone();
        lying[0] = 200;
        assert!(HeaderBlock::from_bytes(lying).pairs().count() <= 2);
    }
}
