//! `read_legacy`: pickles first, then raw storages, then gather tensors.

use std::collections::HashMap;

use crate::layout::{for_each_offset, is_contiguous, last_index};
use crate::pickle::{load, Cursor, Obj, TensorSpec};
use crate::{Error, StateDict, Tensor, TensorData};

/// The first pickle of every legacy torch file.
pub(crate) const MAGIC: i128 = 0x1950a86a20f9469cfc6c;
/// The only torch serialization protocol ever written in the legacy format.
pub(crate) const PROTOCOL: i128 = 1001;

/// Reads a legacy (pre-zip, torch < 1.6) `torch.save` file of a state dict.
pub fn read_legacy(bytes: &[u8]) -> Result<StateDict, Error> {
    if bytes.starts_with(b"PK\x03\x04") {
        return Err(Error::ZipFormat);
    }
    let mut cur = Cursor::new(bytes);
    check_magic(&mut cur)?;
    check_protocol(&mut cur)?;
    check_sys_info(&mut cur)?;
    let entries = read_entries(&mut cur)?;
    let keys = read_keys(&mut cur)?;
    let storages = read_storages(&mut cur, &entries, &keys)?;
    if cur.pos != bytes.len() {
        return Err(Error::TrailingBytes {
            offset: cur.pos,
            count: bytes.len() - cur.pos,
        });
    }
    let mut dict = StateDict::new();
    for (name, spec) in &entries {
        // Every used key is in `storages`: `read_storages` checked it.
        let raw = storages.get(spec.storage.key.as_str()).copied();
        dict.insert(name.clone(), build_tensor(name, spec, raw.unwrap_or_default())?);
    }
    Ok(dict)
}

/// Any failure to read the first pickle means "not this format", except
/// running out of bytes, which is reported as such.
fn check_magic(cur: &mut Cursor<'_>) -> Result<(), Error> {
    match load(cur) {
        Ok(p) if *p.get(p.root) == Obj::Int(MAGIC) => Ok(()),
        Err(e @ Error::Truncated { .. }) => Err(e),
        _ => Err(Error::BadMagic),
    }
}

fn check_protocol(cur: &mut Cursor<'_>) -> Result<(), Error> {
    let p = load(cur)?;
    match *p.get(p.root) {
        Obj::Int(PROTOCOL) => Ok(()),
        Obj::Int(v) => Err(Error::UnsupportedProtocol(v)),
        _ => Err(Error::Format("protocol version is not an integer".into())),
    }
}

/// Only endianness matters: the storage counts are always 8 bytes.
fn check_sys_info(cur: &mut Cursor<'_>) -> Result<(), Error> {
    let p = load(cur)?;
    let Obj::Dict(pairs) = p.get(p.root) else {
        return Err(Error::Format("system info is not a dict".into()));
    };
    let little = pairs
        .iter()
        .rev()
        .find_map(|&(k, v)| (*p.get(k) == Obj::Str("little_endian".into())).then(|| p.get(v)));
    match little {
        Some(Obj::Bool(false)) => Err(Error::BigEndian),
        _ => Ok(()),
    }
}

fn read_entries(cur: &mut Cursor<'_>) -> Result<Vec<(String, TensorSpec)>, Error> {
    let p = load(cur)?;
    let Obj::Dict(pairs) = p.get(p.root) else {
        return Err(Error::Format("the saved object is not a dict".into()));
    };
    pairs
        .iter()
        .map(|&(k, v)| match (p.get(k), p.get(v)) {
            (Obj::Str(name), Obj::Tensor(spec)) => Ok((name.clone(), spec.clone())),
            (Obj::Str(name), _) => Err(Error::Format(format!("entry '{name}' is not a tensor"))),
            _ => Err(Error::Format("a state dict key is not a string".into())),
        })
        .collect()
}

fn read_keys(cur: &mut Cursor<'_>) -> Result<Vec<String>, Error> {
    let p = load(cur)?;
    let Obj::List(items) = p.get(p.root) else {
        return Err(Error::Format("storage key list is not a list".into()));
    };
    items
        .iter()
        .map(|&i| match p.get(i) {
            Obj::Str(s) => Ok(s.clone()),
            _ => Err(Error::Format("a storage key is not a string".into())),
        })
        .collect()
}

