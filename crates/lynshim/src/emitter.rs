//! The emitter thread: hands the records of the traced threads to `tracing`, one `tracing` event per
//! batch, and keeps the file no more than [`FLUSH_DELAY`] behind them.
//!
//! A `tracing` span through the tracing-chrome layer costs several microseconds (tracing-chrome formats
//! the span's fields, allocates its name and target and sends a message to its writer thread at every
//! enter and exit), so the traced threads never call `tracing` themselves: they append records to the
//! session's list (see [`crate::session`]) and full lists come down a channel to this thread, which also
//! collects what is left every [`FLUSH_DELAY`]. It sends them on through tracing-chrome in batches
//! ([`crate::batch`]), which tracing-chrome writes on its writer thread and [`crate::fixup`] expands into
//! the events of the file, and it tells tracing-chrome to flush on a clock.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use tracing::Dispatch;
use tracing_chrome::{ChromeLayerBuilder, FlushGuard, TraceStyle};
use tracing_subscriber::prelude::*;
use tracing_subscriber::Registry;

use crate::batch::{Batch, Batches, Record};
use crate::clock::Anchors;
use crate::{session, signals};

/// Events reach the file about this long after they were recorded (unless the process is killed with
/// SIGKILL first, which loses them): the emitter collects and flushes at this pace while records come.
/// Each round wakes this thread and the writer and costs a `write`: at 10 ms, a traced `import lynguine`
/// spent 4.2 ms of the emitter's and 5.7 ms of the writer's CPU, mostly on its 80-odd rounds; at 50 ms,
/// 1.0 and 2.3 ms (medians, `/proc/<pid>/task/<tid>/schedstat`; `make bench` measures it). On a machine
/// whose cores a build keeps busy, that CPU is taken from the build.
pub const FLUSH_DELAY: Duration = Duration::from_millis(50);
/// …and at this pace when none came in the last round (an idle server, a long computation).
const IDLE_DELAY: Duration = Duration::from_millis(100);
/// Records per `tracing` event, at most: large enough that tracing-chrome's per-event cost vanishes,
/// small enough that the writer's output for one event stays a few hundred KiB.
const MAX_BATCH: usize = 1024;

/// What goes down the channel to the emitter.
pub enum Message {
    /// Records in the order they were recorded, and the text their args point into.
    Records(Vec<Record>, String),
    /// Write out what has been recorded; the sender, if any, is told once tracing-chrome has it.
    Flush(Option<SyncSender<()>>),
}

/// A `tracing` dispatcher writing through tracing-chrome into `writer`.
pub fn chrome_dispatch<W: io::Write + Send + 'static>(writer: W) -> (Dispatch, FlushGuard) {
    let (layer, guard) = ChromeLayerBuilder::new()
        .writer(writer)
        .include_args(true)
        // Without source locations tracing-chrome's line starts with the args (keys sorted), where the
        // fixup finds a batch's number without parsing the line.
        .include_locations(false)
        .trace_style(TraceStyle::Threaded)
        .build();
    (Dispatch::new(Registry::default().with(layer)), guard)
}

