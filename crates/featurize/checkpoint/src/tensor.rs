//! In-memory tensors and the ordered state dict.

use std::collections::HashMap;

use crate::Error;

/// Element type of a tensor, one per legacy torch storage class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    F16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    /// Bytes per element in the file (and in `TensorData::Other`).
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The torch storage class name, e.g. `FloatStorage`.
    pub fn storage_name(self) -> &'static str {
        match self {
            DType::F32 => "FloatStorage",
            DType::F64 => "DoubleStorage",
            DType::F16 => "HalfStorage",
            DType::I64 => "LongStorage",
            DType::I32 => "IntStorage",
            DType::I16 => "ShortStorage",
            DType::I8 => "CharStorage",
            DType::U8 => "ByteStorage",
            DType::Bool => "BoolStorage",
        }
    }

    /// Inverse of [`DType::storage_name`].
    pub fn from_storage_name(name: &str) -> Option<DType> {
        const ALL: [DType; 9] = [
            DType::F32,
            DType::F64,
            DType::F16,
            DType::I64,
            DType::I32,
            DType::I16,
            DType::I8,
            DType::U8,
            DType::Bool,
        ];
        ALL.into_iter().find(|d| d.storage_name() == name)
    }
}

/// Contiguous row-major tensor data.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    /// Any other dtype, as contiguous little-endian bytes.
    Other {
        dtype: DType,
        bytes: Vec<u8>,
    },
}

impl TensorData {
    /// Builds typed data from contiguous little-endian bytes.
    pub(crate) fn from_le_bytes(dtype: DType, bytes: Vec<u8>) -> TensorData {
        match dtype {
            DType::F32 => TensorData::F32(decode(&bytes, f32::from_le_bytes)),
            DType::F64 => TensorData::F64(decode(&bytes, f64::from_le_bytes)),
            DType::I64 => TensorData::I64(decode(&bytes, i64::from_le_bytes)),
            _ => TensorData::Other { dtype, bytes },
        }
    }

    /// Contiguous little-endian bytes, as stored in the file.
    pub(crate) fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::Other { bytes, .. } => bytes.clone(),
        }
    }

    fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::F64(_) => DType::F64,
            TensorData::I64(_) => DType::I64,
            TensorData::Other { dtype, .. } => *dtype,
        }
    }

    /// Number of whole elements held.
    pub(crate) fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F64(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::Other { dtype, bytes } => bytes.len() / dtype.size(),
        }
    }
}

/// Decodes little-endian `N`-byte elements; a partial tail is ignored.
fn decode<T, const N: usize>(bytes: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect()
}

/// A contiguous (row-major) tensor. A scalar has an empty `shape`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// Product of the shape (1 for a scalar); saturates instead of overflowing.
    pub fn numel(&self) -> usize {
        self.shape.iter().fold(1usize, |a, &d| a.saturating_mul(d))
    }

    /// f32 view: F32 as is, F64/F16 converted; error for integer types.
    pub fn to_f32(&self) -> Result<Vec<f32>, Error> {
        let out = match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            TensorData::I64(_) => return Err(Error::NotFloat(DType::I64)),
            TensorData::Other { dtype, bytes } => other_to_f32(*dtype, bytes)?,
        };
        if out.len() != self.numel() {
            return Err(Error::DataLength {
                expected: self.numel(),
                found: out.len(),
            });
        }
        Ok(out)
    }
}

fn other_to_f32(dtype: DType, bytes: &[u8]) -> Result<Vec<f32>, Error> {
    match dtype {
        DType::F16 => Ok(decode(bytes, |b| f16_to_f32(u16::from_le_bytes(b)))),
        DType::F32 => Ok(decode(bytes, f32::from_le_bytes)),
        DType::F64 => Ok(decode(bytes, |b| f64::from_le_bytes(b) as f32)),
        other => Err(Error::NotFloat(other)),
    }
}

/// IEEE 754 half to single precision, exact for every input.
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        // Subnormal: value is mant * 2^-24, exactly representable in f32.
        (0, _) => {
            let v = mant as f32 / 16_777_216.0;
            return if sign != 0 { -v } else { v };
        }
        // Infinity or NaN (payload kept).
        (0x1f, _) => sign | 0x7f80_0000 | (mant << 13),
        // Rebias the exponent from 15 to 127.
        _ => sign | ((exp + 112) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// Named tensors in insertion (file) order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StateDict {
    entries: Vec<(String, Tensor)>,
    index: HashMap<String, usize>,
}

impl StateDict {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|&i| &self.entries[i].1)
    }

    /// Entries in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> + '_ {
        self.entries.iter().map(|(k, t)| (k.as_str(), t))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a tensor; like Python's OrderedDict, an existing name keeps its
    /// position and gets the new tensor.
    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) {
        let name = name.into();
        match self.index.get(&name) {
            Some(&i) => self.entries[i].1 = t,
            None => {
                self.index.insert(name.clone(), self.entries.len());
                self.entries.push((name, t));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_is_exact() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8001), -(2f32.powi(-24)));
        assert_eq!(f16_to_f32(0x03ff), 1023.0 * 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x0400), 2f32.powi(-14));
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert_eq!(f16_to_f32(0xfc00), f32::NEG_INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn to_f32_converts_floats_and_rejects_integers() {
        let half = Tensor {
            shape: vec![2],
            data: TensorData::Other {
                dtype: DType::F16,
                bytes: vec![0x00, 0x3c, 0x00, 0xc0],
            },
        };
        assert_eq!(half.to_f32().unwrap(), vec![1.0, -2.0]);
        let double = Tensor {
            shape: vec![],
            data: TensorData::F64(vec![0.5]),
        };
        assert_eq!(double.to_f32().unwrap(), vec![0.5]);
        let long = Tensor {
            shape: vec![1],
            data: TensorData::I64(vec![3]),
        };
        assert_eq!(long.to_f32(), Err(Error::NotFloat(DType::I64)));
        let bytes = Tensor {
            shape: vec![1],
            data: TensorData::Other {
                dtype: DType::U8,
                bytes: vec![1],
            },
        };
        assert_eq!(bytes.to_f32(), Err(Error::NotFloat(DType::U8)));
    }

    #[test]
    fn to_f32_rejects_mismatched_length() {
        let t = Tensor {
            shape: vec![3],
            data: TensorData::F32(vec![1.0]),
        };
        assert_eq!(t.to_f32(), Err(Error::DataLength { expected: 3, found: 1 }));
    }

    #[test]
    fn insert_keeps_order_and_replaces_in_place() {
        let t = |v: f32| Tensor {
            shape: vec![],
            data: TensorData::F32(vec![v]),
        };
        let mut d = StateDict::new();
        assert!(d.is_empty());
        d.insert("b", t(1.0));
        d.insert("a", t(2.0));
        d.insert("b", t(3.0));
        let names: Vec<&str> = d.iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["b", "a"]);
        assert_eq!(d.len(), 2);
        assert_eq!(d.get("b"), Some(&t(3.0)));
        assert_eq!(d.get("c"), None);
    }
}
