//! The admin routes and the live rule set they edit: probes, `/metrics` and the fault API, as a
//! function from a parsed request to a response. It owns the rule set, compiles it (through the
//! caller's compile function) and publishes it; it reads no socket (`listener.rs` does).
//!
//! Every mutation is checked first (no browser `Origin`/`Sec-Fetch-*`, the bearer token when one
//! is set, `If-Match` when sent), validated whole, and only then applied: a bad body changes
//! nothing. A mutation answers after every worker applied the new generation.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use httparse::Header;
use serde_json::{Value, json};

use super::{
    metrics::{LiveRuleGauge, Scrape, encode_metrics},
    publish::Publisher,
    rules::{self, LiveRule, RuleError},
};
use crate::{fault::FaultRule, http};

/// How long a mutation waits for every worker to apply it before answering 503 (it stays
/// published; a worker picks it up as soon as it gets to it).
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a scrape waits for the workers' fresh counters (an idle worker answers in
/// microseconds, a busy one when its current task yields); past it, their last reports count.
const REPORT_WAIT: Duration = Duration::from_millis(100);

/// What the admin thread needs to turn a rule set into the workers' snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Compiled<'a> {
    /// Rule-set generation (the `ETag`).
    pub generation: u64,
    /// The rules in force now (scheduled-off rules left out, ramps applied), in order.
    pub rules: &'a [FaultRule],
    /// Their ids, same order and length.
    pub ids: &'a [Arc<str>],
    /// The ids of the whole live set, scheduled-off rules included (whose counters stay).
    pub live_ids: &'a [Arc<str>],
}

/// Builds the workers' snapshot from a rule set (the server passes the fault table's compile);
/// an error (e.g. a body file that cannot be read) refuses the set, naming the rule by its id
/// and what was wrong.
pub type CompileFn<T> = Box<dyn Fn(Compiled<'_>) -> Result<T, RuleError> + Send>;

/// One admin request, parsed.
#[derive(Debug, Clone, Copy)]
pub struct Request<'h, 'b> {
    /// The method.
    pub method: &'b str,
    /// The path, query string removed.
    pub path: &'b str,
    /// The header lines.
    pub headers: &'h [Header<'b>],
    /// The body (bounded by the listener).
    pub body: &'b [u8],
}

/// One admin response; the listener adds framing and `connection: close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `content-type`.
    pub content_type: &'static str,
    /// Further headers.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.into().into_bytes(),
        }
    }

    fn json(status: u16, body: &Value) -> Response {
        let mut bytes = serde_json::to_vec_pretty(body).unwrap_or_default();
        bytes.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: bytes,
        }
    }

    fn error(status: u16, message: impl Into<String>) -> Response {
        Response::json(status, &json!({ "error": message.into() }))
    }

    fn with(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }
}

/// A rule of the live set and when it was applied (its ramp and schedule count from then).
#[derive(Debug, Clone)]
struct Applied {
    rule: LiveRule,
    since: Instant,
}

/// The admin thread's state: the live rule set, the startup set for `reset`, and the publisher.
pub struct Admin<T> {
    publisher: Publisher<T>,
    compile: CompileFn<T>,
    startup: Vec<LiveRule>,
    rules: Vec<Applied>,
    generation: u64,
    token: Option<String>,
    /// What was last compiled, to publish a ramp step only when something moved.
    compiled: Vec<Option<FaultRule>>,
    /// The OTLP exporter's counters, appended to `/metrics` when it runs.
    export: Option<Arc<crate::export::ExportStats>>,
}

impl<T: Send + Sync> Admin<T> {
    /// The admin state for `workers` workers starting with `startup` (generation 1, compiled and
    /// published before any worker starts), and the publisher the workers link to.
    ///
    /// # Errors
    /// The compile function's message when the startup set does not compile.
    pub fn new(
        workers: usize,
        startup: Vec<LiveRule>,
        compile: CompileFn<T>,
        token: Option<String>,
    ) -> Result<(Admin<T>, Publisher<T>), String> {
        let now = Instant::now();
        let rules: Vec<Applied> = startup
            .iter()
            .map(|rule| Applied {
                rule: rule.clone(),
                since: now,
            })
            .collect();
        validate(&compile, &rules, 1).map_err(|e| e.to_string())?;
        let (effective, snapshot) =
            compile_set(&compile, &rules, 1, now).map_err(|e| e.to_string())?;
        let publisher = Publisher::new(workers, 1, Arc::new(snapshot));
        let admin = Admin {
            publisher: publisher.clone(),
            compile,
            startup,
            rules,
            generation: 1,
            token,
            compiled: effective,
            export: None,
        };
        Ok((admin, publisher))
    }

