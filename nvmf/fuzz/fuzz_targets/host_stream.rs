//! Fuzzes the host's receive path (what a remote bdev reads from another target): a
//! `QueuePair` connects to a fake target on loopback that answers with the fuzz input. With
//! the first input byte odd, a valid ICResp comes first and the host has a read (8 KiB), a
//! write (12 KiB, waiting for R2T) and a flush outstanding, so the input reaches C2HData,
//! R2T and response handling with live CIDs. The host must end every run with its commands
//! completed (successfully or with an error) and never panic or overrun a buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::OnceLock;
use std::time::Duration;
use strata_nvmf::host::{cmd, DataDir, IoBuf, QueuePair, QueuePairOptions};
use strata_nvmf::tcp::pdu;
use zerocopy::IntoBytes;

fn listener() -> &'static TcpListener {
    static L: OnceLock<TcpListener> = OnceLock::new();
    L.get_or_init(|| TcpListener::bind("127.0.0.1:0").expect("bind"))
}

fuzz_target!(|data: &[u8]| {
    let l = listener();
    let Ok(addr) = l.local_addr() else { return };
    let opts = QueuePairOptions { qid: 1, depth: 8, timeout: Duration::from_secs(2), ..Default::default() };
    let Ok(mut qp) = QueuePair::start(addr, &opts) else { return };
    let Ok((mut peer, _)) = l.accept() else { return };
    let _ = peer.set_read_timeout(Some(Duration::from_millis(5)));
    let mut sink = [0u8; 65536];
    let valid = data.first().is_some_and(|b| b & 1 == 1);
    if valid {
        let _ = peer.write_all(pdu::ic_resp(0, false, false, 8192).as_bytes());
        for _ in 0..50 {
            if qp.poll().is_err() || qp.is_initialized() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if qp.is_initialized() {
            let _ = qp.submit(cmd::read(1, 0, 16), DataDir::FromController(IoBuf::Heap(vec![0; 8192])), 1);
            let _ = qp.submit(cmd::write(1, 0, 24), DataDir::ToController(IoBuf::Heap(vec![7; 12288])), 2);
            let _ = qp.submit(cmd::flush(1), DataDir::None, 3);
            let _ = qp.poll();
        }
    }
    let _ = peer.write_all(data.get(1..).unwrap_or(&[]));
    let _ = peer.shutdown(std::net::Shutdown::Write);
    for _ in 0..64 {
        let _ = peer.read(&mut sink);
        if qp.poll().is_err() || qp.is_dead() {
            break;
        }
    }
    qp.close();
    while qp.pop_completion().is_some() {}
    assert_eq!(qp.outstanding(), 0, "commands left outstanding after close");
});
