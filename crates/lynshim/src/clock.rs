//! The clock of the records: the CPU's time-stamp counter where the kernel keeps time by it, converted
//! to CLOCK_MONOTONIC by the file's writer, off the traced thread's path.
//!
//! Every traced call reads the clock twice. On this project's 2-core VM, a loop of 20 M reads took
//! 40 ns per `clock_gettime(CLOCK_MONOTONIC)` (through the vDSO) and 21 ns per `rdtsc`, and the traced
//! thread needs only the raw count. The emitter reads pairs of (count, CLOCK_MONOTONIC) close together
//! ([`Anchor`]) as it sends batches and on its clock, at least [`MIN_STRETCH_NS`] apart ([`Anchors`]);
//! the writer turns each count into nanoseconds on the straight line through the two anchors around it
//! ([`Converter`]). The counter runs at a constant rate, and CLOCK_MONOTONIC nearly so (NTP slews it by
//! at most 500 parts per million, and changes its rate seldom), so over one stretch (about one
//! [`FLUSH_DELAY`](crate::emitter::FLUSH_DELAY), 50 ms, while records come) a count lands within about a
//! hundred nanoseconds of the CLOCK_MONOTONIC time it was read at while the rate holds. A rate change
//! in mid-stretch bends the line by at most a quarter of the change times the stretch: a few ppm, as NTP
//! makes them, tens of nanoseconds; the extreme, 500 ppm at once over 50 ms, 6 µs. The file holds times
//! that line up with every other process's, and with the events lynshim times on CLOCK_MONOTONIC itself.
//!
//! The counter is used only on x86-64 and only when the kernel's own clock source is `tsc`: the kernel
//! chooses it only once it has found the counter constant-rate and in step across CPUs. Anywhere else
//! the records hold CLOCK_MONOTONIC nanoseconds and the conversion is the identity. (Crates such as
//! quanta and minstant read the counter too, but calibrate it against the system clock when first used,
//! which would add milliseconds to every traced process's start-up, and convert to their own epoch,
//! not to CLOCK_MONOTONIC.)

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use crate::procinfo;

/// The records' clock is the time-stamp counter (decided once per process, see [`choose`]).
static COUNTER: AtomicBool = AtomicBool::new(false);
static CHOSEN: Once = Once::new();

/// Decide, once per process, which clock the records use; before the first session starts.
pub fn choose() {
    CHOSEN.call_once(|| {
        let tsc = cfg!(target_arch = "x86_64")
            && std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
                .is_ok_and(|source| source.trim() == "tsc");
        COUNTER.store(tsc, Ordering::Relaxed);
    });
}

/// Now, on the records' clock: a count of the time-stamp counter, or CLOCK_MONOTONIC nanoseconds.
#[inline]
pub fn now() -> u64 {
    #[cfg(target_arch = "x86_64")]
    if COUNTER.load(Ordering::Relaxed) {
        // SAFETY: every x86-64 CPU has `rdtsc`; it reads a register and has no other effect.
        return unsafe { core::arch::x86_64::_rdtsc() };
    }
    procinfo::monotonic_ns()
}

/// A count of the counter and CLOCK_MONOTONIC read at (nearly) the same moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Anchor {
    count: u64,
    ns: u64,
}

/// Reads of both clocks an anchor is the best of.
const READS: usize = 8;

impl Anchor {
    /// Read both clocks: the counter on either side of CLOCK_MONOTONIC, taking the middle, in the read
    /// whose two counts are closest ([`READS`] of them: an interrupt between the reads of one leaves
    /// the others).
    fn now() -> Self {
        let mut best: Option<(u64, Self)> = None;
        for _ in 0..READS {
            let before = now();
            let ns = procinfo::monotonic_ns();
            let after = now();
            let Some(spread) = after.checked_sub(before) else { continue };
            if best.is_none_or(|(narrowest, _)| spread < narrowest) {
                best = Some((spread, Self { count: before + spread / 2, ns }));
            }
        }
        best.map_or_else(|| Self { count: now(), ns: procinfo::monotonic_ns() }, |(_, anchor)| anchor)
    }
}

/// Anchors are read at least this far apart: a stretch's rate is then as exact as its two anchors
/// allow (tens of nanoseconds over a millisecond), however fast batches come.
pub const MIN_STRETCH_NS: u64 = 1_000_000;
/// Anchors kept, at most: a quarter of a second or more. A record is converted in the batch the emitter
/// sends after it was made, at most a [`FLUSH_DELAY`](crate::emitter::FLUSH_DELAY) or so later (100 ms
/// when the emitter idles), or, should the emitter fall behind, as long as it stays behind: one older
/// than every anchor kept is placed on the line of the oldest stretch.
const ANCHORS: usize = 256;

