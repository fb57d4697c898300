//! Quantized pooling and upsampling: every tier against a naive reference written from PyTorch's
//! definitions (property tests over shapes and windows), and bad input as typed errors.
// Naive references index like the formulas they transcribe.
#![allow(clippy::needless_range_loop)]

use proptest::prelude::*;
use qcore::{QDType, quantize_val};
use qkernels::elementwise::PerTensor;
use qkernels::pool::{self, AvgPool2d, PYTORCH_VECTOR_CHANNELS, Window};
use qkernels::{Isa, KernelError, MemoryFormat};
use qtest::random_bytes;

fn cfg() -> ProptestConfig {
    ProptestConfig { cases: 64, ..ProptestConfig::default() }
}

/// Naive max pooling over 3 spatial dims (D < 3 pads with size-1 dims), i64 arithmetic.
fn naive_max(x: &[u8], n: usize, sp: [usize; 3], c: usize, w: &Window<3>, osp: [usize; 3]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in 0..n {
        for oz in 0..osp[0] {
            for oy in 0..osp[1] {
                for ox in 0..osp[2] {
                    for ch in 0..c {
                        let mut m = 0u8;
                        for kz in 0..w.kernel[0] {
                            for ky in 0..w.kernel[1] {
                                for kx in 0..w.kernel[2] {
                                    let pos = [(oz, kz), (oy, ky), (ox, kx)]
                                        .iter()
                                        .enumerate()
                                        .map(|(i, &(o, k))| {
                                            (o * w.stride[i] + k * w.dilation[i]) as i64 - w.padding[i] as i64
                                        })
                                        .collect::<Vec<_>>();
                                    if pos.iter().zip(sp).all(|(&p, s)| p >= 0 && (p as usize) < s) {
                                        let idx = (((b * sp[0] + pos[0] as usize) * sp[1] + pos[1] as usize)
                                            * sp[2]
                                            + pos[2] as usize)
                                            * c
                                            + ch;
                                        m = m.max(x[idx]);
                                    }
                                }
                            }
                        }
                        out.push(m);
                    }
                }
            }
        }
    }
    out
}

