//! Golden tests: quantized pooling and upsampling (NHWC) against PyTorch 2.15 / fbgemm fixtures
//! (`tools/golden/gen_elementwise.py`, file `elementwise_pool`), on every supported tier.
// Naive references index like the formulas they transcribe.
#![allow(clippy::needless_range_loop)]

#[path = "elementwise_common/mod.rs"]
mod elementwise_common;

use elementwise_common::{Fixture, compare, load, name, qp, u8s, usizes};
use qkernels::elementwise::QElem;
use qkernels::pool::{self, AvgPool2d, Window};
use qkernels::{Isa, MemoryFormat};
use serde_json::Value;

fn get<T: QElem>(fx: &Fixture, case: &str, field: &str) -> Vec<T> {
    u8s(fx, case, field).into_iter().map(|b| T::from_index(usize::from(b))).collect()
}

fn pair(v: &Value) -> [usize; 2] {
    let u = usizes(v);
    [u[0], u[1]]
}

/// Runs one case on every tier; returns the number of elements off by one (only allowed where
/// the case's op documents it) and the number of elements compared.
fn run_case<T: QElem>(fx: &Fixture, case: &Value) -> (usize, usize) {
    let name = name(case);
    let x: Vec<T> = get(fx, case["input"].as_str().unwrap(), "x");
    let shape = usizes(&case["in_shape"]);
    let expected: Vec<T> = get(fx, name, "q");
    let expected_shape = elementwise_common::shape(fx, name, "q");
    let q = qp(&case["in"]);
    let mut off = 0;
    for isa in Isa::supported() {
        let mut out = vec![T::default(); expected.len()];
        let oshape = match case["op"].as_str().unwrap() {
            "max_pool2d" => {
                let w = Window {
                    kernel: pair(&case["kernel"]),
                    stride: pair(&case["stride"]),
                    padding: pair(&case["padding"]),
                    dilation: pair(&case["dilation"]),
                    ceil_mode: case["ceil_mode"].as_bool().unwrap(),
                };
                pool::max_pool2d(&x, &shape, &w, &mut out, isa)
            }
            "avg_pool2d" => {
                let opts = AvgPool2d {
                    window: Window {
                        kernel: pair(&case["kernel"]),
                        stride: pair(&case["stride"]),
                        padding: pair(&case["padding"]),
                        dilation: [1, 1],
                        ceil_mode: case["ceil_mode"].as_bool().unwrap(),
                    },
                    count_include_pad: case["count_include_pad"].as_bool().unwrap(),
                    divisor_override: case["divisor_override"].as_i64(),
                };
                pool::avg_pool2d(MemoryFormat::ChannelsLast, &x, &shape, q, &opts, &mut out, isa)
            }
            "adaptive_avg_pool2d" => {
                pool::adaptive_avg_pool2d(&x, &shape, q, pair(&case["output_size"]), &mut out, isa)
            }
            "upsample_nearest" => {
                pool::upsample_nearest2d(&x, &shape, pair(&case["output_size"]), &mut out, isa)
            }
            "upsample_bilinear" => pool::upsample_bilinear2d(
                MemoryFormat::ChannelsLast,
                &x,
                &shape,
                q,
                pair(&case["output_size"]),
                case["align_corners"].as_bool().unwrap(),
                &mut out,
                isa,
            ),
            other => panic!("{other}"),
        }
        .unwrap();
        assert_eq!(oshape, expected_shape, "{name}: output shape");
        let got: Vec<i32> = out.iter().map(|v| v.to_i32()).collect();
        let want: Vec<i32> = expected.iter().map(|v| v.to_i32()).collect();
        off += compare(&format!("{name} on {isa}"), &got, &want, 0);
    }
    (off, expected.len())
}

#[test]
fn pooling_and_upsampling_match_pytorch() {
    let fx = load("elementwise_pool");
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for case in fx.cases.iter().filter(|c| c["op"] != "input") {
        match case["dtype"].as_str().unwrap() {
            "quint8" => run_case::<u8>(&fx, case),
            _ => run_case::<i8>(&fx, case),
        };
        *counts.entry(case["op"].as_str().unwrap().to_string()).or_default() += 1;
    }
    println!("{counts:?}");
    assert_eq!(counts["max_pool2d"], 2 * 2 * 5);
    assert_eq!(counts["avg_pool2d"], 2 * 2 * 6);
    assert_eq!(counts["adaptive_avg_pool2d"], 2 * 2 * 6);
    assert_eq!(counts["upsample_nearest"], 2 * 2 * 4);
    assert_eq!(counts["upsample_bilinear"], 2 * 2 * 8);
}
