//! f32 kernels against naive f64 references: every result within a relative 1e-5 of the sum of
//! the absolute values of its terms (the stated tolerance for sums of products), on every tier.
// Naive references index like the formulas they transcribe.
#![allow(clippy::needless_range_loop)]

use proptest::prelude::*;
use qkernels::float::{self, Activation, ConvParams, ConvScratch, Matrix, PoolKind};
use qkernels::pool::Window;
use qkernels::{Isa, KernelError};
use qtest::random_f32s;

/// A scalar reference of an activation, in f64.
type Reference = fn(f64) -> f64;

fn cfg() -> ProptestConfig {
    ProptestConfig { cases: 48, ..ProptestConfig::default() }
}

/// Asserts |got - value| <= 1e-5 * magnitude + 1e-6 for each (value, magnitude) reference.
fn assert_close(what: &str, got: &[f32], reference: &[(f64, f64)]) {
    assert_eq!(got.len(), reference.len(), "{what}: length");
    for (i, (&g, &(v, mag))) in got.iter().zip(reference).enumerate() {
        let tol = 1e-5 * mag + 1e-6;
        // Equal values (including two infinities of the same sign) pass before any arithmetic.
        assert!(
            f64::from(g) == v || (f64::from(g) - v).abs() <= tol,
            "{what}[{i}]: {g} vs {v} (tolerance {tol:e})"
        );
    }
}

