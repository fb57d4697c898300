//! `F.linear` backward (`addmm` / `matmul` backward on CPU).

use ndarray::ArrayD;
use qkernels::Isa;
use qkernels::float::{self, Matrix};

use super::check::{array, bad, check_shape, to_vec};
use crate::QFakeResult;

const CONTEXT: &str = "qfake::grad::linear";

/// The gradients [`linear_backward`] returns: input, weight and (when asked for) bias.
pub type LinearGrads = (ArrayD<f32>, ArrayD<f32>, Option<ArrayD<f32>>);

/// The backward of `F.linear(input, weight, bias)`: `input` `[.., in]` (leading dimensions
/// flattened into rows), `weight` `[out, in]`, `grad_output` `[.., out]` with the input's leading
/// dimensions. Returns `grad_input = dY W`, `grad_weight = dY^T X` and, if `need_bias`,
/// `grad_bias = sum of dY over the rows`, by [`qkernels::float::sgemm`] (each element one chain
/// of fused multiply-adds in order; PyTorch's MKL sums in another order, so the results agree to
/// float rounding).
///
/// ```
/// use ndarray::{ArrayD, IxDyn};
/// let x = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
/// let w = ArrayD::from_shape_vec(IxDyn(&[1, 2]), vec![1.0, -1.0]).unwrap();
/// let dy = ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![1.0, 2.0]).unwrap();
/// let (dx, dw, db) = qfake::grad::linear_backward(&x, &w, &dy, true)?;
/// assert_eq!(dx.into_raw_vec_and_offset().0, vec![1.0, -1.0, 2.0, -2.0]);
/// assert_eq!(dw.into_raw_vec_and_offset().0, vec![7.0, 10.0]);
/// assert_eq!(db.unwrap().into_raw_vec_and_offset().0, vec![3.0]);
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn linear_backward(
    input: &ArrayD<f32>,
    weight: &ArrayD<f32>,
    grad_output: &ArrayD<f32>,
    need_bias: bool,
) -> QFakeResult<LinearGrads> {
    if weight.ndim() != 2 {
        return Err(bad(CONTEXT, "weight shape", weight.shape(), "must be [out_features, in_features]"));
    }
    let (out, inf) = (weight.shape()[0], weight.shape()[1]);
    let Some((&last, lead)) = input.shape().split_last() else {
        return Err(bad(CONTEXT, "input shape", input.shape(), "needs at least one dimension (in_features)"));
    };
    check_shape(CONTEXT, "input's last dimension", &[last], &[inf])?;
    let mut dy_shape = lead.to_vec();
    dy_shape.push(out);
    check_shape(CONTEXT, "grad_output", grad_output.shape(), &dy_shape)?;
    let rows: usize = lead.iter().product();
    let (x, w, dy) = (to_vec(input), to_vec(weight), to_vec(grad_output));
    let isa = Isa::active();
    let mut dx = vec![0.0f32; rows * inf];
    float::sgemm(
        rows,
        inf,
        out,
        Matrix::row_major(&dy, out),
        Matrix::row_major(&w, inf),
        &mut dx,
        inf,
        false,
        isa,
    )?;
    let mut dw = vec![0.0f32; out * inf];
    float::sgemm(
        out,
        inf,
        rows,
        Matrix::transposed(&dy, out),
        Matrix::row_major(&x, inf),
        &mut dw,
        inf,
        false,
        isa,
    )?;
    let db = need_bias.then(|| {
        let mut db = vec![0.0f32; out];
        for row in dy.chunks(out.max(1)) {
            for (acc, v) in db.iter_mut().zip(row) {
                *acc += v;
            }
        }
        array(&[out], db)
    });
    Ok((array(input.shape(), dx), array(weight.shape(), dw), db))
}
