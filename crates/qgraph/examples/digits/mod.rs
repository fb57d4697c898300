//! The digits demo's model, data and pipeline, shared by the quickstart example
//! (`cargo run --release -p qgraph --example quickstart`) and its accuracy test
//! (`cargo test -p qgraph --test digits`, which includes this file by path).
//!
//! The assets are in `crates/qgraph/assets/digits/` (see `ATTRIBUTION.md` there): scikit-learn's
//! 8x8 digits, the float weights of `DigitsNet` trained by `tools/train_digits.py`, and that
//! script's record (the split's permutation and PyTorch's float and int8 accuracies).

use std::error::Error;
use std::io::Read;
use std::path::PathBuf;

use ndarray::{ArrayD, Axis, IxDyn};
use qgraph::fuse::fuse_modules;
use qgraph::nn::{AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU};
use qgraph::qconfig::get_default_qconfig;
use qgraph::{
    DeQuantStub, Graph, GraphResult, Module, QConfigMapping, QuantStub, Sequential, Value, calibrate,
    convert, eval, io, prepare,
};

/// Errors of the demo (files, JSON, the workflow), with what was being read.
pub type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Images per calibration batch, as in `tools/train_digits.py`.
pub const CALIBRATION_BATCH: usize = 64;

/// The images the model was trained (and is calibrated) on; the rest of the permutation is the
/// test set.
pub const TRAIN_SIZE: usize = 1437;

/// `fuse_modules(model.features, [["0", "1", "2"], ["3", "4", "5"], ["7", "8", "9"]])`: the
/// three Conv + BatchNorm + ReLU triples.
pub const FUSE: &[&[&str]] = &[
    &["features.0", "features.1", "features.2"],
    &["features.3", "features.4", "features.5"],
    &["features.7", "features.8", "features.9"],
];

/// `crates/qgraph/assets/digits/<name>`.
pub fn asset(name: &str) -> PathBuf {
    // Through the workspace, so that other crates including this file find them too.
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../qgraph/assets/digits")).join(name)
}

/// `DigitsNet` of `tools/train_digits.py`, with PyTorch's module names: `quant`, `features`
/// (Conv-BN-ReLU x2, MaxPool2d(2), Conv-BN-ReLU, AdaptiveAvgPool2d(1)), `flatten`, `fc`, `dequant`.
pub fn digits_net() -> GraphResult<Box<dyn Module>> {
    let conv = |cin, cout| Conv2d::new(cin, cout, [3, 3]).padding([1, 1]).bias(false).build();
    let features = Sequential::new(vec![
        Box::new(conv(1, 16)?),
        Box::new(BatchNorm2d::new(16)),
        Box::new(ReLU::new()),
        Box::new(conv(16, 32)?),
        Box::new(BatchNorm2d::new(32)),
        Box::new(ReLU::new()),
        Box::new(MaxPool2d::new(2)),
        Box::new(conv(32, 64)?),
        Box::new(BatchNorm2d::new(64)),
        Box::new(ReLU::new()),
        Box::new(AdaptiveAvgPool2d::new(1)),
    ]);
    let mut b = Graph::builder("DigitsNet");
    let x = b.then("quant", QuantStub::new(), Graph::INPUT);
    let x = b.then("features", features, &x);
    let x = b.then("flatten", Flatten::new(1, -1), &x);
    let x = b.then("fc", Linear::new(64, 10, true), &x);
    let x = b.then("dequant", DeQuantStub::new(), &x);
    let mut model: Box<dyn Module> = Box::new(b.build(&x)?);
    eval(&mut model);
    Ok(model)
}

/// The 1797 digits: images `[N, 1, 8, 8]` as pixel / 16 (in [0, 1]) and labels 0..9.
pub struct Digits {
    /// `[1797, 1, 8, 8]`.
    pub images: ArrayD<f32>,
    /// One label per image.
    pub labels: Vec<usize>,
}

impl Digits {
    /// Reads `digits.csv.gz`: one row per image, 64 pixels (0..16) then the label.
    pub fn load() -> Result<Self> {
        let path = asset("digits.csv.gz");
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .map_err(|e| format!("{}: not gzipped text: {e}", path.display()))?;
        let (mut pixels, mut labels) = (Vec::new(), Vec::new());
        for (line, row) in text.lines().enumerate() {
            let values = row
                .split(',')
                .map(|v| v.trim().parse::<u8>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| format!("{} line {}: {e}", path.display(), line + 1))?;
            match values.split_last() {
                Some((&label, image)) if image.len() == 64 && label < 10 => {
                    pixels.extend(image.iter().map(|&p| f32::from(p) / 16.0));
                    labels.push(usize::from(label));
                }
                _ => {
                    return Err(format!(
                        "{} line {}: expected 64 pixels and a label",
                        path.display(),
                        line + 1
                    )
                    .into());
                }
            }
        }
        let images = ArrayD::from_shape_vec(IxDyn(&[labels.len(), 1, 8, 8]), pixels)?;
        Ok(Self { images, labels })
    }

    /// The images at `indices`, in that order, as one batch.
    pub fn images_at(&self, indices: &[usize]) -> ArrayD<f32> {
        self.images.select(Axis(0), indices)
    }
}

