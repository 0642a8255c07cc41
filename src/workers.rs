//! Connection workers: the threads that serve client connections.
//!
//! Each worker is one thread running a single-threaded tokio runtime with
//! its own upstream connection pool (see [`crate::upstream::Upstreams`]).
//! The accept loop hands each new connection to the next worker, and from
//! then on everything that connection's requests do — parsing, the proxy
//! phases, the upstream call (and an HTTP/2 connection's task), the answer — runs on
//! that one thread. This is nginx's model (worker processes) and what
//! pingora calls thread-per-core.
//!
//! Why: on the shared multi-threaded runtime a proxied request hops
//! between threads (the client connection's task, the upstream
//! connection's task, work stealing), and every hop to a parked thread is a
//! futex wake-up. Measured with `bash benches/load.sh`, one thread per core
//! cut the gateway's CPU per request by about a fifth (see
//! `benches/README.md`). The cost: a connection stays on its worker, so one
//! very busy keep-alive connection (or one HTTP/2 connection carrying
//! everything) uses one core. `workers = 0` in the config serves
//! connections on the shared runtime instead.
//!
//! Everything else (the admin listener, token refreshers, Redis, ticket
//! resends) stays on the shared runtime; requests reach that state through
//! `Arc`s, atomics and channels, which work across runtimes.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// The index of the worker this thread is, if it is one.
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker running the caller, or `None` off the workers.
pub fn current() -> Option<usize> {
    INDEX.with(Cell::get)
}

/// The worker threads. Dropping this stops them: each runtime is shut down,
/// which cancels whatever tasks it still has (drain connections first).
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts `n` workers (at least one).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let n = n.max(1);
        let mut handles = Vec::with_capacity(n);
        let mut stops = Vec::with_capacity(n);
        for index in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("gateway-worker-{index}"))
                .spawn(move || {
                    INDEX.with(|i| i.set(Some(index)));
                    // Runs the worker's tasks until it is told to stop (or
                    // the pool is dropped, which closes the channel).
                    let _ = runtime.block_on(stopped);
                })?;
        }
        Ok(Workers {
            handles,
            stops,
            next: AtomicUsize::new(0),
        })
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Always false: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Runs `task` on the next worker, round robin.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        drop(self.handles[i].spawn(task));
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_round_robin_on_their_own_threads() {
        let workers = Workers::start(2).expect("start");
        assert_eq!(current(), None);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let tx = tx.clone();
            workers.spawn(async move {
                let name = std::thread::current().name().map(str::to_owned);
                // A timer works there: each worker has its own driver.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                let _ = tx.send((current(), name));
            });
        }
        drop(tx);
        let mut seen = Vec::new();
        while let Some(s) = rx.recv().await {
            seen.push(s);
        }
        seen.sort();
        assert_eq!(
            seen,
            vec![
                (Some(0), Some("gateway-worker-0".to_owned())),
                (Some(0), Some("gateway-worker-0".to_owned())),
                (Some(1), Some("gateway-worker-1".to_owned())),
                (Some(1), Some("gateway-worker-1".to_owned())),
            ]
        );
    }
}
