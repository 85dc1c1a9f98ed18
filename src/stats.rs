//! ⑦ Statistics: means with standard errors and 95% intervals, and a seeded bootstrap for metrics
//! that are not means.
//!
//! Means use the sample standard deviation (n − 1) over √n and a Student-t interval; corpus
//! metrics (perplexities, later BLEU) resample items with a fixed seed so that a run's numbers are
//! reproducible to the last digit.

use statrs::distribution::{ContinuousCDF, StudentsT};

/// An aggregate with its uncertainty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub value: f64,
    /// Standard error; `None` when it cannot be estimated (n < 2).
    pub stderr: Option<f64>,
    /// 95% interval; `None` when n < 2.
    pub ci95: Option<(f64, f64)>,
    pub n: usize,
}

/// numpy's sum of a float64 array (`np.sum`, and so `np.mean` = sum / n), to the last bit:
/// under 8 values left to right; up to 128 in eight interleaved running sums; beyond, split in
/// two halves (the first a multiple of 8) summed the same way.
pub fn numpy_sum(xs: &[f64]) -> f64 {
    let n = xs.len();
    if n < 8 {
        return xs.iter().fold(0.0, |a, x| a + x);
    }
    if n <= 128 {
        let mut r: [f64; 8] = xs[..8].try_into().expect("8 values");
        let whole = n - n % 8;
        for block in xs[8..whole].chunks_exact(8) {
            for (acc, x) in r.iter_mut().zip(block) {
                *acc += x;
            }
        }
        let head = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        return xs[whole..].iter().fold(head, |a, x| a + x);
    }
    let half = n / 2 - (n / 2) % 8;
    numpy_sum(&xs[..half]) + numpy_sum(&xs[half..])
}

/// Mean, standard error (sample sd / √n) and Student-t 95% interval. The mean is numpy's
/// (`np.mean`, what the reference scripts average with), to the last bit.
pub fn mean_summary(xs: &[f64]) -> Summary {
    let n = xs.len();
    if n == 0 {
        return Summary { value: f64::NAN, stderr: None, ci95: None, n };
    }
    let mean = numpy_sum(xs) / n as f64;
    if n < 2 {
        return Summary { value: mean, stderr: None, ci95: None, n };
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let se = (var / n as f64).sqrt();
    let t = StudentsT::new(0.0, 1.0, (n - 1) as f64).map(|d| d.inverse_cdf(0.975)).unwrap_or(1.96);
    Summary { value: mean, stderr: Some(se), ci95: Some((mean - t * se, mean + t * se)), n }
}

/// SplitMix64: a small seeded generator for resampling.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n ≥ 1), without modulo bias.
    pub fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return (x % n) as usize;
            }
        }
    }
}

/// Percentile of sorted data (linear interpolation between closest ranks, as numpy's default).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Bootstrap of a corpus statistic: `aggregate` over items resampled with replacement
/// `iterations` times; the standard error is the bootstrap standard deviation and the interval
/// the 2.5th–97.5th percentiles.
pub fn bootstrap_summary(items: &[&[f64]], aggregate: &dyn Fn(&[&[f64]]) -> f64, iterations: usize, seed: u64) -> Summary {
    let n = items.len();
    let value = aggregate(items);
    if n < 2 || iterations < 2 {
        return Summary { value, stderr: None, ci95: None, n };
    }
    let mut rng = SplitMix64::new(seed);
    let mut sample: Vec<&[f64]> = Vec::with_capacity(n);
    let mut values: Vec<f64> = (0..iterations)
        .map(|_| {
            sample.clear();
            sample.extend((0..n).map(|_| items[rng.below(n)]));
            aggregate(&sample)
        })
        .filter(|v| v.is_finite())
        .collect();
    if values.len() < 2 {
        return Summary { value, stderr: None, ci95: None, n };
    }
    let m = values.iter().sum::<f64>() / values.len() as f64;
    let sd = (values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (values.len() - 1) as f64).sqrt();
    values.sort_by(f64::total_cmp);
    Summary { value, stderr: Some(sd), ci95: Some((percentile(&values, 0.025), percentile(&values, 0.975))), n }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_sum_is_numpys_to_the_bit() {
        // np.add.reduce over these (round(x·100, 4) of a seeded uniform draw, as per-sample
        // scores are): pairwise for 8 and more values, so it differs from a left-to-right sum
        let xs: Vec<f64> = (0..300).map(|i| ((i as f64 * 0.618_033_988_75).fract() * 1e6).round() / 1e4).collect();
        let left: f64 = xs.iter().sum();
        for (n, want) in [(7, 297.8714), (8, 330.4952), (100, 4926.824500000001), (129, 6348.861999999999), (300, 14982.4402)] {
            assert_eq!(numpy_sum(&xs[..n]), want, "n = {n}");
        }
        assert_eq!(left, 14982.440199999994, "left to right differs");
        assert_eq!(numpy_sum(&[]), 0.0);
    }

    #[test]
    fn mean_and_stderr() {
        // numpy: mean 0.6, std(ddof=1) = 0.5477225575, /sqrt(5) = 0.2449489743; t(4, .975) = 2.776445105
        let s = mean_summary(&[1.0, 0.0, 1.0, 1.0, 0.0]);
        assert!((s.value - 0.6).abs() < 1e-12);
        assert!((s.stderr.unwrap() - 0.2449489743).abs() < 1e-9);
        let (lo, hi) = s.ci95.unwrap();
        assert!((hi - (0.6 + 2.776445105 * 0.2449489743)).abs() < 1e-6, "{hi}");
        assert!((lo - (0.6 - 2.776445105 * 0.2449489743)).abs() < 1e-6, "{lo}");
        assert!(mean_summary(&[3.0]).stderr.is_none());
    }

    #[test]
    fn bootstrap_is_seeded_and_brackets_the_value() {
        let xs: Vec<[f64; 1]> = (0..200).map(|i| [f64::from(i % 7)]).collect();
        let items: Vec<&[f64]> = xs.iter().map(|x| x.as_slice()).collect();
        let mean = |s: &[&[f64]]| s.iter().map(|x| x[0]).sum::<f64>() / s.len() as f64;
        let a = bootstrap_summary(&items, &mean, 500, 7);
        let b = bootstrap_summary(&items, &mean, 500, 7);
        assert_eq!(a, b);
        let (lo, hi) = a.ci95.unwrap();
        assert!(lo < a.value && a.value < hi);
        // The bootstrap standard error of a mean is close to the analytic one.
        let analytic = mean_summary(&xs.iter().map(|x| x[0]).collect::<Vec<_>>()).stderr.unwrap();
        assert!((a.stderr.unwrap() / analytic - 1.0).abs() < 0.15);
    }

    #[test]
    fn percentiles() {
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.5);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 1.0), 4.0);
    }
}
