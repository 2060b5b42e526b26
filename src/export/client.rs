//! The OTLP/HTTP side: where spans go (flag and `OTEL_EXPORTER_OTLP_*` variables), one POST of
//! a protobuf `ExportTraceServiceRequest`, and what its answer means for retrying.
//!
//! Blocking (ureq), on the exporter's own thread only; it does not batch or decide when to send.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;

/// Path appended to a base endpoint (`--otlp-endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT`).
const TRACES_PATH: &str = "v1/traces";
/// Default `OTEL_EXPORTER_OTLP_TIMEOUT`: the whole of one export request (the spec's 10 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connecting to the collector: a collector that is down is known fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A `Retry-After` longer than this is shortened to it: the rings keep filling meanwhile.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Largest response body read (a status or partial-success message).
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

/// Where and how spans are sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The full URL POSTed to, e.g. `http://collector:4318/v1/traces`.
    pub url: String,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS`, then `..._TRACES_HEADERS`).
    pub headers: Vec<(String, String)>,
    /// One export request may take this long (`OTEL_EXPORTER_OTLP_TIMEOUT`, ms).
    pub timeout: Duration,
}

impl Endpoint {
    /// Resolves the endpoint: `flag` (a base URL: `/v1/traces` is appended) wins, then
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is), then `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (a base URL). `None` when none is set: no export. `env` looks a variable up (tests pass
    /// a table; the CLI passes `std::env::var`).
    ///
    /// # Errors
    /// A message naming the variable or flag whose value is not an `http://` or `https://` URL,
    /// or whose headers or timeout do not parse.
    pub fn resolve(
        flag: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Endpoint>, String> {
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let (source, url) = if let Some(base) = flag {
            ("--otlp-endpoint", join(base))
        } else if let Some(url) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url.trim().to_owned())
        } else if let Some(base) = env("OTEL_EXPORTER_OTLP_ENDPOINT") {
            ("OTEL_EXPORTER_OTLP_ENDPOINT", join(&base))
        } else {
            return Ok(None);
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "{source} {url:?}: expected an http:// or https:// URL (OTLP/HTTP, e.g. http://127.0.0.1:4318)"
            ));
        }
        let mut headers = Vec::new();
        for name in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            if let Some(list) = env(name) {
                parse_headers(&list, &mut headers).map_err(|e| format!("{name}: {e}"))?;
            }
        }
        let timeout = match env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .or_else(|| env("OTEL_EXPORTER_OTLP_TIMEOUT"))
        {
            Some(ms) => ms
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&ms| ms > 0)
                .map(Duration::from_millis)
                .ok_or_else(|| {
                    format!("OTEL_EXPORTER_OTLP_TIMEOUT {ms:?}: expected milliseconds")
                })?,
            None => DEFAULT_TIMEOUT,
        };
        Ok(Some(Endpoint {
            url,
            headers,
            timeout,
        }))
    }
}

/// `base` + `/v1/traces`, with exactly one slash between.
fn join(base: &str) -> String {
    let base = base.trim();
    if base.ends_with('/') {
        format!("{base}{TRACES_PATH}")
    } else {
        format!("{base}/{TRACES_PATH}")
    }
}

/// `key1=value1,key2=value2` (W3C Baggage-like; values percent-decoded), appended to `out`; a
/// later key replaces an earlier one (the signal-specific list overrides the general one).
fn parse_headers(list: &str, out: &mut Vec<(String, String)>) -> Result<(), String> {
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?}: expected key=value"))?;
        let key = percent_decode(key.trim())?.to_ascii_lowercase();
        let value = percent_decode(value.trim())?;
        if key.is_empty() || !key.bytes().all(is_token_byte) {
            return Err(format!("{item:?}: not a header name"));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(format!("{item:?}: a header value cannot hold a line break"));
        }
        out.retain(|(k, _)| *k != key);
        out.push((key, value));
    }
    Ok(())
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("{s:?}: bad percent escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?}: not UTF-8 once decoded"))
}