/// What `tools/train_digits.py` recorded in `digits_cnn.json`.
pub struct TrainingRecord {
    /// `torch.randperm(1797, generator=manual_seed(0))`: train is the first [`TRAIN_SIZE`].
    pub permutation: Vec<usize>,
    /// PyTorch's version.
    pub torch_version: String,
    /// PyTorch's float test accuracy (a fraction).
    pub float_accuracy: f64,
    /// PyTorch's int8 test accuracy (a fraction).
    pub int8_accuracy: f64,
}

impl TrainingRecord {
    /// Reads `digits_cnn.json`.
    pub fn load() -> Result<Self> {
        let path = asset("digits_cnn.json");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)?;
        let field =
            |pointer: &str| json.pointer(pointer).ok_or_else(|| format!("{}: no {pointer}", path.display()));
        let number = |pointer: &str| {
            field(pointer)?.as_f64().ok_or_else(|| format!("{}: {pointer} is not a number", path.display()))
        };
        let permutation: Vec<usize> = serde_json::from_value(field("/split/permutation_indices")?.clone())?;
        let mut sorted = permutation.clone();
        sorted.sort_unstable();
        if permutation.len() <= TRAIN_SIZE || sorted.iter().enumerate().any(|(i, &v)| i != v) {
            return Err(format!("{}: split.permutation_indices is not a permutation", path.display()).into());
        }
        Ok(Self {
            permutation,
            torch_version: field("/pytorch/version")?.as_str().unwrap_or("?").to_string(),
            float_accuracy: number("/pytorch/float_test_accuracy")?,
            int8_accuracy: number("/pytorch/int8_test_accuracy")?,
        })
    }

    /// The training images' indices, in calibration order.
    pub fn train(&self) -> &[usize] {
        &self.permutation[..TRAIN_SIZE]
    }

    /// The test images' indices.
    pub fn test(&self) -> &[usize] {
        &self.permutation[TRAIN_SIZE..]
    }
}

/// The top-1 class of each row of `model`'s output on `images`.
pub fn predict(model: &dyn Module, images: &ArrayD<f32>) -> GraphResult<Vec<usize>> {
    let out = model.forward(Value::from(images.clone()))?.into_float_lossy()?;
    Ok(out
        .axis_iter(Axis(0))
        .map(|row| row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[[best]] { i } else { best }))
        .collect())
}

/// How many of `a` equal `b` at the same position.
pub fn matches(a: &[usize], b: &[usize]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x == y).count()
}

/// The demo end to end: the float model with PyTorch's weights, and its int8 version (fused,
/// prepared with `get_default_qconfig("x86")`, calibrated on the training images in batches of
/// [`CALIBRATION_BATCH`], converted), with both models' test predictions.
pub struct Demo {
    /// The training script's record.
    pub record: TrainingRecord,
    /// The test images, `[360, 1, 8, 8]`.
    pub test_images: ArrayD<f32>,
    /// The test labels.
    pub test_labels: Vec<usize>,
    /// The float model.
    pub float_model: Box<dyn Module>,
    /// The converted int8 model.
    pub int8_model: Box<dyn Module>,
    /// The float model's top-1 class on each test image.
    pub float_predictions: Vec<usize>,
    /// The int8 model's top-1 class on each test image.
    pub int8_predictions: Vec<usize>,
}

impl Demo {
    /// Runs the pipeline; `progress(done, total)` is called after each calibration batch.
    pub fn run(progress: impl FnMut(usize, Option<usize>)) -> Result<Self> {
        let digits = Digits::load()?;
        let record = TrainingRecord::load()?;
        if record.permutation.len() != digits.labels.len() {
            return Err("digits_cnn.json's permutation does not cover digits.csv.gz".into());
        }
        let test_images = digits.images_at(record.test());
        let test_labels: Vec<usize> = record.test().iter().map(|&i| digits.labels[i]).collect();

        let mut float_model = digits_net()?;
        io::load_state_dict_file(&mut float_model, asset("digits_cnn.safetensors"))?;
        let float_predictions = predict(float_model.as_ref(), &test_images)?;

        let mut model = float_model.clone();
        fuse_modules(&mut model, FUSE)?;
        prepare(&mut model, &QConfigMapping::global(get_default_qconfig("x86")?))?;
        let batches: Vec<ArrayD<f32>> =
            record.train().chunks(CALIBRATION_BATCH).map(|batch| digits.images_at(batch)).collect();
        calibrate(model.as_ref(), batches, progress)?;
        convert(&mut model)?;
        let int8_predictions = predict(model.as_ref(), &test_images)?;

        Ok(Self {
            record,
            test_images,
            test_labels,
            float_model,
            int8_model: model,
            float_predictions,
            int8_predictions,
        })
    }

    /// Test images the float model classifies correctly.
    pub fn float_correct(&self) -> usize {
        matches(&self.float_predictions, &self.test_labels)
    }

    /// Test images the int8 model classifies correctly.
    pub fn int8_correct(&self) -> usize {
        matches(&self.int8_predictions, &self.test_labels)
    }

    /// Test images on which the float and int8 models pick the same class.
    pub fn agreeing(&self) -> usize {
        matches(&self.float_predictions, &self.int8_predictions)
    }

    /// A fraction of the test set as a count of images (PyTorch's accuracies are float32 means).
    pub fn images(&self, fraction: f64) -> usize {
        (fraction * self.test_labels.len() as f64).round() as usize
    }
}
