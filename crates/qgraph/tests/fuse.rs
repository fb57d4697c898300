//! `fuse_modules` and `fuse_auto`: the fused modules, the folded weights, the Identity slots, the
//! printout, and every error.

use ndarray::{ArrayD, IxDyn};
use qgraph::fuse::{fuse_auto, fuse_known_modules, fuse_modules};
use qgraph::fusion::{fuse_conv_bn_weights, fuse_linear_bn_weights};
use qgraph::nn::{
    BatchNorm, BatchNorm1d, BatchNorm2d, Conv, Conv1d, Conv2d, Fused, FusedKind, Linear, ReLU, ReLU6,
    manual_seed,
};
use qgraph::{Functional, Graph, GraphError, Module, Sequential, Value, eval, train};
use qtest::XorShift;

fn random(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = XorShift::new(seed);
    ArrayD::from_shape_simple_fn(IxDyn(shape), || {
        ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    })
}

/// A batch norm with non-trivial statistics, in eval mode.
fn bn(b: BatchNorm, seed: u64) -> BatchNorm {
    let mut b = b;
    let n = b.num_features();
    let v = |s: u64| random(&[n], seed + s);
    b.set_params(v(0) * 0.2, v(1).mapv(|x| x.abs() + 0.5), Some((v(2) * 0.1 + 1.0, v(3) * 0.1))).unwrap();
    b
}

fn boxed(modules: Vec<Box<dyn Module>>) -> Box<dyn Module> {
    let mut model: Box<dyn Module> = Box::new(Sequential::new(modules));
    eval(&mut model);
    model
}

fn conv_bn_relu() -> Box<dyn Module> {
    manual_seed(1);
    boxed(vec![
        Box::new(Conv2d::new(3, 8, [3, 3]).padding([1, 1]).build().unwrap()),
        Box::new(bn(BatchNorm2d::new(8), 10)),
        Box::new(ReLU::new()),
    ])
}

fn run(model: &dyn Module, x: &ArrayD<f32>) -> ArrayD<f32> {
    model.forward(Value::from(x.clone())).unwrap().into_float("test").unwrap()
}

fn assert_close(got: &ArrayD<f32>, expected: &ArrayD<f32>) {
    assert_eq!(got.shape(), expected.shape());
    for (g, e) in got.iter().zip(expected) {
        assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "{g} vs {e}");
    }
}

#[test]
fn conv_bn_relu_becomes_conv_relu_with_the_folded_weights() {
    let mut model = conv_bn_relu();
    let x = random(&[2, 3, 6, 6], 3);
    let before = run(model.as_ref(), &x);
    let (conv, norm) = (
        model.get("0").unwrap().downcast_ref::<Conv>().unwrap().clone(),
        model.get("1").unwrap().downcast_ref::<BatchNorm>().unwrap().clone(),
    );
    let bias = conv.bias().map(|b| b.view().into_dimensionality().unwrap());
    let (w, b) = fuse_conv_bn_weights(conv.weight().view(), bias, &norm.fold_params(), false).unwrap();
    fuse_modules(&mut model, &[&["0", "1", "2"]]).unwrap();
    assert_eq!(
        model.to_string(),
        "Sequential(\n  (0): ConvReLU2d(\n    (0): Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))\n    \
         (1): ReLU()\n  )\n  (1): Identity()\n  (2): Identity()\n)"
    );
    let fused = model.get("0").unwrap().downcast_ref::<Fused>().unwrap();
    assert_eq!(fused.kind(), FusedKind::ConvReLU(2));
    let folded = fused.base().downcast_ref::<Conv>().unwrap();
    assert_eq!(folded.weight(), &w);
    assert_eq!(folded.bias().unwrap(), &b.into_dyn());
    assert_eq!(model.get("0.1").unwrap().type_name(), "ReLU");
    assert_close(&run(model.as_ref(), &x), &before);
    let names: Vec<String> = model.state_dict().into_iter().map(|(k, _)| k).collect();
    assert_eq!(names, ["0.0.weight", "0.0.bias"]);
}

