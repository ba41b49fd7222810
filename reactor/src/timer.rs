//! One-shot timers on a reactor, ordered by deadline.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

#[derive(Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    callbacks: HashMap<u64, Box<dyn FnOnce()>>,
    next_seq: u64,
}

impl TimerQueue {
    pub fn add(&mut self, deadline: u64, f: Box<dyn FnOnce()>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Reverse((deadline, seq)));
        self.callbacks.insert(seq, f);
        seq
    }

    pub fn cancel(&mut self, seq: u64) {
        self.callbacks.remove(&seq);
    }

    /// The earliest live deadline.
    pub fn next_deadline(&mut self) -> Option<u64> {
        while let Some(Reverse((d, seq))) = self.heap.peek().copied() {
            if self.callbacks.contains_key(&seq) {
                return Some(d);
            }
            self.heap.pop();
        }
        None
    }

    /// Removes and returns one expired callback, if any.
    pub fn pop_expired(&mut self, now: u64) -> Option<Box<dyn FnOnce()>> {
        while let Some(Reverse((d, seq))) = self.heap.peek().copied() {
            if d > now {
                return None;
            }
            self.heap.pop();
            if let Some(f) = self.callbacks.remove(&seq) {
                return Some(f);
            }
        }
        None
    }
}

/// Cancels its timer when dropped, unless `detach`ed.
#[must_use = "dropping a TimerHandle cancels the timer"]
#[derive(Debug)]
pub struct TimerHandle {
    pub(crate) seq: u64,
    pub(crate) armed: bool,
}

impl TimerHandle {
    pub fn detach(mut self) {
        self.armed = false;
    }
}

impl Drop for TimerHandle {
    fn drop(&mut self) {
        if self.armed {
            crate::reactor::with_current(|r| r.cancel_timer(self.seq));
        }
    }
}

/// Future returned by [`crate::sleep`].
pub struct Sleep {
    deadline: u64,
    timer: Option<TimerHandle>,
    fired: Rc<std::cell::Cell<bool>>,
}

impl std::fmt::Debug for Sleep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sleep")
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Sleep {
    pub(crate) fn new(d: Duration) -> Self {
        Sleep {
            deadline: crate::clock::ticks() + crate::clock::duration_to_ticks(d),
            timer: None,
            fired: Rc::new(std::cell::Cell::new(false)),
        }
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.fired.get() || crate::clock::ticks() >= self.deadline {
            if let Some(t) = self.timer.take() {
                t.detach();
            }
            return Poll::Ready(());
        }
        if self.timer.is_none() {
            let waker = cx.waker().clone();
            let fired = self.fired.clone();
            let deadline = self.deadline;
            let h = crate::reactor::with_current(|r| {
                r.add_timer_at(
                    deadline,
                    Box::new(move || {
                        fired.set(true);
                        waker.wake();
                    }),
                )
            })
            .expect("sleep() must be awaited on a reactor thread");
            self.timer = Some(h);
        }
        Poll::Pending
    }
}
