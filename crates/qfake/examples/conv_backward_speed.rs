//! Times `qfake::grad::conv_backward` (input, weight and bias gradients) on the digits model's
//! second convolution (N = 64, 16 -> 32 channels, 8x8, 3x3, padding 1) on one thread; compare
//! with `torch.ops.aten.convolution_backward` under `torch.set_num_threads(1)`.
//!
//! ```text
//! cargo run --release -p qfake --example conv_backward_speed
//! ```

use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use qfake::grad::{ConvNeeds, conv_backward, conv_forward};
use qgraph::nn::Conv2d;

fn random(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let len = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), qtest::random_f32s(len, seed)).expect("length")
}

fn main() -> Result<(), qgraph::GraphError> {
    let options = Conv2d::new(16, 32, [3, 3]).padding([1, 1]).build()?.options().clone();
    let x = random(&[64, 16, 8, 8], 1);
    let w = random(&[32, 16, 3, 3], 2);
    let dy = random(&[64, 32, 8, 8], 3);
    let pool = qtest::thread_pool(1);
    let time = |what: &str, run: &(dyn Fn() -> Result<(), qgraph::GraphError> + Sync)| {
        pool.install(|| -> Result<(), qgraph::GraphError> {
            run()?;
            let reps = 50;
            let start = Instant::now();
            for _ in 0..reps {
                run()?;
            }
            let ms = start.elapsed().as_secs_f64() * 1e3 / reps as f64;
            println!("conv {what}: {ms:.3} ms (1 thread)");
            Ok(())
        })
    };
    time("forward", &|| conv_forward(&x, &w, None, &options).map(drop))?;
    time("backward (input, weight, bias)", &|| {
        conv_backward(&x, &w, &options, &dy, ConvNeeds::ALL).map(drop)
    })?;
    time("backward (weight, bias)", &|| {
        conv_backward(&x, &w, &options, &dy, ConvNeeds { input: false, weight: true, bias: true }).map(drop)
    })
}
