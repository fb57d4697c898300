//! The f32 kernels' results do not depend on the machine: the GEMM is bit for bit the chain of
//! fused multiply-adds over k in order (the scalar oracle below) on every tier, and every float
//! kernel gives the same bits on every tier and with one or two threads.

use proptest::prelude::*;
use qkernels::Isa;
use qkernels::float::{self, Activation, ConvParams, ConvScratch, Matrix, PoolKind};
use qkernels::pool::Window;
use qtest::{random_f32s, thread_pool};

/// The oracle: `c[i, j] = fma(a[i, k-1], b[k-1, j], ... fma(a[i, 0], b[0, j], c0[i, j]))`.
#[allow(clippy::too_many_arguments)]
fn fma_chain(
    m: usize,
    n: usize,
    k: usize,
    a: Matrix<'_>,
    b: Matrix<'_>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = if accumulate { c[i * ldc + j] } else { 0.0 };
            for p in 0..k {
                let x = a.data[i * a.row_stride + p * a.col_stride];
                acc = x.mul_add(b.data[p * b.row_stride + j * b.col_stride], acc);
            }
            c[i * ldc + j] = acc;
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A `rows x cols` operand with row stride `cols + pad`, stored transposed when `transposed`.
fn operand(rows: usize, cols: usize, pad: usize, transposed: bool, seed: u64) -> (Vec<f32>, usize, usize) {
    if transposed {
        let ld = rows + pad;
        (random_f32s(cols * ld, seed), 1, ld)
    } else {
        let ld = cols + pad;
        (random_f32s(rows * ld, seed), ld, 1)
    }
}

/// Runs `sgemm` on every supported tier (and, when `pools` is given, in each pool) and checks
/// every result against the oracle bit for bit.
#[allow(clippy::too_many_arguments)]
fn check_sgemm(
    m: usize,
    n: usize,
    k: usize,
    pads: [usize; 3],
    transposed: [bool; 2],
    accumulate: bool,
    seed: u64,
    threads: &[usize],
) {
    let (a, ars, acs) = operand(m, k, pads[0], transposed[0], seed);
    let (b, brs, bcs) = operand(k, n, pads[1], transposed[1], seed ^ 1);
    let a = Matrix { data: &a, row_stride: ars, col_stride: acs };
    let b = Matrix { data: &b, row_stride: brs, col_stride: bcs };
    let ldc = n + pads[2];
    let c0 = random_f32s(m * ldc, seed ^ 2);
    let mut expected = c0.clone();
    fma_chain(m, n, k, a, b, &mut expected, ldc, accumulate);
    for isa in Isa::supported() {
        for &t in threads {
            let mut c = c0.clone();
            thread_pool(t).install(|| float::sgemm(m, n, k, a, b, &mut c, ldc, accumulate, isa)).unwrap();
            assert_eq!(
                bits(&c),
                bits(&expected),
                "{m}x{n}x{k} pads {pads:?} {transposed:?} acc {accumulate} on {isa}, {t} threads"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn sgemm_is_the_fma_chain_on_every_tier(
        m in 1usize..70, n in 1usize..70, k in 1usize..70,
        pads in proptest::array::uniform3(0usize..4),
        transposed in proptest::array::uniform2(any::<bool>()),
        accumulate in any::<bool>(),
        seed in any::<u64>(),
    ) {
        check_sgemm(m, n, k, pads, transposed, accumulate, seed, &[1]);
    }
}

#[test]
fn long_and_wide_products_cross_the_k_and_column_blocks() {
    // K over several 256-step blocks (partial sums go through the output), N over several
    // column blocks, odd edges everywhere.
    check_sgemm(13, 1601, 530, [1, 3, 2], [false, false], true, 7, &[1]);
    check_sgemm(37, 51, 777, [0, 0, 0], [true, true], false, 8, &[1]);
}

#[test]
fn sgemm_bits_do_not_depend_on_the_thread_count() {
    // Large enough for the rayon split: by columns (wide), by rows (tall and narrow).
    check_sgemm(61, 999, 70, [0, 1, 0], [false, false], false, 9, &[1, 2]);
    check_sgemm(333, 17, 301, [2, 0, 1], [false, true], true, 10, &[1, 2]);
}

/// Runs `f` on every supported tier with one and two threads and checks all the bits agree.
fn same_everywhere(what: &str, f: impl Fn(Isa) -> Vec<f32> + Sync) {
    let reference = bits(&thread_pool(1).install(|| f(Isa::Scalar)));
    for isa in Isa::supported() {
        for t in [1, 2] {
            let got = bits(&thread_pool(t).install(|| f(isa)));
            assert!(got == reference, "{what}: {isa} with {t} threads differs from the scalar tier");
        }
    }
}

#[test]
fn every_conv_path_gives_the_same_bits_on_every_tier_and_thread_count() {
    // (channels, out channels, kernel, stride, padding, dilation, groups, side): pointwise,
    // im2col, the shifted per-tap path (wide, >= 32 channels; strided and dilated), depthwise,
    // grouped.
    let cases = [
        (19, 37, 1, 1, 0, 1, 1, 23),
        (5, 21, 3, 2, 1, 1, 1, 17),
        (33, 35, 3, 1, 1, 1, 1, 29),
        (40, 24, 3, 2, 1, 1, 1, 45),
        (36, 17, 3, 1, 2, 2, 1, 24),
        (24, 24, 3, 1, 1, 1, 24, 21),
        (24, 24, 5, 2, 2, 1, 24, 19),
        (12, 18, 3, 1, 1, 1, 3, 14),
    ];
    for (c, o, k, s, p, d, g, side) in cases {
        let (n, shape, wshape) = (2, [2, c, side, side + 1], [o, c / g, k, k]);
        let x = random_f32s(n * c * side * (side + 1), 11);
        let w = random_f32s(o * (c / g) * k * k, 12);
        let bias = random_f32s(o, 13);
        let params = ConvParams { stride: [s, s], padding: [p, p], dilation: [d, d], groups: g };
        let oshape = float::conv_output_shape(&shape, &wshape, &params).unwrap();
        same_everywhere(&format!("conv {c}->{o} k{k} s{s} p{p} d{d} g{g}"), |isa| {
            let mut out = vec![0.0; oshape.iter().product()];
            let mut scratch = ConvScratch::default();
            float::conv::<2>(&x, &shape, &w, &wshape, Some(&bias), &params, &mut out, &mut scratch, isa)
                .unwrap();
            out
        });
    }
    // 1-D and 3-D (im2col).
    let x = random_f32s(2 * 6 * 5 * 6 * 7, 14);
    let w = random_f32s(4 * 6 * 27, 15);
    same_everywhere("conv3d", |isa| {
        let params = ConvParams { stride: [1, 2, 1], padding: [1, 0, 1], dilation: [1; 3], groups: 1 };
        let mut out = vec![0.0; 2 * 4 * 5 * 2 * 7];
        let (shape, wshape) = ([2, 6, 5, 6, 7], [4, 6, 3, 3, 3]);
        float::conv::<3>(&x, &shape, &w, &wshape, None, &params, &mut out, &mut ConvScratch::default(), isa)
            .unwrap();
        out
    });
    same_everywhere("conv1d", |isa| {
        let params = ConvParams { stride: [2], padding: [1], dilation: [1], groups: 1 };
        let mut out = vec![0.0; 2 * 4 * 105];
        let mut scratch = ConvScratch::default();
        float::conv::<1>(
            &x[..2 * 6 * 210],
            &[2, 6, 210],
            &w[..4 * 6 * 3],
            &[4, 6, 3],
            None,
            &params,
            &mut out,
            &mut scratch,
            isa,
        )
        .unwrap();
        out
    });
}

#[test]
fn the_other_float_kernels_give_the_same_bits_on_every_tier_and_thread_count() {
    // Big enough for every kernel's rayon split.
    let shape = [2, 24, 37, 41];
    let len: usize = shape.iter().product();
    let x: Vec<f32> = random_f32s(len, 16).into_iter().map(|v| v * 4.0).collect();
    let stats = (random_f32s(24, 17), random_f32s(24, 18).into_iter().map(f32::abs).collect::<Vec<_>>());
    same_everywhere("batch_norm", |isa| {
        let mut out = vec![0.0; len];
        float::batch_norm(
            &x,
            &shape,
            &stats.0,
            &stats.1,
            Some(&stats.0),
            Some(&stats.1),
            1e-5,
            &mut out,
            isa,
        )
        .unwrap();
        out
    });
    for act in [
        Activation::Relu,
        Activation::Hardswish,
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Elu { alpha: 0.7 },
    ] {
        same_everywhere(&format!("{act:?}"), |isa| {
            let mut out = vec![0.0; len];
            float::activation(act, &x, &mut out, isa).unwrap();
            out
        });
    }
    same_everywhere("softmax", |isa| {
        let mut out = vec![0.0; len];
        float::softmax(&x, &shape, 1, &mut out, isa).unwrap();
        out
    });
    let window =
        Window { kernel: [3, 3], stride: [2, 2], padding: [1, 1], dilation: [1, 1], ceil_mode: false };
    for kind in [PoolKind::Max, PoolKind::Avg { count_include_pad: false, divisor_override: None }] {
        same_everywhere(&format!("{kind:?}"), |isa| {
            let mut out = vec![0.0; 2 * 24 * 19 * 21];
            float::pool2d(&x, &shape, &window, kind, &mut out, isa).unwrap();
            out
        });
    }
    same_everywhere("adaptive_avg_pool2d", |isa| {
        let mut out = vec![0.0; 2 * 24 * 5 * 7];
        float::adaptive_avg_pool2d(&x, &shape, [5, 7], &mut out, isa).unwrap();
        out
    });
}

/// The fma-chain oracle of a 2-D convolution (groups 1) in the order of its im2col path: from
/// the bias, over input channels, then kernel rows, then kernel columns, padding included as 0.
#[allow(clippy::too_many_arguments)]
fn conv_chain(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    wt: &[f32],
    [o, _, kh, kw]: [usize; 4],
    bias: &[f32],
    s: [usize; 2],
    p: [usize; 2],
    [oh, ow]: [usize; 2],
) -> Vec<f32> {
    let mut out = Vec::new();
    for b in 0..n {
        for oc in 0..o {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias[oc];
                    for ic in 0..c {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let (iy, ix) = (
                                    (oy * s[0] + ky).wrapping_sub(p[0]),
                                    (ox * s[1] + kx).wrapping_sub(p[1]),
                                );
                                let v =
                                    if iy < h && ix < w { x[((b * c + ic) * h + iy) * w + ix] } else { 0.0 };
                                acc = wt[((oc * c + ic) * kh + ky) * kw + kx].mul_add(v, acc);
                            }
                        }
                    }
                    out.push(acc);
                }
            }
        }
    }
    out
}

