//! The digits QAT demo's recipe and pipeline, shared by the `qat_digits` example and its test
//! (`crates/qfake/tests/qat_digits.rs`, which includes this file by path).
//!
//! The recipe is PyTorch's, recorded by `tools/golden/gen_qat_digits.py` in
//! `crates/qfake/tests/fixtures/qat_digits.json`: from the digits model's float checkpoint,
//! `fuse_modules_qat`, `prepare_qat` with the x86 QAT qconfig (8-bit weights, or 4-bit in
//! -8..7), SGD with momentum over the epochs' recorded orders, batch norm frozen and then the
//! observers disabled at the recorded epochs, and `convert`.

#![allow(dead_code)]

#[path = "../../../qgraph/examples/digits/mod.rs"]
pub mod digits;

use std::path::PathBuf;

use digits::{Digits, Result, TrainingRecord, asset, digits_net, matches, predict};
use ndarray::ArrayD;
use qfake::optim::{Optimizer, Sgd};
use qfake::train::{Backprop, put_parameters, take_parameters};
use qfake::{QatQConfig, grad};
use qgraph::qconfig::{QConfig, get_default_qconfig};
use qgraph::{Module, QConfigMapping, Value, calibrate, convert, eval, io, prepare, train};
use qobserve::{ObserverSpec, UniformArgs};

/// `crates/qfake/tests/fixtures/<name>`.
pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
}

/// PyTorch's recipe and results (`qat_digits.json`).
pub struct Recipe {
    /// Learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Images per step.
    pub batch: usize,
    /// Batch norm is frozen from this epoch (0-based).
    pub freeze_bn_epoch: usize,
    /// Observers are disabled from this epoch.
    pub disable_observer_epoch: usize,
    /// Each epoch's `randperm(1437)`, indexing the training part of the split.
    pub epoch_orders: Vec<Vec<usize>>,
    /// PyTorch's loss at every step, per recipe (`qat8`, `qat4`).
    pub losses: serde_json::Value,
    /// PyTorch's accuracies (counts out of 360).
    pub accuracy: serde_json::Value,
    /// PyTorch's seconds for one QAT epoch (1 thread) and the CPU it ran on.
    pub pytorch_epoch_seconds: f64,
    /// The CPU PyTorch ran on.
    pub cpu: String,
    /// PyTorch's version.
    pub torch: String,
}

impl Recipe {
    /// Reads `qat_digits.json`.
    pub fn load() -> Result<Self> {
        let path = fixture_path("qat_digits.json");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)?;
        let get = |pointer: &str| {
            json.pointer(pointer).cloned().ok_or_else(|| format!("{}: no {pointer}", path.display()))
        };
        let number = |pointer: &str| -> Result<f64> {
            get(pointer)?.as_f64().ok_or_else(|| format!("{pointer}: not a number").into())
        };
        Ok(Self {
            lr: number("/recipe/qat/lr")?,
            momentum: number("/recipe/qat/momentum")?,
            weight_decay: number("/recipe/qat/weight_decay")?,
            batch: number("/recipe/qat/batch")? as usize,
            freeze_bn_epoch: number("/recipe/qat/freeze_bn_stats_from_epoch")? as usize,
            disable_observer_epoch: number("/recipe/qat/disable_observer_from_epoch")? as usize,
            epoch_orders: serde_json::from_value(get("/epoch_permutations")?)?,
            losses: get("/losses")?,
            accuracy: get("/accuracy")?,
            pytorch_epoch_seconds: number("/pytorch_epoch_seconds")?,
            cpu: get("/cpu")?.as_str().unwrap_or("?").to_string(),
            torch: get("/torch")?.as_str().unwrap_or("?").to_string(),
        })
    }

    /// PyTorch's accuracy of `what` (`float`, `ptq4`, `qat8_converted`, ...), out of 360.
    pub fn accuracy_of(&self, what: &str) -> usize {
        self.accuracy[what].as_u64().unwrap_or(0) as usize
    }

    /// PyTorch's loss at each step of recipe `qat8` or `qat4`.
    pub fn losses_of(&self, recipe: &str) -> Vec<f64> {
        self.losses[recipe]
            .as_array()
            .map(|v| v.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default()
    }
}

/// The weight bit width of a recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bits {
    /// qint8 -128..127.
    Eight,
    /// qint8 restricted to -8..7.
    Four,
}

fn four_bit_args() -> UniformArgs {
    UniformArgs::per_channel()
        .dtype(qcore::QDType::QInt8)
        .qscheme(qcore::QScheme::PerChannelSymmetric)
        .quant_range(-8, 7)
}

/// The post-training qconfig: x86's default, with 4-bit weights if asked.
pub fn ptq_qconfig(bits: Bits) -> Result<QConfig> {
    let mut qconfig = get_default_qconfig("x86")?;
    if bits == Bits::Four {
        qconfig.weight = ObserverSpec::PerChannelMinMax { ch_axis: 0, args: four_bit_args() };
    }
    Ok(qconfig)
}

/// The QAT qconfig: x86's default, with 4-bit weights if asked.
pub fn qat_qconfig(bits: Bits) -> Result<QatQConfig> {
    let qconfig = qfake::get_default_qat_qconfig("x86")?;
    Ok(match bits {
        Bits::Eight => qconfig,
        Bits::Four => qconfig.with_weight(ObserverSpec::MovingAveragePerChannelMinMax {
            averaging_constant: 0.01,
            ch_axis: 0,
            args: four_bit_args(),
        }),
    })
}

/// The data and the float model.
pub struct Setup {
    /// The 1797 digits.
    pub digits: Digits,
    /// The split.
    pub record: TrainingRecord,
    /// The float model (eval mode).
    pub float_model: Box<dyn Module>,
    /// Test images.
    pub test_images: ArrayD<f32>,
    /// Test labels.
    pub test_labels: Vec<usize>,
}

