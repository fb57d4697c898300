//! The inner loops: min/max over slices, `torch.histc`, and the float32 building blocks of
//! PyTorch's CPU kernels that the histogram observer depends on (cascade sum, FMA-contracted
//! `linspace`, floor division), each reproduced with PyTorch's operation order.

/// Lanes of the min/max accumulators: wide enough for two AVX-512 or four AVX2 registers, so the
/// compiler keeps several independent dependency chains in flight.
const LANES: usize = 32;

/// Minimum and maximum of a slice, plus whether every element is finite.
///
/// NaN never wins a comparison, so `min`/`max` are those of the non-NaN elements (±Inf included);
/// `finite` is false if any element is NaN or infinite. An empty slice gives `(+inf, -inf, true)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SliceMinMax {
    pub min: f32,
    pub max: f32,
    pub finite: bool,
}

/// Min, max and a finiteness flag in one pass, written so LLVM vectorises it: `LANES`
/// independent accumulators, `select(v < m, v, m)` (which is `minps`), and `v * 0` summed per
/// lane, which stays 0 for finite values and becomes NaN for NaN and ±Inf.
pub(crate) fn min_max(x: &[f32]) -> SliceMinMax {
    let mut mn = [f32::INFINITY; LANES];
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut bad = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for i in 0..LANES {
            let v = chunk[i];
            mn[i] = if v < mn[i] { v } else { mn[i] };
            mx[i] = if v > mx[i] { v } else { mx[i] };
            bad[i] += v * 0.0;
        }
    }
    for (i, &v) in tail.iter().enumerate() {
        mn[i] = if v < mn[i] { v } else { mn[i] };
        mx[i] = if v > mx[i] { v } else { mx[i] };
        bad[i] += v * 0.0;
    }
    let mut out = SliceMinMax { min: f32::INFINITY, max: f32::NEG_INFINITY, finite: true };
    for i in 0..LANES {
        out.min = if mn[i] < out.min { mn[i] } else { out.min };
        out.max = if mx[i] > out.max { mx[i] } else { out.max };
        out.finite &= bad[i] == 0.0;
    }
    out
}

/// The edges `torch.histc(x, bins, min, max)` actually uses.
///
/// ATen's `histc_select_outer_bin_edges` replaces an empty range (`min == max`) by the data's own
/// min and max, widens a still-empty range to `[min - 1, max + 1]` (in double), and the kernel then
/// reads the first and last element of `linspace(min, max, bins + 1)` in float32, which are the
/// two bounds exactly.
pub(crate) fn histc_edges(x: &[f32], min: f32, max: f32) -> (f32, f32) {
    let (mut lo, mut hi) = (min, max);
    if lo == hi && !x.is_empty() {
        let r = min_max(x);
        (lo, hi) = (r.min, r.max);
    }
    if lo == hi { ((f64::from(lo) - 1.0) as f32, (f64::from(hi) + 1.0) as f32) } else { (lo, hi) }
}

/// Elements per block of the histogram loop: bin indices are computed for a block in a
/// vectorisable pass, then counted.
const HIST_BLOCK: usize = 512;

