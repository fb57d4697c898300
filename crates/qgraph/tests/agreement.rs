//! ResNet-18 and MobileNetV2 from the zoo against PyTorch's fbgemm int8 (fixtures from
//! `tools/golden/gen_models.py`; run with `--nocapture` for the per-layer table).
//!
//! Both sides build the model with the generator's deterministic weights, fuse it
//! (`fuse_model`), prepare it with MinMax quint8 `reduce_range` activations and per-channel
//! symmetric qint8 weights, calibrate on two 1x3x64x64 images (seeds 500, 501) and convert; the
//! test image is seed 999. Compared: every observer's scale and zero point, every quantized
//! output's int8 values (fraction equal, largest difference), the float output, the int8 output's
//! top-1 and its SQNR against the float output next to PyTorch's, and the converted printout.
//!
//! Our batch-norm folding differs from PyTorch's by a few ulp (its `rsqrt` is inexact, see
//! `docs/NUMERICS.md` §10), which moves a few folded weights across a rounding boundary, and
//! int8 rounding amplifies that layer after layer: PyTorch compared with itself folding with a
//! correctly rounded rsqrt agrees on only 91.99% (ResNet-18) / 94.95% (MobileNetV2) of these
//! values. So each model is also compared with the fixture `agreement_<model>_exact_fold` (the
//! same PyTorch pipeline with `torch.rsqrt` correctly rounded while fusing), where MobileNetV2
//! agrees on 99.9995% (3 values off by 1). ResNet-18 still drifts from `layer1.0.conv1` on (96.8%
//! overall): its first flips are explained by observer scales a few ulp apart (float
//! convolutions sum in another order than PyTorch's, moving the calibration ranges), which full
//! 3x3 convolutions over 64 channels then amplify.
//!
//! Layer by layer, the comparison the per-layer bar is about: each module is fed the reference's
//! outputs of the modules before it (`debug::log_outputs_forced`), so only its own arithmetic is
//! compared. Against stock PyTorch 99.988% (ResNet-18) / 99.970% (MobileNetV2) of values are
//! equal, none off by more than 1 (the misses are the folded-weight ulps); against exact folding
//! 99.9997% / 99.9997%. The bounds below are the measured values with a small margin;
//! `--nocapture` prints the tables. The exact-folding fixtures were written by:
//!
//! ```python
//! import sys, torch; sys.path.insert(0, "tools/golden")
//! import gen_models as g; from fixtures import Fixture; from torch.ao.ns.fx.utils import compute_sqnr
//! for name in ["resnet18", "mobilenet_v2"]:
//!     calib, x, model = [g.image(500 + j) for j in range(2)], g.image(999), g.float_model(name)
//!     rsqrt, torch.rsqrt = torch.rsqrt, lambda t: (1.0 / torch.sqrt(t.double())).float()
//!     try: _, _, converted = g.quantize(model, "fbgemm", calib)
//!     finally: torch.rsqrt = rsqrt
//!     with torch.no_grad(): reference = model(x); final, outputs = g.capture(converted, x)
//!     fx = Fixture("qgraph", f"agreement_{name}_exact_fold")
//!     fx.case("output", {"order": list(outputs), "sqnr_db": compute_sqnr(reference, final).item(),
//!             "top1": int(final.argmax())}, final=final, **g.output_tensors(outputs))
//!     fx.save()
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use ndarray::{ArrayD, IxDyn};
use qgraph::models::{self, Architecture};
use qgraph::qconfig::QConfig;
use qgraph::qobserve::{ObserverSpec, QDType};
use qgraph::workflow::Observed;
use qgraph::{
    Module, PerTensor, QConfigMapping, QuantTensor, Value, calibrate, convert, debug, eval, load_state_dict,
    prepare,
};
use qtest::Fixture;

mod common;
use common::{differences, fixture, mask_scales, params};

fn image(seed: u64) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(&[1, 3, 64, 64]), models::random_f32s(3 * 64 * 64, seed)).expect("shape")
}

/// SQNR in dB of `noisy` against `reference`: 20 log10(|reference| / |reference - noisy|).
fn sqnr_db(reference: &ArrayD<f32>, noisy: &ArrayD<f32>) -> f64 {
    let signal: f64 = reference.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
    let noise: f64 =
        reference.iter().zip(noisy).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum::<f64>().sqrt();
    20.0 * (signal / noise).log10()
}

fn argmax(x: &ArrayD<f32>) -> usize {
    x.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) })
        .0
}