    /// Adds the OTLP exporter's counters to `/metrics`.
    pub fn set_export_stats(&mut self, stats: Arc<crate::export::ExportStats>) {
        self.export = Some(stats);
    }

    /// Shutdown began: `/ready` answers 503 from now on.
    pub fn set_draining(&self) {
        self.publisher.set_draining();
    }

    /// The live rule-set generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The live rules, in order.
    pub fn rules(&self) -> impl Iterator<Item = &LiveRule> {
        self.rules.iter().map(|a| &a.rule)
    }

    /// Recompiles when a ramp or schedule moved the compiled form since the last publish (the
    /// generation stays: the rules are the same). Call every ~100 ms.
    pub fn tick(&mut self, now: Instant) {
        let effective: Vec<Option<FaultRule>> = self
            .rules
            .iter()
            .map(|a| a.rule.effective(now.saturating_duration_since(a.since)))
            .collect();
        if effective == self.compiled {
            return;
        }
        // Remembered either way, so a failure is reported once, not every tick.
        match compile_set(&self.compile, &self.rules, self.generation, now) {
            Ok((effective, snapshot)) => {
                self.compiled = effective;
                self.publisher.publish(self.generation, Arc::new(snapshot));
            }
            Err(message) => {
                self.compiled = effective;
                eprintln!(
                    "phantom-fast: a ramp or schedule step did not compile ({message}); keeping the last table"
                );
            }
        }
    }

    /// Replaces the whole set (rules file, `PUT /faults`), restarting every ramp and schedule.
    /// Returns whether every worker applied it within [`APPLY_TIMEOUT`].
    ///
    /// # Errors
    /// When the set does not compile; nothing changed then.
    pub fn replace(&mut self, rules: Vec<LiveRule>) -> Result<bool, RuleError> {
        let now = Instant::now();
        self.install(
            rules
                .into_iter()
                .map(|rule| Applied { rule, since: now })
                .collect(),
        )
    }

    /// Compiles `candidate` as the next generation; only when it compiles, makes it the live set,
    /// publishes it and waits for the workers (`Ok(false)`: not all applied within
    /// [`APPLY_TIMEOUT`]).
    fn install(&mut self, candidate: Vec<Applied>) -> Result<bool, RuleError> {
        let generation = self.generation + 1;
        validate(&self.compile, &candidate, generation)?;
        let (effective, snapshot) =
            compile_set(&self.compile, &candidate, generation, Instant::now())?;
        self.rules = candidate;
        self.generation = generation;
        self.compiled = effective;
        let seq = self.publisher.publish(generation, Arc::new(snapshot));
        Ok(self.publisher.wait_applied(seq, APPLY_TIMEOUT))
    }

    /// Answers one request.
    pub fn handle(&mut self, req: &Request<'_, '_>) -> Response {
        let mutation = !matches!(req.method, "GET" | "HEAD");
        if mutation && let Some(refusal) = self.refuse(req) {
            return refusal;
        }
        let path = req
            .path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(req.path);
        match (req.method, path) {
            ("GET" | "HEAD", "/live") => Response::text(200, "live\n"),
            ("GET" | "HEAD", "/ready") => self.ready(),
            ("GET" | "HEAD", "/metrics") => self.metrics(),
            ("GET" | "HEAD", "/faults") => self.show(req, 200),
            ("PUT", "/faults") => self.put_all(req),
            ("POST", "/faults") => self.post(req),
            ("DELETE", "/faults") => self.mutate(req, 200, |rules| {
                rules.clear();
                Ok(())
            }),
            ("POST", "/faults/reset") => {
                let startup = self.startup.clone();
                self.mutate(req, 200, |rules| {
                    *rules = startup;
                    Ok(())
                })
            }
            (_, "/live" | "/ready" | "/metrics") => method_not_allowed("GET, HEAD"),
            (_, "/faults") => method_not_allowed("GET, HEAD, PUT, POST, DELETE"),
            (_, "/faults/reset") => method_not_allowed("POST"),
            (method, path) => match path.strip_prefix("/faults/") {
                Some(id) if !id.contains('/') => self.one(req, method, id),
                _ => Response::error(404, format!("no route {path}; see GET /faults")),
            },
        }
    }

