//! A reader for the subset of `onnx.proto` (protobuf wire format) an importer needs: the model,
//! its main graph, nodes, attributes, tensors and the inputs' and outputs' shapes.
//!
//! Every length is checked against the bytes left before it is used, and nesting is fixed by
//! the message types read (model, graph, node, attribute, tensor): subgraphs of control-flow
//! attributes are not descended into, so no input can make the reader recurse deeply.

use crate::error::OnnxError;

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// A field value as read from the wire.
#[derive(Debug, Clone, Copy)]
enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// A cursor over one message's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    message: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], message: &'static str) -> Self {
        Self { buf, pos: 0, message }
    }

    fn malformed(&self, reason: impl Into<String>) -> OnnxError {
        OnnxError::Malformed { message: self.message, offset: self.pos, reason: reason.into() }
    }

    fn varint(&mut self) -> Result<u64, OnnxError> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(self.malformed("the file ends inside a varint (truncated?)"));
            };
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err(self.malformed("a varint overflows 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.malformed("a varint is longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], OnnxError> {
        if n > self.buf.len() - self.pos {
            return Err(self.malformed(format!(
                "a field claims {n} bytes but only {} are left (truncated file?)",
                self.buf.len() - self.pos
            )));
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    /// The next field number and value, or `None` at the end of the message.
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, OnnxError> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (number, wire) = (key >> 3, (key & 7) as u8);
        if number == 0 {
            return Err(self.malformed("field number 0 (not a protobuf message?)"));
        }
        let field = match wire {
            VARINT => Field::Varint(self.varint()?),
            FIXED64 => Field::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"))),
            LEN => {
                let n = usize::try_from(self.varint()?).map_err(|_| self.malformed("length too large"))?;
                Field::Bytes(self.take(n)?)
            }
            FIXED32 => Field::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"))),
            other => {
                return Err(
                    self.malformed(format!("unsupported wire type {other} (groups are not used by ONNX)"))
                );
            }
        };
        Ok(Some((number, field)))
    }
}

fn bytes<'a>(field: Field<'a>, message: &'static str, name: &'static str) -> Result<&'a [u8], OnnxError> {
    match field {
        Field::Bytes(b) => Ok(b),
        _ => Err(wrong_type(message, name)),
    }
}

fn string(field: Field<'_>, message: &'static str, name: &'static str) -> Result<String, OnnxError> {
    let b = bytes(field, message, name)?;
    String::from_utf8(b.to_vec()).map_err(|_| OnnxError::Malformed {
        message,
        offset: 0,
        reason: format!("field `{name}` is not UTF-8"),
    })
}

fn varint(field: Field<'_>, message: &'static str, name: &'static str) -> Result<u64, OnnxError> {
    match field {
        Field::Varint(v) => Ok(v),
        _ => Err(wrong_type(message, name)),
    }
}

fn wrong_type(message: &'static str, name: &'static str) -> OnnxError {
    OnnxError::Malformed { message, offset: 0, reason: format!("field `{name}` has the wrong wire type") }
}

/// A repeated int64 field, packed or not.
fn push_i64s(out: &mut Vec<i64>, field: Field<'_>, message: &'static str) -> Result<(), OnnxError> {
    match field {
        Field::Varint(v) => out.push(v as i64),
        Field::Bytes(b) => {
            let mut r = Reader::new(b, message);
            while r.pos < b.len() {
                out.push(r.varint()? as i64);
            }
        }
        _ => return Err(wrong_type(message, "ints")),
    }
    Ok(())
}

/// A repeated float field, packed or not.
fn push_f32s(out: &mut Vec<f32>, field: Field<'_>, message: &'static str) -> Result<(), OnnxError> {
    match field {
        Field::Fixed32(v) => out.push(f32::from_bits(v)),
        Field::Bytes(b) => {
            if b.len() % 4 != 0 {
                return Err(OnnxError::Malformed {
                    message,
                    offset: 0,
                    reason: "packed floats not a multiple of 4 bytes".into(),
                });
            }
            out.extend(b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))));
        }
        _ => return Err(wrong_type(message, "floats")),
    }
    Ok(())
}

