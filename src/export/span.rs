//! One trace record → one OTLP SERVER span: ids and parentage, OpenTelemetry HTTP semantic
//! conventions, error status, and every applied fault as `phantom.fault.*` attributes and events.
//!
//! Pure: no I/O. It does not batch or send spans (`mod.rs`, `client.rs` do).
//!
//! Trace flags and `tracestate` are not fields of today's record; they are read from the raw
//! request head the record keeps (the proxy forwards the caller's flags, sampled `01` when it
//! starts the trace, and passes `tracestate` through unchanged).

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, ArrayValue, KeyValue, any_value::Value},
    trace::v1::{
        Span, SpanFlags, Status,
        span::{Event, SpanKind},
        status::StatusCode,
    },
};

use crate::trace::{ArchivedTraceEvent, Outcome, parse_traceparent};

/// Trace flags the proxy forwards when it starts a trace itself (W3C `sampled`).
const FLAGS_WHEN_ROOT: u8 = 0x01;

/// Name of the span event each applied fault adds.
pub const FAULT_EVENT: &str = "phantom.fault";

/// Methods the HTTP semantic conventions know; any other is reported as `_OTHER` with
/// `http.request.method_original`.
const KNOWN_METHODS: &[&[u8]] = &[
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
];

/// The span of one exchange, as the proxy saw it.
pub fn span_of(rec: &ArchivedTraceEvent<'_>) -> Span {
    let head = rec.request_head.get();
    let start = rec.start_unix_ns.to_native();
    let parent = rec.parent_span_id.as_ref().map(|p| p.to_native());
    let flags = header(head, b"traceparent")
        .and_then(|v| parse_traceparent(&v))
        .map_or(FLAGS_WHEN_ROOT, |(_, _, flags)| flags);
    let mut span = Span {
        trace_id: rec.trace_id.to_native().to_be_bytes().to_vec(),
        span_id: rec.span_id.to_native().to_be_bytes().to_vec(),
        trace_state: header(head, b"tracestate")
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default(),
        parent_span_id: parent.map_or_else(Vec::new, |p| p.to_be_bytes().to_vec()),
        flags: span_flags(flags, parent.is_some()),
        name: String::new(),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start.saturating_add(rec.duration_ns.to_native()),
        attributes: Vec::with_capacity(24),
        dropped_attributes_count: 0,
        events: Vec::new(),
        dropped_events_count: 0,
        links: Vec::new(),
        dropped_links_count: 0,
        status: None,
    };
    span.name = http_attributes(rec, head, &mut span.attributes);
    phantom_attributes(rec, &mut span.attributes);
    fault_attributes(rec, start, &mut span);
    span.status = status_of(rec, &mut span.attributes);
    span
}

/// W3C flags in the low byte; the parent is remote whenever there is one (it came in a header).
fn span_flags(trace_flags: u8, has_parent: bool) -> u32 {
    let remote = if has_parent {
        SpanFlags::ContextIsRemoteMask as u32
    } else {
        0
    };
    u32::from(trace_flags) | SpanFlags::ContextHasIsRemoteMask as u32 | remote
}

/// The HTTP semantic-convention attributes; returns the span name (`{method}`, or `HTTP` for a
/// method the conventions do not know).
fn http_attributes(rec: &ArchivedTraceEvent<'_>, head: &[u8], out: &mut Vec<KeyValue>) -> String {
    let method = rec.method.get();
    let name = if KNOWN_METHODS.contains(&method) {
        let method = String::from_utf8_lossy(method).into_owned();
        out.push(string("http.request.method", &method));
        method
    } else {
        out.push(string("http.request.method", "_OTHER"));
        out.push(lossy("http.request.method_original", method));
        "HTTP".to_owned()
    };
    let url = split_url(rec.url.get());
    if !url.scheme.is_empty() {
        out.push(string("url.scheme", &url.scheme));
    }
    if !url.path.is_empty() {
        out.push(lossy("url.path", url.path));
    }
    if let Some(query) = url.query {
        out.push(lossy("url.query", query));
    }
    if let Some((host, port)) = split_authority(url.authority, &url.scheme) {
        out.push(lossy("server.address", host));
        if let Some(port) = port {
            out.push(int("server.port", i64::from(port)));
        }
    }
    let client = rec.client_addr.as_socket_addr();
    out.push(string("client.address", &client.ip().to_string()));
    out.push(int("client.port", i64::from(client.port())));
    let status = rec.status.to_native();
    if status != 0 {
        out.push(int("http.response.status_code", i64::from(status)));
    }
    let version = rec.version.get();
    out.push(string(
        "network.protocol.version",
        version.strip_prefix("HTTP/").unwrap_or(version),
    ));
    if let Some(agent) = header(head, b"user-agent") {
        out.push(lossy("user_agent.original", &agent));
    }
    out.push(int(
        "http.request.body.size",
        clamp(rec.request_body_len.to_native()),
    ));
    out.push(int(
        "http.response.body.size",
        clamp(rec.response_body_len.to_native()),
    ));
    name
}

