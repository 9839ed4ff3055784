//! The invariants the fuzzers check, one module per target, each a `check(bytes)` that
//! panics when one breaks. The cargo-fuzz targets in `fuzz/` call them on generated inputs,
//! and `tests/it/fuzz_corpus.rs` runs them over the kept corpus (`fuzz/corpus/`), so every input
//! that ever broke one stays a regression test of the normal suite.
//!
//! Pure test code: nothing in the daemon calls it. It lives in the library, not in `fuzz/`,
//! so that the fuzzers and the test suite cannot drift apart.

pub mod client_frame;
pub mod config;
pub mod heartbeat;
pub mod log_recovery;
pub mod replication;
