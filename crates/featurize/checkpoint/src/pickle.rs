//! A minimal, non-executing pickle virtual machine.
//!
//! Objects live in an arena and the stack and memo hold indices into it, so
//! a container fetched from the memo and mutated (SETITEMS after BINGET) is
//! the same object, as in Python. Callables are never run: REDUCE only knows
//! the whitelisted globals and builds plain descriptions of them.

use std::collections::HashMap;

use crate::{DType, Error};

/// Index of an object in [`Pickle::objs`].
pub(crate) type Id = usize;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensor,
    Storage(DType),
}

/// A storage as named by a persistent id; its bytes follow the pickles.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StorageRef {
    pub key: String,
    pub dtype: DType,
    /// Elements in the root storage written under `key`.
    pub numel: usize,
    /// `(offset, len)` in elements when the storage is a view of the root.
    pub view: Option<(usize, usize)>,
}

/// The arguments of a `_rebuild_tensor[_v2]` call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorSpec {
    pub storage: StorageRef,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Obj {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    /// Plain dicts and OrderedDicts alike; pairs in insertion order.
    Dict(Vec<(Id, Id)>),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorSpec),
}

/// Bounds-checked reading over the whole file; offsets are absolute.
pub(crate) struct Cursor<'a> {
    pub data: &'a [u8],
    pub pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data, pos: 0 }
    }

    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or(Error::Truncated { offset: self.pos, what })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Error> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>("a pickle argument")?[0])
    }

    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array("a pickle argument")?))
    }

    fn line(&mut self) -> Result<&'a [u8], Error> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let n = rest.iter().position(|&b| b == b'\n');
        let n = n.ok_or(Error::Truncated {
            offset: self.data.len(),
            what: "a GLOBAL name",
        })?;
        let line = self.take(n + 1, "a GLOBAL name")?;
        Ok(&line[..n])
    }
}

/// The result of one pickle: its objects and the root handed to STOP.
#[derive(Debug)]
pub(crate) struct Pickle {
    pub objs: Vec<Obj>,
    pub root: Id,
}

impl Pickle {
    pub fn get(&self, id: Id) -> &Obj {
        // Ids only come from `Vm::alloc`, so they are always in range.
        &self.objs[id]
    }
}

/// Reads one pickle starting at the cursor, leaving it just after STOP.
pub(crate) fn load(cur: &mut Cursor<'_>) -> Result<Pickle, Error> {
    let mut vm = Vm {
        objs: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        at: cur.pos,
    };
    loop {
        vm.at = cur.pos;
        let op = cur.take(1, "a pickle opcode")?[0];
        if op == b'.' {
            let root = vm.pop()?;
            return Ok(Pickle { objs: vm.objs, root });
        }
        vm.step(op, cur)?;
    }
}

struct Vm {
    objs: Vec<Obj>,
    stack: Vec<Id>,
    /// Stack lengths at each MARK; nothing may pop below the last one.
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
    /// Offset of the opcode being run, for errors.
    at: usize,
}

