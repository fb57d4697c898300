//! Graphs with several inputs and outputs: a two-input, two-output model through fuse, prepare,
//! calibrate, convert, save and load; tuples of the wrong arity and tuples where a tensor is
//! needed are errors naming the module, the value and the fix.

use qgraph::fuse::fuse_modules;
use qgraph::io;
use qgraph::nn::{BatchNorm2d, Conv2d, ReLU};
use qgraph::qconfig::get_default_qconfig;
use qgraph::{
    DeQuantStub, FloatFunctional, Functional, Graph, GraphError, Module, PerTensor, QConfigMapping,
    QuantStub, QuantTensorOf, Value, calibrate, convert, eval, prepare,
};

mod common;
use common::random;

/// `forward(x, y)`: `a = relu(bn(conv_x(quant_x(x))))`, `b = conv_y(quant_y(y))`, returns
/// `(dequant(a + b), dequant(cat([a, b], 1)))`.
fn two_in_two_out() -> Box<dyn Module> {
    let mut b = Graph::builder("TwoInTwoOut");
    let inputs = b.inputs(&["x", "y"]);
    let qx = b.then("quant_x", QuantStub::new(), &inputs[0]);
    let qy = b.then("quant_y", QuantStub::new(), &inputs[1]);
    let a = b.then("conv_x", Conv2d::new(3, 4, [3, 3]).padding([1, 1]).build().unwrap(), &qx);
    let a = b.then("bn_x", BatchNorm2d::new(4), &a);
    let a = b.then("relu_x", ReLU::new(), &a);
    let c = b.then("conv_y", Conv2d::new(3, 4, [1, 1]).build().unwrap(), &qy);
    let sum = b.then_functional("add", FloatFunctional::new(), Functional::Add, &[&a, &c]);
    let both = b.then_functional("cat", FloatFunctional::new(), Functional::Cat(1), &[&a, &c]);
    let sum = b.then("dequant_add", DeQuantStub::new(), &sum);
    let both = b.then("dequant_cat", DeQuantStub::new(), &both);
    let mut model: Box<dyn Module> = Box::new(b.build_many(&[&sum, &both]).unwrap());
    eval(&mut model);
    model
}

fn pair(seed: u64) -> Value {
    Value::Tuple(vec![Value::from(random(&[2, 3, 6, 6], seed)), Value::from(random(&[2, 3, 6, 6], seed + 1))])
}

/// The two outputs, as floats.
fn outputs(model: &dyn Module, input: Value) -> (ndarray::ArrayD<f32>, ndarray::ArrayD<f32>) {
    let mut out = model.forward(input).unwrap().into_tuple("test").unwrap().into_iter();
    let (sum, both) = (out.next().unwrap(), out.next().unwrap());
    assert!(out.next().is_none());
    (sum.into_float("test").unwrap(), both.into_float("test").unwrap())
}

#[test]
fn two_inputs_two_outputs_through_the_whole_workflow_and_save() {
    let mut model = two_in_two_out();
    let graph = model.downcast_ref::<Graph>().unwrap();
    assert_eq!(graph.inputs(), ["x", "y"]);
    assert_eq!(graph.outputs(), ["dequant_add", "dequant_cat"]);
    let (sum, both) = outputs(model.as_ref(), pair(1));
    assert_eq!((sum.shape(), both.shape()), (&[2, 4, 6, 6][..], &[2, 8, 6, 6][..]));

    // The float model saves and loads like any other, inputs and outputs included.
    let loaded = io::from_bytes(&io::to_bytes(model.as_ref()).unwrap()).unwrap();
    assert_eq!(outputs(loaded.as_ref(), pair(1)), (sum, both));

    fuse_modules(&mut model, &[&["conv_x", "bn_x", "relu_x"]]).unwrap();
    assert_eq!(model.get("conv_x").unwrap().type_name(), "ConvReLU2d");
    let float = model.clone();
    prepare(&mut model, &QConfigMapping::global(get_default_qconfig("x86").unwrap())).unwrap();
    calibrate(model.as_ref(), (0..4).map(|i| pair(10 + 2 * i)), |_, _| {}).unwrap();
    convert(&mut model).unwrap();
    assert_eq!(model.get("conv_x").unwrap().type_name(), "QuantizedConvReLU2d");
    assert_eq!(model.get("add").unwrap().type_name(), "QFunctional");

    let (q_sum, q_both) = outputs(model.as_ref(), pair(1));
    let worst = |a: &ndarray::ArrayD<f32>, b: &ndarray::ArrayD<f32>| {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
    };
    let (float_sum, float_both) = outputs(float.as_ref(), pair(1));
    let (ws, wb) = (worst(&q_sum, &float_sum), worst(&q_both, &float_both));
    let range = float_both.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(ws < 0.05 && wb < 0.05, "{ws} {wb} of {range}");

    let bytes = io::to_bytes(model.as_ref()).unwrap();
    let loaded = io::from_bytes(&bytes).unwrap();
    assert_eq!(loaded.to_string(), model.to_string());
    let (l_sum, l_both) = outputs(loaded.as_ref(), pair(1));
    let bits = |x: &ndarray::ArrayD<f32>| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!((bits(&l_sum), bits(&l_both)), (bits(&q_sum), bits(&q_both)));
    assert_eq!(io::to_bytes(loaded.as_ref()).unwrap(), bytes);

    // The quantized modules run on quint8 only: a qint8 tensor or a tuple is an error naming the
    // module and the value, never a panic.
    let x = random(&[1, 3, 6, 6], 3);
    let qint8 = Value::from(QuantTensorOf::<i8>::quantize(&x, PerTensor::new(0.02, 0)).unwrap());
    let tuple = Value::Tuple(vec![Value::from(x)]);
    let mut checked = 0;
    for (path, module) in model.named_modules() {
        if !module.type_name().starts_with("Quantized") {
            continue;
        }
        for (value, what) in
            [(&qint8, "a qint8 tensor of shape [1, 3, 6, 6]"), (&tuple, "a tuple of 1 values")]
        {
            let err = module.forward(value.clone()).unwrap_err();
            assert!(matches!(err.root_cause(), GraphError::UnsupportedValue { .. }), "{path}: {err:?}");
            assert!(err.to_string().contains(what), "{path}: {err}");
        }
        checked += 1;
    }
    assert_eq!(checked, 2, "conv_x and conv_y");
}