/// Modules to fuse, the type of the result, and an input shape.
type Case = (Vec<Box<dyn Module>>, &'static str, Vec<usize>);

#[test]
fn every_pytorch_pattern_fuses_to_its_module() {
    manual_seed(2);
    let conv1d = || -> Box<dyn Module> { Box::new(Conv1d::new(2, 4, [3]).bias(false).build().unwrap()) };
    let conv2d = || -> Box<dyn Module> { Box::new(Conv2d::new(2, 4, [1, 1]).build().unwrap()) };
    let linear = || -> Box<dyn Module> { Box::new(Linear::new(3, 4, true)) };
    let relu = || -> Box<dyn Module> { Box::new(ReLU::new()) };
    let cases: Vec<Case> = vec![
        (vec![conv1d(), Box::new(bn(BatchNorm1d::new(4), 1))], "Conv1d", vec![1, 2, 5]),
        (vec![conv1d(), Box::new(bn(BatchNorm1d::new(4), 1)), relu()], "ConvReLU1d", vec![1, 2, 5]),
        (vec![conv2d(), relu()], "ConvReLU2d", vec![1, 2, 3, 3]),
        (vec![linear(), Box::new(bn(BatchNorm1d::new(4), 2))], "Linear", vec![2, 3]),
        (vec![linear(), relu()], "LinearReLU", vec![2, 3]),
        (vec![Box::new(bn(BatchNorm2d::new(2), 3)), relu()], "BNReLU2d", vec![1, 2, 3, 3]),
        (vec![conv2d(), Box::new(ReLU6::new())], "ConvReLU6_2d", vec![1, 2, 3, 3]),
        (vec![linear(), Box::new(ReLU6::new())], "LinearReLU6", vec![2, 3]),
    ];
    for (modules, expected, shape) in cases {
        let n = modules.len();
        let mut model = boxed(modules);
        let x = random(&shape, 4) * 4.0;
        let before = run(model.as_ref(), &x);
        let names: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        let group: Vec<&str> = names.iter().map(String::as_str).collect();
        fuse_modules(&mut model, &[&group]).unwrap();
        assert_eq!(model.get("0").unwrap().type_name(), expected);
        for name in &group[1..] {
            assert_eq!(model.get(name).unwrap().type_name(), "Identity", "{expected}");
        }
        assert_close(&run(model.as_ref(), &x), &before);
    }
}

#[test]
fn linear_bn_folds_with_fuse_linear_bn_weights() {
    manual_seed(3);
    let mut linear = Linear::new(3, 4, false);
    let mut norm = bn(BatchNorm1d::new(4), 5);
    linear.set_training(false);
    norm.set_training(false);
    let (w, b) = fuse_linear_bn_weights(linear.weight().view(), None, &norm.fold_params()).unwrap();
    let fused = fuse_known_modules(&[&linear, &norm]).unwrap();
    let fused = fused.downcast_ref::<Linear>().unwrap();
    assert_eq!(fused.weight(), &w);
    assert_eq!(fused.bias().unwrap(), &b.into_dyn());
}

fn fusion_reason(err: GraphError) -> (Vec<String>, String) {
    match err {
        GraphError::Fusion { modules, reason } => (modules, reason),
        other => panic!("not a fusion error: {other}"),
    }
}

#[test]
fn unknown_names_are_reported_with_the_names_that_exist() {
    let mut model = conv_bn_relu();
    let (modules, reason) = fusion_reason(fuse_modules(&mut model, &[&["0", "3"]]).unwrap_err());
    assert_eq!(modules, ["0", "3"]);
    assert!(reason.contains("`3`") && reason.contains("0, 1, 2"), "{reason}");
    // Nothing changed.
    assert_eq!(model.get("0").unwrap().type_name(), "Conv2d");
}

#[test]
fn unsupported_sequences_list_the_supported_patterns() {
    let mut model = conv_bn_relu();
    let (_, reason) = fusion_reason(fuse_modules(&mut model, &[&["2", "0"]]).unwrap_err());
    assert!(reason.contains("(ReLU, Conv2d) is not a supported pattern"), "{reason}");
    assert!(reason.contains("Linear + BatchNorm1d"), "{reason}");
    let mut mixed =
        boxed(vec![Box::new(Conv2d::new(2, 4, [1, 1]).build().unwrap()), Box::new(BatchNorm1d::new(4))]);
    let (_, reason) = fusion_reason(fuse_modules(&mut mixed, &[&["0", "1"]]).unwrap_err());
    assert!(reason.contains("(Conv2d, BatchNorm1d)"), "{reason}");
    let mut single = conv_bn_relu();
    assert!(fuse_modules(&mut single, &[&["0"]]).is_err());
}

#[test]
fn training_mode_is_refused_with_the_fix() {
    let mut model = conv_bn_relu();
    train(&mut model, true);
    let (_, reason) = fusion_reason(fuse_modules(&mut model, &[&["0", "1", "2"]]).unwrap_err());
    assert!(reason.contains("training mode") && reason.contains("eval(&mut model)"), "{reason}");
    let mut model = conv_bn_relu();
    qgraph::slot_mut(&mut model, "0").unwrap().set_training(true);
    let (_, reason) = fusion_reason(fuse_modules(&mut model, &[&["0", "1"]]).unwrap_err());
    assert!(reason.contains("must be in the same mode"), "{reason}");
    let mut model = conv_bn_relu();
    qgraph::slot_mut(&mut model, "0").unwrap().set_training(true);
    let (_, reason) = fusion_reason(fuse_modules(&mut model, &[&["0", "2"]]).unwrap_err());
    assert!(reason.contains("Conv2d is in training mode"), "{reason}");
}

#[test]
fn fuse_auto_finds_the_patterns_of_sequentials() {
    manual_seed(4);
    let mut model = boxed(vec![
        Box::new(Conv2d::new(3, 4, [3, 3]).build().unwrap()),
        Box::new(bn(BatchNorm2d::new(4), 1)),
        Box::new(ReLU6::new()),
        Box::new(Sequential::new(vec![
            Box::new(Conv2d::new(4, 4, [1, 1]).build().unwrap()),
            Box::new(bn(BatchNorm2d::new(4), 2)),
            Box::new(ReLU::new()),
            Box::new(ReLU::new()),
        ])),
        Box::new(qgraph::nn::Flatten::new(1, -1)),
        Box::new(Linear::new(16, 2, true)),
        Box::new(ReLU::new()),
    ]);
    eval(&mut model);
    let x = random(&[1, 3, 4, 4], 7) * 3.0;
    let before = run(model.as_ref(), &x);
    let groups = fuse_auto(&mut model).unwrap();
    assert_eq!(groups, vec![vec!["0", "1", "2"], vec!["3.0", "3.1", "3.2"], vec!["5", "6"]]);
    assert_eq!(model.get("0").unwrap().type_name(), "ConvReLU6_2d");
    assert_eq!(model.get("3.0").unwrap().type_name(), "ConvReLU2d");
    assert_eq!(model.get("3.3").unwrap().type_name(), "ReLU");
    assert_eq!(model.get("5").unwrap().type_name(), "LinearReLU");
    assert_close(&run(model.as_ref(), &x), &before);
    // Nothing left to fuse.
    assert!(fuse_auto(&mut model).unwrap().is_empty());
}

#[test]
fn fuse_auto_follows_graph_chains_whose_values_have_one_reader() {
    manual_seed(5);
    // y = bn(conv(x)); out = relu(y) + y: conv + bn fuse, bn + relu do not (y has two readers).
    let mut b = Graph::builder("Block");
    let y = b.then("conv", Conv2d::new(4, 4, [3, 3]).padding([1, 1]).build().unwrap(), Graph::INPUT);
    let y = b.then("bn", bn(BatchNorm2d::new(4), 3), &y);
    let z = b.then("relu", ReLU::new(), &y);
    let out = b.then_functional("add", qgraph::FloatFunctional::new(), Functional::Add, &[&z, &y]);
    // A second branch: conv2 -> relu2, the graph's last chain.
    let w = b.then("conv2", Conv2d::new(4, 4, [1, 1]).build().unwrap(), &out);
    let w = b.then("relu2", ReLU::new(), &w);
    let mut model: Box<dyn Module> = Box::new(b.build(&w).unwrap());
    eval(&mut model);
    let x = random(&[1, 4, 5, 5], 8);
    let before = run(model.as_ref(), &x);
    let groups = fuse_auto(&mut model).unwrap();
    assert_eq!(groups, vec![vec!["conv", "bn"], vec!["conv2", "relu2"]]);
    assert_eq!(model.get("conv").unwrap().type_name(), "Conv2d");
    assert_eq!(model.get("bn").unwrap().type_name(), "Identity");
    assert_eq!(model.get("conv2").unwrap().type_name(), "ConvReLU2d");
    assert_close(&run(model.as_ref(), &x), &before);
}

/// PyTorch's workflow fixture: fusing its float conv-bn-relu gives its fused weights, and
/// quantizing those gives its converted layer's integers and outputs, all exactly.
#[test]
fn fusing_and_quantizing_the_fixture_model_reproduces_pytorch() {
    use qgraph::QuantTensor;
    use qgraph::quantized::{QuantizedAct, QuantizedConv};
    use qkernels::elementwise::PerTensor;
    use qobserve::{ObserverSpec, QDType, QScheme};

    let fx = qtest::Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), "workflow_seed");
    let t = |case: &str, key: &str| fx.tensor::<f32>(case, key);
    let mut conv = Conv2d::new(3, 16, [3, 3]).padding([1, 1]).build().unwrap();
    conv.set_weight_bias(t("float", "1.weight"), Some(t("float", "1.bias"))).unwrap();
    let mut norm = BatchNorm2d::new(16);
    let stats = (t("float", "2.running_mean"), t("float", "2.running_var"));
    norm.set_params(stats.0, stats.1, Some((t("float", "2.weight"), t("float", "2.bias")))).unwrap();
    let mut model = boxed(vec![
        Box::new(qgraph::nn::Identity::new()),
        Box::new(conv),
        Box::new(norm),
        Box::new(ReLU::new()),
    ]);
    fuse_modules(&mut model, &[&["1", "2", "3"]]).unwrap();
    let fused = model.get("1.0").unwrap().downcast_ref::<Conv>().unwrap();
    qtest::assert_bits_eq("conv-bn-relu", "fused weight", fused.weight(), &t("fused", "1.0.weight"));
    qtest::assert_bits_eq("conv-bn-relu", "fused bias", fused.bias().unwrap(), &t("fused", "1.0.bias"));
    let spec =
        ObserverSpec::min_max().with_args(|a| a.dtype(QDType::QInt8).qscheme(QScheme::PerTensorAffine));
    let scale = fx.tensor::<f64>("quantized", "1.scale")[[0]];
    let zp = fx.tensor::<i64>("quantized", "1.zero_point")[[0]];
    let q = QuantizedConv::from_float(fused, QuantizedAct::Relu, &spec, PerTensor::new(scale, zp)).unwrap();
    assert_eq!(q.weight_int(), &fx.tensor::<i8>("quantized", "1.weight_int"));
    let x = fx.tensor::<u8>("output", "0");
    let x_q = PerTensor::new(
        fx.tensor::<f64>("output", "0.scale")[[0]],
        fx.tensor::<i64>("output", "0.zero_point")[[0]],
    );
    let data = x.view().permuted_axes(IxDyn(&[0, 2, 3, 1])).iter().copied().collect();
    let x = QuantTensor::new(data, x.shape().to_vec(), x_q).unwrap();
    let y = q.forward(Value::Quant(x)).unwrap().into_quant("test").unwrap();
    assert_eq!(y.int_repr(), fx.tensor::<u8>("output", "1"));
}

