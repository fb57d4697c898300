//! Test support shared by the workspace's crates (a dev-dependency only): the reader of the
//! golden fixtures that `tools/golden/*.py` write with PyTorch, bit-exact assertions with
//! readable failures, and thread pools for benchmarks.
//!
//! A fixture file is safetensors: tensors named `<case>/<field>`, and one metadata entry,
//! `fixture`: JSON `{"torch": <version>, "cpu": <model name>, "capability": <ATen CPU
//! capability>, "threads": <PyTorch's threads>, "cases": [...]}` with each case's `name` and scalar
//! parameters (`tools/golden/fixtures.py` writes it; older fixtures lack the machine fields).

use std::collections::HashMap;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
pub use safetensors::Dtype;
use safetensors::SafeTensors;
use serde_json::Value;

/// One fixture file: its cases and its tensors by name.
pub struct Fixture {
    /// The cases, in file order.
    pub cases: Vec<Value>,
    /// The CPU the fixture was made on, where it was recorded.
    pub cpu: Option<String>,
    /// PyTorch's thread count when the fixture was made, where it was recorded.
    pub threads: Option<usize>,
    tensors: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
}

/// Element types a fixture tensor can be read as.
pub trait Element: Copy {
    /// The safetensors dtype of this element type.
    const DTYPE: Dtype;
    /// Decodes one little-endian element.
    fn from_le(bytes: &[u8]) -> Self;
}

macro_rules! element {
    ($t:ty, $d:expr) => {
        impl Element for $t {
            const DTYPE: Dtype = $d;
            fn from_le(bytes: &[u8]) -> Self {
                <$t>::from_le_bytes(bytes.try_into().expect("element width"))
            }
        }
    };
}
element!(f32, Dtype::F32);
element!(f64, Dtype::F64);
element!(i64, Dtype::I64);
element!(i32, Dtype::I32);
element!(u8, Dtype::U8);
element!(i8, Dtype::I8);

impl Fixture {
    /// Reads `dir/<name>.safetensors`; panics with the path on any problem (tests only).
    pub fn load(dir: impl AsRef<Path>, name: &str) -> Self {
        let path = dir.as_ref().join(format!("{name}.safetensors"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (_, metadata) = SafeTensors::read_metadata(&bytes).expect("fixture header");
        let header = metadata.metadata().as_ref().and_then(|m| m.get("fixture")).expect("`fixture` metadata");
        let header: Value = serde_json::from_str(header).expect("fixture JSON");
        let cases = header["cases"].as_array().expect("`cases` list").clone();
        let st = SafeTensors::deserialize(&bytes).expect("fixture tensors");
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, (view.dtype(), view.shape().to_vec(), view.data().to_vec())))
            .collect();
        let cpu = header["cpu"].as_str().map(str::to_string);
        let threads = header["threads"].as_u64().map(|t| t as usize);
        Self { cases, cpu, threads, tensors }
    }

    /// The tensor `<case>/<field>`, which must have element type `T`.
    pub fn tensor<T: Element>(&self, case: &str, field: &str) -> ArrayD<T> {
        let key = format!("{case}/{field}");
        let (dtype, shape, data) = self.tensors.get(&key).unwrap_or_else(|| panic!("no tensor {key}"));
        assert_eq!(*dtype, T::DTYPE, "{key}");
        let values = data.chunks_exact(std::mem::size_of::<T>()).map(T::from_le).collect();
        ArrayD::from_shape_vec(IxDyn(shape), values).expect("shape")
    }

    /// Integer data of any 8- or 32-bit storage type, widened to i32.
    pub fn ints(&self, case: &str, field: &str) -> ArrayD<i32> {
        let key = format!("{case}/{field}");
        match self.tensors.get(&key).map(|t| t.0) {
            Some(Dtype::U8) => self.tensor::<u8>(case, field).mapv(i32::from),
            Some(Dtype::I8) => self.tensor::<i8>(case, field).mapv(i32::from),
            Some(Dtype::I32) => self.tensor::<i32>(case, field),
            other => panic!("{key}: not integer data ({other:?})"),
        }
    }

    /// The dtype, shape and little-endian bytes of `<case>/<field>`, whatever its element type.
    pub fn raw(&self, case: &str, field: &str) -> (Dtype, &[usize], &[u8]) {
        let key = format!("{case}/{field}");
        let (dtype, shape, data) = self.tensors.get(&key).unwrap_or_else(|| panic!("no tensor {key}"));
        (*dtype, shape, data)
    }

    /// True if the case has the field.
    pub fn has(&self, case: &str, field: &str) -> bool {
        self.tensors.contains_key(&format!("{case}/{field}"))
    }
}

/// The case's `name`.
pub fn name(case: &Value) -> &str {
    case["name"].as_str().expect("name")
}

/// A JSON number as f64.
pub fn f64_of(v: &Value) -> f64 {
    v.as_f64().expect("number")
}

/// A JSON integer as i64.
pub fn i64_of(v: &Value) -> i64 {
    v.as_i64().expect("integer")
}

/// Asserts two f32 arrays are equal bit for bit (NaN equal to NaN of any payload), naming the case
/// and the first differing index.
pub fn assert_bits_eq(case: &str, what: &str, got: &ArrayD<f32>, expected: &ArrayD<f32>) {
    assert_eq!(got.shape(), expected.shape(), "{case}: {what} shape");
    for (i, (g, e)) in got.iter().zip(expected.iter()).enumerate() {
        let same = g.to_bits() == e.to_bits() || (g.is_nan() && e.is_nan());
        assert!(
            same,
            "{case}: {what}[{i}] = {g:e} ({:#010x}), PyTorch {e:e} ({:#010x})",
            g.to_bits(),
            e.to_bits()
        );
    }
}

/// Asserts two integer arrays are equal, naming the case and the first differing index.
pub fn assert_ints_eq(case: &str, what: &str, got: &ArrayD<i32>, expected: &ArrayD<i32>) {
    assert_eq!(got.shape(), expected.shape(), "{case}: {what} shape");
    if let Some((i, (g, e))) = got.iter().zip(expected.iter()).enumerate().find(|(_, (g, e))| g != e) {
        panic!("{case}: {what}[{i}] = {g}, PyTorch {e}");
    }
}

/// A rayon pool of exactly `threads` threads, for benchmarks that time one thread count.
pub fn thread_pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("rayon thread pool")
}

/// A deterministic xorshift64 stream: the same numbers on every machine, with no dependency.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A stream from `seed` (any value; it is made odd, which xorshift needs).
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `len` pseudo-random bytes from `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = XorShift::new(seed);
    (0..len).map(|_| (rng.next_u64() >> 24) as u8).collect()
}

/// `len` pseudo-random f32 in [-1, 1) from `seed`.
pub fn random_f32s(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = XorShift::new(seed);
    (0..len).map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0).collect()
}
