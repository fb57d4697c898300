//! Benchmarks of the quantized elementwise ops (`elementwise/...`), quantized pooling and
//! resampling (`pool/...`) and f32 convolutions (`float/...`), on the shapes of
//! `tools/bench/elementwise_shapes.json` (shared with `tools/bench/torch_elementwise.py`), at 1
//! and 2 threads, on the tier `Isa::active()` picks (`QKERNELS_ISA` caps it).
//!
//! Memory-bound cases report `Throughput::Bytes(read + written)`; convolutions report
//! `Throughput::Elements(2 * MACs)`. Unary activations are timed as the layer above runs them: the
//! 256-entry table is built once (when the layer is prepared), each call applies it.

use qtest::random_bytes;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qkernels::elementwise::{self, CatInput, Dequant, Lut, PerTensor, Unary};
use qkernels::float::{self, ConvParams, ConvScratch};
use qkernels::pool::{self, AvgPool2d, Window};
use qkernels::{Isa, MemoryFormat};
use serde_json::Value;

const SHAPES: &str = include_str!("../../../tools/bench/elementwise_shapes.json");
const THREADS: [usize; 2] = [1, 2];

fn floats(n: usize, seed: u64) -> Vec<f32> {
    random_bytes(n, seed).into_iter().map(|b| f32::from(b) / 128.0 - 1.0).collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("size") as usize).collect()
}

fn pools() -> Vec<(usize, rayon::ThreadPool)> {
    THREADS
        .iter()
        .map(|&t| (t, rayon::ThreadPoolBuilder::new().num_threads(t).build().expect("pool")))
        .collect()
}

fn unary_op(op: &str) -> Option<Unary> {
    Some(match op {
        "hardswish" => Unary::Hardswish,
        "sigmoid" => Unary::Sigmoid,
        "tanh" => Unary::Tanh,
        "leaky_relu" => Unary::LeakyRelu { negative_slope: 0.01 },
        "elu" => Unary::Elu { alpha: 1.0, scale: 1.0, input_scale: 1.0 },
        _ => return None,
    })
}

fn bench_elementwise(c: &mut Criterion, cases: &[Value], isa: Isa) {
    let mut group = c.benchmark_group("elementwise");
    let (qa, qb, qo) = (PerTensor::new(0.05, 128), PerTensor::new(0.04, 120), PerTensor::new(0.08, 100));
    for case in cases.iter().filter(|c| c["group"] == "elementwise") {
        let name = case["case"].as_str().expect("case");
        let op = case["op"].as_str().expect("op");
        let shape = usizes(&case["shape"]);
        let n: usize = shape.iter().product();
        let a = random_bytes(n, 1);
        let b = random_bytes(n, 2);
        let mut out = vec![0u8; n * 2];
        for (threads, pool) in pools() {
            let id = BenchmarkId::new(name, format!("t{threads}"));
            match op {
                "add" | "add_relu" | "mul" => {
                    group.throughput(Throughput::Bytes(3 * n as u64));
                    let relu = op == "add_relu";
                    group.bench_function(id, |bch| {
                        pool.install(|| {
                            bch.iter(|| {
                                if op == "mul" {
                                    elementwise::mul(&a, qa, &b, qb, &mut out[..n], qo, relu, isa)
                                } else {
                                    elementwise::add(&a, qa, &b, qb, &mut out[..n], qo, relu, isa)
                                }
                                .expect("binary")
                            })
                        })
                    });
                }
                "relu" | "relu6" => {
                    group.throughput(Throughput::Bytes(2 * n as u64));
                    let u = if op == "relu" { Unary::Relu } else { Unary::Relu6 };
                    group.bench_function(id, |bch| {
                        pool.install(|| {
                            bch.iter(|| elementwise::unary(u, &a, qa, &mut out[..n], qa, isa).expect("unary"))
                        })
                    });
                }
                "add_scalar" | "mul_scalar" => {
                    group.throughput(Throughput::Bytes(2 * n as u64));
                    // 100.0 at scale 0.05 moves the zero point out of range: the data is requantized.
                    group.bench_function(id, |bch| {
                        pool.install(|| {
                            bch.iter(|| {
                                if op == "add_scalar" {
                                    elementwise::add_scalar(&a, qa, 100.0, false, &mut out[..n], isa)
                                } else {
                                    elementwise::mul_scalar(&a, qa, -0.5, false, &mut out[..n], isa)
                                }
                                .expect("scalar op")
                            })
                        })
                    });
                }
                "cat" => {
                    let inputs = case["inputs"].as_u64().expect("inputs") as usize;
                    let dim = case["dim"].as_u64().expect("dim") as usize;
                    let datas: Vec<Vec<u8>> = (0..inputs).map(|i| random_bytes(n, 10 + i as u64)).collect();
                    let qs = [qa, qb, qo, qa];
                    group.throughput(Throughput::Bytes(2 * (inputs * n) as u64));
                    group.bench_function(id, |bch| {
                        let list: Vec<CatInput<'_, u8>> = datas
                            .iter()
                            .enumerate()
                            .map(|(i, d)| CatInput { data: d, shape: &shape, q: qs[i % 4] })
                            .collect();
                        pool.install(|| {
                            bch.iter(|| {
                                elementwise::cat(
                                    &list,
                                    dim,
                                    &mut out[..inputs * n],
                                    qa,
                                    false,
                                    Dequant::Plain,
                                    isa,
                                )
                                .expect("cat")
                            })
                        })
                    });
                }
                other => {
                    let u = unary_op(other).unwrap_or_else(|| panic!("unknown op {other}"));
                    let out_q = if u.output_qparams_free() {
                        qo
                    } else {
                        u.output_qparams(qa, qcore::QDType::QUInt8)
                    };
                    let lut = Lut::<u8>::unary(u, qa, out_q).expect("lut");
                    group.throughput(Throughput::Bytes(2 * n as u64));
                    group.bench_function(id, |bch| {
                        pool.install(|| {
                            bch.iter(|| lut.apply(black_box(&a), &mut out[..n], isa).expect("lut"))
                        })
                    });
                }
            }
        }
    }
    group.finish();
}

