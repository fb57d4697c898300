//! `torch.ao.nn.qat.Linear`: a linear layer whose weight passes through fake quantization.

use ndarray::{ArrayD, Axis};
use qcore::fake_quant::{fake_quantize_per_channel, fake_quantize_per_tensor};
use qcore::{QDType, QParams};
use qgraph::qconfig::QConfig;
use qgraph::record::{Record, TensorView};
use qgraph::{GraphError, GraphResult, Module, Value};
use serde::{Deserialize, Serialize};

/// What a QAT linear layer saves: the float layer's configuration and the qconfig.
#[derive(Debug, Serialize, Deserialize)]
struct QatLinearConfig {
    linear: serde_json::Value,
    qconfig: QConfig,
}

/// `qat.Linear`: `y = x fake_quant(W)^T + b` in f32. The weight observer of the qconfig sees the
/// current weight in each forward and gives the parameters of its fake quantization (per tensor
/// or per output channel), which follows [`qcore::fake_quant`] element by element. Prints as
/// PyTorch's class (`Linear(...)`); saved as [`Linear::SAVED_TYPE`].
#[derive(Debug, Clone)]
pub struct Linear {
    float: qgraph::nn::Linear,
    qconfig: QConfig,
}

impl Linear {
    /// The name the layer is saved under (it prints as `Linear`, as PyTorch's `qat.Linear`).
    pub const SAVED_TYPE: &'static str = "QatLinear";

    /// `qat.Linear.from_float`: the float layer's parameters with `qconfig`'s weight observer.
    /// The weight observer must give qint8 parameters, as for convert.
    pub fn from_float(float: &qgraph::nn::Linear, qconfig: &QConfig) -> GraphResult<Self> {
        let linear = Self { float: float.clone(), qconfig: qconfig.clone() };
        linear.fake_quantized_weight()?;
        Ok(linear)
    }

    /// The float layer (weight before fake quantization).
    pub fn float(&self) -> &qgraph::nn::Linear {
        &self.float
    }

    /// The qconfig.
    pub fn qconfig(&self) -> &QConfig {
        &self.qconfig
    }

    /// The weight as forward uses it: fake-quantized with the parameters the weight observer
    /// computes for it.
    pub fn fake_quantized_weight(&self) -> GraphResult<ArrayD<f32>> {
        let spec = &self.qconfig.weight;
        let weight = self.float.weight();
        let args = spec.args().ok_or_else(|| qgraph::GraphError::Workflow {
            step: "prepare_qat",
            reason: format!(
                "qat.Linear: weight observer {} computes no quantization parameters; use a MinMax or \
                     PerChannelMinMax observer with dtype qint8",
                spec.name()
            ),
        })?;
        if args.dtype != QDType::QInt8 {
            return Err(GraphError::Workflow {
                step: "prepare_qat",
                reason: format!(
                    "qat.Linear: weight observer dtype {}; fake-quantized weights are qint8, give the weight \
                     observer dtype qint8",
                    args.dtype
                ),
            });
        }
        let (qmin, qmax) =
            qcore::calculate_qmin_qmax(args.quant_min, args.quant_max, args.dtype, args.reduce_range)?;
        let mut observer = spec.build()?;
        observer.observe(weight.view())?;
        let out = match observer.calculate_qparams()? {
            QParams::PerTensor { scale, zero_point } => {
                weight.mapv(|x| fake_quantize_per_tensor(x, scale as f32, zero_point, qmin, qmax).value)
            }
            QParams::PerChannel { scales, zero_points, axis: 0 } => {
                let mut out = weight.clone();
                for ((mut row, &s), &zp) in out.axis_iter_mut(Axis(0)).zip(&scales).zip(&zero_points) {
                    row.mapv_inplace(|x| fake_quantize_per_channel(x, s as f32, zp, qmin, qmax).value);
                }
                out
            }
            other => {
                return Err(GraphError::Workflow {
                    step: "prepare_qat",
                    reason: format!(
                        "qat.Linear: weight parameters {:?} are not per tensor or per output channel (ch_axis 0)",
                        other.qscheme()
                    ),
                });
            }
        };
        Ok(out)
    }

    /// Rebuilds a saved layer (in eval mode, as every loaded module).
    pub fn from_record(record: Record<'_>) -> GraphResult<Self> {
        let c: QatLinearConfig = record.config()?;
        let float = qgraph::nn::Linear::from_record(Record { config: c.linear, ..record })?;
        Self::from_float(&float, &c.qconfig)
    }
}

impl Module for Linear {
    fn type_name(&self) -> &str {
        "Linear"
    }

    fn saved_type(&self) -> &str {
        Self::SAVED_TYPE
    }

    fn forward(&self, input: Value) -> GraphResult<Value> {
        let mut fake = self.float.clone();
        fake.set_weight_bias(self.fake_quantized_weight()?, self.float.bias().cloned())?;
        fake.forward(input)
    }

    qgraph::delegate_to_inner!(float);

    fn config(&self) -> serde_json::Value {
        let config = QatLinearConfig { linear: self.float.config(), qconfig: self.qconfig.clone() };
        serde_json::to_value(config).expect("plain data")
    }

    fn tensors(&self) -> Vec<(String, TensorView<'_>)> {
        self.float.tensors()
    }
}
