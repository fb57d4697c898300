//! QAT embeddings: `torch.ao.nn.qat.Embedding` and `EmbeddingBag`, the table fake-quantized by
//! its `weight_fake_quant` (`per_channel_affine_float_qparams` along axis 0) before the lookup.

use ndarray::ArrayD;
use qcore::{QParams, QScheme};
use qgraph::nn::{Bags, Embedding, EmbeddingBag};
use qgraph::qconfig::QConfig;
use qgraph::quantized::{EmbeddingWeight, QuantizedEmbedding, QuantizedEmbeddingBag};
use qgraph::record::{Record, TensorView};
use qgraph::{Module, Value};
use serde::{Deserialize, Serialize};

use crate::fake_quantize::{FakeQuantCtx, FakeQuantModule, FakeQuantize, QFakeResult, invalid};

/// What a QAT embedding saves besides its table and fake quantizer child.
#[derive(Debug, Serialize, Deserialize)]
struct QatTableConfig {
    table: serde_json::Value,
    qconfig: QConfig,
}

/// The weight fake quantizer of a QAT embedding: PyTorch asserts a
/// `per_channel_affine_float_qparams` weight observer; the class is `FakeQuantize`, as
/// `default_embedding_fake_quant`'s.
fn table_fake_quant(context: &'static str, qconfig: &QConfig) -> QFakeResult<Box<dyn Module>> {
    let qscheme = qconfig.weight.args().map(|a| a.qscheme);
    if qscheme != Some(QScheme::PerChannelAffineFloatQParams) {
        return Err(invalid(
            context,
            "weight qscheme",
            qscheme.map_or_else(|| qconfig.weight.name().to_string(), |q| q.torch_name().to_string()),
            "Embedding weights requires a qscheme of torch.per_channel_affine_float_qparams: use \
             default_embedding_qat_qconfig for embeddings",
        ));
    }
    Ok(Box::new(FakeQuantModule::new(Box::new(FakeQuantize::new(qconfig.weight.clone())?))))
}

/// `from_float` of the quantized table: the fake quantizer sees the table once more (as
/// PyTorch's `weight_observer(mod.weight)`), then its observer's float parameters quantize it.
fn quantized_table(fq: &FakeQuantModule, weight: &ArrayD<f32>) -> QFakeResult<EmbeddingWeight> {
    fq.fake_quantize(weight)?;
    let mut quantizer = fq.lock();
    let QParams::PerChannelFloat { scales, zero_points, axis: 0 } = quantizer.qparams()? else {
        return Err(invalid(
            "convert",
            "embedding weight qparams",
            quantizer.type_name(),
            "embedding weights are quantized per_channel_affine_float_qparams along axis 0",
        ));
    };
    let dtype = quantizer.state().observer.spec.args().map_or(qcore::QDType::QUInt8, |a| a.dtype);
    let q = qcore::quantize_per_channel_float_qparams(weight, &scales, &zero_points, 0, dtype)?;
    EmbeddingWeight::from_qtensor(&q)
}

macro_rules! qat_table {
    ($name:ident, $float:ty, $field:ident, $class:literal, $saved:literal, $run:ident) => {
        impl $name {
            /// The name it is saved under.
            pub const SAVED_TYPE: &'static str = $saved;

            /// `from_float`: the float module with `qconfig`'s weight observer (which must be
            /// `per_channel_affine_float_qparams`) in a `FakeQuantize`.
            pub fn from_float(float: &$float, qconfig: &QConfig) -> QFakeResult<Self> {
                Ok(Self {
                    $field: float.clone(),
                    weight_fake_quant: table_fake_quant($class, qconfig)?,
                    qconfig: qconfig.clone(),
                    training: float.training(),
                })
            }

            /// The float module (the table before fake quantization).
            pub fn float(&self) -> &$float {
                &self.$field
            }

            /// The table's fake quantizer.
            pub fn weight_fake_quant(&self) -> &FakeQuantModule {
                self.weight_fake_quant.downcast_ref().expect("built as a FakeQuantModule")
            }

            /// Rebuilds a saved module (its fake quantizer loaded by its loader).
            pub fn from_record(mut record: Record<'_>) -> QFakeResult<Self> {
                let c: QatTableConfig = record.config()?;
                let weight_fake_quant = record.take_child("weight_fake_quant")?;
                if !weight_fake_quant.is::<FakeQuantModule>() {
                    return Err(record
                        .tensors
                        .mismatch("child `weight_fake_quant` is not a fake quantizer".into()));
                }
                let $field = <$float>::from_record(Record { config: c.table, ..record })?;
                Ok(Self { $field, weight_fake_quant, qconfig: c.qconfig, training: false })
            }

            /// The float module with the fake-quantized table, and the fake quantizer's context.
            fn fake_table(&self) -> QFakeResult<($float, FakeQuantCtx)> {
                let (weight, ctx) = self.weight_fake_quant().fake_quantize(self.$field.weight())?;
                Ok((self.$field.clone().with_weight(weight)?, ctx))
            }
        }

        impl Module for $name {
            fn type_name(&self) -> &str {
                $class
            }

            fn saved_type(&self) -> &str {
                Self::SAVED_TYPE
            }

            fn forward(&self, input: Value) -> QFakeResult<Value> {
                Ok(Value::Float(self.$run(input)?.0))
            }

            fn children(&self) -> Vec<(&str, &dyn Module)> {
                vec![("weight_fake_quant", self.weight_fake_quant.as_ref())]
            }

            fn child_slot(&mut self, name: &str) -> Option<&mut Box<dyn Module>> {
                (name == "weight_fake_quant").then_some(&mut self.weight_fake_quant)
            }

            delegate_to_float!($field);

            fn config(&self) -> serde_json::Value {
                let config = QatTableConfig { table: self.$field.config(), qconfig: self.qconfig.clone() };
                serde_json::to_value(config).expect("plain data")
            }

            fn tensors(&self) -> Vec<(String, TensorView<'_>)> {
                self.$field.tensors()
            }
        }
    };
}

