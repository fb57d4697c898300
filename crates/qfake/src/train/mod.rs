//! Training on qgraph's module tree: a forward pass that keeps what each layer's backward needs,
//! and a layer-wise backward pass that returns the gradient of every parameter by its
//! `state_dict` name.
//!
//! qgraph modules run inference with `forward(&self)`. Training needs more of each layer: a
//! forward that may change it (batch-norm running statistics, observers) and saves what its
//! backward needs, and that backward. A layer provides both by implementing [`Train`];
//! [`Backprop`] finds the implementation by the module's Rust type, as qgraph's mappings find
//! quantized counterparts, so a crate adds its own layers with [`Backprop::register`].
//! [`Backprop::default`] knows qgraph's containers, stubs and float layers and qfake's QAT
//! modules and fake quantizers.
//!
//! ```
//! use ndarray::{ArrayD, IxDyn};
//! use qfake::train::Backprop;
//! use qgraph::nn::Linear;
//! use qgraph::{Module, Sequential, Value, train};
//! let mut model: Box<dyn Module> = Box::new(Sequential::new(vec![Box::new(Linear::new(3, 2, true))]));
//! train(&mut model, true);
//! let x = ArrayD::from_shape_vec(IxDyn(&[1, 3]), vec![1.0f32, 2.0, 3.0]).unwrap();
//! let backprop = Backprop::default();
//! let (y, tape) = backprop.forward(model.as_mut(), Value::Float(x))?;
//! let ones = ArrayD::from_elem(y.shape()?.to_vec(), 1.0f32);
//! let (_, grads) = backprop.backward(model.as_ref(), tape, Value::Float(ones))?;
//! assert_eq!(grads["0.weight"].as_slice().unwrap(), &[1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
//! assert_eq!(grads["0.bias"].as_slice().unwrap(), &[1.0, 1.0]);
//! # Ok::<(), qgraph::GraphError>(())
//! ```

mod backprop;
mod containers;
mod embedding;
mod fake_quant;
mod layers;
mod params;
mod qat;

pub use backprop::{BackPass, Backprop, Gradients, Pass, Saved, Tape, Train, unsave};
pub use layers::manual_seed;
pub use params::{put_parameters, take_parameters, visit_mut};

impl Default for Backprop {
    /// qgraph's containers, stubs and float layers, and qfake's QAT modules and fake quantizers.
    fn default() -> Self {
        let mut backprop = Self::empty();
        containers::register(&mut backprop);
        layers::register(&mut backprop);
        fake_quant::register(&mut backprop);
        qat::register(&mut backprop);
        embedding::register(&mut backprop);
        backprop
    }
}