/// A fixed conv and linear layer whose output bits are committed (as a 64-bit FNV digest of the
/// bits, computed with the oracles): a change of summation order anywhere in these kernels shows
/// up here. The values are exact functions of the inputs, so they hold on every CPU.
#[test]
fn a_fixed_conv_and_linear_keep_their_committed_bits() {
    let x: Vec<f32> = (0..2 * 3 * 6 * 5).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
    let w: Vec<f32> = (0..4 * 3 * 3 * 3).map(|i| ((i * 53 % 89) as f32 - 44.0) / 31.0).collect();
    let lw: Vec<f32> = (0..5 * 7).map(|i| ((i * 29 % 61) as f32 - 30.0) / 13.0).collect();
    let bias = [0.25f32, -0.5, 0.125, 1.0];
    let params = ConvParams { stride: [1, 2], padding: [1, 1], dilation: [1, 1], groups: 1 };
    let oshape = float::conv_output_shape(&[2, 3, 6, 5], &[4, 3, 3, 3], &params).unwrap();
    let conv_oracle =
        conv_chain(&x, [2, 3, 6, 5], &w, [4, 3, 3, 3], &bias, [1, 2], [1, 1], [oshape[2], oshape[3]]);
    let mut linear_oracle = vec![0.0; 3 * 5];
    fma_chain(
        3,
        5,
        7,
        Matrix::row_major(&x[..21], 7),
        Matrix::transposed(&lw, 7),
        &mut linear_oracle,
        5,
        false,
    );
    let digest = |v: &[f32]| {
        v.iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, x| (h ^ u64::from(x.to_bits())).wrapping_mul(0x100_0000_01b3))
    };
    assert_eq!(
        (digest(&conv_oracle), digest(&linear_oracle)),
        (0xbe592a9cde18704f, 0x94bd3144e8e57658),
        "the committed bits"
    );
    for isa in Isa::supported() {
        let mut conv = vec![0.0; oshape.iter().product()];
        let mut scratch = ConvScratch::default();
        float::conv::<2>(
            &x,
            &[2, 3, 6, 5],
            &w,
            &[4, 3, 3, 3],
            Some(&bias),
            &params,
            &mut conv,
            &mut scratch,
            isa,
        )
        .unwrap();
        assert_eq!(bits(&conv), bits(&conv_oracle), "conv on {isa}");
        let mut linear = vec![0.0; 3 * 5];
        float::sgemm(
            3,
            5,
            7,
            Matrix::row_major(&x[..21], 7),
            Matrix::transposed(&lw, 7),
            &mut linear,
            5,
            false,
            isa,
        )
        .unwrap();
        assert_eq!(bits(&linear), bits(&linear_oracle), "linear on {isa}");
    }
}
