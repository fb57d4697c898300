//! The workflow's rules and errors: qconfig priority, what prepare observes, and each mistake a
//! user can make between prepare and inference.

use ndarray::ArrayD;
use qgraph::fuse::fuse_modules;
use qgraph::nn::{Conv2d, Linear, ReLU};
use qgraph::qconfig::{default_qconfig, get_default_qconfig};
use qgraph::workflow::Observed;
use qgraph::{
    FloatFunctional, Functional, Graph, GraphError, GraphResult, Module, QConfigMapping, QuantStub,
    Sequential, Value, calibrate, convert, eval, prepare,
};

mod common;
use common::{random, resnet_model, seed_model};

fn observed(model: &dyn Module) -> Vec<String> {
    model.named_modules().into_iter().filter(|(_, m)| m.is::<Observed>()).map(|(p, _)| p).collect()
}

fn fused_seed() -> Box<dyn Module> {
    let mut model = seed_model().unwrap();
    eval(&mut model);
    fuse_modules(&mut model, &[&["1", "2", "3"], &["4", "5", "6"]]).unwrap();
    model
}

fn images(n: usize) -> Vec<ArrayD<f32>> {
    (0..n as u64).map(|i| random(&[1, 3, 28, 28], 40 + i)).collect()
}

#[test]
fn qconfig_priority_is_name_then_type_then_parent() {
    let x86 = get_default_qconfig("x86").unwrap();
    let mut model = resnet_model().unwrap();
    eval(&mut model);
    let mapping = QConfigMapping::global(x86.clone())
        .set_type("Linear", None)
        .set_name("layer1", None)
        .set_name("layer1.0.conv2", Some(default_qconfig()));
    prepare(&mut model, &mapping).unwrap();
    let paths = observed(model.as_ref());
    // layer1 is excluded except conv2, named explicitly; Linear is excluded by type.
    assert!(paths.contains(&"layer1.0.conv2".to_string()), "{paths:?}");
    assert!(
        !paths.iter().any(|p| p == "layer1.0.conv1" || p == "layer1.0.skip_add_relu" || p == "fc"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"layer2.0.conv1".to_string()) && paths.contains(&"quant".to_string()),
        "{paths:?}"
    );
    let conv2 = model.get("layer1.0.conv2").unwrap().downcast_ref::<Observed>().unwrap();
    assert_eq!(conv2.qconfig(), &default_qconfig());
}

#[test]
fn prepare_observes_pytorchs_types_and_prints_the_observers() {
    let mut model = fused_seed();
    let mapping = QConfigMapping::global(default_qconfig()).set_name("9", None).set_name("10", None);
    assert_eq!(prepare(&mut model, &mapping).unwrap(), 3);
    assert_eq!(observed(model.as_ref()), ["0", "1", "4"]);
    calibrate(model.as_ref(), images(2), |_, _| {}).unwrap();
    let text = model.to_string();
    assert!(
        text.contains("(0): QuantStub(\n    (activation_post_process): MinMaxObserver(min_val="),
        "{text}"
    );
    assert!(
        text.contains("    (1): ReLU()\n    (activation_post_process): MinMaxObserver(min_val=0.0, max_val=")
    );
}

#[test]
fn no_qconfig_anywhere_is_an_error() {
    let mut model = fused_seed();
    let err = prepare(&mut model, &QConfigMapping::default()).unwrap_err();
    assert!(err.to_string().contains("no module has a qconfig"), "{err}");
}

#[test]
fn a_float_tensor_reaching_a_quantized_module_names_it_and_the_missing_quant_stub() {
    // The seed's model with a global qconfig: the Linear after the DeQuantStub is converted too,
    // and then receives a float tensor (PyTorch: "Could not run 'quantized::linear' with
    // arguments from the 'CPU' backend").
    let mut model = fused_seed();
    prepare(&mut model, &QConfigMapping::global(default_qconfig())).unwrap();
    calibrate(model.as_ref(), images(2), |_, _| {}).unwrap();
    convert(&mut model).unwrap();
    let err = model.forward(Value::from(images(1).remove(0))).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("module `9`: QuantizedLinear received a float tensor"), "{text}");
    assert!(text.contains("QuantStub is missing"), "{text}");
    assert!(matches!(err.root_cause(), GraphError::ExpectedQuantized { .. }));
}