/// A repeated double field, packed or not.
fn push_f64s(out: &mut Vec<f64>, field: Field<'_>, message: &'static str) -> Result<(), OnnxError> {
    match field {
        Field::Fixed64(v) => out.push(f64::from_bits(v)),
        Field::Bytes(b) => {
            if b.len() % 8 != 0 {
                return Err(OnnxError::Malformed {
                    message,
                    offset: 0,
                    reason: "packed doubles not a multiple of 8 bytes".into(),
                });
            }
            out.extend(b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))));
        }
        _ => return Err(wrong_type(message, "doubles")),
    }
    Ok(())
}

/// `StringStringEntryProto`.
fn entry(b: &[u8]) -> Result<(String, String), OnnxError> {
    let mut r = Reader::new(b, "StringStringEntryProto");
    let (mut key, mut value) = (String::new(), String::new());
    while let Some((n, f)) = r.next()? {
        match n {
            1 => key = string(f, "StringStringEntryProto", "key")?,
            2 => value = string(f, "StringStringEntryProto", "value")?,
            _ => {}
        }
    }
    Ok((key, value))
}

/// `ModelProto`: the opsets and the main graph.
#[derive(Debug, Clone, Default)]
pub struct Model {
    /// `(domain, version)` of each imported opset.
    pub opsets: Vec<(String, i64)>,
    /// The main graph.
    pub graph: GraphProto,
}

/// `GraphProto`.
#[derive(Debug, Clone, Default)]
pub struct GraphProto {
    /// The graph's name.
    pub name: String,
    /// Nodes, in topological order.
    pub nodes: Vec<NodeProto>,
    /// Constant tensors.
    pub initializers: Vec<TensorProto>,
    /// Inputs (initializers may be listed here too, in old exports).
    pub inputs: Vec<ValueInfo>,
    /// Outputs.
    pub outputs: Vec<ValueInfo>,
    /// Shapes of intermediate values, where the exporter recorded them.
    pub value_info: Vec<ValueInfo>,
}

/// `NodeProto`.
#[derive(Debug, Clone, Default)]
pub struct NodeProto {
    /// Input value names (`""` for an omitted optional input).
    pub inputs: Vec<String>,
    /// Output value names.
    pub outputs: Vec<String>,
    /// The node's name.
    pub name: String,
    /// The operator.
    pub op_type: String,
    /// The operator's domain (`""` is `ai.onnx`).
    pub domain: String,
    /// Attributes.
    pub attributes: Vec<Attribute>,
    /// `metadata_props` (the torch.export exporter records module scopes here).
    pub metadata: Vec<(String, String)>,
}

/// `AttributeProto`, the fields an importer reads.
#[derive(Debug, Clone, Default)]
pub struct Attribute {
    /// Its name.
    pub name: String,
    /// `f`.
    pub f: Option<f32>,
    /// `i`.
    pub i: Option<i64>,
    /// `s`.
    pub s: Option<Vec<u8>>,
    /// `t`.
    pub t: Option<TensorProto>,
    /// `floats`.
    pub floats: Vec<f32>,
    /// `ints`.
    pub ints: Vec<i64>,
    /// True if it holds a subgraph (not read).
    pub has_graph: bool,
}

/// Where a tensor's bytes are.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// In the model: `raw_data` or the typed fields.
    Inline,
    /// In a file beside the model (`location`, `offset`, `length`).
    External {
        /// Path relative to the model's directory.
        location: String,
        /// Byte offset in that file.
        offset: u64,
        /// Byte length, if given.
        length: Option<u64>,
    },
}

/// `TensorProto`.
#[derive(Debug, Clone)]
pub struct TensorProto {
    /// Its name.
    pub name: String,
    /// Dimensions.
    pub dims: Vec<i64>,
    /// `TensorProto.DataType`.
    pub data_type: i32,
    /// `raw_data`.
    pub raw: Vec<u8>,
    /// `float_data`.
    pub floats: Vec<f32>,
    /// `int32_data` (also holds int8, uint8, bool, float16 bits).
    pub int32s: Vec<i64>,
    /// `int64_data`.
    pub int64s: Vec<i64>,
    /// `double_data`.
    pub doubles: Vec<f64>,
    /// Where the bytes are.
    pub data: TensorData,
}

/// `ValueInfoProto` of a tensor: its name, element type and shape (`None`: symbolic).
#[derive(Debug, Clone, Default)]
pub struct ValueInfo {
    /// The value's name.
    pub name: String,
    /// Element type (`TensorProto.DataType`), 0 if not given.
    pub elem_type: i32,
    /// Dimensions; `None` for a symbolic or missing one; empty if the shape is unknown.
    pub shape: Vec<Option<usize>>,
}

