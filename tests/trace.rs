//! End-to-end trace tests: records written by the real binary, read back with `traces`/`stats`.