#[test]
fn a_tuple_of_the_wrong_arity_or_a_tensor_is_refused_naming_the_graph_and_the_fix() {
    let model = two_in_two_out();
    let one = Value::Tuple(vec![Value::from(random(&[1, 3, 4, 4], 1))]);
    let err = model.forward(one).unwrap_err();
    assert!(matches!(err, GraphError::UnsupportedValue { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "TwoInTwoOut received a tuple of 1 values (a float32 tensor of shape [1, 3, 4, 4]) but runs on a tuple \
         of 2 values (x, y): pass a Value::Tuple with one value per graph input, in order"
    );
    let three = Value::Tuple(vec![Value::from(random(&[1, 3, 4, 4], 1)); 3]);
    assert!(model.forward(three).unwrap_err().to_string().contains("a tuple of 3 values"));
    let tensor = model.forward(Value::from(random(&[1, 3, 4, 4], 1))).unwrap_err().to_string();
    assert!(tensor.starts_with("TwoInTwoOut received a float32 tensor of shape [1, 3, 4, 4]"), "{tensor}");
}

#[test]
fn tuples_pack_and_unpack_inside_a_graph_and_children_take_several_values() {
    // Inner graph: forward(a, b) returns (a + b, a); the outer graph calls it on (x, x) and
    // picks its elements apart.
    let mut inner = Graph::builder("Inner");
    let ab = inner.inputs(&["a", "b"]);
    let sum = inner.then_functional("add", FloatFunctional::new(), Functional::Add, &[&ab[0], &ab[1]]);
    let inner = inner.build_many(&[&sum, &ab[0]]).unwrap();

    let mut b = Graph::builder("Outer");
    let x = Graph::INPUT;
    b.add("inner", inner);
    let pair = b.call_many("inner", &[x, x]);
    let twice = b.get_item("first", &pair, 0);
    let same = b.get_item("second", &pair, 1);
    let packed = b.tuple("packed", &[&twice, &same]);
    let outer = b.build(&packed).unwrap();
    assert_eq!(outer.inputs(), [Graph::INPUT]);
    assert_eq!(outer.outputs(), ["packed"]);

    let x = random(&[2, 3], 5);
    let out = outer.forward(Value::from(x.clone())).unwrap();
    assert_eq!(out, Value::Tuple(vec![Value::from(&x + &x), Value::from(x.clone())]));
    let loaded = io::from_bytes(&io::to_bytes(&outer).unwrap()).unwrap();
    assert_eq!(loaded.forward(Value::from(x.clone())).unwrap(), out);

    // An index past the tuple's end names the node and the tuple's length.
    let mut b = Graph::builder("Bad");
    let t = b.tuple("t", &[Graph::INPUT, Graph::INPUT]);
    let item = b.get_item("third", &t, 2);
    let bad = b.build(&item).unwrap();
    let err = bad.forward(Value::from(x.clone())).unwrap_err().to_string();
    assert!(err.contains("GetItem index = 2") && err.contains("tuple of 2 values"), "{err}");
    // GetItem of a tensor, and a tuple reaching a module that takes one tensor, are errors.
    let mut b = Graph::builder("NotATuple");
    let item = b.get_item("first", Graph::INPUT, 0);
    let err = b.build(&item).unwrap().forward(Value::from(x.clone())).unwrap_err().to_string();
    assert!(err.starts_with("NotATuple received a float32 tensor"), "{err}");
    let err = ReLU::new().forward(Value::Tuple(vec![Value::from(x)])).unwrap_err().to_string();
    assert!(err.contains("received a tuple of 1 values") && err.contains("GetItem"), "{err}");
}

#[test]
fn single_input_single_output_graphs_save_as_before() {
    let mut b = Graph::builder("Block");
    let y = b.then("relu", ReLU::new(), Graph::INPUT);
    let graph = b.build(&y).unwrap();
    assert_eq!(
        (&graph as &dyn Module).config().to_string(),
        r#"{"nodes":[{"inputs":["input"],"name":"relu","op":{"Call":"relu"}}],"output":"relu","type_name":"Block"}"#
    );
    let mut b = Graph::builder("Pair");
    let xy = b.inputs(&["x", "y"]);
    let graph = b.build_many(&[&xy[1], &xy[0]]).unwrap();
    let config = (&graph as &dyn Module).config();
    assert_eq!(config["inputs"], serde_json::json!(["x", "y"]));
    assert_eq!(config["outputs"], serde_json::json!(["y", "x"]));
    assert!(config.get("output").is_none());
    // Duplicate or missing names are refused when built.
    let mut b = Graph::builder("Dup");
    b.inputs(&["x", "x"]);
    assert!(b.build("x").unwrap_err().to_string().contains("unique"));
    let mut b = Graph::builder("None");
    b.inputs(&[]);
    assert!(b.build("x").unwrap_err().to_string().contains("at least one input"));
}