/// Parses a serialized `ModelProto`.
pub fn parse_model(buf: &[u8]) -> Result<Model, OnnxError> {
    const M: &str = "ModelProto";
    let mut r = Reader::new(buf, M);
    let mut model = Model::default();
    let mut graph = None;
    while let Some((n, f)) = r.next()? {
        match n {
            7 => graph = Some(parse_graph(bytes(f, M, "graph")?)?),
            8 => {
                let mut o = Reader::new(bytes(f, M, "opset_import")?, "OperatorSetIdProto");
                let (mut domain, mut version) = (String::new(), 0);
                while let Some((n, f)) = o.next()? {
                    match n {
                        1 => domain = string(f, "OperatorSetIdProto", "domain")?,
                        2 => version = varint(f, "OperatorSetIdProto", "version")? as i64,
                        _ => {}
                    }
                }
                model.opsets.push((domain, version));
            }
            _ => {}
        }
    }
    model.graph = graph.ok_or(OnnxError::Malformed {
        message: M,
        offset: buf.len(),
        reason: "the model has no graph (not an ONNX model, or truncated)".into(),
    })?;
    Ok(model)
}

fn parse_graph(buf: &[u8]) -> Result<GraphProto, OnnxError> {
    const M: &str = "GraphProto";
    let mut r = Reader::new(buf, M);
    let mut g = GraphProto::default();
    while let Some((n, f)) = r.next()? {
        match n {
            1 => g.nodes.push(parse_node(bytes(f, M, "node")?)?),
            2 => g.name = string(f, M, "name")?,
            5 => g.initializers.push(parse_tensor(bytes(f, M, "initializer")?)?),
            11 => g.inputs.push(parse_value_info(bytes(f, M, "input")?)?),
            12 => g.outputs.push(parse_value_info(bytes(f, M, "output")?)?),
            13 => g.value_info.push(parse_value_info(bytes(f, M, "value_info")?)?),
            15 => {
                return Err(OnnxError::Unsupported {
                    what: "sparse initializers".into(),
                    fix: "export with dense weights".into(),
                });
            }
            _ => {}
        }
    }
    Ok(g)
}

fn parse_node(buf: &[u8]) -> Result<NodeProto, OnnxError> {
    const M: &str = "NodeProto";
    let mut r = Reader::new(buf, M);
    let mut node = NodeProto::default();
    while let Some((n, f)) = r.next()? {
        match n {
            1 => node.inputs.push(string(f, M, "input")?),
            2 => node.outputs.push(string(f, M, "output")?),
            3 => node.name = string(f, M, "name")?,
            4 => node.op_type = string(f, M, "op_type")?,
            5 => node.attributes.push(parse_attribute(bytes(f, M, "attribute")?)?),
            7 => node.domain = string(f, M, "domain")?,
            9 => node.metadata.push(entry(bytes(f, M, "metadata_props")?)?),
            _ => {}
        }
    }
    Ok(node)
}

fn parse_attribute(buf: &[u8]) -> Result<Attribute, OnnxError> {
    const M: &str = "AttributeProto";
    let mut r = Reader::new(buf, M);
    let mut a = Attribute::default();
    while let Some((n, f)) = r.next()? {
        match n {
            1 => a.name = string(f, M, "name")?,
            2 => match f {
                Field::Fixed32(v) => a.f = Some(f32::from_bits(v)),
                _ => return Err(wrong_type(M, "f")),
            },
            3 => a.i = Some(varint(f, M, "i")? as i64),
            4 => a.s = Some(bytes(f, M, "s")?.to_vec()),
            5 => a.t = Some(parse_tensor(bytes(f, M, "t")?)?),
            6 | 11 => a.has_graph = true,
            7 => push_f32s(&mut a.floats, f, M)?,
            8 => push_i64s(&mut a.ints, f, M)?,
            _ => {}
        }
    }
    Ok(a)
}