fn window3() -> impl Strategy<Value = Window<3>> {
    (
        proptest::array::uniform3(1usize..4),
        proptest::array::uniform3(1usize..4),
        proptest::array::uniform3(0usize..2),
        proptest::array::uniform3(1usize..3),
        any::<bool>(),
    )
        .prop_map(|(kernel, stride, pad, dilation, ceil_mode)| {
            let padding = [0, 1, 2].map(|i| pad[i].min(kernel[i] / 2));
            Window { kernel, stride, padding, dilation, ceil_mode }
        })
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn max_pool_1d_2d_3d_equal_naive_on_every_tier(
        w in window3(),
        sp in proptest::array::uniform3(1usize..9),
        n in 1usize..3,
        c in 1usize..40,
        dims in 1usize..4,
        seed in any::<u64>(),
    ) {
        // Reduce to `dims` spatial dimensions by fixing the leading ones to size 1, window 1.
        let mut w = w;
        let mut sp = sp;
        for i in 0..3 - dims {
            sp[i] = 1;
            w.kernel[i] = 1; w.stride[i] = 1; w.padding[i] = 0; w.dilation[i] = 1;
        }
        let Ok(osp) = w.output_size("test", sp) else { return Ok(()) };
        let x = random_bytes(n * sp.iter().product::<usize>() * c, seed);
        let expected = naive_max(&x, n, sp, c, &w, osp);
        for isa in Isa::supported() {
            let mut out = vec![0u8; expected.len()];
            let shape = match dims {
                1 => {
                    let w1 = Window { kernel: [w.kernel[2]], stride: [w.stride[2]], padding: [w.padding[2]], dilation: [w.dilation[2]], ceil_mode: w.ceil_mode };
                    pool::max_pool1d(&x, &[n, sp[2], c], &w1, &mut out, isa).unwrap()
                }
                2 => {
                    let w2 = Window { kernel: [w.kernel[1], w.kernel[2]], stride: [w.stride[1], w.stride[2]], padding: [w.padding[1], w.padding[2]], dilation: [w.dilation[1], w.dilation[2]], ceil_mode: w.ceil_mode };
                    pool::max_pool2d(&x, &[n, sp[1], sp[2], c], &w2, &mut out, isa).unwrap()
                }
                _ => pool::max_pool3d(&x, &[n, sp[0], sp[1], sp[2], c], &w, &mut out, isa).unwrap(),
            };
            prop_assert_eq!(shape.iter().product::<usize>(), expected.len());
            prop_assert_eq!(&out, &expected, "{} dims on {}", dims, isa);
        }
    }

    #[test]
    fn max_pool_i8_equals_u8_order_mapped(
        sp in proptest::array::uniform2(2usize..9), c in 1usize..20, seed in any::<u64>(), k in 1usize..4,
    ) {
        // x -> x ^ 0x80 maps i8 order onto u8 order: pooling commutes with it.
        let w = Window { kernel: [k, k], stride: [1, 2], padding: [k / 2, 0], dilation: [1, 1], ceil_mode: true };
        let Ok(osp) = w.output_size("test", sp) else { return Ok(()) };
        let x = random_bytes(sp[0] * sp[1] * c, seed);
        let xi: Vec<i8> = x.iter().map(|&v| (v ^ 0x80) as i8).collect();
        let mut ou = vec![0u8; osp[0] * osp[1] * c];
        let mut oi = vec![0i8; ou.len()];
        for isa in Isa::supported() {
            pool::max_pool2d(&x, &[1, sp[0], sp[1], c], &w, &mut ou, isa).unwrap();
            pool::max_pool2d(&xi, &[1, sp[0], sp[1], c], &w, &mut oi, isa).unwrap();
            let mapped: Vec<i8> = ou.iter().map(|&v| (v ^ 0x80) as i8).collect();
            prop_assert_eq!(&oi, &mapped);
        }
    }

    #[test]
    fn avg_pool2d_equals_naive_on_every_tier(
        k in proptest::array::uniform2(1usize..5),
        s in proptest::array::uniform2(1usize..4),
        p in proptest::array::uniform2(0usize..3),
        sp in proptest::array::uniform2(1usize..10),
        c in 1usize..40,
        ceil_mode in any::<bool>(),
        count_include_pad in any::<bool>(),
        divisor in prop_oneof![Just(None), (1i64..20).prop_map(Some)],
        zp in 0i64..256,
        seed in any::<u64>(),
    ) {
        let padding = [p[0].min(k[0] / 2), p[1].min(k[1] / 2)];
        let window = Window { kernel: k, stride: s, padding, dilation: [1, 1], ceil_mode };
        let Ok(osp) = window.output_size("test", sp) else { return Ok(()) };
        let opts = AvgPool2d { window, count_include_pad, divisor_override: divisor };
        let q = PerTensor::new(0.05, zp);
        let x = random_bytes(sp[0] * sp[1] * c, seed);
        // Reference: PyTorch's _qavg_pool_nhwc_kernel and, for NCHW tensors, avg_pool2d_out_frame,
        // written out per element.
        let (mut expected, mut expected_nchw) = (Vec::new(), Vec::new());
        for oy in 0..osp[0] {
            for ox in 0..osp[1] {
                let (y0, x0) = ((oy * s[0]) as i64 - padding[0] as i64, (ox * s[1]) as i64 - padding[1] as i64);
                let (y1, x1) = ((y0 + k[0] as i64).min((sp[0] + padding[0]) as i64), (x0 + k[1] as i64).min((sp[1] + padding[1]) as i64));
                let pool_size = (y1 - y0) * (x1 - x0);
                let (y0, x0, y1, x1) = (y0.max(0), x0.max(0), y1.min(sp[0] as i64), x1.min(sp[1] as i64));
                let size = (y1 - y0) * (x1 - x0);
                let divide = divisor.unwrap_or(if count_include_pad { pool_size } else { size });
                let m = 0.05f32 / 0.05f32 / divide as f32;
                for ch in 0..c {
                    let mut acc = -(zp as i32) * size as i32;
                    for yy in y0..y1 { for xx in x0..x1 { acc += i32::from(x[((yy as usize) * sp[1] + xx as usize) * c + ch]); } }
                    let v = if ch < c - c % PYTORCH_VECTOR_CHANNELS {
                        ((acc as f32 * m).round_ties_even() as i32 + zp as i32).clamp(0, 255)
                    } else {
                        quantize_val(f64::from(1.0f32 / m), zp, acc as f32, QDType::QUInt8)
                    };
                    expected.push(v as u8);
                    let m_nchw = (1.0 / divide as f64) as f32;
                    let v = (acc as f32 * m_nchw + zp as f32).round_ties_even() as i32;
                    expected_nchw.push(v.clamp(0, 255) as u8);
                }
            }
        }
        for isa in Isa::supported() {
            let mut out = vec![0u8; expected.len()];
            pool::avg_pool2d(MemoryFormat::ChannelsLast, &x, &[1, sp[0], sp[1], c], q, &opts, &mut out, isa).unwrap();
            prop_assert_eq!(&out, &expected, "{}", isa);
            pool::avg_pool2d(MemoryFormat::Contiguous, &x, &[1, sp[0], sp[1], c], q, &opts, &mut out, isa).unwrap();
            prop_assert_eq!(&out, &expected_nchw, "{} NCHW", isa);
        }
    }

    #[test]
    fn adaptive_pool_and_upsampling_agree_across_tiers(
        sp in proptest::array::uniform2(1usize..12),
        osz in proptest::array::uniform2(1usize..15),
        c in 1usize..40,
        n in 1usize..3,
        align_corners in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let q = PerTensor::new(0.1, 9);
        let x = random_bytes(n * sp[0] * sp[1] * c, seed);
        let shape = [n, sp[0], sp[1], c];
        let len = n * osz[0] * osz[1] * c;
        let run = |isa: Isa| {
            let mut a = vec![0u8; len];
            let mut b = vec![0u8; len];
            let mut d = vec![0u8; len];
            let mut e = vec![0u8; len];
            pool::adaptive_avg_pool2d(&x, &shape, q, osz, &mut a, isa).unwrap();
            pool::upsample_nearest2d(&x, &shape, osz, &mut b, isa).unwrap();
            pool::upsample_bilinear2d(MemoryFormat::ChannelsLast, &x, &shape, q, osz, align_corners, &mut d, isa).unwrap();
            let nchw = MemoryFormat::Contiguous;
            pool::upsample_bilinear2d(nchw, &x, &shape, q, osz, align_corners, &mut e, isa).unwrap();
            (a, b, d, e)
        };
        let reference = run(Isa::Scalar);
        // Adaptive pooling of a constant image is that constant; so is bilinear resampling.
        let constant = vec![77u8; x.len()];
        let mut a = vec![0u8; len];
        pool::adaptive_avg_pool2d(&constant, &shape, q, osz, &mut a, Isa::Scalar).unwrap();
        prop_assert!(a.iter().all(|&v| v == 77));
        for format in [MemoryFormat::ChannelsLast, MemoryFormat::Contiguous] {
            pool::upsample_bilinear2d(format, &constant, &shape, q, osz, align_corners, &mut a, Isa::Scalar).unwrap();
            prop_assert!(a.iter().all(|&v| v == 77));
        }
        // Nearest: every output pixel is some input pixel of the same batch.
        for isa in Isa::supported() {
            prop_assert_eq!(&run(isa), &reference, "{}", isa);
        }
        // Upsampling to the input size is the identity.
        let mut same = vec![0u8; x.len()];
        pool::upsample_nearest2d(&x, &shape, sp, &mut same, Isa::Scalar).unwrap();
        prop_assert_eq!(&same, &x);
        for format in [MemoryFormat::ChannelsLast, MemoryFormat::Contiguous] {
            pool::upsample_bilinear2d(format, &x, &shape, q, sp, align_corners, &mut same, Isa::Scalar).unwrap();
            prop_assert_eq!(&same, &x);
        }
    }
}

