//! Constant folding of nodes whose inputs are known at import time.

use ndarray::{ArrayD, IxDyn};

use super::Converter;
use super::attrs::*;
use crate::fold::{self, Dim, Dims};
use crate::items::{Layout, Val};
use crate::modules::{Gather, Reshape, Slice, Transpose};
use crate::proto::NodeProto;
use crate::tensor::Tensor;

impl Converter<'_> {
    /// Folds `node` if its inputs are known at import time; true if it did.
    pub(super) fn try_fold(&mut self, node: &NodeProto) -> Res<bool> {
        let op = node.op_type.as_str();
        if op == "Constant" {
            let a = node.attributes.first().ok_or_else(|| node_err(node, "no value", "check the model"))?;
            let t = match a.name.as_str() {
                "value" => a.t.as_ref().map(|t| crate::tensor::decode(t, None)).transpose()?,
                "value_float" => a.f.map(|f| Tensor::F32(ArrayD::from_elem(IxDyn(&[]), f))),
                "value_floats" => Some(Tensor::F32(
                    ArrayD::from_shape_vec(IxDyn(&[a.floats.len()]), a.floats.clone()).expect("len"),
                )),
                "value_int" => a.i.map(|i| Tensor::I64(ArrayD::from_elem(IxDyn(&[]), i))),
                "value_ints" => Some(Tensor::I64(
                    ArrayD::from_shape_vec(IxDyn(&[a.ints.len()]), a.ints.clone()).expect("len"),
                )),
                _ => None,
            };
            let t = t.ok_or_else(|| {
                node_err(node, format!("attribute {:?}", a.name), "use a tensor, float(s) or int(s) constant")
            })?;
            self.set(Self::out(node), Val::Const(t));
            return Ok(true);
        }
        if op == "Shape" {
            let (id, rank, layout, _) = self.value(node, 0).or_else(|e| match self.input(node, 0) {
                Ok(Some(Val::Const(t))) => Ok((String::new(), Some(t.shape().len()), Layout::Plain, false)),
                _ => Err(e),
            })?;
            let dims = if id.is_empty() {
                let Some(Val::Const(t)) = self.input(node, 0)? else { unreachable!("matched above") };
                t.shape().iter().map(|&d| Dim::Known(d as i64)).collect()
            } else {
                let of = |axis| Dim::Of { value: id.clone(), axis };
                match layout {
                    Layout::Plain => {
                        let rank = rank.ok_or_else(|| {
                            node_err(node, "the rank of its input is unknown", "export with static shapes")
                        })?;
                        (0..rank).map(of).collect()
                    }
                    Layout::RnnY { dirs, hidden } => {
                        vec![of(0), Dim::Known(dirs as i64), of(1), Dim::Known(hidden as i64)]
                    }
                    Layout::RnnYT { dirs, hidden } => {
                        vec![of(0), of(1), Dim::Known(dirs as i64), Dim::Known(hidden as i64)]
                    }
                }
            };
            let dims = Dims { dims, scalar: false };
            let (start, end) = (attr_i(node, "start", 0), attr(node, "end").and_then(|a| a.i));
            let n = dims.dims.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + n } else { v }).clamp(0, n) as usize;
            let (s, e) = (clamp(start), clamp(end.unwrap_or(n)));
            let dims = Dims { dims: dims.dims[s..e.max(s)].to_vec(), scalar: false };
            self.set(Self::out(node), Val::Dims(dims));
            return Ok(true);
        }
        // The remaining folds need every present input known.
        let mut known = Vec::new();
        for k in 0..node.inputs.len() {
            match self.input(node, k)? {
                Some(Val::Const(t)) => known.push(Some(Val::Const(t.clone()))),
                Some(Val::Dims(d)) => known.push(Some(Val::Dims(d.clone()))),
                Some(Val::Zeros) => {
                    // Zeros stay zeros through the layout ops (a recurrent layer's initial
                    // states are sliced per layer from one zero tensor).
                    const KEEP: &[&str] = &[
                        "Expand",
                        "Identity",
                        "Cast",
                        "CastLike",
                        "Slice",
                        "Gather",
                        "Squeeze",
                        "Unsqueeze",
                        "Reshape",
                        "Transpose",
                    ];
                    if k == 0 && KEEP.contains(&op) {
                        self.set(Self::out(node), Val::Zeros);
                        return Ok(true);
                    }
                    return Ok(false);
                }
                Some(Val::Node { .. }) => return Ok(false),
                None => known.push(None),
            }
        }
        if known.is_empty() && op != "ConstantOfShape" {
            return Ok(false);
        }
        let as_tensor = |v: &Option<Val>| match v {
            Some(Val::Const(t)) => Some(t.clone()),
            Some(Val::Dims(d)) => d.to_tensor(),
            _ => None,
        };
        let as_dims = |v: &Option<Val>| match v {
            Some(Val::Dims(d)) => Some(d.clone()),
            Some(Val::Const(t)) => Dims::from_tensor(t),
            _ => None,
        };
        let fail = || node_err(node, "its constant inputs cannot be folded", "check the model's shapes");
        let result: Val = match op {
            "Identity" | "Cast" | "CastLike" | "Dropout" => match &known[0] {
                Some(Val::Const(t)) if op == "Cast" && attr_i(node, "to", 1) == 1 => {
                    Val::Const(Tensor::F32(t.to_f32()))
                }
                Some(Val::Const(Tensor::F32(a)))
                    if op == "Cast" && [6, 7].contains(&attr_i(node, "to", 1)) =>
                {
                    Val::Const(Tensor::I64(a.mapv(|v| v as i64)))
                }
                Some(v) => v.clone(),
                None => return Err(fail()),
            },
            "Gather" => {
                let idx =
                    known.get(1).and_then(as_tensor).and_then(|t| t.as_i64().cloned()).ok_or_else(fail)?;
                let axis = attr_i(node, "axis", 0);
                if let Some(d) = as_dims(&known[0]).filter(|d| !d.scalar && axis == 0) {
                    let n = d.dims.len() as i64;
                    let pick: Option<Vec<Dim>> = idx
                        .iter()
                        .map(|&i| {
                            let j = if i < 0 { i + n } else { i };
                            (0..n).contains(&j).then(|| d.dims[j as usize].clone())
                        })
                        .collect();
                    Val::Dims(Dims { dims: pick.ok_or_else(fail)?, scalar: idx.ndim() == 0 })
                } else {
                    let t = as_tensor(&known[0]).ok_or_else(fail)?;
                    let rank = t.shape().len() as i64;
                    let along = usize::try_from(if axis < 0 { axis + rank } else { axis }).unwrap_or(0);
                    let rows = t.len() / t.shape().get(along).copied().unwrap_or(1).max(1);
                    if fold::too_large(rows.saturating_mul(idx.len())) {
                        return Err(fail());
                    }
                    let g = Gather { axis, indices: idx.iter().copied().collect(), scalar: idx.ndim() == 0 };
                    if idx.ndim() > 1 {
                        return Err(fail());
                    }
                    Val::Const(match t {
                        Tensor::F32(a) => {
                            Tensor::F32(crate::modules::gather_const(&g, a).map_err(|_| fail())?)
                        }
                        Tensor::I64(a) => {
                            Tensor::I64(crate::modules::gather_const(&g, a).map_err(|_| fail())?)
                        }
                    })
                }
            }
            "Unsqueeze" | "Squeeze" => {
                let axes = match attr_ints(node, "axes") {
                    Some(a) => a,
                    None => known
                        .get(1)
                        .and_then(as_tensor)
                        .and_then(|t| t.as_i64().map(|a| a.iter().copied().collect()))
                        .unwrap_or_default(),
                };
                match as_dims(&known[0]) {
                    Some(d) if op == "Unsqueeze" && d.scalar && axes == [0] => {
                        Val::Dims(Dims { dims: d.dims, scalar: false })
                    }
                    Some(d)
                        if op == "Squeeze"
                            && !d.scalar
                            && d.dims.len() == 1
                            && (axes.is_empty() || axes == [0] || axes == [-1]) =>
                    {
                        Val::Dims(Dims { dims: d.dims, scalar: true })
                    }
                    _ => {
                        let t = as_tensor(&known[0]).ok_or_else(fail)?;
                        let run = |t: Tensor| -> Option<Tensor> {
                            Some(match t {
                                Tensor::F32(a) => {
                                    Tensor::F32(crate::modules::squeeze_const(op, &axes, a).ok()?)
                                }
                                Tensor::I64(a) => {
                                    Tensor::I64(crate::modules::squeeze_const(op, &axes, a).ok()?)
                                }
                            })
                        };
                        Val::Const(run(t).ok_or_else(fail)?)
                    }
                }
            }
            "Concat" => {
                let axis = attr_i(node, "axis", 0);
                let all_dims: Option<Vec<Dims>> = known.iter().map(as_dims).collect();
                match all_dims {
                    Some(ds) if axis == 0 || axis == -1 => {
                        Val::Dims(Dims { dims: ds.into_iter().flat_map(|d| d.dims).collect(), scalar: false })
                    }
                    _ => {
                        let ts: Option<Vec<Tensor>> = known.iter().map(as_tensor).collect();
                        let ts = ts.ok_or_else(fail)?;
                        Val::Const(fold::concat(&ts.iter().collect::<Vec<_>>(), axis).ok_or_else(fail)?)
                    }
                }
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                let (a, b) = (as_tensor(&known[0]), known.get(1).and_then(as_tensor));
                match (a, b) {
                    (Some(a), Some(b)) => Val::Const(fold::binary(op, &a, &b).ok_or_else(fail)?),
                    _ => {
                        return Err(node_err(
                            node,
                            "arithmetic on the input's shape",
                            "export with static sizes",
                        ));
                    }
                }
            }
            "Expand" | "ConstantOfShape" => {
                let (value, shape) = if op == "Expand" {
                    (as_tensor(&known[0]), known.get(1).and_then(as_dims))
                } else {
                    let v = attr(node, "value")
                        .and_then(|a| a.t.as_ref())
                        .map(|t| crate::tensor::decode(t, None))
                        .transpose()?;
                    (
                        Some(v.unwrap_or(Tensor::F32(ArrayD::from_elem(IxDyn(&[1]), 0.0)))),
                        known.first().and_then(as_dims),
                    )
                };
                let value = value.ok_or_else(fail)?;
                let shape = shape.ok_or_else(fail)?;
                let zero = value.values_f64().iter().all(|&v| v == 0.0);
                match shape.to_tensor().and_then(|s| s.as_i64().cloned()) {
                    Some(s) => {
                        let flat: Vec<i64> = s.iter().copied().collect();
                        let value = if op == "ConstantOfShape" {
                            match value {
                                Tensor::F32(a) => {
                                    Tensor::F32(a.into_shape_with_order(IxDyn(&[])).map_err(|_| fail())?)
                                }
                                Tensor::I64(a) => {
                                    Tensor::I64(a.into_shape_with_order(IxDyn(&[])).map_err(|_| fail())?)
                                }
                            }
                        } else {
                            value
                        };
                        Val::Const(fold::expand(&value, &flat).ok_or_else(fail)?)
                    }
                    None if zero => Val::Zeros,
                    None => {
                        return Err(node_err(
                            node,
                            "a non-zero constant expanded to the input's shape",
                            "export with static sizes",
                        ));
                    }
                }
            }
            "Slice" => {
                let t = as_dims(&known[0]);
                let starts =
                    known.get(1).and_then(as_tensor).and_then(|t| t.as_i64().cloned()).ok_or_else(fail)?;
                let ends =
                    known.get(2).and_then(as_tensor).and_then(|t| t.as_i64().cloned()).ok_or_else(fail)?;
                match t {
                    Some(d) if !d.scalar && starts.len() == 1 && ends.len() == 1 => {
                        let n = d.dims.len() as i64;
                        let clamp =
                            |v: i64| (if v < 0 { v.saturating_add(n) } else { v }).clamp(0, n) as usize;
                        let (s, e) = (clamp(starts[[0]]), clamp(ends[[0]]));
                        Val::Dims(Dims { dims: d.dims[s..e.max(s)].to_vec(), scalar: false })
                    }
                    _ => {
                        let t = as_tensor(&known[0]).ok_or_else(fail)?;
                        let n = starts.len();
                        let axes = known.get(3).and_then(as_tensor).and_then(|t| t.as_i64().cloned());
                        let steps = known.get(4).and_then(as_tensor).and_then(|t| t.as_i64().cloned());
                        let s = Slice {
                            starts: starts.iter().copied().collect(),
                            ends: ends.iter().copied().collect(),
                            axes: axes
                                .map(|a| a.iter().copied().collect())
                                .unwrap_or_else(|| (0..n as i64).collect()),
                            steps: steps.map(|a| a.iter().copied().collect()).unwrap_or_else(|| vec![1; n]),
                        };
                        Val::Const(match t {
                            Tensor::F32(a) => {
                                Tensor::F32(crate::modules::slice_const(&s, a).map_err(|_| fail())?)
                            }
                            Tensor::I64(a) => {
                                Tensor::I64(crate::modules::slice_const(&s, a).map_err(|_| fail())?)
                            }
                        })
                    }
                }
            }
            "Reshape" => {
                let t = as_tensor(&known[0]).ok_or_else(fail)?;
                let shape =
                    known.get(1).and_then(as_tensor).and_then(|t| t.as_i64().cloned()).ok_or_else(fail)?;
                let r = Reshape { shape: shape.iter().copied().collect() };
                Val::Const(match t {
                    Tensor::F32(a) => Tensor::F32(crate::modules::reshape_const(&r, a).map_err(|_| fail())?),
                    Tensor::I64(a) => Tensor::I64(crate::modules::reshape_const(&r, a).map_err(|_| fail())?),
                })
            }
            "Transpose" => {
                let t = as_tensor(&known[0]).ok_or_else(fail)?;
                let rank = t.shape().len();
                let perm = match attr_ints(node, "perm") {
                    Some(p) => sizes(node, "perm", &p)?,
                    None => (0..rank).rev().collect(),
                };
                let tr = Transpose { perm };
                Val::Const(match t {
                    Tensor::F32(a) => {
                        Tensor::F32(crate::modules::transpose_const(&tr, a).map_err(|_| fail())?)
                    }
                    Tensor::I64(a) => {
                        Tensor::I64(crate::modules::transpose_const(&tr, a).map_err(|_| fail())?)
                    }
                })
            }
            _ => return Ok(false),
        };
        self.set(Self::out(node), result);
        Ok(true)
    }
}
