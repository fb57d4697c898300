//! Embedding and EmbeddingBag, float and weight-only quantized, and `quantize_dynamic` with
//! dtype quint8 / quint4x2, against PyTorch (fixture from `tools/golden/gen_embedding.py`): every
//! output, quantized weight, scale and zero point bit for bit, the printouts exactly; then
//! save / load and the errors.

use ndarray::{ArrayD, IxDyn};
use qgraph::nn::{Embedding, EmbeddingBag, EmbeddingBagMode};
use qgraph::qconfig::float_qparams_weight_only_qconfig_4bit;
use qgraph::quantized::{EmbeddingWeight, QuantizedEmbedding, QuantizedEmbeddingBag};
use qgraph::{
    DynamicDType, DynamicQConfigSpec, Module, QConfigMapping, Sequential, Value, io, quantize_dynamic,
};
use qtest::{Fixture, assert_bits_eq, name};
use serde_json::Value as Json;

fn fixture() -> Fixture {
    Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), "embedding")
}

fn cases<'a>(fx: &'a Fixture, prefix: &'a str) -> impl Iterator<Item = &'a Json> + 'a {
    fx.cases.iter().filter(move |c| name(c).starts_with(prefix))
}

/// Runs `check` on every case whose name starts with `prefix`; there must be `expected`.
fn each_case(fx: &Fixture, prefix: &str, expected: usize, mut check: impl FnMut(&Json, &str)) {
    let mut seen = 0;
    for case in cases(fx, prefix) {
        check(case, name(case));
        seen += 1;
    }
    assert_eq!(seen, expected, "cases {prefix}*");
}

fn int(fx: &Fixture, case: &str, field: &str) -> Value {
    Value::Int(fx.tensor::<i64>(case, field))
}

fn padding_idx(case: &Json) -> Option<i64> {
    case["padding_idx"].as_i64()
}

fn mode_of(case: &Json) -> EmbeddingBagMode {
    match case["mode"].as_str().unwrap() {
        "sum" => EmbeddingBagMode::Sum,
        "mean" => EmbeddingBagMode::Mean,
        "max" => EmbeddingBagMode::Max,
        other => panic!("mode {other}"),
    }
}

fn float_out(module: &dyn Module, input: Value) -> ArrayD<f32> {
    module.forward(input).unwrap().into_float("test").unwrap()
}

/// `(indices, offsets)` or `(indices, offsets, per_sample_weights)` of a case.
fn bag_input(fx: &Fixture, case: &str, input: &str, psw: bool) -> Value {
    let mut items = vec![int(fx, case, input)];
    if fx.has(case, "offsets") {
        items.push(int(fx, case, "offsets"));
    }
    if psw {
        items.push(Value::Float(fx.tensor::<f32>(case, "psw")));
    }
    if items.len() == 1 { items.pop().unwrap() } else { Value::Tuple(items) }
}

#[test]
fn float_embedding_matches_pytorch() {
    let fx = fixture();
    each_case(&fx, "float_emb_", 10, |case, n| {
        let (num, dim) = (
            case["num_embeddings"].as_u64().unwrap() as usize,
            case["embedding_dim"].as_u64().unwrap() as usize,
        );
        let emb = Embedding::new(num, dim)
            .unwrap()
            .with_padding_idx(padding_idx(case))
            .unwrap()
            .with_weight(fx.tensor::<f32>(n, "weight"))
            .unwrap();
        assert_eq!((&emb as &dyn Module).to_string(), case["printed"].as_str().unwrap(), "{n}");
        assert_bits_eq(n, "out", &float_out(&emb, int(&fx, n, "indices")), &fx.tensor::<f32>(n, "out"));
    });
}

#[test]
fn float_embedding_bag_matches_pytorch_in_every_mode_and_form() {
    let fx = fixture();
    for dim in [1usize, 7, 8, 33, 257] {
        let weight = fx.tensor::<f32>(&format!("float_bag_{dim}"), "weight");
        assert_eq!(weight.shape(), &[10, dim]);
        // 4 forms for mean and max, 7 for sum.
        each_case(&fx, &format!("float_bag_{dim}_"), 15, |case, n| {
            let bag = EmbeddingBag::new(10, dim, mode_of(case))
                .unwrap()
                .with_include_last_offset(case["include_last_offset"].as_bool().unwrap())
                .with_padding_idx(padding_idx(case))
                .unwrap()
                .with_weight(weight.clone())
                .unwrap();
            assert_eq!((&bag as &dyn Module).to_string(), case["printed"].as_str().unwrap(), "{n}");
            let input = bag_input(&fx, n, "input", fx.has(n, "psw"));
            assert_bits_eq(n, "out", &float_out(&bag, input), &fx.tensor::<f32>(n, "out"));
        });
    }
}