#[test]
fn max_pool_with_more_than_64_taps_equals_naive() {
    // 9 x 9 = 81 taps takes the kernel's heap tap list instead of its stack one.
    let (h, w, c) = (12, 11, 70);
    let x = random_bytes(h * w * c, 17);
    let win = Window { kernel: [9, 9], stride: [2, 1], padding: [4, 3], dilation: [1, 1], ceil_mode: true };
    let osp = win.output_size("test", [h, w]).unwrap();
    let w3 = Window {
        kernel: [1, 9, 9],
        stride: [1, 2, 1],
        padding: [0, 4, 3],
        dilation: [1, 1, 1],
        ceil_mode: true,
    };
    let expected = naive_max(&x, 1, [1, h, w], c, &w3, [1, osp[0], osp[1]]);
    for isa in Isa::supported() {
        let mut out = vec![0u8; expected.len()];
        pool::max_pool2d(&x, &[1, h, w, c], &win, &mut out, isa).unwrap();
        assert_eq!(out, expected, "{isa}");
    }
}

#[test]
fn adaptive_avg_pool1d_matches_2d_with_height_one() {
    let x = random_bytes(2 * 13 * 5, 3);
    let q = PerTensor::new(0.2, 4);
    let mut a = vec![0u8; 2 * 4 * 5];
    let mut b = a.clone();
    assert_eq!(
        pool::adaptive_avg_pool1d(&x, &[2, 13, 5], q, 4, &mut a, Isa::detect()).unwrap(),
        vec![2, 4, 5]
    );
    pool::adaptive_avg_pool2d(&x, &[2, 1, 13, 5], q, [1, 4], &mut b, Isa::detect()).unwrap();
    assert_eq!(a, b);
}

