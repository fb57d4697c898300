//! A prepared model saves its observers' statistics: prepare, calibrate, save, load, calibrate
//! further and convert gives the model of the uninterrupted run, bit for bit, for each kind of
//! activation observer (fused modules, observed twice per forward, included).

use qgraph::io;
use qgraph::qconfig::{QConfig, default_qconfig, get_default_qconfig};
use qgraph::workflow::{Observed, ObserverModule};
use qgraph::{Module, QConfigMapping, Value, calibrate, convert, prepare};
use qobserve::ObserverSpec;

mod common;
use common::{RESNET_FUSE, random, small_resnet};

fn prepared(qconfig: &QConfig) -> Box<dyn Module> {
    let mut model = small_resnet();
    qgraph::fuse::fuse_modules(&mut model, RESNET_FUSE).unwrap();
    prepare(&mut model, &QConfigMapping::global(qconfig.clone())).unwrap();
    model
}

fn run(model: &dyn Module, seeds: std::ops::Range<u64>) {
    calibrate(model, seeds.map(|s| random(&[2, 3, 16, 16], 40 + s)), |_, _| {}).unwrap();
}

fn converted_bytes(mut model: Box<dyn Module>) -> (Vec<u8>, Vec<u32>) {
    convert(&mut model).unwrap();
    let y = model.forward(Value::from(random(&[2, 3, 16, 16], 7))).unwrap().into_float_lossy().unwrap();
    (io::to_bytes(model.as_ref()).unwrap(), y.iter().map(|v| v.to_bits()).collect())
}

fn observer_calls(model: &dyn Module) -> Vec<(String, usize)> {
    let observers = model.named_modules().into_iter();
    observers.filter_map(|(p, m)| m.downcast_ref::<ObserverModule>().map(|o| (p, o.calls()))).collect()
}

#[test]
fn calibration_resumes_from_a_saved_prepared_model() {
    let moving_average = QConfig {
        activation: ObserverSpec::moving_average_min_max(),
        weight: qobserve::defaults::default_weight_observer(),
    };
    for qconfig in [get_default_qconfig("x86").unwrap(), default_qconfig(), moving_average] {
        let uninterrupted = prepared(&qconfig);
        run(uninterrupted.as_ref(), 0..5);
        let first = prepared(&qconfig);
        run(first.as_ref(), 0..2);
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("prepared-{}.safetensors", qconfig.activation.name()));
        io::save(first.as_ref(), &path).unwrap();
        let resumed = io::load(&path).unwrap();
        assert_eq!(resumed.to_string(), first.to_string());
        assert_eq!(observer_calls(resumed.as_ref()), observer_calls(first.as_ref()));
        run(resumed.as_ref(), 2..5);
        assert_eq!(observer_calls(resumed.as_ref()), observer_calls(uninterrupted.as_ref()));
        assert_eq!(
            converted_bytes(resumed),
            converted_bytes(uninterrupted),
            "{}: the resumed calibration converts to the same model",
            qconfig.activation.name()
        );
    }
}

#[test]
fn an_observer_restores_only_into_the_module_it_was_made_for() {
    let model = prepared(&default_qconfig());
    run(model.as_ref(), 0..1);
    let fused = model.get("conv1").unwrap().downcast_ref::<Observed>().expect("observed");
    let observer = fused.observer().expect("an observer").clone();
    let inner = || fused.inner().clone_module();
    assert!(Observed::restore(inner(), default_qconfig(), observer.clone()).is_ok());
    let err = Observed::restore(inner(), get_default_qconfig("x86").unwrap(), observer.clone()).unwrap_err();
    assert!(err.to_string().contains("the qconfig's activation observer is HistogramObserver"), "{err}");
    // A fused module's observer sees each output twice; a restored one must say so.
    let state = observer.state();
    let once = ObserverModule::restore(&state, observer.calls(), 1).unwrap();
    let err = Observed::restore(inner(), default_qconfig(), once).unwrap_err();
    assert!(err.to_string().contains("observes each output 2 time(s)"), "{err}");
    assert!(ObserverModule::restore(&state, 0, 3).is_err());
}
