//! The digits QAT recipe against PyTorch 2.15's run of it (`tools/golden/gen_qat_digits.py`):
//! the gradients of the first step, the loss of the first ten SGD steps (same initial weights,
//! same data order), and the accuracies after the whole recipe.
//!
//! The losses are small (the float model is trained: 3e-4 to 8e-4), so a float difference in
//! one activation that moves it across a fake-quantization rounding boundary shows in that
//! step's loss. The QAT convolutions sum in oneDNN's order (`qkernels::float::conv2d_onednn`,
//! PyTorch's bits for these layers), which removed the three steps that were off by up to
//! 6.6e-4; measured on both recipes: every step within 1.2e-5 relative, 19 of 20 within 2.4e-7
//! (docs/NUMERICS.md, section 20). The test holds every step within 1e-4.

#[path = "../examples/qat/mod.rs"]
mod qat;

use qat::{Bits, Recipe, Setup, Training};
use qtest::Fixture;

fn fixture() -> Fixture {
    Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), "qat_digits")
}

fn recipe_name(bits: Bits) -> &'static str {
    if bits == Bits::Eight { "qat8" } else { "qat4" }
}

#[test]
fn ten_steps_follow_pytorch() {
    let (setup, recipe, f) = (Setup::load().unwrap(), Recipe::load().unwrap(), fixture());
    for bits in [Bits::Eight, Bits::Four] {
        let name = recipe_name(bits);
        let torch_losses = recipe.losses_of(name);
        let mut run = Training::new(&setup, &recipe, bits).unwrap();
        let order: Vec<usize> = recipe.epoch_orders[0].iter().map(|&i| setup.record.train()[i]).collect();
        for (step, batch) in order.chunks(recipe.batch).take(10).enumerate() {
            let labels: Vec<usize> = batch.iter().map(|&i| setup.digits.labels[i]).collect();
            let (loss, grads) = run.step(setup.digits.images_at(batch), &labels).unwrap();
            let expected = torch_losses[step];
            let rel = ((f64::from(loss) - expected) / expected).abs();
            assert!(
                rel <= 1e-4,
                "{name} step {}: loss {loss} vs PyTorch {expected} ({rel:e} relative)",
                step + 1
            );
            if step == 0 {
                for (param, grad) in &grads {
                    let theirs = f.tensor::<f32>(name, &format!("grad1.{param}"));
                    let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let diff = grad.iter().zip(&theirs).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                    // Softmax's probabilities are within 1e-3 of 1: the gradient is their
                    // difference from the one-hot labels, where one ulp of exp is 1e-4 of it.
                    assert!(diff <= 1e-3 * scale, "{name} grad1.{param}: {diff:e} off (max {scale:e})");
                }
                let names: Vec<&String> = grads.keys().collect();
                assert_eq!(names.len(), 11, "{name}: every parameter gets a gradient: {names:?}");
            }
        }
    }
}

#[test]
fn qat_recovers_what_4_bit_ptq_loses() {
    let (setup, recipe) = (Setup::load().unwrap(), Recipe::load().unwrap());
    let float = setup.correct(setup.float_model.as_ref()).unwrap();
    let ptq4 = setup.correct(setup.ptq(Bits::Four).unwrap().as_ref()).unwrap();
    let mut run = Training::new(&setup, &recipe, Bits::Four).unwrap();
    for epoch in 0..recipe.epoch_orders.len() {
        run.epoch(&setup, &recipe, epoch, |_, _, _| {}).unwrap();
    }
    let converted = setup.correct(run.converted().unwrap().as_ref()).unwrap();
    let n = setup.test_labels.len() as f64;
    assert!(100.0 * (float as f64 - converted as f64) / n <= 0.5, "QAT 4-bit {converted} vs float {float}");
    assert!(converted > ptq4, "QAT 4-bit {converted} vs PTQ 4-bit {ptq4}");
    for (ours, what) in [(float, "float"), (ptq4, "ptq4"), (converted, "qat4_converted")] {
        let torch = recipe.accuracy_of(what);
        assert!(ours.abs_diff(torch) <= 1, "{what}: {ours} vs PyTorch's {torch}");
    }
}

/// The quantized layers of the digits model, in order.
const LAYERS: [&str; 5] = ["quant", "features.0", "features.3", "features.7", "fc"];

/// Loads PyTorch's final QAT `state_dict` of `case` into our prepared model of the same recipe:
/// parameters, batch-norm statistics and every fake quantizer's buffers.
fn load_torch_state(model: &mut Box<dyn qgraph::Module>, f: &Fixture, case: &str) {
    use qfake::FakeQuantModule;
    let prefix = "final.";
    let mut entries = std::collections::BTreeMap::new();
    for (name, x) in model.state_dict() {
        let value =
            f.tensor::<f32>(case, &format!("{prefix}{name}")).into_shape_with_order(x.raw_dim()).unwrap();
        entries.insert(name, value);
    }
    qfake::train::visit_mut(model.as_mut(), "", &mut |path, module| {
        for (name, x) in module.params_mut() {
            if let Some(v) =
                entries.remove(&if path.is_empty() { name.to_string() } else { format!("{path}.{name}") })
            {
                *x = v;
            }
        }
    });
    assert!(entries.is_empty(), "unused: {:?}", entries.keys().collect::<Vec<_>>());
    let mut loaded = 0;
    for (path, module) in model.named_modules() {
        let Some(fq) = module.downcast_ref::<FakeQuantModule>() else { continue };
        let t = |field: &str| f.tensor::<f32>(case, &format!("{prefix}{path}.{field}"));
        let flag = |field: &str| f.tensor::<i64>(case, &format!("{prefix}{path}.{field}"))[0] == 1;
        let zero_point =
            f.tensor::<i32>(case, &format!("{prefix}{path}.zero_point")).iter().map(|&z| z as f32).collect();
        let range = (
            t("activation_post_process.min_val").iter().copied().collect(),
            t("activation_post_process.max_val").iter().copied().collect(),
        );
        fq.set_buffers(
            t("scale").iter().copied().collect(),
            zero_point,
            range,
            (flag("fake_quant_enabled"), flag("observer_enabled")),
        )
        .unwrap();
        loaded += 1;
    }
    assert_eq!(loaded, 2 * LAYERS.len() - 1, "{case}: a fake quantizer per weight and per output");
}

