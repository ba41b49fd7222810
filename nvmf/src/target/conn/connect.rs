//! Connection set-up: ICReq, Fabrics commands (Connect, Property Get/Set, Disconnect).

use super::*;
use crate::auth::message as auth_msg;
use crate::target::auth::QueueAuth;
use crate::tcp::framer::HeaderBytes;

/// Connect response DW0 bit 17 (AUTHREQ ATR): the queue must authenticate.
const CONNECT_AUTHREQ_ATR: u32 = 1 << 17;

impl Connection {
    pub(super) fn on_icreq(&self, hdr: &HeaderBytes) -> Result<(), Fatal> {
        let req = IcReq::read_from_bytes(&hdr[..128]).map_err(|_| Fatal::Closed)?;
        if req.pfv != 0 {
            return Err(Fatal::Pdu(
                PduError {
                    fes: fes::UNSUPPORTED_PARAMETER,
                    fei: 8,
                },
                hdr[..128].to_vec(),
            ));
        }
        if req.hpda > 31 {
            return Err(Fatal::Pdu(PduError::field(10), hdr[..128].to_vec()));
        }
        let hd = req.dgst & 1 != 0;
        let dd = req.dgst & 2 != 0;
        let maxh2c = self.target.options().max_io_size.max(4096);
        {
            let mut s = self.st.borrow_mut();
            if s.phase != Phase::AwaitIcReq {
                return Err(Fatal::Pdu(
                    PduError {
                        fes: fes::PDU_SEQUENCE_ERROR,
                        fei: 0,
                    },
                    hdr[..128].to_vec(),
                ));
            }
            s.digests = Some((hd, dd));
            s.maxh2cdata = maxh2c;
            s.phase = Phase::Ready;
        }
        let resp = pdu::ic_resp(0, hd, dd, maxh2c);
        self.queue_raw(zerocopy::IntoBytes::as_bytes(&resp).to_vec(), false);
        Ok(())
    }

    pub(super) fn on_fabrics(&self, sqe: Sqe, data: Option<DmaBuf>) {
        match sqe.fctype() {
            fabrics::FCTYPE_CONNECT => self.on_connect(sqe, data),
            fabrics::FCTYPE_PROPERTY_GET | fabrics::FCTYPE_PROPERTY_SET => {
                let (qid, ctrl) = {
                    let s = self.st.borrow();
                    (s.qid, s.ctrl.clone())
                };
                let (Some(ctrl), Some(0)) = (ctrl, qid) else {
                    self.respond_now(sqe.cid, status::COMMAND_SEQUENCE_ERROR, 0);
                    return;
                };
                // The controller is not enabled by a host that has not authenticated.
                if sqe.fctype() == fabrics::FCTYPE_PROPERTY_SET && self.st.borrow().auth_pending {
                    self.respond_now(sqe.cid, status::AUTH_REQUIRED, 0);
                    return;
                }
                let p = PropertyCmd::from_sqe(&sqe);
                let (st, v) = if sqe.fctype() == fabrics::FCTYPE_PROPERTY_GET {
                    match ctrl.property_get(p.offset, p.eight_bytes) {
                        Ok(v) => (Status::SUCCESS, v),
                        Err(e) => (e, 0),
                    }
                } else {
                    match ctrl.property_set(p.offset, p.eight_bytes, p.value) {
                        Ok(()) => (Status::SUCCESS, 0),
                        Err(e) => (e, 0),
                    }
                };
                let mut s = self.st.borrow_mut();
                let mut cqe = self.cqe(&mut s, sqe.cid, st, v as u32);
                cqe.dw1 = (v >> 32) as u32;
                drop(s);
                self.queue_resp(cqe, None);
            }
            fabrics::FCTYPE_AUTH_SEND | fabrics::FCTYPE_AUTH_RECV => self.on_auth(sqe, data),
            fabrics::FCTYPE_DISCONNECT => {
                self.respond_now(sqe.cid, Status::SUCCESS, 0);
                let mut s = self.st.borrow_mut();
                if let Some(last) = s.tx.back_mut() {
                    last.close_after = true;
                }
            }
            _ => self.respond_now(sqe.cid, status::INVALID_OPCODE, 0),
        }
    }

