//! The table's candidate index: bitsets over the rules, built once per table, that narrow one
//! decision to the rules that could match before any rule is looked at. It never decides a
//! fault (`table.rs`) and never rejects a rule its matchers would accept: a false positive only
//! costs the rule's own checks.
//!
//! Each dimension holds the rules it does not constrain and, per key, the rules that need the
//! request to produce that key:
//! - **method**: a rule's `method=` (packed; exact);
//! - **path prefix**: the first (up to eight) bytes of a rule's `path^=` or `path=`, hashed with
//!   their length; the request looks up its path's prefix of each length some rule uses;
//! - **value**: a rule's first `header.NAME=` or `host=`, hashed with the field; the request
//!   looks up the value of each indexed field it carries (each line of a repeated header);
//! - **header names**: every header name a rule's matchers need (64-bit name filter); the request
//!   removes the rules of each name it lacks;
//! - **path bytes**: every byte of a rule's `path*=` and `path$=` needles; the request removes
//!   the rules of each such byte its path lacks.
//!
//! Per request that costs one pass over the path, a few binary searches and, per rule word, a
//! few AND/OR: with none of 64 rules matching, no rule is looked at.

use httparse::Header;

use super::matcher::{Probe, RequestView, name_bit, pack_method, pack8};
use super::rule::{FaultRule, Field, Test};

/// Most keys one request looks up in one dimension; beyond it the dimension admits every rule.
const MAX_HITS: usize = 8;

/// Longest path prefix the prefix dimension keys on (one packed word).
const PREFIX_BYTES: usize = 8;

/// Multiplier of the index's hashes (the golden ratio in 64 bits).
const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// Bytes 0x20 each: OR-ed into a word of host bytes, folds ASCII letters (and a few other bytes,
/// a false positive at worst).
const FOLD: u64 = 0x2020_2020_2020_2020;

/// One keyed dimension.
#[derive(Debug, Clone)]
struct Keyed {
    /// Rules the dimension does not constrain.
    free: Box<[u64]>,
    /// Distinct keys, sorted.
    keys: Box<[u64]>,
    /// Per key, `words` words: the rules needing it.
    sets: Box<[u64]>,
}

impl Keyed {
    /// The dimension of `keys`, one per rule (`None`: not constrained).
    fn new(words: usize, keys: &[Option<u64>]) -> Keyed {
        let mut distinct: Vec<u64> = keys.iter().flatten().copied().collect();
        distinct.sort_unstable();
        distinct.dedup();
        let mut free = vec![0u64; words];
        let mut sets = vec![0u64; distinct.len() * words];
        for (index, key) in keys.iter().enumerate() {
            let (word, bit) = (index / 64, 1u64 << (index % 64));
            match key {
                None => free[word] |= bit,
                Some(key) => {
                    let at = distinct
                        .binary_search(key)
                        .expect("every key was collected");
                    sets[at * words + word] |= bit;
                }
            }
        }
        Keyed {
            free: free.into(),
            keys: distinct.into(),
            sets: sets.into(),
        }
    }

    /// No rule is constrained.
    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Records the request's `key`, when some rule needs it.
    #[inline]
    fn look_up(&self, key: u64, hits: &mut Hits) {
        if let Ok(at) = self.keys.binary_search(&key) {
            hits.push(at);
        }
    }

    /// Word `word` of the rules admitted by `hits` (not overflowed).
    #[inline]
    fn admitted(&self, word: usize, words: usize, hits: &Hits) -> u64 {
        let found = &hits.at[..usize::from(hits.len)];
        found.iter().fold(self.free[word], |set, &at| {
            set | self.sets[usize::from(at) * words + word]
        })
    }
}

/// The keys one request hit in one dimension.
#[derive(Debug, Clone, Copy)]
struct Hits {
    len: u8,
    /// More than [`MAX_HITS`]: admit every rule.
    overflow: bool,
    at: [u16; MAX_HITS],
}

impl Hits {
    const NONE: Hits = Hits {
        len: 0,
        overflow: false,
        at: [0; MAX_HITS],
    };

    /// Every rule is admitted (the dimension constrains none, or the request is not indexed).
    const ALL: Hits = Hits {
        overflow: true,
        ..Hits::NONE
    };

