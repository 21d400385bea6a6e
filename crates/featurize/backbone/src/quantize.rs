//! Static post-training quantization of the exported graph: fp32 in, a
//! standard QDQ ONNX model out, written by our own code.
//!
//! - Weights: int8, symmetric, one scale per output channel (zero point 0).
//! - Biases: int32 at the scale `input scale × weight scale` of their channel,
//!   so ONNX Runtime fuses each `DequantizeLinear → Conv → QuantizeLinear`
//!   group into one integer convolution.
//! - Activations: uint8, asymmetric, one scale per tensor, from the range each
//!   one takes over a calibration set run through the fp32 model ([`calibrate`]).
//!   The graph input's range is exact: `(rgb - 127) / 128` quantizes back to
//!   the pixel bytes.
//! - What stays float: the pooling, the ImageNet classifier and the outputs
//!   (features, logits and the feature map are dequantized values).
//!
//! ReLU6 is kept in the graph; its output range starts at 0 and never passes
//! 6, so its quantizer makes it redundant and ONNX Runtime folds it away.
//! Ranges are rounded outwards to a grid 1/32 of an octave fine before they
//! become scales, so the last bits of a float sum (which differ between CPUs)
//! rarely change the file: the same calibration set gives the same sha256.

use std::collections::{BTreeMap, HashMap, HashSet};

use ort::environment::Environment;
use ort::value::Tensor;

use crate::onnx::{AttributeProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};
use crate::Error;

/// How the int8 model is made, as recorded in the manifest.
pub const METHOD: &str = "static post-training QDQ: int8 symmetric per-channel weights, int32 biases, \
                          uint8 asymmetric per-tensor activations from min-max ranges over the calibration set";

/// Range of one activation over the calibration set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub min: f32,
    pub max: f32,
}

impl Range {
    fn observe(&mut self, values: &[f32]) {
        for &v in values {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
    }
}

/// Observed ranges, by value name.
pub type Ranges = BTreeMap<String, Range>;

/// How the graph input is quantized: its exact scale and zero point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputQuant {
    pub scale: f32,
    pub zero_point: u8,
}

impl InputQuant {
    /// From the normalisation `(rgb - mean) / std`: uint8 values are the pixels.
    pub fn from_normalisation(mean: f32, std: f32) -> Result<Self, Error> {
        if !(0.0..=255.0).contains(&mean) || mean.fract() != 0.0 || std <= 0.0 {
            return Err(Error::Quantize(format!(
                "input normalisation (x - {mean}) / {std} does not map pixels onto uint8"
            )));
        }
        Ok(Self {
            scale: 1.0 / std,
            zero_point: mean as u8,
        })
    }
}

/// The values that get a quantize/dequantize pair: the graph input and every
/// output of a convolution (after its ReLU6, if any) or residual add.
pub fn sites(model: &ModelProto) -> Result<Vec<String>, Error> {
    let graph = graph(model)?;
    let clipped: HashSet<&str> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "Clip")
        .filter_map(|n| n.input.first().map(String::as_str))
        .collect();
    let mut sites: Vec<String> = graph.input.iter().map(|i| i.name.clone()).collect();
    for node in &graph.node {
        let out = &node.output[0];
        let site = match node.op_type.as_str() {
            "Conv" => !clipped.contains(out.as_str()),
            "Clip" | "Add" => true,
            _ => false,
        };
        if site {
            sites.push(out.clone());
        }
    }
    Ok(sites)
}

/// The fp32 model with every site but the input as an extra output, for calibration.
pub fn calibration_model(model: &ModelProto, sites: &[String]) -> Result<ModelProto, Error> {
    let mut model = model.clone();
    let g = model.graph.as_mut().ok_or_else(no_graph)?;
    let inputs: HashSet<String> = g.input.iter().map(|i| i.name.clone()).collect();
    for site in sites.iter().filter(|s| !inputs.contains(*s)) {
        g.output.push(ValueInfoProto::f32_any(site));
    }
    Ok(model)
}

