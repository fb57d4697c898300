//! Convolution against PyTorch's quantized Conv1d / Conv2d / Conv3d (and their ReLU fusions) on
//! the fbgemm engine, channels-last (`tools/golden/gen_kernels.py`), on every tier: equal
//! int_repr. Covered: 1x1, strided 1x1, 3x3, 7x7 stride 2, dilation, groups, reflect padding,
//! depthwise 3x3 / 5x5 (stride 1 and 2), conv1d (plain and depthwise), conv3d, per-tensor and
//! per-channel weights, with and without bias. The fixtures use 7-bit activations or weights in
//! [-64, 63], so FBGEMM's int16 pair saturation cannot occur.

mod gemm_common;

use gemm_common::{Fixture, fixture_qparams, scale_zp, usizes};
use qkernels::Isa;
use qkernels::conv::{ConvParams, PackedConv, PaddingMode};
use qkernels::gemm::Output;

#[test]
fn conv_matches_pytorch_fbgemm_on_every_tier() {
    let fx = Fixture::load("conv");
    assert!(fx.cases().len() >= 16, "{} cases", fx.cases().len());
    for case in fx.cases() {
        let name = case["name"].as_str().unwrap();
        let get = |k: &str| case[k].as_u64().unwrap() as usize;
        let params = ConvParams::new(get("in_channels"), get("out_channels"), &usizes(&case["kernel"]))
            .stride(&usizes(&case["stride"]))
            .padding(&usizes(&case["padding"]))
            .dilation(&usizes(&case["dilation"]))
            .groups(get("groups"))
            .padding_mode(match case["padding_mode"].as_str().unwrap() {
                "reflect" => PaddingMode::Reflect,
                _ => PaddingMode::Zeros,
            });
        let (a_scale, a_zp) = scale_zp(&case["a"]);
        let (out_scale, out_zp) = scale_zp(&case["out"]);
        let relu = case["relu"].as_bool().unwrap();
        let (x, w, want) = (fx.u8s(name, "x"), fx.i8s(name, "w"), fx.u8s(name, "q"));
        let bias = fx.f32s(name, "bias");
        let q = fixture_qparams(case);
        let input = usizes(&case["input"]);
        for isa in Isa::supported() {
            let conv = PackedConv::with_isa(params.clone(), &w, &q, bias.as_deref(), isa).unwrap();
            let p = conv.output_u8(a_scale, a_zp, out_scale, out_zp, relu).unwrap();
            let mut got = vec![0u8; want.len()];
            conv.run(&x, get("batch"), &input, &p, Output::U8(&mut got)).unwrap();
            let bad = got.iter().zip(&want).filter(|(g, e)| g != e).count();
            assert_eq!(bad, 0, "{name} on {isa}: {bad} of {} differ from PyTorch", want.len());
        }
    }
}