/// Naive convolution in f64 over 3 spatial dims (leading dims of size 1 for 1-D / 2-D).
#[allow(clippy::too_many_arguments)]
fn naive_conv(
    x: &[f32],
    n: usize,
    c: usize,
    isp: [usize; 3],
    w: &[f32],
    o: usize,
    ksp: [usize; 3],
    bias: Option<&[f32]>,
    s: [usize; 3],
    p: [usize; 3],
    d: [usize; 3],
    g: usize,
    osp: [usize; 3],
) -> Vec<(f64, f64)> {
    let (cg, og) = (c / g, o / g);
    let mut out = Vec::new();
    for b in 0..n {
        for oc in 0..o {
            let gi = oc / og;
            for oz in 0..osp[0] {
                for oy in 0..osp[1] {
                    for ox in 0..osp[2] {
                        let bv = bias.map_or(0.0, |b| f64::from(b[oc]));
                        let (mut sum, mut mag) = (bv, bv.abs());
                        for ic in 0..cg {
                            for kz in 0..ksp[0] {
                                for ky in 0..ksp[1] {
                                    for kx in 0..ksp[2] {
                                        let iz = (oz * s[0] + kz * d[0]) as i64 - p[0] as i64;
                                        let iy = (oy * s[1] + ky * d[1]) as i64 - p[1] as i64;
                                        let ix = (ox * s[2] + kx * d[2]) as i64 - p[2] as i64;
                                        if iz < 0
                                            || iy < 0
                                            || ix < 0
                                            || iz >= isp[0] as i64
                                            || iy >= isp[1] as i64
                                            || ix >= isp[2] as i64
                                        {
                                            continue;
                                        }
                                        let xi = ((((b * c) + gi * cg + ic) * isp[0] + iz as usize) * isp[1]
                                            + iy as usize)
                                            * isp[2]
                                            + ix as usize;
                                        let wi = (((oc * cg + ic) * ksp[0] + kz) * ksp[1] + ky) * ksp[2] + kx;
                                        let t = f64::from(x[xi]) * f64::from(w[wi]);
                                        sum += t;
                                        mag += t.abs();
                                    }
                                }
                            }
                        }
                        out.push((sum, mag));
                    }
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn sgemm_matches_naive(m in 1usize..40, n in 1usize..70, k in 0usize..50, accumulate in any::<bool>(), seed in any::<u64>()) {
        let a = random_f32s(m * k, seed);
        let b = random_f32s(k * n, seed ^ 1);
        let c0 = random_f32s(m * n, seed ^ 2);
        let mut c = c0.clone();
        float::sgemm(m, n, k, Matrix::row_major(&a, k), Matrix::row_major(&b, n), &mut c, n, accumulate, Isa::Scalar).unwrap();
        // Every tier, with B read in place (row-major) or packed (its transpose, stored n x k),
        // gives the scalar tier's bits.
        let b_t: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        for isa in Isa::supported() {
            for b_view in [Matrix::row_major(&b, n), Matrix::transposed(&b_t, k)] {
                let mut got = c0.clone();
                float::sgemm(m, n, k, Matrix::row_major(&a, k), b_view, &mut got, n, accumulate, isa).unwrap();
                prop_assert!(got.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits()), "{} vs scalar", isa);
            }
        }
        let mut reference = Vec::new();
        for i in 0..m {
            for j in 0..n {
                let init = if accumulate { f64::from(c0[i * n + j]) } else { 0.0 };
                let (mut s, mut mag) = (init, init.abs());
                for l in 0..k {
                    let t = f64::from(a[i * k + l]) * f64::from(b[l * n + j]);
                    s += t;
                    mag += t.abs();
                }
                reference.push((s, mag));
            }
        }
        assert_close("sgemm", &c, &reference);
    }

    #[test]
    fn conv_1d_2d_3d_match_naive(
        dims in 1usize..4,
        n in 1usize..3,
        cg in 1usize..5,
        og in 1usize..5,
        g in 1usize..4,
        isp in proptest::array::uniform3(1usize..9),
        ksp in proptest::array::uniform3(1usize..4),
        s in proptest::array::uniform3(1usize..3),
        p in proptest::array::uniform3(0usize..3),
        d in proptest::array::uniform3(1usize..3),
        with_bias in any::<bool>(),
        depthwise in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let (mut isp, mut ksp, mut s, mut p, mut d) = (isp, ksp, s, p, d);
        for i in 0..3 - dims {
            isp[i] = 1; ksp[i] = 1; s[i] = 1; p[i] = 0; d[i] = 1;
        }
        let (cg, og) = if depthwise { (1, 1) } else { (cg, og) };
        let (c, o) = (cg * g, og * g);
        let span = |i: usize| d[i] * (ksp[i] - 1) + 1;
        if (0..3).any(|i| isp[i] + 2 * p[i] < span(i)) {
            return Ok(());
        }
        let osp: [usize; 3] = std::array::from_fn(|i| (isp[i] + 2 * p[i] - span(i)) / s[i] + 1);
        let x = random_f32s(n * c * isp.iter().product::<usize>(), seed);
        let w = random_f32s(o * cg * ksp.iter().product::<usize>(), seed ^ 7);
        let bias = random_f32s(o, seed ^ 9);
        let bias = with_bias.then_some(&bias[..]);
        let reference = naive_conv(&x, n, c, isp, &w, o, ksp, bias, s, p, d, g, osp);
        let mut out = vec![f32::NAN; reference.len()];
        let mut scratch = ConvScratch::default();
        let shape = |a: usize, b: usize, sp: [usize; 3]| {
            let mut v = vec![a, b];
            v.extend_from_slice(&sp[3 - dims..]);
            v
        };
        for isa in Isa::supported() {
            let oshape = match dims {
                1 => float::conv::<1>(&x, &shape(n, c, isp), &w, &shape(o, cg, ksp), bias,
                    &ConvParams { stride: [s[2]], padding: [p[2]], dilation: [d[2]], groups: g }, &mut out, &mut scratch, isa),
                2 => float::conv::<2>(&x, &shape(n, c, isp), &w, &shape(o, cg, ksp), bias,
                    &ConvParams { stride: [s[1], s[2]], padding: [p[1], p[2]], dilation: [d[1], d[2]], groups: g }, &mut out, &mut scratch, isa),
                _ => float::conv::<3>(&x, &shape(n, c, isp), &w, &shape(o, cg, ksp), bias,
                    &ConvParams { stride: s, padding: p, dilation: d, groups: g }, &mut out, &mut scratch, isa),
            }.unwrap();
            prop_assert_eq!(oshape, shape(n, o, osp));
            assert_close(&format!("conv{dims}d on {isa}"), &out, &reference);
        }
    }

    #[test]
    fn pooling_matches_naive(
        k in proptest::array::uniform2(1usize..4), s in proptest::array::uniform2(1usize..3),
        p in proptest::array::uniform2(0usize..2), dil in 1usize..3, sp in proptest::array::uniform2(1usize..9),
        ceil_mode in any::<bool>(), count_include_pad in any::<bool>(), seed in any::<u64>(),
    ) {
        let padding = [p[0].min(k[0] / 2), p[1].min(k[1] / 2)];
        let c = 3;
        let x = random_f32s(2 * c * sp[0] * sp[1], seed);
        for (kind, dilation) in [(PoolKind::Max, [dil, dil]), (PoolKind::Avg { count_include_pad, divisor_override: None }, [1, 1])] {
            let w = Window { kernel: k, stride: s, padding, dilation, ceil_mode };
            let Ok([oh, ow]) = w.output_size("test", sp) else { continue };
            let mut reference = Vec::new();
            for pl in 0..2 * c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (mut m, mut sum, mut cnt, mut mag) = (f64::NEG_INFINITY, 0.0, 0i64, 0.0);
                        let mut padded = 0i64;
                        for ky in 0..k[0] {
                            for kx in 0..k[1] {
                                let yy = (oy * s[0] + ky * dilation[0]) as i64 - padding[0] as i64;
                                let xx = (ox * s[1] + kx * dilation[1]) as i64 - padding[1] as i64;
                                if yy < (sp[0] + padding[0]) as i64 && xx < (sp[1] + padding[1]) as i64 { padded += 1; }
                                if yy < 0 || xx < 0 || yy >= sp[0] as i64 || xx >= sp[1] as i64 { continue; }
                                let v = f64::from(x[(pl * sp[0] + yy as usize) * sp[1] + xx as usize]);
                                m = m.max(v); sum += v; cnt += 1; mag += v.abs();
                            }
                        }
                        reference.push(match kind {
                            PoolKind::Max => (m, 0.0),
                            _ => {
                                let div = if count_include_pad { padded } else { cnt } as f64;
                                (sum / div, mag / div)
                            }
                        });
                    }
                }
            }
            for isa in Isa::supported() {
                let mut out = vec![0.0f32; reference.len()];
                float::pool2d(&x, &[2, c, sp[0], sp[1]], &w, kind, &mut out, isa).unwrap();
                assert_close(&format!("{kind:?} on {isa}"), &out, &reference);
            }
        }
    }
}

