//! Memory formats and the rounding that depends on them, against PyTorch
//! (`tools/golden/gen_layouts.py`): add / add_relu (same shape and broadcast, every pair of input
//! formats, run lengths below, at and above 64, two parallel parts), cat (channels-last fast path
//! and general path), ELU, hardswish, leaky_relu, sigmoid and tanh on NCHW and channels-last
//! inputs, bilinear upsampling and average pooling in both formats, odd channel counts throughout.
//! Every output must equal PyTorch's, with its parameters and memory format.

use ndarray::ArrayD;
use qgraph::nn::{AdaptiveAvgPool2d, AvgPool2d, Sigmoid, Size, Tanh, Upsample, UpsampleMode};
use qgraph::quantized::activation as qa;
use qgraph::{Functional, MemoryFormat, Module, PerTensor, QFunctional, QuantTensor, Value};
use qtest::{Fixture, f64_of, i64_of, name};
use serde_json::Value as Json;

fn load() -> Fixture {
    Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), "layouts")
}

fn qparams(v: &Json) -> PerTensor {
    PerTensor::new(f64_of(&v[0]), i64_of(&v[1]))
}

fn format(name: &str) -> MemoryFormat {
    match name {
        "cl" => MemoryFormat::ChannelsLast,
        "nchw" => MemoryFormat::Contiguous,
        other => panic!("format {other}"),
    }
}

fn pair(v: &Json) -> [usize; 2] {
    [v[0].as_u64().unwrap() as usize, v[1].as_u64().unwrap() as usize]
}

/// Runs the case's op on its inputs, as the quantized module or `QFunctional` PyTorch's would.
fn run(case: &Json, inputs: Vec<Value>) -> Value {
    let a = &case["args"];
    let out_q = || qparams(&a["out_q"]);
    let unary_q = || PerTensor::new(f64_of(&a["scale"]), i64_of(&a["zero_point"]));
    let functional =
        |op: Functional| QFunctional::new(out_q()).unwrap().forward_functional(op, inputs.clone());
    let module: Box<dyn Module> = match case["op"].as_str().unwrap() {
        "add" => return functional(Functional::Add).unwrap(),
        "add_relu" => return functional(Functional::AddRelu).unwrap(),
        "cat" => return functional(Functional::Cat(a["dim"].as_u64().unwrap() as usize)).unwrap(),
        "elu" => Box::new(qa::ELU::new(unary_q(), f64_of(&a["alpha"])).unwrap()),
        "hardswish" => Box::new(qa::Hardswish::new(unary_q()).unwrap()),
        "leaky_relu" => Box::new(qa::LeakyReLU::new(unary_q(), f64_of(&a["negative_slope"])).unwrap()),
        "sigmoid" => Box::new(Sigmoid::new()),
        "tanh" => Box::new(Tanh::new()),
        "upsample_bilinear" => Box::new(
            Upsample::size(Size::from(pair(&a["size"])))
                .mode(UpsampleMode::Bilinear)
                .align_corners(a["align_corners"] == true),
        ),
        "avg_pool2d" => {
            let k = |key: &str| Size::from(a[key].as_u64().unwrap() as usize);
            Box::new(AvgPool2d::new(k("kernel_size")).stride(k("stride")).padding(k("padding")))
        }
        "adaptive_avg_pool2d" => Box::new(AdaptiveAvgPool2d::new(Size::from(pair(&a["output_size"])))),
        other => panic!("no op {other}"),
    };
    module.forward(inputs.into_iter().next().unwrap()).unwrap()
}

#[test]
fn every_op_rounds_as_pytorch_in_both_formats() {
    let fx = load();
    let mut failures = Vec::new();
    assert_eq!(fx.cases.len(), 225, "the generator's cases");
    // PyTorch made the fixtures with the thread count they record (two or more, which splits
    // loops over more than 32768 elements in two); qgraph reproduces the count it is given.
    let threads = fx.threads.expect("the fixture records PyTorch's thread count");
    assert!(threads >= 2, "the fixture's two-part cases need PyTorch with two or more threads");
    qgraph::set_pytorch_threads(threads);
    for case in &fx.cases {
        let n = name(case);
        let inputs: Vec<Value> = case["formats"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let q = qparams(&case["in_q"][i]);
                let x = QuantTensor::from_int_repr(&fx.tensor::<u8>(n, &format!("x{i}")), q).unwrap();
                Value::Quant(x.with_memory_format(format(f.as_str().unwrap())))
            })
            .collect();
        let y = run(case, inputs).into_quant(n).unwrap();
        let expected: ArrayD<u8> = fx.tensor(n, "y");
        let got = y.int_repr();
        assert_eq!(got.shape(), expected.shape(), "{n}: shape");
        let differing = got.iter().zip(&expected).filter(|(g, e)| g != e).count();
        let q = y.qparams();
        let want_q = qparams(&case["out_q"]);
        let format_ok = match case["out_format"].as_str().unwrap() {
            "any" => true,
            f => y.memory_format() == format(f),
        };
        if differing > 0 || (q.scale, q.zero_point) != (want_q.scale, want_q.zero_point) || !format_ok {
            failures.push(format!(
                "{n}: {differing} of {} differ, qparams {:?} vs {:?}, format {:?} vs {}",
                expected.len(),
                q,
                want_q,
                y.memory_format(),
                case["out_format"]
            ));
        }
    }
    assert!(failures.is_empty(), "{} cases differ from PyTorch:\n{}", failures.len(), failures.join("\n"));
}
