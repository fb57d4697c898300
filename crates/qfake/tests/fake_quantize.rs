//! The fake-quantize modules against PyTorch 2.15's (`tools/golden/gen_fake_quantize.py`): for
//! each configuration, four training steps, one with the observer disabled and one with fake
//! quantization disabled too; every output, input gradient, scale and zero point bit for bit, and
//! `extra_repr` character for character; for the learnable (LSQ) ones also the scale and zero-point
//! gradients.

use ndarray::{ArrayD, IxDyn};
use qcore::{QDType, QScheme};
use qfake::{
    FakeQuantize, FakeQuantizer, FixedQParamsFakeQuantize, FusedMovingAvgObsFakeQuantize,
    LearnableFakeQuantize, default_fake_quant, default_fixed_qparams_range_0to1_fake_quant,
    default_fixed_qparams_range_neg1to1_fake_quant, default_fused_act_fake_quant,
    default_fused_per_channel_wt_fake_quant, default_fused_wt_fake_quant,
    default_per_channel_weight_fake_quant, default_weight_fake_quant,
};
use qobserve::{ObserverSpec, UniformArgs};
use qtest::{Fixture, assert_bits_eq, assert_ints_eq};

fn fixture() -> Fixture {
    Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), "fake_quantize")
}

/// A fake quantizer of either kind, with its `extra_repr` and buffers.
enum Any {
    Plain(FakeQuantize),
    Fixed(FixedQParamsFakeQuantize),
    Fused(FusedMovingAvgObsFakeQuantize),
}

impl Any {
    fn quantizer(&mut self) -> &mut dyn FakeQuantizer {
        match self {
            Any::Plain(fq) => fq,
            Any::Fixed(fq) => fq,
            Any::Fused(fq) => fq,
        }
    }

    fn inner(&self) -> &FakeQuantize {
        match self {
            Any::Plain(fq) => fq,
            Any::Fixed(fq) => fq.inner(),
            Any::Fused(fq) => fq.inner(),
        }
    }

    fn extra_repr(&self) -> String {
        match self {
            Any::Plain(fq) => fq.extra_repr(),
            Any::Fixed(fq) => fq.extra_repr(),
            Any::Fused(fq) => fq.extra_repr(),
        }
    }
}

fn build(case: &str) -> Any {
    let plain = match case {
        "act_quint8_reduce_range" => default_fake_quant(),
        "weight_qint8_symmetric" => default_weight_fake_quant(),
        "weight_per_channel_qint8" => default_per_channel_weight_fake_quant(),
        "per_channel_affine_axis1" => FakeQuantize::new(ObserverSpec::MovingAveragePerChannelMinMax {
            averaging_constant: 0.01,
            ch_axis: 1,
            args: UniformArgs::per_channel().dtype(QDType::QInt8).quant_range(-128, 127),
        }),
        "qint8_4bit" => FakeQuantize::new(ObserverSpec::MovingAverageMinMax {
            averaging_constant: 0.01,
            args: UniformArgs::per_tensor().dtype(QDType::QInt8).quant_range(-8, 7),
        }),
        "fixed_neg1to1" => return Any::Fixed(default_fixed_qparams_range_neg1to1_fake_quant().unwrap()),
        "fixed_0to1" => return Any::Fixed(default_fixed_qparams_range_0to1_fake_quant().unwrap()),
        "fused_act_quint8" => return Any::Fused(default_fused_act_fake_quant().unwrap()),
        "fused_wt_qint8_symmetric" => return Any::Fused(default_fused_wt_fake_quant().unwrap()),
        "fused_per_channel_wt_qint8" => {
            return Any::Fused(default_fused_per_channel_wt_fake_quant().unwrap());
        }
        other => panic!("unknown case {other}"),
    };
    Any::Plain(plain.unwrap())
}

