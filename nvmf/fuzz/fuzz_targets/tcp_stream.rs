//! Fuzzes the whole target receive path: each input is written to a fresh NVMe/TCP
//! connection of a real target (one reactor, a 64-block malloc namespace). With the first
//! input byte odd, a valid ICReq + admin Connect + controller enable precede it, so inputs
//! reach command parsing. A panic on the reactor aborts the process (libFuzzer's hook).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;
use strata_nvmf::spec::Sqe;
use strata_nvmf::target::subsystem::ListenAddress;
use strata_nvmf::target::{Target, TransportOptions};
use strata_nvmf::tcp::pdu;
use zerocopy::IntoBytes;

const NQN: &str = "nqn.2026-11.io.strata:fuzz";

fn target() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        strata_reactor::dma::init_iobuf(strata_reactor::dma::IobufOptions {
            small_count: 512,
            large_count: 128,
            ..Default::default()
        })
        .expect("iobuf");
        let set = strata_reactor::ReactorSet::start(&[0], strata_reactor::Mode::Poll).expect("reactor");
        set.install_global();
        std::mem::forget(set);
        strata_bdev::modules::malloc::create(strata_bdev::modules::malloc::MallocOptions {
            name: "FuzzMalloc".into(),
            num_blocks: 64,
            block_size: 512,
            uuid: None,
        })
        .expect("malloc");
        let t = Target::get();
        t.create_transport(TransportOptions::default()).expect("transport");
        let s = t.create_subsystem(NQN, "FUZZ", "fuzz", true, 4).expect("subsystem");
        s.add_namespace("FuzzMalloc", 1, None, None, None, 0).expect("ns");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        t.add_listener(&s, ListenAddress { trtype: "TCP".into(), adrfam: "IPv4".into(), traddr: "127.0.0.1".into(), trsvcid: port.to_string() }, false)
            .expect("listener");
        SocketAddr::from(([127, 0, 0, 1], port))
    })
}

fn prefix() -> Vec<u8> {
    let mut v = pdu::ic_req(0, false, false, 0).as_bytes().to_vec();
    let mut sqe = Sqe { opcode: 0x7f, flags: 0x40, cid: 1, nsid: 0x01, ..Default::default() };
    sqe.sgl.length = 1024;
    sqe.sgl.sgl_id = 0x01;
    sqe.cdw11 = 31;
    v.extend_from_slice(pdu::capsule_cmd(sqe, false, false, 1024).as_slice());
    let mut data = [0u8; 1024];
    data[16..18].copy_from_slice(&0xffffu16.to_le_bytes());
    data[256..256 + NQN.len()].copy_from_slice(NQN.as_bytes());
    let host = b"nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000000";
    data[512..512 + host.len()].copy_from_slice(host);
    v.extend_from_slice(&data);
    // Property Set CC.EN.
    let set = Sqe { opcode: 0x7f, flags: 0x40, cid: 2, nsid: 0x00, cdw11: 0x14, cdw12: 0x460001, ..Default::default() };
    v.extend_from_slice(pdu::capsule_cmd(set, false, false, 0).as_slice());
    v
}

fuzz_target!(|data: &[u8]| {
    let addr = target();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
    let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
    if data.first().is_some_and(|b| b & 1 == 1) {
        let _ = s.write_all(&prefix());
    }
    let _ = s.write_all(data.get(1..).unwrap_or(&[]));
    let mut buf = [0u8; 65536];
    // Drain answers until the target closes or goes quiet.
    for _ in 0..16 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
});
