//! PyTorch-style printing of quantized tensors: `q.to_string()` is byte for byte what
//! `str(q)` prints in PyTorch 2.x with the default print options.
//!
//! This is a port of `torch/_tensor_str.py` (`_Formatter`, `_vector_str`,
//! `_tensor_str_with_formatter`, `_tensor_str`, `get_summarized_data`, `_add_suffixes` and the
//! quantized branch of `_str_intern`). The body is the dequantized tensor, its f32 values widened
//! to f64 as Python floats are; per-channel scales and zero points print as float64 and int64
//! tensors, so the engine is generic over the element type ([`PrintElement`]).
//!
//! Python's float formatting (`repr`, `{:.4f}`, `{:.4e}`, `{:.0f}`) is rebuilt from Rust's, which
//! rounds the same way (exactly, ties to even); only the layout differs, see [`python_float_repr`]
//! and [`python_sci`].

use std::fmt;

use ndarray::{ArrayView1, ArrayViewD, Axis};

use crate::{QParams, QTensor};

/// `PRINT_OPTS.precision`: digits after the point in fixed and scientific notation.
const PRECISION: usize = 4;
/// `PRINT_OPTS.threshold`: tensors with more elements than this are summarized.
const THRESHOLD: usize = 1000;
/// `PRINT_OPTS.edgeitems`: items kept at each end of a summarized dimension.
const EDGEITEMS: usize = 3;
/// `PRINT_OPTS.linewidth`: the line width vectors wrap at and suffixes are laid out against.
const LINEWIDTH: usize = 80;
/// The prefix of a plain tensor's string; its length is the indent of everything inside.
const PREFIX: &str = "tensor(";

impl fmt::Display for QTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&quantized_str(self))
    }
}

/// The quantized branch of PyTorch's `_str_intern`: the dequantized values, then the size,
/// dtype, scheme and quantization parameters as suffixes.
fn quantized_str(q: &QTensor) -> String {
    let indent = PREFIX.len();
    let values = q.dequantize().mapv(f64::from);
    let mut suffixes = vec![
        format!("size={}", shape_tuple(q.shape())),
        format!("dtype={}", q.dtype()),
        format!("quantization_scheme={}", q.qscheme()),
    ];
    match q.qparams() {
        QParams::PerTensor { scale, zero_point } => {
            suffixes.push(format!("scale={}", python_float_repr(*scale)));
            suffixes.push(format!("zero_point={zero_point}"));
        }
        QParams::PerChannel { scales, zero_points, axis } => {
            let scales = plain_tensor_str(ArrayView1::from(scales).into_dyn());
            let zero_points = plain_tensor_str(ArrayView1::from(zero_points).into_dyn());
            suffixes.extend(per_channel_suffixes(scales, zero_points, *axis));
        }
        QParams::PerChannelFloat { scales, zero_points, axis } => {
            // Float-qparams scales and zero points are float32 tensors: the default dtype.
            let widen = |v: &[f32]| ArrayView1::from(v).mapv(|x| Float32(f64::from(x))).into_dyn();
            let scales = plain_tensor_str(widen(scales).view());
            let zero_points = plain_tensor_str(widen(zero_points).view());
            suffixes.extend(per_channel_suffixes(scales, zero_points, *axis));
        }
    }
    let body = tensor_str(values.view(), indent);
    add_suffixes(format!("{PREFIX}{body}"), &suffixes, indent)
}

/// The `scale=`, `zero_point=` and `axis=` suffixes of a per-channel tensor.
fn per_channel_suffixes(scales: String, zero_points: String, axis: usize) -> [String; 3] {
    [format!("scale={scales}"), format!("zero_point={zero_points}"), format!("axis={axis}")]
}