fn parse_tensor(buf: &[u8]) -> Result<TensorProto, OnnxError> {
    const M: &str = "TensorProto";
    let mut r = Reader::new(buf, M);
    let mut t = TensorProto {
        name: String::new(),
        dims: Vec::new(),
        data_type: 0,
        raw: Vec::new(),
        floats: Vec::new(),
        int32s: Vec::new(),
        int64s: Vec::new(),
        doubles: Vec::new(),
        data: TensorData::Inline,
    };
    let mut external = Vec::new();
    let mut location_external = false;
    while let Some((n, f)) = r.next()? {
        match n {
            1 => push_i64s(&mut t.dims, f, M)?,
            2 => t.data_type = varint(f, M, "data_type")? as i32,
            3 => {
                return Err(OnnxError::Unsupported {
                    what: format!("segmented tensor `{}`", t.name),
                    fix: "save the model without tensor segments".into(),
                });
            }
            4 => push_f32s(&mut t.floats, f, M)?,
            5 => push_i64s(&mut t.int32s, f, M)?,
            7 => push_i64s(&mut t.int64s, f, M)?,
            8 => t.name = string(f, M, "name")?,
            9 => t.raw = bytes(f, M, "raw_data")?.to_vec(),
            10 => push_f64s(&mut t.doubles, f, M)?,
            13 => external.push(entry(bytes(f, M, "external_data")?)?),
            14 => location_external = varint(f, M, "data_location")? == 1,
            _ => {}
        }
    }
    if location_external {
        let get = |key: &str| external.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        let number = |key: &str| -> Result<Option<u64>, OnnxError> {
            get(key)
                .map(|v| {
                    v.parse::<u64>().map_err(|_| OnnxError::Malformed {
                        message: M,
                        offset: 0,
                        reason: format!("external data `{key}` of `{}` is {v:?}, not a number", t.name),
                    })
                })
                .transpose()
        };
        let location = get("location").ok_or_else(|| OnnxError::Malformed {
            message: M,
            offset: 0,
            reason: format!("tensor `{}` is external but names no location", t.name),
        })?;
        t.data = TensorData::External {
            location: location.to_string(),
            offset: number("offset")?.unwrap_or(0),
            length: number("length")?,
        };
    }
    Ok(t)
}

fn parse_value_info(buf: &[u8]) -> Result<ValueInfo, OnnxError> {
    const M: &str = "ValueInfoProto";
    let mut r = Reader::new(buf, M);
    let mut v = ValueInfo::default();
    while let Some((n, f)) = r.next()? {
        match n {
            1 => v.name = string(f, M, "name")?,
            2 => {
                // TypeProto.tensor_type (1) -> elem_type (1), shape (2) -> dim (1) ->
                // dim_value (1) | dim_param (2).
                let mut ty = Reader::new(bytes(f, M, "type")?, "TypeProto");
                while let Some((n, f)) = ty.next()? {
                    if n != 1 {
                        continue;
                    }
                    let mut tensor = Reader::new(bytes(f, "TypeProto", "tensor_type")?, "TypeProto.Tensor");
                    while let Some((n, f)) = tensor.next()? {
                        match n {
                            1 => v.elem_type = varint(f, "TypeProto.Tensor", "elem_type")? as i32,
                            2 => {
                                let mut shape =
                                    Reader::new(bytes(f, "TypeProto.Tensor", "shape")?, "TensorShapeProto");
                                while let Some((n, f)) = shape.next()? {
                                    if n != 1 {
                                        continue;
                                    }
                                    let mut dim =
                                        Reader::new(bytes(f, "TensorShapeProto", "dim")?, "Dimension");
                                    let mut value = None;
                                    while let Some((n, f)) = dim.next()? {
                                        if n == 1 {
                                            value =
                                                usize::try_from(varint(f, "Dimension", "dim_value")? as i64)
                                                    .ok();
                                        }
                                    }
                                    v.shape.push(value);
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_truncation() {
        let mut r = Reader::new(&[0xac, 0x02], "test");
        assert_eq!(r.varint().unwrap(), 300);
        let mut r = Reader::new(&[0xac], "test");
        assert!(matches!(r.varint(), Err(OnnxError::Malformed { .. })));
        let mut r = Reader::new(&[0xff; 11], "test");
        assert!(r.varint().is_err());
        // Field 1, length 5, but only 2 bytes follow.
        let mut r = Reader::new(&[0x0a, 0x05, 1, 2], "test");
        let err = r.next().unwrap_err().to_string();
        assert!(err.contains("claims 5 bytes"), "{err}");
    }

    #[test]
    fn a_model_without_graph_is_an_error() {
        let err = parse_model(&[0x08, 0x07]).unwrap_err().to_string();
        assert!(err.contains("no graph"), "{err}");
    }
}