/// What a model must reach: against PyTorch with exact folding, every layer at least
/// `layer_equal` equal and within `layer_max`, all together `total_equal`; against stock
/// PyTorch, all layers together at least `stock_total_equal` equal and within `stock_max`, the
/// SQNR no more than `sqnr_slack` dB below PyTorch's, and the same top-1. In both, the layers
/// up to the first whose input is a convolution's output agree exactly or nearly (below).
struct Bar {
    layer_equal: f64,
    layer_max: i32,
    total_equal: f64,
    stock_total_equal: f64,
    stock_max: i32,
    sqnr_slack: f64,
    /// Per layer, fed stock PyTorch's inputs: its folded weights differ from ours by an ulp.
    forced_stock_layer_equal: f64,
}

/// One quantized output compared with a fixture's.
struct Layer {
    path: String,
    elements: usize,
    equal: usize,
    fraction: f64,
    worst: i32,
}

/// Every quantized output of a fixture compared with ours, in execution order.
struct Comparison {
    layers: Vec<Layer>,
    total: usize,
}

impl Comparison {
    fn total_fraction(&self) -> f64 {
        self.layers.iter().map(|l| l.equal).sum::<usize>() as f64 / self.total as f64
    }

    fn worst(&self) -> i32 {
        self.layers.iter().map(|l| l.worst).max().unwrap_or(0)
    }
}

/// Our logged outputs against the fixture's quantized outputs (shape, scale to 1e-4 relative and
/// zero point asserted; values counted).
fn compare(name: &str, fx: &Fixture, outputs: &BTreeMap<String, Value>) -> Comparison {
    let mut layers = Vec::new();
    let order = params(fx, "output")["order"].as_array().expect("order");
    for path in order.iter().map(|p| p.as_str().expect("path")) {
        if !fx.has("output", &format!("{path}.scale")) {
            continue;
        }
        let Some(Value::Quant(q)) = outputs.get(path) else {
            panic!("{name}: no quantized output for {path}")
        };
        let torch = fx.tensor::<u8>("output", path);
        assert_eq!(q.shape(), torch.shape(), "{name}: {path} shape");
        let torch_scale = fx.tensor::<f64>("output", &format!("{path}.scale"))[[0]];
        let torch_zp = fx.tensor::<i64>("output", &format!("{path}.zero_point"))[[0]];
        assert!((q.qparams().scale - torch_scale).abs() <= 1e-4 * torch_scale, "{name}: {path} output scale");
        assert_eq!(q.qparams().zero_point, torch_zp, "{name}: {path} output zero point");
        let ours = q.int_repr();
        let (equal, worst) = differences(&ours, &torch);
        layers.push(Layer {
            path: path.to_string(),
            elements: ours.len(),
            equal,
            fraction: equal as f64 / ours.len() as f64,
            worst,
        });
    }
    let total = layers.iter().map(|l| l.elements).sum();
    Comparison { layers, total }
}