/// The converted `(emb, bag)` pair of a quantized case, from PyTorch's float weights.
fn pair(fx: &Fixture, case: &Json) -> Box<dyn Module> {
    let n = name(case);
    let dim = case["dim"].as_u64().unwrap() as usize;
    let mut children: Vec<Box<dyn Module>> = Vec::new();
    if fx.has(n, "emb.weight") {
        children.push(Box::new(
            Embedding::new(10, dim).unwrap().with_weight(fx.tensor::<f32>(n, "emb.weight")).unwrap(),
        ));
    } else {
        children.push(Box::new(Embedding::new(10, dim).unwrap()));
    }
    let bag = EmbeddingBag::new(10, dim, mode_of(case))
        .unwrap()
        .with_weight(fx.tensor::<f32>(n, "bag.weight"))
        .unwrap();
    children.push(Box::new(bag));
    Box::new(Sequential::new(children))
}

/// PyTorch's printout line of child `child` (`(emb): ...`), without the prefix.
fn printed_child<'a>(case: &'a Json, child: &str) -> &'a str {
    let printed = case["printed"].as_str().unwrap();
    let prefix = format!("  ({child}): ");
    printed.lines().find_map(|l| l.strip_prefix(prefix.as_str())).unwrap_or_else(|| panic!("{printed}"))
}

fn check_weight(fx: &Fixture, n: &str, child: &str, weight: &EmbeddingWeight) {
    let scales = ArrayD::from_shape_vec(IxDyn(&[10]), weight.scales().to_vec()).unwrap();
    let zero_points = ArrayD::from_shape_vec(IxDyn(&[10]), weight.zero_points().to_vec()).unwrap();
    assert_bits_eq(n, "scales", &scales, &fx.tensor::<f32>(n, &format!("{child}.scales")));
    assert_bits_eq(n, "zero_points", &zero_points, &fx.tensor::<f32>(n, &format!("{child}.zero_points")));
}

fn check_bag_outputs(fx: &Fixture, n: &str, bag: &dyn Module) {
    let input = Value::Tuple(vec![int(fx, n, "indices"), int(fx, n, "offsets")]);
    assert_bits_eq(n, "bag.out", &float_out(bag, input), &fx.tensor::<f32>(n, "bag.out"));
    if fx.has(n, "bag.out_psw") {
        let input = Value::Tuple(vec![
            int(fx, n, "indices"),
            int(fx, n, "offsets"),
            Value::Float(fx.tensor(n, "psw")),
        ]);
        assert_bits_eq(n, "bag.out_psw", &float_out(bag, input), &fx.tensor::<f32>(n, "bag.out_psw"));
    }
}

#[test]
fn quint8_quantize_dynamic_matches_pytorch() {
    let fx = fixture();
    each_case(&fx, "q8_", 10, |case, n| {
        let mut model = pair(&fx, case);
        assert_eq!(
            quantize_dynamic(&mut model, DynamicQConfigSpec::Default, DynamicDType::QUInt8).unwrap(),
            2
        );
        let (emb, bag) = (model.get("0").unwrap(), model.get("1").unwrap());
        assert_eq!(emb.to_string(), printed_child(case, "emb"), "{n}");
        assert_eq!(bag.to_string(), printed_child(case, "bag"), "{n}");
        let qemb = emb.downcast_ref::<QuantizedEmbedding>().unwrap();
        let qbag = bag.downcast_ref::<QuantizedEmbeddingBag>().unwrap();
        for (child, weight) in [("emb", qemb.weight()), ("bag", qbag.weight())] {
            let packed =
                ArrayD::from_shape_vec(IxDyn(&[weight.packed().len()]), weight.packed().to_vec()).unwrap();
            assert_eq!(
                packed.into_shape_with_order(IxDyn(&weight.shape())).unwrap(),
                fx.tensor::<u8>(n, &format!("{child}.q")),
                "{n}"
            );
            check_weight(&fx, n, child, weight);
        }
        assert_bits_eq(n, "emb.out", &float_out(emb, int(&fx, n, "x")), &fx.tensor::<f32>(n, "emb.out"));
        check_bag_outputs(&fx, n, bag);
    });
}