    pub(super) fn on_connect(&self, sqe: Sqe, data: Option<DmaBuf>) {
        if self.st.borrow().ctrl.is_some() {
            tracing::warn!(peer = %self.peer, "second Connect on a queue");
            self.respond_now(sqe.cid, status::COMMAND_SEQUENCE_ERROR, 0);
            return;
        }
        let cmd = ConnectCmd::from_sqe(&sqe);
        if cmd.recfmt != 0 {
            self.respond_now(sqe.cid, status::CONNECT_INCOMPATIBLE_FORMAT, 0);
            return;
        }
        let Some(buf) = data.filter(|b| b.len() >= 1024) else {
            self.connect_invalid(sqe.cid, 0, 1, "no Connect data in the capsule");
            return;
        };
        let Ok(cd) = ConnectData::read_from_bytes(&buf.as_slice()[..1024]) else {
            self.connect_invalid(sqe.cid, 0, 1, "bad Connect data");
            return;
        };
        // Both NQNs are NUL-terminated strings in their 256-byte fields, in NQN format.
        let nqn_field = |f: &[u8]| {
            f.contains(&0)
                .then(|| get_cstr(f))
                .flatten()
                .filter(|n| crate::target::subsystem::validate_nqn(n).is_ok())
        };
        let Some(subnqn) = nqn_field(&cd.subnqn) else {
            self.connect_invalid(sqe.cid, 256, 1, "SUBNQN is not a NUL-terminated NQN");
            return;
        };
        // An empty HOSTNQN is what SPDK's initiator tools send without `hostnqn:`; SPDK's
        // target lets it reach a subsystem that allows any host, and so does strata
        // (`host_allowed` below): such a host can hold no keys.
        let hostnqn = if cd.hostnqn[0] == 0 {
            String::new()
        } else {
            let Some(h) = nqn_field(&cd.hostnqn) else {
                self.connect_invalid(sqe.cid, 512, 1, "HOSTNQN is not a NUL-terminated NQN");
                return;
            };
            h
        };
        let Some(subsys) = self.target.find_subsystem(&subnqn) else {
            self.connect_invalid(sqe.cid, 256, 1, &format!("unknown subsystem {subnqn}"));
            return;
        };
        let listener = self.target.listener_of(&subsys, &self.local);
        if subsys.kind == SubsystemKind::Nvme && listener.is_none() {
            self.connect_invalid(
                sqe.cid,
                256,
                1,
                &format!("subsystem {subnqn} does not listen on {}", self.local),
            );
            return;
        }
        if !subsys.host_allowed(&hostnqn) {
            tracing::warn!(peer = %self.peer, host = %hostnqn, nqn = %subnqn, "Connect refused: host not allowed");
            self.respond_now(sqe.cid, status::CONNECT_INVALID_HOST, 512 | (1 << 16));
            return;
        }
        let host_has_psk = subsys.state.lock().host_psks.contains_key(&hostnqn);
        let identity = self.tls_identity();
        if self.tls.is_some() && identity.is_none() {
            // Cannot happen (PSK is the only way through the handshake); refuse if it does.
            tracing::warn!(peer = %self.peer, host = %hostnqn, "Connect refused: TLS session without a PSK identity");
            self.respond_now(sqe.cid, status::CONNECT_INVALID_HOST, 512 | (1 << 16));
            return;
        }
        if let Err(why) =
            crate::target::tls::check_connect(identity.as_ref(), host_has_psk, &hostnqn, &subnqn)
        {
            tracing::warn!(peer = %self.peer, host = %hostnqn, nqn = %subnqn, "Connect refused: {why}");
            self.respond_now(sqe.cid, status::CONNECT_INVALID_HOST, 512 | (1 << 16));
            return;
        }
        if cmd.qid == 0 {
            self.connect_admin_queue(&sqe, &cmd, &cd, subsys, &hostnqn, &subnqn, listener);
        } else {
            self.connect_io_queue(&sqe, &cmd, &cd, subsys, &hostnqn);
        }
    }