#[test]
fn bad_pooling_input_is_a_typed_error() {
    let x = [0u8; 2 * 4 * 4 * 3];
    let shape = [2, 4, 4, 3];
    let mut out = vec![0u8; 1000];
    let isa = Isa::Scalar;
    let q = PerTensor::new(0.1, 0);
    let w = |k: usize, s: usize, p: usize| Window {
        kernel: [k, k],
        stride: [s, s],
        padding: [p, p],
        dilation: [1, 1],
        ceil_mode: false,
    };
    // Padding larger than half the kernel.
    let err = pool::max_pool2d(&x, &shape, &w(2, 1, 2), &mut out, isa).unwrap_err();
    assert!(matches!(err, KernelError::InvalidArgument { what: "padding", .. }), "{err}");
    // A window larger than the padded input: empty output.
    let err = pool::max_pool2d(&x, &shape, &w(7, 1, 1), &mut out, isa).unwrap_err();
    assert!(matches!(err, KernelError::InvalidArgument { what: "output size", .. }), "{err}");
    let err = pool::avg_pool2d(
        MemoryFormat::ChannelsLast,
        &x,
        &shape,
        q,
        &AvgPool2d { window: w(6, 1, 0), count_include_pad: true, divisor_override: None },
        &mut out,
        isa,
    )
    .unwrap_err();
    assert!(matches!(err, KernelError::InvalidArgument { what: "output size", .. }), "{err}");
    // Zero stride / kernel / divisor.
    assert!(pool::max_pool2d(&x, &shape, &w(2, 0, 0), &mut out, isa).is_err());
    assert!(pool::max_pool2d(&x, &shape, &w(0, 1, 0), &mut out, isa).is_err());
    let err = pool::avg_pool2d(
        MemoryFormat::ChannelsLast,
        &x,
        &shape,
        q,
        &AvgPool2d { window: w(2, 1, 0), count_include_pad: true, divisor_override: Some(0) },
        &mut out,
        isa,
    )
    .unwrap_err();
    assert!(matches!(err, KernelError::InvalidArgument { what: "divisor_override", .. }), "{err}");
    // Wrong output length, wrong rank, wrong input length.
    let err = pool::max_pool2d(&x, &shape, &w(2, 2, 0), &mut out, isa).unwrap_err();
    assert!(
        matches!(err, KernelError::ShapeMismatch { what: "output length", got: 1000, expected: 24, .. }),
        "{err}"
    );
    assert!(pool::max_pool2d(&x, &[2, 16, 3], &w(2, 2, 0), &mut out[..24], isa).is_err());
    assert!(pool::max_pool2d(&x[1..], &shape, &w(2, 2, 0), &mut out[..24], isa).is_err());
    // Zero sizes and bad qparams.
    assert!(pool::adaptive_avg_pool2d(&x, &shape, q, [0, 2], &mut out, isa).is_err());
    assert!(pool::upsample_nearest2d(&x, &shape, [2, 0], &mut out, isa).is_err());
    assert!(
        pool::upsample_bilinear2d(
            MemoryFormat::ChannelsLast,
            &x,
            &shape,
            PerTensor::new(-1.0, 0),
            [2, 2],
            false,
            &mut out[..24],
            isa
        )
        .is_err()
    );
    assert!(pool::max_pool2d(&[] as &[u8], &[0, 4, 4, 0], &w(2, 2, 0), &mut [], isa).is_err());
}

