//! Images as model input: decode (PNG, JPEG), resize, crop and normalize to a `[C, H, W]` float
//! tensor.
//!
//! By default this is torchvision's evaluation transform: `Resize(S)` (the shorter side to `S`
//! pixels, the longer scaled and truncated as torchvision does), `CenterCrop(H, W)`,
//! `ToTensor()` (pixels / 255) and `Normalize(mean, std)`. `--plain-resize` instead resizes
//! straight to `H x W`. Resizing uses the `image` crate's triangle (bilinear) filter, which
//! widens with the scale factor when shrinking as PIL's bilinear filter does; pixel values can
//! still differ from PIL's by rounding. One mean value means grayscale (one channel), three mean
//! RGB.

use std::path::Path;

use image::imageops::{self, FilterType};
use ndarray::Array3;

use crate::cli::{ImageArgs, Size};
use crate::error::{CliError, Result};

/// The file extensions read as images.
pub const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Whether `path` names an image by its extension.
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// A checked preprocessing recipe.
#[derive(Debug, Clone)]
pub struct Preprocess {
    size: Size,
    /// `Some(S)`: resize the shorter side to `S`, then center crop; `None`: plain resize.
    shorter_side: Option<u32>,
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Preprocess {
    /// The recipe `args` describe; mismatched or invalid mean and std are a usage error.
    pub fn new(args: &ImageArgs) -> Result<Self> {
        let channels = args.mean.len();
        if !matches!(channels, 1 | 3) || args.std.len() != channels {
            return Err(CliError::Usage(format!(
                "--mean has {} values and --std {}; give 1 (grayscale) or 3 (RGB) values to each",
                args.mean.len(),
                args.std.len()
            )));
        }
        if let Some(bad) = args.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(CliError::Usage(format!("--std {bad}: every value must be positive and finite")));
        }
        let Size { height, width } = args.size;
        let shorter_side = if args.plain_resize {
            None
        } else {
            let side = args.resize.unwrap_or((height.max(width) as u64 * 256 / 224) as u32);
            // Either side of the image may be the shorter one, so both crop sides must fit in it.
            if side < height.max(width) {
                return Err(CliError::Usage(format!(
                    "--resize {side} is smaller than the {height}x{width} crop; give at least {}",
                    height.max(width)
                )));
            }
            Some(side)
        };
        Ok(Preprocess { size: args.size, shorter_side, mean: args.mean.clone(), std: args.std.clone() })
    }

    /// Channels of the output (1 or 3).
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// Reads the image at `path` as a `[C, H, W]` tensor.
    pub fn load(&self, path: &Path) -> Result<Array3<f32>> {
        let image = image::open(path)
            .map_err(|source| CliError::Image { path: path.display().to_string(), source })?;
        let Size { height, width } = self.size;
        let pixels: Vec<Vec<u8>> = if self.channels() == 1 {
            let gray = self.fit(&image.to_luma8());
            vec![gray.into_raw()]
        } else {
            let rgb = self.fit(&image.to_rgb8());
            let raw = rgb.into_raw();
            (0..3).map(|c| raw.iter().skip(c).step_by(3).copied().collect()).collect()
        };
        let (h, w) = (height as usize, width as usize);
        Ok(Array3::from_shape_fn((self.channels(), h, w), |(c, y, x)| {
            (f32::from(pixels[c][y * w + x]) / 255.0 - self.mean[c]) / self.std[c]
        }))
    }

    /// Resizes (and crops) `image` to the target size.
    fn fit<P: image::Pixel<Subpixel = u8> + 'static>(
        &self,
        image: &image::ImageBuffer<P, Vec<u8>>,
    ) -> image::ImageBuffer<P, Vec<u8>> {
        let Size { height, width } = self.size;
        let Some(side) = self.shorter_side else {
            return imageops::resize(image, width, height, FilterType::Triangle);
        };
        let (w, h) = image.dimensions();
        // torchvision's Resize(side): the longer side is truncated, not rounded.
        let (rw, rh) = if w <= h {
            (side, (u64::from(side) * u64::from(h) / u64::from(w.max(1))) as u32)
        } else {
            ((u64::from(side) * u64::from(w) / u64::from(h.max(1))) as u32, side)
        };
        let resized = imageops::resize(image, rw, rh, FilterType::Triangle);
        // CenterCrop: offsets rounded half to even, as Python's round().
        let top = (f64::from(rh - height) / 2.0).round_ties_even() as u32;
        let left = (f64::from(rw - width) / 2.0).round_ties_even() as u32;
        imageops::crop_imm(&resized, left, top, width, height).to_image()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(size: &str, plain: bool, mean: Vec<f32>, std: Vec<f32>) -> ImageArgs {
        let (h, w) = size.split_once('x').unwrap();
        ImageArgs {
            size: Size { height: h.parse().unwrap(), width: w.parse().unwrap() },
            resize: None,
            plain_resize: plain,
            mean,
            std,
        }
    }

    #[test]
    fn resize_crop_and_normalize() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bars.png");
        // 20 wide, 10 high: left half black, right half white.
        image::GrayImage::from_fn(20, 10, |x, _| image::Luma([if x < 10 { 0 } else { 255 }]))
            .save(&path)
            .unwrap();
        // Shorter side 10 -> 9 (8 * 256 / 224), longer 18; the 8x8 crop starts at column 5.
        let prep = Preprocess::new(&args("8x8", false, vec![0.5], vec![0.5])).unwrap();
        let x = prep.load(&path).unwrap();
        assert_eq!(x.shape(), [1, 8, 8]);
        assert_eq!(x[[0, 4, 0]], -1.0);
        assert_eq!(x[[0, 4, 7]], 1.0);
        // RGB from the same gray file: three equal channels.
        let rgb =
            Preprocess::new(&args("4x6", true, vec![0.0; 3], vec![1.0; 3])).unwrap().load(&path).unwrap();
        assert_eq!(rgb.shape(), [3, 4, 6]);
        assert_eq!(rgb.index_axis(ndarray::Axis(0), 0), rgb.index_axis(ndarray::Axis(0), 2));
        assert_eq!(rgb[[0, 0, 0]], 0.0);
        assert_eq!(rgb[[1, 0, 5]], 1.0);
    }

    #[test]
    fn bad_recipes_are_usage_errors() {
        for (mean, std) in
            [(vec![0.5, 0.5], vec![0.5, 0.5]), (vec![0.5], vec![0.0]), (vec![0.1; 3], vec![1.0])]
        {
            assert!(matches!(Preprocess::new(&args("8x8", false, mean, std)), Err(CliError::Usage(_))));
        }
        // A resize shorter than either crop side could leave too few pixels to crop.
        let mut short = args("8x16", false, vec![0.5], vec![0.5]);
        short.resize = Some(12);
        assert!(matches!(Preprocess::new(&short), Err(CliError::Usage(_))));
        short.resize = Some(16);
        let prep = Preprocess::new(&short).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let tall = dir.path().join("tall.png");
        image::GrayImage::new(10, 20).save(&tall).unwrap();
        assert_eq!(prep.load(&tall).unwrap().shape(), [1, 8, 16]);
    }
}