/// `str(torch.tensor(values))` of a 1-D float32 tensor, as PyTorch prints tensor-valued module
/// attributes (`Quantize(scale=tensor([0.0039]), ...)`).
///
/// ```
/// assert_eq!(qcore::float_tensor_str(&[1.0 / 256.0]), "tensor([0.0039])");
/// assert_eq!(qcore::int_tensor_str(&[0]), "tensor([0])");
/// ```
pub fn float_tensor_str(values: &[f32]) -> String {
    let widened: Vec<Float32> = values.iter().map(|&x| Float32(f64::from(x))).collect();
    plain_tensor_str(ArrayView1::from(&widened).into_dyn())
}

/// `str(torch.tensor(values))` of a 1-D int64 tensor.
pub fn int_tensor_str(values: &[i64]) -> String {
    plain_tensor_str(ArrayView1::from(values).into_dyn())
}

/// `str(t)` of a plain (non-quantized) CPU tensor, as `_str_intern` prints the per-channel
/// `q_per_channel_scales()` (float64) and `q_per_channel_zero_points()` (int64).
fn plain_tensor_str<T: PrintElement>(values: ArrayViewD<'_, T>) -> String {
    let indent = PREFIX.len();
    let mut suffixes = Vec::new();
    let body = if values.is_empty() {
        // Empty tensors show their size unless 1-D, and their dtype unless it is float32.
        if values.ndim() != 1 {
            suffixes.push(format!("size={}", shape_tuple(values.shape())));
        }
        if T::TORCH_DTYPE != Float32::TORCH_DTYPE {
            suffixes.push(format!("dtype={}", T::TORCH_DTYPE));
        }
        String::from("[]")
    } else {
        if !T::HAS_DEFAULT_DTYPE {
            suffixes.push(format!("dtype={}", T::TORCH_DTYPE));
        }
        tensor_str(values, indent)
    };
    add_suffixes(format!("{PREFIX}{body}"), &suffixes, indent)
}

/// Python's `str(tuple(shape))`: `()`, `(3,)`, `(2, 3)`.
fn shape_tuple(shape: &[usize]) -> String {
    match shape {
        [] => String::from("()"),
        [n] => format!("({n},)"),
        _ => {
            let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
            format!("({})", dims.join(", "))
        }
    }
}

/// Python's `len` of a string: its number of code points (bytes, for the ASCII printed here).
fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// PyTorch's `_add_suffixes`: appends `, suffix` while the line fits in [`LINEWIDTH`], else
/// `,\n` plus `indent` spaces and the suffix, then `)`.
///
/// Kept as in PyTorch: the length of the last line is over-counted by 2
/// (`len(s) - s.rfind("\n") + 1`), and a multi-line suffix counts with its whole length.
fn add_suffixes(tensor_str: String, suffixes: &[String], indent: usize) -> String {
    let mut last_line_len = match tensor_str.rfind('\n') {
        Some(pos) => char_len(&tensor_str[pos..]) + 1,
        None => char_len(&tensor_str) + 2,
    };
    let mut out = tensor_str;
    for suffix in suffixes {
        let suffix_len = char_len(suffix);
        if last_line_len + suffix_len + 2 > LINEWIDTH {
            out.push_str(",\n");
            out.push_str(&" ".repeat(indent));
            last_line_len = indent + suffix_len;
        } else {
            out.push_str(", ");
            last_line_len += suffix_len + 2;
        }
        out.push_str(suffix);
    }
    out.push(')');
    out
}

/// An element type the printer handles: how PyTorch's `_Formatter` treats it and how its dtype
/// prints.
trait PrintElement: Copy {
    /// The formatter for tensors of this element type.
    type Formatter: ElementFormatter<Self>;
    /// The dtype name, e.g. `torch.float64`.
    const TORCH_DTYPE: &'static str;
    /// PyTorch's `has_default_dtype`: a non-empty tensor of this dtype prints no `dtype=` suffix.
    const HAS_DEFAULT_DTYPE: bool;
}