#[test]
fn fuse_modules_qat_keeps_conv_and_batch_norm_apart_and_saves() {
    let mut model = conv_bn_relu();
    train(&mut model, true);
    let conv_weight = model.get("0").unwrap().params()[0].1.clone();
    qgraph::fuse::fuse_modules_qat(&mut model, &[&["0", "1", "2"]]).unwrap();
    let fused = model.get("0").unwrap().downcast_ref::<Fused>().expect("fused");
    assert_eq!(fused.kind(), FusedKind::ConvBnReLU(2));
    assert_eq!(fused.parts().len(), 3);
    assert!(fused.activation().is_some_and(|a| a.type_name() == "ReLU"));
    assert_eq!(fused.base().params()[0].1, &conv_weight, "the conv weight is not folded");
    assert_eq!(model.get("1").unwrap().type_name(), "Identity");
    let names: Vec<String> = model.state_dict().into_iter().map(|(k, _)| k).collect();
    assert!(names.contains(&"0.1.running_var".to_string()), "{names:?}");

    let bytes = qgraph::io::to_bytes(model.as_ref()).unwrap();
    let loaded = qgraph::io::from_bytes(&bytes).unwrap();
    assert_eq!(loaded.to_string(), model.to_string());
    assert_eq!(loaded.get("0").unwrap().type_name(), "ConvBnReLU2d");
}

#[test]
fn fuse_modules_qat_refuses_what_pytorch_does_not_fuse_for_qat() {
    let mut model = boxed(vec![
        Box::new(Conv2d::new(2, 3, [3, 3]).build().unwrap()),
        Box::new(BatchNorm2d::new(3)),
        Box::new(ReLU6::new()),
    ]);
    let err = qgraph::fuse::fuse_modules_qat(&mut model, &[&["0", "1", "2"]]).unwrap_err();
    assert!(err.to_string().contains("not a pattern quantization-aware training fuses"), "{err}");
    let mut mixed = conv_bn_relu();
    train(&mut mixed, true);
    let slot = qgraph::slot_mut(&mut mixed, "1").unwrap();
    slot.set_training(false);
    let err = qgraph::fuse::fuse_modules_qat(&mut mixed, &[&["0", "1"]]).unwrap_err();
    assert!(err.to_string().contains("same mode"), "{err}");
}
