//! What a rule matches against: [`RequestView`], a borrowed view of one request head (method,
//! scheme, host, path and query, the full URL, header lookup), and the compiled matchers that test
//! it without allocating. It parses no spec text (`spec.rs`) and decides no fault (`table.rs`).

use httparse::Header;
use memchr::memmem::Finder;

use super::rule::{Field, Matcher, Test};

/// One request as the fault table sees it; every field borrows the connection's read buffer.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The method token as sent, e.g. `GET` (case-sensitive, RFC 9110 §9.1).
    pub method: &'a [u8],
    /// `http` (or `https` once TLS is intercepted); empty for CONNECT.
    pub scheme: &'a [u8],
    /// The authority the request goes to, `host[:port]` as sent (Host header or absolute-form).
    pub host: &'a [u8],
    /// Path and query (origin-form, `/` when the request had none); the authority for CONNECT.
    pub target: &'a [u8],
    /// The full URL the seed's substring filter matches: `http://host:port/path?query`, the
    /// authority alone for CONNECT.
    pub url: &'a [u8],
    /// The header lines in order, names as received.
    pub headers: &'a [Header<'a>],
}

impl<'a> RequestView<'a> {
    /// A view of `url` alone (`scheme://authority/path?query`, or a bare authority): method and
    /// headers empty. For callers that only have the seed's URL.
    pub fn from_url(url: &'a [u8]) -> RequestView<'a> {
        // The scheme ends at the first ':' if "//" follows it (a bare authority has no "//").
        let (scheme, rest) = match memchr::memchr(b':', url) {
            Some(at) if url[at + 1..].starts_with(b"//") => (&url[..at], &url[at + 3..]),
            _ => (&url[..0], url),
        };
        let (host, target) = if scheme.is_empty() {
            (rest, rest)
        } else {
            let path_at = memchr::memchr2(b'/', b'?', rest).unwrap_or(rest.len());
            (&rest[..path_at], &rest[path_at..])
        };
        RequestView {
            method: b"",
            scheme,
            host,
            target,
            url,
            headers: &[],
        }
    }

    /// The same view with this method.
    pub fn with_method(self, method: &'a [u8]) -> RequestView<'a> {
        RequestView { method, ..self }
    }

    /// The same view with these headers.
    pub fn with_headers(self, headers: &'a [Header<'a>]) -> RequestView<'a> {
        RequestView { headers, ..self }
    }

    /// The value of the first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers_named(name).next()
    }

    /// The values of every header line named `name` (ASCII case-insensitive), in order.
    pub fn headers_named<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        let headers: &'a [Header<'a>] = self.headers;
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// The host without its port (`[v6]` keeps its brackets).
    pub fn hostname(&self) -> &'a [u8] {
        let host = self.host;
        match memchr::memrchr(b':', host) {
            // A colon inside brackets is part of an IPv6 literal, not a port separator.
            Some(at) if !host[at..].contains(&b']') => &host[..at],
            _ => host,
        }
    }

    /// The path without the query (empty for CONNECT).
    pub fn path(&self) -> &'a [u8] {
        if !self.target.starts_with(b"/") {
            return &self.target[..0];
        }
        let end = memchr::memchr(b'?', self.target).unwrap_or(self.target.len());
        &self.target[..end]
    }

    /// The query after `?`, without it; `None` when there is no `?`.
    pub fn query(&self) -> Option<&'a [u8]> {
        if !self.target.starts_with(b"/") {
            return None;
        }
        memchr::memchr(b'?', self.target).map(|at| &self.target[at + 1..])
    }
}

/// A header name's bit in a request's 64-bit name filter: built from the length and the first
/// and last bytes, lowercased, so one pass over the headers tells most absent names apart
/// without comparing them.
pub(super) fn name_bit(name: &[u8]) -> u64 {
    let (Some(first), Some(last)) = (name.first(), name.last()) else {
        return 1;
    };
    let key = (name.len() as u64) << 16
        | u64::from(first.to_ascii_lowercase()) << 8
        | u64::from(last.to_ascii_lowercase());
    1 << (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58)
}