/// Each listed storage: u64 LE element count, then its raw bytes.
fn read_storages<'a>(
    cur: &mut Cursor<'a>,
    entries: &[(String, TensorSpec)],
    keys: &[String],
) -> Result<HashMap<String, &'a [u8]>, Error> {
    let declared = declared_storages(entries)?;
    let mut found = HashMap::new();
    for key in keys {
        let Some(&(dtype, numel)) = declared.get(key.as_str()) else {
            return Err(Error::Format(format!(
                "storage '{key}' is listed but no tensor uses it"
            )));
        };
        if found.contains_key(key) {
            return Err(Error::Format(format!("storage '{key}' is listed twice")));
        }
        let offset = cur.pos;
        let count = u64::from_le_bytes(cur.array("a storage element count")?);
        if count != numel as u64 {
            let key = key.clone();
            return Err(Error::StorageSize {
                key,
                offset,
                expected: numel,
                found: count,
            });
        }
        // An impossible size cannot be in the file: report it as truncation.
        let n = numel.saturating_mul(dtype.size());
        found.insert(key.clone(), cur.take(n, "storage data")?);
    }
    if let Some((_, spec)) = entries.iter().find(|(_, s)| !found.contains_key(&s.storage.key)) {
        let key = spec.storage.key.clone();
        return Err(Error::MissingStorage { key });
    }
    Ok(found)
}

/// Storage key -> (dtype, element count), as the persistent ids declare them.
fn declared_storages(entries: &[(String, TensorSpec)]) -> Result<HashMap<&str, (crate::DType, usize)>, Error> {
    let mut declared = HashMap::new();
    for (_, spec) in entries {
        let s = &spec.storage;
        let prev = declared.insert(s.key.as_str(), (s.dtype, s.numel));
        if prev.is_some_and(|p| p != (s.dtype, s.numel)) {
            return Err(Error::Format(format!(
                "storage '{}' is declared with different types or sizes",
                s.key
            )));
        }
    }
    Ok(declared)
}

/// Gathers one tensor from its storage into contiguous row-major data.
fn build_tensor(name: &str, spec: &TensorSpec, raw: &[u8]) -> Result<Tensor, Error> {
    let s = &spec.storage;
    let (base, len) = s.view.unwrap_or((0, s.numel));
    if base.checked_add(len).is_none_or(|end| end > s.numel) {
        return Err(Error::Format(format!(
            "storage view of '{}' lies outside its storage",
            s.key
        )));
    }
    let numel = checked_numel(name, &spec.shape)?;
    // More elements than storage only happens for expanded (stride 0)
    // tensors; refusing them bounds the memory a small file can demand.
    if numel > len {
        return Err(Error::Format(format!(
            "tensor '{name}' has {numel} elements but its storage only {len}; expanded tensors are not supported"
        )));
    }
    // A size-1 dim never moves, so its stride must not enter any arithmetic.
    let stride: Vec<usize> = spec
        .shape
        .iter()
        .zip(&spec.stride)
        .map(|(&n, &st)| if n == 1 { 0 } else { st })
        .collect();
    let elem = s.dtype.size();
    let bytes = if numel == 0 {
        Vec::new()
    } else {
        let last = last_index(spec.offset, &spec.shape, &stride).unwrap_or(usize::MAX);
        if last >= len {
            let name = name.to_owned();
            return Err(Error::OutOfBounds { name, index: last, len });
        }
        // offset <= last < len and base + len <= numel: no overflow.
        gather(name, raw, elem, base + spec.offset, &spec.shape, &stride, numel)?
    };
    Ok(Tensor {
        shape: spec.shape.clone(),
        data: TensorData::from_le_bytes(s.dtype, bytes),
    })
}

fn checked_numel(name: &str, shape: &[usize]) -> Result<usize, Error> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::Format(format!("tensor '{name}' has too many elements")))
}

