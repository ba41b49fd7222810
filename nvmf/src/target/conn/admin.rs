//! Admin queue commands, answered by the controller, and held AERs.

use super::*;

impl Connection {
    pub(super) fn on_admin(&self, ctrl: &Arc<Controller>, sqe: Sqe, data: Option<DmaBuf>) {
        ctrl.touch_keepalive();
        // Host-to-controller admin data must be in the capsule (it is at most 4 KiB here).
        if direction(sqe.opcode) == Direction::HostToController
            && data.is_none()
            && sqe.sgl.length > 0
        {
            self.respond_now(sqe.cid, status::INVALID_FIELD, 0);
            return;
        }
        let data_in: &[u8] = data.as_ref().map(|b| b.as_slice()).unwrap_or(&[]);
        if super::super::vendor::is_vendor_admin(sqe.opcode) {
            self.on_vendor_admin(ctrl, sqe, data_in);
            return;
        }
        let target = self.target;
        let out: AdminOutcome = ctrl.admin(&sqe, data_in, &|host| target.discovery_log(host));
        self.finish_admin(&sqe, out);
    }

    /// strata's vendor admin commands act on volumes and take time (a split writes
    /// superblocks): they run as a task on this reactor and answer when done.
    fn on_vendor_admin(&self, ctrl: &Arc<Controller>, sqe: Sqe, data_in: &[u8]) {
        if !ctrl.is_enabled() || ctrl.is_discovery() {
            self.respond_now(sqe.cid, status::COMMAND_SEQUENCE_ERROR, 0);
            return;
        }
        let Some(ns) = ctrl.subsys.namespace(sqe.nsid) else {
            tracing::warn!(peer = %self.peer, opcode = sqe.opcode, nsid = sqe.nsid, "vendor admin command for an unknown namespace");
            self.respond_now(sqe.cid, status::INVALID_NAMESPACE, 0);
            return;
        };
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let bdev = ns.desc.name().to_string();
        let data = data_in.to_vec();
        let peer = self.peer;
        strata_reactor::spawn_local(async move {
            let out = super::super::vendor::run(&sqe, &bdev, &data, &peer.to_string()).await;
            me.finish_admin(&sqe, out);
            me.flush();
        })
        .detach();
    }

    /// Sends an admin command's answer: its data (if any) and its completion.
    fn finish_admin(&self, sqe: &Sqe, out: AdminOutcome) {
        if out.hold_aer {
            let mut s = self.st.borrow_mut();
            if s.held_aers.len() >= AER_LIMIT {
                drop(s);
                self.respond_now(sqe.cid, status::ASYNC_EVENT_LIMIT_EXCEEDED, 0);
                return;
            }
            s.held_aers.push(sqe.cid);
            drop(s);
            self.deliver_events();
            return;
        }
        let st = out.status.unwrap_or(status::INTERNAL_ERROR);
        if let (true, Some(d)) = (st.is_success(), out.data) {
            let n = d.len().min(sqe.sgl.length as usize);
            if sqe.sgl.sgl_id != SGL_TRANSPORT && n > 0 {
                self.respond_now(sqe.cid, status::SGL_DESCRIPTOR_TYPE_INVALID, 0);
                return;
            }
            let mut d = d;
            d.truncate(n);
            let mut s = self.st.borrow_mut();
            let mut cqe = self.cqe(&mut s, sqe.cid, st, out.dw0);
            cqe.dw1 = out.dw1;
            let success_flag = false;
            drop(s);
            self.queue_c2h_owned(sqe.cid, d, success_flag);
            self.queue_resp(cqe, None);
            return;
        }
        let mut s = self.st.borrow_mut();
        let mut cqe = self.cqe(&mut s, sqe.cid, st, out.dw0);
        cqe.dw1 = out.dw1;
        drop(s);
        self.queue_resp(cqe, None);
    }

    /// Completes held Asynchronous Event Requests with pending events.
    pub(crate) fn deliver_events(&self) {
        loop {
            let (cid, ev) = {
                let mut s = self.st.borrow_mut();
                let Some(ctrl) = s.ctrl.clone() else { return };
                if s.held_aers.is_empty() {
                    return;
                }
                let Some(ev) = ctrl.take_event() else { return };
                let cid = s.held_aers.remove(0);
                (cid, ev)
            };
            tracing::info!(peer = %self.peer, event = ev, "asynchronous event delivered");
            self.respond_now(cid, Status::SUCCESS, ev);
            self.flush();
        }
    }
}
