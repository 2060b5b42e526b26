//! Header lookups over parsed httparse headers: `Connection` tokens, keep-alive, hop-by-hop,
//! WebSocket upgrades and `Expect`.
//!
//! Nothing here allocates or rewrites headers; encoding the forwarded set is `encode.rs`'s job.

use httparse::Header;

use super::parse::Version;

/// Hop-by-hop fields never forwarded, whatever `Connection` says (RFC 9110 §7.6.1, plus the
/// de-facto `Keep-Alive`/`Proxy-Connection` and the proxy-scoped `Proxy-Authorization`/
/// `Proxy-Authenticate` of RFC 9110 §11.7). `Transfer-Encoding` is re-emitted by the encoder to
/// match the framing actually forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// The value of the first header named `name` (ASCII case-insensitive), if any.
pub fn header<'b>(headers: &[Header<'b>], name: &str) -> Option<&'b [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// The non-empty elements of a comma-separated field value with OWS (SP, HTAB) trimmed
/// (RFC 9110 §5.6.1: recipients ignore empty list elements).
pub(crate) fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|item| !item.is_empty())
}

/// `value` without leading and trailing SP/HTAB.
pub(crate) fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// True when any element of any header line named `name` equals `token` (case-insensitive).
fn any_list_item(headers: &[Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| list_items(h.value))
        .any(|item| item.eq_ignore_ascii_case(token.as_bytes()))
}