/// The emitter's side: reads the anchors and hands a [`Converter`] to each batch.
#[derive(Debug, Default)]
pub struct Anchors {
    /// Oldest first; empty when the records hold nanoseconds already.
    list: VecDeque<Anchor>,
    /// What the batches get: the same anchors, shared.
    converter: Converter,
}

impl Anchors {
    /// The anchors of a session whose records are made from now on (read before its first record).
    pub fn start() -> Self {
        let mut anchors = Self::default();
        if COUNTER.load(Ordering::Relaxed) {
            anchors.list.push_back(Anchor::now());
            anchors.share(None);
        }
        anchors
    }

    /// Read a new anchor, unless the last is under [`MIN_STRETCH_NS`] old: every record made so far can
    /// then be placed. The first stretch gives the rate of everything converted in it, so the first
    /// anchor after the session's start waits (on the emitter, once) until the stretch is long enough.
    pub fn mark(&mut self) {
        let Some(&last) = self.list.back() else { return };
        let mut anchor = Anchor::now();
        if self.list.len() == 1 && anchor.ns < last.ns + MIN_STRETCH_NS {
            std::thread::sleep(Duration::from_nanos(last.ns + MIN_STRETCH_NS - anchor.ns));
            anchor = Anchor::now();
        }
        self.add(anchor);
    }

    /// Keep `anchor` if it is [`MIN_STRETCH_NS`] or more after the last one (both clocks ahead).
    fn add(&mut self, anchor: Anchor) -> bool {
        let Some(&last) = self.list.back() else { return false };
        if anchor.count <= last.count || anchor.ns < last.ns + MIN_STRETCH_NS {
            return false;
        }
        if self.list.len() == ANCHORS {
            self.list.pop_front();
        }
        self.list.push_back(anchor);
        self.share(Some(Stretch::new(last, anchor)));
        true
    }

    fn share(&mut self, last: Option<Stretch>) {
        self.converter = Converter { anchors: self.list.iter().copied().collect(), last };
    }

    /// What converts the times of the records made so far (a shared list, not a copy per batch).
    pub fn converter(&self) -> Converter {
        self.converter.clone()
    }
}

/// Turns the records' counts into CLOCK_MONOTONIC nanoseconds, in the writer. The default converts
/// nothing (records that hold nanoseconds already).
#[derive(Clone, Debug, Default)]
pub struct Converter {
    /// Oldest first; empty when the records hold nanoseconds already.
    anchors: Arc<[Anchor]>,
    /// The stretch between the last two anchors, where nearly every record of a batch lies, with its
    /// rate worked out once rather than at every conversion.
    last: Option<Stretch>,
}

/// A straight line from an anchor: nanoseconds per count.
#[derive(Clone, Copy, Debug)]
struct Stretch {
    from: Anchor,
    rate: f64,
}

impl Stretch {
    #[allow(clippy::cast_precision_loss)]
    fn new(a: Anchor, b: Anchor) -> Self {
        Self { from: a, rate: (b.ns - a.ns) as f64 / (b.count - a.count) as f64 }
    }

    /// The offset from the anchor is a float (exact for any offset a record can have), added to the
    /// anchor's nanoseconds as an integer: the clock's nanoseconds pass what a float holds exactly after
    /// some 104 days up. Truncated, not rounded: under a nanosecond either way, and no call to libm.
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    #[inline]
    fn ns(self, at: u64) -> u64 {
        let offset = (at.wrapping_sub(self.from.count) as i64) as f64 * self.rate;
        self.from.ns.saturating_add_signed(offset as i64)
    }
}

impl Converter {
    /// `at`, a reading of [`now`], in CLOCK_MONOTONIC nanoseconds: on the straight line through the two
    /// anchors around it (beyond the first or the last anchor, through the nearest two). Each stretch
    /// ends where the next begins, so one converter never goes backwards. A later batch's converter may
    /// place a time made after the last anchor of an earlier batch's a little differently (on a
    /// stretch read since, rather than extended): by the anchors' own uncertainty, tens of nanoseconds.
    /// (Inlined into the writer: it runs for every event, and a call to it showed as 9 % of the native
    /// module's samples.)
    #[inline]
    pub fn ns(&self, at: u64) -> u64 {
        match (self.last, self.anchors.first()) {
            (None, None) => at,
            // Before the first stretch is known (never, in a session: the emitter reads an anchor before
            // it sends a batch), a count is taken as a nanosecond.
            (None, Some(&only)) => Stretch { from: only, rate: 1.0 }.ns(at),
            (Some(last), _) if at >= last.from.count => last.ns(at),
            (Some(_), _) => {
                let after = self.anchors.partition_point(|a| a.count <= at).clamp(1, self.anchors.len() - 1);
                Stretch::new(self.anchors[after - 1], self.anchors[after]).ns(at)
            }
        }
    }