proptest! {
    #![proptest_config(cfg())]

    /// `taps_inside` is exactly the kernel offsets whose input index lies inside the input.
    #[test]
    fn taps_inside_are_the_taps_within_the_input(
        (n, k, s, d) in (1usize..12, 1usize..9, 1usize..4, 1usize..4),
        p_frac in 0usize..5,
    ) {
        let p = (k / 2) * p_frac / 4;
        let w = Window { kernel: [k], stride: [s], padding: [p], dilation: [d], ceil_mode: false };
        let Ok([out]) = w.output_size("test", [n]) else { return Ok(()) };
        for o in 0..out {
            let inside: Vec<usize> = (0..k)
                .filter(|&t| (0..n as i64).contains(&((o * s + t * d) as i64 - p as i64)))
                .collect();
            prop_assert_eq!(w.taps_inside(0, o, n).collect::<Vec<_>>(), inside);
        }
    }
}

/// A window of 2^31 - 1 taps padded by 2^30 - 1 pools a small input as fast as a small window
/// (only the taps inside the input are visited), and larger sizes are errors.
#[test]
fn huge_windows_visit_the_input_only() {
    let big = pool::MAX_WINDOW;
    let w = Window {
        kernel: [big, big],
        stride: [1, 1],
        padding: [big / 2, big / 2],
        dilation: [1, 1],
        ceil_mode: false,
    };
    let x = random_bytes(2 * 3 * 3 * 4, 3);
    let osp = w.output_size("test", [3, 3]).unwrap();
    assert_eq!(osp, [3, 3]);
    let mut out = vec![0u8; 2 * 9 * 4];
    pool::max_pool2d(&x, &[2, 3, 3, 4], &w, &mut out, Isa::Scalar).unwrap();
    // Every window covers the whole 3 x 3 input.
    for b in 0..2 {
        for c in 0..4 {
            let max = (0..9).map(|i| x[(b * 9 + i) * 4 + c]).max().unwrap();
            assert!((0..9).all(|i| out[(b * 9 + i) * 4 + c] == max));
        }
    }
    let too_big = Window { kernel: [big + 1, 2], ..w };
    assert!(matches!(
        too_big.output_size("test", [3, 3]),
        Err(KernelError::InvalidArgument { what: "kernel_size", .. })
    ));
}
