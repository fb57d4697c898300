//! Crafted model files: valid files of small models whose sizes, tensors and tree are edited
//! (sizes near 2^63 and 2^64, zero sizes, overflowing products, huge windows, duplicate names,
//! bad scales, wrong dtypes). Each must load to an error, or run `forward` on a small input to an
//! output or an error, within the memory limit and without a panic.

mod common;

use std::collections::BTreeMap;

use ndarray::{ArrayD, IxDyn};
use qgraph::nn::{
    AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv1d, Conv2d, Conv3d, Flatten, Linear, MaxPool1d, MaxPool2d,
    MaxPool3d, ReLU, Softmax, Upsample, UpsampleMode,
};
use qgraph::{DeQuantStub, Module, QuantStub, Sequential, io, memory};
use serde_json::{Value as Json, json};

/// The element limit of every forward here: 2^24 (64 MiB of f32).
const LIMIT: usize = 1 << 24;

const U64_MAX: u64 = u64::MAX;
const I64_MAX: u64 = i64::MAX as u64;
const TWO_POW_63: u64 = 1 << 63;
const I32_MAX: u64 = i32::MAX as u64;

/// A model file taken apart: the module tree and the tensors (dtype, shape, bytes).
struct File {
    tree: Json,
    tensors: BTreeMap<String, (String, Vec<u64>, Vec<u8>)>,
}

impl File {
    fn of(model: &dyn Module) -> Self {
        let bytes = io::to_bytes(model).expect("save");
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: Json = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let data = &bytes[8 + n..];
        let mut tensors = BTreeMap::new();
        let mut tree = Json::Null;
        for (name, entry) in header.as_object().unwrap() {
            if name == "__metadata__" {
                tree = serde_json::from_str(entry["qgraph"].as_str().unwrap()).unwrap();
                continue;
            }
            let shape = entry["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
            let [start, end] = [0, 1].map(|i| entry["data_offsets"][i].as_u64().unwrap() as usize);
            let dtype = entry["dtype"].as_str().unwrap().to_string();
            tensors.insert(name.clone(), (dtype, shape, data[start..end].to_vec()));
        }
        Self { tree, tensors }
    }

    /// The module at dotted `path` in the tree (`""` is the root).
    fn module(&mut self, path: &str) -> &mut Json {
        let mut node = &mut self.tree["model"];
        for name in path.split('.').filter(|s| !s.is_empty()) {
            let children = node["children"].as_array_mut().unwrap();
            let i = children.iter().position(|c| c[0] == name).unwrap_or_else(|| panic!("no child {name}"));
            node = &mut children[i][1];
        }
        node
    }

    /// The configuration of the module at `path`.
    fn config(&mut self, path: &str) -> &mut Json {
        &mut self.module(path)["config"]
    }

    /// Sets the tensor `name`'s dtype, shape and bytes.
    fn tensor(&mut self, name: &str, dtype: &str, shape: &[u64], bytes: Vec<u8>) -> &mut Self {
        self.tensors.insert(name.to_string(), (dtype.to_string(), shape.to_vec(), bytes));
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut data: Vec<u8> = Vec::new();
        for (name, (dtype, shape, bytes)) in &self.tensors {
            let start = data.len();
            data.extend(bytes);
            header.insert(name.clone(), json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}));
        }
        header.insert("__metadata__".into(), json!({"qgraph": self.tree.to_string()}));
        let mut header = serde_json::to_vec(&header).unwrap();
        header.resize(header.len().div_ceil(8) * 8, b' ');
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend(header);
        out.extend(data);
        out
    }
}

/// Float modules of every kind on a `[N, 3, 8, 8]` input, to `[N, 5]`.
fn float_zoo() -> Sequential {
    qgraph::nn::manual_seed(5);
    let named: Vec<(&str, Box<dyn Module>)> = vec![
        ("conv", Box::new(Conv2d::new(3, 4, [3, 3]).padding([1, 1]).build().unwrap())),
        ("bn", Box::new(BatchNorm2d::new(4))),
        ("relu", Box::new(ReLU::new())),
        ("maxpool", Box::new(MaxPool2d::new(2))),
        ("avgpool", Box::new(AvgPool2d::new(2).stride(1))),
        ("up", Box::new(Upsample::size(4).mode(UpsampleMode::Bilinear))),
        ("pool", Box::new(AdaptiveAvgPool2d::new(2))),
        ("flatten", Box::new(Flatten::new(1, -1))),
        ("fc", Box::new(Linear::new(16, 5, true))),
    ];
    let mut model = Sequential::named(named.into_iter().map(|(n, m)| (n.to_string(), m)).collect()).unwrap();
    let mut boxed: Box<dyn Module> = Box::new(model.clone());
    qgraph::eval(&mut boxed);
    model = boxed.downcast_ref::<Sequential>().unwrap().clone();
    model
}

