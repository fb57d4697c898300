//! Convolution: every path (depthwise, pointwise, im2col; 1-3 D; stride, padding, dilation,
//! groups, reflect) on every tier this CPU supports against the scalar oracle, bit for bit, thread
//! invariance, and typed errors for bad input.

mod gemm_common;

use gemm_common::{RefConv, Rng, appends, dequant_f32, requant_u8, scales_and_zps};
use proptest::prelude::*;
use qkernels::conv::{ConvParams, PackedConv, PaddingMode};
use qkernels::gemm::{Output, WeightQParams};
use qkernels::{Isa, KernelError};

/// A convolution problem with data and quantization parameters.
#[derive(Debug, Clone)]
struct Case {
    geo: RefConv,
    rank: usize,
    input: Vec<u8>,
    weights: Vec<i8>,
    q: WeightQParams,
    bias: Option<Vec<f32>>,
    a_zp: u8,
    relu: bool,
}

impl Case {
    fn new(mut geo: RefConv, rank: usize, rng: &mut Rng, a_max: u8, w_zp: bool) -> Self {
        // Axes in front of the convolution's rank are size-1 axes without padding.
        for ax in 0..3 - rank {
            (geo.in3[ax], geo.kernel[ax], geo.stride[ax], geo.pad[ax], geo.dilation[ax]) = (1, 1, 1, 0, 1);
        }
        let taps: usize = geo.kernel.iter().product();
        let pixels: usize = geo.batch * geo.in3.iter().product::<usize>();
        let input = rng.u8s(pixels * geo.c, a_max);
        let weights = rng.i8s(geo.oc * geo.c / geo.groups * taps, -128, 127);
        let q = if rng.next().is_multiple_of(2) {
            let scales = (0..geo.oc).map(|_| 0.001 + (rng.next() % 1000) as f64 * 1e-5).collect();
            let zero_points =
                (0..geo.oc).map(|_| if w_zp { (rng.next() % 21) as i32 - 10 } else { 0 }).collect();
            WeightQParams::PerChannel { scales, zero_points }
        } else {
            WeightQParams::PerTensor {
                scale: 0.003,
                zero_point: if w_zp { (rng.next() % 21) as i32 - 10 } else { 0 },
            }
        };
        let bias = (!rng.next().is_multiple_of(3)).then(|| rng.f32s(geo.oc, 2.0));
        let (a_zp, relu) = ((rng.next() % 256) as u8, rng.next().is_multiple_of(2));
        Self { geo, rank, input, weights, q, bias, a_zp, relu }
    }

    fn params(&self) -> ConvParams {
        let r = 3 - self.rank;
        let g = &self.geo;
        ConvParams::new(g.c, g.oc, &g.kernel[r..])
            .stride(&g.stride[r..])
            .padding(&g.pad[r..])
            .dilation(&g.dilation[r..])
            .groups(g.groups)
            .padding_mode(if g.reflect { PaddingMode::Reflect } else { PaddingMode::Zeros })
    }