/// PyTorch's `_Formatter`: built once from every printed value, then pads each value to a common
/// width.
trait ElementFormatter<T> {
    /// Builds the formatter from the values that will be printed (the summarized data when
    /// summarizing).
    fn new(values: &[T]) -> Self;
    /// `_Formatter.width()`: the width used to lay out vectors.
    fn width(&self) -> usize;
    /// `_Formatter.format(value)`: the value right-aligned to the width.
    fn format(&self, value: T) -> String;
}

impl PrintElement for f64 {
    type Formatter = FloatFormatter;
    const TORCH_DTYPE: &'static str = "torch.float64";
    const HAS_DEFAULT_DTYPE: bool = false;
}

/// A float32 element widened to f64, as Python floats are: formats like f64, but float32 is
/// PyTorch's default dtype, so its tensors print no `dtype=` suffix.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Float32(f64);

impl PrintElement for Float32 {
    type Formatter = FloatFormatter;
    const TORCH_DTYPE: &'static str = "torch.float32";
    const HAS_DEFAULT_DTYPE: bool = true;
}

impl ElementFormatter<Float32> for FloatFormatter {
    fn new(values: &[Float32]) -> Self {
        <Self as ElementFormatter<f64>>::new(&values.iter().map(|v| v.0).collect::<Vec<_>>())
    }

    fn width(&self) -> usize {
        self.max_width
    }

    fn format(&self, value: Float32) -> String {
        <Self as ElementFormatter<f64>>::format(self, value.0)
    }
}

impl PrintElement for i64 {
    type Formatter = IntFormatter;
    const TORCH_DTYPE: &'static str = "torch.int64";
    const HAS_DEFAULT_DTYPE: bool = true;
}

/// `_Formatter` for floating tensors: integer mode (`1.`), fixed (`1.0000`) or scientific
/// (`1.0000e+00`), chosen from the nonzero finite values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FloatFormatter {
    /// Every nonzero finite value is an integer.
    int_mode: bool,
    /// Scientific notation.
    sci_mode: bool,
    /// The width every value is padded to.
    max_width: usize,
}

impl ElementFormatter<f64> for FloatFormatter {
    fn new(values: &[f64]) -> Self {
        let nonzero_finite: Vec<f64> =
            values.iter().copied().filter(|v| v.is_finite() && *v != 0.0).collect();
        let mut formatter = Self { int_mode: true, sci_mode: false, max_width: 1 };
        if nonzero_finite.is_empty() {
            return formatter;
        }
        let min = nonzero_finite.iter().map(|v| v.abs()).fold(f64::INFINITY, f64::min);
        let max = nonzero_finite.iter().map(|v| v.abs()).fold(0.0, f64::max);
        formatter.int_mode = nonzero_finite.iter().all(|v| v.ceil() == *v);
        formatter.sci_mode = max / min > 1000.0 || max > 1.0e8 || min < 1.0e-4;
        let extra = usize::from(formatter.int_mode && !formatter.sci_mode);
        formatter.max_width =
            nonzero_finite.iter().map(|&v| char_len(&formatter.unpadded(v)) + extra).fold(1, usize::max);
        formatter
    }

    fn width(&self) -> usize {
        self.max_width
    }

    fn format(&self, value: f64) -> String {
        let mut ret = self.unpadded(value);
        if self.int_mode && !self.sci_mode && value.is_finite() {
            ret.push('.');
        }
        pad_left(ret, self.max_width)
    }
}

impl FloatFormatter {
    /// The value in the formatter's notation, without padding or int-mode point.
    fn unpadded(&self, value: f64) -> String {
        if self.sci_mode {
            python_sci(value, PRECISION)
        } else if self.int_mode {
            python_fixed(value, 0)
        } else {
            python_fixed(value, PRECISION)
        }
    }
}

/// `_Formatter` for integer tensors: `str(value)` padded to the widest value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IntFormatter {
    /// The width every value is padded to.
    max_width: usize,
}

impl ElementFormatter<i64> for IntFormatter {
    fn new(values: &[i64]) -> Self {
        Self { max_width: values.iter().map(|v| v.to_string().len()).fold(1, usize::max) }
    }

