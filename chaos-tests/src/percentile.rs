//! Nearest-rank percentiles for the benchmarks' p50/p99 lines.
//!
//! One copy for every bench: `chaos-tests/benches/*` use it as `chaos_tests::percentile`,
//! and `probes/benches/timeliness.rs` includes this file by path (`failover-probes` cannot
//! depend on `chaos-tests`, which depends on `failoverd`, which depends on
//! `failover-probes`). So this file uses nothing outside `std`.
//!
//! The percent is a whole number in 0..=100 (`50` for the median, `99` for p99). It is an
//! integer on purpose: a fraction such as `0.99` (a bench once passed that, and printed the
//! minimum as its p50 and p99) does not compile.

/// The `percent`-th percentile (nearest rank) of samples sorted ascending: the smallest
/// sample such that at least `percent` % of the samples are less than or equal to it.
/// `percent` 0 gives the minimum, 100 the maximum. `None` when there are no samples.
///
/// # Panics
///
/// When `percent` is above 100, or the samples are not sorted ascending (an unsorted slice
/// would give a number that looks plausible and is wrong).
pub fn percentile<T: Copy + Ord>(sorted: &[T], percent: u8) -> Option<T> {
    assert!(percent <= 100, "percentile {percent} is not in 0..=100");
    assert!(
        sorted.is_sorted(),
        "percentile needs samples sorted ascending"
    );
    if sorted.is_empty() {
        return None;
    }
    // Rank (1-based) = ceil(percent / 100 × n), in integers: no float rounding at the edges.
    let rank = (usize::from(percent) * sorted.len()).div_ceil(100);
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[cfg(test)]
// No `use` lines: probes/benches/timeliness.rs includes this file too, and a check of its
// bench target compiles this module without running it (an unused import fails clippy).
mod tests {

    #[test]
    fn one_to_a_hundred() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(super::percentile(&v, 50), Some(50));
        assert_eq!(super::percentile(&v, 99), Some(99));
        assert_eq!(super::percentile(&v, 90), Some(90));
        assert_eq!(super::percentile(&v, 100), Some(100));
        assert_eq!(super::percentile(&v, 0), Some(1));
        assert_eq!(super::percentile(&v, 1), Some(1));
    }

    /// The worked example of the nearest-rank method (five samples), worked out by hand
    /// from the definition: rank = ceil(P/100 × 5).
    #[test]
    fn nearest_rank_on_five_samples() {
        let v = [15, 20, 35, 40, 50];
        assert_eq!(super::percentile(&v, 5), Some(15));
        assert_eq!(super::percentile(&v, 30), Some(20));
        assert_eq!(super::percentile(&v, 40), Some(20));
        assert_eq!(super::percentile(&v, 50), Some(35));
        assert_eq!(super::percentile(&v, 100), Some(50));
    }

    /// With fewer than 100 samples p99 is the maximum, and p50 of an even count is the lower
    /// middle sample (nearest rank never interpolates).
    #[test]
    fn small_samples_and_durations() {
        let ms = std::time::Duration::from_millis;
        let v: Vec<_> = (1..=40).map(ms).collect();
        assert_eq!(super::percentile(&v, 50), Some(ms(20)));
        assert_eq!(super::percentile(&v, 99), Some(ms(40)));
        assert_eq!(super::percentile(&[ms(7)], 50), Some(ms(7)));
        assert_eq!(super::percentile::<std::time::Duration>(&[], 50), None);
    }

    #[test]
    #[should_panic(expected = "not in 0..=100")]
    fn above_a_hundred_is_refused() {
        let _ = super::percentile(&[1, 2, 3], 101);
    }

    #[test]
    #[should_panic(expected = "sorted ascending")]
    fn unsorted_samples_are_refused() {
        let _ = super::percentile(&[3, 1, 2], 50);
    }
}
