//! Training of the QAT embeddings: the table's gradient scattered back row by row (PyTorch's
//! `embedding_dense_backward` and `_embedding_bag_dense_backward`), then through the weight fake
//! quantizer's mask.

use ndarray::{ArrayD, IxDyn};
use qgraph::Value;
use qgraph::nn::EmbeddingBagMode;

use super::fake_quant::fake_quant_backward;
use super::{BackPass, Backprop, Pass, Saved, Train, unsave};
use crate::fake_quantize::QFakeResult;
use crate::qat::embedding::{BagRun, EmbeddingRun};
use crate::qat::{QatEmbedding, QatEmbeddingBag};

/// The name of the table's fake quantizer (its learned parameters' prefix).
const WFQ: &str = "weight_fake_quant";

pub(super) fn register(backprop: &mut Backprop) {
    backprop.register::<QatEmbedding>().register::<QatEmbeddingBag>();
}

/// A standard-layout copy's values.
fn values(x: &ArrayD<f32>) -> Vec<f32> {
    x.iter().copied().collect()
}

impl Train for QatEmbedding {
    fn train_forward(&mut self, input: Value, _pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
        let (out, run) = self.run(input)?;
        Ok((Value::Float(out), Box::new(run)))
    }

    /// The table's gradient: each index's output gradient added to its row in index order,
    /// `padding_idx` skipped. The indices get no gradient (an empty tuple).
    fn train_backward(&self, saved: Saved, grad: Value, pass: &mut BackPass<'_>) -> QFakeResult<Value> {
        let run = *unsave::<EmbeddingRun>(saved, "Embedding")?;
        let g = values(&grad.into_float("Embedding")?);
        let options = self.float().options();
        let d = options.embedding_dim;
        if g.len() != run.rows.len() * d {
            return Err(crate::fake_quantize::invalid(
                "Embedding",
                "grad_output length",
                g.len(),
                format!("must be the number of indices times embedding_dim ({} x {d})", run.rows.len()),
            ));
        }
        let mut table = vec![0f32; options.num_embeddings * d];
        for (&row, g) in run.rows.iter().zip(g.chunks(d.max(1))) {
            if Some(row) == options.padding_idx {
                continue;
            }
            table[row * d..(row + 1) * d].iter_mut().zip(g).for_each(|(t, &g)| *t += g);
        }
        let table = ArrayD::from_shape_vec(IxDyn(&[options.num_embeddings, d]), table).expect("table shape");
        let g_weight = fake_quant_backward(self.weight_fake_quant(), WFQ, &run.fake_quant, &table, pass)?;
        pass.add_grad("weight", g_weight);
        Ok(Value::Tuple(Vec::new()))
    }
}

impl Train for QatEmbeddingBag {
    fn train_forward(&mut self, input: Value, _pass: &Pass<'_>) -> QFakeResult<(Value, Saved)> {
        let (out, run) = self.run(input)?;
        Ok((Value::Float(out), Box::new(run)))
    }

    /// The table's gradient: `sum` adds each bag's gradient to its rows (times the sample's
    /// weight), `mean` times `1 / count` of the bag's rows that are not `padding_idx`, `max` to
    /// the row that gave each element's maximum (the first, as forward); then the fake
    /// quantizer's mask. Returns `per_sample_weights`' gradient (each sample's bag gradient dot its
    /// row, 0 for `padding_idx`) when they were given, else an empty tuple.
    fn train_backward(&self, saved: Saved, grad: Value, pass: &mut BackPass<'_>) -> QFakeResult<Value> {
        let BagRun { bags, table, fake_quant } = *unsave::<BagRun>(saved, "EmbeddingBag")?;
        let g = values(&grad.into_float("EmbeddingBag")?);
        let o = self.float().options();
        let (n, d, padding) = (o.table.num_embeddings, o.table.embedding_dim, o.table.padding_idx);
        if g.len() != bags.bounds.len() * d {
            return Err(crate::fake_quantize::invalid(
                "EmbeddingBag",
                "grad_output length",
                g.len(),
                format!("must be the number of bags times embedding_dim ({} x {d})", bags.bounds.len()),
            ));
        }
        let t = table.as_slice().expect("standard layout");
        let mut dw = vec![0f32; n * d];
        let mut dpsw = bags.weights.as_ref().map(|w| vec![0f32; w.len()]);
        for (&(start, end), gb) in bags.bounds.iter().zip(g.chunks(d.max(1))) {
            let kept: Vec<usize> = (start..end).filter(|&k| Some(bags.rows[k]) != padding).collect();
            if o.mode == EmbeddingBagMode::Max {
                for (j, &gj) in gb.iter().enumerate() {
                    let mut best: Option<(usize, f32)> = None;
                    for &k in &kept {
                        let v = t[bags.rows[k] * d + j];
                        if best.is_none_or(|(_, m)| v > m) {
                            best = Some((bags.rows[k], v));
                        }
                    }
                    if let Some((row, _)) = best {
                        dw[row * d + j] += gj;
                    }
                }
                continue;
            }
            for &k in &kept {
                let row = bags.rows[k];
                let scale = match (o.mode, &bags.weights) {
                    (EmbeddingBagMode::Mean, _) => 1.0 / kept.len() as f32,
                    (_, Some(w)) => w[k],
                    _ => 1.0,
                };
                dw[row * d..(row + 1) * d].iter_mut().zip(gb).for_each(|(w, &g)| *w = scale.mul_add(g, *w));
                if let Some(dpsw) = dpsw.as_mut() {
                    dpsw[k] = t[row * d..(row + 1) * d].iter().zip(gb).map(|(&w, &g)| w * g).sum();
                }
            }
        }
        let dw = ArrayD::from_shape_vec(IxDyn(&[n, d]), dw).expect("table shape");
        let g_weight = fake_quant_backward(self.weight_fake_quant(), WFQ, &fake_quant, &dw, pass)?;
        pass.add_grad("weight", g_weight);
        Ok(match dpsw {
            Some(v) => Value::Float(ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).expect("1-D")),
            None => Value::Tuple(Vec::new()),
        })
    }
}
