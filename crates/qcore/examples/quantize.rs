//! Quantizes a small tensor per tensor and per channel and prints it as PyTorch would.
//!
//! `cargo run --release -p qcore --example quantize`

use ndarray::array;
use qcore::{QDType, quantize_per_channel, quantize_per_tensor};

fn main() -> Result<(), qcore::QError> {
    let x = array![0.7f32, 0.5, -0.7];
    let q = quantize_per_tensor(&x, 0.25, 4, QDType::QUInt8)?;
    println!("x = {x}");
    println!("quantize_per_tensor(x, scale=0.25, zero_point=4, dtype=torch.quint8):\n{q}");
    println!("int_repr: {}", q.int_repr().to_i32());

    let w = array![[0.1f32, -0.2, 0.3], [1.5, -2.5, 0.25]];
    let qw = quantize_per_channel(&w, &[0.01, 0.02], &[0, 0], 0, QDType::QInt8)?;
    println!(
        "\nquantize_per_channel(w, scales=[0.01, 0.02], zero_points=[0, 0], axis=0, dtype=torch.qint8):\n{qw}"
    );
    Ok(())
}