    #[inline]
    fn push(&mut self, at: usize) {
        match self.at.get_mut(usize::from(self.len)) {
            Some(slot) => {
                // A table holds at most `MAX_RULES` (4096) rules, so a key index fits.
                *slot = at as u16;
                self.len += 1;
            }
            None => self.overflow = true,
        }
    }
}

/// A field the value dimension keys on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ValueField {
    /// The host without its port, ASCII case folded.
    Host,
    /// Header lines with this lowercase name, values as sent.
    Header {
        name: Box<[u8]>,
        bit: u64,
        fold_exact: bool,
    },
}

/// What one request produced in each dimension; computed once per decision by
/// [`Index::look_up`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Lookup {
    method: Hits,
    prefix: Hits,
    value: Hits,
    /// Required header-name bits the request lacks.
    absent_names: u64,
    /// Required path bytes the request's path lacks.
    absent_bytes: [u64; 4],
}

/// The candidate index of one table.
#[derive(Debug, Clone)]
pub(super) struct Index {
    /// Words per rule set: `ceil(rules / 64)`.
    words: usize,
    /// Every rule.
    all: Box<[u64]>,
    /// No dimension constrains any rule: every rule is a candidate, nothing is looked up.
    trivial: bool,
    method: Keyed,
    prefix: Keyed,
    /// Bit `n - 1` set: some rule's prefix key is `n` bytes long.
    prefix_lengths: u8,
    value: Keyed,
    /// The value dimension's fields; a key hashes the field's position with the value.
    value_fields: Box<[ValueField]>,
    /// Header-name bits some rule requires.
    name_bits: u64,
    /// Per header-name bit (64 entries): the rules requiring it.
    by_name_bit: Box<[Box<[u64]>]>,
    /// Path bytes some rule requires.
    bytes_used: [u64; 4],
    /// Per byte value (256 entries, empty when unused): the rules requiring it.
    by_byte: Box<[Box<[u64]>]>,
}

impl Index {
    /// The index of `rules`, in table order.
    pub(super) fn new(rules: &[FaultRule]) -> Index {
        let words = rules.len().div_ceil(64);
        let empty = || vec![0u64; words].into_boxed_slice();
        let mut all = empty();
        let mut methods = Vec::with_capacity(rules.len());
        let mut prefixes = Vec::with_capacity(rules.len());
        let mut prefix_lengths = 0u8;
        let mut values = Vec::with_capacity(rules.len());
        let mut value_fields: Vec<ValueField> = Vec::new();
        let mut name_bits = 0;
        let mut by_name_bit: Vec<Box<[u64]>> = (0..64).map(|_| empty()).collect();
        let mut bytes_used = [0u64; 4];
        let mut by_byte: Vec<Box<[u64]>> = (0..256).map(|_| Box::default()).collect();
        for (index, rule) in rules.iter().enumerate() {
            let (word, bit) = (index / 64, 1u64 << (index % 64));
            all[word] |= bit;
            let (mut method, mut prefix, mut value) = (None, None, None);
            for m in &rule.matchers {
                match (&m.field, &m.test) {
                    (Field::Method, Test::Equal(want)) if method.is_none() => {
                        method = Some(pack_method(want)).filter(|&packed| packed != 0);
                    }
                    (Field::Path, Test::Equal(want) | Test::Prefix(want))
                        if prefix.is_none() && !want.is_empty() =>
                    {
                        let n = want.len().min(PREFIX_BYTES);
                        prefix_lengths |= 1 << (n - 1);
                        prefix = Some(prefix_key(n, pack8(&want[..n])));
                    }
                    (Field::Path, Test::Contains(needle) | Test::Suffix(needle)) => {
                        for &b in needle {
                            bytes_used[usize::from(b / 64)] |= 1 << (b % 64);
                            let set = &mut by_byte[usize::from(b)];
                            if set.is_empty() {
                                *set = empty();
                            }
                            set[word] |= bit;
                        }
                    }
                    (Field::Host, Test::Equal(want)) if value.is_none() => {
                        let field = field_position(&mut value_fields, ValueField::Host);
                        value = Some(value_key(field, want, true));
                    }
                    (Field::Header(name), Test::Equal(want)) if value.is_none() => {
                        let lower = name.to_ascii_lowercase();
                        let field = field_position(
                            &mut value_fields,
                            ValueField::Header {
                                fold_exact: !lower.contains(['^', '~']),
                                bit: name_bit(lower.as_bytes()),
                                name: lower.into_bytes().into(),
                            },
                        );
                        value = Some(value_key(field, want, false));
                    }
                    _ => {}
                }
                if let Field::Header(name) = &m.field {
                    let names = name_bit(name.as_bytes());
                    name_bits |= names;
                    by_name_bit[names.trailing_zeros() as usize][word] |= bit;
                }
            }
            methods.push(method);
            prefixes.push(prefix);
            values.push(value);
        }
        let (method, prefix, value) = (
            Keyed::new(words, &methods),
            Keyed::new(words, &prefixes),
            Keyed::new(words, &values),
        );
        Index {
            words,
            all,
            trivial: method.is_empty()
                && prefix.is_empty()
                && value.is_empty()
                && name_bits == 0
                && bytes_used == [0; 4],
            method,
            prefix,
            prefix_lengths,
            value,
            value_fields: value_fields.into(),
            name_bits,
            by_name_bit: by_name_bit.into(),
            bytes_used,
            by_byte: by_byte.into(),
        }
    }