    /// Connect for queue 0: a new controller, of the listener it came through.
    #[allow(clippy::too_many_arguments)]
    fn connect_admin_queue(
        &self,
        sqe: &Sqe,
        cmd: &ConnectCmd,
        cd: &ConnectData,
        subsys: Arc<Subsystem>,
        hostnqn: &str,
        subnqn: &str,
        listener: Option<ListenAddress>,
    ) {
        let opts = self.target.options();
        let limits = self.target.limits();
        if cmd.sqsize as u32 + 1 > opts.max_aq_depth as u32 || cmd.sqsize < 1 {
            self.connect_invalid(sqe.cid, 44, 0, "admin queue size out of range");
            return;
        }
        if cd.cntlid != 0xffff && cd.cntlid != 0xfffe {
            self.connect_invalid(sqe.cid, 16, 1, "static controller id requested");
            return;
        }
        let Some(cntlid) = self.target.alloc_cntlid() else {
            self.respond_now(sqe.cid, status::CONNECT_CONTROLLER_BUSY, 0);
            return;
        };
        let ctrl = Controller::new(
            cntlid,
            subsys.clone(),
            hostnqn,
            cd.hostid,
            cmd.kato,
            limits,
            listener,
        );
        ctrl.touch_keepalive();
        // The admin queue lives on this reactor: events are delivered there, looked up by
        // token (nothing reactor-local crosses threads).
        let reactor = strata_reactor::current_index().unwrap_or(0);
        let token = self.token;
        *ctrl.aer_notify.lock() = Some(Box::new(move || {
            if let Some(f) = strata_reactor::framework() {
                let _ = f.send(reactor, move || {
                    if let Some(c) = SockGroup::connection(token) {
                        c.deliver_events();
                    }
                });
            }
        }));
        {
            // The ANA states are read under the lock a change is made under: none is missed.
            let mut st = subsys.state.lock();
            ctrl.load_ana(&st);
            st.controllers.push(Arc::downgrade(&ctrl));
        }
        self.target.remember_controller(&ctrl);
        {
            let mut s = self.st.borrow_mut();
            s.qid = Some(0);
            s.sq_size = cmd.sqsize;
            s.size_for_queue(cmd.sqsize);
            s.sqflow_disabled = cmd.cattr & fabrics::CATTR_SQ_FLOW_CONTROL_DISABLE != 0;
            // (Admin data never goes out with SUCCESS; settled here too so the field means
            // the same on every queue.)
            s.c2h_success = opts.c2h_success && (s.sqflow_disabled || opts.c2h_success_always);
            s.ctrl = Some(ctrl.clone());
            s.subsys = Some(subsys.clone());
            s.in_capsule = ADMIN_IN_CAPSULE;
        }
        let atr = self.start_auth(&subsys, hostnqn);
        tracing::info!(peer = %self.peer, cntlid, nqn = %subnqn, host = %hostnqn, kato_ms = cmd.kato, authenticate = atr != 0, "admin queue connected");
        self.respond_now(sqe.cid, Status::SUCCESS, cntlid as u32 | atr);
    }