    /// 403 for a browser, 401 without the token, 412 on a stale `If-Match`.
    fn refuse(&self, req: &Request<'_, '_>) -> Option<Response> {
        let browser = req.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("origin")
                || h.name.len() > 10 && h.name[..10].eq_ignore_ascii_case("sec-fetch-")
        });
        if browser {
            return Some(Response::error(
                403,
                "requests from a browser (Origin or Sec-Fetch-* headers) may not change faults",
            ));
        }
        if let Some(token) = &self.token {
            let sent = http::header(req.headers, "authorization")
                .and_then(|v| v.strip_prefix(b"Bearer "))
                .unwrap_or_default();
            if !constant_time_eq(sent, token.as_bytes()) {
                return Some(
                    Response::error(401, "this admin endpoint needs Authorization: Bearer TOKEN")
                        .with("www-authenticate", "Bearer".into()),
                );
            }
        }
        if let Some(expected) = http::header(req.headers, "if-match") {
            let expected = String::from_utf8_lossy(expected);
            let tag = expected.trim().trim_start_matches("W/").trim_matches('"');
            if tag != "*" && tag != self.generation.to_string() {
                return Some(
                    Response::error(
                        412,
                        format!(
                            "If-Match {expected} does not match the live generation {}",
                            self.generation
                        ),
                    )
                    .with("etag", etag(self.generation)),
                );
            }
        }
        None
    }

    fn ready(&self) -> Response {
        if self.publisher.is_draining() {
            Response::text(503, "draining\n")
        } else if self.publisher.all_serving() {
            Response::text(200, "ready\n")
        } else {
            Response::text(503, "starting\n")
        }
    }

    fn metrics(&self) -> Response {
        let now = Instant::now();
        self.publisher.refresh_reports(REPORT_WAIT);
        let scrape = Scrape {
            total: self.publisher.total_report(),
            rules: self
                .rules
                .iter()
                .map(|a| LiveRuleGauge {
                    id: a.rule.id.clone(),
                    kind: a.rule.rule.kind(),
                    probability: a
                        .rule
                        .probability_at(now.saturating_duration_since(a.since)),
                })
                .collect(),
            generation: self.generation,
            version: env!("CARGO_PKG_VERSION"),
        };
        let mut body = String::new();
        encode_metrics(&scrape, &mut body);
        if let Some(export) = &self.export {
            export.encode_metrics(&mut body);
        }
        Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            headers: Vec::new(),
            body: body.into_bytes(),
        }
    }

    /// The live set as JSON (or rules-file text for `Accept: text/plain`).
    fn show(&self, req: &Request<'_, '_>, status: u16) -> Response {
        let wants_text = http::header(req.headers, "accept")
            .is_some_and(|accept| accept.starts_with(b"text/plain"));
        let response = if wants_text {
            let live: Vec<LiveRule> = self.rules().cloned().collect();
            Response::text(status, rules::to_text(&live))
        } else {
            Response::json(status, &self.to_json())
        };
        response.with("etag", etag(self.generation))
    }

    /// `GET /faults`: generation, each worker's applied generation, every rule with its state.
    pub fn to_json(&self) -> Value {
        let now = Instant::now();
        json!({
            "generation": self.generation,
            "workers": self.publisher.applied_generations(),
            "rules": self
                .rules
                .iter()
                .map(|a| a.rule.to_json(now.saturating_duration_since(a.since)))
                .collect::<Vec<_>>(),
        })
    }

    fn put_all(&mut self, req: &Request<'_, '_>) -> Response {
        let parsed = match body_kind(req) {
            Body::Json(value) => value.and_then(|v| rules::parse_json_set(&v)),
            Body::Text(text) => text.and_then(rules::parse_text),
        };
        match parsed {
            Ok(set) => match self.replace(set) {
                Ok(applied) => self.answer(req, 200, applied),
                Err(err) => Response::json(400, &err.to_json()),
            },
            Err(err) => Response::json(400, &err.to_json()),
        }
    }

    fn post(&mut self, req: &Request<'_, '_>) -> Response {
        let index = self.free_index();
        let parsed = match body_kind(req) {
            Body::Json(value) => value.and_then(|v| rules::parse_json_rule(&v, index, "body")),
            Body::Text(text) => text.and_then(|text| {
                let mut lines = text
                    .lines()
                    .filter_map(|line| rules::parse_line(line, index, "body").transpose());
                match (lines.next(), lines.next()) {
                    (Some(rule), None) => rule,
                    (None, _) => Err(RuleError {
                        rule: "body".into(),
                        spec: text.into(),
                        reason: "no rule; expected one spec, e.g. error:503:/api".into(),
                    }),
                    (Some(_), Some(_)) => Err(RuleError {
                        rule: "body".into(),
                        spec: text.into(),
                        reason: "more than one rule; POST adds one (PUT /faults replaces all)"
                            .into(),
                    }),
                }
            }),
        };
        let rule = match parsed {
            Ok(rule) => rule,
            Err(err) => return Response::json(400, &err.to_json()),
        };
        let id = rule.id.clone();
        let response = self.mutate(req, 201, |rules| {
            rules.push(rule);
            Ok(())
        });
        if response.status == 201 {
            response.with("location", format!("/faults/{id}"))
        } else {
            response
        }
    }

    /// `GET`/`PUT`/`DELETE /faults/{id}`.
    fn one(&mut self, req: &Request<'_, '_>, method: &str, id: &str) -> Response {
        let Some(position) = self.rules.iter().position(|a| a.rule.id == id) else {
            return Response::error(404, format!("no rule with id {id:?}; see GET /faults"));
        };
        match method {
            "GET" | "HEAD" => Response::json(
                200,
                &self.rules[position]
                    .rule
                    .to_json(Instant::now().saturating_duration_since(self.rules[position].since)),
            )
            .with("etag", etag(self.generation)),
            "DELETE" => self.mutate(req, 200, |rules| {
                rules.remove(position);
                Ok(())
            }),
            "PUT" => {
                let parsed = match body_kind(req) {
                    Body::Json(value) => {
                        value.and_then(|v| rules::parse_json_rule(&v, position, id))
                    }
                    Body::Text(text) => text.and_then(|text| {
                        rules::parse_line(text.trim(), position, id)?.ok_or_else(|| RuleError {
                            rule: id.into(),
                            spec: text.into(),
                            reason: "no rule; expected one spec, e.g. error:503:/api".into(),
                        })
                    }),
                };
                let mut rule = match parsed {
                    Ok(rule) => rule,
                    Err(err) => return Response::json(400, &err.to_json()),
                };
                let given = rule.id != rules::default_id(position);
                if given && rule.id != id {
                    return Response::json(
                        400,
                        &RuleError {
                            rule: id.into(),
                            spec: rule.id,
                            reason: format!("the body names another id; expected {id:?} or none"),
                        }
                        .to_json(),
                    );
                }
                rule.id = id.to_owned();
                self.mutate(req, 200, |rules| {
                    rules[position] = rule;
                    Ok(())
                })
            }
            _ => method_not_allowed("GET, HEAD, PUT, DELETE"),
        }
    }

    /// Applies an edit of the rule list (kept rules keep their clocks), validates the result,
    /// publishes it and answers with the new set.
    fn mutate(
        &mut self,
        req: &Request<'_, '_>,
        status: u16,
        edit: impl FnOnce(&mut Vec<LiveRule>) -> Result<(), RuleError>,
    ) -> Response {
        let mut list: Vec<LiveRule> = self.rules().cloned().collect();
        if let Err(err) = edit(&mut list).and_then(|()| rules::check_set(&list)) {
            return Response::json(400, &err.to_json());
        }
        let now = Instant::now();
        let candidate = list
            .into_iter()
            .map(|rule| {
                let since = self
                    .rules
                    .iter()
                    .find(|a| a.rule == rule)
                    .map_or(now, |a| a.since);
                Applied { rule, since }
            })
            .collect();
        match self.install(candidate) {
            Ok(applied) => self.answer(req, status, applied),
            Err(err) => Response::json(400, &err.to_json()),
        }
    }

    fn answer(&self, req: &Request<'_, '_>, status: u16, applied: bool) -> Response {
        if applied {
            self.show(req, status)
        } else if self.publisher.workers_stopped() {
            Response::error(
                503,
                format!(
                    "generation {} is published, but the proxy is shutting down: its workers \
                     apply no more edits",
                    self.generation
                ),
            )
            .with("etag", etag(self.generation))
        } else {
            Response::error(
                503,
                format!(
                    "generation {} is published but not every worker applied it within {:?}",
                    self.generation, APPLY_TIMEOUT
                ),
            )
            .with("etag", etag(self.generation))
        }
    }

    /// The first position from the end of the set whose default id is not taken.
    fn free_index(&self) -> usize {
        (self.rules.len()..)
            .find(|n| {
                let id = rules::default_id(*n);
                !self.rules.iter().any(|a| a.rule.id == id)
            })
            .unwrap_or(self.rules.len())
    }
}