/// Copies the elements (already bounds-checked) in row-major order. Slicing
/// is still checked so a logic error can only yield an error, not a panic.
fn gather(
    name: &str,
    raw: &[u8],
    elem: usize,
    start: usize,
    shape: &[usize],
    stride: &[usize],
    numel: usize,
) -> Result<Vec<u8>, Error> {
    let nbytes = numel.saturating_mul(elem);
    let oob = || Error::OutOfBounds {
        name: name.to_owned(),
        index: start,
        len: raw.len() / elem,
    };
    if is_contiguous(shape, stride) {
        let src = start
            .checked_mul(elem)
            .and_then(|a| raw.get(a..))
            .and_then(|r| r.get(..nbytes))
            .ok_or_else(oob)?;
        let mut out = try_alloc(name, nbytes)?;
        out.extend_from_slice(src);
        return Ok(out);
    }
    let mut out = try_alloc(name, nbytes)?;
    let mut ok = true;
    for_each_offset(shape, stride, start, |i| {
        let src = i
            .checked_mul(elem)
            .and_then(|a| raw.get(a..))
            .and_then(|r| r.get(..elem));
        match src {
            Some(b) => out.extend_from_slice(b),
            None => ok = false,
        }
    });
    if ok {
        Ok(out)
    } else {
        Err(oob())
    }
}

