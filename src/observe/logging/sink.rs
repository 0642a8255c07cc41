//! The sink: a buffer of whole lines that a background thread writes to
//! stdout in batches.

use std::fmt;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Bytes queued for the writer before appenders wait for it.
pub const MAX_PENDING: usize = 4 * 1024 * 1024;

/// How long the writer lets lines gather after a write before it takes the
/// next batch. Bounds writer wake-ups (and `write` calls) to ~500/s under
/// any load; a line is on stdout at most this long after the previous
/// batch.
const GATHER: Duration = Duration::from_millis(2);

pub(super) struct State {
    /// Lines waiting for the writer.
    pub(super) pending: Vec<u8>,
    /// The writer is parked on `wake_writer` (so appenders must notify).
    writer_parked: bool,
    closed: bool,
}

pub(super) struct Shared {
    state: Mutex<State>,
    wake_writer: Condvar,
    space: Condvar,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where log lines go: cheap to clone, appends whole lines.
#[derive(Clone)]
pub struct LogSink {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for LogSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogSink").finish_non_exhaustive()
    }
}

/// Keeps the writer thread; dropping it writes out what is queued and
/// stops the thread. Keep it alive until exit.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogSink {
    /// A sink whose writer thread writes to `out`.
    pub fn new(out: impl Write + Send + 'static) -> (LogSink, LogGuard) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: Vec::with_capacity(64 * 1024),
                writer_parked: false,
                closed: false,
            }),
            wake_writer: Condvar::new(),
            space: Condvar::new(),
        });
        let writer = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_loop(&writer, out))
            .ok();
        if thread.is_none() {
            // No thread: nothing would ever drain the buffer. Appends are
            // then dropped rather than blocking forever.
            shared.lock().closed = true;
        }
        (
            LogSink {
                shared: Arc::clone(&shared),
            },
            LogGuard { shared, thread },
        )
    }

    /// Queues `bytes` (whole lines) for the writer.
    pub fn append(&self, bytes: &[u8]) {
        let mut state = self.shared.lock();
        while state.pending.len() >= MAX_PENDING && !state.closed {
            state = self
                .shared
                .space
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.closed {
            return;
        }
        state.pending.extend_from_slice(bytes);
        if state.writer_parked {
            state.writer_parked = false;
            drop(state);
            self.shared.wake_writer.notify_one();
        }
    }
}

fn write_loop(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::with_capacity(64 * 1024);
    loop {
        {
            let mut state = shared.lock();
            while state.pending.is_empty() && !state.closed {
                state.writer_parked = true;
                state = shared
                    .wake_writer
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.pending.is_empty() {
                return; // closed and drained
            }
            std::mem::swap(&mut state.pending, &mut batch);
            shared.space.notify_all();
        }
        // A failed write (stdout closed) loses these lines but must not
        // stop the draining, or appenders would block forever.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if batch.capacity() > 2 * MAX_PENDING {
            batch.shrink_to(64 * 1024);
        }
        std::thread::sleep(GATHER);
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake_writer.notify_one();
        self.shared.space.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `tracing_subscriber::fmt` writes each formatted event with one
/// `write_all`: one line, appended whole.
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = SinkWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        SinkWriter(self)
    }
}

/// The writer [`LogSink`] hands to `tracing_subscriber::fmt`.
pub struct SinkWriter<'a>(&'a LogSink);

impl Write for SinkWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