#[test]
fn convert_names_every_module_whose_observer_saw_no_data() {
    let mut model = fused_seed();
    prepare(&mut model, &QConfigMapping::global(default_qconfig()).set_name("9", None)).unwrap();
    let err = convert(&mut model).unwrap_err().to_string();
    assert!(err.contains("`0`, `1`, `4` saw no data"), "{err}");
}

#[test]
fn calibrate_reports_progress() {
    let mut model = fused_seed();
    prepare(&mut model, &QConfigMapping::global(default_qconfig()).set_name("9", None)).unwrap();
    let mut seen = Vec::new();
    calibrate(model.as_ref(), images(3), |done, total| seen.push((done, total))).unwrap();
    assert_eq!(seen, [(1, Some(3)), (2, Some(3)), (3, Some(3))]);
}

#[test]
fn one_float_functional_at_two_graph_call_sites_is_refused() {
    let mut b = Graph::builder("Twice");
    let x = Graph::INPUT;
    let y = b.then_functional("add", FloatFunctional::new(), Functional::Add, &[x, x]);
    let y2 = b.call_functional("add", Functional::Add, &[&y, x]);
    let err = b.build(&y2).unwrap_err().to_string();
    assert!(err.contains("reuses FloatFunctional `add`"), "{err}");
}

#[test]
fn a_float_functional_used_only_for_scalar_ops_converts_as_in_pytorch() {
    // add_scalar and mul_scalar do not observe their output, so the FloatFunctional's observer
    // sees nothing; PyTorch converts it with its default parameters, and so does convert.
    let mut b = Graph::builder("Scalars");
    let x = b.then("quant", QuantStub::new(), Graph::INPUT);
    let y = b.then_functional("add_scalar", FloatFunctional::new(), Functional::AddScalar(1.5), &[&x]);
    let y = b.then_functional("mul_scalar", FloatFunctional::new(), Functional::MulScalar(0.5), &[&y]);
    let y = b.then("dequant", qgraph::DeQuantStub::new(), &y);
    let mut model: Box<dyn Module> = Box::new(b.build(&y).unwrap());
    prepare(&mut model, &QConfigMapping::global(get_default_qconfig("x86").unwrap())).unwrap();
    calibrate(model.as_ref(), images(2), |_, _| {}).unwrap();
    convert(&mut model).unwrap();
    let x = random(&[1, 3, 8, 8], 7);
    let y = model.forward(Value::from(x.clone())).unwrap().into_float("test").unwrap();
    let expected = x.mapv(|v| (v + 1.5) * 0.5);
    let worst = y.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 0.02, "{worst}");
}

/// A hand-written module that calls one FloatFunctional twice per forward, as
/// pytorch/pytorch#29657 describes.
#[derive(Debug, Clone)]
struct AddsTwice {
    children: Vec<(String, Box<dyn Module>)>,
}

impl Module for AddsTwice {
    fn type_name(&self) -> &str {
        "AddsTwice"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let quant = &self.children[0].1;
        let add = &self.children[1].1;
        let x = quant.forward(input)?;
        let y = add.forward_functional(Functional::Add, vec![x.clone(), x.clone()])?;
        add.forward_functional(Functional::Add, vec![y, x])
    }

    fn children(&self) -> Vec<(&str, &dyn Module)> {
        self.children.iter().map(|(n, m)| (n.as_str(), m.as_ref())).collect()
    }

    fn child_slot(&mut self, name: &str) -> Option<&mut Box<dyn Module>> {
        self.children.iter_mut().find(|(n, _)| n == name).map(|(_, m)| m)
    }
}

#[test]
fn one_float_functional_called_twice_per_pass_is_reported_by_calibrate() {
    let mut model: Box<dyn Module> = Box::new(AddsTwice {
        children: vec![
            ("quant".into(), Box::new(QuantStub::new())),
            ("add".into(), Box::new(FloatFunctional::new())),
        ],
    });
    prepare(&mut model, &QConfigMapping::global(default_qconfig())).unwrap();
    let err = calibrate(model.as_ref(), images(2), |_, _| {}).unwrap_err().to_string();
    assert!(
        err.contains("the module observed by `add.activation_post_process` ran 4 times in 2 forward passes"),
        "{err}"
    );
}