/// The emitter's loop: records in, `tracing` events out (see the module doc). `collect` hands the
/// session's pending records to the channel and says whether there were any; `clock` reads the anchors
/// that convert their times to CLOCK_MONOTONIC (see [`crate::clock`]). Returns when every sender is gone
/// and the channel is empty, after tracing-chrome has written everything out: `None`; or, when a signal
/// that Python's handler should have acted on is overdue ([`signals::overdue`]), once what the traced
/// threads had recorded is written out: `Some(signal)`, for the caller to end the session and the process.
pub fn run(
    messages: &Receiver<Message>,
    dispatch: &Dispatch,
    guard: FlushGuard,
    batches: &Batches,
    mut clock: Anchors,
    collect: impl Fn() -> bool,
) -> Option<i32> {
    let default = tracing::dispatcher::set_default(dispatch);
    let mut unflushed = false;
    let mut last_flush = Instant::now();
    let mut busy = true;
    let mut ending_for = None;
    loop {
        if ending_for.is_none() {
            ending_for = signals::overdue();
            if ending_for.is_some() {
                // Nothing more is recorded, and everything recorded until now comes down the channel;
                // the rounds below take it without waiting and stop at the first empty one.
                session::ACTIVE.store(false, Ordering::SeqCst);
                collect();
            }
        }
        // While something sent is not flushed yet, wake when its flush is due, [`FLUSH_DELAY`] after the last:
        // a batch sent just after a flush (a full list handed off) would otherwise wait for the next round
        // and one more, nearly twice as long.
        let wait = if ending_for.is_some() {
            Duration::ZERO
        } else if unflushed {
            FLUSH_DELAY.saturating_sub(last_flush.elapsed())
        } else if busy {
            FLUSH_DELAY
        } else {
            IDLE_DELAY
        };
        let message = match messages.recv_timeout(wait) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) if ending_for.is_some() => break,
            Err(RecvTimeoutError::Timeout) => {
                // An anchor on the clock too, so that a stretch stays short while nothing is sent.
                clock.mark();
                // Collect what the traced threads recorded since their last handoff; it arrives as a
                // message, in order after every earlier handoff.
                busy = collect();
                if unflushed && !busy {
                    guard.flush();
                    unflushed = false;
                    last_flush = Instant::now();
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        busy = true;
        let mut waiting = Vec::new();
        let mut batch = Batch::default();
        let mut count = 0;
        let mut next = Some(message);
        while let Some(message) = next {
            match message {
                Message::Flush(ack) => waiting.push(ack),
                Message::Records(records, text) => {
                    count += records.len();
                    batch.parts.push((records, text));
                }
            }
            next = if count < MAX_BATCH { messages.try_recv().ok() } else { None };
        }
        if !batch.is_empty() {
            // Read once every record of the batch was made: each lies before the last anchor kept, or
            // less than a millisecond after it (anchors are kept that far apart). The writer converts the
            // times as it writes them (it reads every record anyway; a pass here cost the emitter several
            // times its other work, mostly in cache misses).
            clock.mark();
            batch.clock = clock.converter();
            batches.send(batch);
            unflushed = true;
        }
        // While records keep coming the channel never times out: flush on the clock too.
        if !waiting.is_empty() || (unflushed && last_flush.elapsed() >= FLUSH_DELAY) {
            guard.flush();
            unflushed = false;
            last_flush = Instant::now();
        }
        for ack in waiting.into_iter().flatten() {
            let _ = ack.send(());
        }
    }
    drop(default);
    // tracing-chrome writes out what it has and joins its writer thread.
    drop(guard);
    ending_for
}

#[cfg(test)]
mod tests {
    use std::sync::{mpsc, Arc, Mutex};

    use serde_json::{json, Value};

    use super::*;
    use crate::batch::{OwnEvent, Text};
    use crate::fixup::{Fixup, SharedFixup};

    /// Records sent by the emitter through the real tracing-chrome into a fixup: every record comes
    /// out with its own time and thread, and the fixup finds each batch without parsing its line.
    #[test]
    fn batches_reach_the_file_through_tracing_chrome() {
        let batches = Batches::default();
        let fixup = Arc::new(Mutex::new(Fixup::new(Vec::new(), batches.clone(), 42, 0, 0.0, Box::new(|_| {}))));
        let (dispatch, guard) = chrome_dispatch(SharedFixup(Arc::clone(&fixup)));
        let text = r#"{"field":"title"}{"found":true}"#.to_owned();
        let records = vec![
            Record::Begin {
                tid: 7,
                ns: 1_000,
                name: "f".into(),
                cat: "field".into(),
                args: Some(Text { start: 0, len: 17 }),
            },
            Record::End {
                tid: 7,
                ns: 3_500,
                name: "f".into(),
                cat: "field".into(),
                args: Some(Text { start: 17, len: 14 }),
            },
            Record::Own {
                tid: 8,
                ns: 4_000,
                event: Box::new(OwnEvent::Counter { name: "rss".into(), bytes: 5, at: None }),
            },
        ];
        let (sender, receiver) = mpsc::channel();
        sender.send(Message::Records(records, text)).expect("channel open");
        drop(sender);
        run(&receiver, &dispatch, guard, &batches, Anchors::default(), || false);
        drop(dispatch);
        let mut fixup = Arc::try_unwrap(fixup).ok().expect("writer thread ended").into_inner().expect("lock");
        fixup.close();
        assert_eq!(fixup.batches_parsed_in_full(), 0);
        let out: Vec<Value> = serde_json::from_slice(&fixup.into_inner()).expect("valid JSON");
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0],
            json!({"ph": "X", "name": "f", "cat": "field", "pid": 42, "tid": 7, "ts": 1.0, "dur": 2.5,
                   "args": {"field": "title", "found": true}})
        );
        assert_eq!((out[1]["ph"].as_str(), out[1]["tid"].as_u64()), (Some("C"), Some(8)));
    }
}