/// Runs prepared batches (`values`, NCHW shape) through the fp32 model and
/// returns each site's range. The input's range is not measured: it is exact.
pub fn calibrate<I>(env: &Environment, model: &ModelProto, threads: usize, batches: I) -> Result<Ranges, Error>
where
    I: IntoIterator<Item = Result<(Vec<f32>, [usize; 4]), Error>>,
{
    let sites = sites(model)?;
    let input = graph(model)?.input[0].name.clone();
    let measured: Vec<&String> = sites.iter().filter(|s| **s != input).collect();
    let bytes = prost::Message::encode_to_vec(&calibration_model(model, &sites)?);
    let mut session = crate::runtime::session(env, threads, &bytes)?;
    let rt = |e: ort::Error| Error::Runtime(e.to_string());
    let mut ranges: Ranges = measured
        .iter()
        .map(|s| ((*s).clone(), Range { min: 0.0, max: 0.0 }))
        .collect();
    let mut seen = 0;
    for batch in batches {
        let (values, shape) = batch?;
        let tensor = Tensor::from_array((shape, values)).map_err(rt)?;
        let out = session.run(ort::inputs![input.as_str() => tensor]).map_err(rt)?;
        for site in &measured {
            let value = out
                .get(site.as_str())
                .ok_or_else(|| Error::Runtime(format!("calibration model has no output '{site}'")))?;
            let (_, values) = value.try_extract_tensor::<f32>().map_err(rt)?;
            ranges.get_mut(*site).expect("every site has a range").observe(values);
        }
        seen += shape[0];
    }
    if seen == 0 {
        return Err(Error::Quantize("the calibration set is empty".into()));
    }
    Ok(ranges)
}

/// Scale and zero point of one activation.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Quant {
    scale: f32,
    zero_point: u8,
}

impl Quant {
    /// uint8 over the range widened to hold 0 and rounded outwards, then
    /// kept within `clip` (the bounds of the Clip that made the value): a
    /// range within a ReLU6's `[0, 6]` is what folds the ReLU6 away.
    fn of(range: Range, clip: Option<(f32, f32)>) -> Self {
        let (mut lo, mut hi) = (snap(range.min.min(0.0)), snap(range.max.max(0.0)));
        if let Some((min, max)) = clip {
            (lo, hi) = (lo.max(min.min(0.0)), hi.min(max.max(0.0)));
        }
        let span = (hi - lo).max(1e-6);
        let scale = span / 255.0;
        let zero_point = (-lo / scale).round().clamp(0.0, 255.0) as u8;
        Self { scale, zero_point }
    }
}

/// Rounds away from 0 onto the grid 2^(k/32).
fn snap(x: f32) -> f32 {
    if x == 0.0 {
        return 0.0;
    }
    let k = (x.abs().log2() * 32.0).ceil();
    (2f32.powf(k / 32.0)).copysign(x)
}

/// The QDQ model: the fp32 graph with quantized weights and a quantize/
/// dequantize pair on every site, with the given ranges.
pub fn to_qdq(model: &ModelProto, ranges: &Ranges, input: InputQuant) -> Result<ModelProto, Error> {
    let g = graph(model)?;
    let input_name = g.input[0].name.clone();
    let clips = clip_bounds(g);
    let mut quants: HashMap<String, Quant> = HashMap::new();
    for site in sites(model)? {
        let q = if site == input_name {
            Quant {
                scale: input.scale,
                zero_point: input.zero_point,
            }
        } else {
            let range = ranges
                .get(&site)
                .ok_or_else(|| Error::Quantize(format!("no calibrated range for '{site}'")))?;
            Quant::of(*range, clips.get(&site).copied())
        };
        quants.insert(site, q);
    }
    let mut b = QdqBuilder::new(g.initializer.clone(), quants);
    b.pair(&input_name);
    for node in &g.node {
        b.node(node)?;
    }
    let mut out = model.clone();
    let graph = out.graph.as_mut().expect("checked above");
    graph.node = b.nodes;
    graph.initializer = b.kept.into_values().chain(b.added).collect();
    out.doc_string = format!("{} (int8 QDQ)", out.doc_string);
    Ok(out)
}

/// The constant bounds of each Clip, by its output.
fn clip_bounds(g: &crate::onnx::GraphProto) -> HashMap<String, (f32, f32)> {
    let constant = |name: &String| -> Option<f32> {
        let t = g.initializer.iter().find(|t| &t.name == name)?;
        t.to_f32()?.first().copied()
    };
    g.node
        .iter()
        .filter(|n| n.op_type == "Clip" && n.input.len() == 3)
        .filter_map(|n| Some((n.output[0].clone(), (constant(&n.input[1])?, constant(&n.input[2])?))))
        .collect()
}

