//! The intervals the report gives with each figure. A few dozen prompts per cell leave wide
//! margins; printing them keeps a two-point difference from being read as a result.

/// z for a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// The 95% Wilson score interval of a proportion: `successes` out of `n` (successes may be
/// fractional, as a win rate that counts ties as halves is). Unlike the normal approximation
/// it stays inside [0, 1] and is not degenerate at 0/n or n/n, which small cells often hit.
/// `None` for `n = 0`.
pub fn wilson(successes: f64, n: usize) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let n = n as f64;
    let p = (successes / n).clamp(0.0, 1.0);
    let z2 = Z95 * Z95;
    let denominator = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denominator;
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denominator;
    Some(((center - half).max(0.0), (center + half).min(1.0)))
}

/// A mean with its 95% interval by the normal approximation (mean ± z·s/√n, with the sample
/// standard deviation). `None` for no values; a single value has a zero-width interval, since
/// nothing is known of its spread.
pub fn mean_interval(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() == 1 {
        return Some((mean, mean, mean));
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let half = Z95 * (variance / n).sqrt();
    Some((mean, mean - half, mean + half))
}

/// The plain mean; `None` for no values.
pub fn mean(values: &[f64]) -> Option<f64> {
    mean_interval(values).map(|(m, _, _)| m)
}

/// The exact two-sided sign test (McNemar's test on paired pass/fail outcomes): the chance,
/// were both arms equally good, of a split of the `gained + lost` discordant prompts at least
/// as uneven as this one. Paired, so much stronger than comparing two rates' intervals.
pub fn sign_test(gained: usize, lost: usize) -> f64 {
    let n = gained + lost;
    let tail: f64 = (0..=gained.min(lost)).map(|k| choose(n, k)).sum();
    (2.0 * tail / 2f64.powi(n as i32)).min(1.0)
}

fn choose(n: usize, k: usize) -> f64 {
    (0..k).fold(1.0, |c, i| c * (n - i) as f64 / (i + 1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 5e-4
    }

    /// Known values (Wilson 1927; as R's `prop.test(correct = FALSE)` and statsmodels'
    /// `proportion_confint(method="wilson")` give them).
    #[test]
    fn wilson_matches_known_intervals() {
        for (k, n, lo, hi) in [
            (8.0, 10, 0.4902, 0.9433),
            (0.0, 10, 0.0, 0.2775),
            (10.0, 10, 0.7225, 1.0),
            (1.0, 2, 0.0945, 0.9055),
            (50.0, 100, 0.4038, 0.5962),
        ] {
            let (l, h) = wilson(k, n).unwrap();
            assert!(close(l, lo) && close(h, hi), "{k}/{n}: [{l}, {h}]");
        }
        assert_eq!(wilson(0.0, 0), None);
    }

    #[test]
    fn wilson_is_symmetric_and_narrows_with_n() {
        let (l, h) = wilson(3.0, 10).unwrap();
        let (l2, h2) = wilson(7.0, 10).unwrap();
        assert!(close(l, 1.0 - h2) && close(h, 1.0 - l2));
        let (l3, h3) = wilson(30.0, 100).unwrap();
        assert!(h3 - l3 < h - l);
    }

    #[test]
    fn sign_test_matches_the_binomial() {
        assert!(close(sign_test(8, 0), 2.0 / 256.0));
        assert!(close(sign_test(0, 8), 2.0 / 256.0));
        // 2 * (1 + 12 + 66) / 4096
        assert!(close(sign_test(10, 2), 158.0 / 4096.0));
        assert_eq!(sign_test(5, 5), 1.0);
        assert_eq!(sign_test(0, 0), 1.0);
    }

    #[test]
    fn mean_interval_uses_the_sample_deviation() {
        // s = 1 (values 1, 2, 3), n = 3: half-width 1.96 / sqrt(3) = 1.1316.
        let (m, lo, hi) = mean_interval(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(m, 2.0);
        assert!(
            close(lo, 2.0 - 1.1316) && close(hi, 2.0 + 1.1316),
            "{lo} {hi}"
        );
        assert_eq!(mean_interval(&[4.0]), Some((4.0, 4.0, 4.0)));
        assert_eq!(mean_interval(&[]), None);
        assert_eq!(mean(&[1.0, 0.0]), Some(0.5));
    }
}
