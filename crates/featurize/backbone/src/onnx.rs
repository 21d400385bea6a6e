//! The subset of the ONNX protobuf schema (`onnx.proto`, IR version 8) that our
//! exporter writes, as `prost` messages. Field tags follow the official schema so
//! that any ONNX reader (ONNX Runtime, Netron, `onnx.checker`) accepts the file.
//!
//! Single-member `oneof`s are written as optional fields: on the wire they are
//! the same bytes.

use prost::Message;

/// `TensorProto.DataType` values we use.
pub const FLOAT: i32 = 1;
pub const UINT8: i32 = 2;
pub const INT8: i32 = 3;
pub const INT32: i32 = 6;
pub const INT64: i32 = 7;

/// `AttributeProto.AttributeType` values we use.
pub mod attr_type {
    pub const INT: i32 = 2;
    pub const STRING: i32 = 3;
    pub const INTS: i32 = 7;
}

#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

impl NodeProto {
    /// One node with one output, named after its output and operator.
    pub fn new(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> Self {
        Self {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: format!("{output}/{op}"),
            op_type: op.into(),
            attribute,
        }
    }
}

impl AttributeProto {
    pub fn int(name: &str, value: i64) -> Self {
        Self {
            name: name.into(),
            i: value,
            r#type: attr_type::INT,
            ..Default::default()
        }
    }

    pub fn ints(name: &str, values: &[i64]) -> Self {
        Self {
            name: name.into(),
            ints: values.to_vec(),
            r#type: attr_type::INTS,
            ..Default::default()
        }
    }

    pub fn string(name: &str, value: &str) -> Self {
        Self {
            name: name.into(),
            s: value.as_bytes().to_vec(),
            r#type: attr_type::STRING,
            ..Default::default()
        }
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(string, tag = "8")]
    pub name: String,
    /// Little-endian raw element bytes: the compact form for large weights.
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
}

impl TensorProto {
    pub fn f32(name: &str, dims: &[usize], values: &[f32]) -> Self {
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::raw(name, dims, FLOAT, raw_data)
    }

    pub fn i8(name: &str, dims: &[usize], values: &[i8]) -> Self {
        Self::raw(name, dims, INT8, values.iter().map(|&v| v as u8).collect())
    }

    pub fn u8(name: &str, dims: &[usize], values: &[u8]) -> Self {
        Self::raw(name, dims, UINT8, values.to_vec())
    }

    pub fn i32(name: &str, dims: &[usize], values: &[i32]) -> Self {
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::raw(name, dims, INT32, raw_data)
    }

    fn raw(name: &str, dims: &[usize], data_type: i32, raw_data: Vec<u8>) -> Self {
        Self {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type,
            name: name.into(),
            raw_data,
        }
    }

    /// The values of a float tensor (`None` for another type or a short buffer).
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        let len: i64 = self.dims.iter().product();
        if self.data_type != FLOAT || self.raw_data.len() != 4 * len as usize {
            return None;
        }
        Some(
            self.raw_data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        )
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    /// The `tensor_type` member of the `value` oneof.
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// One dimension: a fixed size or a symbolic name (the `value` oneof).
#[derive(Clone, PartialEq, Message)]
pub struct Dimension {
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}

/// A dimension of a graph input or output.
#[derive(Debug, Clone)]
pub enum Dim {
    Fixed(usize),
    Named(&'static str),
}

impl ValueInfoProto {
    /// A float tensor of any shape (for exposing an inner value as an output).
    pub fn f32_any(name: &str) -> Self {
        let tensor_type = TensorTypeProto {
            elem_type: FLOAT,
            shape: None,
        };
        Self {
            name: name.into(),
            r#type: Some(TypeProto {
                tensor_type: Some(tensor_type),
            }),
        }
    }

    /// A float tensor with the given (partly symbolic) shape.
    pub fn f32_tensor(name: &str, dims: &[Dim]) -> Self {
        let dim = dims
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => Dimension {
                    dim_value: Some(*n as i64),
                    dim_param: None,
                },
                Dim::Named(s) => Dimension {
                    dim_value: None,
                    dim_param: Some((*s).to_string()),
                },
            })
            .collect();
        let tensor_type = TensorTypeProto {
            elem_type: FLOAT,
            shape: Some(TensorShapeProto { dim }),
        };
        Self {
            name: name.into(),
            r#type: Some(TypeProto {
                tensor_type: Some(tensor_type),
            }),
        }
    }
}
