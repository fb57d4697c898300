//! Calibration data: batches from a safetensors file or a folder of images.
//!
//! - A safetensors file with one tensor: its leading dimension is the sample axis, cut into
//!   batches of `--batch` samples.
//! - A safetensors file with several tensors: each tensor is one batch, in natural name order
//!   (`batch2` before `batch10`); `--batch` does not apply.
//! - A folder: its `.png`, `.jpg` and `.jpeg` files in natural name order, each preprocessed
//!   ([`crate::image_input`]), stacked into batches of `--batch` images.
//!
//! `--limit N` keeps the first N samples. Images are decoded batch by batch as the data is
//! used, so a large folder is never held in memory at once.

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, Axis, Slice};

use crate::cli::DataArgs;
use crate::error::{CliError, Result};
use crate::image_input::{Preprocess, is_image};
use crate::input::{natural_cmp, read_tensors};

/// Where the batches come from.
enum Source {
    /// Batches already in memory.
    Tensors(Vec<ArrayD<f32>>),
    /// Image files, in order, decoded `batch` at a time.
    Images { files: Vec<PathBuf>, prep: Preprocess, batch: usize },
}

/// Opened calibration data.
pub struct Calib {
    source: Source,
    what: String,
}

impl Calib {
    /// Opens `path` (a safetensors file or a folder of images) as `args` say.
    pub fn open(path: &Path, args: &DataArgs) -> Result<Self> {
        let limit = args.limit.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        let batch = usize::try_from(args.batch).unwrap_or(usize::MAX);
        if path.is_dir() {
            let prep = Preprocess::new(&args.image)?;
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| CliError::io(path, e))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            files.sort_by(|a, b| natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
            files.truncate(limit);
            if files.is_empty() {
                return Err(CliError::Input(format!(
                    "{}: no .png, .jpg or .jpeg file in this folder; give a folder of images or a safetensors file",
                    path.display()
                )));
            }
            let what = format!("{} images from {}", files.len(), path.display());
            return Ok(Calib { source: Source::Images { files, prep, batch }, what });
        }
        let tensors = read_tensors(path)?;
        let mut batches = Vec::new();
        if let [(name, tensor)] = tensors.as_slice() {
            if tensor.ndim() == 0 {
                return Err(CliError::Input(format!(
                    "{}: tensor `{name}` is a scalar; its first dimension must count the samples",
                    path.display()
                )));
            }
            let n = tensor.shape()[0].min(limit);
            for start in (0..n).step_by(batch) {
                let end = (start + batch).min(n);
                batches.push(tensor.slice_axis(Axis(0), Slice::from(start..end)).to_owned());
            }
        } else {
            let mut left = limit;
            for (name, tensor) in tensors {
                if left == 0 {
                    break;
                }
                if tensor.ndim() == 0 {
                    return Err(CliError::Input(format!(
                        "{}: tensor `{name}` is a scalar; each tensor must be a batch",
                        path.display()
                    )));
                }
                let take = tensor.shape()[0].min(left);
                left -= take;
                batches.push(tensor.slice_axis(Axis(0), Slice::from(0..take)).to_owned());
            }
        }
        let samples: usize = batches.iter().map(|b| b.shape()[0]).sum();
        let what = format!("{samples} samples from {}", path.display());
        Ok(Calib { source: Source::Tensors(batches), what })
    }

    /// What the data is, for notes: `1437 samples from calib.safetensors`.
    pub fn describe(&self) -> &str {
        &self.what
    }

    /// How many batches [`batches`](Self::batches) yields for `max_samples`.
    pub fn count(&self, max_samples: Option<usize>) -> usize {
        let max = max_samples.unwrap_or(usize::MAX);
        match &self.source {
            Source::Tensors(batches) => {
                let mut seen = 0;
                batches
                    .iter()
                    .take_while(|b| {
                        let more = seen < max;
                        seen += b.shape()[0];
                        more
                    })
                    .count()
            }
            Source::Images { files, batch, .. } => files.len().min(max).div_ceil(*batch),
        }
    }

