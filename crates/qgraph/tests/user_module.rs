//! Module types defined outside qgraph (here, in the test) join the workflow through the
//! registries: a Hardsigmoid-like activation and a weighted per-feature scale are registered in
//! the mappings (observed, with quantized forms) and the loaders, then prepared, calibrated,
//! converted, saved and loaded back with the same outputs. Without a loader, loading is the typed
//! error naming the fix.

use ndarray::{ArrayD, Axis, IxDyn};
use qgraph::io::{self, Loaders};
use qgraph::mappings::{Mappings, ModuleKey};
use qgraph::nn::{Linear, manual_seed};
use qgraph::qconfig::{QConfig, default_qconfig};
use qgraph::quantized::QuantizedWeight;
use qgraph::record::{Record, TensorView};
use qgraph::workflow::Observed;
use qgraph::{
    DeQuantStub, GraphError, GraphResult, Module, QConfigMapping, QuantStub, QuantTensor, Sequential, Value,
    calibrate, convert_with, prepare_with,
};
use qkernels::elementwise::PerTensor;
use serde::{Deserialize, Serialize};

/// The user's activation: `relu6(x + 3) / 6`, float only.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MyHardsigmoid;

fn hardsigmoid(x: f32) -> f32 {
    (x + 3.0).clamp(0.0, 6.0) / 6.0
}

impl Module for MyHardsigmoid {
    fn type_name(&self) -> &str {
        "MyHardsigmoid"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        Ok(Value::Float(input.into_float("MyHardsigmoid")?.mapv(hardsigmoid)))
    }
}

/// Its quantized form: dequantize, the float op, quantize with the observed parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct QuantizedMyHardsigmoid {
    scale: f64,
    zero_point: i64,
}

impl Module for QuantizedMyHardsigmoid {
    fn type_name(&self) -> &str {
        "QuantizedMyHardsigmoid"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let x = input.into_quant("QuantizedMyHardsigmoid")?.dequantize().mapv(hardsigmoid);
        Ok(Value::Quant(QuantTensor::quantize(&x, PerTensor::new(self.scale, self.zero_point))?))
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap()
    }
}

/// The user's weighted module: multiplies the last dimension by a learned weight.
#[derive(Debug, Clone)]
struct Scale {
    weight: ArrayD<f32>,
}

impl Scale {
    fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let n: usize = record.config()?;
        Ok(Self { weight: record.tensors.shaped("weight", &[n])? })
    }
}

impl Module for Scale {
    fn type_name(&self) -> &str {
        "Scale"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let mut x = input.into_float("Scale")?;
        for mut lane in x.lanes_mut(Axis(1)) {
            lane *= &self.weight;
        }
        Ok(Value::Float(x))
    }

    fn params(&self) -> Vec<(&'static str, &ArrayD<f32>)> {
        vec![("weight", &self.weight)]
    }

    fn config(&self) -> serde_json::Value {
        self.weight.len().into()
    }
}

/// Its quantized form: the weight quantized per tensor by the qconfig's weight observer, the
/// product computed on dequantized values and quantized with the observed output parameters.
#[derive(Debug, Clone)]
struct QuantizedScale {
    weight: QuantizedWeight,
    out_q: PerTensor,
}

impl QuantizedScale {
    fn from_float(float: &Scale, qconfig: &QConfig, out_q: PerTensor) -> GraphResult<Self> {
        let w = float.weight.clone().insert_axis(Axis(1));
        Ok(Self { weight: QuantizedWeight::from_observer(&w, &qconfig.weight)?, out_q })
    }

    fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let (n, per_channel, scale, zero_point): (usize, bool, f64, i64) = record.config()?;
        let t = &record.tensors;
        let count = if per_channel { n } else { 1 };
        let weight = QuantizedWeight::new(
            t.shaped("weight", &[n, 1])?,
            t.shaped::<f64>("weight_scale", &[count])?.into_raw_vec_and_offset().0,
            t.shaped::<i64>("weight_zero_point", &[count])?.into_raw_vec_and_offset().0,
            per_channel,
        )?;
        Ok(Self { weight, out_q: PerTensor::new(scale, zero_point) })
    }
}

impl Module for QuantizedScale {
    fn type_name(&self) -> &str {
        "QuantizedScale"
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let mut x = input.into_quant("QuantizedScale")?.dequantize();
        let w = self.weight.dequantize().remove_axis(Axis(1));
        for mut lane in x.lanes_mut(Axis(1)) {
            lane *= &w;
        }
        Ok(Value::Quant(QuantTensor::quantize(&x, self.out_q)?))
    }

    fn config(&self) -> serde_json::Value {
        let n = self.weight.int().shape()[0];
        let per_channel = self.weight.is_per_channel();
        serde_json::to_value((n, per_channel, self.out_q.scale, self.out_q.zero_point)).unwrap()
    }

    fn tensors(&self) -> Vec<(String, TensorView<'_>)> {
        let w = &self.weight;
        let scales = ndarray::ArrayView1::from(w.scales()).into_dyn();
        let zero_points = ndarray::ArrayView1::from(w.zero_points()).into_dyn();
        vec![
            ("weight".into(), TensorView::I8(w.int().view())),
            ("weight_scale".into(), TensorView::F64(scales)),
            ("weight_zero_point".into(), TensorView::I64(zero_points)),
        ]
    }
}

