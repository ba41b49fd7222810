//! The NVMe/TCP host library against a small fake controller running in a thread of the test.
//!
//! The fake speaks just enough NVMe/TCP (ICResp, Connect, Property Get/Set, Identify, Set
//! Features, Keep Alive, Read via C2HData, Write via in-capsule data or R2T/H2CData, Write
//! Zeroes, Flush, XOR write, checksum) over a RAM disk, optionally writing its PDUs one byte at
//! a time so the host's receive state machine sees every possible split. It checks what the
//! host sends (digests, padding, SGLs, H2CData sizes and flags) and can be told to misbehave.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_nvmf::host::{
    cmd, BlockingController, Controller, ControllerOptions, DataDir, HostError, IoBuf, QueuePair,
    QueuePairOptions, HOST_PATH_ERROR,
};
use strata_nvmf::spec::cmd::{SGL_IN_CAPSULE, SGL_TRANSPORT};
use strata_nvmf::spec::fabrics::ConnectCmd;
use strata_nvmf::spec::identify::{IdentifyController, IdentifyNamespace};
use strata_nvmf::spec::status::{self, Status};
use strata_nvmf::spec::{Cqe, Sqe};
use strata_nvmf::tcp::pdu::{self, flags, pdu_type, CapsuleCmdHdr, CommonHeader, DataHdr, IcReq};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

const BS: usize = 4096;
const BLOCKS: u64 = 256;
const NQN: &str = "nqn.2026-11.io.strata:fake";

#[derive(Clone, Copy)]
struct FakeOpts {
    byte_by_byte: bool,
    maxh2cdata: u32,
    c2h_chunk: usize,
    success_flag: bool,
    cpda: u8,
    /// Misbehaviour on a read of LBA 200.
    misbehave: Misbehave,
    /// Refuse a Connect that asks for SQ flow control disabled (Connect Invalid Parameters),
    /// as a controller without that capability may.
    refuse_no_sq_flow: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Misbehave {
    None,
    UnknownCid,
    TermReq,
    BadDataDigest,
    Close,
}

impl Default for FakeOpts {
    fn default() -> Self {
        FakeOpts {
            byte_by_byte: false,
            maxh2cdata: 4096,
            c2h_chunk: 3000,
            success_flag: true,
            cpda: 0,
            misbehave: Misbehave::None,
            refuse_no_sq_flow: false,
        }
    }
}

struct Fake {
    addr: SocketAddr,
    disk: Arc<Mutex<Vec<u8>>>,
    /// H2CTermReqs received from the host.
    terms: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
}

fn start_fake(opts: FakeOpts) -> Fake {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let disk = Arc::new(Mutex::new(vec![0u8; BLOCKS as usize * BS]));
    let terms = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let (d, t, c) = (disk.clone(), terms.clone(), connections.clone());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            c.fetch_add(1, Ordering::Relaxed);
            let (d, t) = (d.clone(), t.clone());
            std::thread::spawn(move || {
                let mut conn = FakeConn {
                    s,
                    opts,
                    hd: false,
                    dd: false,
                    disk: d,
                    terms: t,
                    cc: 0,
                    qid: 0,
                    queued: Default::default(),
                };
                let _ = conn.run();
            });
        }
    });
    Fake {
        addr,
        disk,
        terms,
        connections,
    }
}

struct FakeConn {
    s: TcpStream,
    opts: FakeOpts,
    hd: bool,
    dd: bool,
    disk: Arc<Mutex<Vec<u8>>>,
    terms: Arc<AtomicUsize>,
    cc: u32,
    qid: u16,
    queued: std::collections::VecDeque<Pdu>,
}

struct Pdu {
    ch: CommonHeader,
    hdr: Vec<u8>,
    data: Vec<u8>,
}

impl FakeConn {
    fn send(&mut self, b: &[u8]) -> std::io::Result<()> {
        if self.opts.byte_by_byte {
            for (i, x) in b.iter().enumerate() {
                self.s.write_all(std::slice::from_ref(x))?;
                if i % 61 == 0 {
                    std::thread::sleep(Duration::from_micros(20));
                }
            }
            Ok(())
        } else {
            self.s.write_all(b)
        }
    }

