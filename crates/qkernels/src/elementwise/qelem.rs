//! The 8-bit quantized storage types the kernels take.

use qcore::QDType;

mod private {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for i8 {}
}

/// An 8-bit quantized storage type: `u8` (quint8) or `i8` (qint8).
pub trait QElem: Copy + Default + Send + Sync + Ord + std::fmt::Debug + 'static + private::Sealed {
    /// The quantized dtype stored.
    const DTYPE: QDType;
    /// True for `i8`.
    const SIGNED: bool;
    /// The value, widened.
    fn to_i32(self) -> i32;
    /// The value `v`, which must lie within the type's range (it is truncated otherwise).
    fn from_i32(v: i32) -> Self;
    /// The byte pattern as a table index, 0..=255.
    fn index(self) -> usize;
    /// The value whose byte pattern is `i` (the inverse of [`QElem::index`]).
    fn from_index(i: usize) -> Self;
}

impl QElem for u8 {
    const DTYPE: QDType = QDType::QUInt8;
    const SIGNED: bool = false;
    #[inline(always)]
    fn to_i32(self) -> i32 {
        i32::from(self)
    }
    #[inline(always)]
    fn from_i32(v: i32) -> Self {
        v as u8
    }
    #[inline(always)]
    fn index(self) -> usize {
        usize::from(self)
    }
    #[inline(always)]
    fn from_index(i: usize) -> Self {
        i as u8
    }
}

impl QElem for i8 {
    const DTYPE: QDType = QDType::QInt8;
    const SIGNED: bool = true;
    #[inline(always)]
    fn to_i32(self) -> i32 {
        i32::from(self)
    }
    #[inline(always)]
    fn from_i32(v: i32) -> Self {
        v as i8
    }
    #[inline(always)]
    fn index(self) -> usize {
        usize::from(self as u8)
    }
    #[inline(always)]
    fn from_index(i: usize) -> Self {
        i as u8 as i8
    }
}

/// The bytes of a slice of quantized values.
pub(crate) fn bytes<T: QElem>(s: &[T]) -> &[u8] {
    // SAFETY: `T` is `u8` or `i8` (sealed trait): one byte, every bit pattern valid.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), s.len()) }
}

/// The bytes of a mutable slice of quantized values.
pub(crate) fn bytes_mut<T: QElem>(s: &mut [T]) -> &mut [u8] {
    // SAFETY: as in `bytes`; the borrow of `s` is moved into the result.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u8>(), s.len()) }
}