/// The paths the small property cases above do not reach, against the naive reference: the
/// per-tap path (32 or more input channels, 20 or more output columns) and depthwise layers at
/// strides 1 to 3, with even and odd paddings, dilation and odd widths.
#[test]
fn wide_and_strided_2d_layers_match_naive() {
    // (channels, out channels, groups, kernel, stride, padding, dilation, height, width)
    let cases = [
        (32, 6, 1, 3, 1, 1, 1, 5, 23),
        (33, 5, 1, 3, 2, 1, 1, 6, 45),
        (32, 4, 1, 3, 2, 0, 1, 5, 44),
        (32, 4, 1, 3, 2, 2, 2, 7, 43),
        (32, 3, 1, 5, 3, 2, 1, 8, 64),
        (32, 3, 1, 7, 2, 3, 1, 9, 41),
        (6, 6, 6, 3, 3, 1, 1, 10, 11),
        (5, 5, 5, 3, 3, 2, 1, 7, 10),
        (4, 4, 4, 5, 2, 2, 1, 9, 8),
        (4, 4, 4, 3, 2, 1, 2, 7, 12),
    ];
    for (c, o, g, k, s, p, d, h, w) in cases {
        let span = d * (k - 1) + 1;
        let osp = [1, (h + 2 * p - span) / s + 1, (w + 2 * p - span) / s + 1];
        let x = random_f32s(2 * c * h * w, 21);
        let wt = random_f32s(o * (c / g) * k * k, 22);
        let bias = random_f32s(o, 23);
        let reference = naive_conv(
            &x,
            2,
            c,
            [1, h, w],
            &wt,
            o,
            [1, k, k],
            Some(&bias),
            [1, s, s],
            [0, p, p],
            [1, d, d],
            g,
            osp,
        );
        let params = ConvParams { stride: [s, s], padding: [p, p], dilation: [d, d], groups: g };
        for isa in Isa::supported() {
            let mut out = vec![f32::NAN; reference.len()];
            float::conv::<2>(
                &x,
                &[2, c, h, w],
                &wt,
                &[o, c / g, k, k],
                Some(&bias),
                &params,
                &mut out,
                &mut ConvScratch::default(),
                isa,
            )
            .unwrap();
            assert_close(
                &format!("conv {c}->{o} g{g} k{k} s{s} p{p} d{d} {h}x{w} on {isa}"),
                &out,
                &reference,
            );
        }
    }
}