#[test]
fn quint4x2_quantize_dynamic_matches_pytorch() {
    let fx = fixture();
    each_case(&fx, "q4_", 10, |case, n| {
        let dim = case["dim"].as_u64().unwrap() as usize;
        let mut model = pair(&fx, case);
        // A set of class names with dtype quint4x2, as `quantize_dynamic(m, {nn.EmbeddingBag}, dtype=torch.quint4x2)`.
        let spec = DynamicQConfigSpec::Types(vec!["EmbeddingBag".into()]);
        assert_eq!(quantize_dynamic(&mut model, spec, DynamicDType::QUInt4x2).unwrap(), 1);
        assert_eq!(model.get("0").unwrap().to_string(), printed_child(case, "emb"), "{n}");
        let bag = model.get("1").unwrap();
        assert_eq!(bag.to_string(), printed_child(case, "bag"), "{n}");
        let weight = bag.downcast_ref::<QuantizedEmbeddingBag>().unwrap().weight();
        let values = weight.to_qtensor().unwrap().int_repr().to_i32();
        assert_eq!(values, fx.tensor::<u8>(n, "bag.values").mapv(i32::from), "{n}");
        if dim.is_multiple_of(2) {
            // Even rows: PyTorch's flat packing and the row layout are the same bytes.
            assert_eq!(weight.packed(), fx.tensor::<u8>(n, "bag.q").as_slice().unwrap(), "{n}");
        }
        assert_eq!(weight.packed().len(), 10 * dim.div_ceil(2));
        check_weight(&fx, n, "bag", weight);
        check_bag_outputs(&fx, n, bag);
    });
}

#[test]
fn every_qconfig_spec_form_picks_the_same_modules_as_pytorch() {
    let fx = fixture();
    let case = cases(&fx, "q4_33").next().unwrap();
    let expected = {
        let mut model = pair(&fx, case);
        quantize_dynamic(&mut model, DynamicQConfigSpec::Default, DynamicDType::QUInt4x2).unwrap();
        model
    };
    // A dict spec: the dtype is ignored.
    let mut model = pair(&fx, case);
    let mapping =
        QConfigMapping::default().set_type("EmbeddingBag", Some(float_qparams_weight_only_qconfig_4bit()));
    assert_eq!(
        quantize_dynamic(&mut model, DynamicQConfigSpec::Mapping(mapping), DynamicDType::QInt8).unwrap(),
        1
    );
    let x = Value::Tuple(vec![int(&fx, "q4_33", "indices"), int(&fx, "q4_33", "offsets")]);
    assert_eq!(
        model.get("1").unwrap().forward(x.clone()).unwrap(),
        expected.get("1").unwrap().forward(x).unwrap()
    );
    assert_eq!(model.to_string(), expected.to_string());
    assert!(!model.training());

    // qint8's default set has no embeddings: nothing is swapped (the recurrent and linear
    // modules it names have no dynamic entry in qgraph's table).
    let mut model = pair(&fx, case);
    assert_eq!(quantize_dynamic(&mut model, DynamicQConfigSpec::Default, DynamicDType::QInt8).unwrap(), 0);
    // A set with quint8: Embedding only.
    let mut model = pair(&fx, case);
    let spec = DynamicQConfigSpec::Types(vec!["Embedding".into()]);
    assert_eq!(quantize_dynamic(&mut model, spec, DynamicDType::QUInt8).unwrap(), 1);
    assert_eq!(model.get("0").unwrap().type_name(), "QuantizedEmbedding");
    assert_eq!(model.get("1").unwrap().type_name(), "EmbeddingBag");
}

#[test]
fn quantize_dynamic_refuses_what_pytorch_refuses() {
    let fx = fixture();
    let case = cases(&fx, "q8_7").next().unwrap();
    // An embedding given the qint8 dynamic qconfig: not float qparams.
    let mut model = pair(&fx, case);
    let spec = DynamicQConfigSpec::Types(vec!["Embedding".into()]);
    let err = quantize_dynamic(&mut model, spec, DynamicDType::QInt8).unwrap_err().to_string();
    assert!(err.contains("float_qparams_weight_only_qconfig") && err.contains('0'), "{err}");
    // float16's default set holds no embedding: nothing is swapped, as in PyTorch.
    let mut model = pair(&fx, case);
    assert_eq!(quantize_dynamic(&mut model, DynamicQConfigSpec::Default, DynamicDType::Float16).unwrap(), 0);
    // An embedding named with float16 gets float16_dynamic_qconfig: refused like the qint8 one.
    let spec = DynamicQConfigSpec::Types(vec!["Embedding".into()]);
    let err = quantize_dynamic(&mut model, spec, DynamicDType::Float16).unwrap_err().to_string();
    assert!(err.contains("float_qparams_weight_only_qconfig"), "{err}");
}