/// Adds the counts of `torch.histc(x, bins, lo, hi)` (CPU, `LINEAR_INTERPOLATION`) to `counts`.
///
/// `pos = (int64)(((x - lo) * bins) / (hi - lo))` in float32 (a true division, as ATen does),
/// `pos == bins` goes to the last bin, values outside `[lo, hi]` are skipped. `lo`/`hi` must come
/// from [`histc_edges`]; `x` must be free of NaN. Counts are integers below 2^32, exact.
pub(crate) fn histc_accumulate(x: &[f32], lo: f32, hi: f32, counts: &mut [u32]) {
    let bins = counts.len();
    let nb = bins as f32;
    let width = hi - lo;
    let last = (bins - 1) as u32;
    // Four count arrays, element k counted in array k % 4: activations put long runs of
    // neighbouring elements into the same few bins, and one array would serialise on
    // store-to-load forwarding of the same counter.
    let mut sub = vec![0u32; 4 * bins];
    let mut idx = [0u32; HIST_BLOCK];
    for block in x.chunks(HIST_BLOCK) {
        let idx = &mut idx[..block.len()];
        // Vectorisable: the bin of every element of the block.
        for (slot, &v) in idx.iter_mut().zip(block) {
            let pos = ((v - lo) * nb) / width;
            // Inside [lo, hi], 0 <= pos <= bins and the conversion truncates like the C++ cast.
            // Values outside (never for the observers' own ranges) are marked u32::MAX and
            // skipped; their `pos` is clamped first so the conversion below stays defined.
            let inside = v >= lo && v <= hi;
            let pos = if pos >= 0.0 { pos } else { 0.0 }; // also maps NaN to 0
            let pos = if pos <= nb { pos } else { nb };
            // SAFETY: `pos` is a finite value in [0, bins] and bins <= 2^24 (checked by every
            // observer), so it is representable in i32, which is what `to_int_unchecked` needs.
            // (`as i32` would be defined too, but its saturation stops LLVM from vectorising.)
            let bin = unsafe { pos.to_int_unchecked::<i32>() }.min(last as i32) as u32;
            *slot = if inside { bin } else { u32::MAX };
        }
        let mut quads = idx.chunks_exact(4);
        for q in &mut quads {
            for (lane, &i) in q.iter().enumerate() {
                if i != u32::MAX {
                    sub[lane * bins + i as usize] += 1;
                }
            }
        }
        for &i in quads.remainder() {
            if i != u32::MAX {
                sub[i as usize] += 1;
            }
        }
    }
    for (b, c) in counts.iter_mut().enumerate() {
        *c += sub[b] + sub[bins + b] + sub[2 * bins + b] + sub[3 * bins + b];
    }
}

/// `torch.histc(x, bins, min, max)` on a NaN-free slice, as float32 counts.
pub(crate) fn histc(x: &[f32], bins: usize, min: f32, max: f32) -> Vec<f32> {
    let (lo, hi) = histc_edges(x, min, max);
    let mut counts = vec![0u32; bins];
    histc_accumulate(x, lo, hi, &mut counts);
    counts.into_iter().map(|c| c as f32).collect()
}

/// Float32 lanes of the `Vectorized<float>` PyTorch's CPU sum kernel runs with: 8 (AVX2). Checked
/// against PyTorch 2.15 on an AVX-512 machine (`get_cpu_capability() == "AVX512"`), whose sums
/// match 8 lanes and not 16 on every tested length.
pub(crate) const TORCH_SUM_LANES: usize = 8;

