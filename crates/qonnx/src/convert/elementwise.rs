//! Elementwise operators: Clip, arithmetic (FloatFunctional), Concat, Softmax.

use qgraph::Functional;
use qgraph::nn::{Hardtanh, ReLU, ReLU6, Softmax};

use super::Converter;
use super::attrs::*;
use crate::items::{Kind, Val};
use crate::modules::LogSoftmax;
use crate::proto::NodeProto;

impl Converter<'_> {
    pub(super) fn clip(&mut self, node: &NodeProto) -> Res<()> {
        let bound = |k: usize, name: &str| -> Res<Option<f64>> {
            if self.opset < 11 {
                return Ok(attr(node, name).and_then(|a| a.f).map(f64::from));
            }
            Ok(self.constant(node, k, name)?.and_then(|t| t.values_f64().first().copied()))
        };
        let (lo, hi) = (bound(1, "min")?, bound(2, "max")?);
        match (lo, hi) {
            (Some(l), Some(h)) if l == 0.0 && h == 6.0 => self.unary(node, "relu6", ReLU6::new()),
            (Some(0.0), None) => self.unary(node, "relu", ReLU::new()),
            (l, h) => self.unary(
                node,
                "hardtanh",
                Hardtanh::new(l.unwrap_or(f64::NEG_INFINITY), h.unwrap_or(f64::INFINITY)),
            ),
        }
    }

    pub(super) fn arithmetic(&mut self, index: usize) -> Res<()> {
        let node = &self.nodes[index];
        let op = node.op_type.as_str();
        let a_const = matches!(self.input(node, 0)?, Some(Val::Const(_)));
        let b_const = matches!(self.input(node, 1)?, Some(Val::Const(_)));
        let consumer = self.items.len() + 1;
        if !a_const && !b_const {
            let functional = match op {
                "Add" => Functional::Add,
                "Mul" => Functional::Mul,
                _ => {
                    return Err(node_err(
                        node,
                        format!("{op} of two computed values"),
                        "FloatFunctional has add and mul only",
                    ));
                }
            };
            let (a, ra) = self.quant_value(node, 0, consumer)?;
            let (b, _) = self.quant_value(node, 1, consumer)?;
            // add followed by its only reader, a ReLU: PyTorch's quantizable models use add_relu.
            let relu = (functional == Functional::Add)
                .then(|| self.sole_reader(Self::out(node)))
                .flatten()
                .filter(|&j| self.nodes[j].op_type == "Relu");
            let (functional, base) = match relu {
                Some(_) => (Functional::AddRelu, "add_relu"),
                None => (functional, if functional == Functional::Add { "add" } else { "mul" }),
            };
            let out = self.push(node, base, Kind::Functional(functional), vec![a, b], ra);
            if let Some(j) = relu {
                self.absorbed.insert(j, out);
            }
            return Ok(());
        }
        let (k, c) = if b_const { (0, 1) } else { (1, 0) };
        let t = self.constant(node, c, "the constant operand")?.expect("checked present");
        if t.len() != 1 {
            return Err(node_err(
                node,
                format!("{op} by a constant of shape {:?}", t.shape()),
                "only scalar constants map to FloatFunctional (add_scalar, mul_scalar)",
            ));
        }
        let v = t.values_f64()[0];
        let functional = match (op, c) {
            ("Add", _) => Functional::AddScalar(v),
            ("Sub", 1) => Functional::AddScalar(-v),
            ("Mul", _) => Functional::MulScalar(v),
            ("Div", 1) if v != 0.0 => Functional::MulScalar(1.0 / v),
            _ => {
                return Err(node_err(
                    node,
                    format!("{op} with the constant as the left operand"),
                    "rewrite as x * c or x + c",
                ));
            }
        };
        let (x, rank) = self.quant_value(node, k, consumer)?;
        let base = if matches!(functional, Functional::AddScalar(_)) { "add_scalar" } else { "mul_scalar" };
        self.push(node, base, Kind::Functional(functional), vec![x], rank);
        Ok(())
    }

    pub(super) fn concat(&mut self, node: &NodeProto) -> Res<()> {
        let consumer = self.items.len() + 1;
        let mut inputs = Vec::new();
        let mut rank = None;
        for k in 0..node.inputs.len() {
            let (x, r) = self.quant_value(node, k, consumer)?;
            rank = rank.or(r);
            inputs.push(x);
        }
        let axis = attr_i(node, "axis", 0);
        let axis = if axis < 0 {
            let r = rank.ok_or_else(|| {
                node_err(node, "negative axis of an input of unknown rank", "export with a non-negative dim")
            })?;
            axis + r as i64
        } else {
            axis
        };
        let axis =
            usize::try_from(axis).map_err(|_| node_err(node, "axis out of range", "check the model"))?;
        self.push(node, "cat", Kind::Functional(Functional::Cat(axis)), inputs, rank);
        Ok(())
    }

    pub(super) fn softmax(&mut self, node: &NodeProto) -> Res<()> {
        let default = if self.opset >= 13 { -1 } else { 1 };
        let axis = attr_i(node, "axis", default);
        let (_, rank, ..) = self.value(node, 0)?;
        if self.opset < 13 && rank.is_none_or(|r| axis != r as i64 - 1 && axis != -1) {
            return Err(node_err(
                node,
                "opset < 13 softmax over flattened trailing axes",
                "export with opset 13 or later",
            ));
        }
        // qgraph has no quantized softmax: both run in float, after a DeQuantStub.
        let (base, module): (&str, Box<dyn qgraph::Module>) = if node.op_type == "Softmax" {
            ("softmax", Box::new(Softmax::new(axis)))
        } else {
            ("log_softmax", Box::new(LogSoftmax { dim: axis }))
        };
        self.float_op(node, base, module, rank).map(|_| ())
    }
}
