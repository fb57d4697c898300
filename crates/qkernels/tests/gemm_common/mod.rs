//! The scalar oracle the GEMM and convolution tests compare every tier with: naive loops over
//! `Σ (a - a_zp)(w - w_zp)` in wrapping i32 and qcore's `ConvRequant` for the u8 output.

#![allow(dead_code)]

use qcore::requant::{BiasTerm, ConvRequant};
use qkernels::gemm::{Output, WeightQParams};

/// Per-channel scales and zero points of `n` channels.
pub fn scales_and_zps(q: &WeightQParams, n: usize) -> (Vec<f64>, Vec<i32>, bool) {
    match q {
        WeightQParams::PerTensor { scale, zero_point } => (vec![*scale; n], vec![*zero_point; n], false),
        WeightQParams::PerChannel { scales, zero_points } => (scales.clone(), zero_points.clone(), true),
    }
}

/// `acc[m][n] = Σ_k (a[m][k] - a_zp)(w[n][k] - w_zp[n])`, wrapping i32.
pub fn gemm_acc(a: &[u8], m: usize, k: usize, w: &[i8], n: usize, a_zp: u8, w_zp: &[i32]) -> Vec<i32> {
    let mut out = vec![0i32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0i32;
            for kk in 0..k {
                let x = i32::from(a[i * k + kk]) - i32::from(a_zp);
                let y = i32::from(w[j * k + kk]) - w_zp[j];
                s = s.wrapping_add(x * y);
            }
            out[i * n + j] = s;
        }
    }
    out
}

/// What an output stage should produce from accumulators of `n` columns.
#[derive(Debug, Clone)]
pub enum RefOut {
    U8(Vec<u8>),
    F32(Vec<f32>),
    I32(Vec<i32>),
}

/// True if `run` appends exactly `want` to a vector after a 3-byte prefix, into spare capacity
/// that holds the complement of every expected byte (an output the kernel skipped keeps it).
pub fn appends(want: &[u8], run: impl FnOnce(Output<'_>)) -> bool {
    let mut appended: Vec<u8> = [1, 2, 3].into_iter().chain(want.iter().map(|x| !x)).collect();
    appended.truncate(3);
    run(Output::AppendU8(&mut appended));
    appended[..3] == [1, 2, 3] && appended[3..] == *want
}

/// The u8 requantization of `acc` with qcore's `ConvRequant`.
#[allow(clippy::too_many_arguments)]
pub fn requant_u8(
    acc: &[i32],
    n: usize,
    q: &WeightQParams,
    bias: Option<&[f32]>,
    a_scale: f64,
    out_scale: f64,
    out_zp: u8,
    relu: bool,
) -> Vec<u8> {
    let (scales, _, per_channel) = scales_and_zps(q, n);
    let mode = if per_channel { BiasTerm::Division } else { BiasTerm::Reciprocal };
    acc.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = i % n;
            let r = ConvRequant::new(a_scale, scales[c], out_scale).unwrap();
            let b = bias.map_or(0.0, |b| r.bias_term(b[c], mode));
            r.requantize(v, b, out_zp, relu)
        })
        .collect()
}

/// `f32(acc) * (f32(a_scale) * f32(w_scale)) + bias`, ReLU'd.
pub fn dequant_f32(
    acc: &[i32],
    n: usize,
    q: &WeightQParams,
    bias: Option<&[f32]>,
    a_scale: f64,
    relu: bool,
) -> Vec<f32> {
    let (scales, _, _) = scales_and_zps(q, n);
    acc.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = i % n;
            let y = (v as f32).mul_add(a_scale as f32 * scales[c] as f32, bias.map_or(0.0, |b| b[c]));
            if relu { y.max(0.0) } else { y }
        })
        .collect()
}

/// A deterministic xorshift generator for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn u8s(&mut self, len: usize, max: u8) -> Vec<u8> {
        (0..len).map(|_| (self.next() % (u64::from(max) + 1)) as u8).collect()
    }
    pub fn i8s(&mut self, len: usize, lo: i8, hi: i8) -> Vec<i8> {
        let span = (i32::from(hi) - i32::from(lo) + 1) as u64;
        (0..len).map(|_| (i32::from(lo) + (self.next() % span) as i32) as i8).collect()
    }
    pub fn f32s(&mut self, len: usize, mag: f32) -> Vec<f32> {
        (0..len).map(|_| ((self.next() % 20001) as f32 / 10000.0 - 1.0) * mag).collect()
    }
}