/// Up to the first eight bytes of `bytes`, little-endian, zero-padded.
#[inline]
pub(super) fn pack8(bytes: &[u8]) -> u64 {
    match bytes.first_chunk::<8>() {
        // One load; a variable-length copy would be a `memcpy` call.
        Some(word) => u64::from_le_bytes(*word),
        None => bytes
            .iter()
            .rev()
            .fold(0, |word, &b| word << 8 | u64::from(b)),
    }
}

/// The set of byte classes (`byte & 63`) in `bytes`: a text containing a needle contains every
/// class of the needle, so a missing class rules the needle out without searching.
#[inline]
pub(super) fn byte_classes(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |set, &b| set | 1 << (b & 63))
}

/// Facts of one request computed once per decision and shared by every rule: the packed method
/// and path prefix, the path, the byte classes of the URL and the header-name filter. Building it
/// costs one pass over the header names and the URL (each skipped when no rule needs it); a
/// header lookup then scans only when the filter says the name may be there.
#[derive(Debug)]
pub(super) struct Probe<'a> {
    method: u64,
    path: &'a [u8],
    path8: u64,
    url_classes: u64,
    names: u64,
}

/// Which facts a table's rules need; [`Quick::needs`] of every rule, OR-ed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Needs {
    headers: bool,
    url_classes: bool,
}

impl Needs {
    /// Header lines chained, nothing else.
    #[cfg(test)]
    pub(super) const HEADERS: Needs = Needs {
        headers: true,
        url_classes: false,
    };

    /// Both needs together.
    pub(super) fn or(self, other: Needs) -> Needs {
        Needs {
            headers: self.headers || other.headers,
            url_classes: self.url_classes || other.url_classes,
        }
    }
}

/// The method packed with its length in the top byte (methods of 1–7 bytes), else 0.
#[inline]
pub(super) fn pack_method(method: &[u8]) -> u64 {
    if (1..=7).contains(&method.len()) {
        pack8(method) | (method.len() as u64) << 56
    } else {
        0
    }
}

impl<'a> Probe<'a> {
    /// The probe of `view`, computing what `needs` asks for.
    #[inline]
    pub(super) fn new(view: &RequestView<'a>, needs: Needs) -> Probe<'a> {
        let path = view.path();
        let mut probe = Probe {
            method: pack_method(view.method),
            path,
            path8: pack8(path),
            url_classes: if needs.url_classes {
                byte_classes(view.url)
            } else {
                0
            },
            names: 0,
        };
        if needs.headers {
            probe.names = view
                .headers
                .iter()
                .fold(0, |names, h| names | name_bit(h.name.as_bytes()));
        }
        probe
    }

    /// Whether any header line named `name` (with name bit `bit`) passes `check`.
    #[inline]
    fn any_header(
        &self,
        headers: &[Header<'_>],
        name: &[u8],
        bit: u64,
        fold_exact: bool,
        check: &Check,
    ) -> bool {
        self.find_header(headers, name, bit, fold_exact, |value| {
            check.holds(value, false)
        })
    }

    /// Whether `test` holds for the value of some header line named `name` (lowercase, with name
    /// bit `bit`; `fold_exact` as for [`name_eq`]), trying the lines in order and stopping at the
    /// first that passes.
    #[inline]
    pub(super) fn find_header(
        &self,
        headers: &[Header<'_>],
        name: &[u8],
        bit: u64,
        fold_exact: bool,
        mut test: impl FnMut(&[u8]) -> bool,
    ) -> bool {
        if self.names & bit == 0 {
            return false;
        }
        headers
            .iter()
            .any(|h| name_eq(h.name.as_bytes(), name, fold_exact) && test(h.value))
    }

    /// The path without the query.
    pub(super) fn path(&self) -> &'a [u8] {
        self.path
    }

    /// The path's first eight bytes, packed (see `pack8`).
    pub(super) fn path8(&self) -> u64 {
        self.path8
    }

    /// The packed method (see `pack_method`).
    pub(super) fn method(&self) -> u64 {
        self.method
    }

    /// The header-name filter.
    pub(super) fn names(&self) -> u64 {
        self.names
    }
}

/// A rule's prefilter, checked with a few integer operations against the [`Probe`] before any
/// matcher runs: the header names it needs, its method, the first bytes of its path prefix or
/// exact path, the byte classes its URL filter needs. It never rejects a request the matchers
/// would accept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Quick {
    names: u64,
    method: u64,
    method_mask: u64,
    path_value: u64,
    path_mask: u64,
    url_classes: u64,
}

impl Quick {
    /// The prefilter of a rule with these matchers and URL filter.
    pub(super) fn new(matchers: &[Matcher], url_filter: Option<&[u8]>) -> Quick {
        let mut quick = Quick {
            url_classes: url_filter.map_or(0, byte_classes),
            ..Quick::default()
        };
        for m in matchers {
            match (&m.field, &m.test) {
                (Field::Header(name), _) => quick.names |= name_bit(name.as_bytes()),
                (Field::Method, Test::Equal(method))
                    if quick.method_mask == 0 && pack_method(method) != 0 =>
                {
                    quick.method = pack_method(method);
                    quick.method_mask = u64::MAX;
                }
                // Zero bytes would be confused with the padding of a short path.
                (Field::Path, Test::Equal(path) | Test::Prefix(path))
                    if quick.path_mask == 0 && !path.is_empty() && !path.contains(&0) =>
                {
                    let n = path.len().min(8);
                    quick.path_mask = if n == 8 { u64::MAX } else { (1 << (8 * n)) - 1 };
                    quick.path_value = pack8(path);
                }
                _ => {}
            }
        }
        quick
    }

