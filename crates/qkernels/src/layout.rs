//! Memory formats and PyTorch's elementwise loop schedule.
//!
//! PyTorch's elementwise quantized kernels (`cpu_kernel_vec` over a `TensorIterator`) run a vector
//! body and a scalar loop whose rounding differs slightly; which elements each loop takes depends
//! on the operands' memory formats, so reproducing PyTorch's integers means reproducing its
//! schedule. [`scalar_loop_runs`] does that.

use std::ops::Range;

/// The element order of a tensor of logical shape `[N, C, spatial...]`: PyTorch's
/// `torch.contiguous_format` or `torch.channels_last` (`channels_last_3d` for rank 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MemoryFormat {
    /// `[N, C, spatial...]` row-major (what `torch.quantize_per_tensor` gives for an ordinary
    /// float tensor).
    #[default]
    Contiguous,
    /// `[N, spatial..., C]` row-major (what quantized convolutions give).
    ChannelsLast,
}

impl MemoryFormat {
    /// The element strides of logical shape `shape` in this format. Ranks below 3 have no
    /// channels-last form and are row-major in both.
    pub fn strides(self, shape: &[usize]) -> Vec<usize> {
        let rank = shape.len();
        let mut strides = vec![0; rank];
        let mut acc = 1;
        for &d in self.dims_inner_first(rank).iter() {
            strides[d] = acc;
            acc *= shape[d];
        }
        strides
    }

    /// The logical dimensions from the innermost (stride 1) to the outermost.
    fn dims_inner_first(self, rank: usize) -> Vec<usize> {
        match self {
            MemoryFormat::ChannelsLast if rank >= 3 => {
                let mut dims = vec![1];
                dims.extend((2..rank).rev());
                dims.push(0);
                dims
            }
            _ => (0..rank).rev().collect(),
        }
    }

    /// True if a tensor of `shape` has the same element order in both formats (one channel, or
    /// one spatial position): PyTorch then treats it as contiguous in either.
    pub fn is_ambiguous(shape: &[usize]) -> bool {
        shape.len() < 3 || shape[1] == 1 || shape[2..].iter().product::<usize>() == 1
    }

    /// True if tensors of `shape` in formats `self` and `other` store their elements in the same
    /// order.
    pub fn same_order(self, other: MemoryFormat, shape: &[usize]) -> bool {
        self == other || Self::is_ambiguous(shape)
    }
}

/// `at::internal::GRAIN_SIZE`: ranges up to this many elements run on one thread.
const GRAIN_SIZE: usize = 32768;

/// The elements of quint8 / qint8 data `cpu_kernel_vec`'s vector body takes at a time: two
/// `Vectorized<quint8>` of the AVX2 build (32 lanes). PyTorch registers its quantized elementwise
/// kernels (`qadd`, `qmul`, the activations, `qcat_nhwc`) with `REGISTER_DISPATCH`, which leaves
/// the AVX-512 slot empty, so the AVX2 kernel runs on AVX-512 CPUs too.
pub const PYTORCH_VECTOR_BODY: usize = 64;