    /// Reads one PDU, checking digests and padding like a strict controller.
    fn recv(&mut self) -> std::io::Result<Pdu> {
        let mut chb = [0u8; 8];
        self.s.read_exact(&mut chb)?;
        let ch = CommonHeader::read_from_bytes(&chb).unwrap();
        let mut rest = vec![0u8; ch.plen as usize - 8];
        self.s.read_exact(&mut rest)?;
        let mut all = chb.to_vec();
        all.extend_from_slice(&rest);
        if ch.pdu_type == pdu_type::H2C_TERM_REQ {
            self.terms.fetch_add(1, Ordering::Relaxed);
            return Err(std::io::Error::other("H2CTermReq"));
        }
        let hlen = ch.hlen as usize;
        let mut hbytes = hlen;
        if ch.pdu_type != pdu_type::IC_REQ {
            assert_eq!(ch.flags & flags::HDGST != 0, self.hd, "HDGST flag");
        }
        if ch.flags & flags::HDGST != 0 {
            let want = pdu::digest(&[&all[..hlen]]);
            assert_eq!(
                u32::from_le_bytes(all[hlen..hlen + 4].try_into().unwrap()),
                want,
                "header digest"
            );
            hbytes += 4;
        }
        let mut data = Vec::new();
        if ch.pdo != 0 {
            let pdo = ch.pdo as usize;
            let align = (self.opts.cpda as usize + 1) * 4;
            assert_eq!(pdo % align, 0, "PDO {pdo} not aligned to CPDA");
            assert!(pdo >= hbytes && pdo - hbytes < align, "PDO {pdo} padding");
            assert!(all[hbytes..pdo].iter().all(|b| *b == 0), "non-zero padding");
            let end = ch.plen as usize - if self.dd { 4 } else { 0 };
            data = all[pdo..end].to_vec();
            if self.dd {
                assert!(ch.flags & flags::DDGST != 0);
                let got = u32::from_le_bytes(all[end..end + 4].try_into().unwrap());
                assert_eq!(got, pdu::digest(&[&data]), "data digest");
            }
        }
        Ok(Pdu {
            ch,
            hdr: all[..hlen].to_vec(),
            data,
        })
    }

    fn resp(&mut self, cid: u16, dw0: u32, dw1: u32, st: Status) -> std::io::Result<()> {
        let cqe = Cqe {
            dw0,
            dw1,
            sqhd: 0,
            sqid: self.qid,
            cid,
            status: st.to_cqe_status(),
        };
        let h = pdu::capsule_resp(cqe, self.hd);
        let b = h.as_slice().to_vec();
        self.send(&b)
    }

    fn c2h(&mut self, cid: u16, data: &[u8]) -> std::io::Result<()> {
        let chunk = self.opts.c2h_chunk.max(1);
        let mut off = 0;
        while off < data.len() {
            let n = chunk.min(data.len() - off);
            let last = off + n == data.len();
            let h = pdu::data(
                pdu_type::C2H_DATA,
                cid,
                0,
                off as u32,
                n as u32,
                last,
                last && self.opts.success_flag,
                self.hd,
                self.dd,
            );
            let mut b = h.as_slice().to_vec();
            b.extend_from_slice(&data[off..off + n]);
            if self.dd {
                let mut d = pdu::digest(&[&data[off..off + n]]);
                if self.opts.misbehave == Misbehave::BadDataDigest && self.qid != 0 {
                    d ^= 1;
                }
                b.extend_from_slice(&d.to_le_bytes());
            }
            self.send(&b)?;
            off += n;
        }
        Ok(())
    }