    /// Whether the rule's matchers and filter could hold for this request; branch-free.
    #[inline]
    pub(super) fn admits(&self, probe: &Probe<'_>) -> bool {
        (self.names & !probe.names)
            | ((probe.method & self.method_mask) ^ self.method)
            | ((probe.path8 & self.path_mask) ^ self.path_value)
            | (self.url_classes & !probe.url_classes)
            == 0
    }

    /// Which probe facts the rule needs.
    pub(super) fn needs(&self) -> Needs {
        Needs {
            headers: self.names != 0,
            url_classes: self.url_classes != 0,
        }
    }
}

/// Whether header name `name` (a token as httparse accepts it) equals `lower` (lowercase) ignoring
/// ASCII case, eight bytes at a time: OR-ing 0x20 into every byte folds letters and changes no
/// other token byte but `^` (into `~`), so a `lower` with `^` or `~` takes the byte-wise path.
#[inline]
pub(super) fn name_eq(name: &[u8], lower: &[u8], fold_exact: bool) -> bool {
    const FOLD: u64 = 0x2020_2020_2020_2020;
    if name.len() != lower.len() {
        return false;
    }
    if !fold_exact {
        return name.eq_ignore_ascii_case(lower);
    }
    let mut a = name.chunks_exact(8);
    let mut b = lower.chunks_exact(8);
    for (x, y) in (&mut a).zip(&mut b) {
        if pack8(x) | FOLD != pack8(y) | FOLD {
            return false;
        }
    }
    let (x, y) = (a.remainder(), b.remainder());
    // Padding zero bytes fold to 0x20 on both sides alike.
    pack8(x) | FOLD == pack8(y) | FOLD
}

/// Where a compiled matcher looks.
#[derive(Debug, Clone)]
enum Target {
    Method,
    Host,
    Path,
    Query(Box<[u8]>),
    Header {
        name: Box<[u8]>,
        bit: u64,
        /// `name` has no `^` or `~`: [`name_eq`] may compare it word-wise.
        fold_exact: bool,
    },
}

/// How a compiled matcher compares; host comparisons fold ASCII case.
#[derive(Debug, Clone)]
enum Check {
    Present,
    Equal(Box<[u8]>),
    Prefix(Box<[u8]>),
    Suffix(Box<[u8]>),
    Contains(Box<Finder<'static>>),
    /// Case-folded contains, for hosts (short, so a window scan).
    ContainsFold(Box<[u8]>),
}

impl Check {
    /// Whether `value` passes, comparing bytes exactly (`fold`: ASCII case-insensitively).
    #[inline(always)]
    fn holds(&self, value: &[u8], fold: bool) -> bool {
        match self {
            Check::Present => true,
            Check::Equal(want) => {
                value.len() == want.len()
                    && (if fold {
                        value.eq_ignore_ascii_case(want)
                    } else {
                        value == &want[..]
                    })
            }
            Check::Prefix(want) => value.get(..want.len()).is_some_and(|head| {
                if fold {
                    head.eq_ignore_ascii_case(want)
                } else {
                    head == &want[..]
                }
            }),
            Check::Suffix(want) => value.len().checked_sub(want.len()).is_some_and(|at| {
                let tail = &value[at..];
                if fold {
                    tail.eq_ignore_ascii_case(want)
                } else {
                    tail == &want[..]
                }
            }),
            Check::Contains(finder) => finder.find(value).is_some(),
            Check::ContainsFold(want) => {
                want.is_empty()
                    || value
                        .windows(want.len())
                        .any(|w| w.eq_ignore_ascii_case(want))
            }
        }
    }
}

/// One matcher in hot-path form: names lowercased and finders built once, at compile time.
#[derive(Debug, Clone)]
pub(super) struct CompiledMatcher {
    target: Target,
    check: Check,
}

impl CompiledMatcher {
    /// Compiles `matcher`.
    pub(super) fn new(matcher: &Matcher) -> CompiledMatcher {
        let fold = matcher.field == Field::Host;
        let check = match &matcher.test {
            Test::Present => Check::Present,
            Test::Equal(v) => Check::Equal(v.clone().into()),
            Test::Prefix(v) => Check::Prefix(v.clone().into()),
            Test::Suffix(v) => Check::Suffix(v.clone().into()),
            Test::Contains(v) if fold => Check::ContainsFold(v.clone().into()),
            Test::Contains(v) => Check::Contains(Box::new(Finder::new(v).into_owned())),
        };
        let target = match &matcher.field {
            Field::Method => Target::Method,
            Field::Host => Target::Host,
            Field::Path => Target::Path,
            Field::Query(name) => Target::Query(name.as_bytes().into()),
            Field::Header(name) => Target::Header {
                name: name.to_ascii_lowercase().into_bytes().into(),
                bit: name_bit(name.as_bytes()),
                fold_exact: !name.contains(['^', '~']),
            },
        };
        CompiledMatcher { target, check }
    }