    fn width(&self) -> usize {
        self.max_width
    }

    fn format(&self, value: i64) -> String {
        pad_left(value.to_string(), self.max_width)
    }
}

/// Right-aligns `s` in `width` columns (no truncation), as Python's `(w - len(s)) * " " + s`.
fn pad_left(s: String, width: usize) -> String {
    let len = char_len(&s);
    if len >= width { s } else { format!("{}{s}", " ".repeat(width - len)) }
}

/// PyTorch's `_tensor_str`: `[]` for an empty tensor, else the nested body, summarized above
/// [`THRESHOLD`] elements, with one formatter for all printed values.
fn tensor_str<T: PrintElement>(values: ArrayViewD<'_, T>, indent: usize) -> String {
    if values.is_empty() {
        return String::from("[]");
    }
    let summarize = values.len() > THRESHOLD;
    let printed = if summarize {
        let mut kept = Vec::new();
        summarized_values(&values, &mut kept);
        kept
    } else {
        values.iter().copied().collect()
    };
    let formatter = T::Formatter::new(&printed);
    tensor_str_with_formatter(&values, indent, summarize, &formatter)
}

/// The indices of a dimension of length `len` that are printed: all of them, or the first and
/// last [`EDGEITEMS`] when summarizing a longer dimension. `None` stands for the `...` gap.
fn printed_indices(len: usize, summarize: bool) -> Vec<Option<usize>> {
    if summarize && len > 2 * EDGEITEMS {
        (0..EDGEITEMS).map(Some).chain([None]).chain((len - EDGEITEMS..len).map(Some)).collect()
    } else {
        (0..len).map(Some).collect()
    }
}

/// PyTorch's `get_summarized_data`, flattened: the values a summarized print shows, in order.
fn summarized_values<T: PrintElement>(values: &ArrayViewD<'_, T>, out: &mut Vec<T>) {
    if values.ndim() == 0 {
        out.extend(values.first().copied());
        return;
    }
    for index in printed_indices(values.len_of(Axis(0)), true).into_iter().flatten() {
        summarized_values(&values.index_axis(Axis(0), index), out);
    }
}

/// PyTorch's `_tensor_str_with_formatter`: a scalar, a vector, or `[` slices `]` joined by `,`,
/// `ndim - 1` newlines and `indent + 1` spaces.
fn tensor_str_with_formatter<T: PrintElement>(
    values: &ArrayViewD<'_, T>,
    indent: usize,
    summarize: bool,
    formatter: &T::Formatter,
) -> String {
    match values.ndim() {
        0 => values.first().map(|&v| formatter.format(v)).unwrap_or_default(),
        1 => vector_str(values, indent, summarize, formatter),
        ndim => {
            let slices: Vec<String> = printed_indices(values.len_of(Axis(0)), summarize)
                .into_iter()
                .map(|index| match index {
                    Some(i) => tensor_str_with_formatter(
                        &values.index_axis(Axis(0), i),
                        indent + 1,
                        summarize,
                        formatter,
                    ),
                    None => String::from("..."),
                })
                .collect();
            let separator = format!(",{}{}", "\n".repeat(ndim - 1), " ".repeat(indent + 1));
            format!("[{}]", slices.join(&separator))
        }
    }
}

/// PyTorch's `_vector_str`: the formatted values (with ` ...` for the gap when summarizing),
/// `elements_per_line = max(1, (linewidth - indent) // (width + 2))` to a line.
fn vector_str<T: PrintElement>(
    values: &ArrayViewD<'_, T>,
    indent: usize,
    summarize: bool,
    formatter: &T::Formatter,
) -> String {
    let element_length = formatter.width() + 2;
    let elements_per_line = (LINEWIDTH.saturating_sub(indent) / element_length).max(1);
    let data: Vec<String> = printed_indices(values.len(), summarize)
        .into_iter()
        .map(|index| match index {
            Some(i) => values.get(i).map(|&v| formatter.format(v)).unwrap_or_default(),
            None => String::from(" ..."),
        })
        .collect();
    let lines: Vec<String> = data.chunks(elements_per_line).map(|line| line.join(", ")).collect();
    let separator = format!(",\n{}", " ".repeat(indent + 1));
    format!("[{}]", lines.join(&separator))
}

