//! Reads a legacy (pre-zip, torch < 1.6) `torch.save` file of a state dict
//! into named, contiguous tensors, without Python or torch.
//!
//! # The legacy format
//!
//! The file is five pickles (protocol 2) back to back, then raw data:
//!
//! 1. the magic number `0x1950a86a20f9469cfc6c` (a Python long, `LONG1`);
//! 2. the protocol version `1001`;
//! 3. system info `{'protocol_version': 1001, 'little_endian': True,
//!    'type_sizes': {'short': 2, 'int': 4, 'long': 4}}`;
//! 4. the state dict: `collections.OrderedDict()` (GLOBAL + REDUCE of `()`,
//!    then SETITEMS, maybe BUILD with its `_metadata`) mapping each name to
//!    `torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
//!    requires_grad, backward_hooks)`. `storage` is a persistent id
//!    (BINPERSID) of `('storage', torch.FloatStorage, key, location, numel,
//!    view_metadata)`; several tensors may share one storage;
//! 5. the list of storage keys, in the order their data follows.
//!
//! Then, for each key in that order: a little-endian `u64` element count and
//! `count * element_size` bytes of little-endian elements. The element size
//! comes from the storage class (`FloatStorage` 4, `DoubleStorage` 8,
//! `HalfStorage` 2, `LongStorage` 8, `IntStorage` 4, `ShortStorage` 2,
//! `CharStorage`/`ByteStorage`/`BoolStorage` 1); the header's "long is 4
//! bytes" does not apply to the counts.
//!
//! Tensors are often non-contiguous (a conv weight of shape (32,3,3,3) with
//! stride (1,32,288,96)): the reader honours offset and strides, checks every
//! index against its storage, and gathers row-major data.
//!
//! # Safety against hostile files
//!
//! The pickle machine only knows the opcodes above and only accepts the
//! globals `collections.OrderedDict`, `torch._utils._rebuild_tensor[_v2]` and
//! `torch.*Storage`; nothing is ever executed. No input makes it panic. The
//! zip-based format of torch >= 1.6 is detected and refused.
//!
//! Must not depend on any other crate of the workspace, nor on torch or
//! Python: it parses bytes.

mod error;
mod layout;
mod pickle;
mod reader;
mod tensor;
mod writer;

pub use error::Error;
pub use reader::read_legacy;
pub use tensor::{DType, StateDict, Tensor, TensorData};
pub use writer::{write_legacy, write_legacy_strided};