fn mappings() -> Mappings {
    let mut m = Mappings::default();
    m.register_static::<MyHardsigmoid>("MyHardsigmoid", |_, _, out_q| {
        Ok(Box::new(QuantizedMyHardsigmoid { scale: out_q.scale, zero_point: out_q.zero_point }))
    });
    m.register_static::<Scale>("Scale", |scale, qconfig, out_q| {
        Ok(Box::new(QuantizedScale::from_float(scale, qconfig, out_q)?))
    });
    m
}

fn loaders() -> Loaders {
    let mut l = Loaders::default();
    l.register_config::<MyHardsigmoid>("MyHardsigmoid")
        .register_config::<QuantizedMyHardsigmoid>("QuantizedMyHardsigmoid")
        .register("Scale", |r| Ok(Box::new(Scale::from_record(r)?)))
        .register("QuantizedScale", |r| Ok(Box::new(QuantizedScale::from_record(r)?)));
    l
}

fn model() -> Box<dyn Module> {
    manual_seed(5);
    let weight = ArrayD::from_shape_vec(IxDyn(&[4]), vec![0.5, -1.25, 2.0, 0.75]).unwrap();
    Box::new(Sequential::new(vec![
        Box::new(QuantStub::new()),
        Box::new(Linear::new(6, 4, true)),
        Box::new(MyHardsigmoid),
        Box::new(Scale { weight }),
        Box::new(DeQuantStub::new()),
    ]))
}

fn batch(seed: usize) -> Value {
    Value::from(ArrayD::from_shape_fn(IxDyn(&[5, 6]), |i| {
        ((i[0] * 6 + i[1] + seed) as f32 * 0.61).sin() * 4.0
    }))
}

fn bits(model: &dyn Module, x: Value) -> Vec<u32> {
    model.forward(x).unwrap().into_float_lossy().unwrap().iter().map(|v| v.to_bits()).collect()
}

fn round_trip(model: &dyn Module, loaders: &Loaders) -> Box<dyn Module> {
    io::from_bytes_with(&io::to_bytes(model).unwrap(), loaders).unwrap()
}

#[test]
fn user_modules_are_prepared_converted_saved_and_loaded() {
    let (mappings, loaders) = (mappings(), loaders());
    let mut float = model();
    let float_out = bits(float.as_ref(), batch(9));
    float = round_trip(float.as_ref(), &loaders);
    assert_eq!(bits(float.as_ref(), batch(9)), float_out, "the float model loads back");
    let mut model = float;
    let observers = prepare_with(&mut model, &QConfigMapping::global(default_qconfig()), &mappings).unwrap();
    assert_eq!(observers, 4, "QuantStub, Linear and both user modules are observed");
    calibrate(model.as_ref(), (0..4).map(batch), |_, _| {}).unwrap();
    let mut loaded = round_trip(model.as_ref(), &loaders);
    assert_eq!(loaded.to_string(), model.to_string());
    convert_with(&mut model, &mappings).unwrap();
    convert_with(&mut loaded, &mappings).unwrap();
    let names: Vec<&str> = model.children().into_iter().map(|(_, m)| m.type_name()).collect();
    assert_eq!(
        names,
        ["Quantize", "QuantizedLinear", "QuantizedMyHardsigmoid", "QuantizedScale", "DeQuantize"]
    );
    let out = bits(model.as_ref(), batch(9));
    assert_eq!(bits(loaded.as_ref(), batch(9)), out);
    let reloaded = round_trip(model.as_ref(), &loaders);
    assert_eq!(reloaded.to_string(), model.to_string());
    assert_eq!(bits(reloaded.as_ref(), batch(9)), out);
}

#[test]
fn unregistered_user_modules_are_left_alone_and_do_not_load() {
    // Not in the mappings: prepare observes only the library's modules around it.
    let mut model = model();
    let observers =
        prepare_with(&mut model, &QConfigMapping::global(default_qconfig()), &Mappings::default());
    assert_eq!(observers.unwrap(), 2);
    // A qconfig by Rust type: the user's Scale stays float, the library's modules do not.
    let mut model = self::model();
    let mapping = QConfigMapping::global(default_qconfig()).set_key(ModuleKey::new::<Scale>("Scale"), None);
    assert_eq!(prepare_with(&mut model, &mapping, &mappings()).unwrap(), 3);
    assert!(model.get("3").unwrap().is::<Scale>() && model.get("2").unwrap().is::<Observed>());
    let mut without = mappings();
    without.remove(&ModuleKey::new::<Scale>("Scale"));
    assert!(!without.is_observed(&Scale { weight: ArrayD::zeros(IxDyn(&[1])) }));
    // Not in the loaders: the typed error names the module, its path and the fix.
    let err = io::from_bytes(&io::to_bytes(model.as_ref()).unwrap()).unwrap_err();
    let GraphError::Load { file, source } = &err else { panic!("expected a load error, got {err:?}") };
    assert_eq!(file, "<bytes>");
    match source.root_cause() {
        GraphError::UnknownModuleType { name, path } => {
            assert_eq!((name.as_str(), path.as_str()), ("MyHardsigmoid", "2"));
        }
        other => panic!("expected UnknownModuleType, got {other:?}"),
    }
    assert!(err.to_string().contains("register a loader"), "{err}");
}
