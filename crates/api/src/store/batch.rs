//! Coalescing of concurrent statements of one shape: items submitted while earlier ones are in the database go
//! together in the next statement, so a burst of N requests costs a few round trips and commits instead of N.
//!
//! Flow: [`Batcher::submit`] queues the item and, when fewer than `max_running` runners are busy, starts one. A
//! runner yields once (other ready tasks and the I/O driver run), takes everything queued (at most `max_batch`),
//! runs the batch function on it and answers each item from the output at the same position; it repeats until the
//! queue is empty, then stops. Nothing waits for a batch to fill: an item submitted to an idle batcher runs as soon
//! as the runtime has polled what was ready, alone if nothing else came; batches form while runners are busy, and
//! grow with the load.
//!
//! Guarantees: every item is answered once, by the batch it ran in; an item runs after it was submitted (a statement
//! in a batch sees every write committed before its item was submitted). When the batch function panics, the items of
//! that batch answer `None` and a new runner takes over the queue.
//! Caveat: a runner is a spawned task, so a submitter that goes away does not cancel its item's statement.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The future of one batch: one output per item, in order.
pub(crate) type BatchFuture<O> = Pin<Box<dyn Future<Output = Vec<O>> + Send>>;

type BatchFunction<I, O> = dyn Fn(Vec<I>) -> BatchFuture<O> + Send + Sync;

pub(crate) struct Batcher<I, O> {
    inner: Arc<Inner<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Batcher { inner: self.inner.clone() }
    }
}

struct Inner<I, O> {
    queue: Mutex<Queue<I, O>>,
    run: Box<BatchFunction<I, O>>,
    max_running: usize,
    max_batch: usize,
}

struct Queue<I, O> {
    waiting: VecDeque<(I, oneshot::Sender<O>)>,
    running: usize,
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// A batcher running at most `max_running` batches at once, each of at most `max_batch` items.
    pub(crate) fn new(
        max_running: usize,
        max_batch: usize,
        run: impl Fn(Vec<I>) -> BatchFuture<O> + Send + Sync + 'static,
    ) -> Self {
        Batcher {
            inner: Arc::new(Inner {
                queue: Mutex::new(Queue { waiting: VecDeque::new(), running: 0 }),
                run: Box::new(run),
                max_running: max_running.max(1),
                max_batch: max_batch.max(1),
            }),
        }
    }

    /// Runs `item` in the next batch and answers its output; `None` when its batch panicked.
    pub(crate) async fn submit(&self, item: I) -> Option<O> {
        let (sender, receiver) = oneshot::channel();
        let start = {
            let mut queue = self.inner.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            queue.waiting.push_back((item, sender));
            let start = queue.running < self.inner.max_running;
            if start {
                queue.running += 1;
            }
            start
        };
        if start {
            tokio::spawn(Runner { inner: self.inner.clone(), stopped: false }.run());
        }
        receiver.await.ok()
    }
}

/// One running runner; counted in `Queue::running` until it stops.
struct Runner<I: Send + 'static, O: Send + 'static> {
    inner: Arc<Inner<I, O>>,
    stopped: bool,
}

impl<I: Send + 'static, O: Send + 'static> Runner<I, O> {
    async fn run(mut self) {
        loop {
            if self.stop_when_idle() {
                return;
            }
            // items of requests that are ready on this worker, or whose sockets turned readable meanwhile, join
            // this batch: the yield lets those tasks and the I/O driver run first (a spawned runner would otherwise
            // run before them and take its first item alone). `cls api` + wrk at concurrency 8: PostgreSQL's CPU
            // per GET 2.0 -> 1.56 times wrk's own, the API's 2.57 -> 2.36 (alternating binaries, 3 rounds)
            tokio::task::yield_now().await;
            let batch: Vec<(I, oneshot::Sender<O>)> = {
                let mut queue = self.inner.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let take = queue.waiting.len().min(self.inner.max_batch);
                queue.waiting.drain(..take).collect()
            };
            if batch.is_empty() {
                continue; // another runner took them meanwhile
            }
            let (items, senders): (Vec<I>, Vec<oneshot::Sender<O>>) = batch.into_iter().unzip();
            let outputs = (self.inner.run)(items).await;
            for (sender, output) in senders.into_iter().zip(outputs) {
                let _ = sender.send(output);
            }
        }
    }

