//! Activations and their backward, as ATen's CPU kernels compute them (`threshold_backward`,
//! `hardtanh_backward`, `hardswish_backward`, `hardsigmoid_backward`, `leaky_relu_backward`,
//! `elu_backward`, `sigmoid_backward`, `tanh_backward`, `gelu_backward`).

use ndarray::ArrayD;
use qkernels::Isa;
use qkernels::float::{self, Activation as Kernel};

use super::check::{array, bad, check_shape, to_vec};
use crate::QFakeResult;

const CONTEXT: &str = "qfake::grad::activation";

/// An activation with a training backward. [`Activation::saves_output`] says whether
/// [`Activation::backward`] takes the forward's input or its output (what ATen's autograd
/// saves).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// `nn.ReLU`; the backward takes the output (`threshold_backward(grad, result, 0)`).
    Relu,
    /// `nn.ReLU6` (`hardtanh(x, 0, 6)`); the backward takes the input and passes the gradient
    /// strictly inside (0, 6): 0 at both edges.
    Relu6,
    /// `nn.Hardswish`; the backward takes the input.
    Hardswish,
    /// `nn.Hardsigmoid`; the backward takes the input.
    Hardsigmoid,
    /// `nn.LeakyReLU(negative_slope)`; the backward takes the input.
    LeakyRelu {
        /// The slope for inputs `<= 0`.
        negative_slope: f32,
    },
    /// `nn.ELU(alpha)`; the backward takes the input.
    Elu {
        /// The scale of the negative part.
        alpha: f32,
    },
    /// `nn.Sigmoid`; the backward takes the output.
    Sigmoid,
    /// `nn.Tanh`; the backward takes the output.
    Tanh,
    /// `nn.GELU(approximate='none')`; the backward takes the input.
    Gelu,
}

/// The C library's `erff`, which ATen's scalar GELU loop calls through `std::erf`.
fn erf(x: f32) -> f32 {
    // SAFETY: C's `float erff(float)`: one float in, one float out, no pointers, so this
    // declaration matches the C library's symbol on every platform.
    unsafe extern "C" {
        fn erff(x: f32) -> f32;
    }
    // SAFETY: `erff` is a pure function of one float from the C math library, which the Rust
    // standard library links on every platform it supports.
    unsafe { erff(x) }
}

/// `1 / sqrt(2)` (ATen's `M_SQRT1_2`), as f32.
const SQRT1_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// ATen's `kAlpha = M_2_SQRTPI * M_SQRT1_2 * 0.5 = 1 / sqrt(2 pi)`, as f32.
const GELU_ALPHA: f32 = (std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2 * 0.5) as f32;

impl Activation {
    /// True if [`Activation::backward`] takes the forward's output (ReLU, sigmoid, tanh), false
    /// if it takes the input.
    pub fn saves_output(self) -> bool {
        matches!(self, Activation::Relu | Activation::Sigmoid | Activation::Tanh)
    }

    /// The forward: qkernels' float activation (PyTorch's bits for ReLU, ReLU6, Hardswish,
    /// Hardsigmoid, LeakyReLU, sigmoid, tanh), ELU with the C library's `expm1f` and GELU as
    /// `x * 0.5 * (1 + erf(x / sqrt 2))` with its `erff` (ATen's scalar loops; its vector loops
    /// use SLEEF and its own erf polynomial, so these two agree with PyTorch to float rounding).
    ///
    /// ```
    /// use ndarray::{ArrayD, IxDyn};
    /// use qfake::grad::Activation;
    /// let x = ArrayD::from_shape_vec(IxDyn(&[3]), vec![-1.0, 0.5, 7.0]).unwrap();
    /// let y = Activation::Relu6.forward(&x)?;
    /// assert_eq!(y.into_raw_vec_and_offset().0, vec![0.0, 0.5, 6.0]);
    /// # Ok::<(), qgraph::GraphError>(())
    /// ```
    pub fn forward(self, input: &ArrayD<f32>) -> QFakeResult<ArrayD<f32>> {
        let x = to_vec(input);
        let kernel = match self {
            // ATen's `clamp_min(x, 0)` keeps -0 and NaN (qkernels' ReLU, for inference, gives +0).
            Activation::Relu => {
                return Ok(array(input.shape(), x.iter().map(|&v| if v < 0.0 { 0.0 } else { v }).collect()));
            }
            Activation::Relu6 => Kernel::Relu6,
            Activation::Hardswish => Kernel::Hardswish,
            Activation::Hardsigmoid => Kernel::Hardsigmoid,
            Activation::LeakyRelu { negative_slope } => Kernel::LeakyRelu { negative_slope },
            Activation::Elu { alpha } => Kernel::Elu { alpha },
            Activation::Sigmoid => Kernel::Sigmoid,
            Activation::Tanh => Kernel::Tanh,
            Activation::Gelu => {
                let y = x.iter().map(|&v| v * 0.5 * (1.0 + erf(v * SQRT1_2))).collect();
                return Ok(array(input.shape(), y));
            }
        };
        let mut y = vec![0.0f32; x.len()];
        float::activation(kernel, &x, &mut y, Isa::active())?;
        Ok(array(input.shape(), y))
    }