#[test]
fn save_and_load_keep_printouts_weights_and_outputs() {
    let fx = fixture();
    for prefix in ["q8_33", "q4_7", "q4_8_max"] {
        let case = cases(&fx, prefix).next().unwrap();
        let n = name(case);
        let mut model = pair(&fx, case);
        let dtype = if prefix.starts_with("q8") { DynamicDType::QUInt8 } else { DynamicDType::QUInt4x2 };
        quantize_dynamic(&mut model, DynamicQConfigSpec::Default, dtype).unwrap();
        let loaded = io::from_bytes(&io::to_bytes(model.as_ref()).unwrap()).unwrap();
        assert_eq!(loaded.to_string(), model.to_string());
        let x = int(&fx, n, "x");
        assert_eq!(
            loaded.get("0").unwrap().forward(x.clone()).unwrap(),
            model.get("0").unwrap().forward(x).unwrap()
        );
        let bags = Value::Tuple(vec![
            int(&fx, n, "indices"),
            int(&fx, n, "offsets"),
            Value::Float(fx.tensor(n, "psw")),
        ]);
        assert_eq!(
            loaded.get("1").unwrap().forward(bags.clone()).unwrap(),
            model.get("1").unwrap().forward(bags).unwrap()
        );
    }
    let bag: Box<dyn Module> = Box::new(
        EmbeddingBag::new(6, 3, EmbeddingBagMode::Max)
            .unwrap()
            .with_include_last_offset(true)
            .with_padding_idx(Some(2))
            .unwrap(),
    );
    let loaded = io::from_bytes(&io::to_bytes(bag.as_ref()).unwrap()).unwrap();
    assert_eq!(loaded.to_string(), "EmbeddingBag(6, 3, mode='max', padding_idx=2)");
    let x = Value::Tuple(vec![Value::Int(ints(&[0, 2, 5, 1])), Value::Int(ints(&[0, 1, 4]))]);
    assert_eq!(loaded.forward(x.clone()).unwrap(), bag.forward(x).unwrap());
    assert_eq!(loaded.state_dict()[0].0, "weight");
}

fn ints(values: &[i64]) -> ArrayD<i64> {
    ArrayD::from_shape_vec(IxDyn(&[values.len()]), values.to_vec()).unwrap()
}

fn err_of(module: &dyn Module, input: Value) -> String {
    module.forward(input).unwrap_err().to_string()
}

#[test]
fn bad_indices_offsets_and_weights_are_errors_naming_the_value() {
    let emb = Embedding::new(10, 4).unwrap();
    let err = err_of(&emb, Value::Int(ints(&[3, 10])));
    assert!(err.contains("index = 10") && err.contains("num_embeddings is 10"), "{err}");
    assert!(err_of(&emb, Value::Int(ints(&[-1]))).contains("index = -1"));
    let err = err_of(&emb, Value::Float(ArrayD::zeros(IxDyn(&[2]))));
    assert!(err.contains("Embedding received a float32 tensor") && err.contains("Value::Int"), "{err}");

    let bag = EmbeddingBag::new(10, 4, EmbeddingBagMode::Mean).unwrap();
    let with = |i: &[i64], o: &[i64]| Value::Tuple(vec![Value::Int(ints(i)), Value::Int(ints(o))]);
    assert!(err_of(&bag, with(&[1, 2], &[1])).contains("offsets[0] = 1"));
    assert!(err_of(&bag, with(&[1, 2], &[0, 3])).contains("offsets[-1] = 3"));
    assert!(err_of(&bag, with(&[1, 2, 3], &[0, 2, 1])).contains("non-decreasing"));
    assert!(err_of(&bag, with(&[1, 12], &[0])).contains("index = 12"));
    assert!(err_of(&bag, Value::Int(ints(&[1, 2]))).contains("needs 1-D offsets"));
    let two_d = Value::Int(ArrayD::from_shape_vec(IxDyn(&[1, 2]), vec![1, 2]).unwrap());
    let err = err_of(&bag, Value::Tuple(vec![two_d, Value::Int(ints(&[0]))]));
    assert!(err.contains("offsets has to be None"), "{err}");
    let three_d = Value::Int(ArrayD::zeros(IxDyn(&[1, 1, 1])));
    assert!(err_of(&bag, three_d).contains("1-D or 2-D"));
    let psw = Value::Tuple(vec![
        Value::Int(ints(&[1, 2])),
        Value::Int(ints(&[0])),
        Value::Float(ArrayD::ones(IxDyn(&[2]))),
    ]);
    let err = err_of(&bag, psw);
    assert!(err.contains("only supported for mode='sum'") && err.contains("mean"), "{err}");
    let sum = EmbeddingBag::new(10, 4, EmbeddingBagMode::Sum).unwrap();
    let psw = Value::Tuple(vec![
        Value::Int(ints(&[1, 2])),
        Value::Int(ints(&[0])),
        Value::Float(ArrayD::ones(IxDyn(&[3]))),
    ]);
    assert!(err_of(&sum, psw).contains("one weight per index"));
    assert!(err_of(&sum, Value::Tuple(vec![])).contains("indices, offsets"));

    assert!(
        Embedding::new(10, 4)
            .unwrap()
            .with_padding_idx(Some(10))
            .unwrap_err()
            .to_string()
            .contains("padding_idx = 10")
    );
    assert!(Embedding::new(10, 4).unwrap().with_padding_idx(Some(-11)).is_err());
    let err =
        Embedding::new(10, 4).unwrap().with_weight(ArrayD::zeros(IxDyn(&[4, 10]))).unwrap_err().to_string();
    assert!(err.contains("[4, 10]") && err.contains("[10, 4]"), "{err}");
}