/// `torch.ao.nn.qat.Embedding`: `F.embedding(input, weight_fake_quant(weight), padding_idx)`,
/// with PyTorch's children and `state_dict` names (`weight`, `weight_fake_quant`). The training
/// forward and backward (rows scattered back, `padding_idx` skipped, through the fake
/// quantizer's mask) are in [`crate::train`]; `convert` gives `QuantizedEmbedding`.
#[derive(Debug, Clone)]
pub struct QatEmbedding {
    embedding: Embedding,
    weight_fake_quant: Box<dyn Module>,
    qconfig: QConfig,
    training: bool,
}

qat_table!(QatEmbedding, Embedding, embedding, "Embedding", "QatEmbedding", run);

/// What the QAT embedding's forward computed, for its backward.
pub(crate) struct EmbeddingRun {
    /// The table row of every index, in order.
    pub rows: Vec<usize>,
    /// The fake quantizer's context.
    pub fake_quant: FakeQuantCtx,
}

impl QatEmbedding {
    /// The forward and what backward needs.
    pub(crate) fn run(&self, input: Value) -> QFakeResult<(ArrayD<f32>, EmbeddingRun)> {
        let (table, fake_quant) = self.fake_table()?;
        let indices = input.into_int("Embedding")?;
        let options = table.options();
        let rows = indices.iter().map(|&i| options.row("Embedding", i)).collect::<QFakeResult<Vec<_>>>()?;
        let out = table.forward(Value::Int(indices))?.into_float("Embedding")?;
        Ok((out, EmbeddingRun { rows, fake_quant }))
    }

    /// `nnq.Embedding.from_float` of the trained module.
    pub fn quantized(&self) -> QFakeResult<QuantizedEmbedding> {
        Ok(QuantizedEmbedding::new(quantized_table(self.weight_fake_quant(), self.embedding.weight())?))
    }
}

/// `torch.ao.nn.qat.EmbeddingBag`: `F.embedding_bag` on `weight_fake_quant(weight)` (modes sum,
/// mean, max; offsets, `per_sample_weights`, `padding_idx` as [`EmbeddingBag`]). The training
/// backward is in [`crate::train`]; `convert` gives `QuantizedEmbeddingBag`.
#[derive(Debug, Clone)]
pub struct QatEmbeddingBag {
    bag: EmbeddingBag,
    weight_fake_quant: Box<dyn Module>,
    qconfig: QConfig,
    training: bool,
}

qat_table!(QatEmbeddingBag, EmbeddingBag, bag, "EmbeddingBag", "QatEmbeddingBag", run);

/// What the QAT embedding bag's forward computed, for its backward.
pub(crate) struct BagRun {
    /// The bags.
    pub bags: Bags,
    /// The fake-quantized table (max mode finds each maximum's row in it).
    pub table: ArrayD<f32>,
    /// The fake quantizer's context.
    pub fake_quant: FakeQuantCtx,
}

impl QatEmbeddingBag {
    /// The forward and what backward needs.
    pub(crate) fn run(&self, input: Value) -> QFakeResult<(ArrayD<f32>, BagRun)> {
        let (table, fake_quant) = self.fake_table()?;
        let o = table.options();
        let bags = Bags::parse("EmbeddingBag", input, &o.table, o.include_last_offset)?;
        let out = table.run(&bags)?;
        Ok((out, BagRun { bags, table: table.weight().clone(), fake_quant }))
    }

    /// `nnq.EmbeddingBag.from_float` of the trained module (mode and `include_last_offset` kept).
    pub fn quantized(&self) -> QFakeResult<QuantizedEmbeddingBag> {
        let weight = quantized_table(self.weight_fake_quant(), self.bag.weight())?;
        let o = self.bag.options();
        Ok(QuantizedEmbeddingBag::new(weight, o.mode, o.include_last_offset))
    }
}
