//! Drawing a token from a row of logits: the `sample` op, and the
//! runtime's sampler on the host, which must draw the same ids from the
//! same uniform numbers.

/// The first index of the largest logit.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The id `u` (uniform in [0, 1)) picks at `temperature` by inverse-CDF
/// sampling: with weights `w = exp((l − max) / temperature)`, the first id
/// whose running sum reaches `u · Σ w`, or the last id of positive weight
/// where rounding leaves none; temperature 0 is [`argmax`].
pub fn inverse_cdf(logits: &[f32], temperature: f32, u: f32) -> u32 {
    if temperature == 0.0 {
        return argmax(logits);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weight = |l: f32| ((l - max) / temperature).exp();
    let total: f32 = logits.iter().map(|&l| weight(l)).sum();
    let mut r = u * total;
    for (id, &l) in logits.iter().enumerate() {
        let w = weight(l);
        r -= w;
        if r <= 0.0 && w > 0.0 {
            return id as u32;
        }
    }
    logits.iter().rposition(|&l| weight(l) > 0.0).unwrap_or(0) as u32
}

/// [`inverse_cdf`] of each row of `logits` (rows of `vocab`) with that
/// row's draw.
pub fn sample_rows(logits: &[f32], vocab: usize, draws: &[f32], temperature: f32) -> Vec<i32> {
    logits
        .chunks(vocab.max(1))
        .zip(draws)
        .map(|(row, &u)| inverse_cdf(row, temperature, u) as i32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_follow_the_cumulative_weights() {
        // Weights 1, e, 1 at temperature 1 (after the maximum's shift).
        let logits = [0.0, 1.0, 0.0];
        let total = 2.0 + 1f32.exp();
        assert_eq!(inverse_cdf(&logits, 1.0, 0.0), 0);
        assert_eq!(inverse_cdf(&logits, 1.0, 0.99 / total), 0);
        assert_eq!(inverse_cdf(&logits, 1.0, 1.01 / total), 1);
        assert_eq!(inverse_cdf(&logits, 1.0, 0.999), 2);
        assert_eq!(inverse_cdf(&logits, 0.0, 0.999), 1);
        assert_eq!(
            sample_rows(&[0.0, 5.0, 5.0, 0.0], 2, &[0.5, 0.0], 0.0),
            [1, 0]
        );
    }
}