/// [`float_zoo`] between a QuantStub and a DeQuantStub, converted to int8.
fn int8_zoo() -> Box<dyn Module> {
    let zoo = float_zoo();
    let mut children: Vec<(String, Box<dyn Module>)> = vec![("quant".into(), Box::new(QuantStub::new()))];
    children.extend(zoo.children().into_iter().map(|(n, m)| (n.to_string(), m.clone_module())));
    children.push(("dequant".into(), Box::new(DeQuantStub::new())));
    let mut model: Box<dyn Module> = Box::new(Sequential::named(children).unwrap());
    qgraph::eval(&mut model);
    let qconfig = qgraph::qconfig::get_default_qconfig("x86").unwrap();
    qgraph::prepare(&mut model, &qgraph::QConfigMapping::global(qconfig)).unwrap();
    let batches = (0..2).map(|i| common::random(&[2, 3, 8, 8], 40 + i));
    qgraph::calibrate(model.as_ref(), batches, |_, _| {}).unwrap();
    qgraph::convert(&mut model).unwrap();
    model
}

/// 1-D and 3-D layers: `[N, 2, 6]` and `[N, 2, 4, 4, 4]` inputs.
fn zoo_1d() -> Sequential {
    Sequential::named(vec![
        ("conv".into(), Box::new(Conv1d::new(2, 2, [3]).build().unwrap()) as Box<dyn Module>),
        ("maxpool".into(), Box::new(MaxPool1d::new(2))),
    ])
    .unwrap()
}

fn zoo_3d() -> Sequential {
    Sequential::named(vec![
        ("conv".into(), Box::new(Conv3d::new(2, 2, [3, 3, 3]).padding([1, 1, 1]).build().unwrap()) as Box<dyn Module>),
        ("maxpool".into(), Box::new(MaxPool3d::new(2))),
        ("softmax".into(), Box::new(Softmax::new(1))),
    ])
    .unwrap()
}

