//! Layout operators on graph values: Reshape, Transpose, Squeeze, Unsqueeze, Slice, Split, Gather, Pad.

use super::Converter;
use super::attrs::*;
use crate::fold::{Dim, Dims};
use crate::items::{Item, Kind, Layout, Role, Val};
use crate::modules::{Gather, Pad, Reshape, Slice, Squeeze, Transpose, Unsqueeze};
use crate::proto::NodeProto;

impl Converter<'_> {
    pub(super) fn reshape(&mut self, node: &NodeProto) -> Res<()> {
        let (id, _, layout, float) = self.value(node, 0)?;
        let target = match self.input(node, 1)? {
            Some(Val::Dims(d)) => d.clone(),
            Some(Val::Const(t)) => Dims::from_tensor(t)
                .ok_or_else(|| node_err(node, "shape is not an integer vector", "check the model"))?,
            _ => {
                return Err(node_err(
                    node,
                    "shape is computed by the graph",
                    "export with do_constant_folding=True",
                ));
            }
        };
        if matches!(layout, Layout::RnnYT { .. }) && target.dims.len() == 3 {
            self.set(Self::out(node), Val::Node { id, rank: Some(3), layout: Layout::Plain, float });
            return Ok(());
        }
        let shape: Vec<i64> = target
            .dims
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Dim::Known(v) => Ok(*v),
                Dim::Of { value, axis } if *value == id && *axis == i => Ok(0),
                Dim::Of { .. } => Err(node_err(
                    node,
                    "a target dimension taken from another position",
                    "export with static sizes",
                )),
            })
            .collect::<Res<_>>()?;
        self.layout_op(node, "reshape", Box::new(Reshape { shape: shape.clone() }), Some(shape.len()))
    }

    pub(super) fn transpose(&mut self, node: &NodeProto) -> Res<()> {
        let (_, rank, layout, float) = self.value(node, 0)?;
        let perm = match attr_ints(node, "perm") {
            Some(p) => sizes(node, "perm", &p)?,
            None => (0..rank.ok_or_else(|| node_err(node, "no perm and unknown rank", "give perm"))?)
                .rev()
                .collect(),
        };
        if let Layout::RnnY { dirs, hidden } = layout
            && perm == [0, 2, 1, 3]
        {
            let (id, ..) = self.value(node, 0)?;
            self.set(
                Self::out(node),
                Val::Node { id, rank: Some(4), layout: Layout::RnnYT { dirs, hidden }, float },
            );
            return Ok(());
        }
        let r = Some(perm.len());
        self.layout_op(node, "permute", Box::new(Transpose { perm }), r)
    }

    pub(super) fn squeeze(&mut self, node: &NodeProto) -> Res<()> {
        let axes = match attr_ints(node, "axes") {
            Some(a) => a,
            None => self.ints_input(node, 1, "axes")?.unwrap_or_default(),
        };
        let (id, rank, layout, float) = self.value(node, 0)?;
        if node.op_type == "Squeeze" {
            if matches!(layout, Layout::RnnY { dirs: 1, .. }) && axes == [1] {
                self.set(Self::out(node), Val::Node { id, rank: Some(3), layout: Layout::Plain, float });
                return Ok(());
            }
            let r = rank.filter(|_| !axes.is_empty()).map(|r| r.saturating_sub(axes.len()));
            self.layout_op(node, "squeeze", Box::new(Squeeze { axes }), r)
        } else {
            let r = rank.map(|r| r + axes.len());
            self.layout_op(node, "unsqueeze", Box::new(Unsqueeze { axes }), r)
        }
    }

    pub(super) fn slice(&mut self, node: &NodeProto) -> Res<()> {
        let (_, rank, ..) = self.value(node, 0)?;
        let (starts, ends, axes, steps) = if self.opset < 10 {
            let s = attr_ints(node, "starts").unwrap_or_default();
            let n = s.len();
            (
                s,
                attr_ints(node, "ends").unwrap_or_default(),
                attr_ints(node, "axes").unwrap_or_else(|| (0..n as i64).collect()),
                vec![1; n],
            )
        } else {
            let s = self.ints_input(node, 1, "starts")?.unwrap_or_default();
            let n = s.len();
            let e = self.ints_input(node, 2, "ends")?.unwrap_or_default();
            let a = self.ints_input(node, 3, "axes")?.unwrap_or_else(|| (0..n as i64).collect());
            let st = self.ints_input(node, 4, "steps")?.unwrap_or_else(|| vec![1; n]);
            (s, e, a, st)
        };
        self.layout_op(node, "slice", Box::new(Slice { starts, ends, axes, steps }), rank)
    }

    pub(super) fn split(&mut self, node: &NodeProto) -> Res<()> {
        let (id, rank, layout, float) = self.value(node, 0)?;
        if layout != Layout::Plain {
            return Err(node_err(
                node,
                "splits a recurrent layer's output in ONNX's layout",
                "split PyTorch's output instead",
            ));
        }
        let split = match attr_ints(node, "split") {
            Some(s) => s,
            None => self.ints_input(node, 1, "split")?.ok_or_else(|| {
                node_err(
                    node,
                    "equal splits of an unknown size",
                    "export with explicit split sizes (torch.split with a list)",
                )
            })?,
        };
        if split.len() != node.outputs.len() || split.iter().any(|&s| s < 0) {
            return Err(node_err(
                node,
                format!("split sizes {split:?} for {} outputs", node.outputs.len()),
                "check the model",
            ));
        }
        let axis = attr_i(node, "axis", 0);
        let mut start = 0i64;
        let scope = self.scope_of(node);
        for (k, &size) in split.iter().enumerate() {
            let end = start
                .checked_add(size)
                .ok_or_else(|| node_err(node, "split sizes overflow", "check the model"))?;
            let output = node.outputs[k].clone();
            let slice = Slice { starts: vec![start], ends: vec![end], axes: vec![axis], steps: vec![1] };
            self.items.push(Item {
                scope: scope.clone(),
                base: "split".into(),
                role: Role::Op,
                kind: Kind::Module(Box::new(slice)),
                inputs: vec![id.clone()],
                output: output.clone(),
                node: node.name.clone(),
            });
            self.set(&output, Val::Node { id: output.clone(), rank, layout: Layout::Plain, float });
            start = end;
        }
        Ok(())
    }

    pub(super) fn gather(&mut self, node: &NodeProto) -> Res<()> {
        let (_, rank, ..) = self.value(node, 0)?;
        let idx = self
            .constant(node, 1, "indices")?
            .ok_or_else(|| node_err(node, "no indices", "check the model"))?;
        let idx = idx
            .as_i64()
            .cloned()
            .ok_or_else(|| node_err(node, "indices are not integers", "check the model"))?;
        if idx.ndim() > 1 {
            return Err(node_err(node, "indices of rank > 1", "index with a scalar or a vector"));
        }
        let scalar = idx.ndim() == 0;
        let g = Gather { axis: attr_i(node, "axis", 0), indices: idx.iter().copied().collect(), scalar };
        let r = rank.map(|r| if scalar { r.saturating_sub(1) } else { r });
        self.layout_op(node, "gather", Box::new(g), r)
    }

    pub(super) fn pad(&mut self, node: &NodeProto) -> Res<()> {
        let mode = attr_s(node, "mode").unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return Err(node_err(node, format!("mode={mode}"), "constant padding is supported"));
        }
        let pads = match attr_ints(node, "pads") {
            Some(p) if self.opset < 11 => p,
            _ => self
                .ints_input(node, 1, "pads")?
                .ok_or_else(|| node_err(node, "no pads", "check the model"))?,
        };
        if self.input(node, 3)?.is_some() {
            return Err(node_err(
                node,
                "the axes input",
                "pad every axis (export with opset < 18 or without axes)",
            ));
        }
        let value = if self.opset < 11 {
            attr_f(node, "value", 0.0)
        } else {
            self.constant(node, 2, "constant_value")?
                .map(|t| t.values_f64().first().copied().unwrap_or(0.0) as f32)
                .unwrap_or(0.0)
        };
        let pads = sizes(node, "pads (negative pads crop)", &pads)?;
        let (_, rank, ..) = self.value(node, 0)?;
        self.layout_op(node, "pad", Box::new(Pad { pads, value }), rank)
    }
}