struct QdqBuilder {
    /// Initializers not (yet) replaced by quantized ones, by name.
    kept: BTreeMap<String, TensorProto>,
    added: Vec<TensorProto>,
    quants: HashMap<String, Quant>,
    nodes: Vec<NodeProto>,
}

impl QdqBuilder {
    fn new(initializers: Vec<TensorProto>, quants: HashMap<String, Quant>) -> Self {
        Self {
            kept: initializers.into_iter().map(|t| (t.name.clone(), t)).collect(),
            added: Vec::new(),
            quants,
            nodes: Vec::new(),
        }
    }

    /// The node with its site inputs read dequantized, then the pair on its
    /// output if that is a site.
    fn node(&mut self, node: &NodeProto) -> Result<(), Error> {
        let mut node = node.clone();
        if node.op_type == "Conv" {
            self.quantize_conv_weights(&mut node)?;
        }
        for input in &mut node.input {
            if self.quants.contains_key(input.as_str()) {
                *input = dequantized(input);
            }
        }
        let out = node.output[0].clone();
        self.nodes.push(node);
        if self.quants.contains_key(&out) {
            self.pair(&out);
        }
        Ok(())
    }

    /// `QuantizeLinear → DequantizeLinear` on `value`; readers take `value.dq`.
    fn pair(&mut self, value: &str) {
        let q = self.quants[value];
        let (scale, zp) = (format!("{value}.scale"), format!("{value}.zero_point"));
        self.added.push(TensorProto::f32(&scale, &[], &[q.scale]));
        self.added.push(TensorProto::u8(&zp, &[], &[q.zero_point]));
        let quantized = format!("{value}.q");
        self.push("QuantizeLinear", &[value, &scale, &zp], &quantized, vec![]);
        self.push(
            "DequantizeLinear",
            &[&quantized, &scale, &zp],
            &dequantized(value),
            vec![],
        );
    }

    fn push(&mut self, op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) {
        self.nodes.push(NodeProto::new(op, inputs, output, attribute));
    }

    /// Replaces the convolution's float weight and bias by dequantized int8
    /// and int32 initializers.
    fn quantize_conv_weights(&mut self, node: &mut NodeProto) -> Result<(), Error> {
        let [x, w, bias]: [String; 3] = node
            .input
            .clone()
            .try_into()
            .map_err(|_| Error::Quantize(format!("'{}' is not a Conv with a bias", node.name)))?;
        let x_scale = self
            .quants
            .get(&x)
            .ok_or_else(|| Error::Quantize(format!("'{}' reads '{x}', which is not quantized", node.name)))?
            .scale;
        let (dims, weights) = self.take_f32(&w)?;
        let (_, biases) = self.take_f32(&bias)?;
        let out = dims[0];
        if out == 0 || biases.len() != out || weights.len() % out != 0 {
            return Err(Error::Quantize(format!("'{w}' and '{bias}' do not fit together")));
        }
        let (q, scales) = per_channel_int8(&weights, out);
        let q_bias: Vec<i32> = biases
            .iter()
            .zip(&scales)
            .map(|(b, s)| (f64::from(*b) / (f64::from(x_scale) * f64::from(*s))).round())
            .map(|v| v.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32)
            .collect();
        let bias_scales: Vec<f32> = scales.iter().map(|s| x_scale * s).collect();
        let axis = vec![AttributeProto::int("axis", 0)];
        let (wq, ws, wz) = (format!("{w}.int8"), format!("{w}.scale"), format!("{w}.zero_point"));
        self.added.push(TensorProto::i8(&wq, &dims, &q));
        self.added.push(TensorProto::f32(&ws, &[out], &scales));
        self.added.push(TensorProto::i8(&wz, &[out], &vec![0; out]));
        self.push("DequantizeLinear", &[&wq, &ws, &wz], &dequantized(&w), axis.clone());
        let (bq, bs) = (format!("{bias}.int32"), format!("{bias}.scale"));
        self.added.push(TensorProto::i32(&bq, &[out], &q_bias));
        self.added.push(TensorProto::f32(&bs, &[out], &bias_scales));
        self.push("DequantizeLinear", &[&bq, &bs], &dequantized(&bias), axis);
        node.input[1] = dequantized(&w);
        node.input[2] = dequantized(&bias);
        Ok(())
    }

