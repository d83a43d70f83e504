//! Fuzz target `abi_decode`: feeds arbitrary bytes to the request decoder and to the answer
//! decoder for every request kind. Decoding must never panic; whatever decodes must re-encode to
//! exactly the input bytes (the encoding is canonical) and decode again to the same value.
//!
//! Flagged requests (`FLAG_QOS2_ANSWER`) go through `decode_request_with_flags` too.
//!
//! Seed corpus: `corpus/abi_decode/` = the golden vectors of `abi/golden/`.
// Built by cargo-fuzz (`--cfg fuzzing`) as a libFuzzer binary; included as a module by
// `tests/tests/fuzz_regressions.rs`, which runs `check` on every committed input.
#![cfg_attr(fuzzing, no_main)]

use qosmark_abi::codec;
use qosmark_abi::ioctl::RequestKind;

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| check(data));

/// The target's checks on one input (panics on a violation). The fuzzer calls it, and so does
/// `cargo test` for every file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`.
pub fn check(data: &[u8]) {
    if let Ok(request) = codec::decode_request(data) {
        let mut out = Vec::new();
        codec::encode_request(&request, &mut out).expect("a decoded request must encode");
        assert_eq!(out, data, "request re-encoding differs");
        let again = codec::decode_request(&out).expect("re-encoded request must decode");
        assert_eq!(again, request);
        assert_eq!(codec::record_len(data).ok(), u32::try_from(data.len()).ok());
        let kind = RequestKind::of(&request);
        assert_eq!(codec::decode_request_for(kind, data).as_ref(), Ok(&request));
    }
    if let Ok((request, flags)) = codec::decode_request_with_flags(data) {
        let mut out = Vec::new();
        codec::encode_request_with_flags(&request, flags, &mut out)
            .expect("a decoded flagged request must encode");
        assert_eq!(out, data, "flagged request re-encoding differs");
        assert!(codec::flags_allowed(RequestKind::of(&request), flags));
        if let Ok(reply) = codec::decode_response(RequestKind::of(&request), data) {
            panic!("a request decoded as an answer: {reply:?}");
        }
    }
    for kind in RequestKind::ALL {
        if let Ok(reply) = codec::decode_response(kind, data) {
            let mut out = Vec::new();
            codec::encode_reply(&reply, &mut out).expect("a decoded answer must encode");
            assert_eq!(out, data, "answer re-encoding differs");
            let again = codec::decode_response(kind, &out).expect("re-encoded answer must decode");
            assert_eq!(again, reply);
            assert_eq!(codec::record_len(data).ok(), u32::try_from(data.len()).ok());
        }
    }
}
