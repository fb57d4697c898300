//! Throughput of the scalar quantize / dequantize oracle on a ResNet activation (1x256x56x56).
//! Bytes counted are bytes read plus bytes written (tools/bench/README.md).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qbench::activation;
use qcore::{QDType, quantize_per_channel, quantize_per_tensor};

fn quantize(c: &mut Criterion) {
    let shape = [1, 256, 56, 56];
    let x = activation(&shape);
    // f32 in, one byte out (and the reverse for dequantize).
    let bytes = x.len() as u64 * 5;
    let mut group = c.benchmark_group("qcore");
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("quantize_per_tensor_quint8_1x256x56x56/t1", |b| {
        b.iter(|| quantize_per_tensor(black_box(&x), 0.03, 128, QDType::QUInt8).unwrap())
    });
    let scales = vec![0.03; 256];
    let zero_points = vec![0; 256];
    group.bench_function("quantize_per_channel_qint8_1x256x56x56/t1", |b| {
        b.iter(|| quantize_per_channel(black_box(&x), &scales, &zero_points, 1, QDType::QInt8).unwrap())
    });
    let q = quantize_per_tensor(&x, 0.03, 128, QDType::QUInt8).unwrap();
    group.bench_function("dequantize_quint8_1x256x56x56/t1", |b| b.iter(|| black_box(&q).dequantize()));
    group.finish();
}

criterion_group!(benches, quantize);
criterion_main!(benches);
