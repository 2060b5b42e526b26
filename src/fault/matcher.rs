//! What a rule matches against: [`RequestView`], a borrowed view of one request head (method,
//! scheme, host, path and query, the full URL, header lookup), and the compiled matchers that test
//! it without allocating. It parses no spec text (`spec.rs`) and decides no fault (`table.rs`).

use httparse::Header;

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
        let (scheme, rest) = match memchr::memmem::find(url, b"://") {
            Some(at) => (&url[..at], &url[at + 3..]),
            None => (&url[..0], url),
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
}
