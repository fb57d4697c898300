//! A CRNN text recognizer (`tools/golden/gen_crnn.py`): a quantizable CNN front end (five
//! conv + batch norm + ReLU blocks with max pooling, between `quant` and `dequant`), the feature
//! map read as a sequence along its width, a two-layer bidirectional LSTM and a Linear head.

use ndarray::{ArrayD, IxDyn};

use crate::nn::{BatchNorm2d, Conv2d, LSTM, Linear, MaxPool2d, ReLU, RnnOptions};
use crate::qconfig::get_default_qconfig;
use crate::workflow::{DynamicDType, DynamicQConfigSpec, quantize_dynamic};
use crate::{DeQuantStub, Graph, GraphResult, Module, Op, QConfigMapping, QuantStub, Sequential};

/// The printed type name of the model.
pub(crate) const TYPE_NAME: &str = "CRNN";
/// Input height and width of a text line (grayscale, one channel).
pub const CRNN_INPUT: [usize; 2] = [32, 128];
/// The LSTM's hidden size (each direction).
const HIDDEN: usize = 256;
/// Output channels of the five conv blocks.
const CHANNELS: [usize; 5] = [64, 128, 256, 256, 256];

/// `nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())`.
fn block(cin: usize, cout: usize) -> GraphResult<Sequential> {
    let conv = Conv2d::new(cin, cout, [3, 3]).padding([1, 1]).build()?;
    Ok(Sequential::new(vec![Box::new(conv), Box::new(BatchNorm2d::new(cout)), Box::new(ReLU::new())]))
}

/// The float CRNN with `num_classes` outputs per step, in training mode.
pub(crate) fn crnn(num_classes: usize) -> GraphResult<Box<dyn Module>> {
    if num_classes == 0 {
        return Err(crate::invalid(
            "crnn",
            "num_classes",
            num_classes,
            "a recognizer needs at least one class",
        ));
    }
    let mut cnn: Vec<(String, Box<dyn Module>)> = Vec::new();
    let mut cin = 1;
    for (i, cout) in CHANNELS.into_iter().enumerate() {
        cnn.push((i.to_string(), Box::new(block(cin, cout)?)));
        cin = cout;
        let pool = match i {
            0 | 1 => Some(MaxPool2d::new(2).stride(2)),
            3 => Some(MaxPool2d::new([2, 1])),
            4 => Some(MaxPool2d::new([4, 1])),
            _ => None,
        };
        if let Some(pool) = pool {
            cnn.push((format!("pool{i}"), Box::new(pool)));
        }
    }
    let rnn = LSTM::new(RnnOptions { num_layers: 2, bidirectional: true, ..RnnOptions::new(cin, HIDDEN) })?;
    let mut b = Graph::builder(TYPE_NAME);
    b.add("quant", QuantStub::new())
        .add("cnn", Sequential::named(cnn)?)
        .add("dequant", DeQuantStub::new())
        .add("rnn", rnn)
        .add("fc", Linear::new(2 * HIDDEN, num_classes, true));
    let x = b.call("quant", Graph::INPUT);
    let x = b.call("cnn", &x);
    let x = b.call("dequant", &x);
    // f.squeeze(2).permute(2, 0, 1): [N, C, 1, W] -> [W, N, C], a sequence along the width.
    let x = b.op("squeeze", Op::Squeeze(2), &x);
    let x = b.op("permute", Op::Permute(vec![2, 0, 1]), &x);
    // out, _ = self.rnn(seq)
    let x = b.call("rnn", &x);
    let x = b.get_item("out", &x, 0);
    let x = b.call("fc", &x);
    Ok(Box::new(b.build(&x)?))
}

/// The groups `fuse_modules` gets for the CRNN: `cnn.<i>.0, cnn.<i>.1, cnn.<i>.2` for the five
/// blocks.
pub(crate) fn fuse_groups() -> Vec<Vec<String>> {
    (0..CHANNELS.len()).map(|i| (0..3).map(|j| format!("cnn.{i}.{j}")).collect()).collect()
}

/// `random_f32s(32 * 128, seed)` as one `[1, 1, 32, 128]` text line: the generator's
/// calibration lines (seeds 500..503) and test line (seed 999).
///
/// ```
/// assert_eq!(qgraph::models::crnn_line(999).shape(), [1, 1, 32, 128]);
/// ```
pub fn crnn_line(seed: u64) -> ArrayD<f32> {
    let [h, w] = CRNN_INPUT;
    ArrayD::from_shape_vec(IxDyn(&[1, 1, h, w]), super::weights::random_f32s(h * w, seed))
        .expect("h * w values")
}

/// Quantizes a float CRNN (in evaluation mode) as `tools/golden/gen_crnn.py` does: fuses the
/// five blocks (as [`fuse_model`](super::fuse_model)), gives `quant`, `cnn` and `dequant` `get_default_qconfig("x86")` (nothing else),
/// prepares, calibrates on `lines`, converts, then `quantize_dynamic({LSTM, Linear}, qint8)`
/// through the default dynamic table. Returns how many modules `quantize_dynamic` swapped.
///
/// ```
/// use qgraph::models::{crnn, crnn_line, quantize_crnn};
/// let mut model = crnn(10)?;
/// qgraph::eval(&mut model);
/// quantize_crnn(&mut model, [crnn_line(500)])?;
/// assert_eq!(model.get("cnn.0.0")?.type_name(), "QuantizedConvReLU2d");
/// assert_eq!(model.get("fc")?.type_name(), "DynamicQuantizedLinear");
/// # Ok::<(), qgraph::GraphError>(())
/// ```
pub fn quantize_crnn(
    model: &mut Box<dyn Module>,
    lines: impl IntoIterator<Item = ArrayD<f32>>,
) -> GraphResult<usize> {
    let groups = fuse_groups();
    let refs: Vec<Vec<&str>> = groups.iter().map(|g| g.iter().map(String::as_str).collect()).collect();
    let slices: Vec<&[&str]> = refs.iter().map(Vec::as_slice).collect();
    crate::fuse::fuse_modules(model, &slices)?;
    let qconfig = get_default_qconfig("x86")?;
    let mapping = ["quant", "cnn", "dequant"]
        .into_iter()
        .fold(QConfigMapping::default(), |m, name| m.set_name(name, Some(qconfig.clone())));
    crate::prepare(model, &mapping)?;
    crate::calibrate(model.as_ref(), lines, |_, _| {})?;
    crate::convert(model)?;
    let types = vec!["LSTM".to_string(), "Linear".to_string()];
    quantize_dynamic(model, DynamicQConfigSpec::Types(types), DynamicDType::QInt8)
}
