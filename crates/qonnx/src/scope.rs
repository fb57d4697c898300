//! The PyTorch module scope of an ONNX node, as the exporters record it: the TorchScript
//! exporter in the node name (`/layer1/layer1.0/conv1/Conv`), the torch.export exporter in the
//! `pkg.torch.onnx.name_scopes` metadata (`['', 'layer1', 'layer1.0', 'layer1.0.conv1', 'conv2d']`).

use crate::proto::NodeProto;

/// The deepest module nesting kept from a scope (deeper components are joined into the last
/// one), so that building and running the nested graphs never recurses deeply.
pub(crate) const MAX_DEPTH: usize = 32;

/// At most [`MAX_DEPTH`] components: the rest joined with `_` into the last.
fn bounded(mut path: Vec<String>) -> Vec<String> {
    if path.len() > MAX_DEPTH {
        let rest = path.split_off(MAX_DEPTH - 1).join("_");
        path.push(rest);
    }
    path
}

/// A name component usable as a qgraph child name: ASCII letters, digits and `_`, not empty.
pub(crate) fn sanitize(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if s.is_empty() { "_".into() } else { s }
}

/// The scope's module path components (outermost first), empty if the node records none.
///
/// A weighted operator whose weight keeps its `state_dict` name (`layer1.0.conv1.weight`, as the
/// torch.export exporter writes initializers) is named after it: that exporter's optimizer folds
/// a batch norm into the convolution before it and leaves the batch norm's scope on the result.
pub(crate) fn of_node(node: &NodeProto) -> Vec<String> {
    bounded(unbounded(node))
}

fn unbounded(node: &NodeProto) -> Vec<String> {
    const WEIGHTED: &[&str] =
        &["Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "LSTM", "GRU"];
    if !node.name.starts_with('/')
        && WEIGHTED.contains(&node.op_type.as_str())
        && let Some(path) = node.inputs.get(1).and_then(|w| w.strip_suffix(".weight"))
        && !path.is_empty()
        && path.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        return split(path);
    }
    if let Some((_, scopes)) = node.metadata.iter().find(|(k, _)| k == "pkg.torch.onnx.name_scopes") {
        return from_name_scopes(scopes);
    }
    from_node_name(&node.name)
}

/// The entries of a Python list literal of strings.
fn entries(list: &str) -> Vec<&str> {
    list.trim_matches(['[', ']']).split(',').map(|e| e.trim().trim_matches(['\'', '"'])).collect()
}

/// The class of each module scope of a node (the torch.export exporter's
/// `pkg.torch.onnx.class_hierarchy`, aligned with its name scopes): `(path, class name)`.
pub(crate) fn classes(node: &NodeProto) -> Vec<(Vec<String>, String)> {
    let get = |key: &str| node.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| entries(v));
    let (Some(scopes), Some(classes)) =
        (get("pkg.torch.onnx.name_scopes"), get("pkg.torch.onnx.class_hierarchy"))
    else {
        return Vec::new();
    };
    let n = scopes.len().min(classes.len()).saturating_sub(1);
    (0..n)
        .map(|i| {
            let class = classes[i].rsplit('.').next().unwrap_or(classes[i]);
            (bounded(split(scopes[i])), sanitize(class))
        })
        .collect()
}

/// `['', 'layer1', 'layer1.0', 'layer1.0.conv1', 'conv2d']`: the last entry is the operation,
/// the one before it the innermost module's full path.
fn from_name_scopes(list: &str) -> Vec<String> {
    let entries: Vec<&str> =
        list.trim_matches(['[', ']']).split(',').map(|e| e.trim().trim_matches(['\'', '"'])).collect();
    match entries.len() {
        0..=1 => Vec::new(),
        n => split(entries[n - 2]),
    }
}

/// `/layer1/layer1.0/conv1/Conv`: the components before the last name the modules; a component
/// extending the previous one (`layer1` then `layer1.0`) replaces it.
fn from_node_name(name: &str) -> Vec<String> {
    if !name.starts_with('/') {
        return Vec::new();
    }
    let parts: Vec<&str> = name[1..].split('/').collect();
    let Some((_, modules)) = parts.split_last() else { return Vec::new() };
    let mut path: Vec<String> = Vec::new();
    let mut prev: Option<&str> = None;
    for &comp in modules {
        if comp.is_empty() {
            continue;
        }
        match prev {
            Some(p) if comp.starts_with(p) && comp[p.len()..].starts_with('.') => {
                let drop = split(p).len();
                path.truncate(path.len() - drop.min(path.len()));
                path.extend(split(comp));
            }
            _ => path.extend(split(comp)),
        }
        prev = Some(comp);
    }
    path
}

fn split(path: &str) -> Vec<String> {
    path.split('.').filter(|s| !s.is_empty()).map(sanitize).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchscript_names() {
        assert_eq!(from_node_name("/layer1/layer1.0/conv1/Conv"), ["layer1", "0", "conv1"]);
        assert_eq!(
            from_node_name("/features/features.1/conv/conv.0/conv.0.0/Conv"),
            ["features", "1", "conv", "0", "0"]
        );
        assert_eq!(from_node_name("/Add"), Vec::<String>::new());
        assert_eq!(from_node_name("Conv_3"), Vec::<String>::new());
        assert_eq!(from_node_name("/rnn/LSTM_1"), ["rnn"]);
        let deep = NodeProto { name: format!("{}/Relu", "/a".repeat(100)), ..NodeProto::default() };
        let path = of_node(&deep);
        assert_eq!(path.len(), MAX_DEPTH);
        assert_eq!(path[MAX_DEPTH - 1], vec!["a"; 100 - MAX_DEPTH + 1].join("_"));
    }

    #[test]
    fn torch_export_scopes() {
        assert_eq!(
            from_name_scopes("['', 'layer1', 'layer1.0', 'layer1.0.conv1', 'conv2d']"),
            ["layer1", "0", "conv1"]
        );
        assert_eq!(from_name_scopes("['', 'relu', 'relu']"), ["relu"]);
        assert_eq!(from_name_scopes("['', 'add']"), Vec::<String>::new());
        assert_eq!(sanitize("a:b"), "a_b");
        let node = NodeProto {
            metadata: vec![
                ("pkg.torch.onnx.name_scopes".into(), "['', 'layer1', 'layer1.0', 'relu']".into()),
                (
                    "pkg.torch.onnx.class_hierarchy".into(),
                    "['torchvision.models.resnet.ResNet', 'torch.nn.modules.container.Sequential', \
                     'torchvision.models.resnet.BasicBlock', 'aten.relu.default']"
                        .into(),
                ),
            ],
            ..NodeProto::default()
        };
        let classes = classes(&node);
        assert_eq!(classes[0], (vec![], "ResNet".to_string()));
        assert_eq!(classes[2], (vec!["layer1".to_string(), "0".to_string()], "BasicBlock".to_string()));
    }
}