impl Vm {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Pickle {
            offset: self.at,
            msg: msg.into(),
        }
    }

    fn push(&mut self, o: Obj) {
        self.objs.push(o);
        self.stack.push(self.objs.len() - 1);
    }

    fn pop(&mut self) -> Result<Id, Error> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>, Error> {
        let m = self.marks.pop().ok_or_else(|| self.err("no MARK"))?;
        // `pop` never goes below a mark, so `m <= len` always holds.
        Ok(self.stack.split_off(m.min(self.stack.len())))
    }

    fn top_mut(&mut self) -> Result<&mut Obj, Error> {
        let floor = self.marks.last().copied().unwrap_or(0);
        match self.stack.last() {
            Some(&id) if self.stack.len() > floor => Ok(&mut self.objs[id]),
            _ => Err(self.err("stack underflow")),
        }
    }

    fn step(&mut self, op: u8, cur: &mut Cursor<'_>) -> Result<(), Error> {
        match op {
            0x80 => self.proto(cur.u8()?),
            0x95 => cur.take(8, "a FRAME length").map(drop),
            b'c' => self.global(cur),
            0x93 => self.stack_global(),
            b'q' => self.put(u32::from(cur.u8()?)),
            b'r' => self.put(cur.u32()?),
            0x94 => self.put(self.memo.len() as u32),
            b'h' => self.get(u32::from(cur.u8()?)),
            b'j' => self.get(cur.u32()?),
            b'(' => {
                self.marks.push(self.stack.len());
                Ok(())
            }
            b'0' => self.pop().map(drop),
            b'1' => self.pop_mark().map(drop),
            b'2' => self.dup(),
            _ => self.step_value(op, cur),
        }
    }

    fn step_value(&mut self, op: u8, cur: &mut Cursor<'_>) -> Result<(), Error> {
        match op {
            b')' => self.push(Obj::Tuple(Vec::new())),
            b't' => {
                let items = self.pop_mark()?;
                self.push(Obj::Tuple(items));
            }
            0x85..=0x87 => self.tuple_n(usize::from(op - 0x84))?,
            b']' => self.push(Obj::List(Vec::new())),
            b'}' => self.push(Obj::Dict(Vec::new())),
            b'N' => self.push(Obj::None),
            0x88 => self.push(Obj::Bool(true)),
            0x89 => self.push(Obj::Bool(false)),
            b'J' => self.push(Obj::Int(i32::from_le_bytes(cur.array("BININT")?).into())),
            b'K' => self.push(Obj::Int(cur.u8()?.into())),
            b'M' => self.push(Obj::Int(u16::from_le_bytes(cur.array("BININT2")?).into())),
            0x8a => {
                let n = cur.u8()?;
                self.long(cur, n.into())?
            }
            0x8b => {
                let n = cur.u32()?;
                self.long(cur, n)?
            }
            b'G' => self.push(Obj::Float(f64::from_be_bytes(cur.array("BINFLOAT")?))),
            _ => return self.step_text(op, cur),
        }
        Ok(())
    }

    fn step_text(&mut self, op: u8, cur: &mut Cursor<'_>) -> Result<(), Error> {
        // Every op here reads a length, then that many bytes.
        let n = match op {
            b'X' | b'B' => cur.u32()? as usize,
            0x8c | b'U' | b'C' => usize::from(cur.u8()?),
            b'T' => {
                let n = i32::from_le_bytes(cur.array("BINSTRING")?);
                usize::try_from(n).map_err(|_| self.err("negative string length"))?
            }
            _ => return self.step_mutate(op),
        };
        let b = cur.take(n, "a string")?;
        let obj = match op {
            b'X' | 0x8c => Obj::Str(self.utf8(b)?),
            b'B' | b'C' => Obj::Bytes(b.to_vec()),
            // BINSTRING (Python 2 `str`): text when it is UTF-8, bytes otherwise.
            _ => std::str::from_utf8(b).map_or_else(|_| Obj::Bytes(b.to_vec()), |s| Obj::Str(s.into())),
        };
        self.push(obj);
        Ok(())
    }

    fn step_mutate(&mut self, op: u8) -> Result<(), Error> {
        match op {
            b'a' => {
                let v = self.pop()?;
                self.extend_list(vec![v])
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.extend_list(items)
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.extend_dict(vec![k, v])
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.extend_dict(items)
            }
            b'R' => self.reduce(),
            b'b' => self.build(),
            b'Q' => self.persistent_id(),
            _ => Err(Error::UnknownOpcode {
                opcode: op,
                offset: self.at,
            }),
        }
    }

    fn proto(&mut self, v: u8) -> Result<(), Error> {
        if v > 5 {
            return Err(self.err(format!("unsupported pickle protocol {v}")));
        }
        Ok(())
    }

    fn put(&mut self, key: u32) -> Result<(), Error> {
        let id = *self.stack.last().ok_or_else(|| self.err("memo put on empty stack"))?;
        self.memo.insert(key, id);
        Ok(())
    }

    fn get(&mut self, key: u32) -> Result<(), Error> {
        let id = *self
            .memo
            .get(&key)
            .ok_or_else(|| self.err(format!("memo key {key} is not set")))?;
        self.stack.push(id);
        Ok(())
    }

    fn dup(&mut self) -> Result<(), Error> {
        let id = self.pop()?;
        self.stack.extend([id, id]);
        Ok(())
    }

    fn tuple_n(&mut self, n: usize) -> Result<(), Error> {
        let mut items = (0..n).map(|_| self.pop()).collect::<Result<Vec<_>, _>>()?;
        items.reverse();
        self.push(Obj::Tuple(items));
        Ok(())
    }

    /// LONG1/LONG4: little-endian two's complement of `n` bytes.
    fn long(&mut self, cur: &mut Cursor<'_>, n: u32) -> Result<(), Error> {
        if n > 16 {
            return Err(self.err(format!("integer of {n} bytes is too large")));
        }
        let b = cur.take(n as usize, "a LONG integer")?;
        let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) {
            0xff
        } else {
            0
        };
        let mut a = [fill; 16];
        a[..b.len()].copy_from_slice(b);
        self.push(Obj::Int(i128::from_le_bytes(a)));
        Ok(())
    }

    fn utf8(&self, b: &[u8]) -> Result<String, Error> {
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| self.err("string is not valid UTF-8"))
    }

    fn extend_list(&mut self, items: Vec<Id>) -> Result<(), Error> {
        match self.top_mut()? {
            Obj::List(l) => {
                l.extend(items);
                Ok(())
            }
            _ => Err(self.err("APPEND on something that is not a list")),
        }
    }

    fn extend_dict(&mut self, items: Vec<Id>) -> Result<(), Error> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("SETITEMS with an odd number of items"));
        }
        let pairs = items.chunks_exact(2).map(|p| (p[0], p[1]));
        match self.top_mut()? {
            Obj::Dict(d) => {
                d.extend(pairs);
                Ok(())
            }
            _ => Err(self.err("SETITEM on something that is not a dict")),
        }
    }

    fn global(&mut self, cur: &mut Cursor<'_>) -> Result<(), Error> {
        let module = String::from_utf8_lossy(cur.line()?).into_owned();
        let name = String::from_utf8_lossy(cur.line()?).into_owned();
        self.push_global(module, name)
    }

    fn stack_global(&mut self) -> Result<(), Error> {
        let name = self.pop()?;
        let module = self.pop()?;
        match (&self.objs[module], &self.objs[name]) {
            (Obj::Str(m), Obj::Str(n)) => self.push_global(m.clone(), n.clone()),
            _ => Err(self.err("STACK_GLOBAL needs two strings")),
        }
    }

    fn push_global(&mut self, module: String, name: String) -> Result<(), Error> {
        let g = match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_tensor") => Some(Global::RebuildTensor),
            ("torch", n) => DType::from_storage_name(n).map(Global::Storage),
            _ => None,
        };
        let g = g.ok_or(Error::ForbiddenGlobal {
            module,
            name,
            offset: self.at,
        })?;
        self.push(Obj::Global(g));
        Ok(())
    }

    fn reduce(&mut self) -> Result<(), Error> {
        let args = self.pop()?;
        let func = self.pop()?;
        let args = match &self.objs[args] {
            Obj::Tuple(a) => a.clone(),
            _ => return Err(self.err("REDUCE arguments are not a tuple")),
        };
        let obj = match self.objs[func] {
            Obj::Global(Global::OrderedDict) if args.is_empty() => Obj::Dict(Vec::new()),
            Obj::Global(Global::RebuildTensorV2 | Global::RebuildTensor) => Obj::Tensor(self.tensor_spec(&args)?),
            _ => return Err(self.err("REDUCE of an unsupported callable or arguments")),
        };
        self.push(obj);
        Ok(())
    }

    /// BUILD only occurs on the OrderedDict (its `_metadata`), which we drop.
    fn build(&mut self) -> Result<(), Error> {
        self.pop()?;
        match self.top_mut()? {
            Obj::Dict(_) => Ok(()),
            _ => Err(self.err("BUILD on something that is not a dict")),
        }
    }

    /// `(storage, storage_offset, size, stride, ...)`; later args are ignored.
    fn tensor_spec(&self, args: &[Id]) -> Result<TensorSpec, Error> {
        let [storage, offset, shape, stride, ..] = args else {
            return Err(self.err("tensor rebuild needs at least 4 arguments"));
        };
        let storage = match &self.objs[*storage] {
            Obj::Storage(s) => s.clone(),
            _ => return Err(self.err("tensor storage is not a persistent storage")),
        };
        let shape = self.usize_tuple(*shape, "tensor size")?;
        let stride = self.usize_tuple(*stride, "tensor stride")?;
        if shape.len() != stride.len() {
            return Err(self.err("tensor size and stride have different lengths"));
        }
        let offset = self.usize_of(*offset, "storage offset")?;
        Ok(TensorSpec {
            storage,
            offset,
            shape,
            stride,
        })
    }

    /// `('storage', StorageClass, key, location, numel, view_metadata)`.
    fn persistent_id(&mut self) -> Result<(), Error> {
        let pid = self.pop()?;
        let items = match &self.objs[pid] {
            Obj::Tuple(t) => t.clone(),
            _ => return Err(self.err("persistent id is not a tuple")),
        };
        let [tag, class, key, _location, numel, view] = items[..] else {
            return Err(self.err("persistent id is not a 6-tuple"));
        };
        if self.objs[tag] != Obj::Str("storage".into()) {
            return Err(self.err("persistent id is not a storage"));
        }
        let Obj::Global(Global::Storage(dtype)) = self.objs[class] else {
            return Err(self.err("persistent id has no storage class"));
        };
        let key = self.str_of(key, "storage key")?;
        let numel = self.usize_of(numel, "storage size")?;
        let view = self.view_of(view)?;
        self.push(Obj::Storage(StorageRef {
            key,
            dtype,
            numel,
            view,
        }));
        Ok(())
    }

    /// Old torch: `None`, or `(view_key, offset, size)` into the root storage.
    fn view_of(&self, id: Id) -> Result<Option<(usize, usize)>, Error> {
        match &self.objs[id] {
            Obj::None => Ok(None),
            Obj::Tuple(t) if t.len() == 3 => Ok(Some((
                self.usize_of(t[1], "storage view offset")?,
                self.usize_of(t[2], "storage view size")?,
            ))),
            _ => Err(self.err("storage view metadata is malformed")),
        }
    }

    fn str_of(&self, id: Id, what: &str) -> Result<String, Error> {
        match &self.objs[id] {
            Obj::Str(s) => Ok(s.clone()),
            _ => Err(self.err(format!("{what} is not a string"))),
        }
    }

    fn usize_of(&self, id: Id, what: &str) -> Result<usize, Error> {
        match self.objs[id] {
            Obj::Int(v) => usize::try_from(v).map_err(|_| self.err(format!("{what} {v} is negative or too large"))),
            _ => Err(self.err(format!("{what} is not an integer"))),
        }
    }

    fn usize_tuple(&self, id: Id, what: &str) -> Result<Vec<usize>, Error> {
        match &self.objs[id] {
            Obj::Tuple(t) => t.iter().map(|&i| self.usize_of(i, what)).collect(),
            _ => Err(self.err(format!("{what} is not a tuple"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Result<(Obj, Pickle), Error> {
        let mut cur = Cursor::new(bytes);
        let p = load(&mut cur)?;
        Ok((p.get(p.root).clone(), p))
    }

    #[test]
    fn long1_is_twos_complement() {
        let magic = [
            0x80, 2, 0x8a, 10, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.',
        ];
        assert_eq!(run(&magic).unwrap().0, Obj::Int(0x1950a86a20f9469cfc6c));
        assert_eq!(run(&[0x8a, 1, 0xff, b'.']).unwrap().0, Obj::Int(-1));
        assert_eq!(run(&[0x8a, 2, 0xff, 0x00, b'.']).unwrap().0, Obj::Int(255));
        assert_eq!(run(&[0x8a, 0, b'.']).unwrap().0, Obj::Int(0));
        assert!(run(&[0x8a, 17, b'.']).is_err());
    }

    #[test]
    fn memo_shares_mutable_containers() {
        // d = {}; memo[300] = d; [d, d]; then d['k'] = 1 through the memo.
        let mut b = vec![b'}', b'r'];
        b.extend(300u32.to_le_bytes());
        b.extend([b']', b'j']);
        b.extend(300u32.to_le_bytes());
        b.extend([b'a', b'j']);
        b.extend(300u32.to_le_bytes());
        b.extend([b'X', 1, 0, 0, 0, b'k', b'K', 1, b's', b'0', b'.']);
        // The list's item is the same dict, so it sees the later SETITEM.
        let (root, p) = run(&b).unwrap();
        let Obj::List(items) = root else {
            panic!("root is {root:?}")
        };
        assert_eq!(items.len(), 1);
        let Obj::Dict(pairs) = p.get(items[0]) else {
            panic!("item is not a dict")
        };
        assert_eq!(pairs.len(), 1);
    }

    #[test]
    fn unknown_opcode_names_byte_and_offset() {
        assert_eq!(
            run(&[0x80, 2, b'N', 0xff]).unwrap_err(),
            Error::UnknownOpcode {
                opcode: 0xff,
                offset: 3
            }
        );
        let msg = run(&[b'N', 0x01]).unwrap_err().to_string();
        assert_eq!(msg, "unknown pickle opcode 0x01 at byte 1");
    }

    #[test]
    fn globals_outside_the_whitelist_are_rejected() {
        let err = run(b"cos\nsystem\n.").unwrap_err();
        assert_eq!(
            err,
            Error::ForbiddenGlobal {
                module: "os".into(),
                name: "system".into(),
                offset: 0
            }
        );
        assert!(run(b"ctorch\nEvilStorage\n.").is_err());
        assert!(run(b"ctorch\nFloatStorage\n.").is_ok());
    }

    #[test]
    fn pops_cannot_cross_a_mark() {
        // MARK then REDUCE would pop below the mark.
        let err = run(b"N)(R.").unwrap_err();
        assert!(matches!(err, Error::Pickle { offset: 3, .. }), "{err}");
        assert!(run(b"(.").is_err());
        assert!(run(b"t.").is_err());
        assert!(run(&[b'h', 7, b'.']).is_err());
        assert!(run(&[b'q', 0]).is_err());
    }

    #[test]
    fn reduce_only_builds_known_objects() {
        // OrderedDict(()) is fine; OrderedDict with arguments is not.
        assert_eq!(run(b"ccollections\nOrderedDict\n)R.").unwrap().0, Obj::Dict(vec![]));
        assert!(run(b"ccollections\nOrderedDict\nN\x85R.").is_err());
        assert!(run(b"ctorch\nFloatStorage\n)R.").is_err());
    }
}
