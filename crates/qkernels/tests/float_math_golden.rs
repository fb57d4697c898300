//! PyTorch 2.15's float sigmoid and tanh (`tools/golden/gen_float_math.py`): sigmoid bit for bit
//! on every tier under the capability each fixture was made with (AVX-512: vector body in steps of
//! 32; AVX2: steps of 16), on contiguous runs of every tail length and on strided LSTM-style gate
//! chunks; tanh (MKL's in PyTorch's wheels) within one ulp and equal on nearly every value.

use std::sync::Mutex;

use ndarray::ArrayD;
use qkernels::Isa;
use qkernels::float::{self, PytorchCpuCapability, set_pytorch_cpu_capability};
use qtest::Fixture;

/// The capability is a process-wide setting: tests that set it take turns.
static CAPABILITY: Mutex<()> = Mutex::new(());

const FIXTURES: [&str; 2] = ["float_math", "float_math_avx2"];

fn load(name: &str) -> Fixture {
    Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), name)
}

/// Applies `f` to each run PyTorch's kernel sees: the whole tensor for `len*` cases, the
/// `h` floats of chunk `k` of each row for `gates*` cases.
fn apply(case: &serde_json::Value, x: &ArrayD<f32>, f: impl Fn(&mut [f32])) -> ArrayD<f32> {
    let mut y = x.clone();
    let data = y.as_slice_mut().expect("contiguous");
    match (case.get("h"), case.get("k")) {
        (Some(h), Some(k)) => {
            let (h, k) = (h.as_u64().unwrap() as usize, k.as_u64().unwrap() as usize);
            for row in data.chunks_exact_mut(4 * h) {
                f(&mut row[k * h..(k + 1) * h]);
            }
        }
        _ => f(data),
    }
    y
}

#[test]
fn sigmoid_equals_pytorch_bit_for_bit_on_every_tier() {
    let _turn = CAPABILITY.lock().unwrap_or_else(|e| e.into_inner());
    let previous = float::pytorch_cpu_capability();
    let mut checked = 0;
    for name in FIXTURES {
        let fx = load(name);
        for case in &fx.cases {
            let n = qtest::name(case);
            let cap: PytorchCpuCapability = case["capability"].as_str().unwrap().parse().unwrap();
            set_pytorch_cpu_capability(cap);
            let x = fx.tensor::<f32>(n, "x");
            let expected = fx.tensor::<f32>(n, "sigmoid");
            for isa in Isa::tiers() {
                let got = apply(case, &x, |run| float::sigmoid_in_place(run, isa).unwrap());
                qtest::assert_bits_eq(n, &format!("sigmoid_ ({name}, {})", isa.name()), &got, &expected);
                let out_of_place = apply(case, &x, |run| {
                    let input = run.to_vec();
                    float::sigmoid(&input, run, isa).unwrap();
                });
                qtest::assert_bits_eq(
                    n,
                    &format!("sigmoid ({name}, {})", isa.name()),
                    &out_of_place,
                    &expected,
                );
                checked += 1;
            }
        }
    }
    set_pytorch_cpu_capability(previous);
    assert!(checked >= 2 * 103, "every case of both fixtures ran");
}

#[test]
fn the_other_split_does_not_reproduce_pytorch() {
    // The split matters: with the other capability's step some tail element differs.
    let _turn = CAPABILITY.lock().unwrap_or_else(|e| e.into_inner());
    let previous = float::pytorch_cpu_capability();
    for name in FIXTURES {
        let fx = load(name);
        let mut differing = 0;
        for case in &fx.cases {
            let n = qtest::name(case);
            let cap: PytorchCpuCapability = case["capability"].as_str().unwrap().parse().unwrap();
            let other = if cap == PytorchCpuCapability::Avx512 {
                PytorchCpuCapability::Avx2
            } else {
                PytorchCpuCapability::Avx512
            };
            set_pytorch_cpu_capability(other);
            let x = fx.tensor::<f32>(n, "x");
            let got = apply(case, &x, |run| float::sigmoid_in_place(run, Isa::Scalar).unwrap());
            let expected = fx.tensor::<f32>(n, "sigmoid");
            differing += got.iter().zip(&expected).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        }
        assert!(differing > 0, "{name}: the other capability's split gives the same bits");
    }
    set_pytorch_cpu_capability(previous);
}

#[test]
fn activation_sigmoid_is_pytorchs_sigmoid() {
    let _turn = CAPABILITY.lock().unwrap_or_else(|e| e.into_inner());
    let previous = float::pytorch_cpu_capability();
    let fx = load("float_math");
    let case = "len10000";
    set_pytorch_cpu_capability(fx.cases[0]["capability"].as_str().unwrap().parse().unwrap());
    let x = fx.tensor::<f32>(case, "x");
    let mut out = vec![0.0f32; x.len()];
    float::activation(float::Activation::Sigmoid, x.as_slice().unwrap(), &mut out, Isa::detect()).unwrap();
    let got = ArrayD::from_shape_vec(x.shape(), out).unwrap();
    qtest::assert_bits_eq(case, "activation(Sigmoid)", &got, &fx.tensor(case, "sigmoid"));
    set_pytorch_cpu_capability(previous);
}

/// The distance in representable floats between two finite floats of the same sign.
fn ulps(a: f32, b: f32) -> u32 {
    a.to_bits().abs_diff(b.to_bits())
}

#[test]
fn tanh_is_within_one_ulp_of_pytorch_and_equal_on_nearly_every_value() {
    for name in FIXTURES {
        let fx = load(name);
        let (mut equal, mut total) = (0usize, 0usize);
        for case in &fx.cases {
            let n = qtest::name(case);
            let x = fx.tensor::<f32>(n, "x");
            let expected = fx.tensor::<f32>(n, "tanh");
            for isa in Isa::tiers() {
                let got = apply(case, &x, |run| float::tanh_in_place(run, isa).unwrap());
                for ((&g, &e), &v) in got.iter().zip(&expected).zip(&x) {
                    if v.is_nan() {
                        assert!(g.is_nan() && e.is_nan(), "{n}: tanh(NaN)");
                        continue;
                    }
                    assert!(
                        ulps(g, e) <= 1,
                        "{n} ({name}, {}): tanh({v:e}) = {g:e}, PyTorch {e:e}",
                        isa.name()
                    );
                    equal += usize::from(g.to_bits() == e.to_bits());
                    total += 1;
                }
            }
        }
        assert!(equal as f64 >= 0.99 * total as f64, "{name}: tanh equal on {equal} of {total}");
    }
}
