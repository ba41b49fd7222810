//! The per-reactor single-threaded executor: `!Send` futures spawned with `spawn_local` run on
//! the reactor that spawned them; their wakers are `Send` and may be woken from any thread
//! (a woken task id goes onto the reactor's ready queue and a sleeping reactor is notified).

use crate::reactor::ReactorShared;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;

struct TaskSlot {
    fut: Option<LocalFuture>,
    waker: Waker,
    flag: Arc<TaskWaker>,
}

pub(crate) struct TaskWaker {
    shared: Arc<ReactorShared>,
    id: usize,
    queued: AtomicBool,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.shared.ready.push(self.id);
            self.shared.notify();
        }
    }
}

#[derive(Default)]
pub(crate) struct Executor {
    slots: RefCell<Vec<Option<TaskSlot>>>,
    free: RefCell<Vec<usize>>,
    live: Cell<usize>,
}

impl Executor {
    pub fn spawn(&self, shared: &Arc<ReactorShared>, fut: LocalFuture) {
        let id = match self.free.borrow_mut().pop() {
            Some(id) => id,
            None => {
                let mut s = self.slots.borrow_mut();
                s.push(None);
                s.len() - 1
            }
        };
        let flag = Arc::new(TaskWaker {
            shared: shared.clone(),
            id,
            queued: AtomicBool::new(false),
        });
        let waker = Waker::from(flag.clone());
        self.slots.borrow_mut()[id] = Some(TaskSlot {
            fut: Some(fut),
            waker,
            flag: flag.clone(),
        });
        self.live.set(self.live.get() + 1);
        flag.wake_by_ref();
    }

    pub fn live_tasks(&self) -> usize {
        self.live.get()
    }

    /// Polls one ready task. Returns false when the ready queue was empty.
    pub fn run_one(&self, shared: &ReactorShared) -> bool {
        let Some(id) = shared.ready.pop() else {
            return false;
        };
        let (mut fut, waker) = {
            let mut slots = self.slots.borrow_mut();
            let Some(Some(slot)) = slots.get_mut(id) else {
                return true;
            };
            // Clear before polling so a wake during the poll queues the task again.
            slot.flag.queued.store(false, Ordering::Release);
            match slot.fut.take() {
                Some(f) => (f, slot.waker.clone()),
                None => return true,
            }
        };
        let mut cx = Context::from_waker(&waker);
        let done = fut.as_mut().poll(&mut cx).is_ready();
        let mut slots = self.slots.borrow_mut();
        if done {
            slots[id] = None;
            drop(slots);
            self.free.borrow_mut().push(id);
            self.live.set(self.live.get() - 1);
        } else if let Some(Some(slot)) = slots.get_mut(id) {
            slot.fut = Some(fut);
        }
        true
    }
}

struct JoinState<T> {
    result: Option<T>,
    waker: Option<Waker>,
}

/// Awaits the output of a task spawned with [`crate::spawn_local`].
pub struct JoinHandle<T> {
    state: Rc<RefCell<JoinState<T>>>,
}

impl<T> std::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHandle")
            .field("done", &self.state.borrow().result.is_some())
            .finish()
    }
}

impl<T> JoinHandle<T> {
    pub fn is_finished(&self) -> bool {
        self.state.borrow().result.is_some()
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut s = self.state.borrow_mut();
        match s.result.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

pub(crate) fn wrap<F>(fut: F) -> (LocalFuture, JoinHandle<F::Output>)
where
    F: Future + 'static,
    F::Output: 'static,
{
    let state = Rc::new(RefCell::new(JoinState {
        result: None,
        waker: None,
    }));
    let st = state.clone();
    let task = Box::pin(async move {
        let v = fut.await;
        let w = {
            let mut s = st.borrow_mut();
            s.result = Some(v);
            s.waker.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    });
    (task, JoinHandle { state })
}

/// Yields once to the reactor so other tasks and pollers run.
pub async fn yield_now() {
    struct YieldNow(bool);
    impl Future for YieldNow {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
    YieldNow(false).await
}