/// Compiles every rule as written, scheduled or not, so a rule that would only fail when its
/// window opens is refused now.
fn validate<T>(
    compile: &CompileFn<T>,
    rules: &[Applied],
    generation: u64,
) -> Result<(), RuleError> {
    if rules.iter().all(|a| a.rule.schedule.is_none()) {
        return Ok(()); // compile_set compiles every rule anyway
    }
    let ids = live_ids(rules);
    let all: Vec<FaultRule> = rules.iter().map(|a| a.rule.rule.clone()).collect();
    compile(Compiled {
        generation,
        rules: &all,
        ids: &ids,
        live_ids: &ids,
    })
    .map(drop)
}

/// Every rule's id, in order.
fn live_ids(rules: &[Applied]) -> Vec<Arc<str>> {
    rules
        .iter()
        .map(|a| Arc::from(a.rule.id.as_str()))
        .collect()
}

/// Compiles the rules in force at `now`; returns what was compiled (per rule, `None` when off)
/// and the snapshot.
fn compile_set<T>(
    compile: &CompileFn<T>,
    rules: &[Applied],
    generation: u64,
    now: Instant,
) -> Result<(Vec<Option<FaultRule>>, T), RuleError> {
    let effective: Vec<Option<FaultRule>> = rules
        .iter()
        .map(|a| a.rule.effective(now.saturating_duration_since(a.since)))
        .collect();
    let (ids, live): (Vec<Arc<str>>, Vec<FaultRule>) = rules
        .iter()
        .zip(&effective)
        .filter_map(|(a, rule)| Some((Arc::from(a.rule.id.as_str()), rule.clone()?)))
        .unzip();
    let snapshot = compile(Compiled {
        generation,
        rules: &live,
        ids: &ids,
        live_ids: &live_ids(rules),
    })?;
    Ok((effective, snapshot))
}