#[test]
fn batch_norm_activations_softmax_and_adaptive_pool_match_their_definitions() {
    let shape = [2, 3, 5, 7];
    let x = random_f32s(2 * 3 * 35, 11);
    let mean = [0.1f32, -0.2, 0.3];
    let var = [0.5f32, 2.0, 0.01];
    let weight = [1.5f32, -0.5, 2.0];
    let bias = [0.0f32, 0.25, -1.0];
    let eps = 1e-5;
    for isa in Isa::supported() {
        let mut out = vec![0.0; x.len()];
        float::batch_norm(&x, &shape, &mean, &var, Some(&weight), Some(&bias), eps, &mut out, isa).unwrap();
        let reference: Vec<(f64, f64)> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = i / 35 % 3;
                let y = (f64::from(v) - f64::from(mean[c])) / (f64::from(var[c]) + eps).sqrt()
                    * f64::from(weight[c])
                    + f64::from(bias[c]);
                (y, y.abs() + 1.0)
            })
            .collect();
        assert_close("batch_norm", &out, &reference);

        let acts: [(Activation, Reference); 10] = [
            (Activation::Relu, |v| v.max(0.0)),
            (Activation::Relu6, |v| v.clamp(0.0, 6.0)),
            (Activation::Hardtanh { min: -0.5, max: 0.25 }, |v| v.clamp(-0.5, 0.25)),
            (Activation::Hardswish, |v| v * (v + 3.0).clamp(0.0, 6.0) / 6.0),
            (Activation::Hardsigmoid, |v| (v + 3.0).clamp(0.0, 6.0) / 6.0),
            (Activation::Threshold { threshold: -0.5, value: 2.0 }, |v| if v <= -0.5 { 2.0 } else { v }),
            (Activation::Sigmoid, |v| 1.0 / (1.0 + (-v).exp())),
            (Activation::Tanh, f64::tanh),
            (Activation::LeakyRelu { negative_slope: 0.1 }, |v| if v > 0.0 { v } else { 0.1 * v }),
            (Activation::Elu { alpha: 0.7 }, |v| if v > 0.0 { v } else { 0.7 * v.exp_m1() }),
        ];
        let big: Vec<f32> = x.iter().map(|v| v * 8.0).collect();
        for (act, f) in acts {
            let mut out = vec![0.0; big.len()];
            float::activation(act, &big, &mut out, isa).unwrap();
            let reference: Vec<(f64, f64)> =
                big.iter().map(|&v| (f(f64::from(v)), f(f64::from(v)).abs() + 0.1)).collect();
            assert_close(&format!("{act:?}"), &out, &reference);
        }

        for dim in 0..4 {
            let mut out = vec![0.0; x.len()];
            float::softmax(&big, &shape, dim, &mut out, isa).unwrap();
            let strides = [105, 35, 7, 1];
            let reference: Vec<(f64, f64)> = (0..x.len())
                .map(|i| {
                    let base = i - (i / strides[dim] % shape[dim]) * strides[dim];
                    let vals: Vec<f64> =
                        (0..shape[dim]).map(|j| f64::from(big[base + j * strides[dim]])).collect();
                    let m = vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = vals.iter().map(|v| (v - m).exp()).sum();
                    ((f64::from(big[i]) - m).exp() / sum, 1.0)
                })
                .collect();
            assert_close(&format!("softmax dim {dim}"), &out, &reference);
        }

        for osz in [[1, 1], [2, 3], [5, 7], [4, 4]] {
            let mut out = vec![0.0; 6 * osz[0] * osz[1]];
            float::adaptive_avg_pool2d(&x, &shape, osz, &mut out, isa).unwrap();
            let mut reference = Vec::new();
            for pl in 0..6 {
                for oy in 0..osz[0] {
                    for ox in 0..osz[1] {
                        let (y0, y1) = (oy * 5 / osz[0], ((oy + 1) * 5).div_ceil(osz[0]));
                        let (x0, x1) = (ox * 7 / osz[1], ((ox + 1) * 7).div_ceil(osz[1]));
                        let vals: Vec<f64> = (y0..y1)
                            .flat_map(|yy| (x0..x1).map(move |xx| (yy, xx)))
                            .map(|(yy, xx)| f64::from(x[pl * 35 + yy * 7 + xx]))
                            .collect();
                        let n = vals.len() as f64;
                        reference.push((
                            vals.iter().sum::<f64>() / n,
                            vals.iter().map(|v| v.abs()).sum::<f64>() / n,
                        ));
                    }
                }
            }
            assert_close("adaptive_avg_pool2d", &out, &reference);
        }
    }
}

