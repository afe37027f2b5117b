//! The statistics of `lynanalyze diff`: medians, and a seeded percentile bootstrap of the difference of
//! two medians with its 95 % interval.
//!
//! The random numbers come from a xorshift64* generator seeded from the metric's name: twenty lines with
//! no dependency, the same interval on every machine and every run, and each metric's interval
//! independent of which other metrics were compared. Statistical quality beyond that of xorshift64* is
//! not needed to resample a handful of runs.

/// Resamples per bootstrap.
pub const RESAMPLES: usize = 10_000;
/// Two-sided confidence level of the interval.
pub const LEVEL: f64 = 0.95;
/// Fewer runs than this on a side: no interval, no verdict.
pub const MIN_RUNS: usize = 3;

/// The median of `values` (the mean of the two middle ones for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    median_sorted(&sorted)
}

fn median_sorted(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// xorshift64* (Vigna 2016).
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // A zero state would stay zero.
        Self(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// An index below `n` (n is a handful of runs: the modulo bias is below 1e-17).
    #[allow(clippy::cast_possible_truncation)]
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// FNV-1a of `text`: the seed of a metric's bootstrap.
pub fn seed(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The percentile-bootstrap interval (at [`LEVEL`]) of `median(b) - median(a)`, or `None` when a side
/// has fewer than [`MIN_RUNS`] values.
pub fn bootstrap_interval(a: &[f64], b: &[f64], seed: u64) -> Option<(f64, f64)> {
    if a.len() < MIN_RUNS || b.len() < MIN_RUNS {
        return None;
    }
    let constant = |v: &[f64]| v.iter().all(|x| x.to_bits() == v[0].to_bits());
    if constant(a) && constant(b) {
        // Every resample gives the same difference.
        let d = b[0] - a[0];
        return Some((d, d));
    }
    let mut rng = XorShift::new(seed);
    let (mut ra, mut rb) = (vec![0.0; a.len()], vec![0.0; b.len()]);
    let mut diffs = Vec::with_capacity(RESAMPLES);
    for _ in 0..RESAMPLES {
        for slot in &mut ra {
            *slot = a[rng.below(a.len())];
        }
        for slot in &mut rb {
            *slot = b[rng.below(b.len())];
        }
        ra.sort_by(f64::total_cmp);
        rb.sort_by(f64::total_cmp);
        diffs.push(median_sorted(&rb) - median_sorted(&ra));
    }
    diffs.sort_by(f64::total_cmp);
    let tail = (1.0 - LEVEL) / 2.0;
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let at = |q: f64| diffs[((q * (RESAMPLES - 1) as f64).round() as usize).min(RESAMPLES - 1)];
    Some((at(tail), at(1.0 - tail)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn too_few_runs_give_no_interval() {
        assert_eq!(bootstrap_interval(&[1.0, 2.0], &[1.0, 2.0, 3.0], 1), None);
    }

    #[test]
    fn deterministic_and_covering_the_shift() {
        let a = [100.0, 104.0, 97.0, 101.0, 99.0];
        let b = [150.0, 149.0, 155.0, 152.0, 148.0];
        let one = bootstrap_interval(&a, &b, seed("wall")).expect("interval");
        assert_eq!(one, bootstrap_interval(&a, &b, seed("wall")).expect("interval"));
        assert!(one.0 > 0.0 && one.0 <= 50.0 && one.1 >= 50.0, "{one:?}");
        let (lo, hi) = bootstrap_interval(&a, &a, seed("wall")).expect("interval");
        assert!(lo < 0.0 && hi > 0.0);
    }

    /// Two samples of one distribution: the interval holds zero in about 95 % of cases with 5 runs a
    /// side (the percentile bootstrap is a little optimistic on so few runs: at least 85 % here).
    #[test]
    fn same_distribution_mostly_says_noise() {
        let mut rng = XorShift::new(42);
        let mut noise = || 100.0 * (1.0 + 0.2 * ((rng.next() % 10_000) as f64 / 10_000.0 - 0.5));
        let trials = 400;
        let mut holds_zero = 0;
        for t in 0..trials {
            let a: Vec<f64> = (0..5).map(|_| noise()).collect();
            let b: Vec<f64> = (0..5).map(|_| noise()).collect();
            let (lo, hi) = bootstrap_interval(&a, &b, t).expect("interval");
            if lo <= 0.0 && hi >= 0.0 {
                holds_zero += 1;
            }
        }
        assert!(holds_zero * 100 >= trials * 85, "{holds_zero} of {trials}");
    }
}
