//! Bad inputs give clear errors and never panic.

use fruits_checkpoint::{read_legacy, write_legacy, write_legacy_strided, Error};
use fruits_checkpoint::{StateDict, Tensor, TensorData};

fn small() -> StateDict {
    let mut d = StateDict::new();
    d.insert(
        "w",
        Tensor {
            shape: vec![2, 3],
            data: TensorData::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        },
    );
    d.insert(
        "n",
        Tensor {
            shape: vec![],
            data: TensorData::I64(vec![9]),
        },
    );
    d
}

fn replace(file: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = file.windows(from.len()).position(|w| w == from).unwrap();
    [&file[..at], to, &file[at + from.len()..]].concat()
}

#[test]
fn zip_checkpoints_are_refused_clearly() {
    let err = read_legacy(b"PK\x03\x04\x14\x00\x00\x00").unwrap_err();
    assert_eq!(err, Error::ZipFormat);
    let msg = err.to_string();
    assert!(msg.contains("zip") && msg.contains("legacy"), "{msg}");
}

#[test]
fn every_truncation_is_an_error() {
    for file in [write_legacy(&small()), write_legacy_strided(&small())] {
        assert!(read_legacy(&file).is_ok());
        for n in 0..file.len() {
            assert!(read_legacy(&file[..n]).is_err(), "truncated to {n} bytes");
        }
    }
    let err = read_legacy(&[]).unwrap_err();
    assert!(matches!(err, Error::Truncated { offset: 0, .. }), "{err}");
}

#[test]
fn unknown_globals_are_rejected() {
    let file = write_legacy(&small());
    let evil = replace(&file, b"torch._utils\n_rebuild_tensor_v2\n", b"os\nsystem\n");
    let err = read_legacy(&evil).unwrap_err();
    assert!(
        matches!(&err, Error::ForbiddenGlobal { module, name, .. } if module == "os" && name == "system"),
        "{err}"
    );
    assert!(err.to_string().contains("'os.system'"), "{err}");
    let evil = replace(&file, b"torch\nFloatStorage\n", b"torch\nload\n");
    assert!(matches!(read_legacy(&evil), Err(Error::ForbiddenGlobal { .. })));
}

#[test]
fn bad_magic_and_protocol() {
    let file = write_legacy(&small());
    let mut bad = file.clone();
    bad[5] ^= 0x40;
    assert_eq!(read_legacy(&bad).unwrap_err(), Error::BadMagic);
    assert_eq!(read_legacy(b"hello world").unwrap_err(), Error::BadMagic);
    // BININT2 1001 (e9 03) -> 1000.
    let bad = replace(&file, &[b'M', 0xe9, 0x03, b'.'], &[b'M', 0xe8, 0x03, b'.']);
    assert_eq!(read_legacy(&bad).unwrap_err(), Error::UnsupportedProtocol(1000));
    // little_endian True -> False.
    let at = file.windows(13).position(|w| w == b"little_endian").unwrap() + 15;
    assert_eq!(file[at], 0x88);
    let mut bad = file.clone();
    bad[at] = 0x89;
    assert_eq!(read_legacy(&bad).unwrap_err(), Error::BigEndian);
}

#[test]
fn unknown_opcode_is_named_with_its_offset() {
    let file = write_legacy(&small());
    // Replace the OrderedDict's BUILD ('b') with an opcode we do not know.
    let at = file.windows(3).position(|w| w == b"}b.").unwrap() + 1;
    let mut bad = file.clone();
    bad[at] = 0xf0;
    let err = read_legacy(&bad).unwrap_err();
    assert_eq!(
        err,
        Error::UnknownOpcode {
            opcode: 0xf0,
            offset: at
        }
    );
    assert_eq!(err.to_string(), format!("unknown pickle opcode 0xf0 at byte {at}"));
}

/// Every byte replaced by a few values: each read must return, and whatever
/// it accepts must be self-consistent.
#[test]
fn single_byte_corruptions_never_panic() {
    let file = write_legacy_strided(&small());
    let mut accepted = 0;
    for i in 0..file.len() {
        for v in [0x00, 0xff, 0x7f, 0x80, file[i] ^ 1, file[i].wrapping_add(1)] {
            let mut bad = file.clone();
            bad[i] = v;
            if let Ok(d) = read_legacy(&bad) {
                accepted += 1;
                for (_, t) in d.iter() {
                    let len = match &t.data {
                        TensorData::F32(v) => v.len(),
                        TensorData::I64(v) => v.len(),
                        other => panic!("unexpected data {other:?}"),
                    };
                    assert_eq!(len, t.numel());
                }
            }
        }
    }
    // Flipping data bytes (or no-op replacements) still reads.
    assert!(accepted > 0);
}
