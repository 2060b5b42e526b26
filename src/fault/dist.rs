//! Delay distributions in hot-path form: a [`Dist`] with its optional cap compiled into a
//! [`Sampler`] that draws whole nanoseconds from the worker's fault RNG. It parses nothing and
//! knows no rule.

use std::time::Duration;

use super::rule::Dist;

/// The standard normal's 99th percentile: `Phi^-1(0.99)`.
const Z_99: f64 = 2.326_347_874_040_841;

/// Draws a truncated normal gives up after; each succeeds with probability at least 1/2 (the mean
/// is never negative), so the fallback to 0 has probability below 2^-32.
const NORMAL_TRIES: u32 = 32;

/// The distribution's parameters, precomputed in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    Fixed(u64),
    Uniform { min: u64, span: u64 },
    Normal { mean: f64, sd: f64 },
    LogNormal { mu: f64, sigma: f64 },
    Pareto { scale: f64, inv_shape: f64 },
    Exponential { mean: f64 },
}

/// A compiled delay distribution: `sample` allocates nothing and never panics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    shape: Shape,
    /// Cap on every draw, `u64::MAX` when none.
    max_ns: u64,
}

impl Sampler {
    /// Compiles `dist`, capped at `max`.
    pub fn new(dist: Dist, max: Option<Duration>) -> Sampler {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let shape = match dist {
            Dist::Fixed(d) => Shape::Fixed(ns(d)),
            Dist::Uniform { min, max } => {
                let (low, high) = (ns(min.min(max)), ns(min.max(max)));
                Shape::Uniform {
                    min: low,
                    span: high - low,
                }
            }
            Dist::Normal { mean, sd } => Shape::Normal {
                mean: ns(mean) as f64,
                sd: ns(sd) as f64,
            },
            Dist::LogNormal { p50, p99 } => {
                let (p50, p99) = (ns(p50).max(1) as f64, ns(p99).max(1) as f64);
                Shape::LogNormal {
                    mu: p50.ln(),
                    sigma: ((p99.ln() - p50.ln()) / Z_99).max(0.0),
                }
            }
            Dist::Pareto { scale, shape } => Shape::Pareto {
                scale: ns(scale) as f64,
                inv_shape: if shape > 0.0 { 1.0 / shape } else { 0.0 },
            },
            Dist::Exponential { mean } => Shape::Exponential {
                mean: ns(mean) as f64,
            },
        };
        Sampler {
            shape,
            max_ns: max.map_or(u64::MAX, ns),
        }
    }

    /// One draw in nanoseconds, at most the cap. Draws from `rng` except for a fixed delay and
    /// a zero-width range.
    pub fn sample(&self, rng: &mut fastrand::Rng) -> u64 {
        let drawn = match self.shape {
            Shape::Fixed(ns) => ns,
            Shape::Uniform { min, span: 0 } => min,
            // min + span is the range's max, so this cannot overflow.
            Shape::Uniform { min, span } => min + rng.u64(0..=span),
            Shape::Normal { mean, sd } => {
                let mut drawn = 0.0;
                for _ in 0..NORMAL_TRIES {
                    let x = mean + sd * standard_normal(rng);
                    if x >= 0.0 {
                        drawn = x;
                        break;
                    }
                }
                to_ns(drawn)
            }
            Shape::LogNormal { mu, sigma } => to_ns((mu + sigma * standard_normal(rng)).exp()),
            Shape::Pareto { scale, inv_shape } => to_ns(scale / open_unit(rng).powf(inv_shape)),
            Shape::Exponential { mean } => to_ns(-mean * open_unit(rng).ln()),
        };
        drawn.min(self.max_ns)
    }
}

/// A uniform draw in (0, 1]: never 0, so `ln` and division stay finite.
fn open_unit(rng: &mut fastrand::Rng) -> f64 {
    1.0 - rng.f64()
}

/// One standard normal draw (Box–Muller, cosine branch).
fn standard_normal(rng: &mut fastrand::Rng) -> f64 {
    let radius = (-2.0 * open_unit(rng).ln()).sqrt();
    radius * (std::f64::consts::TAU * rng.f64()).cos()
}