#[test]
fn an_observed_module_called_at_two_graph_sites_is_refused_by_prepare() {
    let mut b = Graph::builder("Reuse");
    let x = b.then("fc", Linear::new(4, 4, true), Graph::INPUT);
    let y = b.call("fc", &x);
    let mut model: Box<dyn Module> = Box::new(b.build(&y).unwrap());
    let err = prepare(&mut model, &QConfigMapping::global(default_qconfig())).unwrap_err().to_string();
    assert!(err.contains("module `fc` is called at more than one place"), "{err}");
    // A reused ReLU has no observer, so it is fine (PyTorch's float ResNet does this).
    let mut b = Graph::builder("ReuseRelu");
    let x = b.then("quant", QuantStub::new(), Graph::INPUT);
    let x = b.then("relu", ReLU::new(), &x);
    let y = b.call("relu", &x);
    let mut model: Box<dyn Module> = Box::new(b.build(&y).unwrap());
    prepare(&mut model, &QConfigMapping::global(default_qconfig())).unwrap();
}

#[test]
fn pools_relu_and_flatten_run_on_quantized_values() {
    let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![
        Box::new(QuantStub::new()),
        Box::new(Conv2d::new(3, 4, [3, 3]).build().unwrap()),
        Box::new(ReLU::new()),
        Box::new(qgraph::nn::MaxPool2d::new(2)),
        Box::new(qgraph::nn::Flatten::new(1, -1)),
    ]));
    eval(&mut model);
    prepare(&mut model, &QConfigMapping::global(get_default_qconfig("x86").unwrap())).unwrap();
    calibrate(model.as_ref(), (0..2).map(|i| random(&[1, 3, 9, 9], i)), |_, _| {}).unwrap();
    convert(&mut model).unwrap();
    let out = model.forward(Value::from(random(&[1, 3, 9, 9], 5))).unwrap();
    assert!(out.is_quant());
    assert_eq!(out.shape().unwrap(), [1, 4 * 3 * 3]);
}

#[test]
fn quant_wrapper_and_one_shot_quantize() {
    let inner: Box<dyn Module> = Box::new(Sequential::new(vec![
        Box::new(Conv2d::new(3, 4, [3, 3]).padding([1, 1]).build().unwrap()),
        Box::new(ReLU::new()),
    ]));
    let mut model: Box<dyn Module> = Box::new(qgraph::QuantWrapper::new(inner));
    eval(&mut model);
    let data: Vec<ArrayD<f32>> = (0..2).map(|i| random(&[1, 3, 8, 8], 70 + i)).collect();
    qgraph::quantize(&mut model, &QConfigMapping::global(default_qconfig()), |m| {
        calibrate(m, data, |_, _| {})
    })
    .unwrap();
    let text = model.to_string();
    assert!(text.starts_with("QuantWrapper(\n  (quant): Quantize(scale=tensor(["), "{text}");
    assert!(
        text.contains("  (dequant): DeQuantize()\n  (module): Sequential(\n    (0): QuantizedConv2d(3, 4,"),
        "{text}"
    );
    let out = model.forward(Value::from(random(&[1, 3, 8, 8], 9))).unwrap();
    assert!(!out.is_quant(), "QuantWrapper dequantizes its output");
    assert_eq!(out.shape().unwrap(), [1, 4, 8, 8]);
}

#[test]
fn dropout_inplace_is_printed_saved_and_passed_on_by_convert() {
    let dropout = qgraph::nn::Dropout::new(0.2).unwrap().with_inplace(true);
    assert_eq!((&dropout as &dyn Module).to_string(), "Dropout(p=0.2, inplace=True)");
    let loaded = qgraph::io::from_bytes(&qgraph::io::to_bytes(&dropout).unwrap()).unwrap();
    assert_eq!(loaded.to_string(), "Dropout(p=0.2, inplace=True)");
    let mut model: Box<dyn Module> = Box::new(
        Sequential::named(vec![
            ("quant".into(), Box::new(QuantStub::new())),
            ("drop".into(), loaded),
            ("dequant".into(), Box::new(qgraph::DeQuantStub::new())),
        ])
        .unwrap(),
    );
    eval(&mut model);
    prepare(&mut model, &QConfigMapping::global(get_default_qconfig("x86").unwrap())).unwrap();
    model.forward(Value::from(random(&[1, 4], 3))).unwrap();
    convert(&mut model).unwrap();
    let quantized = model.get("drop").unwrap().to_string();
    assert_eq!(quantized, "QuantizedDropout(p=0.2, inplace=True)");
    let loaded = qgraph::io::from_bytes(&qgraph::io::to_bytes(model.as_ref()).unwrap()).unwrap();
    assert_eq!(loaded.get("drop").unwrap().to_string(), quantized);
}
