//! Scoring answers against the truth like the peers' `common.score`:
//! relative error for counts (zero truths counted apart), absolute
//! percentage points for shares; numpy's percentiles.

use serde_json::{json, Value};

/// An estimate (`None`: not answered) and its truth.
pub(super) type ScoredPair = (Option<f64>, f64);

/// Error statistics like the peers' `common.error_stats`.
#[derive(Clone, Debug)]
pub(super) struct ErrorStats {
    pub(super) abs: bool,
    pub(super) n: usize,
    pub(super) median: Option<f64>,
    pub(super) p95: Option<f64>,
    pub(super) max: Option<f64>,
    pub(super) mean: Option<f64>,
    pub(super) zero_truth_nonzero_est: usize,
}

impl ErrorStats {
    pub(super) fn of(pairs: &[ScoredPair], abs: bool) -> ErrorStats {
        let mut errs = Vec::with_capacity(pairs.len());
        let mut zero_truth_nonzero_est = 0;
        for &(est, truth) in pairs {
            let Some(est) = est else { continue };
            if abs {
                errs.push((est - truth).abs());
            } else if truth == 0.0 {
                zero_truth_nonzero_est += usize::from(est != 0.0);
            } else {
                errs.push((est - truth).abs() / truth);
            }
        }
        ErrorStats {
            abs,
            n: errs.len(),
            median: percentile(&errs, 50.0),
            p95: percentile(&errs, 95.0),
            max: errs.iter().copied().reduce(f64::max),
            mean: (!errs.is_empty()).then(|| errs.iter().sum::<f64>() / errs.len() as f64),
            zero_truth_nonzero_est,
        }
    }

    pub(super) fn to_json(&self) -> Value {
        json!({
            "metric": if self.abs { "abs" } else { "rel" },
            "n": self.n,
            "median": self.median,
            "p95": self.p95,
            "max": self.max,
            "mean": self.mean,
            "zero_truth_nonzero_est": self.zero_truth_nonzero_est,
        })
    }

    /// Median / p95 / max, as % for relative errors and pp for absolute ones.
    pub(super) fn show(&self) -> String {
        let (scale, unit) = if self.abs {
            (1.0, " pp")
        } else {
            (100.0, " %")
        };
        let f = |x: Option<f64>| x.map_or("-".to_owned(), |v| format!("{:.2}", v * scale));
        format!(
            "{} / {} / {}{unit}",
            f(self.median),
            f(self.p95),
            f(self.max)
        )
    }
}

/// numpy's default (linear) percentile.
pub(super) fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = q / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (rank - lo as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_match_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), Some(2.5));
        assert!((percentile(&v, 95.0).unwrap() - 3.85).abs() < 1e-12);
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn errors_score_like_the_peers() {
        let rel = ErrorStats::of(
            &[(Some(110.0), 100.0), (Some(5.0), 0.0), (None, 1.0)],
            false,
        );
        assert_eq!((rel.n, rel.zero_truth_nonzero_est), (1, 1));
        assert!((rel.median.unwrap() - 0.1).abs() < 1e-12);
        let abs = ErrorStats::of(&[(Some(40.0), 39.5), (None, 1.0)], true);
        assert_eq!(abs.n, 1);
        assert!((abs.max.unwrap() - 0.5).abs() < 1e-12);
    }
}
