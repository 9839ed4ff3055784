//! cargo-fuzz target: the checks are in `pbchat::fuzzing::replication`, shared with the corpus
//! regression test (`tests/it/fuzz_corpus.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pbchat::fuzzing::replication::check(data);
});