    /// Cheapest first: the table sorts a rule's matchers by this before evaluating them.
    pub(super) fn cost(&self) -> u8 {
        match (&self.target, &self.check) {
            (Target::Method, _) => 0,
            (Target::Path, Check::Contains(_)) => 3,
            (Target::Path, _) => 1,
            (Target::Host, _) => 2,
            (Target::Query(_), _) => 4,
            (Target::Header { .. }, _) => 5,
        }
    }

    /// Whether the request passes this matcher.
    #[inline]
    pub(super) fn matches(&self, view: &RequestView<'_>, probe: &Probe<'_>) -> bool {
        match &self.target {
            Target::Method => self.check.holds(view.method, false),
            Target::Host => self.check.holds(view.hostname(), true),
            Target::Path => self.check.holds(probe.path, false),
            Target::Query(name) => view.query().is_some_and(|query| {
                query.split(|&b| b == b'&').any(|pair| {
                    let (key, value) = match memchr::memchr(b'=', pair) {
                        Some(at) => (&pair[..at], &pair[at + 1..]),
                        None => (pair, &pair[pair.len()..]),
                    };
                    key == &name[..] && self.check.holds(value, false)
                })
            }),
            Target::Header {
                name,
                bit,
                fold_exact,
            } => probe.any_header(view.headers, name, *bit, *fold_exact, &self.check),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_url_splits_parts() {
        type Row<'a> = (&'a str, &'a [u8], &'a [u8], &'a [u8], &'a [u8], &'a [u8]);
        let rows: &[Row<'_>] = &[
            (
                "absolute",
                b"http://h:8080/api/x?id=7",
                b"http",
                b"h:8080",
                b"/api/x?id=7",
                b"h",
            ),
            ("no_path", b"http://h", b"http", b"h", b"", b"h"),
            ("query_only", b"http://h?x=1", b"http", b"h", b"?x=1", b"h"),
            (
                "connect",
                b"example.com:443",
                b"",
                b"example.com:443",
                b"example.com:443",
                b"example.com",
            ),
            (
                "ipv6",
                b"http://[::1]:80/",
                b"http",
                b"[::1]:80",
                b"/",
                b"[::1]",
            ),
            (
                "ipv6_no_port",
                b"http://[::1]/",
                b"http",
                b"[::1]",
                b"/",
                b"[::1]",
            ),
        ];
        for (name, url, scheme, host, target, hostname) in rows {
            let view = RequestView::from_url(url);
            assert_eq!(view.scheme, *scheme, "{name}");
            assert_eq!(view.host, *host, "{name}");
            assert_eq!(view.target, *target, "{name}");
            assert_eq!(view.hostname(), *hostname, "{name}");
            assert_eq!(view.url, *url, "{name}");
        }
    }

    #[test]
    fn path_and_query_split_at_question_mark() {
        let view = RequestView::from_url(b"http://h/a/b?x=1&y");
        assert_eq!(view.path(), b"/a/b");
        assert_eq!(view.query(), Some(&b"x=1&y"[..]));
        let bare = RequestView::from_url(b"http://h/a");
        assert_eq!(bare.query(), None);
        let connect = RequestView::from_url(b"h:443");
        assert_eq!(connect.path(), b"");
        assert_eq!(connect.query(), None);
    }

    #[test]
    fn header_lookup_is_case_insensitive_and_sees_every_line() {
        let headers = [
            Header {
                name: "X-Tenant",
                value: b"a",
            },
            Header {
                name: "accept",
                value: b"*/*",
            },
            Header {
                name: "x-tenant",
                value: b"b",
            },
        ];
        let view = RequestView::from_url(b"http://h/").with_headers(&headers);
        assert_eq!(view.header("x-TENANT"), Some(&b"a"[..]));
        let all: Vec<&[u8]> = view.headers_named("x-tenant").collect();
        assert_eq!(all, [&b"a"[..], &b"b"[..]]);
        assert_eq!(view.header("missing"), None);
    }

    fn compiled(spec: &str) -> Vec<CompiledMatcher> {
        let rule: crate::fault::FaultRule = spec.parse().unwrap();
        rule.matchers.iter().map(CompiledMatcher::new).collect()
    }

    #[test]
    fn matchers_table() {
        let headers = [
            Header {
                name: "Host",
                value: b"API.Example.com:8443",
            },
            Header {
                name: "X-Tenant",
                value: b"acme-prod",
            },
            Header {
                name: "x-tenant",
                value: b"globex",
            },
            Header {
                name: "Accept",
                value: b"application/json",
            },
        ];
        let view =
            RequestView::from_url(b"http://API.Example.com:8443/api/users/7?id=42&debug&q=a%3Ab")
                .with_method(b"POST")
                .with_headers(&headers);
        let rows: &[(&str, &str, bool)] = &[
            ("method_equal", "error:503:method=POST", true),
            ("method_case_sensitive", "error:503:method=post", false),
            ("method_other", "error:503:method=GET", false),
            (
                "host_equal_folds_case",
                "error:503:host=api.example.com",
                true,
            ),
            (
                "host_ignores_port",
                "error:503:host=api.example.com%3A8443",
                false,
            ),
            ("host_suffix", "error:503:host$=.EXAMPLE.com", true),
            ("host_prefix", "error:503:host^=api.", true),
            ("host_contains", "error:503:host*=example", true),
            ("host_other", "error:503:host=example.com", false),
            ("path_exact", "error:503:path=/api/users/7", true),
            ("path_exact_not_prefix", "error:503:path=/api", false),
            ("path_prefix", "error:503:path^=/api/", true),
            ("path_prefix_miss", "error:503:path^=/v1", false),
            ("path_suffix", "error:503:path$=/7", true),
            ("path_contains", "error:503:path*=users", true),
            ("path_excludes_query", "error:503:path*=id=42", false),
            ("query_equal", "error:503:query.id=42", true),
            ("query_equal_miss", "error:503:query.id=4", false),
            ("query_present_bare", "error:503:query.debug", true),
            ("query_present_valued", "error:503:query.id", true),
            ("query_absent", "error:503:query.missing", false),
            ("query_raw_not_decoded", "error:503:query.q=a%253Ab", true),
            ("query_prefix", "error:503:query.id^=4", true),
            ("header_present", "error:503:header.accept", true),
            (
                "header_present_name_case",
                "error:503:header.X-TENANT",
                true,
            ),
            ("header_absent", "error:503:header.x-missing", false),
            (
                "header_equal_second_line",
                "error:503:header.x-tenant=globex",
                true,
            ),
            (
                "header_equal_case_sensitive",
                "error:503:header.x-tenant=ACME-prod",
                false,
            ),
            ("header_contains", "error:503:header.accept*=json", true),
            ("header_prefix", "error:503:header.x-tenant^=acme", true),
            (
                "and_all_hold",
                "error:503:method=POST:path^=/api:header.x-tenant=globex",
                true,
            ),
            (
                "and_one_fails",
                "error:503:method=POST:path^=/api:header.x-tenant=initech",
                false,
            ),
        ];
        for (name, spec, want) in rows {
            let rule: crate::fault::FaultRule = spec.parse().unwrap();
            let quick = Quick::new(&rule.matchers, None);
            let probe = Probe::new(&view, quick.needs());
            assert!(quick.admits(&probe) || !want, "{name}: prefilter");
            let got = compiled(spec).iter().all(|m| m.matches(&view, &probe));
            assert_eq!(got, *want, "{name}: {spec}");
        }
    }

    #[test]
    fn name_filter_sees_every_header_name() {
        let headers = [Header {
            name: "X-Request-Id",
            value: b"1",
        }];
        let view = RequestView::from_url(b"http://h/").with_headers(&headers);
        let needs = Needs {
            headers: true,
            ..Needs::default()
        };
        let probe = Probe::new(&view, needs);
        assert_ne!(probe.names & name_bit(b"x-request-id"), 0);
        let bit = name_bit(b"X-REQUEST-ID");
        assert!(probe.any_header(view.headers, b"x-request-id", bit, true, &Check::Present));
        assert!(!probe.any_header(view.headers, b"x-request-ie", bit, true, &Check::Present));
    }

    #[test]
    fn name_eq_folds_letters_only() {
        let rows: &[(&str, &[u8], &[u8], bool)] = &[
            ("same", b"x-tenant", b"x-tenant", true),
            ("upper", b"X-Tenant", b"x-tenant", true),
            (
                "long",
                b"X-Forwarded-Proto-Extra",
                b"x-forwarded-proto-extra",
                true,
            ),
            (
                "long_differs",
                b"X-Forwarded-Proto-Extrb",
                b"x-forwarded-proto-extra",
                false,
            ),
            ("length", b"x-tenants", b"x-tenant", false),
            ("digit", b"x-t1", b"x-t2", false),
            ("underscore", b"x_t", b"x_t", true),
            ("caret_vs_tilde_bytewise", b"x^t", b"x~t", false),
            ("empty", b"", b"", true),
        ];
        for (name, a, b, want) in rows {
            let fold_exact = !b.contains(&b'^') && !b.contains(&b'~');
            assert_eq!(name_eq(a, b, fold_exact), *want, "{name}");
        }
    }
}