#[test]
fn quantized_modules_check_their_observer_and_inputs() {
    let float = Embedding::new(10, 4).unwrap();
    let err = QuantizedEmbedding::from_float(
        &float,
        &qgraph::qobserve::defaults::default_per_channel_weight_observer(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("float_qparams_weight_only_qconfig"), "{err}");
    let q =
        QuantizedEmbedding::from_float(&float, &qgraph::qobserve::defaults::default_float_qparams_observer())
            .unwrap();
    assert!(err_of(&q, Value::Int(ints(&[10]))).contains("index = 10"));
    let bag = QuantizedEmbeddingBag::from_float(
        &EmbeddingBag::new(10, 4, EmbeddingBagMode::Mean).unwrap(),
        &qgraph::qobserve::defaults::default_float_qparams_observer_4bit(),
    )
    .unwrap();
    assert_eq!(bag.mode(), EmbeddingBagMode::Mean);
    let x = Value::Tuple(vec![Value::Int(ints(&[1, 2])), Value::Int(ints(&[1]))]);
    assert!(err_of(&bag, x).contains("offsets[0] = 1"));
}

#[test]
fn new_tables_are_standard_normal_with_a_zero_padding_row() {
    qgraph::nn::manual_seed(3);
    let emb = Embedding::new(100, 50).unwrap().with_padding_idx(Some(-1)).unwrap();
    let w = emb.weight();
    assert!(w.slice(ndarray::s![99, ..]).iter().all(|&v| v == 0.0));
    let body = w.slice(ndarray::s![..99, ..]);
    let n = body.len() as f64;
    let mean = body.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = body.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
    assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.05, "mean {mean}, var {var}");
    qgraph::nn::manual_seed(3);
    assert_eq!(Embedding::new(100, 50).unwrap().weight().slice(ndarray::s![..99, ..]), body);
}

#[test]
fn quint4x2_activations_are_refused_at_convert() {
    use qgraph::qobserve::{ObserverSpec, QDType, defaults};
    let mut model: Box<dyn Module> = Box::new(qgraph::QuantWrapper::new(Box::new(qgraph::nn::ReLU::new())));
    let activation = ObserverSpec::min_max().with_args(|a| a.dtype(QDType::QUInt4x2));
    let qconfig = qgraph::qconfig::QConfig { activation, weight: defaults::default_weight_observer() };
    qgraph::prepare(&mut model, &QConfigMapping::global(qconfig)).unwrap();
    let x = Value::Float(ArrayD::from_shape_fn(IxDyn(&[2, 3]), |i| i[1] as f32 - 1.0));
    qgraph::calibrate(model.as_ref(), [x], |_, _| {}).unwrap();
    let err = qgraph::convert(&mut model).unwrap_err().to_string();
    assert!(err.contains("torch.quint4x2") && err.contains("quint8 for activations"), "{err}");
}
