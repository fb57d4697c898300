//! Float sigmoid and tanh on every tier against the scalar oracle of `qcore::math`, bit for bit,
//! over every class of float (zeros, subnormals, tiny, huge, infinities, NaNs, values around
//! exp's overflow and underflow thresholds) and every length, under each PyTorch capability's split.

use std::sync::Mutex;

use proptest::prelude::*;
use qcore::math::{sigmoid_scalar, sigmoid_vector_lane};
use qkernels::Isa;
use qkernels::float::{self, PytorchCpuCapability};

/// Floats of every class: any bit pattern, or a value near a threshold of `exp_u10` or `tanh`.
fn any_float() -> impl Strategy<Value = f32> {
    prop_oneof![
        any::<u32>().prop_map(f32::from_bits),
        -110.0f32..110.0,
        -20.0f32..20.0,
        prop::sample::select(vec![
            0.0,
            -0.0,
            1e-45,
            -1e-45,
            1.17e-38,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            88.72,
            -88.72,
            103.99,
            -103.99,
            104.0,
            -104.0,
            104.01,
            -104.01,
            100.0,
            -100.0,
            100.01,
            -100.01,
            8.664_34,
            -8.664_34,
            0.5,
            -0.5,
            0.499_999_97,
            9.01,
            -9.01,
        ]),
        // The vector tanh's branch point (|x| = 0.5) and its last values below 1.0.
        0.49f32..0.51,
        9.0f32..9.1,
    ]
}

/// The capability is a process-wide setting: tests that read or set it take turns.
static CAPABILITY: Mutex<()> = Mutex::new(());

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn sigmoid_tiers_equal_the_oracle(x in prop::collection::vec(any_float(), 0..200)) {
        let _turn = CAPABILITY.lock().unwrap_or_else(|e| e.into_inner());
        let previous = float::pytorch_cpu_capability();
        for cap in [PytorchCpuCapability::Default, PytorchCpuCapability::Avx2, PytorchCpuCapability::Avx512] {
            float::set_pytorch_cpu_capability(cap);
            let body = float::sigmoid_vector_len(x.len());
            match cap.vector_step() {
                0 => prop_assert_eq!(body, 0),
                step => prop_assert!(body.is_multiple_of(step) && x.len() - body < step),
            }
            let expected: Vec<f32> = x
                .iter()
                .enumerate()
                .map(|(i, &v)| if i < body { sigmoid_vector_lane(v) } else { sigmoid_scalar(v) })
                .collect();
            for isa in Isa::tiers() {
                let mut out = vec![0.0f32; x.len()];
                float::sigmoid(&x, &mut out, isa).unwrap();
                prop_assert_eq!(bits(&out), bits(&expected), "{:?} {}", cap, isa.name());
                let mut inplace = x.clone();
                float::sigmoid_in_place(&mut inplace, isa).unwrap();
                prop_assert_eq!(bits(&inplace), bits(&expected), "{:?} {} in place", cap, isa.name());
            }
        }
        float::set_pytorch_cpu_capability(previous);
    }

    #[test]
    fn tanh_tiers_equal_tanh_value(x in prop::collection::vec(any_float(), 0..200)) {
        let expected: Vec<f32> = x.iter().map(|&v| float::tanh_value(v)).collect();
        for isa in Isa::tiers() {
            let mut out = vec![0.0f32; x.len()];
            float::tanh(&x, &mut out, isa).unwrap();
            prop_assert_eq!(bits(&out), bits(&expected));
            let mut inplace = x.clone();
            float::tanh_in_place(&mut inplace, isa).unwrap();
            prop_assert_eq!(bits(&inplace), bits(&expected));
        }
    }
}

/// Floats from bit pattern `first` to `last`, every `step`-th.
fn bit_range(first: f32, last: f32, step: usize) -> Vec<f32> {
    (first.to_bits()..=last.to_bits()).step_by(step).map(f32::from_bits).collect()
}

/// tanh on every tier equals the oracle over every 509th bit pattern (all classes, both signs)
/// and over every float of the regions where the vector tiers change branch or approach 1.0.
#[test]
fn tanh_tiers_equal_tanh_value_over_sweeps() {
    let mut x: Vec<f32> = (0..=u32::MAX).step_by(509).map(f32::from_bits).collect();
    // Inputs whose f64 tanh lies within 2^-39 relative of an f32 rounding boundary (about one
    // float in 2^14): the vector lanes hand them to the oracle.
    let near_boundary = [0x3e00_5a4c_u32, 0x3e00_7165, 0x3e00_967c, 0x3e00_9d9e, 0x3e01_253f, 0x3e01_4203];
    for b in near_boundary {
        let t = f64::from(f32::from_bits(b)).tanh();
        let margin = 2f64.powi(-39);
        assert!((t * (1.0 - margin)) as f32 != t as f32 || (t * (1.0 + margin)) as f32 != t as f32);
        x.extend([f32::from_bits(b), -f32::from_bits(b)]);
    }
    for (first, last) in [(0.49f32, 0.51f32), (9.0, 9.1)] {
        let region = bit_range(first, last, 1);
        x.extend(region.iter().map(|v| -v));
        x.extend(region);
    }
    let expected: Vec<f32> = x.iter().map(|&v| float::tanh_value(v)).collect();
    for isa in Isa::tiers() {
        let mut out = vec![0.0f32; x.len()];
        float::tanh(&x, &mut out, isa).unwrap();
        let wrong = out.iter().zip(&expected).position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(wrong.map(|i| (x[i], out[i], expected[i])), None, "{}", isa.name());
    }
}

#[test]
fn long_runs_split_between_threads_keep_pytorchs_split() {
    // Large enough for the rayon split of the vector body; every element is still the one
    // PyTorch's single run would give.
    let _turn = CAPABILITY.lock().unwrap_or_else(|e| e.into_inner());
    let x: Vec<f32> = (0..300_001).map(|i| (i as f32 * 0.000_37).sin() * 30.0).collect();
    let body = float::sigmoid_vector_len(x.len());
    let expected: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| if i < body { sigmoid_vector_lane(v) } else { sigmoid_scalar(v) })
        .collect();
    for threads in [1, 2, 3] {
        let pool = qtest::thread_pool(threads);
        for isa in Isa::tiers() {
            let mut out = vec![0.0f32; x.len()];
            pool.install(|| float::sigmoid(&x, &mut out, isa)).unwrap();
            assert_eq!(bits(&out), bits(&expected), "{threads} threads, {}", isa.name());
        }
    }
}

#[test]
fn wrong_lengths_and_names_are_errors() {
    let err = float::sigmoid(&[1.0, 2.0], &mut [0.0], Isa::Scalar).unwrap_err();
    assert!(err.to_string().contains("sigmoid: output length is 1 but must be 2"), "{err}");
    let err = float::tanh(&[1.0], &mut [0.0, 0.0], Isa::Scalar).unwrap_err();
    assert!(err.to_string().contains("tanh: output length is 2 but must be 1"), "{err}");
    let err = "avx10".parse::<PytorchCpuCapability>().unwrap_err();
    assert!(err.to_string().contains("DEFAULT, AVX2 or AVX512"), "{err}");
    assert_eq!("avx512".parse::<PytorchCpuCapability>().unwrap(), PytorchCpuCapability::Avx512);
    assert_eq!(PytorchCpuCapability::Avx2.name(), "AVX2");
}