    /// The batches in order, holding at most `max_samples` samples in all (the last batch cut
    /// short if needed).
    pub fn batches(&self, max_samples: Option<usize>) -> impl Iterator<Item = Result<ArrayD<f32>>> + '_ {
        let mut left = max_samples.unwrap_or(usize::MAX);
        (0..self.count(None)).map_while(move |i| {
            if left == 0 {
                return None;
            }
            let batch = match &self.source {
                Source::Tensors(batches) => {
                    let b = &batches[i];
                    let take = b.shape()[0].min(left);
                    Ok(b.slice_axis(Axis(0), Slice::from(0..take)).to_owned())
                }
                Source::Images { files, prep, batch } => {
                    let chunk = &files[i * batch..((i + 1) * batch).min(files.len())];
                    load_images(&chunk[..chunk.len().min(left)], prep)
                }
            };
            if let Ok(b) = &batch {
                left = left.saturating_sub(b.shape()[0]);
            }
            Some(batch)
        })
    }
}

/// The images at `files`, preprocessed and stacked into `[N, C, H, W]`.
fn load_images(files: &[PathBuf], prep: &Preprocess) -> Result<ArrayD<f32>> {
    let images = files.iter().map(|f| prep.load(f)).collect::<Result<Vec<_>>>()?;
    let views: Vec<_> = images.iter().map(|i| i.view()).collect();
    let stacked =
        ndarray::stack(Axis(0), &views).map_err(|e| CliError::Input(format!("stacking images: {e}")))?;
    Ok(stacked.into_dyn())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{ImageArgs, Size};

    fn data_args(limit: Option<u64>, batch: u64) -> DataArgs {
        let image = ImageArgs {
            size: Size { height: 8, width: 8 },
            resize: None,
            plain_resize: false,
            mean: vec![0.0],
            std: vec![1.0],
        };
        DataArgs { limit, batch, image }
    }

    fn samples(calib: &Calib, max: Option<usize>) -> Vec<Vec<f32>> {
        calib.batches(max).map(|b| b.unwrap().iter().copied().collect()).collect()
    }

    #[test]
    fn one_tensor_is_cut_into_batches_and_several_are_batches_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one.safetensors");
        let x = ArrayD::from_shape_fn(ndarray::IxDyn(&[7, 1]), |i| i[0] as f32);
        crate::run::write_outputs(&one, &[("x".into(), qgraph::DType::Float32, x)]).unwrap();
        let calib = Calib::open(&one, &data_args(Some(6), 4)).unwrap();
        assert_eq!(calib.describe(), format!("6 samples from {}", one.display()));
        assert_eq!(samples(&calib, None), [vec![0.0, 1.0, 2.0, 3.0], vec![4.0, 5.0]]);
        assert_eq!((calib.count(None), calib.count(Some(4)), calib.count(Some(5))), (2, 1, 2));
        assert_eq!(samples(&calib, Some(5)), [vec![0.0, 1.0, 2.0, 3.0], vec![4.0]]);

        let several = dir.path().join("several.safetensors");
        let batch = |v: f32, n: usize| ArrayD::from_elem(ndarray::IxDyn(&[n, 1]), v);
        let tensors = [("b10", batch(10.0, 1)), ("b2", batch(2.0, 2)), ("b1", batch(1.0, 3))];
        let tensors: Vec<_> =
            tensors.into_iter().map(|(n, x)| (n.to_string(), qgraph::DType::Float32, x)).collect();
        crate::run::write_outputs(&several, &tensors).unwrap();
        let calib = Calib::open(&several, &data_args(Some(5), 1)).unwrap();
        assert_eq!(samples(&calib, None), [vec![1.0; 3], vec![2.0; 2]]);
        let calib = Calib::open(&several, &data_args(None, 1)).unwrap();
        assert_eq!(samples(&calib, Some(4)), [vec![1.0; 3], vec![2.0]]);
        assert_eq!(calib.count(None), 3);
    }
}