/// What a crafted file must do.
#[derive(Debug)]
enum Expect {
    /// Loading fails with a message containing this.
    LoadError(&'static str),
    /// Loading succeeds; forward fails with a message containing this.
    ForwardError(&'static str),
    /// Loading and forward succeed, with this output shape.
    Output(&'static [usize]),
}

/// One crafted file: its name, bytes, the input shape to run and the expected outcome.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    input: &'static [usize],
    expect: Expect,
}

fn case(name: &'static str, file: &File, input: &'static [usize], expect: Expect) -> Case {
    Case { name, bytes: file.bytes(), input, expect }
}

/// Runs a case and returns what went wrong, if anything.
fn check(c: &Case) -> Option<String> {
    let outcome = io::from_bytes(&c.bytes).map(|model| {
        let n = c.input.iter().product();
        let x = ArrayD::from_shape_vec(IxDyn(c.input), (0..n).map(|i| (i % 5) as f32 * 0.25).collect()).unwrap();
        model.forward(x.into())
    });
    let ok = match (&outcome, &c.expect) {
        (Err(e), Expect::LoadError(text)) => e.to_string().contains(text),
        (Ok(Err(e)), Expect::ForwardError(text)) => e.to_string().contains(text),
        (Ok(Ok(y)), Expect::Output(shape)) => y.shape() == *shape,
        _ => false,
    };
    let described = match &outcome {
        Err(e) => format!("load error: {e}"),
        Ok(Err(e)) => format!("forward error: {e}"),
        Ok(Ok(y)) => format!("output of shape {:?}", y.shape()),
    };
    (!ok).then(|| format!("{}: expected {:?}, got {described}", c.name, c.expect))
}

fn run_all(cases: Vec<Case>) {
    memory::set_max_elements(LIMIT);
    let failures: Vec<String> = cases.iter().filter_map(|c| std::panic::catch_unwind(|| check(c)).unwrap_or_else(|_| Some(format!("{}: PANIC", c.name)))).collect();
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

const IMAGE: &[usize] = &[1, 3, 8, 8];

#[test]
fn valid_zoo_files_run() {
    run_all(vec![
        case("float zoo", &File::of(&float_zoo()), IMAGE, Expect::Output(&[1, 5])),
        case("int8 zoo", &File::of(int8_zoo().as_ref()), IMAGE, Expect::Output(&[1, 5])),
        case("1-d zoo", &File::of(&zoo_1d()), &[1, 2, 6], Expect::Output(&[1, 2, 2])),
        case("3-d zoo", &File::of(&zoo_3d()), &[1, 2, 4, 4, 4], Expect::Output(&[1, 2, 2, 2, 2])),
    ]);
}

/// `f(file)` applied to a fresh copy of `base`.
fn edited(base: &File, f: impl FnOnce(&mut File)) -> File {
    let mut file = File { tree: base.tree.clone(), tensors: base.tensors.clone() };
    f(&mut file);
    file
}

#[test]
fn crafted_sizes_in_configurations_are_errors_or_bounded() {
    let float = File::of(&float_zoo());
    let int8 = File::of(int8_zoo().as_ref());
    let mut cases = Vec::new();
    for (zoo, base) in [("float", &float), ("int8", &int8)] {
        let set = |path: &'static str, key: &'static str, value: Json| {
            edited(base, move |f| f.config(path)[key] = value)
        };
        let conv = if zoo == "float" { "" } else { "options" };
        let conv_set = |key: &'static str, value: Json| {
            edited(base, move |f| {
                let c = f.config("conv");
                let c = if conv.is_empty() { c } else { &mut c[conv] };
                c[key] = value;
            })
        };
        let push = |cases: &mut Vec<Case>, name: &'static str, file: File, expect: Expect| {
            let name: &'static str = Box::leak(format!("{zoo}: {name}").into_boxed_str());
            cases.push(case(name, &file, IMAGE, expect));
        };
        push(&mut cases, "conv padding 2^63", conv_set("padding", json!([TWO_POW_63, 1])), Expect::LoadError("padding"));
        push(&mut cases, "conv padding 2^64 - 1", conv_set("padding", json!([U64_MAX, U64_MAX])), Expect::LoadError("padding"));
        push(&mut cases, "conv padding 2^20 (output over the limit)", conv_set("padding", json!([1 << 20, 1 << 20])), Expect::ForwardError("more than the limit"));
        push(&mut cases, "conv padding 2^31 - 1 (output overflows)", conv_set("padding", json!([I32_MAX, I32_MAX])), Expect::ForwardError("overflows"));
        push(&mut cases, "conv stride 2^64 - 1", conv_set("stride", json!([U64_MAX, 1])), Expect::LoadError("stride"));
        push(&mut cases, "conv stride 0", conv_set("stride", json!([0, 1])), Expect::LoadError("stride"));
        push(&mut cases, "conv dilation 2^63", conv_set("dilation", json!([TWO_POW_63, 1])), Expect::LoadError("dilation"));
        push(&mut cases, "conv dilation 2^31 - 1 (kernel larger than the input)", conv_set("dilation", json!([I32_MAX, 1])), Expect::ForwardError("larger than the padded input"));
        push(&mut cases, "conv kernel 2^63", conv_set("kernel_size", json!([TWO_POW_63, 3])), Expect::LoadError("kernel_size"));
        push(&mut cases, "conv in_channels 2^64 - 1", conv_set("in_channels", json!(U64_MAX)), Expect::LoadError("weight"));
        push(&mut cases, "conv out_channels 2^63 (weight product overflows)", conv_set("out_channels", json!(TWO_POW_63)), Expect::LoadError("weight"));
        push(&mut cases, "conv groups 0", conv_set("groups", json!(0)), Expect::LoadError("groups"));
        push(&mut cases, "conv groups 2^64 - 1", conv_set("groups", json!(U64_MAX)), Expect::LoadError("groups"));
        push(&mut cases, "conv four kernel sizes", conv_set("kernel_size", json!([3, 3, 3, 3])), Expect::LoadError("kernel_size"));
        push(&mut cases, "maxpool kernel 2^63", set("maxpool", "kernel_size", json!(TWO_POW_63)), Expect::LoadError("kernel_size"));
        push(&mut cases, "maxpool kernel 2^64 - 1", set("maxpool", "kernel_size", json!([U64_MAX, 2])), Expect::LoadError("kernel_size"));
        push(&mut cases, "maxpool stride 2^64 - 1", set("maxpool", "stride", json!(U64_MAX)), Expect::LoadError("stride"));
        push(&mut cases, "maxpool dilation 2^63", set("maxpool", "dilation", json!(TWO_POW_63)), Expect::LoadError("dilation"));
        push(&mut cases, "maxpool padding 2^63", set("maxpool", "padding", json!(TWO_POW_63)), Expect::LoadError("padding"));
        push(
            &mut cases,
            "maxpool window 2^31 - 1 with padding 2^30 (runs over the input only)",
            edited(base, |f| {
                let c = f.config("maxpool");
                c["kernel_size"] = json!(I32_MAX);
                c["padding"] = json!(I32_MAX / 2);
            }),
            Expect::Output(&[1, 5]),
        );
        push(&mut cases, "maxpool kernel 0", set("maxpool", "kernel_size", json!(0)), Expect::LoadError("kernel_size"));
        push(&mut cases, "avgpool kernel 2^64 - 1", set("avgpool", "kernel_size", json!(U64_MAX)), Expect::LoadError("kernel_size"));
        push(&mut cases, "avgpool padding 2^63", set("avgpool", "padding", json!([TWO_POW_63, 0])), Expect::LoadError("padding"));
        push(&mut cases, "avgpool divisor_override 0", set("avgpool", "divisor_override", json!(0)), Expect::LoadError("divisor_override"));
        push(&mut cases, "avgpool divisor_override i64::MIN", set("avgpool", "divisor_override", json!(i64::MIN)), Expect::Output(&[1, 5]));
        push(
            &mut cases,
            "avgpool window 2^31 - 1 with padding 2^30 (runs over the input only)",
            edited(base, |f| {
                let c = f.config("avgpool");
                c["kernel_size"] = json!(I32_MAX);
                c["padding"] = json!(I32_MAX / 2);
            }),
            Expect::Output(&[1, 5]),
        );
        push(&mut cases, "upsample size 2^63", set("up", "size", json!([TWO_POW_63, TWO_POW_63])), Expect::LoadError("size"));
        push(&mut cases, "upsample size 2^64 - 1", set("up", "size", json!([U64_MAX, 1])), Expect::LoadError("size"));
        push(&mut cases, "upsample size 2^31 - 1", set("up", "size", json!([I32_MAX, I32_MAX])), Expect::ForwardError("more than the limit"));
        push(&mut cases, "upsample size 2^31", set("up", "size", json!([1u64 << 31, 1])), Expect::LoadError("size"));
        push(&mut cases, "upsample size 2^16 (output over the limit)", set("up", "size", json!([1 << 16, 1 << 16])), Expect::ForwardError("more than the limit"));
        push(&mut cases, "upsample size 0", set("up", "size", json!([0, 4])), Expect::LoadError("size"));
        push(
            &mut cases,
            "upsample scale factor 1e300",
            edited(base, |f| {
                let c = f.config("up");
                c["size"] = Json::Null;
                c["scale_factor"] = json!([1e300, 1e300]);
            }),
            Expect::LoadError("scale_factor"),
        );
        push(
            &mut cases,
            "upsample scale factor 2^20 (output over the limit)",
            edited(base, |f| {
                let c = f.config("up");
                c["size"] = Json::Null;
                c["scale_factor"] = json!([2f64.powi(20), 2f64.powi(20)]);
            }),
            Expect::ForwardError("more than the limit"),
        );
        push(
            &mut cases,
            "upsample negative scale factor",
            edited(base, |f| {
                let c = f.config("up");
                c["size"] = Json::Null;
                c["scale_factor"] = json!([-2.0, 2.0]);
            }),
            Expect::LoadError("scale_factor"),
        );
        push(&mut cases, "adaptive pool output 2^64 - 1", set("pool", "output_size", json!([U64_MAX, U64_MAX])), Expect::LoadError("output_size"));
        push(&mut cases, "adaptive pool output 2^63 x 0", set("pool", "output_size", json!([TWO_POW_63, 0])), Expect::LoadError("output_size"));
        push(&mut cases, "adaptive pool output 2^16 (over the limit)", set("pool", "output_size", json!([1 << 16, 1 << 16])), Expect::ForwardError("more than the limit"));
        push(&mut cases, "flatten start_dim 2^64 - 1", set("flatten", "start_dim", json!(U64_MAX)), Expect::LoadError("start_dim"));
        push(&mut cases, "flatten start_dim i64::MIN", set("flatten", "start_dim", json!(i64::MIN)), Expect::ForwardError("start_dim"));
        push(&mut cases, "flatten end_dim i64::MAX", set("flatten", "end_dim", json!(I64_MAX)), Expect::ForwardError("end_dim"));
        let fc = |key: &'static str, value: Json| {
            edited(base, move |f| {
                let c = f.config("fc");
                let c = if zoo == "float" { c } else { &mut c["options"] };
                c[key] = value;
            })
        };
        push(&mut cases, "linear in_features 2^64 - 1", fc("in_features", json!(U64_MAX)), Expect::LoadError("weight"));
        push(&mut cases, "linear out_features 2^63", fc("out_features", json!(TWO_POW_63)), Expect::LoadError("weight"));
        let bn = |key: &'static str, value: Json| edited(base, move |f| f.config("bn")[key] = value);
        push(&mut cases, "batch norm num_features 2^64 - 1", bn("num_features", json!(U64_MAX)), Expect::LoadError("weight"));
        push(&mut cases, "batch norm dims 2^63", bn("dims", json!(TWO_POW_63)), Expect::LoadError("dims"));
        push(&mut cases, "duplicate child names", edited(base, |f| f.module("").get_mut("children").unwrap().as_array_mut().unwrap()[2][0] = json!("conv")), Expect::LoadError("two children cannot share a name"));
        push(&mut cases, "child name with a dot", edited(base, |f| f.module("").get_mut("children").unwrap().as_array_mut().unwrap()[2][0] = json!("a.b")), Expect::LoadError("contain no '.'"));
    }
    run_all(cases);
}
