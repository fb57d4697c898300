//! `torch.quint4x2` storage: two 4-bit values per byte, element `2i` of a row in the low nibble
//! and element `2i + 1` in the high nibble. Each row (the last dimension) starts on a byte, so a
//! row of `cols` values takes `cols.div_ceil(2)` bytes; the high nibble of an odd row's last byte
//! is padding (written 0 here).
//!
//! ```
//! use qcore::subbyte::{pack_quint4x2_rows, unpack_quint4x2_rows};
//! let packed = pack_quint4x2_rows(&[1, 2, 3, 4, 5, 6], 3)?;
//! assert_eq!(packed, [0x21, 0x03, 0x54, 0x06]);
//! assert_eq!(unpack_quint4x2_rows(&packed, 3)?, [1, 2, 3, 4, 5, 6]);
//! # Ok::<(), qcore::QError>(())
//! ```

use crate::{QError, QResult};

/// Bytes one packed row of `cols` quint4x2 values takes: `cols.div_ceil(2)`.
pub const fn quint4x2_row_bytes(cols: usize) -> usize {
    cols.div_ceil(2)
}

/// Checks that every value fits quint4x2 (`0..=15`).
pub fn check_quint4x2(context: &'static str, values: impl IntoIterator<Item = u8>) -> QResult<()> {
    match values.into_iter().find(|&v| v > 15) {
        Some(v) => Err(QError::SubByte {
            context,
            what: format!("value {v} does not fit torch.quint4x2 (0..=15)"),
            fix: "clamp the values to 0..=15 before packing",
        }),
        None => Ok(()),
    }
}

/// Packs rows of `cols` values (`values.len()` a multiple of `cols`) into quint4x2 bytes.
/// Errors: a value above 15, a length that is not whole rows.
pub fn pack_quint4x2_rows(values: &[u8], cols: usize) -> QResult<Vec<u8>> {
    const CONTEXT: &str = "pack_quint4x2_rows";
    check_quint4x2(CONTEXT, values.iter().copied())?;
    let rows = whole_rows(CONTEXT, values.len(), cols)?;
    let mut packed = Vec::with_capacity(rows * quint4x2_row_bytes(cols));
    for row in values.chunks(cols.max(1)).take(rows) {
        packed.extend(row.chunks(2).map(|pair| pair[0] | pair.get(1).map_or(0, |hi| hi << 4)));
    }
    Ok(packed)
}

/// Unpacks quint4x2 bytes holding rows of `cols` values (`cols.div_ceil(2)` bytes each), dropping
/// each row's padding nibble. Errors: a length that is not whole packed rows.
pub fn unpack_quint4x2_rows(packed: &[u8], cols: usize) -> QResult<Vec<u8>> {
    let row_bytes = quint4x2_row_bytes(cols);
    let rows = whole_rows("unpack_quint4x2_rows", packed.len(), row_bytes)?;
    let mut values = Vec::with_capacity(rows * cols);
    for row in packed.chunks(row_bytes.max(1)).take(rows) {
        values.extend((0..cols).map(|j| (row[j / 2] >> (4 * (j % 2))) & 0x0f));
    }
    Ok(values)
}

/// The number of rows of `row_len` in `len` elements, or an error if they are not whole rows.
fn whole_rows(context: &'static str, len: usize, row_len: usize) -> QResult<usize> {
    match (len, row_len) {
        (0, _) => Ok(0),
        (_, 0) => Err(QError::SubByte {
            context,
            what: format!("{len} elements cannot form rows of length 0"),
            fix: "give a row length of at least 1",
        }),
        _ if !len.is_multiple_of(row_len) => Err(QError::SubByte {
            context,
            what: format!("{len} elements are not whole rows of {row_len}"),
            fix: "give whole rows",
        }),
        _ => Ok(len / row_len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn pack_then_unpack_is_identity(rows in 0usize..5, cols in 1usize..40, seed in any::<u64>()) {
            let values: Vec<u8> = (0..rows * cols).map(|i| ((seed >> (i % 60)) as u8 ^ i as u8) & 15).collect();
            let packed = pack_quint4x2_rows(&values, cols).unwrap();
            prop_assert_eq!(packed.len(), rows * quint4x2_row_bytes(cols));
            prop_assert_eq!(unpack_quint4x2_rows(&packed, cols).unwrap(), values);
        }
    }

    #[test]
    fn odd_rows_pad_the_high_nibble_with_zero() {
        assert_eq!(pack_quint4x2_rows(&[15, 15, 15], 1).unwrap(), [15, 15, 15]);
        assert_eq!(pack_quint4x2_rows(&[1, 2, 3, 4], 2).unwrap(), [0x21, 0x43]);
    }

    #[test]
    fn bad_values_and_lengths_are_errors() {
        let err = pack_quint4x2_rows(&[16], 1).unwrap_err().to_string();
        assert!(err.contains("value 16") && err.contains("0..=15"), "{err}");
        assert!(pack_quint4x2_rows(&[1, 2, 3], 2).is_err());
        assert!(unpack_quint4x2_rows(&[1, 2, 3], 3).is_err());
        assert!(pack_quint4x2_rows(&[1], 0).is_err());
    }
}