    fn run(&mut self) -> std::io::Result<()> {
        let ic = self.recv()?;
        let ic = IcReq::read_from_bytes(&ic.hdr[..128]).unwrap();
        assert_eq!((ic.pfv, ic.hpda, ic.maxr2t), (0, 0, 0));
        let resp = pdu::ic_resp(
            self.opts.cpda,
            ic.dgst & 1 != 0,
            ic.dgst & 2 != 0,
            self.opts.maxh2cdata,
        );
        self.send(resp.as_bytes())?;
        self.hd = ic.dgst & 1 != 0;
        self.dd = ic.dgst & 2 != 0;
        loop {
            let p = match self.queued.pop_front() {
                Some(p) => p,
                None => self.recv()?,
            };
            assert_eq!(p.ch.pdu_type, pdu_type::CAPSULE_CMD, "expected a capsule");
            let sqe = CapsuleCmdHdr::read_from_bytes(&p.hdr[..72]).unwrap().sqe;
            assert_eq!(sqe.flags, 0x40, "PSDT");
            let icd = p.data;
            if !icd.is_empty() {
                assert_eq!(sqe.sgl.sgl_id, SGL_IN_CAPSULE);
                assert_eq!(sqe.sgl.length as usize, icd.len());
            } else {
                assert_eq!(sqe.sgl.sgl_id, SGL_TRANSPORT);
            }
            self.command(sqe, icd)?;
        }
    }

    /// Gets a write's data: in-capsule, or by R2T and H2CData.
    fn h2c(&mut self, sqe: &Sqe, icd: Vec<u8>) -> std::io::Result<Vec<u8>> {
        let len = sqe.sgl.length as usize;
        if sqe.sgl.sgl_id == SGL_IN_CAPSULE {
            return Ok(icd);
        }
        let r = pdu::r2t(sqe.cid, 7, 0, len as u32, self.hd);
        let b = r.as_slice().to_vec();
        self.send(&b)?;
        let mut out = Vec::new();
        while out.len() < len {
            let p = self.recv()?;
            if p.ch.pdu_type == pdu_type::CAPSULE_CMD {
                // Pipelined by the host: handled after this command.
                self.queued.push_back(p);
                continue;
            }
            assert_eq!(p.ch.pdu_type, pdu_type::H2C_DATA);
            let d = DataHdr::read_from_bytes(&p.hdr[..24]).unwrap();
            assert_eq!((d.cccid, d.ttag, d.datao as usize), (sqe.cid, 7, out.len()));
            assert_eq!(d.datal as usize, p.data.len());
            assert!(d.datal <= self.opts.maxh2cdata, "H2CData over MAXH2CDATA");
            let last = d.datao as usize + p.data.len() == len;
            assert_eq!(p.ch.flags & flags::DATA_LAST != 0, last, "LAST flag");
            out.extend_from_slice(&p.data);
        }
        Ok(out)
    }