/// What one export request came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// 2xx: accepted; `rejected` spans of it were refused (OTLP partial success).
    Accepted {
        /// Spans the collector said it rejected.
        rejected: u64,
    },
    /// 429, 502, 503, 504, or no answer at all (refused, reset, timed out): send the same
    /// request again, no sooner than `after` if the collector said so (`Retry-After`).
    Retry {
        /// The collector's `Retry-After`, capped at [`MAX_RETRY_AFTER`].
        after: Option<Duration>,
        /// For the operator: the status or the transport error.
        why: String,
    },
    /// Any other answer: this batch will never be accepted; drop it.
    Refused {
        /// For the operator: the status and the start of the body.
        why: String,
    },
}

/// A blocking OTLP/HTTP client for one endpoint (keeps its connection alive between requests).
pub struct Client {
    agent: ureq::Agent,
    endpoint: Endpoint,
}

impl Client {
    /// A client for `endpoint`.
    pub fn new(endpoint: Endpoint) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(endpoint.timeout))
            .timeout_connect(Some(CONNECT_TIMEOUT.min(endpoint.timeout)))
            .user_agent(concat!("phantom-fast/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client { agent, endpoint }
    }

    /// The URL spans are POSTed to.
    pub fn url(&self) -> &str {
        &self.endpoint.url
    }

    /// POSTs one encoded `ExportTraceServiceRequest`, giving up after `timeout` (at most the
    /// endpoint's own).
    pub fn send(&self, body: &[u8], timeout: Duration) -> Sent {
        let mut request = self
            .agent
            .post(&self.endpoint.url)
            .header("content-type", "application/x-protobuf");
        for (key, value) in &self.endpoint.headers {
            request = request.header(key, value);
        }
        let request = request
            .config()
            .timeout_global(Some(timeout.min(self.endpoint.timeout)))
            .build();
        let mut response = match request.send(body) {
            Ok(response) => response,
            Err(e) => {
                return Sent::Retry {
                    after: None,
                    why: e.to_string(),
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()
            .unwrap_or_default();
        classify(status, retry_after, &body)
    }
}

/// The OTLP/HTTP rules (specification, "Failures" and "Throttling"): 2xx is success (with an
/// optional partial success), 429/502/503/504 are retryable, everything else is not.
fn classify(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Sent {
    match status {
        200..=299 => {
            let rejected = ExportTraceServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0));
            Sent::Accepted { rejected }
        }
        429 | 502 | 503 | 504 => Sent::Retry {
            after: retry_after,
            why: format!("HTTP {status}"),
        },
        _ => {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
            Sent::Refused {
                why: format!("HTTP {status} {}", text.trim()),
            }
        }
    }
}

/// `Retry-After` (RFC 9110 §10.2.3): delay-seconds or an IMF-fixdate, relative to `now`;
/// capped at [`MAX_RETRY_AFTER`]. `None` if it is neither.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = UNIX_EPOCH + Duration::from_secs(parse_imf_fixdate(value)?);
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` → seconds since the Unix epoch.
fn parse_imf_fixdate(s: &str) -> Option<u64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut parts = s.split_ascii_whitespace();
    let _weekday = parts.next()?.strip_suffix(',')?;
    let day: u64 = parts.next()?.parse().ok()?;
    let month_name = parts.next()?;
    let month = MONTHS.iter().position(|m| *m == month_name)? as u64 + 1;
    let year: u64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|n| n.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || year < 1970 || h > 23 || m > 59 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec)
}

/// Days from 1970-01-01 to the given date (Howard Hinnant's `days_from_civil`, years ≥ 1970).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn resolve_rows() {
        type Row = (
            &'static str,
            Option<&'static str>,
            &'static [(&'static str, &'static str)],
            Option<&'static str>,
        );
        let rows: &[Row] = &[
            ("nothing_set", None, &[], None),
            (
                "flag_is_a_base",
                Some("http://c:4318"),
                &[],
                Some("http://c:4318/v1/traces"),
            ),
            (
                "flag_trailing_slash",
                Some("http://c:4318/"),
                &[],
                Some("http://c:4318/v1/traces"),
            ),
            (
                "flag_beats_env",
                Some("http://flag"),
                &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://env/x")],
                Some("http://flag/v1/traces"),
            ),
            (
                "traces_endpoint_as_is",
                None,
                &[
                    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t/custom"),
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://g"),
                ],
                Some("http://t/custom"),
            ),
            (
                "general_endpoint_gets_path",
                None,
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://g:4318/prefix")],
                Some("https://g:4318/prefix/v1/traces"),
            ),
            (
                "empty_env_ignored",
                None,
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")],
                None,
            ),
        ];
        for (name, flag, vars, want) in rows {
            let got = Endpoint::resolve(*flag, &env_of(vars)).expect(name);
            assert_eq!(got.map(|e| e.url).as_deref(), *want, "row {name}");
        }
    }

    #[test]
    fn resolve_rejects_bad_input() {
        type Vars = &'static [(&'static str, &'static str)];
        let rows: &[(&str, Option<&str>, Vars, &str)] = &[
            ("grpc_scheme", Some("grpc://c:4317"), &[], "--otlp-endpoint"),
            ("no_scheme", Some("c:4318"), &[], "http://"),
            (
                "bad_header",
                Some("http://c"),
                &[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")],
                "OTEL_EXPORTER_OTLP_HEADERS",
            ),
            (
                "bad_timeout",
                Some("http://c"),
                &[("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")],
                "milliseconds",
            ),
        ];
        for (name, flag, vars, needle) in rows {
            let err = Endpoint::resolve(*flag, &env_of(vars)).expect_err(name);
            assert!(err.contains(needle), "row {name}: {err}");
        }
    }

    #[test]
    fn headers_and_timeout_from_env() {
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b, X-Team=core"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-team=edge"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ]);
        let e = Endpoint::resolve(Some("http://c"), &env)
            .expect("valid")
            .expect("set");
        assert_eq!(
            e.headers,
            [
                ("api-key".to_owned(), "a b".to_owned()),
                ("x-team".to_owned(), "edge".to_owned())
            ]
        );
        assert_eq!(e.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn classify_rows() {
        let rows: &[(&str, u16, &str)] = &[
            ("ok", 200, "accepted"),
            ("accepted_202", 202, "accepted"),
            ("too_many", 429, "retry"),
            ("bad_gateway", 502, "retry"),
            ("unavailable", 503, "retry"),
            ("gateway_timeout", 504, "retry"),
            ("bad_request", 400, "refused"),
            ("unauthorized", 401, "refused"),
            ("not_found", 404, "refused"),
            ("internal", 500, "refused"),
        ];
        for (name, status, want) in rows {
            let got = match classify(*status, None, b"") {
                Sent::Accepted { .. } => "accepted",
                Sent::Retry { .. } => "retry",
                Sent::Refused { .. } => "refused",
            };
            assert_eq!(got, *want, "row {name}");
        }
    }

    #[test]
    fn partial_success_counts_rejected_spans() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
        let body = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "too old".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(classify(200, None, &body), Sent::Accepted { rejected: 3 });
    }

    #[test]
    fn retry_after_rows() {
        // 1994-11-06T08:49:37Z
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let rows: &[(&str, &str, Option<Duration>)] = &[
            ("seconds", "3", Some(Duration::from_secs(3))),
            ("zero", "0", Some(Duration::ZERO)),
            ("capped", "86400", Some(MAX_RETRY_AFTER)),
            (
                "date_in_future",
                "Sun, 06 Nov 1994 08:49:42 GMT",
                Some(Duration::from_secs(5)),
            ),
            (
                "date_in_past",
                "Sun, 06 Nov 1994 08:49:00 GMT",
                Some(Duration::ZERO),
            ),
            ("garbage", "soon", None),
            ("negative", "-1", None),
            ("not_gmt", "Sun, 06 Nov 1994 08:49:42 PST", None),
        ];
        for (name, value, want) in rows {
            assert_eq!(parse_retry_after(value, now), *want, "row {name}");
        }
    }

    #[test]
    fn days_from_civil_rows() {
        let rows: &[(&str, (u64, u64, u64), u64)] = &[
            ("epoch", (1970, 1, 1), 0),
            ("leap_day", (2000, 2, 29), 11_016),
            ("after_leap", (2000, 3, 1), 11_017),
            ("y2038", (2038, 1, 19), 24_855),
        ];
        for (name, (y, m, d), want) in rows {
            assert_eq!(days_from_civil(*y, *m, *d), *want, "row {name}");
        }
    }
}
