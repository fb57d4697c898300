//! Dynamic quantized linear modules against PyTorch 2.15's `quantize_dynamic` on a small
//! `Sequential` (`tools/golden/gen_dynamic_linear.py`): per-tensor, per-channel and float16
//! weights, plain and fused `LinearReLU`, a 3-D input. The modules are swapped in through the
//! dynamic mapping entries; printouts and outputs must equal PyTorch's exactly, and a saved model
//! loads back (through the registered loaders) with the same outputs.

use ndarray::ArrayD;
use qgraph::io::{self, Loaders};
use qgraph::mappings::Swap;
use qgraph::mappings::get_default_dynamic_quant_module_mappings;
use qgraph::nn::{Fused, FusedKind, Identity, Linear, ReLU};
use qgraph::qconfig::{
    QConfig, default_dynamic_qconfig, float16_dynamic_qconfig, per_channel_dynamic_qconfig,
};
use qgraph::quantized::DynamicQuantizedLinear;
use qgraph::{GraphError, Module, Sequential, Value};
use qtest::{Fixture, assert_bits_eq, name};

fn fixture() -> Fixture {
    Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), "dynamic_linear")
}

fn linear(w: ArrayD<f32>, b: Option<ArrayD<f32>>) -> Linear {
    let (out, inp) = (w.shape()[0], w.shape()[1]);
    let mut l = Linear::new(inp, out, b.is_some());
    l.set_weight_bias(w, b).unwrap();
    l
}

fn qconfig(kind: &str) -> QConfig {
    match kind {
        "per_tensor" => default_dynamic_qconfig(),
        "per_channel" => per_channel_dynamic_qconfig(),
        "float16" => float16_dynamic_qconfig(),
        other => panic!("unknown kind {other}"),
    }
}

/// The float model of the fixture, its children swapped by the dynamic mapping entries.
fn quantized_model(fx: &Fixture, case: &str, fused: bool, qconfig: &QConfig) -> Sequential {
    let l0 = linear(fx.tensor(case, "w0"), Some(fx.tensor(case, "b0")));
    let l2 = linear(fx.tensor(case, "w2"), None);
    let float: Vec<Box<dyn Module>> = if fused {
        let f = Fused::new(FusedKind::LinearReLU, Box::new(l0), Box::new(ReLU::new())).unwrap();
        vec![Box::new(f), Box::new(Identity::new()), Box::new(l2)]
    } else {
        vec![Box::new(l0), Box::new(ReLU::new()), Box::new(l2)]
    };
    let mappings = get_default_dynamic_quant_module_mappings();
    let swapped = float
        .into_iter()
        .map(|m| match mappings.swap(Swap::Dynamic, m.as_ref(), qconfig) {
            Some(q) => q.unwrap(),
            None => m,
        })
        .collect();
    Sequential::new(swapped)
}

#[test]
fn quantize_dynamic_matches_pytorch() {
    let fx = fixture();
    assert_eq!(fx.cases.len(), 5);
    let loaders = Loaders::default();
    for case in &fx.cases {
        let c = name(case);
        let fused = case["fused"].as_bool().unwrap();
        let model = quantized_model(&fx, c, fused, &qconfig(case["kind"].as_str().unwrap()));
        assert_eq!((&model as &dyn Module).to_string(), case["repr"].as_str().unwrap(), "{c}: printout");
        let x: ArrayD<f32> = fx.tensor(c, "x");
        let want: ArrayD<f32> = fx.tensor(c, "out");
        let got = model.forward(Value::Float(x.clone())).unwrap().into_float("test").unwrap();
        assert_bits_eq(c, "out", &got, &want);
        // A second call reuses the warm scratch and gives the same bits.
        let again = model.forward(Value::Float(x.clone())).unwrap().into_float("test").unwrap();
        assert_bits_eq(c, "out (second call)", &again, &want);
        // Saved and loaded back through the registered loaders.
        let bytes = io::to_bytes(&model).unwrap();
        let loaded = io::from_bytes_with(&bytes, &loaders).unwrap();
        assert_eq!(loaded.to_string(), case["repr"].as_str().unwrap(), "{c}: loaded printout");
        let out = loaded.forward(Value::Float(x)).unwrap().into_float("test").unwrap();
        assert_bits_eq(c, "out (loaded)", &out, &want);
    }
}

#[test]
fn without_the_loader_loading_names_the_fix() {
    let l = Linear::new(4, 3, true);
    let q = DynamicQuantizedLinear::from_float(&l, &default_dynamic_qconfig(), false).unwrap();
    let bytes = io::to_bytes(&q).unwrap();
    let err = io::from_bytes_with(&bytes, &Loaders::empty()).unwrap_err();
    assert!(err.to_string().contains("DynamicQuantizedLinear"), "{err}");
}

#[test]
fn bad_inputs_and_qconfigs_are_errors() {
    let l = Linear::new(4, 3, true);
    let q = DynamicQuantizedLinear::from_float(&l, &per_channel_dynamic_qconfig(), false).unwrap();
    // PyTorch: "Expected input.dim() >= 2".
    let err = q.forward(Value::Float(ArrayD::zeros(ndarray::IxDyn(&[4])))).unwrap_err();
    assert!(err.to_string().contains("dim() >= 2"), "{err}");
    assert!(q.forward(Value::Float(ArrayD::zeros(ndarray::IxDyn(&[2, 5])))).is_err());
    // A quint8 weight observer is refused, as PyTorch's from_float refuses it.
    let bad = QConfig {
        activation: default_dynamic_qconfig().activation,
        weight: qobserve::ObserverSpec::min_max(),
    };
    let err = DynamicQuantizedLinear::from_float(&l, &bad, false).unwrap_err();
    assert!(matches!(err, GraphError::InvalidArgument { .. }), "{err}");
    // Empty batch: empty output.
    let y = q.forward(Value::Float(ArrayD::zeros(ndarray::IxDyn(&[0, 4])))).unwrap();
    assert_eq!(y.shape().unwrap(), &[0, 3]);
}

#[test]
fn non_linear_modules_are_not_swapped() {
    let m = get_default_dynamic_quant_module_mappings();
    assert!(m.swap(Swap::Dynamic, &ReLU::new(), &default_dynamic_qconfig()).is_none());
    assert!(m.swap(Swap::Qat, &Linear::new(2, 2, true), &default_dynamic_qconfig()).is_none());
    let swapped =
        m.swap(Swap::Dynamic, &Linear::new(2, 2, true), &default_dynamic_qconfig()).unwrap().unwrap();
    assert_eq!(swapped.type_name(), "DynamicQuantizedLinear");
}
