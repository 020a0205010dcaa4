//! Choosing the next token from logits: greedy, temperature, top-p.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// The first maximum, and the inverse-CDF draw the `sample` op makes on
/// every backend: one definition for the host and the device.
pub use fairyc_backends::reference::kernels::sampling::{argmax, inverse_cdf};

/// A token sampler. `temperature == 0` is greedy decoding.
pub struct Sampler {
    temperature: f32,
    top_p: f32,
    rng: StdRng,
}

impl Sampler {
    pub fn greedy() -> Sampler {
        Sampler::new(0.0, 1.0, 0)
    }

    /// `top_p` in (0, 1] keeps the smallest set of tokens whose probability
    /// reaches it; `seed` makes sampling repeatable.
    pub fn new(temperature: f32, top_p: f32, seed: u64) -> Sampler {
        Sampler {
            temperature: temperature.max(0.0),
            top_p: top_p.clamp(f32::MIN_POSITIVE, 1.0),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.temperature == 0.0 {
            return argmax(logits);
        }
        if self.top_p >= 1.0 {
            // The whole distribution: no top-p set to find, so no sort of
            // the vocabulary (which took milliseconds a token at 49k).
            return inverse_cdf(logits, self.temperature, self.uniform());
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l - max) / self.temperature).exp()))
            .collect();
        probs.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        let total: f32 = probs.iter().map(|p| p.1).sum();
        let mut kept = 0.0;
        let mut cut = probs.len();
        for (i, p) in probs.iter().enumerate() {
            kept += p.1 / total;
            if kept >= self.top_p {
                cut = i + 1;
                break;
            }
        }
        probs.truncate(cut);
        let mass: f32 = probs.iter().map(|p| p.1).sum();
        let mut r = self.rng.random::<f32>() * mass;
        for &(id, p) in &probs {
            r -= p;
            if r <= 0.0 {
                return id;
            }
        }
        probs.last().map(|p| p.0).unwrap_or(0)
    }

    /// A uniform number in [0, 1) from this sampler's stream: what one draw
    /// at `top_p = 1` consumes, for a `sample` node that draws on the
    /// device (the same ids from the same numbers, up to rounding).
    pub fn uniform(&mut self) -> f32 {
        self.rng.random::<f32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(Sampler::greedy().sample(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn tiny_top_p_is_greedy_and_sampling_is_seeded() {
        let logits = [0.0, 2.0, 1.0, 1.5];
        let mut s = Sampler::new(1.0, 1e-6, 7);
        assert!((0..50).all(|_| s.sample(&logits) == 1));
        let draw = |seed| {
            let mut s = Sampler::new(1.0, 1.0, seed);
            (0..64).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        let seen = draw(3);
        assert!(
            seen.iter().any(|&t| t != 1),
            "temperature 1 should not be greedy"
        );
    }

    /// Without top-p, draws follow the softmax: over 20,000 draws each
    /// token's share is within 0.02 of its probability, and a token of
    /// probability 0 never comes.
    #[test]
    fn full_draws_follow_the_softmax() {
        let logits = [0.0, 2.0, 1.0, f32::NEG_INFINITY, 1.5];
        let max = 2.0f32;
        let weights: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let total: f32 = weights.iter().sum();
        let mut s = Sampler::new(1.0, 1.0, 11);
        let mut counts = [0usize; 5];
        let draws = 20_000;
        for _ in 0..draws {
            counts[s.sample(&logits) as usize] += 1;
        }
        assert_eq!(counts[3], 0);
        for (c, w) in counts.iter().zip(&weights) {
            let share = *c as f32 / draws as f32;
            assert!((share - w / total).abs() < 0.02, "{counts:?}");
        }
    }
}
