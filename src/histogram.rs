//! Log-linear latency buckets, shared by the hedge delay's percentile (`pipeline/hedge.rs`)
//! and the live view's p50/p99 (`live_stats.rs`): exact below 8 µs, then 8 buckets per power
//! of two, so every bucket's upper edge is within an eighth of any value in it. Pure
//! arithmetic; the callers keep the counts.

/// Sub-buckets per power of two (3 bits of mantissa).
const SUB: u32 = 8;

/// Buckets: microseconds up to 2^40 (12 days), far beyond any time limit.
pub const BUCKETS: usize = (40 - 2) * SUB as usize;

/// The bucket of `us` microseconds: exact below 8, then 8 per power of two.
pub fn bucket(us: u64) -> usize {
    if us < u64::from(SUB) {
        return usize::try_from(us).unwrap_or(0);
    }
    let exponent = 63 - us.leading_zeros(); // at least 3
    let mantissa = (us >> (exponent - 3)) & u64::from(SUB - 1);
    let index = (exponent - 2) * SUB + u32::try_from(mantissa).unwrap_or(0);
    usize::try_from(index)
        .unwrap_or(BUCKETS - 1)
        .min(BUCKETS - 1)
}

/// The largest value of bucket `index`, in microseconds (a percentile errs on the late side).
pub fn upper_edge(index: usize) -> u64 {
    let index = u32::try_from(index).unwrap_or(u32::MAX);
    if index < SUB {
        return u64::from(index);
    }
    let exponent = index / SUB + 2;
    let mantissa = u64::from(index % SUB);
    let step = 1u64 << (exponent - 3);
    ((u64::from(SUB) + mantissa) << (exponent - 3)) + step - 1
}

/// The `p`-th percentile (0–100) of `(bucket, count)` pairs in bucket order, in
/// microseconds; `None` when they count nothing.
pub fn percentile_of(counts: &[(usize, u64)], p: f64) -> Option<u64> {
    let total: u64 = counts.iter().map(|&(_, c)| c).sum();
    if total == 0 {
        return None;
    }
    // The rank of the percentile, 1-based, at least 1.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0 * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for &(index, count) in counts {
        seen += count;
        if seen >= rank {
            return Some(upper_edge(index));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_within_an_eighth() {
        for us in [
            0,
            1,
            7,
            8,
            9,
            15,
            16,
            100,
            10_000,
            10_999,
            1_000_000,
            u64::MAX / 2,
        ] {
            let index = bucket(us);
            let upper = upper_edge(index);
            assert!(upper >= us.min(upper_edge(BUCKETS - 1)), "{us}: {upper}");
            if us >= 8 && index < BUCKETS - 1 {
                assert!(upper - us <= us / 8, "{us} → {upper}");
                assert!(index == 0 || upper_edge(index - 1) < us, "{us}");
            }
        }
        assert_eq!(bucket(10_000), bucket(10_200));
        assert_ne!(bucket(10_000), bucket(12_000));
    }

    #[test]
    fn percentiles_take_the_upper_edge_of_the_ranked_bucket() {
        let counts = [(bucket(1_000), 98), (bucket(100_000), 2)];
        let p50 = percentile_of(&counts, 50.0).unwrap();
        assert!((1_000..=1_125).contains(&p50), "{p50}");
        let p99 = percentile_of(&counts, 99.0).unwrap();
        assert!((100_000..=112_500).contains(&p99), "{p99}");
        assert_eq!(percentile_of(&[], 50.0), None);
        assert_eq!(percentile_of(&[(3, 0)], 50.0), None);
    }
}