fn check(arch: Architecture, bar: Bar) {
    let name = arch.name();
    let fx = fixture(&format!("agreement_{name}"));
    let mut model = arch.build(1000).expect("model");
    eval(&mut model);
    let state = models::deterministic_state_dict(model.as_ref()).expect("weights");
    load_state_dict(&mut model, state).expect("load");
    let float = model.clone();
    let x = image(999);

    let float_out = float.forward(Value::from(x.clone())).expect("float forward").into_float_lossy();
    let torch_float = fx.tensor::<f32>("output", "float");
    let worst = float_out.iter().zip(&torch_float).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let scale = torch_float.iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!("{name}: float output: largest difference {worst:e} (of {scale:.3})");
    assert!(worst <= 1e-4 * scale, "{name}: float output differs by {worst}");

    models::fuse_model(&mut model).expect("fuse");
    let qconfig = QConfig {
        activation: ObserverSpec::min_max().with_args(|a| a.dtype(QDType::QUInt8).reduce_range(true)),
        weight: qgraph::qobserve::defaults::default_per_channel_weight_observer(),
    };
    prepare(&mut model, &QConfigMapping::global(qconfig)).expect("prepare");
    calibrate(model.as_ref(), [image(500), image(501)], |_, _| {}).expect("calibrate");

    // Observers: zero points exact, scales to a relative bound (activations differ in the last
    // bits, so the ranges can too).
    let paths = params(&fx, "observer")["paths"].as_array().expect("paths");
    let (mut exact, mut worst_rel, mut checked) = (0, 0f64, 0);
    for path in paths.iter().map(|p| p.as_str().expect("path")) {
        let torch = fx.tensor::<f64>("observer", path);
        let module = model.get(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let observed =
            module.downcast_ref::<Observed>().unwrap_or_else(|| panic!("{name}: {path} not observed"));
        if observed.observer().calls() == 0 {
            // A `skip_add` no node calls: PyTorch's empty observer gives (1.0, 0), as our convert.
            assert_eq!((torch[[0]], torch[[1]]), (1.0, 0.0), "{name}: {path} unused in PyTorch too");
            continue;
        }
        let q = observed.observer().activation_qparams().expect("qparams");
        assert_eq!(q.zero_point, torch[[1]] as i64, "{name}: zero point of {path}");
        let rel = (q.scale - torch[[0]]).abs() / torch[[0]];
        worst_rel = worst_rel.max(rel);
        exact += usize::from(rel == 0.0);
        checked += 1;
    }
    eprintln!(
        "{name}: {exact} of {checked} observer scales bit-identical, largest relative difference {worst_rel:e}"
    );
    assert!(worst_rel <= 1e-4, "{name}: observer scale off by {worst_rel:e}");
    convert(&mut model).expect("convert");

    // Every quantized output on the test image.
    // (A FloatFunctional's `activation_post_process` cannot be wrapped: skip it.)
    let log = debug::log_outputs(&mut model, leaf_or_functional).expect("loggers");
    let out = model.forward(Value::from(x)).expect("int8 forward").into_float_lossy();
    let outputs: BTreeMap<String, Value> = log.take().into_iter().collect();
    let exact_fx = fixture(&format!("agreement_{name}_exact_fold"));
    let stock = compare(name, &fx, &outputs);
    let exact = compare(name, &exact_fx, &outputs);
    eprintln!(
        "{name}: {:<26} {:>9} {:>9} | {:>16} {:>5}",
        "layer", "elements", "equal %", "exact-fold eq. %", "max"
    );
    for (s, e) in stock.layers.iter().zip(&exact.layers) {
        assert_eq!(s.path, e.path);
        eprintln!(
            "{name}: {:<26} {:>9} {:>9.4} {:>3} | {:>16.4} {:>5}",
            s.path,
            s.elements,
            s.fraction * 100.0,
            s.worst,
            e.fraction * 100.0,
            e.worst
        );
    }
    for (label, c) in [("PyTorch", &stock), ("PyTorch, exact folding", &exact)] {
        eprintln!(
            "{name}: vs {label}: {} layers, {:.4}% of {} values equal, max difference {}",
            c.layers.len(),
            c.total_fraction() * 100.0,
            c.total,
            c.worst()
        );
    }

    let ours_sqnr = sqnr_db(&float_out, &out);
    let torch_sqnr = params(&fx, "output")["sqnr_db"].as_f64().expect("sqnr");
    let exact_sqnr = params(&exact_fx, "output")["sqnr_db"].as_f64().expect("sqnr");
    let vs_torch = sqnr_db(&fx.tensor::<f32>("output", "final"), &out);
    let vs_exact = sqnr_db(&exact_fx.tensor::<f32>("output", "final"), &out);
    let top1 = argmax(&out);
    let torch_top1 = params(&fx, "output")["top1"].as_u64().expect("top1") as usize;
    eprintln!(
        "{name}: SQNR int8 vs float: ours {ours_sqnr:.2} dB, PyTorch {torch_sqnr:.2} dB, PyTorch with exact folding \
         {exact_sqnr:.2} dB; ours vs PyTorch's int8 output {vs_torch:.1} dB, vs exact folding's {vs_exact:.1} dB; \
         top-1 {top1} (PyTorch {torch_top1}, float {})",
        argmax(&float_out)
    );

    // Against PyTorch folding as we do (correctly rounded rsqrt): the issue's bar, every layer.
    assert!(exact.layers.len() >= 30, "{name}: only {} layers compared", exact.layers.len());
    let below: Vec<String> = exact
        .layers
        .iter()
        .filter(|l| l.fraction < bar.layer_equal || l.worst > bar.layer_max)
        .map(|l| format!("{}: {:.4}% equal, max {}", l.path, l.fraction * 100.0, l.worst))
        .collect();
    assert!(below.is_empty(), "{name}: layers below the bar against exact folding: {below:?}");
    assert!(exact.total_fraction() >= bar.total_equal, "{name}: {} equal overall", exact.total_fraction());
    for l in &exact.layers[..3] {
        assert_eq!(l.equal, l.elements, "{name}: {} against exact folding", l.path);
    }
    // Against stock PyTorch: its inexact rsqrt moves folded weights by an ulp, and int8 rounding
    // amplifies that layer after layer exactly as it does between PyTorch and itself with exact
    // folding (measured by the same comparison of the two fixtures: 91.99% / 94.95%, max 5 / 4).
    for l in &stock.layers[..2] {
        assert!(l.fraction >= 0.999 && l.worst <= 1, "{name}: {} {:.4}% equal", l.path, l.fraction * 100.0);
    }
    assert!(
        stock.total_fraction() >= bar.stock_total_equal,
        "{name}: {} equal overall",
        stock.total_fraction()
    );
    assert!(stock.worst() <= bar.stock_max, "{name}: max difference {}", stock.worst());
    assert!(ours_sqnr >= torch_sqnr - bar.sqnr_slack, "{name}: SQNR {ours_sqnr} vs {torch_sqnr}");
    assert_eq!(top1, torch_top1, "{name}: top-1");

    // Layer by layer: every module fed PyTorch's outputs of the modules before it.
    debug::remove_loggers(&mut model).expect("remove loggers");
    for (label, reference) in [("PyTorch", &fx), ("PyTorch, exact folding", &exact_fx)] {
        let forced = forced_comparison(name, &mut model, reference, &image(999));
        eprintln!(
            "{name}: layer by layer vs {label}: {:.4}% of {} values equal, max difference {}; worst layer {}",
            forced.total_fraction() * 100.0,
            forced.total,
            forced.worst(),
            forced
                .layers
                .iter()
                .min_by(|a, b| a.fraction.total_cmp(&b.fraction))
                .map(|l| format!("{} {:.4}%", l.path, l.fraction * 100.0))
                .unwrap_or_default()
        );
        // A layer may also miss the bar by one element: at 64x64, layer4's outputs have 2048.
        let (layer_bar, total_bar) =
            if label == "PyTorch" { (bar.forced_stock_layer_equal, 0.9995) } else { (0.9999, 0.99999) };
        assert!(
            forced.total_fraction() >= total_bar,
            "{name}: {} equal fed {label}'s inputs",
            forced.total_fraction()
        );
        let below: Vec<String> = forced
            .layers
            .iter()
            .filter(|l| (l.fraction < layer_bar && l.elements - l.equal > 1) || l.worst > 1)
            .map(|l| format!("{}: {:.4}% equal, max {}", l.path, l.fraction * 100.0, l.worst))
            .collect();
        assert!(below.is_empty(), "{name}: layers below {layer_bar} fed {label}'s inputs: {below:?}");
    }

    // The printout has PyTorch's shape (scales compared above).
    let printed = params(&fx, "printed")["converted"].as_str().expect("printout");
    let ours = mask_scales(&model.to_string());
    let theirs = mask_scales(printed);
    if ours != theirs {
        let diff = ours.lines().zip(theirs.lines()).find(|(a, b)| a != b);
        panic!("{name}: printout differs: {diff:?}");
    }
}

/// Runs `model` with every quantized module's output replaced, downstream, by the reference's
/// (teacher forcing), and compares each module's own output with the reference's.
fn forced_comparison(
    name: &str,
    model: &mut Box<dyn Module>,
    reference: &Fixture,
    x: &ArrayD<f32>,
) -> Comparison {
    let order = params(reference, "output")["order"].as_array().expect("order");
    let mut torch = std::collections::HashMap::new();
    for path in order.iter().map(|p| p.as_str().expect("path")) {
        if reference.has("output", &format!("{path}.scale")) {
            let q = PerTensor::new(
                reference.tensor::<f64>("output", &format!("{path}.scale"))[[0]],
                reference.tensor::<i64>("output", &format!("{path}.zero_point"))[[0]],
            );
            let value = QuantTensor::from_int_repr(&reference.tensor::<u8>("output", path), q)
                .expect("fixture value");
            torch.insert(path.to_string(), Value::Quant(value));
        }
    }
    let force: debug::Forcing = Arc::new(move |path: &str| torch.get(path).cloned());
    let log = debug::log_outputs_forced(model, leaf_or_functional, force).expect("loggers");
    model.forward(Value::from(x.clone())).expect("forced forward");
    let outputs: BTreeMap<String, Value> = log.take().into_iter().collect();
    debug::remove_loggers(model).expect("remove loggers");
    compare(name, reference, &outputs)
}

/// The modules whose outputs are compared: leaves and QFunctionals.
fn leaf_or_functional(path: &str, m: &dyn Module) -> bool {
    (m.children().is_empty() && !path.ends_with("activation_post_process")) || m.type_name() == "QFunctional"
}

#[test]
fn resnet18_agrees_with_pytorch_fbgemm() {
    check(
        Architecture::ResNet18,
        Bar {
            layer_equal: 0.75,
            layer_max: 4,
            total_equal: 0.965,
            stock_total_equal: 0.915,
            stock_max: 5,
            sqnr_slack: 0.5,
            forced_stock_layer_equal: 0.998,
        },
    );
}

#[test]
fn mobilenet_v2_agrees_with_pytorch_fbgemm() {
    check(
        Architecture::MobileNetV2,
        Bar {
            layer_equal: 0.9998,
            layer_max: 1,
            total_equal: 0.99999,
            stock_total_equal: 0.945,
            stock_max: 4,
            sqnr_slack: 0.5,
            forced_stock_layer_equal: 0.998,
        },
    );
}
