//! Sums of weight-only quantized embedding rows (FBGEMM's `EmbeddingSpMDM` for 8-bit and 4-bit
//! rows with a float scale and bias per row), the kernel of qgraph's quantized `Embedding` and
//! `EmbeddingBag`.
//!
//! Every looked-up row adds `acc = fma(scale * w, q, acc + bias * w)` to its bag's output, element
//! by element, in the order of the indices (`w` the per-sample weight, 1 without). Each element is
//! an independent chain of correctly rounded operations, so every tier gives the scalar result bit
//! for bit; the vector tiers are the same body compiled with AVX2 + FMA or AVX-512.
//!
//! ```
//! use qkernels::Isa;
//! use qkernels::embedding::{QuantRows, RowBits, sum_bags};
//! // Two rows of 3 quint8 values; row r is `scale * q + bias`.
//! let rows = QuantRows::new(RowBits::Eight, 3, &[1, 2, 3, 10, 20, 30], &[0.5, 0.25], &[-1.0, 0.0])?;
//! let mut out = [0.0f32; 3];
//! sum_bags(&rows, &[0, 1], &[(0, 2)], None, &mut out, Isa::Scalar)?;
//! assert_eq!(out, [-0.5 + 2.5, 0.0 + 5.0, 0.5 + 7.5]);
//! # Ok::<(), qkernels::KernelError>(())
//! ```

use crate::Isa;
use crate::dispatch::run_tiered;
use crate::error::KernelResult;
use crate::util::{SendPtr, Tiered, check_len, invalid, par_rows};

/// How many bits a stored value takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowBits {
    /// quint8: one byte per value.
    Eight,
    /// quint4x2: two values per byte, element `2i` in the low nibble; each row padded to whole
    /// bytes.
    Four,
}

impl RowBits {
    /// Bytes one row of `cols` values takes.
    pub const fn row_bytes(self, cols: usize) -> usize {
        match self {
            RowBits::Eight => cols,
            RowBits::Four => cols.div_ceil(2),
        }
    }
}

/// A quantized table: rows of `cols` values, with the scale and bias the kernel uses per row.
#[derive(Debug, Clone, Copy)]
pub struct QuantRows<'a> {
    bits: RowBits,
    cols: usize,
    data: &'a [u8],
    scales: &'a [f32],
    biases: &'a [f32],
}

impl<'a> QuantRows<'a> {
    /// Checks that `data` holds one row of `bits.row_bytes(cols)` bytes per scale, and one bias
    /// per scale.
    pub fn new(
        bits: RowBits,
        cols: usize,
        data: &'a [u8],
        scales: &'a [f32],
        biases: &'a [f32],
    ) -> KernelResult<Self> {
        const OP: &str = "embedding rows";
        check_len(OP, "biases", biases.len(), scales.len())?;
        let bytes = scales.len().checked_mul(bits.row_bytes(cols));
        check_len(
            OP,
            "data bytes",
            data.len(),
            bytes.ok_or_else(|| invalid(OP, "rows", scales.len(), "too many"))?,
        )?;
        Ok(Self { bits, cols, data, scales, biases })
    }

    /// Rows in the table.
    pub fn rows(&self) -> usize {
        self.scales.len()
    }
}

/// Sums bags of rows into `out` (`bounds.len()` rows of `cols`, overwritten): bag `b` adds rows
/// `rows[bounds[b].0..bounds[b].1]`, each weighted by `weights[k]` if given.
///
/// Errors: a row index beyond the table, a bag outside `rows`, `weights` not one per index, `out`
/// of the wrong length, a tier this CPU lacks.
pub fn sum_bags(
    table: &QuantRows<'_>,
    rows: &[usize],
    bounds: &[(usize, usize)],
    weights: Option<&[f32]>,
    out: &mut [f32],
    isa: Isa,
) -> KernelResult<()> {
    const OP: &str = "embedding sum_bags";
    isa.ensure_supported()?;
    check_len(OP, "output length", out.len(), bounds.len().saturating_mul(table.cols))?;
    if let Some(w) = weights {
        check_len(OP, "weights", w.len(), rows.len())?;
    }
    if let Some(&r) = rows.iter().find(|&&r| r >= table.rows()) {
        return Err(invalid(OP, "row", r, "beyond the table"));
    }
    if let Some(b) = bounds.iter().find(|&&(s, e)| s > e || e > rows.len()) {
        return Err(invalid(OP, "bag", b, "bags must be ranges within the indices"));
    }
    out.fill(0.0);
    if table.cols == 0 {
        return Ok(());
    }
    let out = SendPtr(out.as_mut_ptr());
    // Bags are independent: any split over threads gives the same bits.
    let per_bag = rows.len().div_ceil(bounds.len().max(1)).max(1).saturating_mul(table.cols);
    par_rows(bounds.len(), per_bag, |a, b| {
        run_tiered(&Bags { table: *table, rows, bounds, weights, out, range: (a, b) }, isa);
    });
    Ok(())
}

struct Bags<'a> {
    table: QuantRows<'a>,
    rows: &'a [usize],
    bounds: &'a [(usize, usize)],
    weights: Option<&'a [f32]>,
    out: SendPtr<f32>,
    /// The bags this task sums.
    range: (usize, usize),
}

impl Tiered for Bags<'_> {
    #[inline(always)]
    fn run(&self) {
        let t = &self.table;
        let (cols, row_bytes) = (t.cols, t.bits.row_bytes(t.cols));
        for b in self.range.0..self.range.1 {
            let (start, end) = self.bounds[b];
            // SAFETY: bag `b` owns elements `b * cols..(b + 1) * cols` of `out`, whose length was
            // checked to be `bounds.len() * cols`; tasks sum disjoint ranges of bags.
            let acc = unsafe { self.out.slice(b * cols, (b + 1) * cols) };
            for k in start..end {
                let row = self.rows[k];
                let w = self.weights.map_or(1.0, |w| w[k]);
                let (scale, bias) = (t.scales[row] * w, t.biases[row] * w);
                let data = &t.data[row * row_bytes..(row + 1) * row_bytes];
                match t.bits {
                    RowBits::Eight => {
                        for (a, &q) in acc.iter_mut().zip(data) {
                            *a = scale.mul_add(f32::from(q), *a + bias);
                        }
                    }
                    RowBits::Four => {
                        let (pairs, tail) = acc.split_at_mut(cols - cols % 2);
                        for (pair, &byte) in pairs.chunks_exact_mut(2).zip(data) {
                            pair[0] = scale.mul_add(f32::from(byte & 0x0f), pair[0] + bias);
                            pair[1] = scale.mul_add(f32::from(byte >> 4), pair[1] + bias);
                        }
                        if let (Some(a), Some(&byte)) = (tail.first_mut(), data.last()) {
                            *a = scale.mul_add(f32::from(byte & 0x0f), *a + bias);
                        }
                    }
                }
            }
        }
    }
}