#[test]
fn training_steps_match_pytorch_bit_for_bit() {
    let fx = fixture();
    let plain: Vec<_> = fx.cases.iter().filter(|c| c.get("lsq").is_none()).collect();
    assert_eq!(plain.len(), 10);
    for case in plain {
        let name = qtest::name(case);
        let steps = case["steps"].as_u64().unwrap() as usize;
        let reprs = case["repr"].as_array().unwrap();
        let mut fq = build(name);
        for (step, expected_repr) in reprs.iter().enumerate().take(steps) {
            if step == steps - 2 {
                fq.quantizer().disable_observer();
            }
            if step == steps - 1 {
                fq.quantizer().disable_fake_quant();
            }
            let what = format!("step {step}");
            let x = fx.tensor::<f32>(name, &format!("x{step}"));
            let (y, ctx) = fq.quantizer().forward_train(&x).unwrap();
            let grads = fq.quantizer().backward(&ctx, &fx.tensor(name, &format!("g{step}"))).unwrap();
            assert!(grads.scale.is_none() && grads.zero_point.is_none());
            assert_bits_eq(name, &format!("{what} output"), &y, &fx.tensor(name, &format!("y{step}")));
            assert_bits_eq(
                name,
                &format!("{what} input grad"),
                &grads.input,
                &fx.tensor(name, &format!("dx{step}")),
            );
            let scale =
                ArrayD::from_shape_vec(IxDyn(&[fq.inner().scale().len()]), fq.inner().scale().to_vec())
                    .unwrap();
            assert_bits_eq(name, &format!("{what} scale"), &scale, &fx.tensor(name, &format!("scale{step}")));
            let zp: Vec<i32> = fq.inner().zero_point().iter().map(|&z| z as i32).collect();
            let zp = ArrayD::from_shape_vec(IxDyn(&[zp.len()]), zp).unwrap();
            assert_ints_eq(name, &format!("{what} zero point"), &zp, &fx.ints(name, &format!("zp{step}")));
            assert_eq!(fq.extra_repr(), expected_repr.as_str().unwrap(), "{name} {what} extra_repr");
        }
    }
}

#[test]
fn disabled_fake_quant_passes_values_and_gradients_through() {
    let mut fq = default_weight_fake_quant().unwrap();
    fq.disable_fake_quant();
    let x = ArrayD::from_shape_vec(IxDyn(&[3]), vec![0.123f32, -7.0, 1e-9]).unwrap();
    let (y, ctx) = fq.forward_train(&x).unwrap();
    assert_eq!(y, x);
    assert!(fq.observer().stats().range.is_some(), "the observer still sees x");
    let g = ArrayD::from_elem(IxDyn(&[3]), 2.5f32);
    assert_eq!(fq.backward(&ctx, &g).unwrap().input, g);
}

#[test]
fn clipped_values_block_the_gradient() {
    let mut fq = default_weight_fake_quant().unwrap();
    let x = ArrayD::from_shape_vec(IxDyn(&[2]), vec![-1.0f32, 1.0]).unwrap();
    fq.forward_train(&x).unwrap();
    fq.disable_observer();
    let wide = ArrayD::from_shape_vec(IxDyn(&[3]), vec![-5.0f32, 0.5, 5.0]).unwrap();
    let (_, ctx) = fq.forward_train(&wide).unwrap();
    let grads = fq.backward(&ctx, &ArrayD::ones(IxDyn(&[3]))).unwrap();
    assert_eq!(grads.input.as_slice().unwrap(), &[0.0, 1.0, 0.0]);
}

#[test]
fn bad_quant_ranges_are_errors() {
    let spec = |dtype, lo, hi| ObserverSpec::MovingAverageMinMax {
        averaging_constant: 0.01,
        args: UniformArgs::per_tensor().dtype(dtype).quant_range(lo, hi),
    };
    let err = FakeQuantize::new(spec(QDType::QInt8, 7, -8)).unwrap_err().to_string();
    assert!(err.contains("less than or equal"), "{err}");
    let err = FakeQuantize::new(spec(QDType::QInt8, -129, 127)).unwrap_err().to_string();
    assert!(err.contains("out of the range of"), "{err}");
    let err = FakeQuantize::new(spec(QDType::QUInt8, 0, 256)).unwrap_err().to_string();
    assert!(err.contains("out of the range of"), "{err}");
    assert_eq!(FakeQuantize::new(spec(QDType::QInt8, -8, 7)).unwrap().quant_range(), (-8, 7));
}

