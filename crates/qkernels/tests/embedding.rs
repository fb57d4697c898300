//! Quantized embedding sums: every tier equal to the scalar code bit for bit, the scalar code
//! equal to the formula element by element, and bad arguments refused.

use proptest::prelude::*;
use qkernels::embedding::{QuantRows, RowBits, sum_bags};
use qkernels::{Isa, KernelError};
use qtest::{XorShift, random_bytes, random_f32s};

/// A random table, indices, bags and weights from `seed`.
struct Case {
    bits: RowBits,
    cols: usize,
    data: Vec<u8>,
    scales: Vec<f32>,
    biases: Vec<f32>,
    rows: Vec<usize>,
    bounds: Vec<(usize, usize)>,
    weights: Option<Vec<f32>>,
}

impl Case {
    fn new(seed: u64, four: bool, table_rows: usize, cols: usize, bags: usize, weighted: bool) -> Self {
        let bits = if four { RowBits::Four } else { RowBits::Eight };
        let mut rng = XorShift::new(seed);
        let data = random_bytes(table_rows * bits.row_bytes(cols), seed ^ 1);
        let scales = random_f32s(table_rows, seed ^ 2).iter().map(|s| s.abs() * 0.1).collect();
        let biases = random_f32s(table_rows, seed ^ 3);
        let mut rows = Vec::new();
        let mut bounds = Vec::new();
        for _ in 0..bags {
            let start = rows.len();
            for _ in 0..rng.next_u64() % 6 {
                rows.push((rng.next_u64() % table_rows as u64) as usize);
            }
            bounds.push((start, rows.len()));
        }
        let weights = weighted.then(|| random_f32s(rows.len(), seed ^ 4));
        Self { bits, cols, data, scales, biases, rows, bounds, weights }
    }

    fn table(&self) -> QuantRows<'_> {
        QuantRows::new(self.bits, self.cols, &self.data, &self.scales, &self.biases).unwrap()
    }

    fn run(&self, isa: Isa) -> Vec<f32> {
        let mut out = vec![f32::NAN; self.bounds.len() * self.cols];
        sum_bags(&self.table(), &self.rows, &self.bounds, self.weights.as_deref(), &mut out, isa).unwrap();
        out
    }

    /// The formula, one element at a time.
    fn reference(&self) -> Vec<f32> {
        let row_bytes = self.bits.row_bytes(self.cols);
        let mut out = vec![0f32; self.bounds.len() * self.cols];
        for (b, &(start, end)) in self.bounds.iter().enumerate() {
            for k in start..end {
                let r = self.rows[k];
                let w = self.weights.as_ref().map_or(1.0, |w| w[k]);
                for j in 0..self.cols {
                    let q = match self.bits {
                        RowBits::Eight => self.data[r * row_bytes + j],
                        RowBits::Four => (self.data[r * row_bytes + j / 2] >> (4 * (j % 2))) & 15,
                    };
                    let acc = &mut out[b * self.cols + j];
                    *acc = (self.scales[r] * w).mul_add(f32::from(q), *acc + self.biases[r] * w);
                }
            }
        }
        out
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_tier_equals_the_scalar_code_and_the_formula(
        seed in any::<u64>(),
        four in any::<bool>(),
        table_rows in 1usize..12,
        cols in 1usize..70,
        bags in 0usize..9,
        weighted in any::<bool>(),
    ) {
        let case = Case::new(seed, four, table_rows, cols, bags, weighted);
        let scalar = case.run(Isa::Scalar);
        prop_assert_eq!(bits(&scalar), bits(&case.reference()));
        for isa in Isa::tiers() {
            prop_assert_eq!(bits(&case.run(isa)), bits(&scalar), "{}", isa);
        }
    }
}

#[test]
fn bad_arguments_are_errors() {
    let (data, scales, biases) = ([1u8, 2, 3, 4], [1.0f32, 1.0], [0.0f32, 0.0]);
    assert!(matches!(
        QuantRows::new(RowBits::Eight, 3, &data, &scales, &biases),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(QuantRows::new(RowBits::Eight, 3, &data, &scales, &biases[..1]).is_err());
    let table = QuantRows::new(RowBits::Four, 3, &data, &scales, &biases).unwrap();
    let mut out = [0f32; 3];
    let err = sum_bags(&table, &[2], &[(0, 1)], None, &mut out, Isa::Scalar).unwrap_err().to_string();
    assert!(err.contains("row = 2"), "{err}");
    assert!(sum_bags(&table, &[1], &[(0, 2)], None, &mut out, Isa::Scalar).is_err());
    assert!(sum_bags(&table, &[1], &[(0, 1)], Some(&[1.0, 2.0]), &mut out, Isa::Scalar).is_err());
    assert!(sum_bags(&table, &[1], &[(0, 1)], None, &mut out[..2], Isa::Scalar).is_err());
    sum_bags(&table, &[1, 1], &[(0, 2)], None, &mut out, Isa::Scalar).unwrap();
    // Row 1 is bytes [3, 4]: values 3, 0, 4.
    assert_eq!(out, [6.0, 0.0, 8.0]);
}