/// A finite float split as Rust's `{:e}` prints it: sign, significant digits, and the decimal
/// exponent of the first digit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SciParts {
    /// The sign was `-` (also for `-0.0`).
    negative: bool,
    /// The significant digits, without the point.
    digits: String,
    /// The power of ten of the first digit.
    exponent: i32,
}

impl SciParts {
    /// Parses Rust's `{:e}` / `{:.Ne}` output, e.g. `-1.2345e-5`; `None` for anything else
    /// (non-finite values).
    fn parse(s: &str) -> Option<Self> {
        let (mantissa, exponent) = s.split_once('e')?;
        let (negative, mantissa) = match mantissa.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, mantissa),
        };
        let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Self { negative, digits, exponent: exponent.parse().ok()? })
    }

    /// The sign prefix: `-` or nothing.
    fn sign(&self) -> &'static str {
        if self.negative { "-" } else { "" }
    }
}

/// Python's spelling of a non-finite float (`nan` whatever its sign, `inf`, `-inf`), or `None`
/// for a finite one.
fn python_non_finite(x: f64) -> Option<&'static str> {
    if x.is_nan() {
        Some("nan")
    } else if x.is_infinite() {
        Some(if x > 0.0 { "inf" } else { "-inf" })
    } else {
        None
    }
}

/// Python's exponent suffix: `e`, a sign, and at least two digits (`e-05`, `e+00`, `e+100`).
fn python_exponent(exponent: i32) -> String {
    let sign = if exponent < 0 { '-' } else { '+' };
    format!("e{sign}{:02}", exponent.unsigned_abs())
}

/// Python's `format(x, f".{precision}f")`.
fn python_fixed(x: f64, precision: usize) -> String {
    match python_non_finite(x) {
        Some(s) => s.to_owned(),
        None => format!("{x:.precision$}"),
    }
}

/// Python's `format(x, f".{precision}e")`: Rust's correctly rounded digits with Python's
/// exponent layout (`1.0000e-05` where Rust prints `1.0000e-5`).
fn python_sci(x: f64, precision: usize) -> String {
    if let Some(s) = python_non_finite(x) {
        return s.to_owned();
    }
    let rust = format!("{x:.precision$e}");
    match rust.split_once('e').and_then(|(mantissa, exp)| Some((mantissa, exp.parse::<i32>().ok()?))) {
        Some((mantissa, exponent)) => format!("{mantissa}{}", python_exponent(exponent)),
        None => rust,
    }
}

/// The shortest digits that round-trip to `x`, the closest to `x` among them (ties to even), as
/// Python's `repr` picks them.
///
/// Rust's shortest `{:e}` gives the right number of digits but breaks exact ties upwards
/// (`103.21731567382813` where Python prints `103.21731567382812`), so the same number of digits
/// is taken from Rust's correctly rounded `{:.Ne}` whenever that also round-trips.
fn shortest_digits(x: f64) -> Option<SciParts> {
    let shortest = SciParts::parse(&format!("{x:e}"))?;
    let precision = shortest.digits.len().saturating_sub(1);
    let rounded = format!("{x:.precision$e}");
    if rounded.parse::<f64>().ok() == Some(x) { SciParts::parse(&rounded) } else { Some(shortest) }
}

