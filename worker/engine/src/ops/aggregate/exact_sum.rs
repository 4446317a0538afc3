//! An exact sum of doubles, for `SUM` and `AVG` over floating-point values under
//! retraction.
//!
//! A running `f64` total forgets: add 1e16 and 1.0, take the 1e16 back, and it says 0 for
//! good, because 1e16 + 1.0 rounded the 1.0 away. The sum here is kept exactly as
//! non-overlapping partials (Shewchuk's algorithm, as Python's `math.fsum`), so taking a
//! value back leaves exactly the sum of what is left, and the result — the exact sum
//! rounded once to the nearest double — does not depend on the order values arrived in,
//! their batching or the parallelism. Usually one or two partials; at most about 40.
//!
//! NaN and the infinities are counted apart (so retracting an infinity brings the finite
//! sum back). A sum of finite values beyond the double range reads as an infinity, as in
//! a batch engine, and is not exact under retraction from then on.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct ExactSum {
    /// Non-overlapping, in increasing magnitude; their exact sum is the sum.
    partials: Vec<f64>,
    /// How many NaNs, +∞ and −∞ were added (net of retractions).
    nan: i64,
    pos_inf: i64,
    neg_inf: i64,
}

impl ExactSum {
    /// The sum holding `x` alone (what an inexact running total of older state becomes).
    pub(super) fn of(x: f64) -> Self {
        let mut s = Self::default();
        s.add(x, 1);
        s
    }

    /// Adds `x` `w` times (`w < 0` retracts it).
    pub(super) fn add(&mut self, x: f64, w: i64) {
        if x.is_nan() {
            self.nan += w;
        } else if x == f64::INFINITY {
            self.pos_inf += w;
        } else if x == f64::NEG_INFINITY {
            self.neg_inf += w;
        } else if w == 1 {
            self.add_exact(x);
        } else {
            // x·w exactly, as a product and its rounding error (exact while |w| < 2^53).
            let w = w as f64;
            let p = x * w;
            let e = x.mul_add(w, -p);
            self.add_exact(p);
            if e != 0.0 && e.is_finite() {
                self.add_exact(e);
            }
        }
    }

    /// Adds every value `other` holds.
    pub(super) fn merge(&mut self, other: &ExactSum) {
        for p in &other.partials {
            self.add_exact(*p);
        }
        self.nan += other.nan;
        self.pos_inf += other.pos_inf;
        self.neg_inf += other.neg_inf;
    }

    fn add_exact(&mut self, mut x: f64) {
        if !x.is_finite() {
            // An overflowed product: counted as the infinity it rounded to.
            return self.add(x, 1);
        }
        let mut kept = 0;
        for j in 0..self.partials.len() {
            let mut y = self.partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                self.partials[kept] = lo;
                kept += 1;
            }
            x = hi;
        }
        self.partials.truncate(kept);
        if x != 0.0 {
            self.partials.push(x);
        }
    }

    /// The exact sum rounded to the nearest double (ties to even).
    pub(super) fn value(&self) -> f64 {
        if self.nan != 0 || (self.pos_inf != 0 && self.neg_inf != 0) {
            return f64::NAN;
        }
        if self.pos_inf != 0 {
            return f64::INFINITY;
        }
        if self.neg_inf != 0 {
            return f64::NEG_INFINITY;
        }
        let p = &self.partials;
        let Some(mut n) = p.len().checked_sub(1) else {
            return 0.0;
        };
        let mut hi = p[n];
        let mut lo = 0.0;
        while n > 0 {
            let x = hi;
            n -= 1;
            let y = p[n];
            hi = x + y;
            lo = y - (hi - x);
            if lo != 0.0 {
                break;
            }
        }
        // Round half-way cases correctly: the partials below may tip them.
        if n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0)) {
            let y = lo * 2.0;
            let x = hi + y;
            if y == x - hi {
                hi = x;
            }
        }
        hi
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::ExactSum;

    #[test]
    fn a_retracted_large_value_leaves_the_small_ones() {
        let mut s = ExactSum::default();
        s.add(1e16, 1);
        s.add(1.0, 1);
        s.add(1e16, -1);
        assert_eq!(s.value(), 1.0);
        s.add(0.1, 3);
        s.add(0.1, -3);
        assert_eq!(s.value(), 1.0);
    }

    #[test]
    fn the_sum_is_rounded_once() {
        let mut s = ExactSum::default();
        for x in [0.1; 10] {
            s.add(x, 1);
        }
        assert_eq!(
            s.value(),
            1.0,
            "ten 0.1s, where a running total says 0.9999999999999999"
        );
    }

    #[test]
    fn infinities_and_nan_are_counted_apart() {
        let mut s = ExactSum::of(2.5);
        s.add(f64::INFINITY, 1);
        assert_eq!(s.value(), f64::INFINITY);
        s.add(f64::NEG_INFINITY, 1);
        assert!(s.value().is_nan());
        s.add(f64::INFINITY, -1);
        s.add(f64::NEG_INFINITY, -1);
        assert_eq!(s.value(), 2.5);
        s.add(f64::NAN, 1);
        assert!(s.value().is_nan());
        s.add(f64::NAN, -1);
        assert_eq!(s.value(), 2.5);
    }

    fn finite() -> impl Strategy<Value = f64> {
        prop_oneof![
            -1e6f64..1e6,
            (-1e300f64..1e300),
            (-20i32..20, -1.0f64..1.0).prop_map(|(e, m)| m * 10f64.powi(e * 15)),
        ]
    }

    proptest! {
        /// Inserting values and retracting some gives exactly the sum of what is left,
        /// in any order.
        #[test]
        fn retractions_give_the_sum_of_what_is_left(
            values in prop::collection::vec((finite(), 1i64..4), 1..40),
            keep in prop::collection::vec(any::<bool>(), 40),
            seed in any::<u64>(),
        ) {
            let mut all = ExactSum::default();
            for (x, w) in &values {
                all.add(*x, *w);
            }
            let mut left = ExactSum::default();
            let mut order: Vec<usize> = (0..values.len()).collect();
            // A deterministic shuffle: the order must not matter.
            let mut r = seed | 1;
            for i in (1..order.len()).rev() {
                r ^= r << 13;
                r ^= r >> 7;
                r ^= r << 17;
                order.swap(i, (r % (i as u64 + 1)) as usize);
            }
            for i in order {
                let (x, w) = values[i];
                if keep[i] {
                    left.add(x, w);
                } else {
                    all.add(x, -w);
                }
            }
            prop_assert_eq!(all.value(), left.value());
        }
    }
}
