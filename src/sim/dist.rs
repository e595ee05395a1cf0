//! Random draws for the simulator.
//!
//! Every strategy must see the same random draws (common random numbers), even
//! though strategies take different paths through the simulation. So draws are
//! not taken from one sequential generator: each draw is a hash of the seed, a
//! stream name and the identity of what it is for (the 7th node pool `user`
//! asks for, the 2nd start of pod 4711). Pod 4711's ACI start latency is then
//! the same whether it bursts under spillway or aci-always.

use crate::units::Duration;
use serde::Serialize;

/// Streams of independent draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    VmProvision = 1,
    AciStart = 2,
    VmStart = 3,
}

/// SplitMix64 finaliser: a cheap, well-mixed 64-bit hash step.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform draw in `[0, 1)` for (seed, stream, a, b).
pub fn unit(seed: u64, stream: Stream, a: u64, b: u64) -> f64 {
    let h = mix(mix(mix(seed ^ (stream as u64).wrapping_mul(0xA24B_AED4_963E_E407)) ^ a) ^ b);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// A distribution of durations, as written in scenario files:
/// `{fixed: 3s}`, `{uniform: [3m, 5m]}`, `{normal: {mean: 4m, stddev: 30s}}`,
/// `{exponential: {mean: 20m}}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Dist {
    Fixed(Duration),
    Uniform {
        min: Duration,
        max: Duration,
    },
    /// Truncated at zero.
    Normal {
        mean: Duration,
        stddev: Duration,
    },
    Exponential {
        mean: Duration,
    },
}

impl Dist {
    /// Draw a duration from two independent uniforms in `[0, 1)`.
    pub fn sample(&self, u1: f64, u2: f64) -> Duration {
        let ms = match *self {
            Dist::Fixed(d) => d.millis() as f64,
            Dist::Uniform { min, max } => {
                min.millis() as f64 + u1 * (max.millis() - min.millis()) as f64
            }
            Dist::Normal { mean, stddev } => {
                // Box–Muller; 1 - u1 is in (0, 1] so the log is finite.
                let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                (mean.millis() as f64 + z * stddev.millis() as f64).max(0.0)
            }
            Dist::Exponential { mean } => -(1.0 - u1).ln() * mean.millis() as f64,
        };
        Duration::from_millis(ms.round() as u64)
    }

    /// Draw for (seed, stream, a, b).
    pub fn draw(&self, seed: u64, stream: Stream, a: u64, b: u64) -> Duration {
        self.sample(
            unit(seed, stream, a, b),
            unit(seed, stream, a, b ^ 0x5555_5555_5555_5555),
        )
    }

    /// The mean of the distribution (for documentation and default ETAs).
    pub fn mean(&self) -> Duration {
        match *self {
            Dist::Fixed(d) => d,
            Dist::Uniform { min, max } => Duration::from_millis((min.millis() + max.millis()) / 2),
            Dist::Normal { mean, .. } | Dist::Exponential { mean } => mean,
        }
    }
}

impl std::fmt::Display for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dist::Fixed(d) => write!(f, "{d}"),
            Dist::Uniform { min, max } => write!(f, "uniform {min}..{max}"),
            Dist::Normal { mean, stddev } => write!(f, "normal {mean}±{stddev}"),
            Dist::Exponential { mean } => write!(f, "exponential mean {mean}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_draws_are_deterministic_and_spread() {
        let a = unit(42, Stream::AciStart, 7, 1);
        assert_eq!(a, unit(42, Stream::AciStart, 7, 1));
        assert_ne!(a, unit(43, Stream::AciStart, 7, 1));
        assert_ne!(a, unit(42, Stream::VmStart, 7, 1));
        let n = 10_000;
        let mean: f64 = (0..n)
            .map(|i| unit(1, Stream::VmProvision, i, 0))
            .sum::<f64>()
            / n as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
        assert!((0..n).all(|i| (0.0..1.0).contains(&unit(1, Stream::VmProvision, i, 0))));
    }

    #[test]
    fn uniform_stays_in_range_and_fixed_is_fixed() {
        let d = Dist::Uniform {
            min: Duration::from_secs(180),
            max: Duration::from_secs(300),
        };
        for i in 0..1000 {
            let x = d.draw(9, Stream::VmProvision, i, 0);
            assert!(
                x >= Duration::from_secs(180) && x <= Duration::from_secs(300),
                "{x}"
            );
        }
        assert_eq!(
            Dist::Fixed(Duration::from_secs(3)).draw(1, Stream::VmStart, 1, 1),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn normal_and_exponential_have_their_means() {
        let n = Dist::Normal {
            mean: Duration::from_secs(240),
            stddev: Duration::from_secs(30),
        };
        let e = Dist::Exponential {
            mean: Duration::from_secs(600),
        };
        let k = 20_000u64;
        let mn = (0..k)
            .map(|i| n.draw(3, Stream::VmProvision, i, 0).secs_f64())
            .sum::<f64>()
            / k as f64;
        let me = (0..k)
            .map(|i| e.draw(3, Stream::VmProvision, i, 0).secs_f64())
            .sum::<f64>()
            / k as f64;
        assert!((mn - 240.0).abs() < 2.0, "normal mean {mn}");
        assert!((me - 600.0).abs() < 20.0, "exponential mean {me}");
    }
}
