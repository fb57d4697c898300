//! [`Architecture`]: which zoo model, its name, its builder, and recognising a built model.

use super::{mobilenet, resnet};
use crate::{GraphResult, Module};
use resnet::Block;

/// The architectures of the zoo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Architecture {
    /// `torchvision.models.quantization.resnet18`.
    ResNet18,
    /// `torchvision.models.quantization.resnet50`.
    ResNet50,
    /// `torchvision.models.quantization.mobilenet_v2`.
    MobileNetV2,
}

impl Architecture {
    /// Every architecture.
    pub const ALL: [Architecture; 3] =
        [Architecture::ResNet18, Architecture::ResNet50, Architecture::MobileNetV2];

    /// torchvision's builder name: `resnet18`, `resnet50`, `mobilenet_v2`.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::ResNet18 => "resnet18",
            Architecture::ResNet50 => "resnet50",
            Architecture::MobileNetV2 => "mobilenet_v2",
        }
    }

    /// The architecture named `name` (as [`name`](Architecture::name) spells it).
    ///
    /// ```
    /// use qgraph::models::Architecture;
    /// assert_eq!(Architecture::from_name("mobilenet_v2")?, Architecture::MobileNetV2);
    /// assert!(Architecture::from_name("vgg16").is_err());
    /// # Ok::<(), qgraph::GraphError>(())
    /// ```
    pub fn from_name(name: &str) -> GraphResult<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name).ok_or_else(|| {
            crate::invalid("models", "architecture", name, "the zoo has resnet18, resnet50 and mobilenet_v2")
        })
    }

    /// The number of input channels (3: RGB).
    pub fn input_channels(self) -> usize {
        3
    }

    /// The float model with `num_classes` outputs, in training mode (as PyTorch builds it).
    pub fn build(self, num_classes: usize) -> GraphResult<Box<dyn Module>> {
        if num_classes == 0 {
            return Err(crate::invalid(
                "models",
                "num_classes",
                num_classes,
                "a classifier needs at least one class",
            ));
        }
        match self {
            Architecture::ResNet18 => resnet::resnet(Block::Basic, [2, 2, 2, 2], num_classes),
            Architecture::ResNet50 => resnet::resnet(Block::Bottleneck, [3, 4, 6, 3], num_classes),
            Architecture::MobileNetV2 => mobilenet::mobilenet_v2(num_classes),
        }
    }

    /// The zoo architecture `model` was built as (also after fusing, preparing or converting),
    /// recognised by its type names; `None` for any other model.
    pub fn of(model: &dyn Module) -> Option<Self> {
        match model.type_name() {
            "QuantizableMobileNetV2" => Some(Architecture::MobileNetV2),
            "QuantizableResNet" => match model.get("layer1.0").ok()?.type_name() {
                "QuantizableBasicBlock" => Some(Architecture::ResNet18),
                "QuantizableBottleneck" => Some(Architecture::ResNet50),
                _ => None,
            },
            _ => None,
        }
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