    fn command(&mut self, sqe: Sqe, icd: Vec<u8>) -> std::io::Result<()> {
        let ok = Status::SUCCESS;
        if self.qid == 0 && sqe.opcode == 0x7f {
            match sqe.fctype() {
                1 => {
                    let c = ConnectCmd::from_sqe(&sqe);
                    let data = self.h2c(&sqe, icd)?;
                    if self.opts.refuse_no_sq_flow && c.cattr & 0x04 != 0 {
                        return self.resp(sqe.cid, 0, 0, status::CONNECT_INVALID_PARAMETERS);
                    }
                    assert_eq!(data.len(), 1024);
                    let want_cntlid = if c.qid == 0 { 0xffff } else { 1 };
                    assert_eq!(u16::from_le_bytes([data[16], data[17]]), want_cntlid);
                    assert_eq!(&data[256..256 + NQN.len()], NQN.as_bytes());
                    self.qid = c.qid;
                    return self.resp(sqe.cid, 1, 0, ok);
                }
                4 => {
                    let v: u64 = match sqe.cdw11 {
                        0x00 => 127 | (1 << 24) | (1 << 37),
                        0x08 => 0x0001_0300,
                        0x14 => self.cc as u64,
                        0x1c => {
                            let rdy = self.cc & 1;
                            let shst = if self.cc >> 14 & 3 != 0 { 2 << 2 } else { 0 };
                            (rdy | shst) as u64
                        }
                        _ => 0,
                    };
                    return self.resp(sqe.cid, v as u32, (v >> 32) as u32, ok);
                }
                0 => {
                    if sqe.cdw11 == 0x14 {
                        self.cc = sqe.cdw12;
                    }
                    return self.resp(sqe.cid, 0, 0, ok);
                }
                _ => return self.resp(sqe.cid, 0, 0, status::INVALID_OPCODE),
            }
        }
        if self.qid == 0 {
            return match sqe.opcode {
                0x06 => {
                    let mut out = vec![0u8; 4096];
                    match sqe.cdw10 & 0xff {
                        1 => {
                            let mut id = IdentifyController::new_zeroed();
                            id.cntlid = 1;
                            id.mdts = 5;
                            id.ioccsz = (4096 + 64) / 16;
                            id.cntrltype = 1;
                            id.nn = 1;
                            out.copy_from_slice(id.as_bytes());
                        }
                        2 => out[..4].copy_from_slice(&1u32.to_le_bytes()),
                        0 => {
                            let mut id = IdentifyNamespace::new_zeroed();
                            id.nsze = BLOCKS;
                            id.ncap = BLOCKS;
                            id.lbaf[0].lbads = 12;
                            out.copy_from_slice(id.as_bytes());
                        }
                        _ => return self.resp(sqe.cid, 0, 0, status::INVALID_FIELD),
                    }
                    self.c2h(sqe.cid, &out)?;
                    if !self.opts.success_flag {
                        self.resp(sqe.cid, 0, 0, ok)?;
                    }
                    Ok(())
                }
                0x09 => self.resp(sqe.cid, sqe.cdw11, 0, ok),
                0x18 => self.resp(sqe.cid, 0, 0, ok),
                0x02 => {
                    let n = ((sqe.cdw10 >> 16) as usize + 1) * 4;
                    let out: Vec<u8> = (0..n).map(|i| i as u8).collect();
                    self.c2h(sqe.cid, &out)?;
                    if !self.opts.success_flag {
                        self.resp(sqe.cid, 0, 0, ok)?;
                    }
                    Ok(())
                }
                _ => self.resp(sqe.cid, 0, 0, status::INVALID_OPCODE),
            };
        }
        let (slba, nlb) = (sqe.slba(), sqe.nlb());
        if slba + nlb > BLOCKS && sqe.opcode != 0 {
            return self.resp(sqe.cid, 0, 0, status::LBA_OUT_OF_RANGE);
        }
        let range = slba as usize * BS..(slba + nlb) as usize * BS;
        match sqe.opcode {
            0x02 => {
                if slba == 200 {
                    match self.opts.misbehave {
                        Misbehave::UnknownCid => return self.resp(sqe.cid ^ 0x100, 0, 0, ok),
                        Misbehave::TermReq => {
                            let t = pdu::term_req(
                                pdu_type::C2H_TERM_REQ,
                                pdu::PduError { fes: 2, fei: 0 },
                                &[1, 2, 3],
                            );
                            self.send(&t)?;
                            return Err(std::io::Error::other("sent term req"));
                        }
                        Misbehave::Close => {
                            return Err(std::io::Error::other("closing"));
                        }
                        _ => {}
                    }
                }
                let data = self.disk.lock().unwrap()[range].to_vec();
                assert_eq!(sqe.sgl.length as usize, data.len());
                self.c2h(sqe.cid, &data)?;
                if !self.opts.success_flag {
                    self.resp(sqe.cid, 0, 0, ok)?;
                }
                Ok(())
            }
            0x01 | 0x81 => {
                let data = self.h2c(&sqe, icd)?;
                assert_eq!(data.len(), range.len());
                let mut d = self.disk.lock().unwrap();
                if sqe.opcode == 0x01 {
                    d[range].copy_from_slice(&data);
                } else {
                    for (x, y) in d[range].iter_mut().zip(&data) {
                        *x ^= *y;
                    }
                }
                drop(d);
                self.resp(sqe.cid, 0, 0, ok)
            }
            0x08 => {
                self.disk.lock().unwrap()[range].fill(0);
                self.resp(sqe.cid, 0, 0, ok)
            }
            0x00 => self.resp(sqe.cid, 0, 0, ok),
            0x82 => {
                let chunk = sqe.cdw13.max(1) as usize;
                let d = self.disk.lock().unwrap()[range].to_vec();
                let out: Vec<u8> = d
                    .chunks(chunk * BS)
                    .flat_map(|c| pdu::digest(&[c]).to_le_bytes())
                    .collect();
                self.c2h(sqe.cid, &out)?;
                if !self.opts.success_flag {
                    self.resp(sqe.cid, 0, 0, ok)?;
                }
                Ok(())
            }
            _ => self.resp(sqe.cid, 0, 0, status::INVALID_OPCODE),
        }
    }
}

