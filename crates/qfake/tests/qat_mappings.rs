//! `prepare_qat` and `convert` on qgraph's workflow: the swapped modules, the fake-quantizing
//! activation post-processes, saving and loading a prepared model (fake-quantizer state included)
//! and the converted one.

use ndarray::{ArrayD, IxDyn};
use qgraph::io;
use qgraph::nn::{Linear, ReLU, manual_seed};
use qgraph::workflow::Observed;
use qgraph::{DeQuantStub, GraphError, Module, QuantStub, Sequential, Value, train};

fn model() -> Box<dyn Module> {
    manual_seed(11);
    let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![
        Box::new(QuantStub::new()),
        Box::new(Linear::new(6, 4, true)),
        Box::new(ReLU::new()),
        Box::new(DeQuantStub::new()),
    ]));
    train(&mut model, true);
    model
}

fn batch(seed: u32) -> ArrayD<f32> {
    ArrayD::from_shape_fn(IxDyn(&[3, 6]), |i| ((i[0] * 7 + i[1] * 3) as f32 * 0.37 + seed as f32).sin())
}

fn prepared() -> Box<dyn Module> {
    let mut model = model();
    let n = qfake::prepare_qat(&mut model, &qfake::get_default_qat_qconfig("x86").unwrap()).unwrap();
    assert_eq!(n, 2, "QuantStub and the QAT Linear get fake quantizers");
    model
}

#[test]
fn prepare_qat_swaps_linear_and_fake_quantizes_weight_and_output() {
    let float = model();
    let model = prepared();
    let observed = model.get("1").unwrap().downcast_ref::<Observed>().expect("prepared");
    let qat = observed.inner().downcast_ref::<qfake::QatLinear>().expect("swapped for the QAT Linear");
    assert_eq!(qat.saved_type(), qfake::QatLinear::SAVED_TYPE);
    assert_eq!(model.get("1").unwrap().type_name(), "Linear");
    assert_eq!(model.get("1.weight_fake_quant").unwrap().type_name(), "FusedMovingAvgObsFakeQuantize");
    assert_eq!(model.get("0.activation_post_process").unwrap().type_name(), "FusedMovingAvgObsFakeQuantize");
    assert!(model.get("2").unwrap().is::<ReLU>(), "ReLU gets no post-process");
    // The output is a fake-quantized version of the float model's: close, not equal.
    let x = Value::from(batch(0));
    let y = model.forward(x.clone()).unwrap().into_float("test").unwrap();
    let expected = float.forward(x).unwrap().into_float("test").unwrap();
    let diff = y.iter().zip(&expected).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff > 0.0 && diff < 0.05, "fake quantization moves the output a little: {diff}");
}

#[test]
fn prepared_and_converted_models_save_and_load() {
    let kinds = qfake::get_default_qat_qconfig("x86").unwrap().kinds;
    let mut model = prepared();
    for seed in 0..3 {
        model.forward(Value::from(batch(seed))).unwrap();
    }
    let bytes = io::to_bytes(model.as_ref()).unwrap();
    let err = io::from_bytes(&bytes).unwrap_err();
    assert!(matches!(err.root_cause(), GraphError::UnknownModuleType { .. }), "{err}");
    let mut loaded = io::from_bytes_with(&bytes, &qfake::loaders()).unwrap();
    train(&mut loaded, true);
    assert_eq!(loaded.to_string(), model.to_string());
    // Both continue alike (observer statistics and fake-quant parameters were saved).
    let x = Value::from(batch(5));
    let (a, b) = (model.forward(x.clone()).unwrap(), loaded.forward(x.clone()).unwrap());
    assert_eq!(a.into_float("test").unwrap(), b.into_float("test").unwrap());
    qfake::convert(&mut model, kinds).unwrap();
    qfake::convert(&mut loaded, kinds).unwrap();
    assert_eq!(model.get("1").unwrap().type_name(), "QuantizedLinear");
    assert_eq!(loaded.to_string(), model.to_string());
    let y = model.forward(x.clone()).unwrap().into_float_lossy().unwrap();
    assert_eq!(loaded.forward(x.clone()).unwrap().into_float_lossy().unwrap(), y);
    // The converted model holds only qgraph modules: the default loaders read it.
    let reloaded = io::from_bytes(&io::to_bytes(model.as_ref()).unwrap()).unwrap();
    assert_eq!(reloaded.forward(x).unwrap().into_float_lossy().unwrap(), y);
}

/// `fuse_modules_qat` of Linear + BatchNorm1d gives `LinearBn1d`, which `prepare_qat` swaps for
/// the QAT module; it trains, saves and loads (batch-norm state and freeze flag included), and
/// converts to a quantized Linear.
#[test]
fn linear_bn1d_prepares_saves_loads_and_converts() {
    use qgraph::nn::BatchNorm1d;
    manual_seed(3);
    let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![
        Box::new(QuantStub::new()),
        Box::new(Linear::new(6, 4, true)),
        Box::new(BatchNorm1d::new(4)),
        Box::new(DeQuantStub::new()),
    ]));
    train(&mut model, true);
    qgraph::fuse::fuse_modules_qat(&mut model, &[&["1", "2"]]).unwrap();
    assert_eq!(model.get("1").unwrap().type_name(), "LinearBn1d");
    let qconfig = qfake::get_default_qat_qconfig("x86").unwrap();
    qfake::prepare_qat(&mut model, &qconfig).unwrap();
    let observed = model.get("1").unwrap().downcast_ref::<Observed>().expect("prepared");
    assert!(observed.inner().is::<qfake::QatLinearBn>(), "swapped for the QAT LinearBn1d");
    assert_eq!(model.get("1.bn").unwrap().type_name(), "BatchNorm1d");
    let backprop = qfake::train::Backprop::default();
    for seed in 0..2 {
        backprop.forward(model.as_mut(), Value::from(batch(seed))).unwrap();
    }
    let bn = model.get("1.bn").unwrap();
    let running_mean = bn.params().into_iter().find(|(n, _)| *n == "running_mean").unwrap().1;
    assert!(
        running_mean.iter().all(|&m| m != 0.0),
        "training forwards update the running mean: {running_mean}"
    );
    let bytes = io::to_bytes(model.as_ref()).unwrap();
    let mut loaded = io::from_bytes_with(&bytes, &qfake::loaders()).unwrap();
    train(&mut loaded, true);
    assert_eq!(loaded.to_string(), model.to_string());
    let x = Value::from(batch(7));
    let (a, b) = (model.forward(x.clone()).unwrap(), loaded.forward(x.clone()).unwrap());
    assert_eq!(a.into_float("test").unwrap(), b.into_float("test").unwrap());
    qfake::convert(&mut model, qconfig.kinds).unwrap();
    assert_eq!(model.get("1").unwrap().type_name(), "QuantizedLinear");

    // PyTorch's fuse_linear_bn(is_qat=True) checks.
    let mut wrong: Box<dyn Module> =
        Box::new(Sequential::new(vec![Box::new(Linear::new(6, 4, true)), Box::new(BatchNorm1d::new(5))]));
    train(&mut wrong, true);
    let err = qgraph::fuse::fuse_modules_qat(&mut wrong, &[&["0", "1"]]).unwrap_err().to_string();
    assert!(err.contains("must match num_features"), "{err}");
}
