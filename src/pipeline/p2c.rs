//! Power of two choices (Mitzenmacher; tower's `p2c`): pick two eligible endpoints at random
//! and take the cheaper. It avoids a slow endpoint almost as well as comparing them all, and
//! unlike "always the cheapest" it does not send a burst to one endpoint that looked best.
//!
//! Pure: the caller gives the random numbers, which endpoints are eligible and what each
//! costs. Allocation-free: an ineligible random index moves on to the next eligible one.

/// Picks among `len` endpoints: two eligible ones from the random starts `first` and `second`
/// (any `u64`s), the cheaper of them. `None` when none is eligible.
pub fn pick(
    len: usize,
    (first, second): (u64, u64),
    eligible: impl Fn(usize) -> bool,
    cost: impl Fn(usize) -> f32,
) -> Option<usize> {
    if len == 0 {
        return None;
    }
    let a = next_eligible(len, (first % len as u64) as usize, None, &eligible)?;
    let Some(b) = next_eligible(len, (second % len as u64) as usize, Some(a), &eligible) else {
        return Some(a);
    };
    // Ties go to the first pick, which is as random as the second.
    Some(if cost(b) < cost(a) { b } else { a })
}

/// The first eligible index from `start` on (wrapping), other than `skip`.
fn next_eligible(
    len: usize,
    start: usize,
    skip: Option<usize>,
    eligible: &impl Fn(usize) -> bool,
) -> Option<usize> {
    (0..len)
        .map(|offset| (start + offset) % len)
        .find(|&i| Some(i) != skip && eligible(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cheaper_of_two_is_taken() {
        let costs = [5.0, 1.0, 9.0];
        assert_eq!(pick(3, (0, 1), |_| true, |i| costs[i]), Some(1));
        assert_eq!(pick(3, (2, 0), |_| true, |i| costs[i]), Some(0));
        // The same random start twice still compares two different endpoints.
        assert_eq!(pick(3, (2, 2), |_| true, |i| costs[i]), Some(0));
    }

    #[test]
    fn ineligible_endpoints_are_never_picked() {
        let costs = [1.0, 9.0, 9.0];
        for first in 0..3 {
            for second in 0..3 {
                let picked = pick(3, (first, second), |i| i != 0, |i| costs[i]);
                assert_ne!(picked, Some(0));
                assert!(picked.is_some());
            }
        }
        assert_eq!(pick(3, (0, 1), |i| i == 2, |i| costs[i]), Some(2));
        assert_eq!(pick(3, (0, 1), |_| false, |i| costs[i]), None);
        assert_eq!(pick(0, (0, 1), |_| true, |_| 0.0), None);
    }

    #[test]
    fn over_all_random_pairs_the_costliest_endpoint_is_never_chosen() {
        let costs = [1.0, 2.0, 3.0, 100.0];
        for first in 0..4 {
            for second in 0..4 {
                assert_ne!(pick(4, (first, second), |_| true, |i| costs[i]), Some(3));
            }
        }
    }
}
