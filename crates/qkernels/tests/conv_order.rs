//! `float::conv2d_onednn` against PyTorch 2.15's float `conv2d` (oneDNN's AVX-512 direct kernel,
//! `tools/golden/gen_conv_order.py`): the same bits on every case, on every tier and with one and
//! two threads. The digits QAT model's three layers, partial channel blocks, stride 2, a 5x5
//! kernel, groups, no bias.

use ndarray::{ArrayD, IxDyn};
use qkernels::Isa;
use qkernels::float::{self, ConvParams, ConvScratch};
use qtest::{Fixture, assert_bits_eq, name, thread_pool};

fn fixture() -> Fixture {
    Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), "conv_order")
}

fn raw(a: &ArrayD<f32>) -> Vec<f32> {
    a.iter().copied().collect()
}

#[test]
fn conv2d_onednn_equals_pytorch_bit_for_bit() {
    let fx = fixture();
    assert_eq!(fx.cases.len(), 10);
    for case in &fx.cases {
        let n = name(case);
        let get = |k: &str| case[k].as_u64().unwrap() as usize;
        let (x, w, want) = (fx.tensor::<f32>(n, "x"), fx.tensor::<f32>(n, "w"), fx.tensor::<f32>(n, "y"));
        let b = fx.has(n, "b").then(|| raw(&fx.tensor::<f32>(n, "b")));
        let params = ConvParams::<2> {
            stride: [get("stride"); 2],
            padding: [get("padding"); 2],
            dilation: [1; 2],
            groups: get("groups"),
        };
        let (xs, ws) = (raw(&x), raw(&w));
        let run = |kernel: &str, isa: Isa| {
            let mut out = vec![0.0; want.len()];
            let scratch = &mut ConvScratch::default();
            let conv = if kernel == "onednn" { float::conv2d_onednn } else { float::conv::<2> };
            let shape = conv(&xs, x.shape(), &ws, w.shape(), b.as_deref(), &params, &mut out, scratch, isa);
            assert_eq!(shape.unwrap(), want.shape(), "{n}");
            ArrayD::from_shape_vec(IxDyn(want.shape()), out).unwrap()
        };
        for isa in Isa::supported() {
            for threads in [1, 2] {
                let got = thread_pool(threads).install(|| run("onednn", isa));
                assert_bits_eq(n, &format!("y on {isa}, {threads} threads"), &got, &want);
            }
        }
        // The fixture tells the orders apart: `conv`'s order (from the bias over (channel,
        // kernel y, kernel x)) differs in the last bit wherever a group has several channels.
        if w.shape()[1] > 1 {
            assert_ne!(run("conv", Isa::Scalar), want, "{n}: `conv` gives PyTorch's bits too");
        }
    }
}

#[test]
fn conv2d_onednn_rejects_bad_shapes() {
    let (x, w) = (vec![0.0; 2 * 3 * 4 * 4], vec![0.0; 5 * 3 * 3 * 3]);
    let params = ConvParams::<2>::default();
    let mut out = vec![0.0; 2 * 5 * 2 * 2];
    let mut scratch = ConvScratch::default();
    let mut run = |w_shape: &[usize], bias: Option<&[f32]>, out: &mut [f32]| {
        float::conv2d_onednn(&x, &[2, 3, 4, 4], &w, w_shape, bias, &params, out, &mut scratch, Isa::Scalar)
    };
    assert!(run(&[5, 3, 3, 3], None, &mut out).is_ok());
    assert!(run(&[5, 2, 3, 3], None, &mut out).is_err(), "channel mismatch");
    assert!(run(&[5, 3, 3, 3], Some(&[0.0; 4]), &mut out).is_err(), "bias length");
    assert!(run(&[5, 3, 3, 3], None, &mut out[1..]).is_err(), "output length");
}
