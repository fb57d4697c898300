//! `qtk` on an RGB model from the zoo (MobileNetV2, residual adds through FloatFunctional) with
//! calibration images in a folder, preprocessed by torchvision's eval transform.

mod common;

use common::{arg, qtk_ok};
use qgraph::io;

#[test]
fn mobilenet_from_a_folder_of_rgb_images() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = qgraph::models::mobilenet_v2(10).unwrap();
    let weights = qgraph::models::deterministic_state_dict(model.as_ref()).unwrap();
    qgraph::load_state_dict(&mut model, weights).unwrap();
    qgraph::eval(&mut model);
    let float = dir.path().join("mobilenet.qtk");
    io::save(model.as_ref(), &float).unwrap();

    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for i in 0..5u32 {
        // Wider than high, and not of the model's size: resize and crop both matter.
        let img = image::RgbImage::from_fn(48 + i, 40, |x, y| {
            image::Rgb([(x * 5 + i * 20) as u8, (y * 6) as u8, ((x + y) * 3 + i * 7) as u8])
        });
        let name = if i % 2 == 0 { format!("img{i}.png") } else { format!("img{i}.jpg") };
        img.save(images.join(name)).unwrap();
    }
    let out = dir.path().join("mobilenet-int8.qtk");
    let run = qtk_ok(&[
        "quantize",
        arg(&float),
        "--calib",
        arg(&images),
        "--size",
        "32x32",
        "--batch",
        "2",
        "-o",
        arg(&out),
    ]);
    let report = &run.stdout;
    assert!(
        report.starts_with("per-layer SQNR against the float model, on 5 samples (3 batches)\n"),
        "{report}"
    );
    for (path, ty) in [
        ("quant", "Quantize"),
        ("features.0.0", "QuantizedConvReLU2d"),
        ("features.3.skip_add", "QFunctional"),
        ("classifier.1", "QuantizedLinear"),
    ] {
        let line = report
            .lines()
            .find(|l| l.split_whitespace().next() == Some(path))
            .unwrap_or_else(|| panic!("{path}\n{report}"));
        assert_eq!(line.split_whitespace().nth(1), Some(ty), "{line}");
        // The free-running output SQNR.
        let db: f64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
        assert!(db.is_finite() && db > 0.0, "{line}");
    }
    assert!(report.contains("top-1 agreement: ") && report.contains("/5 ("), "{report}");
    // In execution order: the QuantStub first, the classifier last (the DeQuantStub is not
    // compared, as in PyTorch's numeric suite).
    let rows: Vec<&str> = report
        .lines()
        .skip(3)
        .take_while(|l| !l.starts_with("worst layer:"))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!((rows[0], rows[rows.len() - 1]), ("quant", "classifier.1"), "{report}");
    // A block without a residual keeps an unused skip_add (torchvision does): it never ran, so
    // it has no row.
    assert!(!rows.contains(&"features.2.skip_add"), "{report}");

    let loaded = io::load(&out).unwrap();
    assert_eq!(loaded.get("features.1.conv.0.0").unwrap().type_name(), "QuantizedConvReLU2d");
    let json: serde_json::Value =
        serde_json::from_str(&qtk_ok(&["inspect", arg(&out), "--json"]).stdout).unwrap();
    assert_eq!(json["inputs"], serde_json::json!([{ "name": "input", "shape": [null, 3, 32, 32] }]));

    // run on one of the images: the output for 10 classes, and bench on the recorded shape.
    let run = qtk_ok(&["run", arg(&out), arg(&images.join("img1.jpg")), "--size", "32x32"]);
    assert!(run.stdout.starts_with("output: [1, 10] float32\ntop-5 (index, value):\n"), "{}", run.stdout);
    let run = qtk_ok(&["bench", arg(&out), "--iters", "3", "--warmup", "1", "--threads", "2"]);
    assert!(
        run.stdout.contains("input: [1, 3, 32, 32] float32") && run.stdout.contains("threads: 2\n"),
        "{}",
        run.stdout
    );
}
