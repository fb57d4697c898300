//! The QAT embeddings against PyTorch 2.15 (`tools/golden/gen_qat_embedding.py`): `Embedding`
//! and `EmbeddingBag` (sum with per-sample weights, mean, max; offsets with an empty bag, 2-D
//! input, `include_last_offset`, `padding_idx`) prepared with `default_embedding_qat_qconfig`
//! (two bags with `default_embedding_qat_qconfig_4bit`),
//! three training steps (output, table gradient, per-sample weights' gradient, the weight fake
//! quantizer's float scale and zero point), then `convert` (the quantized module's output).
//!
//! Bit for bit: outputs, table gradients, the fake quantizer's parameters and the converted
//! outputs. Within 1e-6 of the largest value: the per-sample weights' gradient (a dot product
//! PyTorch sums in another order).

use ndarray::{ArrayD, IxDyn};
use qfake::train::Backprop;
use qfake::{FakeQuantModule, QatEmbedding, QatEmbeddingBag};
use qgraph::nn::{Embedding, EmbeddingBag, EmbeddingBagMode};
use qgraph::{Module, QConfigMapping, Sequential, Value, train};
use qtest::{Fixture, assert_bits_eq};
use serde_json::Value as Json;

fn fixture() -> Fixture {
    Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), "qat_embedding")
}

fn usize_of(c: &Json, key: &str) -> usize {
    c[key].as_u64().unwrap() as usize
}

/// `max |got - expected| <= tol * max |expected|`.
fn assert_close(case: &str, what: &str, got: &ArrayD<f32>, expected: &ArrayD<f32>, tol: f32) {
    assert_eq!(got.shape(), expected.shape(), "{case}: {what} shape");
    let scale = expected.iter().fold(f32::MIN_POSITIVE, |m, v| m.max(v.abs()));
    let diff = got.iter().zip(expected).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff <= tol * scale, "{case}: {what} differs by {diff:e} (max |expected| {scale:e})");
}

fn float_model(f: &Fixture, c: &Json) -> Box<dyn Module> {
    let case = qtest::name(c);
    let (n, d) = (usize_of(c, "num_embeddings"), usize_of(c, "embedding_dim"));
    let padding = c["padding_idx"].as_i64();
    let weight = f.tensor::<f32>(case, "weight");
    let layer: Box<dyn Module> = if c["kind"] == "embedding" {
        Box::new(
            Embedding::new(n, d).unwrap().with_padding_idx(padding).unwrap().with_weight(weight).unwrap(),
        )
    } else {
        let mode = match c["mode"].as_str().unwrap() {
            "sum" => EmbeddingBagMode::Sum,
            "mean" => EmbeddingBagMode::Mean,
            _ => EmbeddingBagMode::Max,
        };
        Box::new(
            EmbeddingBag::new(n, d, mode)
                .unwrap()
                .with_include_last_offset(c["include_last_offset"].as_bool().unwrap())
                .with_padding_idx(padding)
                .unwrap()
                .with_weight(weight)
                .unwrap(),
        )
    };
    let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![layer]));
    train(&mut model, true);
    model
}

fn input(f: &Fixture, case: &str, step: usize) -> Value {
    let idx = Value::Int(f.tensor::<i64>(case, &format!("idx.{step}")));
    if !f.has(case, &format!("offsets.{step}")) {
        return idx;
    }
    let mut items = vec![idx, Value::Int(f.tensor::<i64>(case, &format!("offsets.{step}")))];
    if f.has(case, &format!("psw.{step}")) {
        items.push(Value::Float(f.tensor::<f32>(case, &format!("psw.{step}"))));
    }
    Value::Tuple(items)
}

fn weight_fake_quant(model: &dyn Module) -> &FakeQuantModule {
    model.get("0.weight_fake_quant").unwrap().downcast_ref().expect("a fake quantizer")
}