    /// Connect for an I/O queue of an existing, enabled controller of this host.
    fn connect_io_queue(
        &self,
        sqe: &Sqe,
        cmd: &ConnectCmd,
        cd: &ConnectData,
        subsys: Arc<Subsystem>,
        hostnqn: &str,
    ) {
        let opts = self.target.options();
        let limits = self.target.limits();
        let Some(ctrl) = subsys
            .controllers()
            .into_iter()
            .find(|c| c.cntlid == cd.cntlid)
        else {
            self.connect_invalid(
                sqe.cid,
                16,
                1,
                &format!("unknown controller id {}", cd.cntlid),
            );
            return;
        };
        if ctrl.hostnqn != hostnqn || ctrl.dead.load(Ordering::Acquire) {
            self.connect_invalid(sqe.cid, 512, 1, "host does not own that controller");
            return;
        }
        if !ctrl.is_enabled() {
            self.respond_now(sqe.cid, status::COMMAND_SEQUENCE_ERROR, 0);
            return;
        }
        // A host that authenticates does so on the admin queue before it adds I/O queues.
        if subsys.state.lock().host_keys.contains_key(hostnqn)
            && !ctrl.admin_authenticated.load(Ordering::Acquire)
        {
            tracing::warn!(peer = %self.peer, host = %hostnqn, "I/O queue Connect before the admin queue authenticated");
            self.respond_now(sqe.cid, status::COMMAND_SEQUENCE_ERROR, 0);
            return;
        }
        // I/O queue ids run 1..=max_io_qpairs_per_ctrlr.
        if cmd.qid > limits.max_io_qpairs {
            self.connect_invalid(sqe.cid, 42, 0, "queue id out of range");
            return;
        }
        if cmd.sqsize < 1 || cmd.sqsize as u32 + 1 > opts.max_queue_depth as u32 {
            self.connect_invalid(sqe.cid, 44, 0, "queue size out of range");
            return;
        }
        ctrl.io_qpairs.fetch_add(1, Ordering::AcqRel);
        {
            let mut s = self.st.borrow_mut();
            s.qid = Some(cmd.qid);
            s.sq_size = cmd.sqsize;
            s.size_for_queue(cmd.sqsize);
            s.sqflow_disabled = cmd.cattr & fabrics::CATTR_SQ_FLOW_CONTROL_DISABLE != 0;
            s.c2h_success = opts.c2h_success && (s.sqflow_disabled || opts.c2h_success_always);
            s.ctrl = Some(ctrl.clone());
            s.subsys = Some(subsys.clone());
            s.in_capsule = opts.in_capsule_data_size;
        }
        let atr = self.start_auth(&subsys, hostnqn);
        tracing::debug!(peer = %self.peer, cntlid = ctrl.cntlid, qid = cmd.qid, "I/O queue connected");
        self.respond_now(sqe.cid, Status::SUCCESS, ctrl.cntlid as u32 | atr);
    }

    /// A host with a DH-HMAC-CHAP key authenticates this queue before anything but
    /// Fabrics commands runs on it: returns the Connect answer's AUTHREQ bits (ATR).
    fn start_auth(&self, subsys: &Subsystem, hostnqn: &str) -> u32 {
        let keys = subsys.state.lock().host_keys.get(hostnqn).cloned();
        let Some(keys) = keys else { return 0 };
        let q = QueueAuth::new(&keys, hostnqn, &subsys.nqn, self.target.auth_policy());
        let mut s = self.st.borrow_mut();
        s.auth = Some(Box::new(q));
        s.auth_pending = true;
        s.auth_since = strata_reactor::clock::ticks();
        CONNECT_AUTHREQ_ATR
    }

