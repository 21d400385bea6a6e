//! EfficientNet-Lite as an ONNX graph, built from a state dict in the
//! lukemelas `EfficientNet-PyTorch` naming.
//!
//! What makes the port numerically right (each point checked against real photos):
//! - TensorFlow "SAME" padding: the extra pixel goes bottom/right, which is ONNX
//!   `auto_pad=SAME_UPPER`; it also keeps height and width free, so one graph
//!   serves every input size.
//! - BatchNorm (eps 1e-3) is folded into the preceding convolution.
//! - ReLU6 after every convolution except the projection; no squeeze-excitation.
//! - Residual add when the block has stride 1 and equal in/out channels.
//! - Kernel sizes come from the weight shapes; strides from the architecture table
//!   (they are not stored in the checkpoint).

use fruits_checkpoint::StateDict;

use crate::onnx::{AttributeProto, Dim, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto};
use crate::onnx::{StringStringEntryProto, ValueInfoProto};
use crate::Error;

/// BatchNorm epsilon used when the network was trained (TensorFlow default 1e-3).
pub const BN_EPS: f32 = 1e-3;
/// ONNX opset we target: `Clip` takes min/max as inputs from 11 on.
pub const OPSET: i64 = 13;
/// Names of the graph's input and outputs.
pub const INPUT: &str = "input";
pub const FEATURES: &str = "features";
pub const LOGITS: &str = "logits";
/// The head's feature map before pooling, `(N, 1280, H/32, W/32)`: one
/// feature row per 32 px cell, for finding where in a photo the fruits are.
pub const CELLS: &str = "cells";

/// The parts of the network that are not in the weights: stage repeats and strides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Architecture {
    pub name: &'static str,
    pub stem_stride: usize,
    /// `(repeats, stride of the first block)` per stage.
    pub stages: Vec<(usize, usize)>,
}

impl Architecture {
    /// EfficientNet-Lite0: width and depth multipliers 1.0, B0's stage table.
    pub fn lite0() -> Self {
        let stages = vec![(1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1)];
        Self {
            name: "efficientnet-lite0",
            stem_stride: 2,
            stages,
        }
    }

    /// EfficientNet-Lite1 (depth 1.1): B0's middle stages rounded up; Lite keeps
    /// the first and last stage at one block.
    pub fn lite1() -> Self {
        Self {
            name: "efficientnet-lite1",
            ..Self::lite2()
        }
    }

    /// EfficientNet-Lite2 (depth 1.2, width 1.1): the same stage table as Lite1;
    /// the width shows only in the weights' shapes.
    pub fn lite2() -> Self {
        let stages = vec![(1, 1), (3, 2), (3, 2), (4, 2), (4, 1), (5, 2), (1, 1)];
        Self {
            name: "efficientnet-lite2",
            stem_stride: 2,
            stages,
        }
    }

    /// Stride of every block, in order.
    pub fn block_strides(&self) -> Vec<usize> {
        self.stages
            .iter()
            .flat_map(|&(repeats, stride)| (0..repeats).map(move |i| if i == 0 { stride } else { 1 }))
            .collect()
    }
}

/// Builds the ONNX model (outputs `features` `(N,1280)`, `logits`
/// `(N,classes)` and `cells` `(N,1280,H/32,W/32)`).
pub fn export_onnx(dict: &StateDict, arch: &Architecture, metadata: &[(&str, &str)]) -> Result<ModelProto, Error> {
    check_is_lite(dict)?;
    let strides = arch.block_strides();
    let found = count_blocks(dict);
    if found != strides.len() {
        return Err(Error::Architecture(format!(
            "checkpoint has {found} blocks, {} expects {}",
            arch.name,
            strides.len()
        )));
    }
    let mut g = GraphBuilder::new(dict);
    let stem = Conv::new("_conv_stem", "_bn0", arch.stem_stride, Act::Relu6);
    let (mut x, mut channels) = g.conv_bn(INPUT.into(), 3, stem)?;
    for (i, &stride) in strides.iter().enumerate() {
        (x, channels) = g.block(&format!("_blocks.{i}."), x, channels, stride)?;
    }
    let (head, _) = g.conv_bn(x, channels, Conv::new("_conv_head", "_bn1", 1, Act::Relu6))?;
    g.node("Identity", &[&head], CELLS, vec![]);
    let classes = g.classifier(head)?;
    Ok(g.finish(arch, classes, metadata))
}