/// What only phantom-fast knows: how the exchange ended, the upstream, its time to first byte.
fn phantom_attributes(rec: &ArchivedTraceEvent<'_>, out: &mut Vec<KeyValue>) {
    out.push(string("phantom.outcome", rec.outcome.get().as_str()));
    if let Some(up) = rec.upstream_addr.as_ref() {
        out.push(string(
            "phantom.upstream.address",
            &up.as_socket_addr().to_string(),
        ));
    }
    if let Some(ttfb) = rec.upstream_ttfb_ns.as_ref() {
        out.push(int("phantom.upstream.ttfb_ns", clamp(ttfb.to_native())));
    }
}

/// Each applied fault: one element of each `phantom.fault.*` array attribute (in the order the
/// faults were applied) and one `phantom.fault` event with the same facts as scalars. The value
/// is the one sampled for the fault, in `phantom.fault.unit` (`ns` for delays, `status` for an
/// error, …).
fn fault_attributes(rec: &ArchivedTraceEvent<'_>, start: u64, span: &mut Span) {
    let faults = rec.faults.get();
    span.attributes.push(int(
        "phantom.fault_table.generation",
        clamp(rec.generation.to_native()),
    ));
    if faults.is_empty() {
        return;
    }
    let mut columns: [(&str, Vec<AnyValue>); 5] = [
        ("phantom.fault.rule_id", Vec::new()),
        ("phantom.fault.kind", Vec::new()),
        ("phantom.fault.spec", Vec::new()),
        ("phantom.fault.value", Vec::new()),
        ("phantom.fault.unit", Vec::new()),
    ];
    for fault in faults {
        let kind = fault.kind.get();
        // No id recorded: the default id, `r<position>` (1-based, as the fault table names it).
        let rule_id = match fault.rule_id.get() {
            "" => format!("r{}", u64::from(fault.rule.to_native()) + 1),
            id => id.to_owned(),
        };
        let facts = [
            Value::StringValue(rule_id),
            Value::StringValue(kind.as_str().to_owned()),
            Value::StringValue(fault.spec.get().to_owned()),
            Value::IntValue(clamp(fault.value.to_native())),
            Value::StringValue(kind.unit().to_owned()),
        ];
        span.events.push(Event {
            time_unix_nano: start,
            name: FAULT_EVENT.to_owned(),
            attributes: columns
                .iter()
                .zip(&facts)
                .map(|((key, _), value)| key_value(key, value.clone()))
                .collect(),
            dropped_attributes_count: 0,
        });
        for ((_, column), value) in columns.iter_mut().zip(facts) {
            column.push(AnyValue { value: Some(value) });
        }
    }
    span.attributes
        .push(int("phantom.fault.count", faults.len() as i64));
    for (key, values) in columns {
        span.attributes
            .push(key_value(key, Value::ArrayValue(ArrayValue { values })));
    }
}

/// Error for a 5xx and for upstream errors, upstream timeouts and client aborts, with
/// `error.type` (the outcome's name, or the status code for a plain 5xx); unset otherwise (a 4xx
/// is the client's error, not the server span's, per the HTTP conventions).
fn status_of(rec: &ArchivedTraceEvent<'_>, out: &mut Vec<KeyValue>) -> Option<Status> {
    let status = rec.status.to_native();
    let outcome = rec.outcome.get();
    let (error_type, message) = match outcome {
        Outcome::UpstreamError => (outcome.as_str().to_owned(), "upstream error"),
        Outcome::UpstreamTimeout => (outcome.as_str().to_owned(), "upstream timed out"),
        Outcome::ClientClosed => (outcome.as_str().to_owned(), "client closed early"),
        _ if status >= 500 => (status.to_string(), "server error status"),
        _ => return None,
    };
    out.push(string("error.type", &error_type));
    Some(Status {
        message: message.to_owned(),
        code: StatusCode::Error as i32,
    })
}

/// A URL split into the parts the conventions name.
#[derive(Debug, PartialEq, Eq)]
struct UrlParts<'a> {
    /// Lower-cased scheme; empty for an authority-form target (`CONNECT host:443`).
    scheme: String,
    authority: &'a [u8],
    path: &'a [u8],
    query: Option<&'a [u8]>,
}

