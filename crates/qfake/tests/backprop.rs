//! The layer-wise backward on float models against central finite differences (in f64 on the
//! f32 forward): every layer's `Train` and the containers' plumbing (graph fan-out, functionals,
//! flatten, pooling, batch norm in training mode).

use ndarray::{ArrayD, IxDyn};
use qfake::train::Backprop;
use qgraph::nn::{
    AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, Flatten, Hardswish, Linear, MaxPool2d, ReLU6, Sigmoid,
    manual_seed,
};
use qgraph::{FloatFunctional, Functional, Graph, Module, Value, train};
use qtest::XorShift;

fn random(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = XorShift::new(seed);
    ArrayD::from_shape_simple_fn(IxDyn(shape), || {
        ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    })
}

/// conv -> bn -> relu6 -> (hardswish | sigmoid) branches joined by add, mul and cat -> pools ->
/// flatten -> linear.
fn model() -> Box<dyn Module> {
    manual_seed(5);
    let mut b = Graph::builder("Net");
    let x = b.then("conv", Conv2d::new(2, 4, [3, 3]).padding([1, 1]).build().unwrap(), Graph::INPUT);
    let x = b.then("bn", BatchNorm2d::new(4), &x);
    let x = b.then("relu6", ReLU6::new(), &x);
    let h = b.then("hardswish", Hardswish::new(), &x);
    let s = b.then("sigmoid", Sigmoid::new(), &x);
    let sum = b.then_functional("add", FloatFunctional::new(), Functional::Add, &[&h, &x]);
    let prod = b.then_functional("mul", FloatFunctional::new(), Functional::Mul, &[&sum, &s]);
    let both = b.then_functional("cat", FloatFunctional::new(), Functional::Cat(1), &[&prod, &x]);
    let pooled = b.then("max", MaxPool2d::new(2), &both);
    let pooled = b.then("avg", AvgPool2d::new(2).stride(1), &pooled);
    let pooled = b.then("adaptive", AdaptiveAvgPool2d::new(1), &pooled);
    let flat = b.then("flatten", Flatten::new(1, -1), &pooled);
    let out = b.then("fc", Linear::new(8, 3, true), &flat);
    let mut model: Box<dyn Module> = Box::new(b.build(&out).unwrap());
    train(&mut model, true);
    model
}

/// `sum(model(x) * g)` in f64, from a fresh copy (batch norm's running statistics move).
fn loss(model: &dyn Module, x: &ArrayD<f32>, g: &ArrayD<f32>) -> f64 {
    let mut copy = model.clone_module();
    let (y, _) = Backprop::default().forward(copy.as_mut(), Value::Float(x.clone())).unwrap();
    y.into_float("test").unwrap().iter().zip(g).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum()
}

#[test]
fn gradients_match_finite_differences() {
    let model = model();
    let x = random(&[3, 2, 8, 8], 1);
    let g = random(&[3, 3], 2);
    let backprop = Backprop::default();
    let mut trained = model.clone_module();
    let (_, tape) = backprop.forward(trained.as_mut(), Value::Float(x.clone())).unwrap();
    let (dx, grads) = backprop.backward(trained.as_ref(), tape, Value::Float(g.clone())).unwrap();
    let names: Vec<&str> = grads.keys().map(String::as_str).collect();
    assert_eq!(names, ["bn.bias", "bn.weight", "conv.bias", "conv.weight", "fc.bias", "fc.weight"]);
    // Small enough that no max-pool window or ReLU6 edge switches, large enough for f32.
    let h = 1e-3f32;
    let check = |what: &str, analytic: f32, perturb: &dyn Fn(f32) -> f64| {
        let numeric = (perturb(h) - perturb(-h)) / (2.0 * f64::from(h));
        let err = (f64::from(analytic) - numeric).abs();
        assert!(
            err <= 2e-2 * numeric.abs().max(1e-2),
            "{what}: backward {analytic}, finite difference {numeric}"
        );
    };
    for (name, grad) in &grads {
        for index in [0, grad.len() / 2, grad.len() - 1] {
            let perturb = |delta: f32| {
                let mut m = model.clone_module();
                let (module, param) = name.rsplit_once('.').unwrap();
                let slot = qgraph::slot_mut(&mut m, module).unwrap();
                for (n, p) in slot.params_mut() {
                    if n == param {
                        p.as_slice_mut().unwrap()[index] += delta;
                    }
                }
                loss(m.as_ref(), &x, &g)
            };
            check(&format!("{name}[{index}]"), grad.as_slice().unwrap()[index], &perturb);
        }
    }
    let dx = dx.into_float("test").unwrap();
    for index in [5, 100, 300] {
        let perturb = |delta: f32| {
            let mut x = x.clone();
            x.as_slice_mut().unwrap()[index] += delta;
            loss(model.as_ref(), &x, &g)
        };
        check(&format!("input[{index}]"), dx.as_slice().unwrap()[index], &perturb);
    }
}

/// Bad use is an error naming the module and the fix, never a panic: a module type without a
/// training rule, a tape from another model, `prepare_qat` on a model in eval mode.
#[test]
fn misuse_is_a_clear_error() {
    use qgraph::Sequential;
    use qgraph::nn::Softmax;
    let backprop = Backprop::default();
    let mut unsupported: Box<dyn Module> =
        Box::new(Sequential::new(vec![Box::new(Linear::new(4, 4, true)), Box::new(Softmax::new(1))]));
    train(&mut unsupported, true);
    let x = Value::Float(random(&[2, 4], 3));
    let err = backprop.forward(unsupported.as_mut(), x.clone()).unwrap_err().to_string();
    assert!(err.contains("`1`") && err.contains("Softmax") && err.contains("Backprop::register"), "{err}");

    let mut linear: Box<dyn Module> = Box::new(Linear::new(4, 4, true));
    let (_, tape) = backprop.forward(linear.as_mut(), x).unwrap();
    let other = model();
    let err =
        backprop.backward(other.as_ref(), tape, Value::Float(random(&[2, 4], 4))).unwrap_err().to_string();
    assert!(err.contains("tape"), "{err}");

    let mut float: Box<dyn Module> = Box::new(Sequential::new(vec![Box::new(Linear::new(4, 4, true))]));
    qgraph::eval(&mut float);
    let err = qfake::prepare_qat(&mut float, &qfake::get_default_qat_qconfig("x86").unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("train(&mut model, true)"), "{err}");
}