    /// A converter through these (count, nanoseconds) anchors, oldest first, for tests.
    #[cfg(test)]
    pub(crate) fn through(anchors: &[(u64, u64)]) -> Self {
        let anchors: Arc<[Anchor]> = anchors.iter().map(|&(count, ns)| Anchor { count, ns }).collect();
        let n = anchors.len();
        let last = (n > 1).then(|| Stretch::new(anchors[n - 2], anchors[n - 1]));
        Self { anchors, last }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_between_anchors_are_interpolated_and_beyond_them_extrapolated() {
        // 4 counts per nanosecond, then 2: each stretch at its own rate (rates a float holds exactly).
        let c = Converter::through(&[(4_000, 1_000), (8_000, 2_000), (10_000, 3_000)]);
        assert_eq!(c.ns(4_000), 1_000);
        assert_eq!(c.ns(6_000), 1_500);
        assert_eq!(c.ns(8_000), 2_000);
        assert_eq!(c.ns(9_000), 2_500);
        assert_eq!(c.ns(12_000), 4_000);
        assert_eq!(c.ns(2_000), 500);
        assert_eq!(c.ns(0), 0);
    }

    #[test]
    fn the_conversion_never_goes_backwards_across_an_anchor() {
        let c = Converter::through(&[(0, 0), (1_000, 400), (1_100, 500), (10_000, 3_000)]);
        let converted: Vec<u64> = (0..12_000).step_by(7).map(|at| c.ns(at)).collect();
        assert!(converted.windows(2).all(|w| w[0] <= w[1]), "{converted:?}");
    }

    #[test]
    fn without_the_counter_records_hold_nanoseconds_already() {
        assert_eq!(Converter::default().ns(123_456), 123_456);
        assert_eq!(Converter::through(&[(100, 1_000)]).ns(150), 1_050);
    }

    fn anchors_from(first: Anchor) -> Anchors {
        let mut anchors = Anchors { list: VecDeque::from([first]), converter: Converter::default() };
        anchors.share(None);
        anchors
    }

    #[test]
    fn anchors_closer_than_a_stretch_or_not_ahead_are_not_kept() {
        let mut a = anchors_from(Anchor { count: 1_000, ns: 10_000_000 });
        assert!(!a.add(Anchor { count: 2_000, ns: 10_000_000 + MIN_STRETCH_NS - 1 }));
        assert!(!a.add(Anchor { count: 1_000, ns: 20_000_000 }));
        assert!(a.add(Anchor { count: 3_000, ns: 10_000_000 + MIN_STRETCH_NS }));
        assert_eq!(a.converter().ns(2_000), 10_000_000 + MIN_STRETCH_NS / 2);
    }

    /// An emitter far behind: more anchors read since a record was made than are kept. The record is
    /// placed on the oldest stretch's line, which here is the clocks' own rate, and newer records still
    /// exactly.
    #[test]
    fn a_record_older_than_every_anchor_kept_is_still_placed_on_a_line() {
        let mut a = anchors_from(Anchor { count: 0, ns: 0 });
        for i in 1..=(ANCHORS as u64 + 10) {
            assert!(a.add(Anchor { count: i * 2 * MIN_STRETCH_NS, ns: i * MIN_STRETCH_NS }));
        }
        let c = a.converter();
        assert_eq!(c.anchors.len(), ANCHORS);
        assert_eq!(c.ns(2 * MIN_STRETCH_NS + 10), MIN_STRETCH_NS + 5);
        assert_eq!(c.ns(2 * (ANCHORS as u64 + 5) * MIN_STRETCH_NS), (ANCHORS as u64 + 5) * MIN_STRETCH_NS);
    }

    /// The real clocks: a count read between two CLOCK_MONOTONIC readings converts to a time between
    /// them (the anchors are read around them, as the emitter reads them).
    #[test]
    fn a_real_reading_converts_to_the_monotonic_time_it_was_read_at() {
        choose();
        let mut anchors = Anchors::start();
        let mut readings = Vec::new();
        for _ in 0..5 {
            let before = procinfo::monotonic_ns();
            let at = now();
            let after = procinfo::monotonic_ns();
            readings.push((before, at, after));
            std::thread::sleep(Duration::from_millis(2));
            anchors.mark();
        }
        let c = anchors.converter();
        for (before, at, after) in readings {
            let ns = c.ns(at);
            // The anchors' own uncertainty: a few microseconds at worst on a loaded machine.
            assert!(ns + 5_000 >= before && ns <= after + 5_000, "{before} <= {ns} <= {after}");
        }
    }
}
