//! write_legacy / write_legacy_strided -> read_legacy give back the same dict.

use fruits_checkpoint::{read_legacy, write_legacy, write_legacy_strided, DType, StateDict, Tensor, TensorData};

fn f32_tensor(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let data = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
    Tensor {
        shape: shape.to_vec(),
        data: TensorData::F32(data),
    }
}

fn other(dtype: DType, shape: &[usize], bytes: Vec<u8>) -> Tensor {
    Tensor {
        shape: shape.to_vec(),
        data: TensorData::Other { dtype, bytes },
    }
}

/// A bit of everything a state dict holds, with awkward shapes.
fn sample() -> StateDict {
    let mut d = StateDict::new();
    d.insert("scalar", f32_tensor(&[]));
    d.insert("conv.weight", f32_tensor(&[4, 3, 3, 2]));
    d.insert(
        "bn.num_batches_tracked",
        Tensor {
            shape: vec![],
            data: TensorData::I64(vec![123_456_789_012]),
        },
    );
    d.insert("fc.weight", f32_tensor(&[5, 7]));
    d.insert("fc.bias", f32_tensor(&[5]));
    d.insert("cube", f32_tensor(&[2, 3, 4]));
    d.insert("five_d", f32_tensor(&[2, 1, 3, 1, 2]));
    d.insert(
        "ids",
        Tensor {
            shape: vec![2, 3],
            data: TensorData::I64(vec![-1, 0, 1, i64::MIN, i64::MAX, 7]),
        },
    );
    d.insert(
        "double",
        Tensor {
            shape: vec![3, 2],
            data: TensorData::F64(vec![1e300, -2.5, 0.0, 3.25, -1e-300, 6.0]),
        },
    );
    d.insert(
        "half",
        other(DType::F16, &[2, 2], vec![0, 0x3c, 0, 0xc0, 0xff, 0x7b, 1, 0]),
    );
    d.insert("bytes", other(DType::U8, &[3], vec![0, 128, 255]));
    d.insert("mask", other(DType::Bool, &[2, 2], vec![1, 0, 0, 1]));
    d.insert(
        "int32",
        other(DType::I32, &[2], vec![1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
    );
    d.insert("empty", f32_tensor(&[0, 3]));
    d
}

#[test]
fn contiguous_round_trip_is_exact() {
    let d = sample();
    let back = read_legacy(&write_legacy(&d)).unwrap();
    assert_eq!(back, d);
    let names: Vec<&str> = back.iter().map(|(k, _)| k).collect();
    assert_eq!(names[..3], ["scalar", "conv.weight", "bn.num_batches_tracked"]);
}

#[test]
fn strided_round_trip_gives_the_same_logical_values() {
    let d = sample();
    let strided = write_legacy_strided(&d);
    let plain = write_legacy(&d);
    // Same size, different bytes: the storages really are permuted.
    assert_eq!(strided.len(), plain.len());
    assert_ne!(strided, plain);
    assert_eq!(read_legacy(&strided).unwrap(), d);
}

#[test]
fn scalars_and_dtypes_survive() {
    let back = read_legacy(&write_legacy_strided(&sample())).unwrap();
    let n = back.get("bn.num_batches_tracked").unwrap();
    assert_eq!(n.dtype(), DType::I64);
    assert!(n.shape.is_empty());
    assert_eq!(n.numel(), 1);
    assert_eq!(n.data, TensorData::I64(vec![123_456_789_012]));
    let half = back.get("half").unwrap();
    assert_eq!(half.dtype(), DType::F16);
    assert_eq!(half.to_f32().unwrap(), [1.0, -2.0, 65504.0, 2f32.powi(-24)]);
    let conv = back.get("conv.weight").unwrap();
    assert_eq!(conv.shape, [4, 3, 3, 2]);
    assert_eq!(conv.to_f32().unwrap(), f32_tensor(&[4, 3, 3, 2]).to_f32().unwrap());
    assert!(back.get("ids").unwrap().to_f32().is_err());
}

#[test]
fn empty_dict_round_trips() {
    let d = StateDict::default();
    let back = read_legacy(&write_legacy(&d)).unwrap();
    assert!(back.is_empty());
    assert_eq!(back.len(), 0);
}
