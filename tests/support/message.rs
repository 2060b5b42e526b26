//! Bytes-level helpers both roles share: splitting a head into its start line and fields, header
//! lookups, substring search, and deterministic payloads with a checksum. No I/O.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;

pub(super) fn first_line(head: &[u8]) -> String {
    let end = find(head, b"\r\n").unwrap_or(head.len());
    String::from_utf8_lossy(&head[..end]).into_owned()
}

pub(super) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Whether any header named `name` lists `token` (comma-separated, case-insensitive).
pub(super) fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Splits a head into its start line and its fields (no validation; tests assert on bytes).
pub(super) fn parse_head(head: &[u8]) -> (String, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let start = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(':') {
            Some((n, v)) => (n.to_owned(), v.trim().to_owned()),
            None => (l.to_owned(), String::new()),
        })
        .collect();
    (start, headers)
}

pub(super) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether `hay` contains `needle`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// A fast deterministic checksum for large bodies (std's SipHash is plenty fast for 10 MB).
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

/// `len` deterministic, non-repeating-looking bytes.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            // xorshift32: cheap even in a debug build, and no two 4 KiB pages alike.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}
