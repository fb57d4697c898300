//! The digits demo as a CI accuracy test: the quickstart's pipeline (`examples/digits/mod.rs`:
//! PyTorch's float weights, fuse, x86 default qconfig, calibration on the 1437 training images,
//! convert) must reach the test accuracies PyTorch recorded in `assets/digits/digits_cnn.json`.
//!
//! ```text
//! cargo test -p qgraph --test digits
//! ```
//!
//! Float convolutions sum in a different order than PyTorch's, so a borderline image may flip:
//! accuracies are compared to within one image of PyTorch's.

#[path = "../examples/digits/mod.rs"]
mod digits;

use digits::Demo;
use qgraph::io;

#[test]
fn digits_demo_matches_pytorch_accuracy() {
    let demo = Demo::run(|_, _| {}).expect("the digits pipeline runs");
    let n = demo.test_labels.len();
    assert_eq!(n, 360, "test set size");
    let (float, int8, agree) = (demo.float_correct(), demo.int8_correct(), demo.agreeing());
    let (torch_float, torch_int8) =
        (demo.images(demo.record.float_accuracy), demo.images(demo.record.int8_accuracy));
    eprintln!(
        "float {float}/{n}, int8 {int8}/{n}, agreement {agree}/{n}; PyTorch {}: float {torch_float}/{n}, int8 \
         {torch_int8}/{n}",
        demo.record.torch_version
    );

    assert!(float.abs_diff(torch_float) <= 1, "float: {float}/{n} correct, PyTorch {torch_float}/{n}");
    let points = 100.0 * (float as f64 - int8 as f64).abs() / n as f64;
    assert!(points <= 0.5, "int8 {int8}/{n} is {points:.2} points from float {float}/{n}");
    assert!(int8.abs_diff(torch_int8) <= 1, "int8: {int8}/{n} correct, PyTorch {torch_int8}/{n}");
    assert!(agree * 100 >= n * 99, "top-1 agreement {agree}/{n} is below 99%");

    // What the quickstart reports next: the int8 file is smaller, and a saved and reloaded int8
    // model predicts the same classes.
    let float_bytes = io::to_bytes(demo.float_model.as_ref()).expect("float model saves");
    let int8_bytes = io::to_bytes(demo.int8_model.as_ref()).expect("int8 model saves");
    assert!(
        int8_bytes.len() * 2 < float_bytes.len(),
        "int8 {} bytes, float {}",
        int8_bytes.len(),
        float_bytes.len()
    );
    let reloaded = io::from_bytes(&int8_bytes).expect("int8 model loads");
    let predictions = digits::predict(reloaded.as_ref(), &demo.test_images).expect("reloaded model runs");
    assert_eq!(predictions, demo.int8_predictions, "the reloaded int8 model predicts differently");
}
