//! The clock of the records: the CPU's time-stamp counter where the kernel keeps time by it, converted
//! to CLOCK_MONOTONIC by the file's writer, off the traced thread's path.
//!
//! Every traced call reads the clock twice. Through the vDSO, `clock_gettime(CLOCK_MONOTONIC)` took 40 ns
//! here and `rdtsc` 21 (a loop of 20 M reads each, 2026-11-29), and the traced thread needs only the
//! raw count. The emitter reads pairs of (count, CLOCK_MONOTONIC) together ([`Anchor`]) as it receives
//! the records, and the writer turns counts into nanoseconds between them as it writes each event. Between two anchors both clocks run at a constant rate, so a count is placed
//! by straight-line interpolation, as exactly as the anchors themselves were read (tens of
//! nanoseconds), and the file still holds CLOCK_MONOTONIC times that line up with every other process's.
//!
//! The counter is used only on x86-64 and only when the kernel's own clock source is `tsc`: the kernel
//! chooses it only once it has found the counter constant-rate and in step across CPUs. Anywhere else
//! the records hold CLOCK_MONOTONIC nanoseconds and the conversion is the identity. (Crates such as
//! quanta and minstant read the counter too, but calibrate it against the system clock when first used,
//! which would add milliseconds to every traced process's start-up, and convert to their own epoch,
//! not to CLOCK_MONOTONIC.)

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

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

impl Anchor {
    /// Read both clocks: the counter on either side of CLOCK_MONOTONIC, taking the middle. A pair read
    /// far apart (the thread was preempted between the reads) is read again.
    fn now() -> Self {
        let mut best: Option<(u64, Self)> = None;
        for _ in 0..8 {
            let before = now();
            let ns = procinfo::monotonic_ns();
            let after = now();
            let spread = after.wrapping_sub(before);
            let anchor = Self { count: before + spread / 2, ns };
            if best.is_none_or(|(widest, _)| spread < widest) {
                best = Some((spread, anchor));
            }
            // A few hundred counts is two reads back to back; ten thousand (a few microseconds) is not.
            if spread < 10_000 {
                break;
            }
        }
        best.map_or(Self { count: now(), ns: procinfo::monotonic_ns() }, |(_, anchor)| anchor)
    }
}

/// Anchors kept, at most: one is read at every list the emitter receives (every 10 ms while records
/// come), and a record is converted at most a list or two after it was made.
const ANCHORS: usize = 64;

/// Turns the records' counts into CLOCK_MONOTONIC nanoseconds: kept by the emitter, which reads the
/// anchors, and copied into each batch for the writer, which converts. The default converts nothing
/// (records that hold nanoseconds already).
#[derive(Clone, Debug, Default)]
pub struct Converter {
    /// Oldest first; empty when the records already hold nanoseconds.
    anchors: VecDeque<Anchor>,
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
    /// Through `a` and `b`; one anchor alone gives no rate, and counts are taken as nanoseconds from it
    /// until the next.
    #[allow(clippy::cast_precision_loss)]
    fn new(a: Anchor, b: Option<Anchor>) -> Self {
        let rate = b.map_or(1.0, |b| (b.ns - a.ns) as f64 / (b.count - a.count) as f64);
        Self { from: a, rate }
    }

    /// The offset from the anchor is a float (at most a few seconds' worth of counts, exact in one),
    /// added to the anchor's nanoseconds as an integer: the clock's nanoseconds pass what a float holds
    /// exactly after some 104 days up.
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    fn ns(self, at: u64) -> u64 {
        let offset = (at.wrapping_sub(self.from.count) as i64) as f64 * self.rate;
        self.from.ns.saturating_add_signed(offset as i64)
    }
}

impl Converter {
    /// A converter for records made from now on (read before the session's first record).
    pub fn start() -> Self {
        let mut converter = Self::default();
        if COUNTER.load(Ordering::Relaxed) {
            let anchor = Anchor::now();
            converter.anchors.push_back(anchor);
            converter.last = Some(Stretch::new(anchor, None));
        }
        converter
    }