fn check_is_lite(dict: &StateDict) -> Result<(), Error> {
    if let Some((name, _)) = dict.iter().find(|(n, _)| n.contains("_se_reduce")) {
        return Err(Error::Architecture(format!(
            "'{name}' is a squeeze-excitation weight: this is a full EfficientNet, not a Lite checkpoint"
        )));
    }
    Ok(())
}

fn count_blocks(dict: &StateDict) -> usize {
    dict.iter()
        .filter_map(|(name, _)| name.strip_prefix("_blocks.")?.split('.').next()?.parse::<usize>().ok())
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Act {
    Relu6,
    Linear,
}

/// One convolution of the network: its weights, its BatchNorm, how it runs.
struct Conv {
    conv: String,
    bn: String,
    stride: usize,
    act: Act,
    depthwise: bool,
}

impl Conv {
    fn new(conv: impl Into<String>, bn: impl Into<String>, stride: usize, act: Act) -> Self {
        Self {
            conv: conv.into(),
            bn: bn.into(),
            stride,
            act,
            depthwise: false,
        }
    }
}

struct GraphBuilder<'a> {
    dict: &'a StateDict,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl<'a> GraphBuilder<'a> {
    fn new(dict: &'a StateDict) -> Self {
        let initializers = vec![
            TensorProto::f32("relu6_min", &[], &[0.0]),
            TensorProto::f32("relu6_max", &[], &[6.0]),
        ];
        Self {
            dict,
            nodes: Vec::new(),
            initializers,
        }
    }

    fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), Error> {
        let t = self
            .dict
            .get(name)
            .ok_or_else(|| Error::Architecture(format!("checkpoint has no '{name}'")))?;
        Ok((t.shape.clone(), t.to_f32()?))
    }

    fn node(&mut self, op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) {
        self.nodes.push(NodeProto::new(op, inputs, output, attribute));
    }

    /// One MBConv block; returns the output value name and its channel count.
    fn block(&mut self, p: &str, x: String, channels: usize, stride: usize) -> Result<(String, usize), Error> {
        let mut h = x.clone();
        let mut hidden = channels;
        if self.dict.get(&format!("{p}_expand_conv.weight")).is_some() {
            let expand = Conv::new(format!("{p}_expand_conv"), format!("{p}_bn0"), 1, Act::Relu6);
            (h, hidden) = self.conv_bn(h, hidden, expand)?;
        }
        let depthwise = Conv {
            depthwise: true,
            ..Conv::new(format!("{p}_depthwise_conv"), format!("{p}_bn1"), stride, Act::Relu6)
        };
        (h, _) = self.conv_bn(h, hidden, depthwise)?;
        let project = Conv::new(format!("{p}_project_conv"), format!("{p}_bn2"), 1, Act::Linear);
        let (h, out) = self.conv_bn(h, hidden, project)?;
        if stride == 1 && out == channels {
            let sum = format!("{p}add");
            self.node("Add", &[&h, &x], &sum, vec![]);
            return Ok((sum, out));
        }
        Ok((h, out))
    }

    /// Convolution with BatchNorm folded in, then ReLU6 unless `act` is linear.
    fn conv_bn(&mut self, x: String, in_channels: usize, spec: Conv) -> Result<(String, usize), Error> {
        let Conv {
            conv,
            bn,
            stride,
            act,
            depthwise,
        } = spec;
        let (conv, bn) = (conv.as_str(), bn.as_str());
        let (shape, mut w) = self.tensor(&format!("{conv}.weight"))?;
        let [out, per_group, kh, kw] = shape[..] else {
            return Err(Error::Architecture(format!(
                "'{conv}.weight' has shape {shape:?}, expected 4 dimensions"
            )));
        };
        let group = if depthwise { out } else { 1 };
        if per_group * group != in_channels || kh != kw {
            return Err(Error::Architecture(format!(
                "'{conv}.weight' has shape {shape:?}, which does not fit {in_channels} input channels"
            )));
        }
        let bias = fold_batch_norm(self, bn, out, &mut w)?;
        let (wn, bn_name, y) = (format!("{conv}.w"), format!("{conv}.b"), format!("{conv}.out"));
        self.initializers.push(TensorProto::f32(&wn, &shape, &w));
        self.initializers.push(TensorProto::f32(&bn_name, &[out], &bias));
        let attrs = vec![
            AttributeProto::string("auto_pad", "SAME_UPPER"),
            AttributeProto::ints("kernel_shape", &[kh as i64, kw as i64]),
            AttributeProto::ints("strides", &[stride as i64, stride as i64]),
            AttributeProto::ints("dilations", &[1, 1]),
            AttributeProto::int("group", group as i64),
        ];
        self.node("Conv", &[&x, &wn, &bn_name], &y, attrs);
        if act == Act::Linear {
            return Ok((y, out));
        }
        let z = format!("{conv}.relu6");
        self.node("Clip", &[&y, "relu6_min", "relu6_max"], &z, vec![]);
        Ok((z, out))
    }

    /// Global average pool → `features`, then the fully connected layer → `logits`.
    fn classifier(&mut self, head: String) -> Result<usize, Error> {
        self.node("GlobalAveragePool", &[&head], "pooled", vec![]);
        self.node("Flatten", &["pooled"], FEATURES, vec![AttributeProto::int("axis", 1)]);
        let (ws, w) = self.tensor("_fc.weight")?;
        let (bs, b) = self.tensor("_fc.bias")?;
        if ws.len() != 2 || bs != [ws[0]] {
            return Err(Error::Architecture(format!("'_fc' has shapes {ws:?} and {bs:?}")));
        }
        self.initializers.push(TensorProto::f32("fc.w", &ws, &w));
        self.initializers.push(TensorProto::f32("fc.b", &bs, &b));
        self.node(
            "Gemm",
            &[FEATURES, "fc.w", "fc.b"],
            LOGITS,
            vec![AttributeProto::int("transB", 1)],
        );
        Ok(ws[0])
    }

    fn finish(self, arch: &Architecture, classes: usize, metadata: &[(&str, &str)]) -> ModelProto {
        let n = Dim::Named("batch");
        let input = ValueInfoProto::f32_tensor(
            INPUT,
            &[n.clone(), Dim::Fixed(3), Dim::Named("height"), Dim::Named("width")],
        );
        let features_dim = self.dict.get("_conv_head.weight").map_or(0, |t| t.shape[0]);
        let outputs = vec![
            ValueInfoProto::f32_tensor(FEATURES, &[n.clone(), Dim::Fixed(features_dim)]),
            ValueInfoProto::f32_tensor(LOGITS, &[n.clone(), Dim::Fixed(classes)]),
            ValueInfoProto::f32_tensor(
                CELLS,
                &[n, Dim::Fixed(features_dim), Dim::Named("rows"), Dim::Named("columns")],
            ),
        ];
        let graph = GraphProto {
            node: self.nodes,
            name: arch.name.into(),
            initializer: self.initializers,
            input: vec![input],
            output: outputs,
        };
        let metadata_props = metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect();
        ModelProto {
            ir_version: 8,
            producer_name: "fruits".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: format!("{} converted from a PyTorch checkpoint by fruits", arch.name),
            graph: Some(graph),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            metadata_props,
        }
    }
}