fn bench_pool(c: &mut Criterion, cases: &[Value], isa: Isa) {
    let mut group = c.benchmark_group("pool");
    let q = PerTensor::new(0.05, 7);
    for case in cases.iter().filter(|c| c["group"] == "pool") {
        let name = case["case"].as_str().expect("case");
        let op = case["op"].as_str().expect("op");
        let s = usizes(&case["shape"]);
        // NCHW in the shapes file; the kernels take NHWC.
        let shape = [s[0], s[2], s[3], s[1]];
        let n: usize = shape.iter().product();
        let x = random_bytes(n, 3);
        let k = case["kernel"].as_u64().unwrap_or(1) as usize;
        let st = case["stride"].as_u64().unwrap_or(1) as usize;
        let pd = case["padding"].as_u64().unwrap_or(0) as usize;
        let window = Window {
            kernel: [k, k],
            stride: [st, st],
            padding: [pd, pd],
            dilation: [1, 1],
            ceil_mode: false,
        };
        let osz = match op {
            "max_pool2d" | "avg_pool2d" => window.output_size("bench", [shape[1], shape[2]]).expect("window"),
            _ => {
                let o = usizes(&case["output_size"]);
                [o[0], o[1]]
            }
        };
        let out_len = shape[0] * osz[0] * osz[1] * shape[3];
        let mut out = vec![0u8; out_len];
        for (threads, pool) in pools() {
            group.throughput(Throughput::Bytes((n + out_len) as u64));
            let id = BenchmarkId::new(name, format!("t{threads}"));
            group.bench_function(id, |bch| {
                pool.install(|| {
                    bch.iter(|| {
                        match op {
                            "max_pool2d" => pool::max_pool2d(&x, &shape, &window, &mut out, isa),
                            "avg_pool2d" => {
                                let opts =
                                    AvgPool2d { window, count_include_pad: true, divisor_override: None };
                                pool::avg_pool2d(
                                    MemoryFormat::ChannelsLast,
                                    &x,
                                    &shape,
                                    q,
                                    &opts,
                                    &mut out,
                                    isa,
                                )
                            }
                            "adaptive_avg_pool2d" => {
                                pool::adaptive_avg_pool2d(&x, &shape, q, osz, &mut out, isa)
                            }
                            "upsample_nearest" => pool::upsample_nearest2d(&x, &shape, osz, &mut out, isa),
                            "upsample_bilinear" => pool::upsample_bilinear2d(
                                MemoryFormat::ChannelsLast,
                                &x,
                                &shape,
                                q,
                                osz,
                                false,
                                &mut out,
                                isa,
                            ),
                            other => panic!("unknown op {other}"),
                        }
                        .expect("pool")
                    })
                })
            });
        }
    }
    group.finish();
}

fn bench_float(c: &mut Criterion, cases: &[Value], isa: Isa) {
    let mut group = c.benchmark_group("float");
    for case in cases.iter().filter(|c| c["group"] == "float") {
        let name = case["case"].as_str().expect("case");
        let (n, ci, co) = (
            case["batch"].as_u64().expect("batch") as usize,
            case["in_channels"].as_u64().expect("in") as usize,
            case["out_channels"].as_u64().expect("out") as usize,
        );
        let groups = case["groups"].as_u64().expect("groups") as usize;
        let (hw, k, s, p) = (
            usizes(&case["input"]),
            usizes(&case["kernel"]),
            usizes(&case["stride"]),
            usizes(&case["padding"]),
        );
        let in_shape = [n, ci, hw[0], hw[1]];
        let w_shape = [co, ci / groups, k[0], k[1]];
        let params = ConvParams { stride: [s[0], s[1]], padding: [p[0], p[1]], dilation: [1, 1], groups };
        let oshape = float::conv_output_shape(&in_shape, &w_shape, &params).expect("shape");
        let x = floats(in_shape.iter().product(), 4);
        let w = floats(w_shape.iter().product(), 5);
        let bias = floats(co, 6);
        let mut out = vec![0.0f32; oshape.iter().product()];
        let macs = oshape.iter().product::<usize>() * (ci / groups) * k[0] * k[1];
        let mut scratch = ConvScratch::default();
        for (threads, pool) in pools() {
            group.throughput(Throughput::Elements(2 * macs as u64));
            let id = BenchmarkId::new(name, format!("t{threads}"));
            group.bench_function(id, |bch| {
                pool.install(|| {
                    bch.iter(|| {
                        float::conv::<2>(
                            &x,
                            &in_shape,
                            &w,
                            &w_shape,
                            Some(&bias),
                            &params,
                            &mut out,
                            &mut scratch,
                            isa,
                        )
                        .expect("conv")
                    })
                })
            });
        }
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let doc: Value = serde_json::from_str(SHAPES).expect("elementwise_shapes.json");
    let cases = doc["cases"].as_array().expect("cases");
    let isa = Isa::active();
    bench_elementwise(c, cases, isa);
    bench_pool(c, cases, isa);
    bench_float(c, cases, isa);
}

criterion_group!(group, benches);
criterion_main!(group);