    /// Read a new anchor: every record made so far can then be placed between two anchors.
    pub fn mark(&mut self) {
        let Some(&last) = self.anchors.back() else { return };
        let anchor = Anchor::now();
        if anchor.count <= last.count || anchor.ns < last.ns {
            return;
        }
        if self.anchors.len() == ANCHORS {
            self.anchors.pop_front();
        }
        self.anchors.push_back(anchor);
        self.last = Some(Stretch::new(last, Some(anchor)));
    }

    /// `at`, a reading of [`now`], in CLOCK_MONOTONIC nanoseconds: on the straight line through the two
    /// anchors around it (beyond the first or the last anchor, through the nearest two). Each stretch
    /// between anchors ends where the next begins, so the conversion never goes backwards.
    pub fn ns(&self, at: u64) -> u64 {
        match self.last {
            None => at,
            Some(last) if at >= last.from.count || self.anchors.len() <= 2 => last.ns(at),
            Some(_) => {
                let after = self.anchors.partition_point(|a| a.count <= at).clamp(1, self.anchors.len() - 1);
                Stretch::new(self.anchors[after - 1], Some(self.anchors[after])).ns(at)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn converter(anchors: &[(u64, u64)]) -> Converter {
        let anchors: VecDeque<Anchor> = anchors.iter().map(|&(count, ns)| Anchor { count, ns }).collect();
        let n = anchors.len();
        let last = (n > 0).then(|| Stretch::new(anchors[n.saturating_sub(2)], (n > 1).then(|| anchors[n - 1])));
        Converter { anchors, last }
    }

    #[test]
    fn counts_between_anchors_are_interpolated_and_beyond_them_extrapolated() {
        // 3 counts per nanosecond, then 2: each stretch at its own rate.
        let c = converter(&[(3_000, 1_000), (6_000, 2_000), (8_000, 3_000)]);
        assert_eq!(c.ns(3_000), 1_000);
        assert_eq!(c.ns(4_500), 1_500);
        assert_eq!(c.ns(6_000), 2_000);
        assert_eq!(c.ns(7_000), 2_500);
        assert_eq!(c.ns(9_000), 3_500);
        assert_eq!(c.ns(0), 0);
        assert_eq!(c.ns(1_500), 500);
    }

    #[test]
    fn the_conversion_never_goes_backwards_across_an_anchor() {
        let c = converter(&[(0, 0), (1_000, 400), (1_100, 500), (10_000, 3_000)]);
        let converted: Vec<u64> = (0..12_000).step_by(7).map(|at| c.ns(at)).collect();
        assert!(converted.windows(2).all(|w| w[0] <= w[1]), "{converted:?}");
    }

    #[test]
    fn without_the_counter_records_hold_nanoseconds_already() {
        assert_eq!(Converter::default().ns(123_456), 123_456);
        // One anchor alone cannot give a rate: counts are taken as nanoseconds from it.
        assert_eq!(converter(&[(100, 1_000)]).ns(150), 1_050);
    }

    /// The real clocks: a count read between two CLOCK_MONOTONIC readings converts to a time between
    /// them (the anchors are read before and after, as the emitter does).
    #[test]
    fn a_real_reading_converts_to_the_monotonic_time_it_was_read_at() {
        choose();
        let mut c = Converter::start();
        let mut readings = Vec::new();
        for _ in 0..5 {
            let before = procinfo::monotonic_ns();
            let at = now();
            let after = procinfo::monotonic_ns();
            readings.push((before, at, after));
            std::thread::sleep(std::time::Duration::from_millis(2));
            c.mark();
        }
        for (before, at, after) in readings {
            let ns = c.ns(at);
            // The anchors' own uncertainty: a few microseconds at worst on a loaded machine.
            assert!(ns + 5_000 >= before && ns <= after + 5_000, "{before} <= {ns} <= {after}");
        }
    }
}