    fn take_f32(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>), Error> {
        let t = self
            .kept
            .remove(name)
            .ok_or_else(|| Error::Quantize(format!("no initializer '{name}' (shared or already quantized?)")))?;
        let values = t
            .to_f32()
            .ok_or_else(|| Error::Quantize(format!("'{name}' is not a float tensor")))?;
        Ok((t.dims.iter().map(|&d| d as usize).collect(), values))
    }
}

fn dequantized(value: &str) -> String {
    format!("{value}.dq")
}

/// Symmetric int8 per output channel (`weights` is `[out, ...]`): the values
/// and each channel's scale (largest magnitude / 127; all-zero channels get
/// a small positive scale, as a scale must be).
pub fn per_channel_int8(weights: &[f32], out: usize) -> (Vec<i8>, Vec<f32>) {
    let per = weights.len() / out;
    let mut q = Vec::with_capacity(weights.len());
    let mut scales = Vec::with_capacity(out);
    for channel in weights.chunks_exact(per) {
        let max = channel.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1e-8 };
        q.extend(channel.iter().map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8));
        scales.push(scale);
    }
    (q, scales)
}

fn graph(model: &ModelProto) -> Result<&crate::onnx::GraphProto, Error> {
    let g = model.graph.as_ref().ok_or_else(no_graph)?;
    if g.input.len() != 1 {
        return Err(Error::Quantize(format!(
            "the graph has {} inputs, expected 1",
            g.input.len()
        )));
    }
    Ok(g)
}

fn no_graph() -> Error {
    Error::Quantize("the model has no graph".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalised_pixels_quantize_back_to_the_pixel_bytes() {
        let q = InputQuant::from_normalisation(127.0, 128.0).unwrap();
        for rgb in [0u8, 1, 126, 127, 128, 254, 255] {
            let x = (f32::from(rgb) - 127.0) / 128.0;
            let back = (x / q.scale).round() + f32::from(q.zero_point);
            assert_eq!(back, f32::from(rgb));
        }
        assert!(InputQuant::from_normalisation(123.68, 58.4).is_err());
    }

    #[test]
    fn a_relu6_range_keeps_zero_point_zero_and_stays_within_six() {
        let relu6 = Some((0.0, 6.0));
        let q = Quant::of(Range { min: 0.0, max: 6.0 }, relu6);
        assert_eq!(q.zero_point, 0);
        assert!((6.0 / q.scale).round() >= 255.0, "the clip is redundant: {q:?}");
        let q = Quant::of(Range { min: 0.0, max: 3.1 }, relu6);
        assert!(q.scale * 255.0 >= 3.1 && q.scale * 255.0 < 3.1 * 1.03, "{q:?}");
    }

    #[test]
    fn a_signed_range_gets_a_zero_point_that_represents_zero_exactly() {
        let q = Quant::of(Range { min: -2.0, max: 6.0 }, None);
        assert!(q.zero_point > 0 && q.zero_point < 255);
        let zero = (f32::from(q.zero_point) - f32::from(q.zero_point)) * q.scale;
        assert_eq!(zero, 0.0);
        let lo = -f32::from(q.zero_point) * q.scale;
        let hi = (255.0 - f32::from(q.zero_point)) * q.scale;
        assert!(lo <= -2.0 * 0.99 && hi >= 6.0 * 0.99, "{lo}..{hi}");
    }

    #[test]
    fn ranges_that_differ_in_their_last_bits_give_the_same_scale() {
        let a = Quant::of(
            Range {
                min: -1.234_567,
                max: 4.321_098,
            },
            None,
        );
        let b = Quant::of(
            Range {
                min: -1.234_568,
                max: 4.321_097,
            },
            None,
        );
        assert_eq!(a, b);
    }

    #[test]
    fn per_channel_weights_use_each_channels_full_range() {
        let w = [0.5, -1.0, 0.25, 0.0, 0.0, 0.0, 2.0, 1.0, -2.0];
        let (q, s) = per_channel_int8(&w, 3);
        assert_eq!(&q[0..3], &[64, -127, 32]);
        assert_eq!(&q[3..6], &[0, 0, 0]);
        assert_eq!(&q[6..9], &[127, 64, -127]);
        assert!(s.iter().all(|s| *s > 0.0));
        for (i, v) in w.iter().enumerate() {
            let back = f32::from(q[i]) * s[i / 3];
            assert!((back - v).abs() <= s[i / 3] / 2.0 + 1e-7);
        }
    }
}
