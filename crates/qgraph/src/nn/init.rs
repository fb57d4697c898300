//! Default parameter initialisation: a thread-local deterministic generator ([`manual_seed`])
//! and PyTorch's default bounds for weighted layers.
//!
//! PyTorch initialises a `Conv`/`Linear` weight with `kaiming_uniform_(a=sqrt(5))`, which is
//! `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, and its bias with the same bound. The numbers here come
//! from an xorshift64 stream, not PyTorch's generator, so they are reproducible but not PyTorch's.

use std::cell::Cell;

use ndarray::{ArrayD, IxDyn};

/// The seed of a thread that never called [`manual_seed`].
const DEFAULT_SEED: u64 = 0x2545_F491_4F6C_DD1D;

thread_local! {
    static STATE: Cell<u64> = const { Cell::new(DEFAULT_SEED | 1) };
}

/// Restarts this thread's initialisation stream from `seed` (PyTorch's `torch.manual_seed`):
/// modules built afterwards in the same order get the same parameters.
///
/// ```
/// use qgraph::nn::{Linear, manual_seed};
/// manual_seed(7);
/// let a = Linear::new(4, 2, true);
/// manual_seed(7);
/// let b = Linear::new(4, 2, true);
/// assert_eq!(a.weight(), b.weight());
/// ```
pub fn manual_seed(seed: u64) {
    STATE.with(|s| s.set(seed | 1));
}

/// The next 64 bits of this thread's xorshift64 stream (13/7/17, as `qtest::XorShift`).
fn next_u64() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

/// A tensor of `shape` drawn from `U(-bound, bound)`.
pub(crate) fn uniform(shape: &[usize], bound: f32) -> ArrayD<f32> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || {
        // 24 random bits in [0, 1), exact in f32.
        let unit = (next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        (unit * 2.0 - 1.0) * bound
    })
}

/// PyTorch's default bound for a layer of `fan_in` inputs: `1 / sqrt(fan_in)` (0 when empty).
pub(crate) fn default_bound(fan_in: usize) -> f32 {
    if fan_in == 0 { 0.0 } else { 1.0 / (fan_in as f32).sqrt() }
}

/// A tensor of `shape` drawn from `N(0, 1)` (PyTorch's `normal_` for `nn.Embedding`), by the
/// Box-Muller transform of two draws of the same stream.
pub(crate) fn standard_normal(shape: &[usize]) -> ArrayD<f32> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || {
        // 53-bit uniforms in (0, 1] and [0, 1).
        let u1 = ((next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let u2 = (next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    })
}