impl Setup {
    /// Loads the data and the float checkpoint.
    pub fn load() -> Result<Self> {
        let digits = Digits::load()?;
        let record = TrainingRecord::load()?;
        let mut float_model = digits_net()?;
        io::load_state_dict_file(&mut float_model, asset("digits_cnn.safetensors"))?;
        let test_images = digits.images_at(record.test());
        let test_labels = record.test().iter().map(|&i| digits.labels[i]).collect();
        Ok(Self { digits, record, float_model, test_images, test_labels })
    }

    /// Test images `model` classifies correctly.
    pub fn correct(&self, model: &dyn Module) -> Result<usize> {
        Ok(matches(&predict(model, &self.test_images)?, &self.test_labels))
    }

    /// Post-training quantization with `bits`-bit weights: fuse, calibrate on the training
    /// images in batches of 64, convert.
    pub fn ptq(&self, bits: Bits) -> Result<Box<dyn Module>> {
        let mut model = self.float_model.clone();
        qgraph::fuse::fuse_modules(&mut model, digits::FUSE)?;
        prepare(&mut model, &QConfigMapping::global(ptq_qconfig(bits)?))?;
        let batches: Vec<ArrayD<f32>> =
            self.record.train().chunks(digits::CALIBRATION_BATCH).map(|b| self.digits.images_at(b)).collect();
        calibrate(model.as_ref(), batches, |_, _| {})?;
        convert(&mut model)?;
        Ok(model)
    }

    /// The float model fused for QAT and prepared with `bits`-bit weights, in training mode.
    pub fn prepared(&self, bits: Bits) -> Result<Box<dyn Module>> {
        let mut model = self.float_model.clone();
        train(&mut model, true);
        qgraph::fuse::fuse_modules_qat(&mut model, digits::FUSE)?;
        qfake::prepare_qat(&mut model, &qat_qconfig(bits)?)?;
        Ok(model)
    }
}

/// A QAT run: the model, its optimizer and the loss of every step.
pub struct Training {
    /// The QAT model.
    pub model: Box<dyn Module>,
    /// The QAT qconfig.
    pub qconfig: QatQConfig,
    /// SGD as the recipe sets it.
    pub optimizer: Sgd,
    /// Every step's loss.
    pub losses: Vec<f32>,
    backprop: Backprop,
}

impl Training {
    /// A run of the recipe with `bits`-bit weights, before its first step.
    pub fn new(setup: &Setup, recipe: &Recipe, bits: Bits) -> Result<Self> {
        Ok(Self {
            model: setup.prepared(bits)?,
            qconfig: qat_qconfig(bits)?,
            optimizer: Sgd::new(recipe.lr).momentum(recipe.momentum).weight_decay(recipe.weight_decay),
            losses: Vec::new(),
            backprop: Backprop::default(),
        })
    }

    /// One step on `images` with `labels`: forward, cross-entropy, backward, SGD. Returns the
    /// loss and the gradients.
    pub fn step(&mut self, images: ArrayD<f32>, labels: &[usize]) -> Result<(f32, qfake::train::Gradients)> {
        let (logits, tape) = self.backprop.forward(self.model.as_mut(), Value::Float(images))?;
        let (loss, grad) = grad::cross_entropy(
            &logits.into_float("logits")?,
            labels,
            &grad::CrossEntropyOptions::default(),
        )?;
        let loss = loss.first().copied().unwrap_or(f32::NAN);
        let (_, grads) = self.backprop.backward(self.model.as_ref(), tape, Value::Float(grad))?;
        let mut params = take_parameters(self.model.as_mut(), &grads);
        let mut refs: Vec<(String, &mut ArrayD<f32>)> =
            params.iter_mut().map(|(n, p)| (n.clone(), p)).collect();
        let result = self.optimizer.step(&mut refs, &grads);
        put_parameters(self.model.as_mut(), params);
        result?;
        self.losses.push(loss);
        Ok((loss, grads))
    }

    /// Epoch `epoch` of the recipe: the freezes due at its start, then every batch of its order;
    /// `progress(step, steps, loss)` after each step.
    pub fn epoch(
        &mut self,
        setup: &Setup,
        recipe: &Recipe,
        epoch: usize,
        mut progress: impl FnMut(usize, usize, f32),
    ) -> Result<()> {
        if epoch >= recipe.freeze_bn_epoch {
            qfake::freeze_bn_stats(&mut self.model);
        }
        if epoch >= recipe.disable_observer_epoch {
            qfake::qat::set_observers_enabled(&mut self.model, false);
        }
        train(&mut self.model, true);
        let train_indices = setup.record.train();
        let order: Vec<usize> = recipe.epoch_orders[epoch].iter().map(|&i| train_indices[i]).collect();
        let steps = order.len().div_ceil(recipe.batch);
        for (step, batch) in order.chunks(recipe.batch).enumerate() {
            let labels: Vec<usize> = batch.iter().map(|&i| setup.digits.labels[i]).collect();
            let (loss, _) = self.step(setup.digits.images_at(batch), &labels)?;
            progress(step + 1, steps, loss);
        }
        Ok(())
    }

    /// The QAT model's test accuracy (a copy in eval mode, as the recipe measures it).
    pub fn qat_correct(&self, setup: &Setup) -> Result<usize> {
        let mut copy = self.model.clone();
        eval(&mut copy);
        setup.correct(copy.as_ref())
    }

    /// The converted model (from a copy in eval mode).
    pub fn converted(&self) -> Result<Box<dyn Module>> {
        let mut copy = self.model.clone();
        eval(&mut copy);
        qfake::convert(&mut copy, self.qconfig.kinds)?;
        Ok(copy)
    }
}