#[test]
fn resnet_sized_layers_split_across_threads_match_one_thread() {
    // Large enough to take the rayon paths of im2col, the per-tap GEMMs (32 or more channels,
    // 20 or more output columns; at stride 1 and 2), GEMM and depthwise. Every path's bits
    // depend on the shapes only: two threads on the best tier equal the scalar tier on one.
    let c = 32;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for (o, k, groups, stride, hw) in
        [(64, 3, 1, 1, 28), (64, 3, 1, 2, 48), (40, 3, 1, 1, 29), (32, 3, 32, 1, 28), (48, 1, 1, 1, 28)]
    {
        let x = random_f32s(c * hw * hw, 5);
        let wt = random_f32s(o * (c / groups) * k * k, 6);
        let bias = random_f32s(o, 7);
        let p = ConvParams { stride: [stride, stride], padding: [k / 2, k / 2], dilation: [1, 1], groups };
        let ohw = (hw + 2 * (k / 2) - k) / stride + 1;
        let len = o * ohw * ohw;
        let (mut a, mut b) = (vec![0.0; len], vec![0.0; len]);
        let mut scratch = ConvScratch::default();
        let shape = [1, c, hw, hw];
        let wshape = [o, c / groups, k, k];
        float::conv::<2>(&x, &shape, &wt, &wshape, Some(&bias), &p, &mut a, &mut scratch, Isa::Scalar)
            .unwrap();
        pool.install(|| {
            float::conv::<2>(&x, &shape, &wt, &wshape, Some(&bias), &p, &mut b, &mut scratch, Isa::detect())
        })
        .unwrap();
        let reference = naive_conv(
            &x,
            1,
            c,
            [1, hw, hw],
            &wt,
            o,
            [1, k, k],
            Some(&bias),
            [1, stride, stride],
            [0, k / 2, k / 2],
            [1; 3],
            groups,
            [1, ohw, ohw],
        );
        assert_close("one thread", &a, &reference);
        let differ = a.iter().zip(&b).position(|(x, y)| x.to_bits() != y.to_bits());
        assert_eq!(differ, None, "two threads on {} vs scalar: {o}x{k}x{k} stride {stride}", Isa::detect());
    }
}