/// True when any `Connection` line (all of them, comma lists, case-insensitive, OWS trimmed)
/// names `token`.
pub fn connection_has(headers: &[Header<'_>], token: &str) -> bool {
    any_list_item(headers, "connection", token)
}

/// Whether the connection persists after this message (RFC 9112 §9.3).
///
/// `close` always ends it; otherwise HTTP/1.1 persists by default and HTTP/1.0 only with
/// `keep-alive`.
pub fn keep_alive(version: Version, headers: &[Header<'_>]) -> bool {
    if connection_has(headers, "close") {
        return false;
    }
    match version {
        Version::Http11 => true,
        Version::Http10 => connection_has(headers, "keep-alive"),
    }
}

/// Whether the field `name` must not be forwarded: one of the fixed hop-by-hop fields
/// (`Connection`, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`,
/// `Upgrade`, `Proxy-Authorization`, `Proxy-Authenticate`) or any field named by a `Connection`
/// line of `headers` (RFC 9110 §7.6.1).
pub fn is_hop_by_hop(name: &str, headers: &[Header<'_>]) -> bool {
    is_fixed_hop_by_hop(name) || connection_has(headers, name)
}

/// Whether `name` is one of the fixed hop-by-hop fields, ignoring what `Connection` names.
/// Lets the encoder skip the per-field `Connection` scan when the message has no `Connection`.
pub(crate) fn is_fixed_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether a request asks to switch to WebSocket (RFC 9110 §7.8, RFC 6455 §4.1): an HTTP/1.1
/// `GET` whose `Upgrade` lists `websocket` and whose `Connection` lists `upgrade`. Other
/// protocols (h2c, TLS/1.0) are not upgrades the proxy forwards.
pub fn is_websocket_upgrade(method: &str, version: Version, headers: &[Header<'_>]) -> bool {
    method == "GET"
        && version == Version::Http11
        && any_list_item(headers, "upgrade", "websocket")
        && connection_has(headers, "upgrade")
}

/// Whether a `101 Switching Protocols` switches to WebSocket (its `Upgrade` lists `websocket`).
pub fn upgrades_to_websocket(headers: &[Header<'_>]) -> bool {
    any_list_item(headers, "upgrade", "websocket")
}

/// Whether the request carries `Expect: 100-continue` (RFC 9110 §10.1.1, case-insensitive).
pub fn expects_continue(headers: &[Header<'_>]) -> bool {
    any_list_item(headers, "expect", "100-continue")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(name: &'a str, value: &'a str) -> Header<'a> {
        Header {
            name,
            value: value.as_bytes(),
        }
    }

    #[test]
    fn header_table() {
        let hs = [h("Host", "a"), h("X-A", "1"), h("x-a", "2")];
        let rows: &[(&str, &str, Option<&[u8]>)] = &[
            ("header_exact_case_found", "Host", Some(b"a")),
            ("header_other_case_found", "HOST", Some(b"a")),
            ("header_duplicate_returns_first", "x-a", Some(b"1")),
            ("header_absent_is_none", "x-b", None),
        ];
        for (name, want_name, want) in rows {
            assert_eq!(header(&hs, want_name), *want, "{name}");
        }
    }

    #[test]
    fn connection_has_table() {
        let several = [
            h("Connection", "keep-alive"),
            h("X", "close"),
            h("connection", " Upgrade ,\tX-Foo"),
            h("CONNECTION", ",,CLOSE,"),
        ];
        let rows: &[(&str, &[Header<'_>], &str, bool)] = &[
            (
                "connection_has_first_line_found",
                &several,
                "keep-alive",
                true,
            ),
            (
                "connection_has_second_line_trimmed_found",
                &several,
                "upgrade",
                true,
            ),
            ("connection_has_tab_ows_found", &several, "x-foo", true),
            (
                "connection_has_third_line_upper_found",
                &several,
                "close",
                true,
            ),
            ("connection_has_other_header_ignored", &several, "x", false),
            (
                "connection_has_substring_not_found",
                &several,
                "keep",
                false,
            ),
            ("connection_has_none_is_false", &[], "close", false),
        ];
        for (name, hs, token, want) in rows {
            assert_eq!(connection_has(hs, token), *want, "{name}");
        }
    }

    #[test]
    fn keep_alive_table() {
        let rows: &[(&str, Version, &[Header<'_>], bool)] = &[
            ("keep_alive_http11_default_true", Version::Http11, &[], true),
            (
                "keep_alive_http11_close_false",
                Version::Http11,
                &[h("Connection", "Close")],
                false,
            ),
            (
                "keep_alive_http11_close_on_second_line_false",
                Version::Http11,
                &[h("Connection", "te"), h("Connection", "close")],
                false,
            ),
            (
                "keep_alive_http10_default_false",
                Version::Http10,
                &[],
                false,
            ),
            (
                "keep_alive_http10_keep_alive_true",
                Version::Http10,
                &[h("Connection", "Keep-Alive")],
                true,
            ),
            (
                "keep_alive_http10_keep_alive_and_close_false",
                Version::Http10,
                &[h("Connection", "keep-alive, close")],
                false,
            ),
        ];
        for (name, version, hs, want) in rows {
            assert_eq!(keep_alive(*version, hs), *want, "{name}");
        }
    }

    #[test]
    fn is_hop_by_hop_table() {
        let hs = [h("Connection", "X-Secret, keep-alive"), h("Host", "a")];
        let rows: &[(&str, &str, bool)] = &[
            ("hop_connection_true", "Connection", true),
            ("hop_keep_alive_true", "Keep-Alive", true),
            ("hop_proxy_connection_true", "proxy-connection", true),
            ("hop_te_true", "TE", true),
            ("hop_trailer_true", "Trailer", true),
            ("hop_transfer_encoding_true", "Transfer-Encoding", true),
            ("hop_upgrade_true", "upgrade", true),
            ("hop_proxy_authorization_true", "Proxy-Authorization", true),
            ("hop_proxy_authenticate_true", "Proxy-Authenticate", true),
            ("hop_connection_named_true", "x-secret", true),
            ("hop_host_false", "Host", false),
            ("hop_content_length_false", "Content-Length", false),
            ("hop_trailers_prefix_false", "Trailers", false),
        ];
        for (name, field, want) in rows {
            assert_eq!(is_hop_by_hop(field, &hs), *want, "{name}");
        }
    }

    #[test]
    fn expects_continue_table() {
        let rows: &[(&str, &[Header<'_>], bool)] = &[
            (
                "expect_100_continue_true",
                &[h("Expect", "100-continue")],
                true,
            ),
            (
                "expect_upper_case_true",
                &[h("EXPECT", "100-Continue")],
                true,
            ),
            ("expect_other_false", &[h("Expect", "200-ok")], false),
            ("expect_absent_false", &[], false),
        ];
        for (name, hs, want) in rows {
            assert_eq!(expects_continue(hs), *want, "{name}");
        }
    }

    #[test]
    fn trim_ows_table() {
        let rows: &[(&str, &[u8], &[u8])] = &[
            ("trim_both_sides", b" \ta b\t ", b"a b"),
            ("trim_all_ows_is_empty", b" \t ", b""),
            ("trim_empty_is_empty", b"", b""),
            ("trim_nothing_is_same", b"abc", b"abc"),
        ];
        for (name, input, want) in rows {
            assert_eq!(trim_ows(input), *want, "{name}");
        }
    }

    #[test]
    fn is_websocket_upgrade_table() {
        let ws = [
            h("Upgrade", "websocket"),
            h("Connection", "keep-alive, Upgrade"),
        ];
        let h2c = [
            h("Upgrade", "h2c"),
            h("Connection", "Upgrade, HTTP2-Settings"),
        ];
        let no_connection = [h("Upgrade", "websocket")];
        let listed = [h("upgrade", "foo/2, WebSocket"), h("connection", "upgrade")];
        let rows: &[(&str, &str, Version, &[Header<'_>], bool)] = &[
            (
                "websocket_get_is_upgrade",
                "GET",
                Version::Http11,
                &ws,
                true,
            ),
            (
                "websocket_listed_among_others_is_upgrade",
                "GET",
                Version::Http11,
                &listed,
                true,
            ),
            ("websocket_post_is_not", "POST", Version::Http11, &ws, false),
            (
                "websocket_http10_is_not",
                "GET",
                Version::Http10,
                &ws,
                false,
            ),
            ("h2c_is_not", "GET", Version::Http11, &h2c, false),
            (
                "upgrade_without_connection_token_is_not",
                "GET",
                Version::Http11,
                &no_connection,
                false,
            ),
        ];
        for (name, method, version, headers, want) in rows {
            assert_eq!(
                is_websocket_upgrade(method, *version, headers),
                *want,
                "{name}"
            );
        }
        assert!(upgrades_to_websocket(&ws), "101_websocket");
        assert!(!upgrades_to_websocket(&h2c), "101_h2c");
    }
}