/// Allocation that reports failure instead of aborting.
fn try_alloc(name: &str, bytes: usize) -> Result<Vec<u8>, Error> {
    let mut v = Vec::new();
    v.try_reserve_exact(bytes).map_err(|_| Error::Alloc {
        name: name.to_owned(),
        bytes,
    })?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::{dict_pickle, header, keys_pickle, storage_blob, write_raw};
    use crate::writer::{RawStorage, RawTensor};
    use crate::DType;

    fn storage(key: &str, values: &[f32]) -> RawStorage {
        RawStorage {
            key: key.into(),
            dtype: DType::F32,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn view(name: &str, offset: usize, shape: &[usize], stride: &[usize]) -> RawTensor {
        RawTensor {
            name: name.into(),
            storage: 0,
            offset,
            shape: shape.to_vec(),
            stride: stride.to_vec(),
        }
    }

    fn ten() -> Vec<RawStorage> {
        let v: Vec<f32> = (0..10).map(|i| i as f32).collect();
        vec![storage("s0", &v)]
    }

    fn f32s(d: &StateDict, name: &str) -> Vec<f32> {
        d.get(name).unwrap().to_f32().unwrap()
    }

    #[test]
    fn shared_storage_with_offsets_and_strides() {
        let tensors = [
            view("a", 2, &[3], &[1]),
            view("b", 1, &[2, 2], &[1, 3]),
            view("c", 9, &[], &[]),
            view("d", 4, &[3, 1], &[2, 77]),
        ];
        let d = read_legacy(&write_raw(&tensors, &ten())).unwrap();
        assert_eq!(f32s(&d, "a"), [2.0, 3.0, 4.0]);
        assert_eq!(f32s(&d, "b"), [1.0, 4.0, 2.0, 5.0]);
        assert_eq!(d.get("b").unwrap().shape, [2, 2]);
        assert_eq!(f32s(&d, "c"), [9.0]);
        assert!(d.get("c").unwrap().shape.is_empty());
        assert_eq!(f32s(&d, "d"), [4.0, 6.0, 8.0]);
    }

    #[test]
    fn indices_outside_the_storage_are_rejected() {
        let cases = [
            (view("t", 8, &[3], &[1]), 10),
            (view("t", 0, &[2, 5], &[5, 2]), 13),
            (view("t", 0, &[2], &[usize::MAX]), usize::MAX),
            (view("t", usize::MAX, &[1], &[1]), usize::MAX),
        ];
        for (t, index) in cases {
            let err = read_legacy(&write_raw(&[t], &ten())).unwrap_err();
            let name = "t".to_string();
            assert_eq!(err, Error::OutOfBounds { name, index, len: 10 });
        }
    }

    #[test]
    fn expanded_and_empty_tensors() {
        let err = read_legacy(&write_raw(&[view("e", 0, &[20], &[0])], &ten())).unwrap_err();
        assert!(err.to_string().contains("expanded"), "{err}");
        // An empty tensor reads no element, whatever its offset.
        let d = read_legacy(&write_raw(&[view("z", 99, &[0, 3], &[3, 1])], &ten())).unwrap();
        assert_eq!(d.get("z").unwrap().numel(), 0);
        assert_eq!(d.get("z").unwrap().data, TensorData::F32(vec![]));
    }

    #[test]
    fn storage_views_are_honoured() {
        // view_metadata ('v', 2, 4): the tensor sees root elements 2..6.
        let patch = |t: RawTensor| {
            let p = dict_pickle(&[t], &ten());
            let at = p.windows(3).position(|w| w == b"NtQ").unwrap();
            let meta = b"X\x01\x00\x00\x00vK\x02K\x04\x87tQ";
            let p = [&p[..at], &meta[..], &p[at + 3..]].concat();
            [header(), p, keys_pickle(&["s0"]), storage_blob(&ten()[0])].concat()
        };
        let d = read_legacy(&patch(view("t", 1, &[3], &[1]))).unwrap();
        assert_eq!(f32s(&d, "t"), [3.0, 4.0, 5.0]);
        let err = read_legacy(&patch(view("t", 1, &[4], &[1]))).unwrap_err();
        assert!(matches!(err, Error::OutOfBounds { index: 4, len: 4, .. }), "{err}");
    }

    /// Header + dict for one tensor on storage "s0", then custom keys/blobs.
    fn custom(keys: &[&str], blobs: &[Vec<u8>]) -> Result<StateDict, Error> {
        let dict = dict_pickle(&[view("t", 0, &[10], &[1])], &ten());
        let file = [header(), dict, keys_pickle(keys), blobs.concat()].concat();
        read_legacy(&file)
    }

    #[test]
    fn storage_list_must_match_the_tensors() {
        let blob = storage_blob(&ten()[0]);
        assert!(custom(&["s0"], std::slice::from_ref(&blob)).is_ok());
        let err = custom(&[], &[]).unwrap_err();
        assert_eq!(err, Error::MissingStorage { key: "s0".into() });
        let err = custom(&["s0", "s0"], &[blob.clone(), blob.clone()]).unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
        let err = custom(&["s0", "zz"], &[blob.clone(), blob.clone()]).unwrap_err();
        assert!(err.to_string().contains("no tensor uses it"), "{err}");
        let mut wrong = blob.clone();
        wrong[0] = 11;
        let err = custom(&["s0"], &[wrong]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::StorageSize {
                    expected: 10,
                    found: 11,
                    ..
                }
            ),
            "{err}"
        );
        let err = custom(&["s0"], &[blob, vec![0]]).unwrap_err();
        assert!(matches!(err, Error::TrailingBytes { count: 1, .. }), "{err}");
    }

    #[test]
    fn large_memo_indices_round_trip() {
        // 300 tensors over 150 shared storages: memo indices pass 255, so
        // LONG_BINPUT and LONG_BINGET (re-used storage keys) are exercised.
        let storages: Vec<RawStorage> = (0..150)
            .map(|i| storage(&format!("key{i}"), &[i as f32, -(i as f32)]))
            .collect();
        let tensors: Vec<RawTensor> = (0..300)
            .map(|i| RawTensor {
                storage: i % 150,
                offset: i / 150,
                ..view(&format!("t{i}"), 0, &[], &[])
            })
            .collect();
        let file = write_raw(&tensors, &storages);
        // Memo slot of "key130" is 6 + 2 * 130 = 266 (see `Pw::memoized`).
        let has = |op: u8| file.windows(5).any(|w| w == [op, 0x0a, 0x01, 0, 0]);
        assert!(has(b'r') && has(b'j'));
        let d = read_legacy(&file).unwrap();
        assert_eq!(d.len(), 300);
        assert_eq!(f32s(&d, "t7"), [7.0]);
        assert_eq!(f32s(&d, "t157"), [-7.0]);
        assert_eq!(d.iter().nth(299).unwrap().0, "t299");
    }
}