    /// Stops this runner (gives up its place) when nothing is queued.
    fn stop_when_idle(&mut self) -> bool {
        let mut queue = self.inner.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if queue.waiting.is_empty() {
            queue.running -= 1;
            self.stopped = true;
        }
        self.stopped
    }
}

impl<I: Send + 'static, O: Send + 'static> Drop for Runner<I, O> {
    /// A runner unwinding from a panic hands the queue to a new runner (or gives up its place when it is empty).
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let mut queue = self.inner.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if queue.waiting.is_empty() {
            queue.running -= 1;
        } else if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(Runner { inner: self.inner.clone(), stopped: false }.run());
        } else {
            queue.running -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Submits items `0..count` from a task each, all spawned before any runs, and checks that each gets itself
    /// back (the batch functions of these tests answer their items).
    async fn submit_each(batcher: &Batcher<u32, u32>, count: u32) {
        let tasks: Vec<_> = (0..count)
            .map(|item| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.submit(item).await })
            })
            .collect();
        for (task, item) in tasks.into_iter().zip(0..) {
            assert_eq!(task.await.unwrap(), Some(item), "each item gets its own output");
        }
    }

    #[tokio::test]
    async fn items_submitted_while_a_batch_runs_go_together_in_the_next_one() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let recorded = sizes.clone();
        let batcher = Batcher::new(1, 100, move |items: Vec<u32>| {
            recorded.lock().unwrap().push(items.len());
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                items.into_iter().map(|item| item * 2).collect()
            }) as BatchFuture<u32>
        });
        let first = tokio::spawn({
            let batcher = batcher.clone();
            async move { batcher.submit(1).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let rest: Vec<_> = (2..=5)
            .map(|item| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.submit(item).await })
            })
            .collect();
        assert_eq!(first.await.unwrap(), Some(2));
        for (task, item) in rest.into_iter().zip(2..=5) {
            assert_eq!(task.await.unwrap(), Some(item * 2), "each item gets its own output");
        }
        assert_eq!(*sizes.lock().unwrap(), vec![1, 4], "the first ran alone at once, the other four together");
    }

    /// Requests that are ready on the worker when a runner starts (a burst that one read of the sockets brought)
    /// go in its first batch, not one alone and the rest after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn items_of_tasks_ready_when_a_runner_starts_go_in_its_first_batch() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let recorded = sizes.clone();
        let batcher = Batcher::new(1, 100, move |items: Vec<u32>| {
            recorded.lock().unwrap().push(items.len());
            Box::pin(async move { items }) as BatchFuture<u32>
        });
        // spawned from a task of the worker: all five are ready at once, as after one poll of the sockets
        tokio::spawn(async move { submit_each(&batcher, 5).await }).await.unwrap();
        assert_eq!(*sizes.lock().unwrap(), vec![5]);
    }

    #[tokio::test]
    async fn batches_hold_at_most_the_maximum_and_runners_stay_within_their_limit() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let largest = Arc::new(AtomicUsize::new(0));
        let (running_in, most_in, largest_in) = (running.clone(), most.clone(), largest.clone());
        let batcher = Batcher::new(2, 3, move |items: Vec<u32>| {
            let (running, most) = (running_in.clone(), most_in.clone());
            largest_in.fetch_max(items.len(), Ordering::SeqCst);
            Box::pin(async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                items
            }) as BatchFuture<u32>
        });
        submit_each(&batcher, 40).await;
        assert!(largest.load(Ordering::SeqCst) <= 3);
        assert!(most.load(Ordering::SeqCst) <= 2);
        assert_eq!(batcher.inner.queue.lock().unwrap().running, 0, "runners stop when the queue is empty");
    }

    #[tokio::test]
    async fn a_panicking_batch_answers_none_and_later_items_still_run() {
        let batcher = Batcher::new(1, 10, |items: Vec<u32>| {
            Box::pin(async move {
                if items.contains(&0) {
                    panic!("batch with zero");
                }
                items
            }) as BatchFuture<u32>
        });
        assert_eq!(batcher.submit(0).await, None);
        assert_eq!(batcher.submit(7).await, Some(7));
        assert_eq!(batcher.inner.queue.lock().unwrap().running, 0);
    }
}