/// Geometry of a reference convolution (all axes as `[D, H, W]`).
#[derive(Debug, Clone)]
pub struct RefConv {
    pub batch: usize,
    pub c: usize,
    pub oc: usize,
    pub groups: usize,
    pub in3: [usize; 3],
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub pad: [usize; 3],
    pub dilation: [usize; 3],
    pub reflect: bool,
}

impl RefConv {
    pub fn out3(&self) -> [usize; 3] {
        std::array::from_fn(|ax| {
            (self.in3[ax] + 2 * self.pad[ax] - self.dilation[ax] * (self.kernel[ax] - 1) - 1)
                / self.stride[ax]
                + 1
        })
    }

    /// Input coordinate of output `o`, tap `t` on axis `ax`; `None` in zero padding.
    fn coord(&self, ax: usize, o: usize, t: usize) -> Option<usize> {
        let len = self.in3[ax] as i64;
        let i = (o * self.stride[ax] + t * self.dilation[ax]) as i64 - self.pad[ax] as i64;
        if (0..len).contains(&i) {
            Some(i as usize)
        } else if self.reflect {
            Some(if i < 0 { (-i) as usize } else { (2 * (len - 1) - i) as usize })
        } else {
            None
        }
    }

    /// Accumulators `[batch, *out, oc]` of NDHWC `input` and PyTorch-layout `weights`
    /// `[oc][c / groups][kd][kh][kw]`.
    pub fn acc(&self, input: &[u8], weights: &[i8], a_zp: u8, w_zp: &[i32]) -> Vec<i32> {
        let out3 = self.out3();
        let (cg, ocg) = (self.c / self.groups, self.oc / self.groups);
        let taps: usize = self.kernel.iter().product();
        let mut out = Vec::with_capacity(self.batch * out3.iter().product::<usize>() * self.oc);
        for b in 0..self.batch {
            for z in 0..out3[0] {
                for y in 0..out3[1] {
                    for x in 0..out3[2] {
                        for o in 0..self.oc {
                            let g = o / ocg;
                            let mut s = 0i32;
                            for kd in 0..self.kernel[0] {
                                for kh in 0..self.kernel[1] {
                                    for kw in 0..self.kernel[2] {
                                        let (Some(zi), Some(yi), Some(xi)) = (
                                            self.coord(0, z, kd),
                                            self.coord(1, y, kh),
                                            self.coord(2, x, kw),
                                        ) else {
                                            continue;
                                        };
                                        let t = (kd * self.kernel[1] + kh) * self.kernel[2] + kw;
                                        for ic in 0..cg {
                                            let pix = ((b * self.in3[0] + zi) * self.in3[1] + yi)
                                                * self.in3[2]
                                                + xi;
                                            let a = i32::from(input[pix * self.c + g * cg + ic])
                                                - i32::from(a_zp);
                                            let w = i32::from(weights[(o * cg + ic) * taps + t]) - w_zp[o];
                                            s = s.wrapping_add(a * w);
                                        }
                                    }
                                }
                            }
                            out.push(s);
                        }
                    }
                }
            }
        }
        out
    }
}

/// A fixture of `tools/golden/gen_kernels.py` (read with `qtest`), with flat accessors.
pub struct Fixture(pub qtest::Fixture);

impl Fixture {
    pub fn load(name: &str) -> Self {
        Self(qtest::Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), name))
    }

    pub fn cases(&self) -> &[serde_json::Value] {
        &self.0.cases
    }

    pub fn u8s(&self, case: &str, field: &str) -> Vec<u8> {
        self.0.tensor::<u8>(case, field).iter().copied().collect()
    }

    pub fn i8s(&self, case: &str, field: &str) -> Vec<i8> {
        self.0.tensor::<i8>(case, field).iter().copied().collect()
    }

    pub fn f32s(&self, case: &str, field: &str) -> Option<Vec<f32>> {
        self.0.has(case, field).then(|| self.0.tensor::<f32>(case, field).iter().copied().collect())
    }
}

/// The weight quantization parameters of a fixture case.
pub fn fixture_qparams(case: &serde_json::Value) -> WeightQParams {
    let scales: Vec<f64> = case["w_scales"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let zps: Vec<i32> =
        case["w_zero_points"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap() as i32).collect();
    if case["per_channel"].as_bool().unwrap() {
        WeightQParams::PerChannel { scales, zero_points: zps }
    } else {
        WeightQParams::PerTensor { scale: scales[0], zero_point: zps[0] }
    }
}

/// `(scale, zero_point)` of a fixture's `[scale, zp]` pair.
pub fn scale_zp(v: &serde_json::Value) -> (f64, u8) {
    (v[0].as_f64().unwrap(), v[1].as_u64().unwrap() as u8)
}

pub fn usizes(v: &serde_json::Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}
