//! Helpers shared by the integration tests: a fixed-seed generator and error measures.

#![allow(dead_code)]

use ndarray::ArrayD;
use qobserve::{QDType, QParams};

/// SplitMix64: a small, fixed-seed generator (no dependency, same numbers everywhere).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// Laplace with scale 1.
    pub fn laplace(&mut self) -> f64 {
        let u = self.uniform() - 0.5;
        -u.signum() * (1.0 - 2.0 * u.abs()).ln()
    }

    /// Student-t with `dof` degrees of freedom (integer).
    pub fn student_t(&mut self, dof: u32) -> f64 {
        let z = self.normal();
        let chi2: f64 = (0..dof).map(|_| self.normal().powi(2)).sum();
        z / (chi2 / f64::from(dof)).sqrt()
    }
}

/// Signal-to-quantization-noise ratio in dB of quantizing `x` with `qparams` through qcore.
pub fn sqnr_db(x: &ArrayD<f32>, qparams: &QParams, dtype: QDType) -> f64 {
    let QParams::PerTensor { scale, zero_point } = *qparams else { panic!("per-tensor parameters expected") };
    let q = qcore::quantize_per_tensor(x, scale, zero_point, dtype).expect("valid parameters");
    let dq = q.dequantize();
    let signal: f64 = x.iter().map(|&v| f64::from(v).powi(2)).sum();
    let noise: f64 = x.iter().zip(dq.iter()).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum();
    10.0 * (signal / noise).log10()
}