/// How a body is read.
enum Body<'b> {
    Json(Result<Value, RuleError>),
    Text(Result<&'b str, RuleError>),
}

/// JSON for `application/json` or a body starting with `{` or `[`; rules-file text otherwise
/// (`curl -d` sends form encoding for what is really text).
fn body_kind<'b>(req: &Request<'_, 'b>) -> Body<'b> {
    let not_utf8 = || RuleError {
        rule: "body".into(),
        spec: String::new(),
        reason: "the body is not UTF-8".into(),
    };
    let json_type = http::header(req.headers, "content-type")
        .is_some_and(|t| t.len() >= 16 && t[..16].eq_ignore_ascii_case(b"application/json"));
    let starts_json = req
        .body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| matches!(b, b'{' | b'['));
    if json_type || starts_json {
        Body::Json(serde_json::from_slice(req.body).map_err(|e| {
            RuleError {
                rule: "body".into(),
                spec: String::from_utf8_lossy(req.body)
                    .chars()
                    .take(200)
                    .collect(),
                reason: format!(
                    "not valid JSON ({e}); expected {{\"rules\": [{{\"spec\": ...}}]}}"
                ),
            }
        }))
    } else {
        Body::Text(std::str::from_utf8(req.body).map_err(|_| not_utf8()))
    }
}

fn method_not_allowed(allow: &'static str) -> Response {
    Response::error(405, format!("method not allowed; allowed: {allow}"))
        .with("allow", allow.into())
}

fn etag(generation: u64) -> String {
    format!("\"{generation}\"")
}

