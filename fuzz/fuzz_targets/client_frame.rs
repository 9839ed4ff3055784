//! cargo-fuzz target: the checks are in `pbchat::fuzzing::client_frame`, shared with the corpus
//! regression test (`tests/it/fuzz_corpus.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pbchat::fuzzing::client_frame::check(data);
});