/// Splits `scheme://authority/path?query` (what the record keeps for every request except
/// CONNECT, whose URL is the bare `host:port`).
fn split_url(url: &[u8]) -> UrlParts<'_> {
    let (scheme, rest) = match memchr::memmem::find(url, b"://") {
        Some(i) => (
            String::from_utf8_lossy(&url[..i]).to_ascii_lowercase(),
            &url[i + 3..],
        ),
        None => (String::new(), url),
    };
    let path_at = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let (authority, target) = rest.split_at(path_at);
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(q) => (&target[..q], Some(&target[q + 1..])),
        None => (target, None),
    };
    UrlParts {
        scheme,
        authority,
        path,
        query,
    }
}

/// `host[:port]` (IPv6 in brackets, which are dropped) → host and port; the scheme's default
/// port when none is given. `None` for an empty authority.
fn split_authority<'a>(authority: &'a [u8], scheme: &str) -> Option<(&'a [u8], Option<u16>)> {
    if authority.is_empty() {
        return None;
    }
    let default_port = match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    };
    let (host, port) = if let Some(rest) = authority.strip_prefix(b"[") {
        let close = rest.iter().position(|&b| b == b']')?;
        (&rest[..close], rest[close + 1..].strip_prefix(b":"))
    } else {
        match authority.iter().rposition(|&b| b == b':') {
            Some(i) => (&authority[..i], Some(&authority[i + 1..])),
            None => (authority, None),
        }
    };
    let port = port
        .and_then(|p| std::str::from_utf8(p).ok())
        .and_then(|p| p.parse::<u16>().ok())
        .or(default_port);
    Some((host, port))
}

