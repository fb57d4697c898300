//! Recurrent models, batch 1, at 1 and 2 threads (`recurrent/<case>/t<threads>`):
//!
//! - `lstm_float_I256_H256_L2_bi_T50`: `nn.LSTM(256, 256, num_layers=2, bidirectional=True)` on a
//!   `[50, 1, 256]` sequence, and `lstm_qint8_...` the same after `quantize_dynamic` (qint8,
//!   the default dynamic table);
//! - `crnn_float`, `crnn_int8`: `qgraph::models::crnn(100)` on one `[1, 1, 32, 128]` line, float
//!   and quantized by `models::quantize_crnn` (static CNN, dynamic LSTM and Linear).
//!
//! PyTorch's side is `tools/bench/torch_recurrent.py` (same shapes; float, and int8 under the
//! engines "x86" and "fbgemm").

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ndarray::{ArrayD, IxDyn};
use qgraph::models::{self, crnn_line};
use qgraph::nn::{LSTM, RnnOptions};
use qgraph::workflow::{DynamicDType, DynamicQConfigSpec, quantize_dynamic};
use qgraph::{Module, Value, eval, load_state_dict};

const THREADS: [usize; 2] = [1, 2];
const LSTM_CASE: &str = "I256_H256_L2_bi_T50";

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("rayon thread pool")
}

/// Times `model` on `x` at every thread count as `recurrent/<case>/t<threads>`.
fn bench_model(c: &mut Criterion, case: &str, model: &dyn Module, x: &ArrayD<f32>) {
    let mut group = c.benchmark_group("recurrent");
    group.sample_size(20);
    for threads in THREADS {
        let pool = pool(threads);
        group.bench_function(BenchmarkId::new(case, format!("t{threads}")), |b| {
            pool.install(|| b.iter(|| model.forward(Value::Float(black_box(x).clone())).expect("forward")))
        });
    }
    group.finish();
}

fn bench_lstm(c: &mut Criterion) {
    let options = RnnOptions { num_layers: 2, bidirectional: true, ..RnnOptions::new(256, 256) };
    let mut lstm: Box<dyn Module> = Box::new(LSTM::new(options).expect("LSTM"));
    eval(&mut lstm);
    let x = ArrayD::from_shape_vec(IxDyn(&[50, 1, 256]), models::random_f32s(50 * 256, 7)).expect("shape");
    bench_model(c, &format!("lstm_float_{LSTM_CASE}"), lstm.as_ref(), &x);
    quantize_dynamic(&mut lstm, DynamicQConfigSpec::Default, DynamicDType::QInt8).expect("quantize_dynamic");
    assert_eq!(lstm.type_name(), "DynamicQuantizedLSTM", "quantize_dynamic swaps the LSTM");
    bench_model(c, &format!("lstm_qint8_{LSTM_CASE}"), lstm.as_ref(), &x);
}

fn bench_crnn(c: &mut Criterion) {
    let mut model = models::crnn(100).expect("CRNN");
    eval(&mut model);
    let state = models::deterministic_state_dict(model.as_ref()).expect("weights");
    load_state_dict(&mut model, state).expect("load");
    let x = crnn_line(999);
    bench_model(c, "crnn_float", model.as_ref(), &x);
    models::quantize_crnn(&mut model, (500..504).map(crnn_line)).expect("quantize");
    bench_model(c, "crnn_int8", model.as_ref(), &x);
}

criterion_group!(benches, bench_lstm, bench_crnn);
criterion_main!(benches);