    fn check(&self, isa: Isa) -> Result<(), String> {
        let g = &self.geo;
        let conv =
            PackedConv::with_isa(self.params(), &self.weights, &self.q, self.bias.as_deref(), isa).unwrap();
        assert_eq!(conv.isa(), isa);
        let (_, zps, _) = scales_and_zps(&self.q, g.oc);
        let acc = g.acc(&self.input, &self.weights, self.a_zp, &zps);
        let in_spatial = &g.in3[3 - self.rank..];
        let out_spatial = self.params().output_spatial(in_spatial).unwrap();
        assert_eq!(out_spatial, g.out3()[3 - self.rank..].to_vec());
        let ctx = |what: &str| format!("{what} on {isa} ({}): {:?}", path(&conv), g);

        let p = conv.output_i32(self.a_zp);
        let mut got = vec![0i32; acc.len()];
        conv.run(&self.input, g.batch, in_spatial, &p, Output::I32(&mut got)).unwrap();
        if got != acc {
            let i = got.iter().zip(&acc).position(|(a, b)| a != b).unwrap();
            return Err(format!("{} at {i}: {} vs {}", ctx("i32"), got[i], acc[i]));
        }

        let (a_scale, out_scale, out_zp) = (0.03, 0.02 * (g.c as f64).sqrt(), 77u8);
        let p = conv.output_u8(a_scale, self.a_zp, out_scale, out_zp, self.relu).unwrap();
        let mut got = vec![0u8; acc.len()];
        conv.run(&self.input, g.batch, in_spatial, &p, Output::U8(&mut got)).unwrap();
        let want =
            requant_u8(&acc, g.oc, &self.q, self.bias.as_deref(), a_scale, out_scale, out_zp, self.relu);
        if got != want {
            return Err(ctx("u8"));
        }
        if !appends(&want, |out| conv.run(&self.input, g.batch, in_spatial, &p, out).unwrap()) {
            return Err(ctx("u8 appended"));
        }

        // A range around the output zero point, replacing the ReLU floor: the oracle without
        // ReLU, clamped.
        let p = p.with_range(60, 100).unwrap();
        conv.run(&self.input, g.batch, in_spatial, &p, Output::U8(&mut got)).unwrap();
        let want = requant_u8(&acc, g.oc, &self.q, self.bias.as_deref(), a_scale, out_scale, out_zp, false);
        if got.iter().zip(&want).any(|(&g, &e)| g != e.clamp(60, 100)) {
            return Err(ctx("u8 in [60, 100]"));
        }

        let p = conv.output_f32(a_scale, self.a_zp, self.relu).unwrap();
        let mut got = vec![0f32; acc.len()];
        conv.run(&self.input, g.batch, in_spatial, &p, Output::F32(&mut got)).unwrap();
        let want = dequant_f32(&acc, g.oc, &self.q, self.bias.as_deref(), a_scale, self.relu);
        if got.iter().map(|x| x.to_bits()).ne(want.iter().map(|x| x.to_bits())) {
            return Err(ctx("f32"));
        }
        Ok(())
    }
}

fn path(conv: &PackedConv) -> &'static str {
    if conv.is_depthwise() {
        "depthwise"
    } else if conv.is_pointwise() {
        "pointwise"
    } else if conv.is_implicit() {
        "implicit"
    } else {
        "im2col"
    }
}

#[allow(clippy::too_many_arguments)]
fn geo(
    batch: usize,
    c: usize,
    oc: usize,
    groups: usize,
    in3: [usize; 3],
    kernel: [usize; 3],
    stride: [usize; 3],
    pad: [usize; 3],
    dilation: [usize; 3],
    reflect: bool,
) -> RefConv {
    RefConv { batch, c, oc, groups, in3, kernel, stride, pad, dilation, reflect }
}