/// Nanoseconds from a non-negative float: `as` saturates at `u64::MAX` and maps NaN to 0.
fn to_ns(x: f64) -> u64 {
    x.max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRAWS: usize = 200_000;
    const SEED: u64 = 0x5eed;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Sorted draws in milliseconds.
    fn draws(dist: Dist, max: Option<Duration>) -> Vec<f64> {
        let sampler = Sampler::new(dist, max);
        let mut rng = fastrand::Rng::with_seed(SEED);
        let mut out: Vec<f64> = (0..DRAWS)
            .map(|_| sampler.sample(&mut rng) as f64 / 1e6)
            .collect();
        out.sort_by(f64::total_cmp);
        out
    }

    fn quantile(sorted: &[f64], q: f64) -> f64 {
        sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
    }

    fn mean(xs: &[f64]) -> f64 {
        xs.iter().sum::<f64>() / xs.len() as f64
    }

    fn close(name: &str, got: f64, want: f64, tolerance: f64) {
        assert!(
            (got - want).abs() <= want.abs() * tolerance,
            "{name}: got {got}, want {want} ± {}%",
            tolerance * 100.0
        );
    }

    /// Each distribution's sample quantiles against its closed-form quantile function.
    #[test]
    fn sample_quantiles_match_closed_form() {
        type Row = (&'static str, Dist, &'static dyn Fn(f64) -> f64);
        let rows: &[Row] = &[
            (
                "uniform",
                Dist::Uniform {
                    min: ms(100),
                    max: ms(200),
                },
                &|q| 100.0 + 100.0 * q,
            ),
            ("exponential", Dist::Exponential { mean: ms(50) }, &|q| {
                -50.0 * (1.0 - q).ln()
            }),
            (
                "pareto",
                Dist::Pareto {
                    scale: ms(10),
                    shape: 1.5,
                },
                &|q| 10.0 / (1.0 - q).powf(1.0 / 1.5),
            ),
            (
                "lognormal",
                Dist::LogNormal {
                    p50: ms(20),
                    p99: ms(400),
                },
                &|q| {
                    let sigma = (400f64.ln() - 20f64.ln()) / Z_99;
                    // Quantiles at the standard normal's known points.
                    let z = match q {
                        0.5 => 0.0,
                        0.9 => 1.281_551_565_545,
                        0.99 => Z_99,
                        _ => unreachable!("table quantiles only"),
                    };
                    (20f64.ln() + sigma * z).exp()
                },
            ),
        ];
        for (name, dist, quantile_fn) in rows {
            let sorted = draws(*dist, None);
            for q in [0.5, 0.9, 0.99] {
                close(
                    &format!("{name} q{q}"),
                    quantile(&sorted, q),
                    quantile_fn(q),
                    0.03,
                );
            }
        }
    }

    #[test]
    fn normal_mean_and_sd_and_truncation_at_zero() {
        let sorted = draws(
            Dist::Normal {
                mean: ms(100),
                sd: ms(20),
            },
            None,
        );
        let m = mean(&sorted);
        let sd = (sorted.iter().map(|x| (x - m).powi(2)).sum::<f64>() / sorted.len() as f64).sqrt();
        close("normal mean", m, 100.0, 0.01);
        close("normal sd", sd, 20.0, 0.02);
        // Mean 0: truncated at 0 it is the half-normal, mean sd * sqrt(2 / pi), never negative.
        let half = draws(
            Dist::Normal {
                mean: ms(0),
                sd: ms(30),
            },
            None,
        );
        assert!(half[0] >= 0.0);
        close(
            "half-normal mean",
            mean(&half),
            30.0 * (2.0 / std::f64::consts::PI).sqrt(),
            0.02,
        );
    }

    #[test]
    fn exponential_mean_matches() {
        close(
            "exp mean",
            mean(&draws(Dist::Exponential { mean: ms(50) }, None)),
            50.0,
            0.02,
        );
    }

    #[test]
    fn max_caps_every_draw() {
        let rows: &[(&str, Dist)] = &[
            (
                "pareto",
                Dist::Pareto {
                    scale: ms(10),
                    shape: 0.5,
                },
            ),
            ("exp", Dist::Exponential { mean: ms(100) }),
            (
                "lognormal",
                Dist::LogNormal {
                    p50: ms(20),
                    p99: ms(4000),
                },
            ),
            ("fixed", Dist::Fixed(ms(300))),
        ];
        for (name, dist) in rows {
            let sorted = draws(*dist, Some(ms(250)));
            assert!(*sorted.last().unwrap() <= 250.0, "{name}");
        }
    }

    #[test]
    fn fixed_and_zero_span_draw_nothing() {
        let mut rng = fastrand::Rng::with_seed(SEED);
        let before = rng.clone().u64(..);
        assert_eq!(
            Sampler::new(Dist::Fixed(ms(7)), None).sample(&mut rng),
            7_000_000
        );
        assert_eq!(rng.u64(..), before, "fixed consumed a draw");
    }
}
