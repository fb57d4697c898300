//! GEMM against PyTorch's `quantized::linear` / `linear_relu` on the fbgemm engine
//! (`tools/golden/gen_kernels.py`), on every tier: equal int_repr. The fixtures use 7-bit
//! activations or weights in [-64, 63], so FBGEMM's int16 pair saturation cannot occur, except
//! `linear_full_range` (activations 200..=255, weights 100..=127): FBGEMM ran it on this AVX-512
//! VNNI machine, whose `vpdpbusd` kernel is exact like ours (the fixture records
//! `fbgemm_vnni`); on an AVX2-only host FBGEMM's `vpmaddubsw` pairs would saturate there and
//! PyTorch's result would differ from the exact one this crate computes.

mod gemm_common;

use gemm_common::{Fixture, fixture_qparams, scale_zp};
use qkernels::Isa;
use qkernels::gemm::{Output, PackedWeights, gemm};

#[test]
fn linear_matches_pytorch_fbgemm_on_every_tier() {
    let fx = Fixture::load("gemm_linear");
    assert!(fx.cases().len() >= 7, "{} cases", fx.cases().len());
    for case in fx.cases() {
        let name = case["name"].as_str().unwrap();
        let get = |k: &str| case[k].as_u64().unwrap() as usize;
        let (m, k, n) = (get("m"), get("k"), get("n"));
        let (a_scale, a_zp) = scale_zp(&case["a"]);
        let (out_scale, out_zp) = scale_zp(&case["out"]);
        let relu = case["relu"].as_bool().unwrap();
        let (x, w, want) = (fx.u8s(name, "x"), fx.i8s(name, "w"), fx.u8s(name, "q"));
        let bias = fx.f32s(name, "bias");
        let q = fixture_qparams(case);
        if case.get("fbgemm_vnni").is_some_and(|v| v == false) {
            // Produced where FBGEMM saturates: not comparable with the exact sum.
            continue;
        }
        for isa in Isa::supported() {
            let packed = PackedWeights::with_isa(&w, n, k, &q, bias.as_deref(), isa).unwrap();
            let p = packed.output_u8(a_scale, a_zp, out_scale, out_zp, relu).unwrap();
            let mut got = vec![0u8; m * n];
            gemm(&x, m, &packed, &p, Output::U8(&mut got)).unwrap();
            let bad = got.iter().zip(&want).filter(|(g, e)| g != e).count();
            assert_eq!(bad, 0, "{name} on {isa}: {bad} of {} differ from PyTorch", want.len());
        }
    }
}
