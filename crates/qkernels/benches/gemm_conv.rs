//! Int8 GEMM and convolution throughput (ops = 2 x MACs) at 1 and 2 threads.
//!
//! * `gemm/resnet50_<M>x<N>x<K>/t<T>`: the distinct GEMM shapes of ResNet-50 (kernels.md §8.1),
//!   u8 output, per-channel symmetric weights, activations of zero point 128 (full 8-bit range).
//! * `conv/<case>/t<T>`: ResNet-18 convolutions and MobileNetV2 depthwise and pointwise layers from
//!   `tools/bench/conv_shapes.json`, the shapes `tools/bench/torch_conv.py` times in PyTorch.
//!
//! `QKERNELS_ISA` caps the tier (e.g. `QKERNELS_ISA=avx2` for the AVX2 path).

use qtest::random_bytes;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qkernels::conv::{ConvParams, PackedConv};
use qkernels::gemm::{Output, PackedWeights, WeightQParams, gemm};

const GEMM_SHAPES: [(usize, usize, usize); 21] = [
    (12544, 64, 147),
    (3136, 64, 64),
    (3136, 64, 576),
    (3136, 256, 64),
    (3136, 64, 256),
    (3136, 128, 256),
    (784, 128, 1152),
    (784, 512, 128),
    (784, 512, 256),
    (784, 128, 512),
    (784, 256, 512),
    (196, 256, 2304),
    (196, 1024, 256),
    (196, 1024, 512),
    (196, 256, 1024),
    (196, 512, 1024),
    (49, 512, 4608),
    (49, 2048, 512),
    (49, 2048, 1024),
    (49, 512, 2048),
    (1, 1000, 2048),
];

fn pools() -> Vec<(usize, rayon::ThreadPool)> {
    [1, 2].into_iter().map(|t| (t, qtest::thread_pool(t))).collect()
}

fn bench_gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("gemm");
    group.sample_size(10);
    let pools = pools();
    for &(m, n, k) in &GEMM_SHAPES {
        let a = random_bytes(m * k, 1);
        let w: Vec<i8> = random_bytes(n * k, 2).into_iter().map(|x| x as i8).collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
        let q = WeightQParams::per_channel((0..n).map(|i| 0.001 + i as f64 * 1e-6).collect());
        let packed = PackedWeights::new(&w, n, k, &q, Some(&bias)).unwrap();
        let pipeline = packed.output_u8(0.02, 128, 0.05 * (k as f64).sqrt(), 100, true).unwrap();
        let mut out = vec![0u8; m * n];
        group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
        for (threads, pool) in &pools {
            let id = BenchmarkId::new(format!("resnet50_{m}x{n}x{k}"), format!("t{threads}"));
            group.bench_function(id, |b| {
                pool.install(|| {
                    b.iter(|| gemm(black_box(&a), m, &packed, &pipeline, Output::U8(&mut out)).unwrap())
                })
            });
        }
    }
    // 7-bit activations (PyTorch's reduce_range): the AVX2 tier's vpmaddubsw path applies.
    for &(m, n, k) in &[(3136, 64, 576), (784, 128, 1152), (196, 256, 2304)] {
        let a: Vec<u8> = random_bytes(m * k, 1).into_iter().map(|x| x >> 1).collect();
        let w: Vec<i8> = random_bytes(n * k, 2).into_iter().map(|x| x as i8).collect();
        let q = WeightQParams::per_channel((0..n).map(|i| 0.001 + i as f64 * 1e-6).collect());
        let packed = PackedWeights::new(&w, n, k, &q, None).unwrap();
        let pipeline = packed.output_u8(0.02, 64, 0.05 * (k as f64).sqrt(), 100, true).unwrap();
        let mut out = vec![0u8; m * n];
        group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
        for (threads, pool) in &pools {
            let id = BenchmarkId::new(format!("resnet50_{m}x{n}x{k}_act7"), format!("t{threads}"));
            group.bench_function(id, |b| {
                pool.install(|| {
                    b.iter(|| gemm(black_box(&a), m, &packed, &pipeline, Output::U8(&mut out)).unwrap())
                })
            });
        }
    }
    group.finish();
}

fn usizes(v: &serde_json::Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

fn bench_conv(c: &mut Criterion) {
    let shapes: serde_json::Value =
        serde_json::from_str(include_str!("../../../tools/bench/conv_shapes.json")).unwrap();
    let mut group = c.benchmark_group("conv");
    group.sample_size(10);
    let pools = pools();
    for case in shapes["cases"].as_array().unwrap() {
        let name = case["case"].as_str().unwrap();
        let get = |key: &str| case[key].as_u64().unwrap() as usize;
        let (batch, ic, oc, groups) = (get("batch"), get("in_channels"), get("out_channels"), get("groups"));
        let (input, kernel) = (usizes(&case["input"]), usizes(&case["kernel"]));
        let params = ConvParams::new(ic, oc, &kernel)
            .stride(&usizes(&case["stride"]))
            .padding(&usizes(&case["padding"]))
            .groups(groups);
        let out_spatial = params.output_spatial(&input).unwrap();
        let taps: usize = kernel.iter().product();
        let w: Vec<i8> = random_bytes(oc * ic / groups * taps, 3).into_iter().map(|x| x as i8).collect();
        let q = WeightQParams::per_channel((0..oc).map(|i| 0.001 + i as f64 * 1e-6).collect());
        let bias: Vec<f32> = (0..oc).map(|i| i as f32 * 0.01).collect();
        let packed = PackedConv::new(params, &w, &q, Some(&bias)).unwrap();
        let pipeline =
            packed.output_u8(0.02, 128, 0.05 * ((ic / groups * taps) as f64).sqrt(), 100, true).unwrap();
        let x = random_bytes(batch * input.iter().product::<usize>() * ic, 4);
        let pixels: usize = batch * out_spatial.iter().product::<usize>();
        let mut out = vec![0u8; pixels * oc];
        group.throughput(Throughput::Elements(2 * (pixels * oc * ic / groups * taps) as u64));
        for (threads, pool) in &pools {
            let id = BenchmarkId::new(name, format!("t{threads}"));
            group.bench_function(id, |b| {
                pool.install(|| {
                    b.iter(|| {
                        packed.run(black_box(&x), batch, &input, &pipeline, Output::U8(&mut out)).unwrap()
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_gemm, bench_conv);
criterion_main!(benches);