fn check_all_tiers(case: &Case) {
    for isa in Isa::supported() {
        case.check(isa).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Named cases covering every path and option, each on every tier.
#[test]
fn battery_of_conv_variants_on_every_tier() {
    let mut rng = Rng(7);
    let cases: Vec<(usize, RefConv)> = vec![
        // Pointwise, groups 1 and 2, batch 2, channel tails.
        (2, geo(2, 16, 32, 1, [1, 5, 7], [1, 1, 1], [1, 1, 1], [0, 0, 0], [1, 1, 1], false)),
        (2, geo(1, 6, 10, 2, [1, 4, 3], [1, 1, 1], [1, 1, 1], [0, 0, 0], [1, 1, 1], false)),
        (2, geo(1, 67, 33, 1, [1, 3, 3], [1, 1, 1], [1, 1, 1], [0, 0, 0], [1, 1, 1], false)),
        // Strided 1x1 (downsample), 3x3 padded, 3x3 stride 2, 7x7 stride 2 on 3 channels.
        (2, geo(1, 8, 16, 1, [1, 7, 7], [1, 1, 1], [1, 2, 2], [0, 0, 0], [1, 1, 1], false)),
        (2, geo(1, 8, 40, 1, [1, 6, 5], [1, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], false)),
        (2, geo(2, 5, 7, 1, [1, 9, 8], [1, 3, 3], [1, 2, 2], [1, 1, 1], [1, 1, 1], false)),
        (2, geo(1, 3, 64, 1, [1, 16, 16], [1, 7, 7], [1, 2, 2], [1, 3, 3], [1, 1, 1], false)),
        // AMX tiles (K >= 128, N >= 32 per group): im2col rows with a partial last K step, and
        // grouped pointwise rows whose last K step must not be read past the group's channels.
        (2, geo(1, 20, 48, 1, [1, 6, 6], [1, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], false)),
        (2, geo(1, 272, 80, 2, [1, 5, 5], [1, 1, 1], [1, 1, 1], [0, 0, 0], [1, 1, 1], false)),
        // Implicit GEMM on AMX (64-channel steps, stride 1): 3x3 with a panel tail, asymmetric
        // padding and batch 2, 1x3 unpadded, 5x5, an image of exactly one tile of rows' worth
        // (4x4: 22 rows) and one too small for a tile (3x3: 13 rows, im2col).
        (2, geo(1, 64, 40, 1, [1, 6, 6], [1, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], false)),
        (2, geo(2, 128, 64, 1, [1, 9, 5], [1, 3, 3], [1, 1, 1], [1, 1, 2], [1, 1, 1], false)),
        (2, geo(1, 64, 32, 1, [1, 3, 20], [1, 1, 3], [1, 1, 1], [1, 0, 0], [1, 1, 1], false)),
        (2, geo(1, 64, 33, 1, [1, 7, 7], [1, 5, 5], [1, 1, 1], [1, 2, 2], [1, 1, 1], false)),
        (2, geo(1, 64, 64, 1, [1, 4, 4], [1, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], false)),
        (2, geo(1, 64, 64, 1, [1, 3, 3], [1, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], false)),
        // Dilation, asymmetric kernel, groups, reflect.
        (2, geo(1, 4, 6, 1, [1, 9, 9], [1, 3, 2], [1, 1, 2], [2, 2, 1], [1, 2, 3], false)),
        (2, geo(1, 12, 18, 3, [1, 6, 6], [1, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], false)),
        (2, geo(1, 5, 9, 1, [1, 6, 7], [1, 3, 3], [1, 1, 2], [1, 2, 2], [1, 1, 1], true)),
        // Depthwise 3x3 and 5x5, stride 1 and 2, channel tails, reflect, dilation, batch 2.
        (2, geo(1, 32, 32, 32, [1, 8, 8], [1, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], false)),
        (2, geo(2, 19, 19, 19, [1, 9, 7], [1, 3, 3], [1, 2, 2], [1, 1, 1], [1, 1, 1], false)),
        (2, geo(1, 40, 40, 40, [1, 9, 9], [1, 5, 5], [1, 1, 1], [2, 2, 2], [1, 1, 1], false)),
        (2, geo(1, 17, 17, 17, [1, 10, 11], [1, 5, 5], [1, 2, 2], [2, 2, 2], [1, 1, 1], true)),
        (2, geo(1, 8, 8, 8, [1, 9, 9], [1, 3, 3], [1, 1, 1], [2, 2, 2], [1, 2, 2], false)),
        // Depthwise with a channel multiplier runs through the grouped GEMM.
        (2, geo(1, 4, 8, 4, [1, 5, 5], [1, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], false)),
        // conv1d and conv3d, including depthwise and reflect.
        (1, geo(2, 7, 9, 1, [1, 1, 20], [1, 1, 5], [1, 1, 2], [0, 0, 2], [1, 1, 1], false)),
        (1, geo(1, 8, 8, 8, [1, 1, 15], [1, 1, 3], [1, 1, 1], [0, 0, 1], [1, 1, 1], true)),
        (3, geo(1, 4, 6, 1, [4, 5, 5], [3, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], false)),
        (3, geo(1, 16, 16, 16, [3, 4, 4], [3, 3, 3], [2, 1, 1], [1, 1, 1], [1, 1, 1], false)),
        // conv3d with one depth tap: each depth slice is an image of the implicit GEMM.
        (3, geo(2, 64, 48, 1, [3, 5, 5], [1, 3, 3], [1, 1, 1], [0, 1, 1], [1, 1, 1], false)),
        (3, geo(1, 6, 4, 2, [3, 4, 5], [2, 2, 2], [1, 2, 1], [1, 0, 1], [1, 1, 2], true)),
    ];
    for (rank, g) in cases {
        for (a_max, w_zp) in [(255, false), (127, false), (255, true)] {
            check_all_tiers(&Case::new(g.clone(), rank, &mut rng, a_max, w_zp));
        }
    }
}

fn arb_case() -> impl Strategy<Value = Case> {
    (
        1usize..=3,
        1usize..=3,
        1usize..=12,
        1usize..=12,
        prop::sample::select(vec![1usize, 2, 3, 0]),
        any::<u64>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_flat_map(|(rank, batch, cg, ocg, groups_sel, seed, reflect, w_zp)| {
            let axis = (1usize..=3, 1usize..=2, 0usize..=2, 1usize..=2, 0usize..=5);
            (Just((rank, batch, cg, ocg, groups_sel, seed, reflect, w_zp)), prop::array::uniform3(axis))
        })
        .prop_map(|((rank, batch, cg, ocg, groups_sel, seed, reflect, w_zp), axes)| {
            // groups_sel 0 means depthwise.
            let (groups, c, oc) = if groups_sel == 0 {
                (cg * 3, cg * 3, cg * 3)
            } else {
                (groups_sel, cg * groups_sel, ocg * groups_sel)
            };
            let mut g = geo(batch, c, oc, groups, [1; 3], [1; 3], [1; 3], [0; 3], [1; 3], reflect);
            for (ax, &(k, s, p, d, extra)) in axes.iter().enumerate().skip(3 - rank) {
                let span = d * (k - 1) + 1;
                // The input covers the dilated kernel; reflect padding stays below the input size.
                let len = span.max(p + 1) + extra;
                g.kernel[ax] = k;
                g.stride[ax] = s;
                g.pad[ax] = p;
                g.dilation[ax] = d;
                g.in3[ax] = len;
            }
            let mut rng = Rng(seed | 1);
            let a_max = if seed.is_multiple_of(3) { 127 } else { 255 };
            Case::new(g, rank, &mut rng, a_max, w_zp)
        })
}

/// Stride-1 2-D convolutions over whole 64-channel steps (the implicit GEMM's layers on AMX,
/// im2col elsewhere or with weight zero points).
fn arb_implicit_case() -> impl Strategy<Value = Case> {
    (
        1usize..=2,
        1usize..=2,
        1usize..=70,
        prop::array::uniform2((1usize..=5, 0usize..=2, 0usize..=9)),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(batch, steps, oc, axes, seed, w_zp)| {
            let mut g = geo(batch, 64 * steps, oc, 1, [1; 3], [1; 3], [1; 3], [0; 3], [1; 3], false);
            for (ax, (k, p, extra)) in axes.into_iter().enumerate() {
                g.kernel[ax + 1] = k;
                g.pad[ax + 1] = p.min(k - 1);
                g.in3[ax + 1] = k + extra;
            }
            let mut rng = Rng(seed | 1);
            Case::new(g, 2, &mut rng, 255, w_zp && seed.is_multiple_of(4))
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn every_tier_matches_the_oracle(case in arb_case()) {
        for isa in Isa::supported() {
            let result = case.check(isa);
            prop_assert!(result.is_ok(), "{:?}", result);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn implicit_gemm_layers_match_the_oracle(case in arb_implicit_case()) {
        for isa in Isa::supported() {
            let result = case.check(isa);
            prop_assert!(result.is_ok(), "{:?}", result);
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let mut rng = Rng(99);
    let cases = [
        geo(2, 32, 64, 1, [1, 20, 20], [1, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], false),
        geo(1, 96, 96, 96, [1, 40, 40], [1, 3, 3], [1, 2, 2], [1, 1, 1], [1, 1, 1], false),
        geo(1, 64, 256, 1, [1, 28, 28], [1, 1, 1], [1, 1, 1], [0, 0, 0], [1, 1, 1], false),
        geo(1, 256, 512, 1, [1, 7, 7], [1, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], false),
        geo(2, 64, 64, 1, [1, 20, 20], [1, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], false),
        geo(1, 128, 96, 1, [1, 9, 14], [1, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], false),
    ];
    for (i, g) in cases.into_iter().enumerate() {
        // The last two without weight zero points, so that AMX runs them as an implicit GEMM.
        let case = Case::new(g, 2, &mut rng, 255, i < 4);
        let g = case.geo.clone();
        let (_, zps, _) = scales_and_zps(&case.q, g.oc);
        let acc = g.acc(&case.input, &case.weights, case.a_zp, &zps);
        for isa in Isa::supported() {
            let conv = PackedConv::with_isa(case.params(), &case.weights, &case.q, case.bias.as_deref(), isa)
                .unwrap();
            let p = conv.output_u8(0.02, case.a_zp, 0.5, 100, case.relu).unwrap();
            let pi = conv.output_i32(case.a_zp);
            let mut first: Option<Vec<u8>> = None;
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let (mut out, mut raw) = (vec![0u8; acc.len()], vec![0i32; acc.len()]);
                pool.install(|| {
                    conv.run(&case.input, g.batch, &g.in3[1..], &p, Output::U8(&mut out)).unwrap();
                    conv.run(&case.input, g.batch, &g.in3[1..], &pi, Output::I32(&mut raw)).unwrap();
                });
                assert_eq!(raw, acc, "{isa} {threads} threads {g:?}");
                match &first {
                    None => first = Some(out),
                    Some(f) => assert_eq!(&out, f, "{isa} {threads} threads {g:?}"),
                }
            }
        }
    }
}

#[test]
fn paths_are_chosen_as_documented() {
    let q = WeightQParams::per_tensor(0.1);
    let dw = PackedConv::new(ConvParams::new(8, 8, &[3, 3]).groups(8), &[1; 72], &q, None).unwrap();
    assert!(dw.is_depthwise() && !dw.is_pointwise());
    let pw = PackedConv::new(ConvParams::new(8, 4, &[1, 1]), &[1; 32], &q, None).unwrap();
    assert!(pw.is_pointwise() && !pw.is_depthwise());
    let strided =
        PackedConv::new(ConvParams::new(8, 4, &[1, 1]).stride(&[2, 2]), &[1; 32], &q, None).unwrap();
    assert!(!strided.is_pointwise() && !strided.is_depthwise());
    assert_eq!(pw.isa(), Isa::active());
    assert_eq!(pw.params().in_channels, 8);
    // The implicit GEMM, on every tier: whole 64-channel steps, stride 1, no weight zero points.
    for isa in Isa::supported() {
        let pack = |c: usize, stride: usize, q: &WeightQParams| {
            let p = ConvParams::new(c, 32, &[3, 3]).stride(&[stride, stride]).padding(&[1, 1]);
            PackedConv::with_isa(p, &vec![1; 32 * c * 9], q, None, isa).unwrap()
        };
        assert!(pack(64, 1, &q).is_implicit(), "{isa}");
        assert!(!pack(96, 1, &q).is_implicit() && !pack(64, 2, &q).is_implicit());
        let with_zp = WeightQParams::PerTensor { scale: 0.1, zero_point: 3 };
        assert!(!pack(128, 1, &with_zp).is_implicit());
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let q = WeightQParams::per_tensor(0.1);
    let shape = |e: KernelError| matches!(e, KernelError::ShapeMismatch { .. });
    let invalid = |e: KernelError| matches!(e, KernelError::InvalidArgument { .. });
    for isa in Isa::supported() {
        let pack = |p: ConvParams, w: &[i8]| PackedConv::with_isa(p, w, &q, None, isa);
        // Geometry errors at packing.
        assert!(invalid(pack(ConvParams::new(6, 4, &[3, 3]).groups(4), &[0; 4 * 9]).unwrap_err()));
        assert!(invalid(pack(ConvParams::new(6, 4, &[3, 3]).groups(3), &[0; 4 * 18]).unwrap_err()));
        assert!(invalid(pack(ConvParams::new(0, 4, &[3]), &[]).unwrap_err()));
        assert!(invalid(pack(ConvParams::new(2, 4, &[]), &[0; 8]).unwrap_err()));
        assert!(invalid(pack(ConvParams::new(2, 4, &[1, 1, 1, 1]), &[0; 8]).unwrap_err()));
        assert!(invalid(pack(ConvParams::new(2, 4, &[3, 0]), &[]).unwrap_err()));
        assert!(invalid(pack(ConvParams::new(2, 4, &[3, 3]).stride(&[0, 1]), &[0; 72]).unwrap_err()));
        assert!(shape(pack(ConvParams::new(2, 4, &[3, 3]).stride(&[1]), &[0; 72]).unwrap_err()));
        assert!(shape(pack(ConvParams::new(2, 4, &[3, 3]), &[0; 71]).unwrap_err()));
        assert!(shape(
            PackedConv::with_isa(ConvParams::new(2, 4, &[1]), &[0; 8], &q, Some(&[0.0; 3]), isa).unwrap_err()
        ));

        let conv = pack(ConvParams::new(2, 4, &[3, 3]).padding(&[1, 1]), &[1; 72]).unwrap();
        let p = conv.output_u8(0.1, 0, 0.1, 0, false).unwrap();
        let x = vec![1u8; 2 * 5 * 5];
        let mut out = vec![0u8; 4 * 25];
        conv.run(&x, 1, &[5, 5], &p, Output::U8(&mut out)).unwrap();
        // Channel count (input length) mismatch, wrong rank, zero sizes, output size and kind.
        assert!(shape(conv.run(&x[..49], 1, &[5, 5], &p, Output::U8(&mut out)).unwrap_err()));
        assert!(shape(conv.run(&x, 2, &[5, 5], &p, Output::U8(&mut out)).unwrap_err()));
        assert!(shape(conv.run(&x, 1, &[5, 5, 1], &p, Output::U8(&mut out)).unwrap_err()));
        assert!(invalid(conv.run(&[], 0, &[5, 5], &p, Output::U8(&mut out)).unwrap_err()));
        assert!(invalid(conv.run(&[], 1, &[0, 5], &p, Output::U8(&mut out)).unwrap_err()));
        assert!(shape(conv.run(&x, 1, &[5, 5], &p, Output::U8(&mut out[..99])).unwrap_err()));
        assert!(invalid(conv.run(&x, 1, &[5, 5], &p, Output::F32(&mut [0.0; 100])).unwrap_err()));
        // A kernel larger than the padded input; reflect padding not below the input size.
        let big = pack(ConvParams::new(2, 4, &[3, 3]), &[1; 72]).unwrap();
        let pb = big.output_u8(0.1, 0, 0.1, 0, false).unwrap();
        assert!(invalid(big.run(&x[..8], 1, &[2, 2], &pb, Output::U8(&mut [])).unwrap_err()));
        let refl = pack(
            ConvParams::new(2, 4, &[3, 3]).padding(&[2, 2]).padding_mode(PaddingMode::Reflect),
            &[1; 72],
        )
        .unwrap();
        let pr = refl.output_u8(0.1, 0, 0.1, 0, false).unwrap();
        assert!(invalid(refl.run(&x[..8], 1, &[2, 2], &pr, Output::U8(&mut [0; 16])).unwrap_err()));
        // A pipeline of another convolution.
        assert!(invalid(conv.run(&x, 1, &[5, 5], &pr, Output::U8(&mut out)).unwrap_err()));
        // Depthwise with a wrong channel count.
        let dw = pack(ConvParams::new(4, 4, &[3]).groups(4), &[1; 12]).unwrap();
        let pd = dw.output_u8(0.1, 0, 0.1, 0, true).unwrap();
        assert!(shape(dw.run(&[0; 15], 1, &[5], &pd, Output::U8(&mut [0; 12])).unwrap_err()));
        dw.run(&[0; 20], 1, &[5], &pd, Output::U8(&mut [0; 12])).unwrap();
    }
}
