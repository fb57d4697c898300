//! Crafted model files: valid files of small models (the zoo) whose sizes, tensors and tree
//! are edited (sizes near 2^63 and 2^64, zero sizes, overflowing products, huge windows,
//! duplicate names, bad scales, wrong dtypes), each with the outcome it must have. The
//! `crafted` test runs them; the `fuzz_corpus` example writes them as fuzzing seeds.

use std::collections::BTreeMap;

use qgraph::nn::{
    AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv1d, Conv2d, Conv3d, Flatten, Linear, MaxPool1d, MaxPool2d,
    MaxPool3d, ReLU, Softmax, Upsample, UpsampleMode,
};
use qgraph::{DeQuantStub, FloatFunctional, Functional, Graph, Module, Op, QuantStub, Sequential, io};
use serde_json::{Value as Json, json};

const U64_MAX: u64 = u64::MAX;
const I64_MAX: u64 = i64::MAX as u64;
const TWO_POW_63: u64 = 1 << 63;
const I32_MAX: u64 = i32::MAX as u64;

/// A model file taken apart: the module tree and the tensors (dtype, shape, bytes).
pub struct File {
    pub tree: Json,
    pub tensors: BTreeMap<String, (String, Vec<u64>, Vec<u8>)>,
}

impl File {
    /// The file `io::to_bytes` writes for `model`, taken apart.
    pub fn of(model: &dyn Module) -> Self {
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
    pub fn module(&mut self, path: &str) -> &mut Json {
        let mut node = &mut self.tree["model"];
        for name in path.split('.').filter(|s| !s.is_empty()) {
            let children = node["children"].as_array_mut().unwrap();
            let i = children.iter().position(|c| c[0] == name).unwrap_or_else(|| panic!("no child {name}"));
            node = &mut children[i][1];
        }
        node
    }

    /// The configuration of the module at `path`.
    pub fn config(&mut self, path: &str) -> &mut Json {
        &mut self.module(path)["config"]
    }

    /// Sets the tensor `name`'s dtype, shape and bytes.
    pub fn tensor(&mut self, name: &str, dtype: &str, shape: &[u64], bytes: Vec<u8>) -> &mut Self {
        self.tensors.insert(name.to_string(), (dtype.to_string(), shape.to_vec(), bytes));
        self
    }

    /// The file put back together.
    pub fn bytes(&self) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut data: Vec<u8> = Vec::new();
        for (name, (dtype, shape, bytes)) in &self.tensors {
            let start = data.len();
            data.extend(bytes);
            header.insert(
                name.clone(),
                json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
            );
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
pub fn float_zoo() -> Sequential {
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
pub fn int8_zoo() -> Box<dyn Module> {
    let zoo = float_zoo();
    let mut children: Vec<(String, Box<dyn Module>)> = vec![("quant".into(), Box::new(QuantStub::new()))];
    children.extend(zoo.children().into_iter().map(|(n, m)| (n.to_string(), m.clone_module())));
    children.push(("dequant".into(), Box::new(DeQuantStub::new())));
    let mut model: Box<dyn Module> = Box::new(Sequential::named(children).unwrap());
    qgraph::eval(&mut model);
    let qconfig = qgraph::qconfig::get_default_qconfig("x86").unwrap();
    qgraph::prepare(&mut model, &qgraph::QConfigMapping::global(qconfig)).unwrap();
    let batches = (0..2).map(|i| super::random(&[2, 3, 8, 8], 40 + i));
    qgraph::calibrate(model.as_ref(), batches, |_, _| {}).unwrap();
    qgraph::convert(&mut model).unwrap();
    model
}

/// 1-D layers on `[N, 2, 6]`.
pub fn zoo_1d() -> Sequential {
    Sequential::named(vec![
        ("conv".into(), Box::new(Conv1d::new(2, 2, [3]).build().unwrap()) as Box<dyn Module>),
        ("maxpool".into(), Box::new(MaxPool1d::new(2))),
    ])
    .unwrap()
}

/// 3-D layers and softmax on `[N, 2, 4, 4, 4]`.
pub fn zoo_3d() -> Sequential {
    Sequential::named(vec![
        (
            "conv".into(),
            Box::new(Conv3d::new(2, 2, [3, 3, 3]).padding([1, 1, 1]).build().unwrap()) as Box<dyn Module>,
        ),
        ("maxpool".into(), Box::new(MaxPool3d::new(2))),
        ("softmax".into(), Box::new(Softmax::new(1))),
    ])
    .unwrap()
}

/// What a crafted file must do.
#[derive(Debug, Clone)]
pub enum Expect {
    /// Loading fails with a message containing this.
    LoadError(&'static str),
    /// Loading succeeds; forward fails with a message containing this.
    ForwardError(&'static str),
    /// Loading and forward succeed, with this output shape.
    Output(&'static [usize]),
}

/// One crafted file: its name, bytes, the input shape to run and the expected outcome.
pub struct Case {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub input: &'static [usize],
    pub expect: Expect,
}

/// A case from a file.
pub fn case(name: &'static str, file: &File, input: &'static [usize], expect: Expect) -> Case {
    Case { name, bytes: file.bytes(), input, expect }
}

/// The input of the 2-D zoo.
pub const IMAGE: &[usize] = &[1, 3, 8, 8];

/// The zoo files as saved: each runs.
pub fn valid_cases() -> Vec<Case> {
    vec![
        case("float zoo", &File::of(&float_zoo()), IMAGE, Expect::Output(&[1, 5])),
        case("int8 zoo", &File::of(int8_zoo().as_ref()), IMAGE, Expect::Output(&[1, 5])),
        case("1-d zoo", &File::of(&zoo_1d()), &[1, 2, 6], Expect::Output(&[1, 2, 2])),
        case("3-d zoo", &File::of(&zoo_3d()), &[1, 2, 4, 4, 4], Expect::Output(&[1, 2, 2, 2, 2])),
    ]
}

/// `f(file)` applied to a fresh copy of `base`.
pub fn edited(base: &File, f: impl FnOnce(&mut File)) -> File {
    let mut file = File { tree: base.tree.clone(), tensors: base.tensors.clone() };
    f(&mut file);
    file
}

/// Sizes in the configurations of the float and int8 zoo: windows, strides, paddings,
/// dilations, output sizes, channel counts near 2^63 and 2^64, zero, and just over the limit.
pub fn configuration_cases() -> Vec<Case> {
    use Expect::{ForwardError as Forward, LoadError as Load, Output};
    let huge_window = || json!([["kernel_size", I32_MAX], ["padding", I32_MAX / 2]]);
    let scale = |v: f64| json!([["size", null], ["scale_factor", [v, v]]]);
    // (name, module, [(key, value)...], outcome); conv and fc keys are within their options.
    let table: Vec<(&str, &str, Json, Expect)> = vec![
        ("conv padding 2^63", "conv", json!([["padding", [TWO_POW_63, 1]]]), Load("padding")),
        ("conv padding 2^64 - 1", "conv", json!([["padding", [U64_MAX, U64_MAX]]]), Load("padding")),
        (
            "conv padding 2^20 (output over the limit)",
            "conv",
            json!([["padding", [1 << 20, 1 << 20]]]),
            Forward("more than the limit"),
        ),
        (
            "conv padding 2^31 - 1 (output overflows)",
            "conv",
            json!([["padding", [I32_MAX, I32_MAX]]]),
            Forward("overflows"),
        ),
        ("conv stride 2^64 - 1", "conv", json!([["stride", [U64_MAX, 1]]]), Load("stride")),
        ("conv stride 0", "conv", json!([["stride", [0, 1]]]), Load("stride")),
        ("conv dilation 2^63", "conv", json!([["dilation", [TWO_POW_63, 1]]]), Load("dilation")),
        (
            "conv dilation 2^31 - 1 (kernel larger than the input)",
            "conv",
            json!([["dilation", [I32_MAX, 1]]]),
            Forward("larger than the padded input"),
        ),
        ("conv kernel 2^63", "conv", json!([["kernel_size", [TWO_POW_63, 3]]]), Load("kernel_size")),
        ("conv in_channels 2^64 - 1", "conv", json!([["in_channels", U64_MAX]]), Load("weight")),
        (
            "conv out_channels 2^63 (weight product overflows)",
            "conv",
            json!([["out_channels", TWO_POW_63]]),
            Load("weight"),
        ),
        ("conv groups 0", "conv", json!([["groups", 0]]), Load("groups")),
        ("conv groups 2^64 - 1", "conv", json!([["groups", U64_MAX]]), Load("groups")),
        ("conv four kernel sizes", "conv", json!([["kernel_size", [3, 3, 3, 3]]]), Load("kernel_size")),
        ("maxpool kernel 2^63", "maxpool", json!([["kernel_size", TWO_POW_63]]), Load("kernel_size")),
        ("maxpool kernel 2^64 - 1", "maxpool", json!([["kernel_size", [U64_MAX, 2]]]), Load("kernel_size")),
        ("maxpool stride 2^64 - 1", "maxpool", json!([["stride", U64_MAX]]), Load("stride")),
        ("maxpool dilation 2^63", "maxpool", json!([["dilation", TWO_POW_63]]), Load("dilation")),
        ("maxpool padding 2^63", "maxpool", json!([["padding", TWO_POW_63]]), Load("padding")),
        (
            "maxpool window 2^31 - 1 with padding 2^30 (runs over the input only)",
            "maxpool",
            huge_window(),
            Output(&[1, 5]),
        ),
        ("maxpool kernel 0", "maxpool", json!([["kernel_size", 0]]), Load("kernel_size")),
        ("avgpool kernel 2^64 - 1", "avgpool", json!([["kernel_size", U64_MAX]]), Load("kernel_size")),
        ("avgpool padding 2^63", "avgpool", json!([["padding", [TWO_POW_63, 0]]]), Load("padding")),
        ("avgpool divisor_override 0", "avgpool", json!([["divisor_override", 0]]), Load("divisor_override")),
        (
            "avgpool divisor_override i64::MIN",
            "avgpool",
            json!([["divisor_override", i64::MIN]]),
            Output(&[1, 5]),
        ),
        (
            "avgpool window 2^31 - 1 with padding 2^30 (runs over the input only)",
            "avgpool",
            huge_window(),
            Output(&[1, 5]),
        ),
        ("upsample size 2^63", "up", json!([["size", [TWO_POW_63, TWO_POW_63]]]), Load("size")),
        ("upsample size 2^64 - 1", "up", json!([["size", [U64_MAX, 1]]]), Load("size")),
        (
            "upsample size 2^31 - 1",
            "up",
            json!([["size", [I32_MAX, I32_MAX]]]),
            Forward("more than the limit"),
        ),
        ("upsample size 2^31", "up", json!([["size", [1u64 << 31, 1]]]), Load("size")),
        (
            "upsample size 2^16 (output over the limit)",
            "up",
            json!([["size", [1 << 16, 1 << 16]]]),
            Forward("more than the limit"),
        ),
        ("upsample size 0", "up", json!([["size", [0, 4]]]), Load("size")),
        ("upsample scale factor 1e300", "up", scale(1e300), Load("scale_factor")),
        (
            "upsample scale factor 2^20 (output over the limit)",
            "up",
            scale(2f64.powi(20)),
            Forward("more than the limit"),
        ),
        ("upsample negative scale factor", "up", scale(-2.0), Load("scale_factor")),
        (
            "adaptive pool output 2^64 - 1",
            "pool",
            json!([["output_size", [U64_MAX, U64_MAX]]]),
            Load("output_size"),
        ),
        (
            "adaptive pool output 2^63 x 0",
            "pool",
            json!([["output_size", [TWO_POW_63, 0]]]),
            Load("output_size"),
        ),
        (
            "adaptive pool output 2^16 (over the limit)",
            "pool",
            json!([["output_size", [1 << 16, 1 << 16]]]),
            Forward("more than the limit"),
        ),
        ("flatten start_dim 2^64 - 1", "flatten", json!([["start_dim", U64_MAX]]), Load("start_dim")),
        ("flatten start_dim i64::MIN", "flatten", json!([["start_dim", i64::MIN]]), Forward("start_dim")),
        ("flatten end_dim i64::MAX", "flatten", json!([["end_dim", I64_MAX]]), Forward("end_dim")),
        ("linear in_features 2^64 - 1", "fc", json!([["in_features", U64_MAX]]), Load("weight")),
        ("linear out_features 2^63", "fc", json!([["out_features", TWO_POW_63]]), Load("weight")),
        ("batch norm num_features 2^64 - 1", "bn", json!([["num_features", U64_MAX]]), Load("weight")),
        ("batch norm dims 2^63", "bn", json!([["dims", TWO_POW_63]]), Load("dims")),
    ];
    let float = File::of(&float_zoo());
    let int8 = File::of(int8_zoo().as_ref());
    let mut cases = Vec::new();
    for (zoo, base) in [("float", &float), ("int8", &int8)] {
        let name = |name: &str| -> &'static str { Box::leak(format!("{zoo}: {name}").into_boxed_str()) };
        for (what, path, edits, expect) in &table {
            let file = edited(base, |f| {
                let config = f.config(path);
                let config = if zoo == "int8" && ["conv", "fc"].contains(path) {
                    &mut config["options"]
                } else {
                    config
                };
                for edit in edits.as_array().unwrap() {
                    config[edit[0].as_str().unwrap()] = edit[1].clone();
                }
            });
            cases.push(case(name(what), &file, IMAGE, expect.clone()));
        }
        let children =
            |name: &'static str| edited(base, move |f| f.module("")["children"][2][0] = json!(name));
        cases.push(case(
            name("duplicate child names"),
            &children("conv"),
            IMAGE,
            Load("two children cannot share a name"),
        ));
        cases.push(case(name("child name with a dot"), &children("a.b"), IMAGE, Load("contain no '.'")));
    }
    cases
}

/// A graph with a flatten op, an adaptive pooling op and a concatenation: `[N, 2, 4, 4]` to
/// `[N, 4]`.
pub fn graph_zoo() -> Box<dyn Module> {
    let mut b = Graph::builder("Net");
    let x = b.op("pool", Op::AdaptiveAvgPool2d([1, 1]), Graph::INPUT);
    let x = b.op("flat", Op::Flatten(1), &x);
    let y = b.then("relu", ReLU::new(), &x);
    let out = b.then_functional("cat", FloatFunctional::new(), Functional::Cat(1), &[&x, &y]);
    Box::new(b.build(&out).unwrap())
}

/// The module tree: graph ops with huge or wrong sizes, wiring, duplicate names, depth.
pub fn tree_cases() -> Vec<Case> {
    let graph = File::of(graph_zoo().as_ref());
    let node = |i: usize, op: Json| edited(&graph, move |f| f.config("")["nodes"][i]["op"] = op);
    let input: &'static [usize] = &[1, 2, 4, 4];
    let mut cases = vec![
        case("graph as saved", &graph, input, Expect::Output(&[1, 4])),
        case(
            "graph flatten start 2^64 - 1",
            &node(1, json!({"Flatten": U64_MAX})),
            input,
            Expect::LoadError("start_dim"),
        ),
        case(
            "graph flatten start 2^63",
            &node(1, json!({"Flatten": TWO_POW_63})),
            input,
            Expect::LoadError("start_dim"),
        ),
        case(
            "graph flatten start 7",
            &node(1, json!({"Flatten": 7})),
            input,
            Expect::ForwardError("start_dim"),
        ),
        case(
            "graph adaptive pool 2^64 - 1",
            &node(0, json!({"AdaptiveAvgPool2d": [U64_MAX, 1]})),
            input,
            Expect::LoadError("output_size"),
        ),
        case(
            "graph adaptive pool 0",
            &node(0, json!({"AdaptiveAvgPool2d": [0, 1]})),
            input,
            Expect::LoadError("output_size"),
        ),
        case(
            "graph adaptive pool 2^16 (output over the limit)",
            &node(0, json!({"AdaptiveAvgPool2d": [1 << 16, 1 << 16]})),
            input,
            Expect::ForwardError("more than the limit"),
        ),
        case(
            "graph cat dim 2^64 - 1",
            &node(3, json!({"Functional": ["cat", {"Cat": U64_MAX}]})),
            input,
            Expect::ForwardError("cat dim"),
        ),
        case(
            "graph node calls an unknown child",
            &node(2, json!({"Call": "nothing"})),
            input,
            Expect::LoadError("unknown child"),
        ),
        case(
            "graph node reads a later value",
            &edited(&graph, |f| f.config("")["nodes"][0]["inputs"] = json!(["cat"])),
            input,
            Expect::LoadError("no earlier node"),
        ),
        case(
            "graph output names no node",
            &edited(&graph, |f| f.config("")["output"] = json!("nowhere")),
            input,
            Expect::LoadError("output"),
        ),
        case(
            "graph duplicate child names",
            &edited(&graph, |f| f.module("")["children"][1][0] = json!("relu")),
            input,
            Expect::LoadError("two children cannot share a name"),
        ),
    ];
    let relu_child = json!(["extra", {"type": "ReLU", "config": {}}]);
    cases.push(case(
        "a leaf module with a child",
        &edited(&graph, |f| f.module("relu")["children"] = json!([relu_child])),
        input,
        Expect::LoadError("holds 0 children but the file lists 1"),
    ));
    // A chain of Sequentials deeper than the JSON parser's recursion limit.
    let mut deep = File::of(&Sequential::new(vec![]));
    for _ in 0..200 {
        let inner = deep.tree["model"].clone();
        deep.tree["model"] = json!({"type": "Sequential", "children": [["0", inner]]});
    }
    cases.push(case("200 nested Sequentials", &deep, input, Expect::LoadError("recursion limit")));
    cases
}

/// The tensors: zero sizes with overflowing shapes, byte counts, dtypes, scales and zero points.
pub fn tensor_cases() -> Vec<Case> {
    let float = File::of(&float_zoo());
    let int8 = File::of(int8_zoo().as_ref());
    let f64_bytes = |v: &[f64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let i64_bytes = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let scales = |v: &[f64]| {
        edited(&int8, |f| {
            f.tensor("fc.weight_scale", "F64", &[v.len() as u64], f64_bytes(v));
        })
    };
    let zero_points = |v: &[i64]| {
        edited(&int8, |f| {
            f.tensor("fc.weight_zero_point", "I64", &[v.len() as u64], i64_bytes(v));
        })
    };
    let config = |path: &'static str, key: &'static str, value: Json| {
        edited(&int8, move |f| f.config(path)[key] = value)
    };
    let cases = vec![
        case(
            "zero-sized weight whose other sizes overflow",
            &edited(&float, |f| {
                f.tensor("fc.weight", "F32", &[0, 1 << 62, 1 << 62], vec![]);
            }),
            IMAGE,
            Expect::LoadError("fc"),
        ),
        case(
            "zero-sized weight of the listed shape",
            &edited(&float, |f| {
                f.config("fc")["in_features"] = json!(0);
                f.tensor("fc.weight", "F32", &[5, 0], vec![]);
            }),
            IMAGE,
            Expect::ForwardError("input features"),
        ),
        case(
            "weight of 2^32 x 2^32 elements in 4 bytes",
            &edited(&float, |f| {
                f.tensor("fc.weight", "F32", &[1 << 32, 1 << 32], vec![0; 4]);
            }),
            IMAGE,
            Expect::LoadError("not a safetensors file"),
        ),
        case(
            "weight of 2^62 x 4 elements in 4 bytes",
            &edited(&float, |f| {
                f.tensor("fc.weight", "F32", &[1 << 62, 4], vec![0; 4]);
            }),
            IMAGE,
            Expect::LoadError("not a safetensors file"),
        ),
        case(
            "float weight saved as f64",
            &edited(&float, |f| {
                f.tensor("fc.weight", "F64", &[5, 16], vec![0; 5 * 16 * 8]);
            }),
            IMAGE,
            Expect::LoadError("expected F32"),
        ),
        case(
            "int8 weight saved as u8",
            &edited(&int8, |f| {
                f.tensor("fc.weight", "U8", &[5, 16], vec![0; 5 * 16]);
            }),
            IMAGE,
            Expect::LoadError("expected I8"),
        ),
        case(
            "bias of the wrong length",
            &edited(&int8, |f| {
                f.tensor("fc.bias", "F32", &[6], vec![0; 24]);
            }),
            IMAGE,
            Expect::LoadError("bias"),
        ),
        case(
            "2-D weight scales",
            &edited(&int8, |f| {
                f.tensor("fc.weight_scale", "F64", &[5, 1], f64_bytes(&[0.1; 5]));
            }),
            IMAGE,
            Expect::LoadError("weight_scale"),
        ),
        case(
            "2-D weight zero points",
            &edited(&int8, |f| {
                f.tensor("fc.weight_zero_point", "I64", &[1, 5], i64_bytes(&[0; 5]));
            }),
            IMAGE,
            Expect::LoadError("weight_zero_point"),
        ),
        case("too few weight scales", &scales(&[0.1; 4]), IMAGE, Expect::LoadError("weight_scale")),
        case(
            "negative weight scale",
            &scales(&[0.1, -0.1, 0.1, 0.1, 0.1]),
            IMAGE,
            Expect::LoadError("scale"),
        ),
        case("zero weight scale", &scales(&[0.1, 0.0, 0.1, 0.1, 0.1]), IMAGE, Expect::LoadError("scale")),
        case("NaN weight scale", &scales(&[0.1, f64::NAN, 0.1, 0.1, 0.1]), IMAGE, Expect::LoadError("scale")),
        case(
            "infinite weight scale",
            &scales(&[0.1, f64::INFINITY, 0.1, 0.1, 0.1]),
            IMAGE,
            Expect::LoadError("scale"),
        ),
        case(
            "weight scale 1e-300 (zero in f32)",
            &scales(&[1e-300; 5]),
            IMAGE,
            Expect::LoadError("underflows"),
        ),
        case(
            "weight zero point i64::MIN",
            &zero_points(&[i64::MIN, 0, 0, 0, 0]),
            IMAGE,
            Expect::LoadError("zero point"),
        ),
        case(
            "weight zero point 128",
            &zero_points(&[128, 0, 0, 0, 0]),
            IMAGE,
            Expect::LoadError("zero point"),
        ),
        case("output scale -1", &config("fc", "scale", json!(-1.0)), IMAGE, Expect::LoadError("scale")),
        case(
            "output scale 1e308 (infinite in f32)",
            &config("fc", "scale", json!(1e308)),
            IMAGE,
            Expect::LoadError("overflows f32"),
        ),
        case(
            "output scale null (NaN in JSON)",
            &config("fc", "scale", Json::Null),
            IMAGE,
            Expect::LoadError("scale"),
        ),
        case(
            "output zero point 2^63 - 1",
            &config("conv", "zero_point", json!(I64_MAX)),
            IMAGE,
            Expect::LoadError("zero point"),
        ),
        case(
            "output zero point -1",
            &config("conv", "zero_point", json!(-1)),
            IMAGE,
            Expect::LoadError("zero point"),
        ),
        case("quantize scale 0", &config("quant", "scale", json!(0.0)), IMAGE, Expect::LoadError("scale")),
        case("batch norm eps -1", &config("bn", "eps", json!(-1.0)), IMAGE, Expect::Output(&[1, 5])),
        case(
            "batch norm running_var NaN",
            &edited(&int8, |f| {
                f.tensor("bn.running_var", "F32", &[4], f32::NAN.to_le_bytes().repeat(4));
            }),
            IMAGE,
            Expect::Output(&[1, 5]),
        ),
    ];
    cases
}

/// 1-D and 3-D layers and softmax.
pub fn layer_cases() -> Vec<Case> {
    let d1 = File::of(&zoo_1d());
    let d3 = File::of(&zoo_3d());
    let set = |base: &File, path: &'static str, key: &'static str, value: Json| {
        edited(base, move |f| f.config(path)[key] = value)
    };
    let (line, volume): (&'static [usize], &'static [usize]) = (&[1, 2, 6], &[1, 2, 4, 4, 4]);
    vec![
        case(
            "1-d maxpool kernel 2^64 - 1",
            &set(&d1, "maxpool", "kernel_size", json!(U64_MAX)),
            line,
            Expect::LoadError("kernel_size"),
        ),
        case(
            "1-d maxpool kernel as 2 values",
            &set(&d1, "maxpool", "kernel_size", json!([2, 2])),
            line,
            Expect::LoadError("kernel_size"),
        ),
        case(
            "1-d conv padding 2^63",
            &set(&d1, "conv", "padding", json!([TWO_POW_63])),
            line,
            Expect::LoadError("padding"),
        ),
        case(
            "1-d conv padding 2^31 - 1 (output over the limit)",
            &set(&d1, "conv", "padding", json!([I32_MAX])),
            line,
            Expect::ForwardError("more than the limit"),
        ),
        case(
            "3-d maxpool window 2^31 - 1 with padding 2^30 - 1 (runs over the input only)",
            &edited(&d3, |f| {
                let c = f.config("maxpool");
                c["kernel_size"] = json!(I32_MAX);
                c["padding"] = json!(I32_MAX / 2);
            }),
            volume,
            Expect::Output(&[1, 2, 2, 2, 2]),
        ),
        case(
            "3-d maxpool dilation 2^64 - 1",
            &set(&d3, "maxpool", "dilation", json!(U64_MAX)),
            volume,
            Expect::LoadError("dilation"),
        ),
        case(
            "3-d conv padding 2^31 - 1 (output overflows)",
            &set(&d3, "conv", "padding", json!([I32_MAX, I32_MAX, I32_MAX])),
            volume,
            Expect::ForwardError("overflows"),
        ),
        case(
            "3-d conv padding 2^10 (output over the limit)",
            &set(&d3, "conv", "padding", json!([1 << 10, 1 << 10, 1 << 10])),
            volume,
            Expect::ForwardError("more than the limit"),
        ),
        case(
            "softmax dim i64::MIN",
            &set(&d3, "softmax", "dim", json!(i64::MIN)),
            volume,
            Expect::ForwardError("dim"),
        ),
        case(
            "softmax dim 2^64 - 1",
            &set(&d3, "softmax", "dim", json!(U64_MAX)),
            volume,
            Expect::LoadError("dim"),
        ),
    ]
}
