//! The learning-rate schedulers against PyTorch 2.15's `torch.optim.lr_scheduler`
//! (`tools/golden/gen_optim.py`, cases `sched_*`): the lr of each of 30 epochs bit for bit (and
//! the momentum `OneCycleLR` cycles), PyTorch's `state_dict` entries after 12 steps, and a
//! checkpoint taken there that resumes the same sequence.

use qfake::optim::{LrScheduler, Optimizer, Schedule, Sgd};
use qgraph::nn::Linear;
use qgraph::{Module, Sequential};
use qtest::{Fixture, f64_of};
use serde_json::{Value, json};

fn fixture() -> Fixture {
    Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), "optim")
}

/// The case's schedule: its PyTorch arguments, with PyTorch's defaults for those it leaves out.
fn schedule(case: &Value) -> Schedule {
    let defaults = match case["scheduler"].as_str().unwrap() {
        "CosineAnnealingLR" => json!({"eta_min": 0.0}),
        "OneCycleLR" => serde_json::to_value(Schedule::one_cycle(0.0, 1)).unwrap(),
        _ => json!({}),
    };
    let mut args = defaults.as_object().unwrap().clone();
    for (k, v) in case.as_object().unwrap() {
        args.insert(k.clone(), v.clone());
    }
    serde_json::from_value(Value::Object(args)).unwrap()
}

fn cases(f: &Fixture) -> Vec<&Value> {
    let cases: Vec<&Value> = f.cases.iter().filter(|c| qtest::name(c).starts_with("sched_")).collect();
    let kinds: std::collections::BTreeSet<&str> =
        cases.iter().map(|c| c["scheduler"].as_str().unwrap()).collect();
    assert_eq!(kinds.len(), 6, "every scheduler has a case: {kinds:?}");
    cases
}

/// Checks epoch `k`'s lr (and momentum) against PyTorch's, bit for bit.
fn check_epoch(f: &Fixture, case: &str, k: usize, sgd: &Sgd, what: &str) {
    let lrs = f.tensor::<f64>(case, "lrs");
    assert_eq!(
        sgd.lr().to_bits(),
        lrs[k].to_bits(),
        "{case} {what} epoch {k}: lr {} vs PyTorch {}",
        sgd.lr(),
        lrs[k]
    );
    if f.has(case, "momenta") {
        let m = f.tensor::<f64>(case, "momenta")[k];
        assert_eq!(
            sgd.momentum().to_bits(),
            m.to_bits(),
            "{case} {what} epoch {k}: momentum {} vs {m}",
            sgd.momentum()
        );
    }
}

#[test]
fn schedules_match_pytorch_bit_for_bit() {
    let f = fixture();
    for case in cases(&f) {
        let name = qtest::name(case);
        let mut sgd = Sgd::new(f64_of(&case["lr"])).momentum(0.9);
        let mut sched = LrScheduler::new(schedule(case), &mut sgd).unwrap();
        for k in 0..30 {
            if k == 12 {
                let ours = sched.state_dict();
                for key in ["last_epoch", "_step_count", "_last_lr", "base_lrs"] {
                    assert_eq!(ours[key], case["state"][key], "{name}: state_dict entry {key}");
                }
            }
            check_epoch(&f, name, k, &sgd, "uninterrupted");
            sched.step(&mut sgd).unwrap();
        }
    }
}

#[test]
fn a_checkpoint_resumes_the_schedule() {
    let f = fixture();
    let model: Box<dyn Module> = Box::new(Sequential::new(vec![Box::new(Linear::new(2, 2, true))]));
    for case in cases(&f) {
        let name = qtest::name(case);
        let lr = f64_of(&case["lr"]);
        let mut sgd = Sgd::new(lr).momentum(0.9);
        let mut sched = LrScheduler::new(schedule(case), &mut sgd).unwrap();
        for _ in 0..12 {
            sched.step(&mut sgd).unwrap();
        }
        let bytes = qfake::checkpoint::to_bytes_with(model.as_ref(), &sgd, Some(&sched), json!({})).unwrap();
        let saved = qfake::checkpoint::from_bytes(&bytes).unwrap();
        // As in PyTorch: a fresh optimizer and scheduler, then both states loaded.
        let mut resumed_sgd = Sgd::new(lr).momentum(0.9);
        let mut resumed = LrScheduler::new(schedule(case), &mut resumed_sgd).unwrap();
        saved.restore_optimizer(&mut resumed_sgd).unwrap();
        saved.restore_scheduler(&mut resumed).unwrap();
        assert_eq!(resumed, sched, "{name}");
        for k in 12..30 {
            check_epoch(&f, name, k, &resumed_sgd, "resumed");
            resumed.step(&mut resumed_sgd).unwrap();
        }
    }
}

#[test]
fn misuse_is_a_clear_error() {
    let mut sgd = Sgd::new(0.1);
    let err =
        LrScheduler::new(Schedule::Step { step_size: 0, gamma: 0.1 }, &mut sgd).unwrap_err().to_string();
    assert!(err.contains("step_size") && err.contains("positive"), "{err}");
    let linear = Schedule::Linear { start_factor: 0.0, end_factor: 1.0, total_iters: 3 };
    let err = LrScheduler::new(linear, &mut sgd).unwrap_err().to_string();
    assert!(err.contains("start_factor"), "{err}");
    let mut sched = LrScheduler::new(Schedule::one_cycle(0.1, 3), &mut sgd).unwrap();
    for _ in 0..3 {
        sched.step(&mut sgd).unwrap();
    }
    let err = sched.step(&mut sgd).unwrap_err().to_string();
    assert!(err.contains("total steps is 3"), "{err}");
    let err = sched.load_state_dict(&json!({"scheduler": "StepLR"})).unwrap_err().to_string();
    assert!(err.contains("state_dict"), "{err}");
    let model: Box<dyn Module> = Box::new(Sequential::new(vec![Box::new(Linear::new(2, 2, true))]));
    let bytes = qfake::checkpoint::to_bytes(model.as_ref(), &sgd, json!({})).unwrap();
    let err = qfake::checkpoint::from_bytes(&bytes).unwrap().restore_scheduler(&mut sched).unwrap_err();
    assert!(err.to_string().contains("no scheduler state"), "{err}");
}