/// The runs of output offsets PyTorch's scalar loop computes for an elementwise op over logical
/// shape `shape`, as `TensorIterator` + `cpu_kernel_vec` schedule it (PyTorch 2.x,
/// `aten/src/ATen/TensorIterator.cpp` `reorder_dimensions` / `coalesce_dimensions`,
/// `aten/src/ATen/native/cpu/Loops.h` `VectorizedLoop2d` / `vectorized_loop`).
///
/// `strides[0]` are the output's element strides, the others the inputs' (0 along broadcast
/// dimensions). Dimensions are ordered by the output's strides (then the inputs'), neighbours
/// that are contiguous in every operand are merged, and the elements are split into
/// `min(threads, ceil(n / 32768))` equal parts when there are more than 32768. Each part walks
/// rows of the innermost dimension; a row where every operand is contiguous (or all but one input
/// that is broadcast along it) runs the vector body over its leading multiple of
/// [`PYTORCH_VECTOR_BODY`] elements and the scalar loop over the rest; any other row runs the
/// scalar loop throughout. The runs are ranges of output offsets (the output's innermost stride
/// is 1 for a freshly allocated output).
pub fn scalar_loop_runs(shape: &[usize], strides: &[Vec<usize>], threads: usize) -> Vec<Range<usize>> {
    let (dims, dim_strides) = iteration_dims(shape, strides);
    let numel: usize = dims.iter().product();
    if numel == 0 {
        return Vec::new();
    }
    // Every operand's stride along the innermost dimension.
    let inner = &dim_strides[0];
    let contiguous = inner.iter().all(|&s| s == 1);
    let one_broadcast = (1..inner.len())
        .any(|k| inner.iter().enumerate().all(|(a, &s)| if a == k { s == 0 } else { s == 1 }));
    let vectorized = contiguous || one_broadcast;
    let parts = if numel <= GRAIN_SIZE || threads <= 1 { 1 } else { threads.min(numel.div_ceil(GRAIN_SIZE)) };
    let chunk = numel.div_ceil(parts);
    let mut runs = Vec::new();
    for begin in (0..numel).step_by(chunk) {
        let end = (begin + chunk).min(numel);
        let mut i = begin;
        while i < end {
            let n = (dims[0] - i % dims[0]).min(end - i);
            let (mut rem, mut offset) = (i, 0);
            for (d, &size) in dims.iter().enumerate() {
                offset += (rem % size) * dim_strides[d][0];
                rem /= size;
            }
            let start = if vectorized { n - n % PYTORCH_VECTOR_BODY } else { 0 };
            let step = dim_strides[0][0];
            if step == 1 {
                if start < n {
                    runs.push(offset + start..offset + n);
                }
            } else {
                runs.extend((start..n).map(|j| offset + j * step..offset + j * step + 1));
            }
            i += n;
        }
    }
    runs
}

/// `TensorIterator`'s iteration space: the dimensions (innermost first) after reordering by
/// stride and coalescing, each with every operand's stride.
fn iteration_dims(shape: &[usize], strides: &[Vec<usize>]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let rank = shape.len();
    // Size-1 dimensions have no stride that matters.
    let stride = |a: usize, d: usize| if shape[d] == 1 { 0 } else { strides[a][d] };
    // `reorder_dimensions`: start from the last dimension innermost, insertion-sort by
    // `should_swap`, which asks each operand in turn (skipping zero strides).
    let should_swap = |d0: usize, d1: usize| -> i32 {
        for a in 0..strides.len() {
            let (s0, s1) = (stride(a, d0), stride(a, d1));
            if s0 == 0 || s1 == 0 {
                continue;
            }
            if s0 != s1 {
                return if s0 < s1 { -1 } else { 1 };
            }
            if shape[d0] > shape[d1] {
                return 1;
            }
        }
        0
    };
    let mut perm: Vec<usize> = (0..rank).rev().collect();
    for i in 1..rank {
        let mut d1 = i;
        for d0 in (0..i).rev() {
            match should_swap(perm[d0], perm[d1]) {
                c if c > 0 => {
                    perm.swap(d0, d1);
                    d1 = d0;
                }
                c if c < 0 => break,
                _ => {}
            }
        }
    }
    let mut dims: Vec<usize> = perm.iter().map(|&d| shape[d]).collect();
    let mut dim_strides: Vec<Vec<usize>> =
        perm.iter().map(|&d| (0..strides.len()).map(|a| stride(a, d)).collect()).collect();
    // `coalesce_dimensions`.
    if rank > 1 {
        let mut prev = 0;
        for d in 1..rank {
            let mergeable = (0..strides.len()).all(|a| {
                dims[prev] == 1 || dims[d] == 1 || dim_strides[prev][a] * dims[prev] == dim_strides[d][a]
            });
            if mergeable {
                if dims[prev] == 1 {
                    dim_strides[prev] = dim_strides[d].clone();
                }
                dims[prev] *= dims[d];
            } else {
                prev += 1;
                if prev != d {
                    dims[prev] = dims[d];
                    dim_strides[prev] = dim_strides[d].clone();
                }
            }
        }
        dims.truncate(prev + 1);
        dim_strides.truncate(prev + 1);
    }
    if dims.is_empty() {
        dims.push(1);
        dim_strides.push(vec![0; strides.len()]);
    }
    (dims, dim_strides)
}