/// `torch.sum` of a contiguous float32 vector on CPU, with ATen's order of additions
/// (`SumKernel.cpp`: `vectorized_inner_sum` -> `row_sum` -> `multi_row_sum`, a 4-level cascade
/// over rows of 4 vectors of 8 floats; the scalar tail is added first, then the lanes in order).
/// Exact for inputs below ATen's parallel grain size (32768 elements).
///
/// ```
/// let x: Vec<f32> = (0..37).map(|i| 0.1 * i as f32).collect();
/// assert_eq!(qobserve::torch_sum(&x[..3]), 0.0 + 0.1 + 0.2);
/// assert!((qobserve::torch_sum(&x) - 66.6).abs() < 1e-4);
/// ```
pub fn torch_sum(x: &[f32]) -> f32 {
    const W: usize = TORCH_SUM_LANES;
    if x.len() < W {
        // Scalar path (`basic_loop` of the reduction): a plain left-to-right sum.
        return x.iter().fold(0.0f32, |acc, &v| acc + v);
    }
    let vec_size = x.len() / W;
    let load = |v: usize| -> [f32; W] {
        let mut out = [0.0f32; W];
        out.copy_from_slice(&x[v * W..(v + 1) * W]);
        out
    };
    let add = |a: &mut [f32; W], b: &[f32; W]| {
        for (p, q) in a.iter_mut().zip(b) {
            *p += *q;
        }
    };
    // row_sum with ilp_factor 4: multi_row_sum over rows of 4 vectors.
    const ILP: usize = 4;
    const LEVELS: usize = 4;
    let size_ilp = vec_size / ILP;
    let level_power = 4.max(ceil_log2(size_ilp as u64) / LEVELS as u32);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[[0.0f32; W]; ILP]; LEVELS];
    let mut i = 0usize;
    while i + level_step <= size_ilp {
        for _ in 0..level_step {
            for (k, slot) in acc[0].iter_mut().enumerate() {
                add(slot, &load(i * ILP + k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            let (below, above) = acc.split_at_mut(j);
            for (lower, upper) in below[j - 1].iter_mut().zip(above[0].iter_mut()) {
                add(upper, lower);
                *lower = [0.0; W];
            }
            let mask = level_mask << (j as u32 * level_power);
            if i & mask != 0 {
                break;
            }
        }
    }
    while i < size_ilp {
        for (k, slot) in acc[0].iter_mut().enumerate() {
            add(slot, &load(i * ILP + k));
        }
        i += 1;
    }
    let (first, rest) = acc.split_at_mut(1);
    for level in rest.iter() {
        for (a, upper) in first[0].iter_mut().zip(level) {
            add(a, upper);
        }
    }
    let mut partial = acc[0];
    for v in size_ilp * ILP..vec_size {
        add(&mut partial[0], &load(v));
    }
    for k in 1..ILP {
        let other = partial[k];
        add(&mut partial[0], &other);
    }
    let mut total = 0.0f32;
    for &v in &x[vec_size * W..] {
        total += v;
    }
    for &lane in &partial[0] {
        total += lane;
    }
    total
}

/// c10's `CeilLog2`: 1 for x <= 2, else ceil(log2(x)).
fn ceil_log2(x: u64) -> u32 {
    if x <= 2 { 1 } else { 64 - (x - 1).leading_zeros() }
}

/// `torch.cumsum` of a float32 vector on CPU: accumulated in double (`acc_type<float, false>`),
/// each prefix rounded to float32.
pub(crate) fn torch_cumsum(x: &[f32]) -> Vec<f32> {
    let mut acc = 0.0f64;
    x.iter()
        .map(|&v| {
            acc += f64::from(v);
            acc as f32
        })
        .collect()
}

/// Element `idx` of `torch.linspace(start, end, steps)` in float32 on CPU.
///
/// ATen (`RangeFactoriesKernel.cpp`) computes `step = (end - start) / (steps - 1)` in float and
/// returns `start + step * idx` for the first half and `end - step * (steps - idx - 1)` for the
/// second; the x86 build contracts both into one FMA each (checked against PyTorch: without
/// the FMA a third of the values differ in the last bit).
pub(crate) struct Linspace {
    start: f32,
    end: f32,
    step: f32,
    steps: usize,
    halfway: usize,
}

impl Linspace {
    /// The parameters of `torch.linspace(start, end, steps)`, `steps >= 2`.
    pub(crate) fn new(start: f32, end: f32, steps: usize) -> Self {
        let step = (end - start) / (steps - 1) as f32;
        Self { start, end, step, steps, halfway: steps / 2 }
    }

    /// The value at `idx`.
    pub(crate) fn at(&self, idx: usize) -> f32 {
        if idx < self.halfway {
            self.step.mul_add(idx as f32, self.start)
        } else {
            (-self.step).mul_add((self.steps - idx - 1) as f32, self.end)
        }
    }
}

/// `torch.div(a, b, rounding_mode="floor")` for float32 (c10 `div_floor_floating`): the
/// remainder is taken with `fmod`, so the result is exact where `floor(a / b)` is not.
pub(crate) fn div_floor(a: f32, b: f32) -> f32 {
    if b == 0.0 {
        return a / b;
    }
    let m = a % b; // Rust's % on floats is C's fmod.
    let mut div = (a - m) / b;
    if m != 0.0 && ((b < 0.0) != (m < 0.0)) {
        div -= 1.0;
    }
    if div != 0.0 {
        let mut fl = div.floor();
        if div - fl > 0.5 {
            fl += 1.0;
        }
        fl
    } else {
        0.0f32.copysign(a / b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_max_skips_nan_and_flags_non_finite() {
        let mut x: Vec<f32> = (0..100).map(|i| i as f32 - 30.0).collect();
        assert_eq!(min_max(&x), SliceMinMax { min: -30.0, max: 69.0, finite: true });
        x[77] = f32::NAN;
        let r = min_max(&x);
        assert_eq!((r.min, r.max, r.finite), (-30.0, 69.0, false));
        x[77] = f32::INFINITY;
        assert_eq!(min_max(&x).max, f32::INFINITY);
        assert_eq!(min_max(&[]), SliceMinMax { min: f32::INFINITY, max: f32::NEG_INFINITY, finite: true });
        assert!(!min_max(&[f32::NAN]).finite);
    }

    #[test]
    fn histc_puts_the_maximum_in_the_last_bin() {
        let h = histc(&[0.0, 0.5, 1.0, 0.25], 4, 0.0, 1.0);
        assert_eq!(h, vec![1.0, 1.0, 1.0, 1.0]);
        let h = histc(&[3.0, 3.0], 4, 3.0, 3.0);
        assert_eq!(h, vec![0.0, 0.0, 2.0, 0.0], "an empty range is widened to [min - 1, max + 1]");
    }

    #[test]
    fn torch_sum_is_exact_on_integers_and_ordered_otherwise() {
        let x: Vec<f32> = (0..2048).map(|i| (i % 7) as f32).collect();
        assert_eq!(torch_sum(&x), x.iter().map(|&v| f64::from(v)).sum::<f64>() as f32);
        assert_eq!(torch_sum(&[1.0, 2.0, 3.0]), 6.0);
        assert_eq!(ceil_log2(32), 5);
        assert_eq!(ceil_log2(33), 6);
        assert_eq!(ceil_log2(2), 1);
    }

    #[test]
    fn div_floor_matches_python_floor_division() {
        assert_eq!(div_floor(7.0, 2.0), 3.0);
        assert_eq!(div_floor(-7.0, 2.0), -4.0);
        assert_eq!(div_floor(-0.0, 2.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(div_floor(0.3, 0.1), 3.0, "as torch.div(tensor([0.3]), 0.1, rounding_mode='floor')");
    }

    #[test]
    fn linspace_ends_exactly() {
        let l = Linspace::new(-1.25, 3.5, 2049);
        assert_eq!(l.at(0), -1.25);
        assert_eq!(l.at(2048), 3.5);
    }
}

/// The ATen reductions above against PyTorch itself (`tests/fixtures/kernels.safetensors`).
#[cfg(test)]
mod golden {
    use super::*;
    use qtest::Fixture;

    fn f32s(fx: &Fixture, key: &str) -> Vec<f32> {
        let (case, field) = key.rsplit_once('/').expect("<case>/<field>");
        fx.tensor::<f32>(case, field).into_raw_vec_and_offset().0
    }

    #[test]
    fn kernels_match_aten() {
        let st = Fixture::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"), "kernels");
        let cases = &st.cases;
        let mut checked = 0;
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let kind = case["kind"].as_str().unwrap();
            if kind == "linspace_parts" {
                let (a, b) = (case["start"].as_f64().unwrap() as f32, case["end"].as_f64().unwrap() as f32);
                let l = Linspace::new(a, b, case["steps"].as_u64().unwrap() as usize);
                for (p, offset) in case["offsets"].as_array().unwrap().iter().enumerate() {
                    let offset = offset.as_u64().unwrap() as usize;
                    for (i, e) in f32s(&st, &format!("{name}/part{p}")).iter().enumerate() {
                        assert_eq!(l.at(offset + i).to_bits(), e.to_bits(), "{name}[{}]", offset + i);
                    }
                }
                checked += 1;
                continue;
            }
            let out = f32s(&st, &format!("{name}/out"));
            match kind {
                "linspace" => {
                    let (a, b) =
                        (case["start"].as_f64().unwrap() as f32, case["end"].as_f64().unwrap() as f32);
                    let l = Linspace::new(a, b, out.len());
                    for (i, e) in out.iter().enumerate() {
                        assert_eq!(l.at(i).to_bits(), e.to_bits(), "{name}[{i}]: {} vs {e}", l.at(i));
                    }
                }
                "sum" => {
                    let x = f32s(&st, &format!("{name}/x"));
                    assert_eq!(
                        torch_sum(&x).to_bits(),
                        out[0].to_bits(),
                        "{name}: {} vs {}",
                        torch_sum(&x),
                        out[0]
                    );
                    let c = f32s(&st, &format!("{name}/cumsum"));
                    assert_eq!(torch_cumsum(&x), c, "{name}: cumsum");
                }
                "histc" => {
                    let x = f32s(&st, &format!("{name}/x"));
                    let (lo, hi) =
                        (case["min"].as_f64().unwrap() as f32, case["max"].as_f64().unwrap() as f32);
                    let got = histc(&x, out.len(), lo, hi);
                    let differing = got.iter().zip(&out).filter(|(a, b)| a != b).count();
                    assert_eq!(differing, 0, "{name}: {differing} bins differ");
                }
                other => panic!("{other}"),
            }
            checked += 1;
        }
        assert_eq!(checked, cases.len());
    }
}