/// `convert` from PyTorch's final QAT state (loaded into our prepared model) gives PyTorch's
/// quantized model: each layer, fed PyTorch's quantized input, has PyTorch's output parameters
/// and integers, bit for bit.
#[test]
fn converted_from_pytorchs_qat_state_equals_pytorchs_layer_by_layer() {
    use qgraph::{PerTensor, QuantTensor, Value};
    let (setup, f) = (Setup::load().unwrap(), fixture());
    for bits in [Bits::Eight, Bits::Four] {
        let case = recipe_name(bits);
        let layers = format!("{case}_layers");
        let mut model = setup.prepared(bits).unwrap();
        load_torch_state(&mut model, &f, case);
        let kinds = qat::qat_qconfig(bits).unwrap().kinds;
        qgraph::eval(&mut model);
        qfake::convert(&mut model, kinds).unwrap();
        let qparams = |name: &str| {
            PerTensor::new(
                f.tensor::<f64>(&layers, &format!("{name}.scale"))[0],
                f.tensor::<i64>(&layers, &format!("{name}.zero_point"))[0],
            )
        };
        let quant_input = |name: &str| -> Value {
            let source = match name {
                "features.0" => "quant".to_string(),
                "features.3" => "features.0".to_string(),
                other => format!("{other}.input"),
            };
            Value::Quant(
                QuantTensor::from_int_repr(&f.tensor::<u8>(&layers, &source), qparams(&source)).unwrap(),
            )
        };
        for name in LAYERS {
            let input = if name == "quant" {
                Value::Float(f.tensor(&layers, "quant.input"))
            } else {
                quant_input(name)
            };
            let out = model.get(name).unwrap().forward(input).unwrap().into_quant("test").unwrap();
            let expected_q = qparams(name);
            assert_eq!(
                (out.qparams().scale, out.qparams().zero_point),
                (expected_q.scale, expected_q.zero_point),
                "{case} {name}: output qparams"
            );
            let (got, expected) = (out.int_repr().mapv(i32::from), f.ints(&layers, name));
            let off = got.iter().zip(&expected).filter(|(a, b)| a != b).count();
            let worst = got.iter().zip(&expected).map(|(a, b)| (a - b).abs()).max().unwrap_or(0);
            assert_eq!(
                (off, worst),
                (0, 0),
                "{case} {name}: {off} of {} differ (worst {worst})",
                expected.len()
            );
        }
    }
}

/// A checkpoint taken mid-epoch resumes training exactly: the resumed run's losses and
/// parameters equal the uninterrupted run's, bit for bit.
#[test]
fn a_checkpoint_resumes_training_exactly() {
    let (setup, recipe) = (Setup::load().unwrap(), Recipe::load().unwrap());
    let mut run = Training::new(&setup, &recipe, Bits::Four).unwrap();
    let order: Vec<usize> = recipe.epoch_orders[0].iter().map(|&i| setup.record.train()[i]).collect();
    let batches: Vec<&[usize]> = order.chunks(recipe.batch).take(6).collect();
    let step = |run: &mut Training, batch: &[usize]| {
        let labels: Vec<usize> = batch.iter().map(|&i| setup.digits.labels[i]).collect();
        run.step(setup.digits.images_at(batch), &labels).unwrap().0
    };
    for batch in &batches[..3] {
        step(&mut run, batch);
    }
    let bytes =
        qfake::checkpoint::to_bytes(run.model.as_ref(), &run.optimizer, serde_json::json!({"step": 3}))
            .unwrap();
    let saved = qfake::checkpoint::from_bytes(&bytes).unwrap();
    assert_eq!(saved.meta["step"], 3);
    let mut resumed = Training::new(&setup, &recipe, Bits::Four).unwrap();
    saved.restore_optimizer(&mut resumed.optimizer).unwrap();
    resumed.model = saved.model;
    qgraph::train(&mut resumed.model, true);
    for batch in &batches[3..] {
        assert_eq!(step(&mut run, batch).to_bits(), step(&mut resumed, batch).to_bits());
    }
    let (a, b) = (run.model.state_dict(), resumed.model.state_dict());
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(x, y, "{name}");
    }
    assert!(
        qfake::checkpoint::from_bytes(&bytes[..bytes.len() / 2]).is_err(),
        "a truncated checkpoint is an error"
    );
}
