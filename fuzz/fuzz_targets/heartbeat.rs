//! cargo-fuzz target: the checks are in `pbchat::fuzzing::heartbeat`, shared with the corpus
//! regression test (`tests/it/fuzz_corpus.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pbchat::fuzzing::heartbeat::check(data);
});