#[test]
fn bad_float_input_is_a_typed_error() {
    let x = [0.0f32; 2 * 4 * 5 * 5];
    let mut out = vec![0.0f32; 10_000];
    let mut scratch = ConvScratch::default();
    let isa = Isa::Scalar;
    let p = ConvParams::<2>::default();
    // Groups that do not divide the channels; weight channels that do not match.
    let err = float::conv::<2>(
        &x,
        &[2, 4, 5, 5],
        &[0.0; 8 * 3 * 9],
        &[8, 3, 3, 3],
        None,
        &ConvParams { groups: 3, ..p },
        &mut out,
        &mut scratch,
        isa,
    )
    .unwrap_err();
    assert!(matches!(err, KernelError::InvalidArgument { what: "groups", .. }), "{err}");
    let err = float::conv::<2>(
        &x,
        &[2, 4, 5, 5],
        &[0.0; 8 * 3 * 9],
        &[8, 3, 3, 3],
        None,
        &p,
        &mut out,
        &mut scratch,
        isa,
    )
    .unwrap_err();
    assert!(matches!(err, KernelError::ShapeMismatch { what: "weight input channels", .. }), "{err}");
    // Kernel larger than the padded input.
    let err = float::conv::<2>(
        &x,
        &[2, 4, 5, 5],
        &[0.0; 8 * 4 * 36],
        &[8, 4, 6, 6],
        None,
        &p,
        &mut out,
        &mut scratch,
        isa,
    )
    .unwrap_err();
    assert!(matches!(err, KernelError::InvalidArgument { what: "kernel size", .. }), "{err}");
    // Wrong output length, bias length.
    let err = float::conv::<2>(
        &x,
        &[2, 4, 5, 5],
        &[0.0; 8 * 4 * 9],
        &[8, 4, 3, 3],
        None,
        &p,
        &mut out,
        &mut scratch,
        isa,
    )
    .unwrap_err();
    assert!(matches!(err, KernelError::ShapeMismatch { what: "output length", .. }), "{err}");
    assert!(
        float::conv::<2>(
            &x,
            &[2, 4, 5, 5],
            &[0.0; 8 * 4 * 9],
            &[8, 4, 3, 3],
            Some(&[0.0; 7]),
            &p,
            &mut out[..2 * 8 * 9],
            &mut scratch,
            isa
        )
        .is_err()
    );
    // sgemm with short buffers.
    let (a, b) = (Matrix::row_major(&[0.0; 15], 4), Matrix::row_major(&[0.0; 16], 4));
    assert!(float::sgemm(4, 4, 4, a, b, &mut [0.0; 16], 4, false, isa).is_err());
    let huge = Matrix { data: &[0.0; 16], row_stride: usize::MAX, col_stride: 1 };
    assert!(float::sgemm(4, 4, 4, huge, b, &mut [0.0; 16], 4, false, isa).is_err());
    // Batch norm with the wrong number of channels, softmax over a missing dim.
    assert!(
        float::batch_norm(&x, &[2, 4, 25], &[0.0; 3], &[1.0; 4], None, None, 1e-5, &mut out[..200], isa)
            .is_err()
    );
    assert!(float::softmax(&x, &[2, 4, 25], 3, &mut out[..200], isa).is_err());
    assert!(
        float::activation(Activation::Hardtanh { min: 1.0, max: 0.0 }, &x, &mut out[..200], isa).is_err()
    );
    let w = Window { kernel: [7, 7], stride: [1, 1], padding: [0, 0], dilation: [1, 1], ceil_mode: false };
    assert!(float::pool2d(&x, &[2, 4, 5, 5], &w, PoolKind::Max, &mut out, isa).is_err());
    assert!(float::adaptive_avg_pool2d(&x, &[2, 4, 5, 5], [0, 1], &mut out, isa).is_err());
}