/// The element strides of a tensor of shape `shape` in format `format`, broadcast to `out_shape`
/// (PyTorch's `expand`: stride 0 along dimensions of size 1 that `out_shape` widens, and along
/// leading dimensions `shape` lacks). `shape` must broadcast to `out_shape` (see
/// [`crate::elementwise::broadcast_shape`]).
pub fn broadcast_strides(shape: &[usize], format: MemoryFormat, out_shape: &[usize]) -> Vec<usize> {
    let own = format.strides(shape);
    let lead = out_shape.len() - shape.len();
    (0..out_shape.len())
        .map(|d| if d < lead || shape[d - lead] == 1 && out_shape[d] != 1 { 0 } else { own[d - lead] })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_of_both_formats() {
        assert_eq!(MemoryFormat::Contiguous.strides(&[2, 3, 4, 5]), vec![60, 20, 5, 1]);
        assert_eq!(MemoryFormat::ChannelsLast.strides(&[2, 3, 4, 5]), vec![60, 1, 15, 3]);
        assert_eq!(MemoryFormat::ChannelsLast.strides(&[3, 4]), vec![4, 1]);
    }

    #[test]
    fn same_format_operands_leave_the_last_elements_of_each_part() {
        let shape = [2, 19, 5, 7];
        let s = MemoryFormat::Contiguous.strides(&shape);
        assert_eq!(scalar_loop_runs(&shape, &[s.clone(), s.clone(), s], 2), vec![1280..1330]);
        let big = [1, 8, 128, 129];
        let s = MemoryFormat::ChannelsLast.strides(&big);
        // 132096 elements in two parts of 66048 = 1032 * 64: no scalar loop at all.
        assert!(scalar_loop_runs(&big, &[s.clone(), s], 2).is_empty());
    }

    #[test]
    fn parts_follow_pytorchs_parallel_for() {
        // Measured with torch.set_num_threads(3) on a 200704-element tensor.
        let runs = scalar_loop_runs(&[200_704], &[vec![1], vec![1]], 3);
        assert_eq!(runs, vec![66_880..66_902, 133_782..133_804, 200_684..200_704]);
        assert_eq!(scalar_loop_runs(&[100_000], &[vec![1], vec![1]], 8).len(), 4);
        assert_eq!(scalar_loop_runs(&[380], &[vec![1], vec![1]], 8), vec![320..380]);
        assert!(scalar_loop_runs(&[0], &[vec![1], vec![1]], 8).is_empty());
    }

    #[test]
    fn mixed_formats_run_the_scalar_loop_everywhere() {
        let shape = [1, 3, 4, 5];
        let (c, cl) = (MemoryFormat::Contiguous.strides(&shape), MemoryFormat::ChannelsLast.strides(&shape));
        let runs = scalar_loop_runs(&shape, &[c.clone(), c, cl], 1);
        assert_eq!(runs.iter().map(|r| r.len()).sum::<usize>(), 60);
    }

    #[test]
    fn a_channel_broadcast_splits_rows() {
        // b of shape [1, C, 1, 1] on NCHW a: rows of H * W = 35 elements, all scalar.
        let shape = [2, 19, 5, 7];
        let s = MemoryFormat::Contiguous.strides(&shape);
        let b = broadcast_strides(&[1, 19, 1, 1], MemoryFormat::Contiguous, &shape);
        assert_eq!(b, vec![0, 1, 0, 0]);
        let runs = scalar_loop_runs(&shape, &[s.clone(), s, b], 1);
        assert_eq!(runs.len(), 38);
        assert_eq!(runs[1], 35..70);
    }
}