/// The value of header `name` (lower-case) in a raw request head, every line of it joined with
/// `,` (RFC 9110 §5.3), or `None` if absent.
fn header(head: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    let mut found: Option<Vec<u8>> = None;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if !line[..colon].eq_ignore_ascii_case(name) {
            continue;
        }
        let value = line[colon + 1..].trim_ascii();
        match &mut found {
            Some(joined) => {
                joined.push(b',');
                joined.extend_from_slice(value);
            }
            None => found = Some(value.to_vec()),
        }
    }
    found
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One attribute.
pub(super) fn key_value(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn string(key: &str, value: &str) -> KeyValue {
    key_value(key, Value::StringValue(value.to_owned()))
}

fn lossy(key: &str, value: &[u8]) -> KeyValue {
    string(key, &String::from_utf8_lossy(value))
}

fn int(key: &str, value: i64) -> KeyValue {
    key_value(key, Value::IntValue(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::tests::{full_event, stored_bytes};
    use crate::trace::{TraceEvent, access_record};

    /// The span of `ev`, read back from the bytes a writer stores.
    fn span(ev: &TraceEvent<'_>) -> Span {
        let bytes = stored_bytes(ev);
        span_of(access_record(&bytes).expect("valid record"))
    }

    fn attr<'s>(span: &'s Span, key: &str) -> Option<&'s Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    fn text(span: &Span, key: &str) -> Option<String> {
        match attr(span, key) {
            Some(Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        }
    }

    fn number(span: &Span, key: &str) -> Option<i64> {
        match attr(span, key) {
            Some(Value::IntValue(n)) => Some(*n),
            _ => None,
        }
    }

    #[test]
    fn full_record_span_has_ids_parent_and_semconv_attributes() {
        let head = b"POST /api/items?id=7 HTTP/1.1\r\nHost: 127.0.0.1:3000\r\nUser-Agent: curl/8\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00\r\ntracestate: a=1\r\nTraceState: b=2\r\n\r\n";
        let ev = TraceEvent {
            request_head: head,
            ..full_event()
        };
        let s = span(&ev);
        assert_eq!(s.trace_id, ev.trace_id.to_be_bytes());
        assert_eq!(s.span_id, ev.span_id.to_be_bytes());
        assert_eq!(s.parent_span_id, 0x00f0_67aa_0ba9_02b7u64.to_be_bytes());
        assert_eq!(s.kind, SpanKind::Server as i32);
        assert_eq!(s.name, "POST");
        assert_eq!(s.flags, 0x300, "not sampled, parent remote");
        assert_eq!(s.trace_state, "a=1,b=2");
        assert_eq!(s.start_time_unix_nano, ev.start_unix_ns);
        assert_eq!(s.end_time_unix_nano, ev.start_unix_ns + ev.duration_ns);
        let rows: &[(&str, &str)] = &[
            ("http.request.method", "POST"),
            ("url.scheme", "http"),
            ("url.path", "/api/items"),
            ("url.query", "id=7"),
            ("server.address", "127.0.0.1"),
            ("client.address", "127.0.0.1"),
            ("network.protocol.version", "1.1"),
            ("user_agent.original", "curl/8"),
            ("phantom.outcome", "fault"),
            ("phantom.upstream.address", "[::1]:3000"),
            ("error.type", "503"),
        ];
        for (key, want) in rows {
            assert_eq!(text(&s, key).as_deref(), Some(*want), "attribute {key}");
        }
        let ints: &[(&str, i64)] = &[
            ("server.port", 3000),
            ("client.port", 54321),
            ("http.response.status_code", 503),
            ("http.request.body.size", 11),
            ("http.response.body.size", 20),
            ("phantom.upstream.ttfb_ns", 456_789),
            ("phantom.fault.count", 2),
        ];
        for (key, want) in ints {
            assert_eq!(number(&s, key), Some(*want), "attribute {key}");
        }
        let status = s.status.expect("error status");
        assert_eq!(status.code, StatusCode::Error as i32);
    }

    #[test]
    fn each_fault_is_an_array_element_and_an_event() {
        let s = span(&full_event());
        let column = |key: &str| match attr(&s, key) {
            Some(Value::ArrayValue(a)) => a
                .values
                .iter()
                .map(|v| v.value.clone().expect("a value"))
                .collect::<Vec<_>>(),
            other => panic!("{key}: {other:?}"),
        };
        let strings = |v: &[&str]| {
            v.iter()
                .map(|s| Value::StringValue((*s).to_owned()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            column("phantom.fault.rule_id"),
            strings(&["r1", "refuse-items"])
        );
        assert_eq!(column("phantom.fault.kind"), strings(&["delay", "error"]));
        assert_eq!(
            column("phantom.fault.spec"),
            strings(&["delay:250ms", "error:503:0.5"])
        );
        assert_eq!(
            column("phantom.fault.value"),
            [Value::IntValue(250_000_000), Value::IntValue(503)]
        );
        assert_eq!(column("phantom.fault.unit"), strings(&["ns", "status"]));
        assert_eq!(number(&s, "phantom.fault.count"), Some(2));
        assert_eq!(s.events.len(), 2);
        for (event, kind) in s.events.iter().zip(["delay", "error"]) {
            assert_eq!(event.name, FAULT_EVENT);
            assert_eq!(event.attributes.len(), 5);
            let got = event
                .attributes
                .iter()
                .find(|kv| kv.key == "phantom.fault.kind")
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value);
            assert_eq!(got, Some(Value::StringValue(kind.into())));
        }
    }

    #[test]
    fn empty_rule_id_is_the_default_id() {
        let faults = [crate::trace::AppliedFault {
            rule_id: "",
            ..crate::trace::tests::FULL_FAULTS[1]
        }];
        let ev = TraceEvent {
            faults: &faults,
            ..full_event()
        };
        let s = span(&ev);
        let id = match attr(&s, "phantom.fault.rule_id") {
            Some(Value::ArrayValue(a)) => a.values[0].value.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            id,
            Some(Value::StringValue("r3".into())),
            "rule 2 is the third"
        );
    }

    #[test]
    fn no_fault_no_fault_attributes_but_the_generation() {
        let ev = TraceEvent {
            faults: &[],
            status: 200,
            outcome: Outcome::Ok,
            ..full_event()
        };
        let s = span(&ev);
        assert!(s.events.is_empty());
        assert_eq!(attr(&s, "phantom.fault.kind"), None);
        assert_eq!(
            number(&s, "phantom.fault_table.generation"),
            Some(i64::try_from(ev.generation).expect("small"))
        );
        assert!(s.status.is_none(), "a 200 is not an error");
    }

    #[test]
    fn status_rows() {
        let rows: &[(&str, u16, Outcome, Option<&str>)] = &[
            ("ok_200_unset", 200, Outcome::Ok, None),
            ("client_error_404_unset", 404, Outcome::Ok, None),
            ("bad_request_unset", 400, Outcome::BadRequest, None),
            ("origin_500_error", 500, Outcome::Ok, Some("500")),
            ("fault_503_error", 503, Outcome::Fault, Some("503")),
            (
                "upstream_error",
                502,
                Outcome::UpstreamError,
                Some("upstream-error"),
            ),
            (
                "upstream_timeout",
                504,
                Outcome::UpstreamTimeout,
                Some("upstream-timeout"),
            ),
            (
                "client_closed",
                0,
                Outcome::ClientClosed,
                Some("client-closed"),
            ),
        ];
        for (name, status, outcome, want) in rows {
            let ev = TraceEvent {
                status: *status,
                outcome: *outcome,
                faults: &[],
                ..full_event()
            };
            let s = span(&ev);
            assert_eq!(text(&s, "error.type").as_deref(), *want, "row {name}");
            let code = s.status.as_ref().map(|st| st.code);
            let want_code = want.map(|_| StatusCode::Error as i32);
            assert_eq!(code, want_code, "row {name}");
            assert_eq!(
                number(&s, "http.response.status_code").is_some(),
                *status != 0,
                "row {name}"
            );
        }
    }

    #[test]
    fn root_span_is_sampled_without_parent() {
        let ev = TraceEvent {
            parent_span_id: None,
            request_head: b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            ..full_event()
        };
        let s = span(&ev);
        assert!(s.parent_span_id.is_empty());
        assert_eq!(s.flags, 0x101);
        assert_eq!(s.trace_state, "");
        assert_eq!(text(&s, "user_agent.original"), None);
    }

    #[test]
    fn unknown_method_is_other() {
        let ev = TraceEvent {
            method: b"PURGE",
            ..full_event()
        };
        let s = span(&ev);
        assert_eq!(s.name, "HTTP");
        assert_eq!(text(&s, "http.request.method").as_deref(), Some("_OTHER"));
        assert_eq!(
            text(&s, "http.request.method_original").as_deref(),
            Some("PURGE")
        );
    }

    #[test]
    fn split_url_rows() {
        type Want = (
            &'static str,
            &'static str,
            &'static str,
            Option<&'static str>,
        );
        let rows: &[(&str, &str, Want)] = &[
            (
                "reverse",
                "http://a:1/p?q=1",
                ("http", "a:1", "/p", Some("q=1")),
            ),
            ("no_query", "http://a/p/q", ("http", "a", "/p/q", None)),
            ("empty_query", "http://a/?", ("http", "a", "/", Some(""))),
            ("upper_scheme", "HTTP://a/", ("http", "a", "/", None)),
            ("no_path", "http://a", ("http", "a", "", None)),
            ("query_no_path", "http://a?x", ("http", "a", "", Some("x"))),
            (
                "connect",
                "example.com:443",
                ("", "example.com:443", "", None),
            ),
            ("ipv6", "http://[::1]:8/x", ("http", "[::1]:8", "/x", None)),
        ];
        for (name, url, (scheme, authority, path, query)) in rows {
            let got = split_url(url.as_bytes());
            assert_eq!(got.scheme, *scheme, "row {name}");
            assert_eq!(got.authority, authority.as_bytes(), "row {name}");
            assert_eq!(got.path, path.as_bytes(), "row {name}");
            assert_eq!(got.query, query.map(str::as_bytes), "row {name}");
        }
    }

    #[test]
    fn split_authority_rows() {
        type Want = Option<(&'static str, Option<u16>)>;
        let rows: &[(&str, &str, &str, Want)] = &[
            ("host_port", "a:81", "http", Some(("a", Some(81)))),
            ("default_http", "a", "http", Some(("a", Some(80)))),
            ("default_https", "a", "https", Some(("a", Some(443)))),
            ("no_scheme_no_port", "a", "", Some(("a", None))),
            ("ipv6", "[::1]:9", "http", Some(("::1", Some(9)))),
            ("ipv6_default", "[::1]", "http", Some(("::1", Some(80)))),
            ("bad_port_default", "a:x", "http", Some(("a", Some(80)))),
            ("empty", "", "http", None),
        ];
        for (name, authority, scheme, want) in rows {
            let got = split_authority(authority.as_bytes(), scheme);
            let want = want.map(|(h, p)| (h.as_bytes(), p));
            assert_eq!(got, want, "row {name}");
        }
    }

    #[test]
    fn header_rows() {
        let head = b"GET / HTTP/1.1\r\nA: 1\r\nb:2\r\na:  3 \r\nnocolon\r\n\r\n";
        type Want = Option<&'static [u8]>;
        let rows: &[(&str, &[u8], Want)] = &[
            ("joined", b"a", Some(b"1,3")),
            ("no_space", b"b", Some(b"2")),
            ("absent", b"c", None),
            ("request_line_is_not_a_header", b"get / http/1.1", None),
        ];
        for (name, key, want) in rows {
            assert_eq!(header(head, key).as_deref(), *want, "row {name}");
        }
    }
}
