//! Constant tensors: `TensorProto`s decoded into f32 or i64 arrays, with their sizes checked.

use std::path::Path;

use ndarray::{ArrayD, IxDyn};

use crate::error::OnnxError;
use crate::proto::{TensorData, TensorProto};

/// A constant: float data as f32, integer and boolean data as i64.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tensor {
    /// FLOAT, DOUBLE, FLOAT16.
    F32(ArrayD<f32>),
    /// INT8 ... INT64, UINT8 ... UINT64, BOOL.
    I64(ArrayD<i64>),
}

impl Tensor {
    pub(crate) fn shape(&self) -> &[usize] {
        match self {
            Tensor::F32(a) => a.shape(),
            Tensor::I64(a) => a.shape(),
        }
    }

    /// The values as f32 (integers converted).
    pub(crate) fn to_f32(&self) -> ArrayD<f32> {
        match self {
            Tensor::F32(a) => a.clone(),
            Tensor::I64(a) => a.mapv(|v| v as f32),
        }
    }

    /// The values as i64, if integer.
    pub(crate) fn as_i64(&self) -> Option<&ArrayD<i64>> {
        match self {
            Tensor::I64(a) => Some(a),
            Tensor::F32(_) => None,
        }
    }

    /// The values as f64 (for scalars).
    pub(crate) fn values_f64(&self) -> Vec<f64> {
        match self {
            Tensor::F32(a) => a.iter().map(|&v| f64::from(v)).collect(),
            Tensor::I64(a) => a.iter().map(|&v| v as f64).collect(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.shape().iter().product()
    }
}

/// The largest constant the importer decodes (elements).
const MAX_ELEMENTS: usize = 1 << 31;

fn malformed(name: &str, reason: impl Into<String>) -> OnnxError {
    OnnxError::Malformed {
        message: "TensorProto",
        offset: 0,
        reason: format!("tensor `{name}`: {}", reason.into()),
    }
}

/// Decodes `t`; external data is read relative to `dir` (`None`: the model came as bytes).
pub(crate) fn decode(t: &TensorProto, dir: Option<&Path>) -> Result<Tensor, OnnxError> {
    let mut shape = Vec::with_capacity(t.dims.len());
    let mut count = 1usize;
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| malformed(&t.name, format!("dimension {d} is negative")))?;
        count = count.checked_mul(d).filter(|&c| c <= MAX_ELEMENTS).ok_or_else(|| {
            malformed(&t.name, format!("dimensions {:?} hold more than 2^31 elements", t.dims))
        })?;
        shape.push(d);
    }
    let external;
    let raw: &[u8] = match &t.data {
        TensorData::Inline => &t.raw,
        TensorData::External { location, offset, length } => {
            external = read_external(&t.name, dir, location, *offset, *length)?;
            &external
        }
    };
    let width = match t.data_type {
        1 | 6 | 12 => 4,
        2 | 3 | 9 => 1,
        4 | 5 | 10 => 2,
        7 | 11 | 13 => 8,
        other => {
            return Err(OnnxError::Unsupported {
                what: format!("tensor `{}` of data type {other}", t.name),
                fix: "the importer reads float, double, float16, integer and bool tensors".into(),
            });
        }
    };
    let from_raw = !raw.is_empty() || matches!(t.data, TensorData::External { .. });
    if from_raw && raw.len() != count * width {
        return Err(malformed(
            &t.name,
            format!("{} bytes of data for {count} elements of {width} bytes (truncated?)", raw.len()),
        ));
    }
    let check = |n: usize| {
        if n == count { Ok(()) } else { Err(malformed(&t.name, format!("{n} values for {count} elements"))) }
    };
    let shaped_f32 = |v: Vec<f32>| ArrayD::from_shape_vec(IxDyn(&shape), v).expect("count checked");
    let shaped_i64 = |v: Vec<i64>| ArrayD::from_shape_vec(IxDyn(&shape), v).expect("count checked");
    let le = |c: &[u8]| -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        b
    };
    Ok(match t.data_type {
        1 => Tensor::F32(shaped_f32(if from_raw {
            raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect()
        } else {
            check(t.floats.len())?;
            t.floats.clone()
        })),
        11 => Tensor::F32(shaped_f32(if from_raw {
            raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8")) as f32).collect()
        } else {
            check(t.doubles.len())?;
            t.doubles.iter().map(|&v| v as f32).collect()
        })),
        10 => Tensor::F32(shaped_f32(if from_raw {
            raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
        } else {
            check(t.int32s.len())?;
            t.int32s.iter().map(|&v| half::f16::from_bits(v as u16).to_f32()).collect()
        })),
        7 => Tensor::I64(shaped_i64(if from_raw {
            raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8"))).collect()
        } else {
            check(t.int64s.len())?;
            t.int64s.clone()
        })),
        13 => Tensor::I64(shaped_i64(if from_raw {
            raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8")) as i64).collect()
        } else {
            check(t.int64s.len())?;
            t.int64s.clone()
        })),
        // INT8, INT16, INT32: sign-extended from their width.
        3 | 5 | 6 => Tensor::I64(shaped_i64(if from_raw {
            let bits = 64 - 8 * width as u32;
            raw.chunks_exact(width).map(|c| (i64::from_le_bytes(le(c)) << bits) >> bits).collect()
        } else {
            check(t.int32s.len())?;
            t.int32s.clone()
        })),
        // UINT8, UINT16, UINT32, BOOL: zero-extended.
        _ => Tensor::I64(shaped_i64(if from_raw {
            raw.chunks_exact(width).map(|c| i64::from_le_bytes(le(c))).collect()
        } else {
            check(t.int32s.len())?;
            t.int32s.clone()
        })),
    })
}

