//! The seed example's float model, shared by the example (`examples/seed.rs`) and the
//! integration tests (`tests/common/mod.rs`), which include this file by path.

use qgraph::nn::{BatchNorm2d, Conv2d, Flatten, Linear, ReLU, Softmax};
use qgraph::{DeQuantStub, GraphResult, Module, QuantStub, Sequential};

/// QuantStub, two Conv+BN+ReLU, DeQuantStub, Flatten, Linear, Softmax, for `[N, 3, 28, 28]`
/// inputs.
pub fn seed_model() -> GraphResult<Box<dyn Module>> {
    Ok(Box::new(Sequential::new(vec![
        Box::new(QuantStub::new()),
        Box::new(Conv2d::new(3, 16, [3, 3]).padding([1, 1]).build()?),
        Box::new(BatchNorm2d::new(16)),
        Box::new(ReLU::new()),
        Box::new(Conv2d::new(16, 24, [3, 3]).padding([1, 1]).build()?),
        Box::new(BatchNorm2d::new(24)),
        Box::new(ReLU::new()),
        Box::new(DeQuantStub::new()),
        Box::new(Flatten::new(1, -1)),
        Box::new(Linear::new(24 * 28 * 28, 10, true)),
        Box::new(Softmax::new(1)),
    ])))
}