fn opts(hd: bool, dd: bool) -> ControllerOptions {
    ControllerOptions {
        io_queues: 2,
        queue_depth: 16,
        hdgst: hd,
        ddgst: dd,
        kato_ms: 200,
        timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn exercise(fake: &Fake, c: &mut BlockingController) {
    let ns = c.namespaces()[0].clone();
    assert_eq!((ns.nsid, ns.block_size, ns.nsze), (1, 4096, BLOCKS));
    assert_eq!(c.controller().io_icd_limit(), 4096);
    assert_eq!(c.controller().io_queue_count(), 2);
    // In-capsule write (one block), R2T write (5 blocks: several H2CData PDUs).
    let a = pattern(1, BS);
    let b = pattern(2, 5 * BS);
    c.write_blocks(1, 3, &a).unwrap();
    c.write_blocks(1, 10, &b).unwrap();
    assert_eq!(c.read_blocks(1, 3, 1).unwrap(), a);
    assert_eq!(c.read_blocks(1, 10, 5).unwrap(), b);
    assert_eq!(&fake.disk.lock().unwrap()[10 * BS..15 * BS], &b[..]);
    // XOR, zeroes, flush, checksum.
    c.xor_blocks(1, 10, &b).unwrap();
    assert!(c.read_blocks(1, 10, 5).unwrap().iter().all(|x| *x == 0));
    c.write_blocks(1, 20, &b).unwrap();
    c.write_zeroes(1, 21, 2).unwrap();
    c.flush(1).unwrap();
    let got = c.read_blocks(1, 20, 5).unwrap();
    assert_eq!(&got[..BS], &b[..BS]);
    assert!(got[BS..3 * BS].iter().all(|x| *x == 0));
    let sums = c.checksum(1, 20, 5, 2).unwrap();
    let want: Vec<u32> = got.chunks(2 * BS).map(|ch| pdu::digest(&[ch])).collect();
    assert_eq!(sums, want);
    // Errors come back as statuses.
    let e = c.read_blocks(1, BLOCKS - 1, 2).unwrap_err();
    assert!(matches!(e, HostError::Status { sct: 0, sc: 0x80 }), "{e}");
    // Admin: identify and a log page.
    let log = c.get_log_page(2, 0xffff_ffff, 512).unwrap();
    assert_eq!(log.len(), 512);
    assert_eq!(log[5], 5);
    assert_eq!(c.controller().identify_data().mdts, 5);
    // Keep-alive runs from poll while idle.
    std::thread::sleep(Duration::from_millis(250));
    c.controller_mut().poll().unwrap();
    c.keep_alive().unwrap();
}

#[test]
fn blocking_controller_byte_by_byte() {
    let fake = start_fake(FakeOpts {
        byte_by_byte: true,
        c2h_chunk: 1500,
        ..Default::default()
    });
    let mut c = BlockingController::connect(fake.addr, NQN, opts(false, false)).unwrap();
    exercise(&fake, &mut c);
    assert_eq!(fake.terms.load(Ordering::Relaxed), 0);
    c.disconnect().unwrap();
}

#[test]
fn digests_padding_and_capsule_resp_after_data() {
    let fake = start_fake(FakeOpts {
        byte_by_byte: true,
        cpda: 1,
        success_flag: false,
        maxh2cdata: 8192,
        ..Default::default()
    });
    let mut c = BlockingController::connect(fake.addr, NQN, opts(true, true)).unwrap();
    assert_eq!(
        c.controller_mut().io_queue(0).unwrap().digests(),
        (true, true)
    );
    exercise(&fake, &mut c);
    assert_eq!(fake.terms.load(Ordering::Relaxed), 0);
}

#[test]
fn many_commands_in_flight() {
    let fake = start_fake(FakeOpts::default());
    let mut ctrl = Controller::connect(fake.addr, NQN, opts(true, false)).unwrap();
    let mut model = vec![0u8; BLOCKS as usize * BS];
    // 16 writes of 1..=4 blocks on both queues at once, then reads of them all.
    let mut pending = 0;
    for i in 0..16u64 {
        let nb = (i % 4 + 1) as usize;
        let lba = i * 8;
        let data = pattern(i as u8, nb * BS);
        model[lba as usize * BS..lba as usize * BS + data.len()].copy_from_slice(&data);
        ctrl.write((i % 2) as usize, 1, lba, IoBuf::Heap(data), i)
            .unwrap();
        pending += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pending > 0 {
        ctrl.poll().unwrap();
        for q in 0..2 {
            while let Some(c) = ctrl.pop_completion(q) {
                assert!(c.is_success(), "{:?}", c.status());
                pending -= 1;
            }
        }
        assert!(Instant::now() < deadline, "writes did not complete");
    }
    for i in 0..16u64 {
        let nb = (i % 4 + 1) as usize;
        ctrl.read((i % 2) as usize, 1, i * 8, IoBuf::Heap(vec![0; nb * BS]), i)
            .unwrap();
        pending += 1;
    }
    while pending > 0 {
        ctrl.poll().unwrap();
        for q in 0..2 {
            while let Some(c) = ctrl.pop_completion(q) {
                let lba = c.cookie * 8;
                let d = c.data.unwrap().into_vec();
                assert_eq!(d, &model[lba as usize * BS..lba as usize * BS + d.len()]);
                assert_eq!(c.transferred as usize, d.len());
                pending -= 1;
            }
        }
        assert!(Instant::now() < deadline, "reads did not complete");
    }
    // A full queue refuses more.
    let qp = ctrl.io_queue(0).unwrap();
    for i in 0..16 {
        qp.submit(cmd::flush(1), DataDir::None, i).unwrap();
    }
    assert!(matches!(
        qp.submit(cmd::flush(1), DataDir::None, 99),
        Err(HostError::QueueFull)
    ));
    ctrl.disconnect().unwrap();
}

fn misbehaving(m: Misbehave, dd: bool) -> (Fake, BlockingController) {
    let fake = start_fake(FakeOpts {
        misbehave: m,
        ..Default::default()
    });
    let c = BlockingController::connect(fake.addr, NQN, opts(false, dd)).unwrap();
    (fake, c)
}

#[test]
fn unknown_cid_is_a_protocol_error_and_fails_outstanding() {
    let (fake, mut c) = misbehaving(Misbehave::UnknownCid, false);
    let ctrl = c.controller_mut();
    ctrl.write(0, 1, 0, IoBuf::Heap(vec![1; BS]), 1).unwrap();
    ctrl.read(0, 1, 200, IoBuf::Heap(vec![0; BS]), 2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let err = loop {
        match ctrl.io_queue(0).unwrap().poll() {
            Ok(_) => {}
            Err(e) => break e,
        }
        assert!(Instant::now() < deadline);
    };
    assert!(matches!(err, HostError::Protocol(_)), "{err}");
    let qp = ctrl.io_queue(0).unwrap();
    assert!(qp.is_dead());
    let mut got = Vec::new();
    while let Some(c) = qp.pop_completion() {
        got.push((c.cookie, c.status()));
    }
    assert!(got.contains(&(2, HOST_PATH_ERROR)), "{got:?}");
    // The fake saw our H2CTermReq.
    let t = Instant::now();
    while fake.terms.load(Ordering::Relaxed) == 0 && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(fake.terms.load(Ordering::Relaxed), 1);
    // Reconnect brings every queue back.
    let before = fake.connections.load(Ordering::Relaxed);
    c.reconnect().unwrap();
    assert_eq!(fake.connections.load(Ordering::Relaxed), before + 3);
    c.write_blocks(1, 0, &pattern(9, BS)).unwrap();
    assert_eq!(c.read_blocks(1, 0, 1).unwrap(), pattern(9, BS));
}

#[test]
fn c2h_term_req_and_close() {
    let (_fake, mut c) = misbehaving(Misbehave::TermReq, false);
    let e = c.read_blocks(1, 200, 1).unwrap_err();
    assert!(matches!(e, HostError::Term { fes: 2, fei: 0 }), "{e}");
    let (_fake, mut c) = misbehaving(Misbehave::Close, false);
    let e = c.read_blocks(1, 200, 1).unwrap_err();
    assert!(matches!(e, HostError::Closed | HostError::Io(_)), "{e}");
    c.reconnect().unwrap();
    c.read_blocks(1, 0, 1).unwrap();
}

#[test]
fn bad_data_digest_fails_only_that_command() {
    let (_fake, mut c) = misbehaving(Misbehave::BadDataDigest, true);
    let e = c.read_blocks(1, 0, 1).unwrap_err();
    let s = status::DATA_TRANSFER_ERROR;
    assert!(
        matches!(e, HostError::Status { sct, sc } if sct == s.sct && sc == s.sc),
        "{e}"
    );
    // Writes (no C2HData) still work on the same connection.
    c.write_blocks(1, 0, &pattern(3, BS)).unwrap();
}

/// Identify Controller on a queue pair alone.
fn identify_controller(qp: &mut QueuePair) -> strata_nvmf::host::Completion {
    qp.exec(
        cmd::identify(1, 0, 0),
        DataDir::FromController(IoBuf::Heap(vec![0; 4096])),
        Duration::from_secs(5),
    )
    .unwrap()
}

/// Connect parameters of an admin queue of the fake's subsystem.
fn admin_params() -> strata_nvmf::host::ConnectParams {
    strata_nvmf::host::ConnectParams {
        subnqn: NQN.into(),
        hostnqn: "nqn.2014-08.org.nvmexpress:uuid:test".into(),
        hostid: [1; 16],
        cntlid: 0xffff,
        kato_ms: 0,
        dhchap: None,
    }
}

/// The host asks for SQ flow control disabled; a controller that refuses the Connect for it
/// gets a second connection whose Connect does not ask.
#[test]
fn connect_falls_back_when_sq_flow_control_disable_is_refused() {
    let params = admin_params();
    for (refuse, connections) in [(false, 1), (true, 2)] {
        let fake = start_fake(FakeOpts {
            refuse_no_sq_flow: refuse,
            ..Default::default()
        });
        let (mut qp, cntlid) =
            QueuePair::connect(fake.addr, &QueuePairOptions::default(), &params).unwrap();
        assert_eq!(cntlid, 1);
        assert_eq!(
            fake.connections.load(Ordering::Relaxed),
            connections,
            "refuse {refuse}"
        );
        assert!(identify_controller(&mut qp).is_success());
    }
}

#[test]
fn queue_pair_alone() {
    let fake = start_fake(FakeOpts {
        byte_by_byte: true,
        ..Default::default()
    });
    let params = admin_params();
    let (mut qp, cntlid) =
        QueuePair::connect(fake.addr, &QueuePairOptions::default(), &params).unwrap();
    assert_eq!(cntlid, 1);
    let c = identify_controller(&mut qp);
    assert!(c.is_success());
    let id = IdentifyController::read_from_bytes(&c.data.unwrap().into_vec()[..]).unwrap();
    assert_eq!(id.ioccsz, 260);
    // A command that is not valid on the admin queue gets its status back.
    let bad = Sqe {
        opcode: 0x7e,
        ..Default::default()
    };
    let c = qp.exec(bad, DataDir::None, Duration::from_secs(5)).unwrap();
    assert_eq!(c.status(), status::INVALID_OPCODE);
}
