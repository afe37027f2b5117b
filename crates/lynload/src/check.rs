//! What a trace's values may physically be, and the lines dropped for not being so.
//!
//! A line that cannot be trusted — unreadable, a timestamp that is not finite or lies outside the
//! process's life, a negative or endless duration, time running backwards on a thread, an end with no
//! begin, a begin never ended in a file that was not cut short, nesting deeper than any program goes,
//! oversized arguments, a phase lynshim never writes — is dropped and counted by reason. A file with
//! more than [`MAX_DROPPED_SHARE`] of its lines dropped, or whose process event is garbage, is skipped.
//! The checks look at numbers the parser has already read: they cost a few comparisons a line.

/// Earliest timestamp accepted, µs from the process's zero (a clock read just before the zero).
pub const MIN_TS_US: f64 = -1e6;
/// Latest timestamp or duration accepted: a week, far beyond any build step.
pub const MAX_TS_US: f64 = 7.0 * 86_400.0 * 1e6;
/// How far a span may end after the process's exit event, and how far a timestamp may lie behind the
/// last one on its thread (rounding of `ts + dur`).
pub const SLACK_US: f64 = 1e6;
/// Time may run backwards on a thread by this much (one float rounding of `ts + dur`) and be read as equal.
pub const ROUNDING_US: f64 = 1e-3;
/// Deepest nesting of spans on one thread; a begin deeper than this is dropped with its end.
pub const MAX_DEPTH: usize = 512;
/// Longest span or counter line (its args included); lynshim shortens every value it writes.
pub const MAX_EVENT_LINE: usize = 64 << 10;
/// Longest line of any kind (the process and exit events carry argv and, for `lynshim bench`, every
/// file the process opened).
pub const MAX_LINE: usize = 4 << 20;
/// A file with more of its event lines dropped than this is skipped.
pub const MAX_DROPPED_SHARE: f64 = 0.10;
/// Largest plausible RSS, in bytes (256 TiB).
pub const MAX_BYTES: f64 = (1_u64 << 48) as f64;
/// The process's zero must lie before 2100-01-01, in ns since the epoch.
pub const MAX_WALL_ZERO_NS: u64 = 4_102_444_800_000_000_000;

/// Why a line was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    Unreadable,
    NotUtf8,
    TooLong,
    Timestamp,
    Duration,
    Backwards,
    AfterExit,
    TooDeep,
    EndWithoutBegin,
    BeginWithoutEnd,
    UnknownPhase,
    Value,
}

impl Reason {
    pub const ALL: [Reason; 12] = [
        Reason::Unreadable,
        Reason::NotUtf8,
        Reason::TooLong,
        Reason::Timestamp,
        Reason::Duration,
        Reason::Backwards,
        Reason::AfterExit,
        Reason::TooDeep,
        Reason::EndWithoutBegin,
        Reason::BeginWithoutEnd,
        Reason::UnknownPhase,
        Reason::Value,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Reason::Unreadable => "not a JSON event",
            Reason::NotUtf8 => "not UTF-8",
            Reason::TooLong => "oversized (args over 64 KiB)",
            Reason::Timestamp => "timestamp not finite or outside [-1 s, 1 week]",
            Reason::Duration => "duration negative, not finite or over a week",
            Reason::Backwards => "time running backwards on its thread",
            Reason::AfterExit => "after the process's exit",
            Reason::TooDeep => "nested deeper than 512",
            Reason::EndWithoutBegin => "end without a begin",
            Reason::BeginWithoutEnd => "begin without an end",
            Reason::UnknownPhase => "unknown event phase",
            Reason::Value => "implausible value (RSS, CPU time)",
        }
    }
}

/// The lines dropped from one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dropped {
    /// How many, by [`Reason`] (indexed by `Reason as usize`).
    pub counts: [u32; Reason::ALL.len()],
    /// Their line numbers (1-based, the `[` line being 1), in the order they were dropped.
    pub lines: Vec<u32>,
}

impl Dropped {
    pub fn add(&mut self, reason: Reason, line: usize) {
        self.counts[reason as usize] += 1;
        self.lines.push(u32::try_from(line).unwrap_or(u32::MAX));
    }

    pub fn total(&self) -> u32 {
        self.counts.iter().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// `3 lines dropped (2 time running backwards on its thread, 1 end without a begin)`.
    pub fn describe(&self) -> String {
        let total = self.total();
        let parts: Vec<String> = Reason::ALL
            .iter()
            .filter(|&&r| self.counts[r as usize] > 0)
            .map(|&r| format!("{} {}", self.counts[r as usize], r.describe()))
            .collect();
        format!("{total} line{} dropped ({})", if total == 1 { "" } else { "s" }, parts.join(", "))
    }
}

/// A timestamp in range (finite, within [`MIN_TS_US`, `MAX_TS_US`]).
#[inline]
pub fn timestamp_ok(ts: f64) -> bool {
    (MIN_TS_US..=MAX_TS_US).contains(&ts)
}

/// A duration in range (finite, within [0, `MAX_TS_US`]).
#[inline]
pub fn duration_ok(dur: f64) -> bool {
    (0.0..=MAX_TS_US).contains(&dur)
}

/// A byte count or CPU time that can be real.
#[inline]
pub fn amount_ok(value: f64, max: f64) -> bool {
    (0.0..=max).contains(&value)
}