/// Compares without an early exit, so the token cannot be guessed byte by byte from timings.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header name/value pairs of a test request.
    type Headers<'a> = &'a [(&'a str, &'a str)];

    /// The snapshot a test worker sees: generation and the compiled specs with ids.
    type Snapshot = (u64, Vec<String>);

    fn admin(startup: &str, token: Option<&str>) -> (Admin<Snapshot>, Publisher<Snapshot>) {
        let compile: CompileFn<Snapshot> = Box::new(|c: Compiled<'_>| {
            // A stand-in for a compile failure the grammar cannot see (a missing body file).
            if let Some((id, rule)) = c
                .ids
                .iter()
                .zip(c.rules)
                .find(|(_, r)| r.to_string().contains("/uncompilable"))
            {
                return Err(RuleError {
                    rule: id.to_string(),
                    spec: rule.to_string(),
                    reason: "does not compile".into(),
                });
            }
            let specs = c
                .ids
                .iter()
                .zip(c.rules)
                .map(|(id, rule)| format!("{id}={rule}"))
                .collect();
            Ok((c.generation, specs))
        });
        Admin::new(
            1,
            rules::parse_text(startup).unwrap(),
            compile,
            token.map(str::to_owned),
        )
        .unwrap()
    }

    /// A worker thread acking every publish, as a worker woken with news would.
    fn acker(publisher: &Publisher<Snapshot>) -> std::thread::JoinHandle<()> {
        let mut link = publisher.worker(0);
        let publisher = publisher.clone();
        std::thread::spawn(move || {
            while !publisher.is_draining() {
                if link.poll().is_some() {
                    link.ack();
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    }

    fn call(
        admin: &mut Admin<Snapshot>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Response {
        let headers: Vec<Header<'_>> = headers
            .iter()
            .map(|(name, value)| Header {
                name,
                value: value.as_bytes(),
            })
            .collect();
        admin.handle(&Request {
            method,
            path,
            headers: &headers,
            body: body.as_bytes(),
        })
    }

    fn json_of(response: &Response) -> Value {
        serde_json::from_slice(&response.body).unwrap()
    }

    #[test]
    fn fault_api_edits_publish_and_answer_after_the_ack() {
        let (mut admin, publisher) = admin("id=base delay:1ms\n", None);
        let worker = acker(&publisher);
        // (name, method, path, headers, body, status, compiled rules afterwards)
        type Row<'a> = (
            &'a str,
            &'a str,
            &'a str,
            Headers<'a>,
            &'a str,
            u16,
            &'a [&'a str],
        );
        let rows: &[Row<'_>] = &[
            ("get", "GET", "/faults", &[], "", 200, &["base=delay:1ms"]),
            (
                "put_text",
                "PUT",
                "/faults",
                &[],
                "error:503:/api\n# c\nid=x delay:5ms\n",
                200,
                &["r1=error:503:/api", "x=delay:5ms"],
            ),
            (
                "post_json",
                "POST",
                "/faults",
                &[("content-type", "application/json")],
                r#"{"spec":"error:500:0.5"}"#,
                201,
                &["r1=error:503:/api", "x=delay:5ms", "r3=error:500:0.5"],
            ),
            (
                "put_one",
                "PUT",
                "/faults/x",
                &[],
                "delay:7ms",
                200,
                &["r1=error:503:/api", "x=delay:7ms", "r3=error:500:0.5"],
            ),
            (
                "delete_one",
                "DELETE",
                "/faults/r1",
                &[],
                "",
                200,
                &["x=delay:7ms", "r3=error:500:0.5"],
            ),
            (
                "bad_put_changes_nothing",
                "PUT",
                "/faults",
                &[],
                "error:503\nerror:700\n",
                400,
                &["x=delay:7ms", "r3=error:500:0.5"],
            ),
            (
                "stale_if_match",
                "DELETE",
                "/faults",
                &[("if-match", "\"2\"")],
                "",
                412,
                &["x=delay:7ms", "r3=error:500:0.5"],
            ),
            (
                "fresh_if_match",
                "DELETE",
                "/faults",
                &[("if-match", "\"5\"")],
                "",
                200,
                &[],
            ),
            (
                "reset",
                "POST",
                "/faults/reset",
                &[],
                "",
                200,
                &["base=delay:1ms"],
            ),
        ];
        for (name, method, path, headers, body, status, want) in rows {
            let response = call(&mut admin, method, path, headers, body);
            assert_eq!(
                response.status,
                *status,
                "{name}: {}",
                String::from_utf8_lossy(&response.body)
            );
            let (generation, snapshot) = publisher.latest();
            assert_eq!(generation, admin.generation(), "{name}");
            let specs: Vec<&str> = snapshot.1.iter().map(String::as_str).collect();
            assert_eq!(specs, *want, "{name}");
            if *status < 300 && *method != "GET" {
                assert_eq!(
                    publisher.applied_generations(),
                    [generation],
                    "{name}: acked before answering"
                );
            }
        }
        publisher.set_draining();
        worker.join().unwrap();
    }

    #[test]
    fn bad_body_is_400_naming_the_rule() {
        let (mut admin, publisher) = admin("", None);
        let response = call(&mut admin, "PUT", "/faults", &[], "error:503\nerror:700\n");
        assert_eq!(response.status, 400);
        let body = json_of(&response);
        assert_eq!(body["rule"], "line 2");
        assert_eq!(body["spec"], "error:700");
        assert!(
            body["expected"]
                .as_str()
                .unwrap()
                .contains("out of range 100–599")
        );
        assert_eq!(admin.generation(), 1);
        assert_eq!(publisher.latest().0, 1);
        let response = call(&mut admin, "POST", "/faults", &[], "{\"spec\": 5}");
        assert_eq!(response.status, 400);
        assert!(
            json_of(&response)["expected"]
                .as_str()
                .unwrap()
                .contains("must be a string")
        );
        let response = call(
            &mut admin,
            "PUT",
            "/faults",
            &[],
            "error:503:/uncompilable schedule=1h+1s\n",
        );
        assert_eq!(
            response.status, 400,
            "refused although its window is not open yet"
        );
        let body = json_of(&response);
        assert_eq!(body["rule"], "r1", "the compile error names the rule by id");
        assert!(
            body["expected"]
                .as_str()
                .unwrap()
                .contains("does not compile")
        );
        assert_eq!(admin.generation(), 1);
    }

    #[test]
    fn refusals_browser_token_and_get_never_mutates() {
        let (mut admin, _publisher) = admin("error:503\n", Some("s3cret"));
        type Row<'a> = (&'a str, &'a str, &'a str, Headers<'a>, u16);
        let rows: &[Row<'_>] = &[
            ("no_token", "DELETE", "/faults", &[], 401),
            (
                "wrong_token",
                "DELETE",
                "/faults",
                &[("authorization", "Bearer nope")],
                401,
            ),
            (
                "origin",
                "DELETE",
                "/faults",
                &[
                    ("authorization", "Bearer s3cret"),
                    ("origin", "http://evil"),
                ],
                403,
            ),
            (
                "sec_fetch",
                "POST",
                "/faults/reset",
                &[
                    ("authorization", "Bearer s3cret"),
                    ("Sec-Fetch-Site", "cross-site"),
                ],
                403,
            ),
            (
                "get_with_origin_is_fine",
                "GET",
                "/faults",
                &[("origin", "http://x")],
                200,
            ),
            ("get_cannot_delete", "GET", "/faults/r1", &[], 200),
            ("unknown_route", "GET", "/nope", &[], 404),
            (
                "wrong_method",
                "POST",
                "/metrics",
                &[("authorization", "Bearer s3cret")],
                405,
            ),
        ];
        for (name, method, path, headers, status) in rows {
            let response = call(&mut admin, method, path, headers, "");
            assert_eq!(response.status, *status, "{name}");
            assert_eq!(admin.generation(), 1, "{name}: nothing changed");
        }
    }

    #[test]
    fn probes_follow_workers_and_draining() {
        let (mut admin, publisher) = admin("", None);
        assert_eq!(call(&mut admin, "GET", "/live", &[], "").status, 200);
        assert_eq!(call(&mut admin, "GET", "/ready", &[], "").status, 503);
        let mut link = publisher.worker(0);
        link.poll();
        link.ack();
        assert_eq!(call(&mut admin, "GET", "/ready", &[], "").status, 200);
        publisher.set_draining();
        assert_eq!(call(&mut admin, "GET", "/ready", &[], "").status, 503);
        let metrics = call(&mut admin, "GET", "/metrics", &[], "");
        assert_eq!(
            metrics.content_type,
            "text/plain; version=0.0.4; charset=utf-8"
        );
    }

    #[test]
    fn tick_republishes_while_a_ramp_moves() {
        let (mut admin, publisher) = admin("error:503 ramp=0..1/200ms\n", None);
        let mut link = publisher.worker(0);
        let first = link.poll().unwrap().1;
        assert_eq!(first.1, ["r1=error:503:0"]);
        std::thread::sleep(Duration::from_millis(250));
        admin.tick(Instant::now());
        let (generation, settled) = link.poll().unwrap();
        assert_eq!(generation, 1, "a ramp step keeps the generation");
        assert_eq!(settled.1, ["r1=error:503"]);
        admin.tick(Instant::now());
        assert!(link.poll().is_none(), "settled: nothing to publish");
    }
}
