//! LSTM and GRU nodes as PyTorch's multi-layer modules.

use ndarray::{ArrayD, Axis, IxDyn};
use qgraph::Module;
use qgraph::nn::{GRU, LSTM, RnnOptions};

use super::attrs::*;
use super::{Converter, Stack};
use crate::items::{Item, Kind, Layout, Role, Val};
use crate::proto::NodeProto;

impl Converter<'_> {
    /// The recurrent stack `node` continues, if its input is, through the layout ops exporters
    /// write between layers, the output of the stack's last layer and read by nothing else, and
    /// the layers agree (kind, hidden size, directions, scope).
    pub(super) fn stack_below(
        &mut self,
        node: &NodeProto,
        lstm: bool,
        options: &RnnOptions,
    ) -> Option<(usize, &mut Stack)> {
        let mut value = node.inputs.first()?.as_str();
        let mut reader = node;
        let found = loop {
            // Besides the chain, only shape queries may read the value.
            let readers = self.readers.get(value)?;
            let chain = readers.iter().filter(|&&r| std::ptr::eq(&self.nodes[r], reader)).count();
            let shapes = readers.iter().filter(|&&r| self.nodes[r].op_type == "Shape").count();
            if chain != 1 || chain + shapes != readers.len() || self.outputs.iter().any(|o| o == value) {
                return None;
            }
            let p = *self.producers.get(value)?;
            match self.nodes[p].op_type.as_str() {
                "LSTM" | "GRU" => break p,
                "Transpose" | "Reshape" | "Squeeze" => {
                    reader = &self.nodes[p];
                    value = reader.inputs.first()?.as_str();
                }
                _ => return None,
            }
        };
        let scope = self.scope_of(node);
        let (&item, stack) = self.recurrent.iter_mut().find(|(_, s)| s.last_node == found)?;
        let same = stack.lstm == lstm
            && stack.options.hidden_size == options.hidden_size
            && stack.options.bidirectional == options.bidirectional
            && options.input_size == options.hidden_size * options.num_directions()
            && self.items[item].scope == scope;
        same.then_some((item, stack))
    }

    pub(super) fn recurrent(&mut self, node: &NodeProto) -> Res<()> {
        let lstm = node.op_type == "LSTM";
        let hidden = sizes(node, "hidden_size", &[attr_i(node, "hidden_size", 0)])?[0];
        let dirs = match attr_s(node, "direction").as_deref() {
            None | Some("forward") => 1,
            Some("bidirectional") => 2,
            Some(d) => {
                return Err(node_err(
                    node,
                    format!("direction={d}"),
                    "forward and bidirectional layers map to PyTorch's",
                ));
            }
        };
        if attr_i(node, "layout", 0) != 0
            || attr(node, "clip").is_some()
            || attr(node, "activations").is_some()
            || attr_i(node, "input_forget", 0) != 0
        {
            return Err(node_err(
                node,
                "layout, clip, activations or input_forget set",
                "export PyTorch's default recurrent layer",
            ));
        }
        if !lstm && attr_i(node, "linear_before_reset", 0) != 1 {
            return Err(node_err(node, "linear_before_reset=0", "PyTorch's GRU is linear_before_reset=1"));
        }
        if self.input(node, 4)?.is_some() {
            return Err(node_err(node, "sequence_lens", "run on full sequences (no packed sequences)"));
        }
        for k in 5..node.inputs.len() {
            if !matches!(self.input(node, k)?, None | Some(Val::Zeros)) {
                let all_zero = matches!(self.input(node, k)?, Some(Val::Const(t)) if t.values_f64().iter().all(|&v| v == 0.0));
                if !all_zero {
                    return Err(node_err(
                        node,
                        "non-zero initial states",
                        "start from zero states (PyTorch's default)",
                    ));
                }
            }
        }
        if node.outputs.iter().skip(1).any(|o| !o.is_empty() && self.readers.contains_key(o.as_str()))
            || node.outputs.iter().skip(1).any(|o| self.outputs.contains(o))
        {
            return Err(node_err(
                node,
                "the final states (Y_h, Y_c) are used",
                "use the sequence output only",
            ));
        }
        let w =
            self.constant(node, 1, "W")?.ok_or_else(|| node_err(node, "no W", "check the model"))?.to_f32();
        let r =
            self.constant(node, 2, "R")?.ok_or_else(|| node_err(node, "no R", "check the model"))?.to_f32();
        let b = self.constant(node, 3, "B")?.map(|b| b.to_f32());
        let gates = if lstm { 4 } else { 3 };
        let gh = gates * hidden;
        if w.ndim() != 3 || w.shape()[0] != dirs || w.shape()[1] != gh || r.shape() != [dirs, gh, hidden] {
            return Err(node_err(
                node,
                format!("W {:?} and R {:?} for hidden size {hidden}", w.shape(), r.shape()),
                "check the model",
            ));
        }
        if b.as_ref().is_some_and(|b| b.shape() != [dirs, 2 * gh]) {
            return Err(node_err(node, "B has the wrong shape", "check the model"));
        }
        let input = w.shape()[2];
        // ONNX's gate blocks in PyTorch's order: LSTM iofc -> ifgo, GRU zrh -> rzn.
        let order: &[usize] = if lstm { &[0, 2, 3, 1] } else { &[1, 0, 2] };
        let reorder = |m: ndarray::ArrayViewD<f32>| -> ArrayD<f32> {
            let parts: Vec<_> = order
                .iter()
                .map(|&g| m.slice_axis(Axis(0), ndarray::Slice::from(g * hidden..(g + 1) * hidden)))
                .collect();
            ndarray::concatenate(Axis(0), &parts).expect("same shapes")
        };
        let mut tensors = Vec::new();
        for d in 0..dirs {
            let suffix = if d == 1 { "_reverse" } else { "" };
            tensors.push((format!("weight_ih_l0{suffix}"), reorder(w.index_axis(Axis(0), d))));
            tensors.push((format!("weight_hh_l0{suffix}"), reorder(r.index_axis(Axis(0), d))));
            let bd = b
                .as_ref()
                .map(|b| b.index_axis(Axis(0), d).to_owned())
                .unwrap_or_else(|| ArrayD::zeros(IxDyn(&[2 * gh])));
            tensors.push((
                format!("bias_ih_l0{suffix}"),
                reorder(bd.slice_axis(Axis(0), ndarray::Slice::from(0..gh))),
            ));
            tensors.push((
                format!("bias_hh_l0{suffix}"),
                reorder(bd.slice_axis(Axis(0), ndarray::Slice::from(gh..2 * gh))),
            ));
        }
        let options = RnnOptions { bidirectional: dirs == 2, ..RnnOptions::new(input, hidden) };
        let y = node.outputs.first().cloned().unwrap_or_default();
        let index = self.nodes.iter().position(|n| std::ptr::eq(n, node)).unwrap_or(0);
        // A layer reading only the previous layer's output: PyTorch's next layer of one module.
        if let Some((item, stack)) = self.stack_below(node, lstm, &options) {
            let k = stack.options.num_layers;
            let (lstm, output) = (stack.lstm, stack.output.clone());
            stack.options.num_layers += 1;
            stack.last_node = index;
            stack
                .tensors
                .extend(tensors.into_iter().map(|(name, t)| (name.replace("_l0", &format!("_l{k}")), t)));
            let tensors = stack.tensors.clone();
            let options = stack.options;
            self.items[item].kind = Kind::Module(if lstm {
                Box::new(LSTM::from_tensors(options, tensors)?)
            } else {
                Box::new(GRU::from_tensors(options, tensors)?)
            });
            self.set(
                &y,
                Val::Node { id: output, rank: Some(3), layout: Layout::RnnY { dirs, hidden }, float: true },
            );
            return Ok(());
        }
        let module: Box<dyn Module> = if lstm {
            Box::new(LSTM::from_tensors(options, tensors.clone())?)
        } else {
            Box::new(GRU::from_tensors(options, tensors.clone())?)
        };
        let base = if lstm { "lstm" } else { "gru" };
        let tuple = self.float_op(node, base, module, None)?;
        let item = self.items.len() - 1;
        let out = self.fresh(&y);
        self.items.push(Item {
            scope: self.scope_of(node),
            base: format!("{base}_output"),
            role: Role::Stub { next_to: self.items.len() - 1 },
            kind: Kind::GetItem(0),
            inputs: vec![tuple],
            output: out.clone(),
            node: node.name.clone(),
        });
        self.recurrent.insert(item, Stack { lstm, options, tensors, last_node: index, output: out.clone() });
        self.set(
            &y,
            Val::Node { id: out, rank: Some(3), layout: Layout::RnnY { dirs, hidden }, float: true },
        );
        Ok(())
    }
}
