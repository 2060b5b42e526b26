//! Fuzz target `fault_spec`: arbitrary text through the fault grammar, as a `--fault` spec and as
//! an `x-phantom-fault` header value. It checks parsing and canonical printing only; compiling
//! rules into a `FaultTable` (which reads `body=@PATH` files) is not here.
//!
//! Oracles: `str::parse::<FaultRule>` returns a rule or a `SpecError`, never panics; a parsed
//! rule's values are inside the grammar's ranges; it prints (`Display`) a canonical spec that
//! parses back to an equal rule, and printing that rule again gives the same text (canonical form
//! is a fixed point). `HeaderFault::parse` never panics, and accepts a spec only when the full
//! parser accepts it with the same action and rate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phantom_fast::fault::{Dist, FaultAction, FaultRule, HeaderFault, Limit, Rate};

fuzz_target!(|data: &[u8]| {
    let header = HeaderFault::parse(data);
    if let Err(reason) = &header {
        let _ = reason.to_string();
    }
    let Ok(spec) = std::str::from_utf8(data) else {
        assert!(header.is_err(), "non-UTF-8 header accepted");
        return;
    };
    let rule = match spec.parse::<FaultRule>() {
        Ok(rule) => rule,
        Err(err) => {
            // The message names the spec; rendering it must not panic either.
            assert_eq!(err.spec(), spec, "error names another spec");
            let _ = err.to_string();
            assert!(
                header.is_err(),
                "header accepted what the parser rejects: {spec:?}"
            );
            return;
        }
    };
    if let Ok(header) = header {
        assert_eq!(
            header.action, rule.action,
            "header action differs: {spec:?}"
        );
        assert_eq!(header.rate, rule.rate, "header rate differs: {spec:?}");
    }
    match rule.action {
        FaultAction::Delay { dist, .. } => match dist {
            Dist::Uniform { min, max } => assert!(min < max, "uniform min >= max: {rule:?}"),
            Dist::LogNormal { p50, p99 } => assert!(p50 < p99, "lognormal p50 >= p99: {rule:?}"),
            Dist::Pareto { shape, .. } => assert!(shape > 0.0, "pareto shape: {rule:?}"),
            _ => {}
        },
        FaultAction::Error { status } => {
            assert!(
                (100..=599).contains(&status),
                "status out of range: {rule:?}"
            );
        }
        FaultAction::Truncate {
            limit: Limit::PartsPerMillion(ppm),
            ..
        } => assert!(ppm < 1_000_000, "fraction out of range: {rule:?}"),
        _ => {}
    }
    match rule.rate {
        Rate::Probability(p) => assert!((0.0..1.0).contains(&p), "probability: {rule:?}"),
        Rate::Ratio { hits, every } => assert!(1 <= hits && hits <= every, "ratio: {rule:?}"),
        Rate::Always => {}
    }
    if let Some(filter) = &rule.url_filter {
        assert!(filter.starts_with('/'), "filter without '/': {rule:?}");
    }
    let canonical = rule.to_string();
    let again = match canonical.parse::<FaultRule>() {
        Ok(again) => again,
        Err(err) => panic!("canonical text of {spec:?} does not parse: {err}"),
    };
    assert_eq!(
        again, rule,
        "{spec:?} -> {canonical:?} parses to another rule"
    );
    assert_eq!(
        again.to_string(),
        canonical,
        "canonical text is not a fixed point"
    );
});
