//! Throughput of the scalar quantize / dequantize oracle on a ResNet activation (1x256x56x56).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qbench::activation;
use qcore::{QDType, quantize_per_channel, quantize_per_tensor};

fn quantize(c: &mut Criterion) {
    let shape = [1, 256, 56, 56];
    let x = activation(&shape);
    let elements = x.len() as u64;
    let mut group = c.benchmark_group("qcore");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(elements * 4));
    group.bench_function("quantize_per_tensor/quint8/1x256x56x56", |b| {
        b.iter(|| quantize_per_tensor(black_box(&x), 0.03, 128, QDType::QUInt8).unwrap())
    });
    let scales = vec![0.03; 256];
    let zero_points = vec![0; 256];
    group.bench_function("quantize_per_channel/qint8/1x256x56x56", |b| {
        b.iter(|| quantize_per_channel(black_box(&x), &scales, &zero_points, 1, QDType::QInt8).unwrap())
    });
    let q = quantize_per_tensor(&x, 0.03, 128, QDType::QUInt8).unwrap();
    group.throughput(Throughput::Bytes(elements));
    group.bench_function("dequantize/quint8/1x256x56x56", |b| b.iter(|| black_box(&q).dequantize()));
    group.finish();
}

criterion_group!(benches, quantize);
criterion_main!(benches);
