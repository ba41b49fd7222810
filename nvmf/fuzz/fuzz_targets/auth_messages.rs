//! Fuzzes the DH-HMAC-CHAP message parsers and the target's per-queue transaction: any
//! sequence of AUTH_Send payloads and AUTH_Receive reads must end in a message or a
//! Failure1, never a panic, and nothing unauthenticated may come out authenticated.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use strata_nvmf::auth::message::{Challenge, Negotiate, Reply};
use strata_nvmf::auth::DhchapSecret;
use strata_nvmf::target::auth::{AuthPolicy, HostKeys, QueueAuth};

fuzz_target!(|data: &[u8]| {
    let _ = Negotiate::decode(data);
    let _ = Challenge::decode(data);
    for hl in [32, 48, 64] {
        let _ = Reply::decode(data, hl);
    }
    let keys = HostKeys {
        key_name: "k".into(),
        key: Arc::new(DhchapSecret { transform: 1, key: vec![1; 32] }),
        ctrlr_key: None,
    };
    let policy = AuthPolicy {
        digests: AuthPolicy::default().digests,
        dhgroups: vec![strata_nvmf::auth::DhGroup::Null],
    };
    let mut q = QueueAuth::new(&keys, "nqn.2014-08.org.nvmexpress:uuid:1", "nqn.2026-12.io.x:y", policy);
    // The input is cut into messages at 0xFF bytes; an empty piece is a read.
    for piece in data.split(|b| *b == 0xff) {
        if piece.is_empty() {
            let _ = q.receive();
        } else {
            let _ = q.send(piece);
        }
        assert!(!q.authenticated, "a response nobody could compute was accepted");
    }
});
