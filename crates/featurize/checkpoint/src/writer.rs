//! Writing legacy checkpoints, so tests can build small files. The output
//! mirrors what torch < 1.6 wrote with pickle protocol 2, memo included.

use std::collections::HashMap;

use crate::layout::{contiguous_strides, for_each_offset};
use crate::reader::{MAGIC, PROTOCOL};
use crate::{DType, StateDict, Tensor};

/// One raw storage: the bytes written after the pickles.
#[derive(Debug, Clone)]
pub(crate) struct RawStorage {
    pub key: String,
    pub dtype: DType,
    pub bytes: Vec<u8>,
}

impl RawStorage {
    fn numel(&self) -> usize {
        self.bytes.len() / self.dtype.size()
    }
}

/// One tensor as a view into `storages[storage]`.
#[derive(Debug, Clone)]
pub(crate) struct RawTensor {
    pub name: String,
    pub storage: usize,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// Writes a legacy checkpoint with every tensor contiguous in its own storage.
///
/// A tensor whose data length does not match its shape is written as is; the
/// reader will then reject the file.
pub fn write_legacy(dict: &StateDict) -> Vec<u8> {
    write_with(dict, false)
}

/// Like [`write_legacy`] but stores every tensor of rank >= 2 with a permuted
/// (non-contiguous) stride layout, the data transposed to match, like the
/// real files: dim 0 varies fastest. A rank-4 `(O, I, H, W)` tensor is stored
/// `[H][W][I][O]`, e.g. shape (32,3,3,3) gets stride (1,32,288,96); other
/// ranks are stored `[d1]..[dn-1][d0]`, e.g. (1000,1280) gets (1,1000).
pub fn write_legacy_strided(dict: &StateDict) -> Vec<u8> {
    write_with(dict, true)
}

fn write_with(dict: &StateDict, strided: bool) -> Vec<u8> {
    let mut storages = Vec::new();
    let mut tensors = Vec::new();
    for (i, (name, t)) in dict.iter().enumerate() {
        let (stride, bytes) = layout(t, strided);
        // torch used the storage's address as key; any unique string works.
        let key = (100_000 + i).to_string();
        storages.push(RawStorage {
            key,
            dtype: t.dtype(),
            bytes,
        });
        tensors.push(RawTensor {
            name: name.to_owned(),
            storage: i,
            offset: 0,
            shape: t.shape.clone(),
            stride,
        });
    }
    write_raw(&tensors, &storages)
}

/// Strides and storage bytes for one tensor.
fn layout(t: &Tensor, strided: bool) -> (Vec<usize>, Vec<u8>) {
    let bytes = t.data.to_le_bytes();
    let elem = t.dtype().size();
    let consistent = t.data.len() == t.numel() && bytes.len() == t.numel() * elem;
    if !strided || t.shape.len() < 2 || !consistent {
        return (contiguous_strides(&t.shape), bytes);
    }
    let stride = permuted_strides(&t.shape);
    // Scatter logical element i to its strided place in the storage.
    let mut out = vec![0u8; bytes.len()];
    let mut src = bytes.chunks_exact(elem);
    for_each_offset(&t.shape, &stride, 0, |p| {
        let dst = out.get_mut(p * elem..).and_then(|o| o.get_mut(..elem));
        if let (Some(dst), Some(s)) = (dst, src.next()) {
            dst.copy_from_slice(s);
        }
    });
    (stride, out)
}

/// Strides for storing dims slowest-to-fastest in the order documented on
/// [`write_legacy_strided`].
fn permuted_strides(shape: &[usize]) -> Vec<usize> {
    let n = shape.len();
    let order: Vec<usize> = if n == 4 {
        vec![2, 3, 1, 0]
    } else {
        (1..n).chain([0]).collect()
    };
    let mut stride = vec![0; n];
    let mut acc = 1usize;
    for &d in order.iter().rev() {
        stride[d] = acc;
        acc = acc.saturating_mul(shape[d]);
    }
    stride
}

/// The whole file: header pickles, state dict, key list, raw storages.
pub(crate) fn write_raw(tensors: &[RawTensor], storages: &[RawStorage]) -> Vec<u8> {
    let mut out = header();
    out.extend(dict_pickle(tensors, storages));
    let keys: Vec<&str> = storages.iter().map(|s| s.key.as_str()).collect();
    out.extend(keys_pickle(&keys));
    for s in storages {
        out.extend(storage_blob(s));
    }
    out
}

/// Magic number, protocol version and system info pickles.
pub(crate) fn header() -> Vec<u8> {
    let mut magic = Pw::new();
    magic.int(MAGIC);
    let mut proto = Pw::new();
    proto.int(PROTOCOL);
    let mut info = Pw::new();
    info.op(b"}(");
    info.str("protocol_version");
    info.int(PROTOCOL);
    info.str("little_endian");
    info.op(&[0x88]);
    info.str("type_sizes");
    info.op(b"}(");
    for (name, size) in [("short", 2), ("int", 4), ("long", 4)] {
        info.str(name);
        info.int(size);
    }
    info.op(b"uu");
    [magic.finish(), proto.finish(), info.finish()].concat()
}

/// `OrderedDict` of name -> `_rebuild_tensor_v2(...)`, then BUILD.
pub(crate) fn dict_pickle(tensors: &[RawTensor], storages: &[RawStorage]) -> Vec<u8> {
    let mut p = Pw::new();
    p.global("collections", "OrderedDict");
    p.op(b")R");
    if !tensors.is_empty() {
        p.op(b"(");
        for t in tensors {
            p.str(&t.name);
            p.tensor(t, storages.get(t.storage));
        }
        p.op(b"u");
    }
    // OrderedDict's state (torch's `_metadata`), here empty.
    p.op(b"}b");
    p.finish()
}

pub(crate) fn keys_pickle(keys: &[&str]) -> Vec<u8> {
    let mut p = Pw::new();
    p.op(b"]");
    if !keys.is_empty() {
        p.op(b"(");
        for k in keys {
            p.str(k);
        }
        p.op(b"e");
    }
    p.finish()
}

/// u64 LE element count, then the raw little-endian elements.
pub(crate) fn storage_blob(s: &RawStorage) -> Vec<u8> {
    let n = s.numel();
    let mut out = (n as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&s.bytes[..n * s.dtype.size()]);
    out
}

/// A protocol 2 pickle writer that memoizes strings and globals like Python.
struct Pw {
    out: Vec<u8>,
    memo: HashMap<String, u32>,
}

impl Pw {
    fn new() -> Self {
        Pw {
            out: vec![0x80, 2],
            memo: HashMap::new(),
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.push(b'.');
        self.out
    }

    fn op(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// The smallest encoding, as Python's pickler chooses it.
    fn int(&mut self, v: i128) {
        if let Ok(b) = u8::try_from(v) {
            self.op(&[b'K', b]);
        } else if let Ok(w) = u16::try_from(v) {
            self.op(b"M");
            self.op(&w.to_le_bytes());
        } else if let Ok(d) = i32::try_from(v) {
            self.op(b"J");
            self.op(&d.to_le_bytes());
        } else {
            let b = minimal_twos_complement(v);
            self.op(&[0x8a, b.len() as u8]);
            self.op(&b);
        }
    }

    fn str(&mut self, s: &str) {
        self.memoized(format!("s:{s}"), |p| {
            p.op(b"X");
            p.op(&(s.len() as u32).to_le_bytes());
            p.op(s.as_bytes());
        });
    }

    fn global(&mut self, module: &str, name: &str) {
        self.memoized(format!("g:{module}.{name}"), |p| {
            p.op(format!("c{module}\n{name}\n").as_bytes());
        });
    }

    /// Writes the object once and BINPUTs it; later uses BINGET it.
    fn memoized(&mut self, key: String, write: impl FnOnce(&mut Self)) {
        if let Some(&i) = self.memo.get(&key) {
            match u8::try_from(i) {
                Ok(b) => self.op(&[b'h', b]),
                Err(_) => self.op(&[&[b'j'][..], &i.to_le_bytes()].concat()),
            }
            return;
        }
        write(self);
        let i = self.memo.len() as u32;
        match u8::try_from(i) {
            Ok(b) => self.op(&[b'q', b]),
            Err(_) => self.op(&[&[b'r'][..], &i.to_le_bytes()].concat()),
        }
        self.memo.insert(key, i);
    }

    fn ints_tuple(&mut self, v: &[usize]) {
        match v.len() {
            0 => self.op(b")"),
            1..=3 => {
                v.iter().for_each(|&x| self.int(x as i128));
                self.op(&[0x84 + v.len() as u8]);
            }
            _ => {
                self.op(b"(");
                v.iter().for_each(|&x| self.int(x as i128));
                self.op(b"t");
            }
        }
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
    fn tensor(&mut self, t: &RawTensor, s: Option<&RawStorage>) {
        let (key, dtype, numel) = s.map_or(("missing", DType::F32, 0), |s| (s.key.as_str(), s.dtype, s.numel()));
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.op(b"((");
        self.str("storage");
        self.global("torch", dtype.storage_name());
        self.str(key);
        self.str("cpu");
        self.int(numel as i128);
        self.op(b"NtQ");
        self.int(t.offset as i128);
        self.ints_tuple(&t.shape);
        self.ints_tuple(&t.stride);
        self.op(&[0x89]);
        self.global("collections", "OrderedDict");
        self.op(b")RtR");
    }
}

/// Little-endian two's complement with redundant sign bytes dropped.
fn minimal_twos_complement(v: i128) -> Vec<u8> {
    let b = v.to_le_bytes();
    let mut n = b.len();
    while n > 1 {
        let (last, prev_neg) = (b[n - 1], b[n - 2] & 0x80 != 0);
        if (last == 0 && !prev_neg) || (last == 0xff && prev_neg) {
            n -= 1;
        } else {
            break;
        }
    }
    b[..n].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_matches_real_torch_bytes() {
        // The first 21 bytes of a real efficientnet-lite0 checkpoint.
        let real = [
            0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e, 0x80, 0x02, 0x4d,
            0xe9, 0x03, 0x2e,
        ];
        assert_eq!(header()[..21], real);
    }

    #[test]
    fn permuted_strides_match_the_real_file() {
        assert_eq!(permuted_strides(&[32, 3, 3, 3]), [1, 32, 288, 96]);
        assert_eq!(permuted_strides(&[1000, 1280]), [1, 1000]);
        assert_eq!(permuted_strides(&[2, 3, 4]), [1, 8, 2]);
    }

    #[test]
    fn strided_writer_transposes_the_storage() {
        let mut d = StateDict::new();
        let data = crate::TensorData::F32((0..6).map(|i| i as f32).collect());
        d.insert(
            "w",
            Tensor {
                shape: vec![2, 3],
                data,
            },
        );
        let file = write_legacy_strided(&d);
        // Storage order is [d1][d0]: logical (i, j) lives at j * 2 + i.
        let tail: Vec<f32> = file[file.len() - 24..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(tail, [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        let count = &file[file.len() - 32..file.len() - 24];
        assert_eq!(count, 6u64.to_le_bytes());
        // The contiguous writer stores the same values in logical order.
        let plain = write_legacy(&d);
        assert_eq!(plain[plain.len() - 24..], d_bytes(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]));
    }

    fn d_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn minimal_encoding() {
        assert_eq!(minimal_twos_complement(-1), [0xff]);
        assert_eq!(minimal_twos_complement(255), [0xff, 0x00]);
        assert_eq!(minimal_twos_complement(1 << 40), [0, 0, 0, 0, 0, 1]);
    }
}