/// Scales `w` (`[out, ...]`) in place by `gamma / sqrt(var + eps)` and returns the folded bias.
fn fold_batch_norm(g: &GraphBuilder<'_>, bn: &str, out: usize, w: &mut [f32]) -> Result<Vec<f32>, Error> {
    let part = |s: &str| -> Result<Vec<f32>, Error> {
        let (shape, v) = g.tensor(&format!("{bn}.{s}"))?;
        if shape != [out] {
            return Err(Error::Architecture(format!(
                "'{bn}.{s}' has shape {shape:?}, expected [{out}]"
            )));
        }
        Ok(v)
    };
    let (gamma, beta, mean, var) = (
        part("weight")?,
        part("bias")?,
        part("running_mean")?,
        part("running_var")?,
    );
    let per_out = w.len() / out;
    let mut bias = Vec::with_capacity(out);
    for o in 0..out {
        let scale = gamma[o] / (var[o] + BN_EPS).sqrt();
        w[o * per_out..(o + 1) * per_out].iter_mut().for_each(|v| *v *= scale);
        bias.push(beta[o] - mean[o] * scale);
    }
    Ok(bias)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lite0_has_sixteen_blocks_with_four_downsamplings() {
        let strides = Architecture::lite0().block_strides();
        assert_eq!(strides.len(), 16);
        let down: Vec<usize> = strides
            .iter()
            .enumerate()
            .filter(|(_, &s)| s == 2)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(down, vec![1, 3, 5, 11]);
    }
}
