//! Everything that can go wrong while reading a checkpoint.

use crate::DType;

/// A checkpoint could not be read. Messages are plain words and name byte
/// offsets (from the start of the file) where that helps.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The file is a zip archive: the torch >= 1.6 format.
    #[error("this is a zip-based checkpoint (torch >= 1.6 format); only the legacy (torch < 1.6) format is supported")]
    ZipFormat,
    /// The file ended in the middle of something.
    #[error("unexpected end of file at byte {offset} while reading {what}")]
    Truncated { offset: usize, what: &'static str },
    /// The first pickle is not the legacy torch magic number.
    #[error("not a legacy torch checkpoint: bad magic number")]
    BadMagic,
    /// The torch serialization protocol is not 1001.
    #[error("unsupported torch protocol version {0} (expected 1001)")]
    UnsupportedProtocol(i128),
    /// The file was written on a big-endian machine.
    #[error("big-endian checkpoints are not supported")]
    BigEndian,
    /// A pickle opcode this reader does not implement.
    #[error("unknown pickle opcode 0x{opcode:02x} at byte {offset}")]
    UnknownOpcode { opcode: u8, offset: usize },
    /// A GLOBAL outside the whitelist: we never run arbitrary pickles.
    #[error("pickle global '{module}.{name}' at byte {offset} is not allowed")]
    ForbiddenGlobal {
        module: String,
        name: String,
        offset: usize,
    },
    /// The pickle stream is not well formed.
    #[error("malformed pickle at byte {offset}: {msg}")]
    Pickle { offset: usize, msg: String },
    /// The pickles are well formed but do not describe a state dict.
    #[error("invalid checkpoint: {0}")]
    Format(String),
    /// A storage's element count disagrees with what the pickle declared.
    #[error("storage '{key}' at byte {offset} holds {found} elements but the pickle declares {expected}")]
    StorageSize {
        key: String,
        offset: usize,
        expected: usize,
        found: u64,
    },
    /// A tensor uses a storage whose data is not in the file.
    #[error("storage '{key}' is used by a tensor but its data is not in the file")]
    MissingStorage { key: String },
    /// A tensor's offset/shape/strides reach outside its storage.
    #[error("tensor '{name}' reaches element {index} but its storage has only {len} elements")]
    OutOfBounds { name: String, index: usize, len: usize },
    /// Bytes follow the last storage.
    #[error("{count} unexpected bytes after the last storage at byte {offset}")]
    TrailingBytes { offset: usize, count: usize },
    /// Memory for a tensor could not be allocated.
    #[error("cannot allocate {bytes} bytes for tensor '{name}'")]
    Alloc { name: String, bytes: usize },
    /// `Tensor::to_f32` on an integer or bool tensor.
    #[error("a tensor of dtype {0:?} cannot be converted to f32")]
    NotFloat(DType),
    /// The tensor's data length does not match its shape.
    #[error("tensor data holds {found} elements but its shape needs {expected}")]
    DataLength { expected: usize, found: usize },
}