/// Reads `length` bytes at `offset` of the external data file `location` beside the model.
fn read_external(
    name: &str,
    dir: Option<&Path>,
    location: &str,
    offset: u64,
    length: Option<u64>,
) -> Result<Vec<u8>, OnnxError> {
    let Some(dir) = dir else {
        return Err(OnnxError::Unsupported {
            what: format!("external data (`{location}`) of tensor `{name}` in a model given as bytes"),
            fix: "import the model with import_file, from the directory that holds its data file".into(),
        });
    };
    let rel = Path::new(location);
    if rel.is_absolute() || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(malformed(
            name,
            format!("external data location {location:?} leaves the model's directory"),
        ));
    }
    let path = dir.join(rel);
    let io = |source| OnnxError::Io { path: path.display().to_string(), source };
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(&path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let length = length.unwrap_or(size.saturating_sub(offset));
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(malformed(
            name,
            format!(
                "external data {location:?} has {size} bytes, less than offset {offset} + length {length}"
            ),
        ));
    }
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut buf = vec![0u8; usize::try_from(length).map_err(|_| malformed(name, "external data too large"))?];
    file.read_exact(&mut buf).map_err(io)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(data_type: i32, dims: Vec<i64>, raw: Vec<u8>) -> TensorProto {
        TensorProto {
            name: "t".into(),
            dims,
            data_type,
            raw,
            floats: Vec::new(),
            int32s: Vec::new(),
            int64s: Vec::new(),
            doubles: Vec::new(),
            data: TensorData::Inline,
        }
    }

    #[test]
    fn raw_data_of_each_width_decodes() {
        let i8s = decode(&tensor(3, vec![2], vec![0xff, 0x02]), None).unwrap();
        assert_eq!(i8s.as_i64().unwrap().as_slice().unwrap(), [-1, 2]);
        let u8s = decode(&tensor(2, vec![2], vec![0xff, 0x02]), None).unwrap();
        assert_eq!(u8s.as_i64().unwrap().as_slice().unwrap(), [255, 2]);
        let i32s = decode(&tensor(6, vec![1], (-5i32).to_le_bytes().to_vec()), None).unwrap();
        assert_eq!(i32s.as_i64().unwrap().as_slice().unwrap(), [-5]);
        let f16 =
            decode(&tensor(10, vec![1], half::f16::from_f32(1.5).to_le_bytes().to_vec()), None).unwrap();
        assert_eq!(f16, Tensor::F32(ArrayD::from_elem(IxDyn(&[1]), 1.5)));
        let f64s = decode(&tensor(11, vec![], 0.25f64.to_le_bytes().to_vec()), None).unwrap();
        assert_eq!(f64s.values_f64(), [0.25]);
    }

    #[test]
    fn sizes_are_checked() {
        let short = decode(&tensor(1, vec![3], vec![0; 8]), None).unwrap_err().to_string();
        assert!(short.contains("8 bytes of data for 3 elements"), "{short}");
        let huge = decode(&tensor(1, vec![1 << 20, 1 << 20], vec![]), None).unwrap_err().to_string();
        assert!(huge.contains("more than 2^31"), "{huge}");
        assert!(decode(&tensor(1, vec![-1], vec![]), None).is_err());
        assert!(decode(&tensor(8, vec![1], vec![0]), None).is_err(), "strings are not read");
        let mut external = tensor(1, vec![1], vec![]);
        external.data = TensorData::External { location: "../w.bin".into(), offset: 0, length: None };
        assert!(decode(&external, Some(Path::new("."))).unwrap_err().to_string().contains("leaves"));
    }
}