#[test]
fn max_pool_propagates_the_last_nan_and_keeps_the_first_of_equal_values() {
    // Values from a few, so windows hold ties, signed zeros and NaNs with distinct payloads.
    let palette = [-0.0f32, 0.0, 1.0, -1.0, f32::from_bits(0x7fc0_0001), f32::from_bits(0x7fc0_0002)];
    let (ih, iw) = (9, 11);
    let x: Vec<f32> =
        random_f32s(ih * iw, 5).iter().map(|v| palette[((v + 1.0) * 3.0) as usize % 6]).collect();
    for (k, s, p, d, ceil_mode) in
        [(3, 2, 1, 1, false), (3, 1, 1, 1, false), (2, 2, 0, 1, true), (3, 1, 1, 2, false)]
    {
        let w = Window { kernel: [k, k], stride: [s, s], padding: [p, p], dilation: [d, d], ceil_mode };
        let [oh, ow] = w.output_size("test", [ih, iw]).unwrap();
        let mut want = Vec::new();
        for oy in 0..oh {
            for ox in 0..ow {
                let mut m = f32::NEG_INFINITY;
                for ky in 0..k {
                    for kx in 0..k {
                        let (yy, xx) =
                            ((oy * s + ky * d) as i64 - p as i64, (ox * s + kx * d) as i64 - p as i64);
                        if (0..ih as i64).contains(&yy) && (0..iw as i64).contains(&xx) {
                            let v = x[yy as usize * iw + xx as usize];
                            if v > m || v.is_nan() {
                                m = v;
                            }
                        }
                    }
                }
                want.push(m.to_bits());
            }
        }
        for isa in Isa::supported() {
            let mut out = vec![0.0f32; oh * ow];
            float::pool2d(&x, &[1, 1, ih, iw], &w, PoolKind::Max, &mut out, isa).unwrap();
            let got: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "k {k} s {s} p {p} d {d} ceil {ceil_mode} on {isa}");
        }
    }
}

#[test]
fn in_place_batch_norm_and_activations_give_the_bits_of_the_copying_ones() {
    let shape = [2, 3, 70, 700];
    let x = random_f32s(shape.iter().product(), 17);
    let (mean, var, weight, bias) =
        ([0.1f32, -0.2, 0.3], [0.5f32, 2.0, 0.01], [1.5f32, -0.5, 2.0], [0.0f32, 0.25, -1.0]);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let scaled: Vec<f32> = x.iter().map(|v| v * 8.0).collect();
    for isa in Isa::supported() {
        let mut want = vec![0.0; x.len()];
        float::batch_norm(&x, &shape, &mean, &var, Some(&weight), Some(&bias), 1e-5, &mut want, isa).unwrap();
        let mut got = x.clone();
        float::batch_norm_in_place(&mut got, &shape, &mean, &var, Some(&weight), Some(&bias), 1e-5, isa)
            .unwrap();
        assert!(bits(&got) == bits(&want), "batch norm on {isa}");
        let acts = [
            Activation::Relu,
            Activation::Relu6,
            Activation::Hardtanh { min: -2.0, max: 3.0 },
            Activation::Sigmoid,
            Activation::Tanh,
        ];
        for act in acts {
            let mut want = vec![0.0; x.len()];
            float::activation(act, &scaled, &mut want, isa).unwrap();
            let mut got = scaled.clone();
            float::activation_in_place(act, &mut got, isa).unwrap();
            assert!(bits(&got) == bits(&want), "{act:?} on {isa}");
        }
    }
}
