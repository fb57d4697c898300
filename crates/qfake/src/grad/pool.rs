//! Pooling: max pooling with the index of each maximum, and the backward of max and adaptive
//! average pooling.

use ndarray::{ArrayD, IxDyn};

use crate::fake_quantize::{QFakeResult, invalid};

/// 2-D max pooling of `[N, C, H, W]` (`kernel`, `stride`, `padding`, `dilation`, floor mode) with
/// the flat spatial index of each maximum (PyTorch's first maximum; NaN wins).
pub fn max_pool2d_with_indices(
    input: &ArrayD<f32>,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    ceil_mode: bool,
) -> QFakeResult<(ArrayD<f32>, Vec<usize>)> {
    if input.ndim() != 4 {
        return Err(invalid("max_pool2d", "input rank", input.ndim(), "give [N, C, H, W]"));
    }
    let (n, c, h, w) = (input.shape()[0], input.shape()[1], input.shape()[2], input.shape()[3]);
    let out_size = |len: usize, k: usize, s: usize, p: usize, d: usize| {
        let span = (len + 2 * p).saturating_sub(d * (k - 1) + 1);
        let mut o = if ceil_mode { span.div_ceil(s) + 1 } else { span / s + 1 };
        if ceil_mode && (o - 1) * s >= len + p {
            o -= 1;
        }
        o
    };
    let oh = out_size(h, kernel[0], stride[0], padding[0], dilation[0]);
    let ow = out_size(w, kernel[1], stride[1], padding[1], dilation[1]);
    let x = input.as_standard_layout();
    let x = x.as_slice().expect("standard layout");
    let mut out = Vec::with_capacity(n * c * oh * ow);
    let mut indices = Vec::with_capacity(out.capacity());
    for plane in 0..n * c {
        let base = plane * h * w;
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut best, mut at) = (f32::NEG_INFINITY, usize::MAX);
                for ky in 0..kernel[0] {
                    let y = (oy * stride[0] + ky * dilation[0]) as isize - padding[0] as isize;
                    for kx in 0..kernel[1] {
                        let xx = (ox * stride[1] + kx * dilation[1]) as isize - padding[1] as isize;
                        if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                            continue;
                        }
                        let idx = y as usize * w + xx as usize;
                        let v = x[base + idx];
                        if at == usize::MAX || v > best || v.is_nan() && !best.is_nan() {
                            (best, at) = (v, idx);
                        }
                    }
                }
                out.push(best);
                indices.push(at);
            }
        }
    }
    let out = ArrayD::from_shape_vec(IxDyn(&[n, c, oh, ow]), out).expect("length");
    Ok((out, indices))
}

/// The backward of max pooling: each output's gradient goes to its maximum's position.
pub fn max_pool2d_backward(
    grad_output: &ArrayD<f32>,
    indices: &[usize],
    input_shape: &[usize],
) -> QFakeResult<ArrayD<f32>> {
    if grad_output.len() != indices.len() || input_shape.len() != 4 {
        return Err(invalid(
            "max_pool2d_backward",
            "grad_output shape",
            grad_output.shape(),
            "must be the forward output's",
        ));
    }
    let plane_in = input_shape[2] * input_shape[3];
    let plane_out = grad_output.shape()[2] * grad_output.shape()[3];
    let mut grad = vec![0f32; input_shape.iter().product()];
    for (i, (&g, &at)) in grad_output.as_standard_layout().iter().zip(indices).enumerate() {
        if at != usize::MAX {
            grad[(i / plane_out) * plane_in + at] += g;
        }
    }
    Ok(ArrayD::from_shape_vec(IxDyn(input_shape), grad).expect("length"))
}

/// The backward of `adaptive_avg_pool2d` from `[N, C, H, W]` (`input_shape`) to the gradient's
/// spatial size: each output's gradient spread evenly over its window (PyTorch's
/// `start = floor(i * H / oh)`, `end = ceil((i + 1) * H / oh)`).
pub fn adaptive_avg_pool2d_backward(
    grad_output: &ArrayD<f32>,
    input_shape: &[usize],
) -> QFakeResult<ArrayD<f32>> {
    if grad_output.ndim() != 4 || input_shape.len() != 4 || grad_output.shape()[..2] != input_shape[..2] {
        return Err(invalid(
            "adaptive_avg_pool2d_backward",
            "grad_output shape",
            grad_output.shape(),
            "must be [N, C, oh, ow] of the input",
        ));
    }
    let (h, w) = (input_shape[2], input_shape[3]);
    let (oh, ow) = (grad_output.shape()[2], grad_output.shape()[3]);
    let go = grad_output.as_standard_layout();
    let go = go.as_slice().expect("standard layout");
    let mut grad = vec![0f32; input_shape.iter().product()];
    for plane in 0..input_shape[0] * input_shape[1] {
        for oy in 0..oh {
            let (y0, y1) = (oy * h / oh, ((oy + 1) * h).div_ceil(oh));
            for ox in 0..ow {
                let (x0, x1) = (ox * w / ow, ((ox + 1) * w).div_ceil(ow));
                let g = go[(plane * oh + oy) * ow + ox] / ((y1 - y0) * (x1 - x0)) as f32;
                for y in y0..y1 {
                    for x in x0..x1 {
                        grad[(plane * h + y) * w + x] += g;
                    }
                }
            }
        }
    }
    Ok(ArrayD::from_shape_vec(IxDyn(input_shape), grad).expect("length"))
}
