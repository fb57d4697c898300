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
        ]),
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