/// Python's `repr(x)` of a float: shortest round-trip digits, scientific (`1e-05`, `1.5e+16`)
/// when the decimal exponent is below -4 or at least 16, else positional with at least one
/// decimal (`0.0001`, `123.0`, `0.25`).
pub fn python_float_repr(x: f64) -> String {
    if let Some(s) = python_non_finite(x) {
        return s.to_owned();
    }
    let Some(parts) = shortest_digits(x) else {
        return x.to_string();
    };
    let SciParts { digits, exponent, .. } = &parts;
    let sign = parts.sign();
    if !(-4..16).contains(exponent) {
        let (first, rest) = digits.split_at(1);
        let point = if rest.is_empty() { "" } else { "." };
        format!("{sign}{first}{point}{rest}{}", python_exponent(*exponent))
    } else if *exponent < 0 {
        let zeros = "0".repeat(exponent.unsigned_abs() as usize - 1);
        format!("{sign}0.{zeros}{digits}")
    } else {
        let int_len = *exponent as usize + 1;
        if digits.len() > int_len {
            let (int_part, frac_part) = digits.split_at(int_len);
            format!("{sign}{int_part}.{frac_part}")
        } else {
            format!("{sign}{digits}{}.0", "0".repeat(int_len - digits.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn, array};

    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases: [(f64, &str); 22] = [
            (0.25, "0.25"),
            (1e-5, "1e-05"),
            (1.5e-5, "1.5e-05"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (9999999999999998.0, "9999999999999998.0"),
            (0.0001, "0.0001"),
            (0.00012345, "0.00012345"),
            (123.0, "123.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1.0 / 3.0, "0.3333333333333333"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (-2.5, "-2.5"),
            (1e22, "1e+22"),
            (1e100, "1e+100"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            // 103.217315673828125 exactly (an f32): a tie between two 17-digit candidates,
            // where Python keeps the even one.
            (13_528_900.0 / 131_072.0, "103.21731567382812"),
            (f64::NAN, "nan"),
            (f64::NEG_INFINITY, "-inf"),
        ];
        for (x, expected) in cases {
            assert_eq!(python_float_repr(x), expected, "repr({x:e})");
        }
    }

    #[test]
    fn sci_layout_matches_python() {
        let cases: [(f64, &str); 9] = [
            (1e-5, "1.0000e-05"),
            (0.0, "0.0000e+00"),
            (-0.0, "-0.0000e+00"),
            (1.0, "1.0000e+00"),
            (123456789.0, "1.2346e+08"),
            (1e100, "1.0000e+100"),
            (-1.03125, "-1.0312e+00"),
            (f64::NAN, "nan"),
            (f64::INFINITY, "inf"),
        ];
        for (x, expected) in cases {
            assert_eq!(python_sci(x, PRECISION), expected, "{x:e}");
        }
    }

    #[test]
    fn fixed_spells_non_finite_as_python() {
        assert_eq!(python_fixed(f64::NAN, 4), "nan");
        assert_eq!(python_fixed(f64::NEG_INFINITY, 0), "-inf");
        assert_eq!(python_fixed(-0.0, 4), "-0.0000");
        assert_eq!(python_fixed(2.5, 0), "2");
    }

    #[test]
    fn shape_tuples() {
        assert_eq!(shape_tuple(&[]), "()");
        assert_eq!(shape_tuple(&[3]), "(3,)");
        assert_eq!(shape_tuple(&[2, 0, 4]), "(2, 0, 4)");
    }

    #[test]
    fn plain_tensors_print_like_pytorch() {
        assert_eq!(
            plain_tensor_str(array![1.0f64, 2.0].into_dyn().view()),
            "tensor([1., 2.], dtype=torch.float64)"
        );
        assert_eq!(plain_tensor_str(array![1i64, -20].into_dyn().view()), "tensor([  1, -20])");
        assert_eq!(
            plain_tensor_str(ArrayD::<i64>::zeros(IxDyn(&[0])).view()),
            "tensor([], dtype=torch.int64)"
        );
        assert_eq!(
            plain_tensor_str(array![1e-5f64, 0.5].into_dyn().view()),
            "tensor([1.0000e-05, 5.0000e-01], dtype=torch.float64)"
        );
    }
}