#[test]
fn bad_observers_and_qschemes_are_errors() {
    let err = FakeQuantize::new(ObserverSpec::placeholder()).unwrap_err().to_string();
    assert!(err.contains("computes no scale"), "{err}");
    let float_qparams = ObserverSpec::MovingAveragePerChannelMinMax {
        averaging_constant: 1.0,
        ch_axis: 0,
        args: UniformArgs::per_channel().qscheme(QScheme::PerChannelAffineFloatQParams),
    };
    // FakeQuantize takes float qparams (PyTorch's default_embedding_fake_quant); the fused
    // module, whose kernel takes integer zero points, does not.
    assert!(FakeQuantize::new(float_qparams.clone()).unwrap().is_float_qparams());
    let err = FusedMovingAvgObsFakeQuantize::new(float_qparams).unwrap_err().to_string();
    assert!(err.contains("qscheme") && err.contains("integer zero points"), "{err}");
    let symmetric_histogram = ObserverSpec::Histogram {
        bins: 2048,
        upsample_rate: 16,
        args: UniformArgs::per_tensor().qscheme(QScheme::PerChannelSymmetric),
    };
    let err = FakeQuantize::new(symmetric_histogram).unwrap_err().to_string();
    assert!(err.contains("qscheme") || err.contains("per tensor"), "{err}");
    let err = FixedQParamsFakeQuantize::new(ObserverSpec::moving_average_min_max()).unwrap_err().to_string();
    assert!(err.contains("FixedQParamsObserver"), "{err}");
    let err = FusedMovingAvgObsFakeQuantize::new(ObserverSpec::min_max()).unwrap_err().to_string();
    assert!(err.contains("MovingAverageMinMaxObserver"), "{err}");
    // The fused module computes parameters from the running range: none before any observation.
    let mut fused = default_fused_act_fake_quant().unwrap();
    fused.disable_observer();
    assert!(fused.forward_train(&ArrayD::zeros(IxDyn(&[2]))).is_err());
}

#[test]
fn bad_axes_and_shapes_are_errors() {
    let mut fq = FakeQuantize::new(ObserverSpec::MovingAveragePerChannelMinMax {
        averaging_constant: 0.01,
        ch_axis: 2,
        args: UniformArgs::per_channel().dtype(QDType::QInt8),
    })
    .unwrap();
    let x2 = ArrayD::<f32>::zeros(IxDyn(&[2, 3]));
    assert!(fq.forward_train(&x2).is_err(), "ch_axis 2 of a rank-2 input");
    fq.disable_observer();
    // Fake quantization with the initial one-element scale on three channels: an error, as in PyTorch.
    let x3 = ArrayD::<f32>::zeros(IxDyn(&[2, 2, 3]));
    let err = fq.forward_train(&x3).unwrap_err().to_string();
    assert!(err.contains("scale length"), "{err}");
    // A grad_out of another shape than the input.
    let mut fq = default_fake_quant().unwrap();
    let (_, ctx) = fq.forward_train(&x2).unwrap();
    let err = fq.backward(&ctx, &ArrayD::zeros(IxDyn(&[3, 2]))).unwrap_err().to_string();
    assert!(err.contains("grad_out shape"), "{err}");
}

fn build_lsq(case: &str) -> LearnableFakeQuantize {
    let per_tensor = |args| ObserverSpec::MovingAverageMinMax { averaging_constant: 0.01, args };
    let per_channel = |ch_axis, args| ObserverSpec::MovingAveragePerChannelMinMax {
        averaging_constant: 0.01,
        ch_axis,
        args,
    };
    let qint8 = UniformArgs::per_channel().dtype(QDType::QInt8);
    match case {
        "lsq_per_tensor_quint8" => {
            LearnableFakeQuantize::new(per_tensor(UniformArgs::per_tensor()), 0, 255, 1.0, 0.0, None, false)
        }
        "lsq_per_tensor_4bit_grad_scaling" => LearnableFakeQuantize::new(
            per_tensor(UniformArgs::per_tensor().dtype(QDType::QInt8)),
            -8,
            7,
            1.0,
            0.0,
            None,
            true,
        ),
        "lsq_per_channel_symmetric_grad_scaling" => LearnableFakeQuantize::new(
            per_channel(0, qint8.qscheme(QScheme::PerChannelSymmetric)),
            -128,
            127,
            1.0,
            0.0,
            Some(3),
            true,
        ),
        "lsq_per_channel_affine_axis1" => {
            LearnableFakeQuantize::new(per_channel(1, qint8), -128, 127, 1.0, 0.0, Some(33), false)
        }
        other => panic!("unknown case {other}"),
    }
    .unwrap()
}

fn vec1(v: &[f32]) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.to_vec()).unwrap()
}

