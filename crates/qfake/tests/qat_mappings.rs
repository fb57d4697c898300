//! The QAT mappings and loaders of qfake extend qgraph's workflow: `prepare_qat` swaps
//! `nn.Linear` for the QAT `Linear` (weights fake-quantized in forward), `convert` makes it a
//! `QuantizedLinear`, and prepared and converted models save and load.

use ndarray::{ArrayD, IxDyn};
use qcore::fake_quant::fake_quantize_per_channel;
use qgraph::io;
use qgraph::nn::{Linear, ReLU, manual_seed};
use qgraph::qconfig::{QConfig, get_default_qconfig};
use qgraph::workflow::Observed;
use qgraph::{
    DeQuantStub, GraphError, Module, QConfigMapping, QuantStub, Sequential, Value, calibrate, convert_with,
    prepare_qat_with,
};

fn model() -> Box<dyn Module> {
    manual_seed(11);
    Box::new(Sequential::new(vec![
        Box::new(QuantStub::new()),
        Box::new(Linear::new(6, 4, true)),
        Box::new(ReLU::new()),
        Box::new(DeQuantStub::new()),
    ]))
}

fn batch(seed: u32) -> ArrayD<f32> {
    ArrayD::from_shape_fn(IxDyn(&[3, 6]), |i| ((i[0] * 7 + i[1] * 3) as f32 * 0.37 + seed as f32).sin())
}

fn qconfig() -> QConfig {
    get_default_qconfig("x86").unwrap()
}

fn prepared() -> Box<dyn Module> {
    let mut model = model();
    let n = prepare_qat_with(&mut model, &QConfigMapping::global(qconfig()), &qfake::qat_mappings()).unwrap();
    assert_eq!(n, 2, "QuantStub and the QAT Linear are observed");
    model
}

fn qat_linear(model: &dyn Module) -> &qfake::Linear {
    let observed = model.get("1").unwrap().downcast_ref::<Observed>().expect("observed");
    observed.inner().downcast_ref::<qfake::Linear>().expect("swapped for the QAT Linear")
}

#[test]
fn prepare_qat_swaps_linear_and_fake_quantizes_its_weight() {
    let float = model();
    let model = prepared();
    let qat = qat_linear(model.as_ref());
    assert_eq!(qat.saved_type(), qfake::Linear::SAVED_TYPE);
    assert_eq!(model.get("1").unwrap().type_name(), "Linear");
    // The weight forward uses: per-channel symmetric qint8 fake quantization of the float weight.
    let w = float.get("1").unwrap().downcast_ref::<Linear>().unwrap().weight().clone();
    let fake = qat.fake_quantized_weight().unwrap();
    for (row, fake_row) in w.outer_iter().zip(fake.outer_iter()) {
        let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = (f64::from(max) / 127.5).max(f64::from(f32::EPSILON)) as f32;
        for (&x, &y) in row.iter().zip(fake_row.iter()) {
            assert_eq!(y, fake_quantize_per_channel(x, scale, 0, -128, 127).value);
        }
    }
    assert_ne!(fake, w, "fake quantization changes the weight");
    // Forward is the float linear layer with the fake-quantized weight.
    let mut manual = float.get("1").unwrap().downcast_ref::<Linear>().unwrap().clone();
    manual.set_weight_bias(fake, manual.bias().cloned()).unwrap();
    let x = batch(0);
    let expected = ReLU::new().forward(manual.forward(x.clone().into()).unwrap()).unwrap();
    assert_eq!(model.forward(x.into()).unwrap().into_float_lossy(), expected.into_float_lossy());
}

#[test]
fn convert_makes_a_quantized_linear_and_both_stages_save_and_load() {
    let mappings = qfake::qat_mappings();
    let mut model = prepared();
    calibrate(model.as_ref(), [batch(0), batch(1)], |_, _| {}).unwrap();
    // The prepared QAT model saves; only qfake's loaders know the QAT Linear.
    let bytes = io::to_bytes(model.as_ref()).unwrap();
    let err = io::from_bytes(&bytes).unwrap_err();
    assert!(
        matches!(err.root_cause(), GraphError::UnknownModuleType { name, .. } if name == "QatLinear"),
        "{err}"
    );
    assert!(err.to_string().contains("register a loader"), "{err}");
    let mut loaded = io::from_bytes_with(&bytes, &qfake::loaders()).unwrap();
    assert_eq!(loaded.to_string(), model.to_string());
    // Both go on calibrating and convert alike.
    for m in [&model, &loaded] {
        calibrate(m.as_ref(), [batch(2)], |_, _| {}).unwrap();
    }
    convert_with(&mut model, &mappings).unwrap();
    convert_with(&mut loaded, &mappings).unwrap();
    assert_eq!(model.get("1").unwrap().type_name(), "QuantizedLinear");
    assert_eq!(loaded.to_string(), model.to_string());
    let x = Value::from(batch(5));
    let y = model.forward(x.clone()).unwrap().into_float_lossy().unwrap();
    assert_eq!(loaded.forward(x.clone()).unwrap().into_float_lossy().unwrap(), y);
    // The converted model holds only qgraph modules: the default loaders read it.
    let reloaded = io::from_bytes(&io::to_bytes(model.as_ref()).unwrap()).unwrap();
    assert_eq!(reloaded.forward(x).unwrap().into_float_lossy().unwrap(), y);
}