    /// AUTH_Send / AUTH_Receive (security protocol E9h): one step of the queue's
    /// DH-HMAC-CHAP transaction. Protocol failures complete successfully; the host reads
    /// AUTH_Failure1 next and the connection closes after it.
    fn on_auth(&self, sqe: Sqe, data: Option<DmaBuf>) {
        let send = sqe.fctype() == fabrics::FCTYPE_AUTH_SEND;
        let (secp, spsp0, spsp1) = (
            (sqe.cdw10 >> 24) as u8,
            (sqe.cdw10 >> 8) as u8,
            (sqe.cdw10 >> 16) as u8,
        );
        let len = sqe.cdw11 as usize;
        if secp != auth_msg::SECP_NVME_AUTH
            || spsp0 != auth_msg::SPSP
            || spsp1 != auth_msg::SPSP
            || len == 0
        {
            tracing::warn!(peer = %self.peer, secp, spsp0, spsp1, len, "AUTH command with bad fields");
            self.respond_now(sqe.cid, status::INVALID_FIELD, 0);
            return;
        }
        let mut s = self.st.borrow_mut();
        if s.ctrl.is_none() || s.auth.is_none() {
            drop(s);
            tracing::warn!(peer = %self.peer, "AUTH command on a queue that does not authenticate");
            self.respond_now(sqe.cid, status::COMMAND_SEQUENCE_ERROR, 0);
            return;
        }
        if send {
            let msg = match &data {
                Some(b) if b.len() == len => b.as_slice(),
                _ => {
                    drop(s);
                    tracing::warn!(peer = %self.peer, len, "AUTH_Send without its message in the capsule");
                    self.respond_now(sqe.cid, status::DATA_SGL_LENGTH_INVALID, 0);
                    return;
                }
            };
            // A transaction starts with the keys in force now.
            if msg.first() == Some(&auth_msg::TYPE_COMMON)
                && msg.get(1) == Some(&auth_msg::ID_NEGOTIATE)
            {
                let hostnqn = s
                    .ctrl
                    .as_ref()
                    .map(|c| c.hostnqn.clone())
                    .unwrap_or_default();
                let keys = s
                    .subsys
                    .as_ref()
                    .and_then(|sub| sub.state.lock().host_keys.get(&hostnqn).cloned());
                if let Some(q) = s.auth.as_mut() {
                    q.reload(keys.as_ref());
                }
            }
            let Some(q) = s.auth.as_mut() else { return };
            let r = q.send(msg);
            let done = q.authenticated;
            let chosen = q.chosen();
            let was_pending = std::mem::replace(&mut s.auth_pending, !done);
            if done && was_pending {
                let qid = s.qid;
                if let (Some(c), Some(0)) = (&s.ctrl, qid) {
                    c.admin_authenticated.store(true, Ordering::Release);
                }
                drop(s);
                tracing::info!(peer = %self.peer, qid, hash = chosen.0.name(), dhgroup = chosen.1.name(), "queue authenticated (DH-HMAC-CHAP)");
            } else {
                drop(s);
            }
            match r {
                Ok(false) => {}
                Ok(true) => {
                    tracing::warn!(peer = %self.peer, "the host failed the authentication (AUTH_Failure2)");
                    self.respond_now(sqe.cid, Status::SUCCESS, 0);
                    self.close_after_last();
                    return;
                }
                Err(why) => {
                    tracing::warn!(peer = %self.peer, reason = %why, "authentication failed")
                }
            }
            self.respond_now(sqe.cid, Status::SUCCESS, 0);
            return;
        }
        if sqe.sgl.sgl_id != SGL_TRANSPORT {
            drop(s);
            self.respond_now(sqe.cid, status::SGL_DESCRIPTOR_TYPE_INVALID, 0);
            return;
        }
        let Some(q) = s.auth.as_mut() else { return };
        let got = q.receive();
        if got.close {
            s.auth_pending = true;
        }
        let mut msg = got.message;
        msg.truncate(len.min(sqe.sgl.length as usize));
        let cqe = self.cqe(&mut s, sqe.cid, Status::SUCCESS, 0);
        drop(s);
        self.queue_c2h_owned(sqe.cid, msg, false);
        self.queue_resp(cqe, None);
        if got.close {
            self.close_after_last();
        }
    }

    /// The connection closes once what is queued has been sent.
    fn close_after_last(&self) {
        let mut s = self.st.borrow_mut();
        if let Some(last) = s.tx.back_mut() {
            last.close_after = true;
        }
    }

    /// Refuses a Connect for a bad parameter.
    fn connect_invalid(&self, cid: u16, ipo: u32, iattr: u32, why: &str) {
        tracing::warn!(peer = %self.peer, why, "Connect refused");
        // Result: IPO (offset of the bad field) in bits 15:0, IATTR (1: in the data) in 23:16.
        self.respond_now(cid, status::CONNECT_INVALID_PARAMETERS, ipo | (iattr << 16));
    }
}