    /// Words per rule set.
    pub(super) fn words(&self) -> usize {
        self.words
    }

    /// What `view` produces in each dimension.
    #[inline]
    pub(super) fn look_up(&self, view: &RequestView<'_>, probe: &Probe<'_>) -> Lookup {
        let mut lookup = Lookup {
            method: Hits::ALL,
            prefix: Hits::ALL,
            value: Hits::ALL,
            absent_names: self.name_bits & !probe.names(),
            absent_bytes: [0; 4],
        };
        if self.trivial {
            return lookup;
        }
        if !self.method.is_empty() {
            lookup.method = Hits::NONE;
            self.method.look_up(probe.method(), &mut lookup.method);
        }
        let path = probe.path();
        if !self.prefix.is_empty() {
            lookup.prefix = Hits::NONE;
            let mut lengths = self.prefix_lengths;
            while lengths != 0 {
                let n = lengths.trailing_zeros() as usize + 1;
                lengths &= lengths - 1;
                if path.len() < n {
                    break;
                }
                let mask = if n == PREFIX_BYTES {
                    u64::MAX
                } else {
                    (1 << (8 * n)) - 1
                };
                self.prefix
                    .look_up(prefix_key(n, probe.path8() & mask), &mut lookup.prefix);
            }
        }
        if !self.value.is_empty() {
            lookup.value = Hits::NONE;
            for (field, value_field) in self.value_fields.iter().enumerate() {
                match value_field {
                    ValueField::Host => self
                        .value
                        .look_up(value_key(field, view.hostname(), true), &mut lookup.value),
                    ValueField::Header {
                        name,
                        bit,
                        fold_exact,
                    } => {
                        let headers: &[Header<'_>] = view.headers;
                        probe.find_header(headers, name, *bit, *fold_exact, |value| {
                            self.value
                                .look_up(value_key(field, value, false), &mut lookup.value);
                            false
                        });
                    }
                }
            }
        }
        if self.bytes_used != [0; 4] {
            let mut present = [0u64; 4];
            for &b in path {
                present[usize::from(b / 64)] |= 1 << (b % 64);
            }
            for (absent, (used, present)) in lookup
                .absent_bytes
                .iter_mut()
                .zip(self.bytes_used.iter().zip(present))
            {
                *absent = used & !present;
            }
        }
        lookup
    }

    /// Word `word` of the candidate set: the rules every dimension admits. Out of line, so
    /// that a decision's loop over the candidates stays small.
    #[inline(never)]
    pub(super) fn candidates(&self, word: usize, lookup: &Lookup) -> u64 {
        let mut set = self.all[word];
        if self.trivial {
            return set;
        }
        let words = self.words;
        for (dimension, hits) in [
            (&self.method, &lookup.method),
            (&self.prefix, &lookup.prefix),
            (&self.value, &lookup.value),
        ] {
            if !dimension.is_empty() && !hits.overflow {
                set &= dimension.admitted(word, words, hits);
            }
        }
        let mut absent = lookup.absent_names;
        while absent != 0 && set != 0 {
            set &= !self.by_name_bit[absent.trailing_zeros() as usize][word];
            absent &= absent - 1;
        }
        for (base, &absent) in lookup.absent_bytes.iter().enumerate() {
            let mut absent = absent;
            while absent != 0 && set != 0 {
                set &= !self.by_byte[base * 64 + absent.trailing_zeros() as usize][word];
                absent &= absent - 1;
            }
        }
        set
    }
}

/// The position of `field` in `fields`, appending it when new.
fn field_position(fields: &mut Vec<ValueField>, field: ValueField) -> usize {
    match fields.iter().position(|f| *f == field) {
        Some(at) => at,
        None => {
            fields.push(field);
            fields.len() - 1
        }
    }
}

/// The prefix dimension's key of the first `len` path bytes, packed.
#[inline]
fn prefix_key(len: usize, packed: u64) -> u64 {
    (packed ^ len as u64).wrapping_mul(MIX).rotate_left(31) ^ len as u64
}

/// The value dimension's key of `value` in field `field` (`fold`: ASCII case-insensitively).
#[inline]
fn value_key(field: usize, value: &[u8], fold: bool) -> u64 {
    let fold = if fold { FOLD } else { 0 };
    let seed = (field as u64 + 1).wrapping_mul(MIX) ^ value.len() as u64;
    value.chunks(8).fold(seed, |hash, chunk| {
        (hash.rotate_left(23) ^ (pack8(chunk) | fold)).wrapping_mul(MIX)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(specs: &[&str]) -> Index {
        let rules: Vec<FaultRule> = specs.iter().map(|s| s.parse().unwrap()).collect();
        Index::new(&rules)
    }

    #[test]
    fn candidates_table() {
        let headers = [
            Header {
                name: "X-Tenant",
                value: b"acme",
            },
            Header {
                name: "x-tenant",
                value: b"globex",
            },
        ];
        let view = RequestView::from_url(b"http://API.example.com/api/users/7?id=1")
            .with_method(b"GET")
            .with_headers(&headers);
        let rows: &[(&str, &str, bool)] = &[
            ("unconstrained", "delay:1ms", true),
            ("method_hit", "delay:1ms:method=GET", true),
            ("method_miss", "delay:1ms:method=POST", false),
            ("long_method_free", "delay:1ms:method=PROPFIND", true),
            ("prefix_hit", "delay:1ms:path^=/api/", true),
            ("prefix_long_hit", "delay:1ms:path^=/api/users/8", true),
            ("prefix_miss", "delay:1ms:path^=/v1/", false),
            (
                "prefix_longer_than_path",
                "delay:1ms:path^=/api/users/7/x",
                true,
            ),
            ("exact_miss", "delay:1ms:path=/static", false),
            (
                "host_hit_folds_case",
                "delay:1ms:host=api.EXAMPLE.com",
                true,
            ),
            ("host_miss", "delay:1ms:host=example.com", false),
            ("header_first_line", "delay:1ms:header.x-tenant=acme", true),
            (
                "header_second_line",
                "delay:1ms:header.X-Tenant=globex",
                true,
            ),
            (
                "header_value_miss",
                "delay:1ms:header.x-tenant=initech",
                false,
            ),
            ("header_absent", "delay:1ms:header.x-canary", false),
            ("needle_bytes_present", "delay:1ms:path*=users", true),
            ("needle_byte_absent", "delay:1ms:path*=/never/", false),
            ("suffix_byte_absent", "delay:1ms:path$=.js", false),
            ("query_not_indexed", "delay:1ms:query.id=2", true),
        ];
        for (name, spec, want) in rows {
            // Each rule beside a few unrelated ones, so every dimension has keys.
            let specs = [
                "delay:1ms:method=DELETE",
                "delay:1ms:path^=/zz",
                "delay:1ms:header.x-other=1",
                spec,
            ];
            let index = index(&specs);
            let probe = Probe::new(&view, crate::fault::matcher::Needs::HEADERS);
            let lookup = index.look_up(&view, &probe);
            let got = index.candidates(0, &lookup) & 1 << 3 != 0;
            assert_eq!(got, *want, "{name}: {spec}");
        }
    }

    #[test]
    fn many_hits_admit_every_rule() {
        let headers: Vec<Header<'_>> = (0..MAX_HITS + 1)
            .map(|_| Header {
                name: "x-t",
                value: b"a",
            })
            .collect();
        let view = RequestView::from_url(b"http://h/").with_headers(&headers);
        let index = index(&["delay:1ms:header.x-t=a", "delay:1ms:header.x-t=b"]);
        let probe = Probe::new(&view, crate::fault::matcher::Needs::HEADERS);
        let lookup = index.look_up(&view, &probe);
        assert_eq!(index.candidates(0, &lookup), 0b11);
    }
}