#[test]
fn qat_embeddings_train_and_convert_as_pytorch() {
    let f = fixture();
    let backprop = Backprop::default();
    let qat8 = qfake::default_embedding_qat_qconfig();
    let mappings = qfake::qat::embedding_qat_mappings(qat8.kinds);
    assert_eq!(f.cases.len(), 10);
    for c in &f.cases {
        let case = qtest::name(c);
        let qat =
            if case.ends_with("_4bit") { qfake::default_embedding_qat_qconfig_4bit() } else { qat8.clone() };
        let mut model = float_model(&f, c);
        qgraph::prepare_qat_with(&mut model, &QConfigMapping::global(qat.qconfig.clone()), &mappings)
            .unwrap();
        let inner = model.get("0").unwrap();
        assert!(inner.is::<QatEmbedding>() || inner.is::<QatEmbeddingBag>(), "{case}: swapped");
        assert!(model.get("0.activation_post_process").is_err(), "{case}: embeddings get no post-process");
        for step in 1..=3 {
            let field = |name: &str| format!("{name}.{step}");
            let (y, tape) = backprop.forward(model.as_mut(), input(&f, case, step)).unwrap();
            let y = y.into_float("test").unwrap();
            assert_bits_eq(case, &field("y"), &y, &f.tensor(case, &field("y")));
            let (dinput, grads) =
                backprop.backward(model.as_ref(), tape, Value::Float(f.tensor(case, &field("g")))).unwrap();
            assert_close(
                case,
                &field("dweight"),
                &grads["0.weight"],
                &f.tensor(case, &field("dweight")),
                1e-6,
            );
            if f.has(case, &field("dpsw")) {
                let dpsw = dinput.into_float("per_sample_weights gradient").unwrap();
                assert_close(case, &field("dpsw"), &dpsw, &f.tensor(case, &field("dpsw")), 1e-6);
            }
            let state = weight_fake_quant(model.as_ref()).lock().state();
            let vec1 = |v: Vec<f32>| ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).unwrap();
            assert_bits_eq(
                case,
                &field("wfq.scale"),
                &vec1(state.scale),
                &f.tensor(case, &field("wfq.scale")),
            );
            assert_bits_eq(
                case,
                &field("wfq.zero_point"),
                &vec1(state.zero_point),
                &f.tensor(case, &field("wfq.zero_point")),
            );
        }
        qgraph::eval(&mut model);
        qgraph::convert_with(&mut model, &mappings).unwrap();
        let converted = model.get("0").unwrap();
        assert_eq!(converted.type_name(), format!("Quantized{}", c["quantized"].as_str().unwrap()), "{case}");
        let y = converted.forward(input(&f, case, 3)).unwrap().into_float("test").unwrap();
        assert_bits_eq(case, "q.y", &y, &f.tensor(case, "q.y"));
    }
}

/// The default QAT mappings leave embeddings float, as PyTorch's `prepare_qat` does; a weight
/// qconfig without float parameters is refused with PyTorch's reason.
#[test]
fn embeddings_need_the_embedding_mappings_and_qconfig() {
    let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![
        Box::new(EmbeddingBag::new(10, 4, EmbeddingBagMode::Sum).unwrap()),
        Box::new(qgraph::nn::Linear::new(4, 2, true)),
    ]));
    train(&mut model, true);
    let x86 = qfake::get_default_qat_qconfig("x86").unwrap();
    let mut plain = model.clone();
    qfake::prepare_qat(&mut plain, &x86).unwrap();
    assert!(plain.get("0").unwrap().is::<EmbeddingBag>(), "the default tables do not swap embeddings");
    let mappings = qfake::qat::embedding_qat_mappings(x86.kinds);
    let err = qgraph::prepare_qat_with(&mut model, &QConfigMapping::global(x86.qconfig), &mappings)
        .unwrap_err()
        .to_string();
    assert!(err.contains("per_channel_affine_float_qparams"), "{err}");
}

/// A prepared embedding saves and loads (fake quantizer state included) and goes on alike.
#[test]
fn a_prepared_embedding_saves_and_loads() {
    let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![Box::new(
        Embedding::new(8, 3).unwrap().with_padding_idx(Some(1)).unwrap(),
    )]));
    train(&mut model, true);
    let qat = qfake::default_embedding_qat_qconfig();
    let mappings = qfake::qat::embedding_qat_mappings(qat.kinds);
    qgraph::prepare_qat_with(&mut model, &QConfigMapping::global(qat.qconfig), &mappings).unwrap();
    let idx = Value::Int(ArrayD::from_shape_vec(IxDyn(&[4]), vec![0i64, 1, 7, 3]).unwrap());
    model.forward(idx.clone()).unwrap();
    let bytes = qgraph::io::to_bytes(model.as_ref()).unwrap();
    let loaded = qgraph::io::from_bytes_with(&bytes, &qfake::loaders()).unwrap();
    assert_eq!(loaded.to_string(), model.to_string());
    let fq = weight_fake_quant(loaded.as_ref()).lock();
    assert_eq!(fq.type_name(), "FakeQuantize");
    assert!(fq.state().zero_point.iter().any(|z| z.fract() != 0.0), "float zero points survive saving");
    drop(fq);
    assert_eq!(
        model.forward(idx.clone()).unwrap().into_float("a").unwrap(),
        loaded.forward(idx).unwrap().into_float("b").unwrap()
    );
}
