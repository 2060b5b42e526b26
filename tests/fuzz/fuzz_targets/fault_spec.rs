//! Fuzz target `fault_spec`: arbitrary text through the `--fault` grammar.
//! It checks parsing and canonical printing only; compiling rules into a `FaultTable` is not here.
//!
//! Oracles: `str::parse::<FaultRule>` returns a rule or a `SpecError`, never panics; a parsed
//! rule prints (`Display`) a canonical spec that parses back to an equal rule, and printing that
//! rule again gives the same text (canonical form is a fixed point).
#![no_main]

use libfuzzer_sys::fuzz_target;
use phantom_fast::fault::{FaultAction, FaultRule};

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = std::str::from_utf8(data) else {
        return;
    };
    let rule = match spec.parse::<FaultRule>() {
        Ok(rule) => rule,
        Err(err) => {
            // The message names the spec; rendering it must not panic either.
            assert_eq!(err.spec(), spec, "error names another spec");
            let _ = err.to_string();
            return;
        }
    };
    match rule.action {
        FaultAction::Delay { min, max } => assert!(min <= max, "delay min > max: {rule:?}"),
        FaultAction::Error {
            status,
            probability,
        } => {
            assert!(
                (100..=599).contains(&status),
                "status out of range: {rule:?}"
            );
            assert!(
                (0.0..=1.0).contains(&probability),
                "probability out of range: {rule:?}"
            );
        }
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