    /// The gradient of the input for `grad_output`, from the forward's input or output as
    /// [`Activation::saves_output`] says (`saved`, of `grad_output`'s shape), with ATen's
    /// boundary rules: ReLU passes where the output is `> 0`; ReLU6 where `0 < x < 6`;
    /// Hardswish is 0 at and below -3, `grad * (x / 3 + 0.5)` strictly inside (-3, 3), `grad`
    /// from 3 on;
    /// Hardsigmoid `grad / 6` strictly inside (-3, 3); LeakyReLU `grad` above 0,
    /// `grad * slope` at and below; ELU `grad * alpha * exp(x)` at and below 0; sigmoid
    /// `grad * (1 - y) * y`; tanh `grad * (1 - y * y)`; GELU
    /// `grad * (cdf + x * exp(-x^2 / 2) / sqrt(2 pi))`.
    ///
    /// ```
    /// use ndarray::{ArrayD, IxDyn};
    /// use qfake::grad::Activation;
    /// let x = ArrayD::from_shape_vec(IxDyn(&[4]), vec![0.0, 3.0, 6.0, -4.0]).unwrap();
    /// let g = ArrayD::from_elem(IxDyn(&[4]), 1.0);
    /// assert_eq!(Activation::Relu6.backward(&x, &g)?.into_raw_vec_and_offset().0, vec![0.0, 1.0, 0.0, 0.0]);
    /// # Ok::<(), qgraph::GraphError>(())
    /// ```
    pub fn backward(self, saved: &ArrayD<f32>, grad_output: &ArrayD<f32>) -> QFakeResult<ArrayD<f32>> {
        check_shape(CONTEXT, "grad_output", grad_output.shape(), saved.shape())?;
        if let Activation::Elu { alpha } | Activation::LeakyRelu { negative_slope: alpha } = self
            && !alpha.is_finite()
        {
            return Err(bad(CONTEXT, "alpha / negative_slope", alpha, "must be finite"));
        }
        let (s, g) = (to_vec(saved), to_vec(grad_output));
        let vector_len = float::sigmoid_vector_len(s.len());
        let out =
            s.iter().zip(&g).enumerate().map(|(i, (&x, &g))| self.grad_one(x, g, i < vector_len)).collect();
        Ok(array(saved.shape(), out))
    }

    /// One element of [`Activation::backward`]; `vector` is true where ATen's vector loop
    /// computes it (SLEEF's `exp` for ELU and GELU) rather than its scalar tail.
    fn grad_one(self, x: f32, g: f32, vector: bool) -> f32 {
        let exp = |v: f32| if vector { qcore::math::exp_u10(v) } else { v.exp() };
        match self {
            Activation::Relu => {
                if x <= 0.0 {
                    0.0
                } else {
                    g
                }
            }
            Activation::Relu6 => {
                if x <= 0.0 || x >= 6.0 {
                    0.0
                } else {
                    g
                }
            }
            Activation::Hardswish => {
                if x <= -3.0 {
                    0.0
                } else if x < 3.0 {
                    g * (x / 3.0 + 0.5)
                } else {
                    g
                }
            }
            Activation::Hardsigmoid => {
                if x > -3.0 && x < 3.0 {
                    g * (1.0 / 6.0)
                } else {
                    0.0
                }
            }
            Activation::LeakyRelu { negative_slope } => {
                if x > 0.0 {
                    g
                } else {
                    g * negative_slope
                }
            }
            Activation::Elu { alpha } => {
                if x > 0.0 {
                    g
                } else {
                    g * alpha * exp(x)
                }
            }
            Activation::Sigmoid => g * (1.0 - x) * x,
            // The compiler contracts `1 - y * y` into one fused multiply-add in ATen's kernel.
            Activation::Tanh => g * (-x).mul_add(x, 1.0),
            Activation::Gelu => {
                let cdf = 0.5 * (1.0 + erf(x * SQRT1_2));
                let pdf = GELU_ALPHA * exp(x * x * -0.5);
                g * (cdf + x * pdf)
            }
        }
    }
}