#[test]
fn learnable_steps_and_gradients_match_pytorch_bit_for_bit() {
    let fx = fixture();
    let lsq: Vec<_> = fx.cases.iter().filter(|c| c.get("lsq").is_some()).collect();
    assert_eq!(lsq.len(), 4);
    for case in lsq {
        let name = qtest::name(case);
        let steps = case["steps"].as_u64().unwrap() as usize;
        let mut fq = build_lsq(name);
        for step in 0..steps {
            if step == steps - 2 {
                fq.disable_observer();
                let scale = fx.tensor::<f32>(name, "scale_set").into_raw_vec_and_offset().0;
                let zp = fx.tensor::<f32>(name, "zp_set").into_raw_vec_and_offset().0;
                fq.set_qparams(scale, zp).unwrap();
            }
            if step == steps - 1 {
                fq.disable_fake_quant();
            }
            let what = |t: &str| format!("step {step} {t}");
            let field = |t: &str| format!("{t}{step}");
            let x = fx.tensor::<f32>(name, &field("x"));
            let (y, ctx) = fq.forward_train(&x).unwrap();
            let grads = fq.backward(&ctx, &fx.tensor(name, &field("g"))).unwrap();
            assert_bits_eq(name, &what("output"), &y, &fx.tensor(name, &field("y")));
            assert_bits_eq(name, &what("input grad"), &grads.input, &fx.tensor(name, &field("dx")));
            assert_bits_eq(name, &what("scale"), &vec1(fq.scale()), &fx.tensor(name, &field("scale")));
            assert_bits_eq(name, &what("zero point"), &vec1(fq.zero_point()), &fx.tensor(name, &field("zp")));
            let expected_dscale = fx.tensor::<f32>(name, &field("dscale"));
            if expected_dscale.is_empty() {
                assert!(
                    grads.scale.is_none() && grads.zero_point.is_none(),
                    "{name} step {step}: no parameter grads"
                );
            } else {
                assert_bits_eq(name, &what("scale grad"), &grads.scale.unwrap(), &expected_dscale);
                let dzp = grads.zero_point.unwrap();
                assert_bits_eq(name, &what("zero point grad"), &dzp, &fx.tensor(name, &field("dzp")));
            }
        }
    }
}

#[test]
fn learnable_arguments_are_checked() {
    let spec = ObserverSpec::moving_average_min_max;
    let err = LearnableFakeQuantize::new(spec(), 5, 5, 1.0, 0.0, None, false).unwrap_err().to_string();
    assert!(err.contains("strictly less"), "{err}");
    let err = LearnableFakeQuantize::new(spec(), -1, 255, 1.0, 0.0, None, false).unwrap_err().to_string();
    assert!(err.contains("out of the range"), "{err}");
    let err = LearnableFakeQuantize::new(spec(), 0, 255, 1.0, 0.0, Some(0), false).unwrap_err().to_string();
    assert!(err.contains("positive"), "{err}");
    let err = LearnableFakeQuantize::new(ObserverSpec::histogram(), 0, 255, 1.0, 0.0, None, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("observer"), "{err}");
    let mut fq = LearnableFakeQuantize::new(spec(), 0, 255, 1.0, 0.0, None, false).unwrap();
    let (_, ctx) = fq.forward_train(&ArrayD::zeros(IxDyn(&[2, 3]))).unwrap();
    let err = fq.backward(&ctx, &ArrayD::zeros(IxDyn(&[6]))).unwrap_err().to_string();
    assert!(err.contains("grad_out shape"), "{err}");
    assert!(fq.set_qparams(vec![1.0, 2.0], vec![0.0]).is_err());
}

#[test]
fn module_forwards_as_pytorch_in_either_mode_clones_deeply_and_saves() {
    use qfake::FakeQuantModule;
    use qgraph::{Module, Value};
    let x = ArrayD::from_shape_vec(IxDyn(&[3]), vec![-1.0f32, 0.26, 2.0]).unwrap();
    for training in [false, true] {
        // PyTorch's fake quantizers ignore `training`: both modes observe and fake-quantize.
        let mut module = FakeQuantModule::new(Box::new(default_weight_fake_quant().unwrap()));
        module.set_training(training);
        assert_eq!(module.type_name(), "FakeQuantize");
        let mut reference = default_weight_fake_quant().unwrap();
        let expected = reference.forward_train(&x).unwrap().0;
        let y = module.forward(Value::Float(x.clone())).unwrap().into_float("t").unwrap();
        assert_bits_eq("module", "output", &y, &expected);
        assert_eq!(module.extra_repr(), reference.extra_repr());
        let copy = module.clone();
        module.forward(Value::Float(x.mapv(|v| v * 4.0))).unwrap();
        assert_eq!(copy.extra_repr(), reference.extra_repr(), "the clone keeps its own observer");
        assert_ne!(module.extra_repr(), reference.extra_repr());
        // Its state (observer statistics, parameters, flags) saves and loads.
        module.lock().disable_observer();
        let state = module.lock().state();
        let rebuilt = state.build().unwrap();
        assert_eq!(rebuilt.state(), state);
        assert_eq!(rebuilt.extra_repr(), module.extra_repr());
    }
}
