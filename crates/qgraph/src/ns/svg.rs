//! The report's SVG plot, written by hand: SQNR by layer, teacher-forced as bars and
//! free-running as points, the worst layer's bar in red.

use std::fmt::Write;

use super::sqnr::db_text;

/// Plot height of the bars, in pixels.
const HEIGHT: f64 = 240.0;
/// Width of one layer's slot.
const SLOT: f64 = 28.0;
/// Left margin (axis labels).
const LEFT: f64 = 56.0;
/// Top margin (title).
const TOP: f64 = 36.0;
/// Narrowest plot (the title's width).
const MIN_WIDTH: f64 = 560.0;
/// Bottom margin (layer names, rotated).
const BOTTOM: f64 = 150.0;

/// `&`, `<`, `>` and `"` escaped for XML text and attributes.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The plotted value: finite values as they are, `+inf` (exact) at the top, none or `-inf` at 0.
fn plotted(value: Option<f64>, top: f64) -> f64 {
    match value {
        Some(v) if v.is_finite() => v.clamp(0.0, top),
        Some(v) if v > 0.0 => top,
        _ => 0.0,
    }
}

/// One layer of the plot.
pub(crate) struct Bar<'a> {
    /// The layer's name (its label).
    pub(crate) name: &'a str,
    /// The bar's value: teacher-forced SQNR, dB.
    pub(crate) bar: Option<f64>,
    /// The point's value: free-running SQNR, dB.
    pub(crate) point: Option<f64>,
}

/// The SVG document of `layers`, `worst` in red (see `Report::to_svg`).
pub(crate) fn render(layers: &[Bar<'_>], worst: Option<&str>) -> String {
    let finite = layers
        .iter()
        .flat_map(|l| [l.bar, l.point])
        .flatten()
        .filter(|v| v.is_finite())
        .fold(10.0f64, f64::max);
    let top = (finite / 10.0).ceil() * 10.0;
    // Wide enough for the title, whatever the number of layers.
    let width = (LEFT + SLOT * layers.len().max(1) as f64 + 20.0).max(MIN_WIDTH);
    let total_height = TOP + HEIGHT + BOTTOM;
    let y = |v: f64| TOP + HEIGHT * (1.0 - v / top);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{total_height:.0}" viewBox="0 0 {width:.0} {total_height:.0}" font-family="sans-serif" font-size="10">"#
    );
    let title = match worst {
        Some(name) => format!("SQNR by layer (dB): bars teacher-forced, dots free-running; worst {name}"),
        None => "SQNR by layer (dB)".to_string(),
    };
    let _ = writeln!(svg, r#"<text x="{LEFT}" y="20" font-size="12">{}</text>"#, escape(&title));
    for tick in 0..=5 {
        let v = top * f64::from(tick) / 5.0;
        let ty = y(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#ddd"/>"##,
            width - 20.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{v:.0}</text>"#,
            LEFT - 4.0,
            ty + 3.0
        );
    }
    for (i, layer) in layers.iter().enumerate() {
        let x = LEFT + SLOT * i as f64;
        let name = escape(layer.name);
        let bar = plotted(layer.bar, top);
        let fill = if Some(layer.name) == worst { "#d62728" } else { "#4c78a8" };
        let _ = writeln!(
            svg,
            r#"<rect class="bar" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{fill}"><title>{name}: teacher-forced {}</title></rect>"#,
            x + 4.0,
            y(bar),
            SLOT - 8.0,
            HEIGHT * bar / top,
            db_text(layer.bar)
        );
        let point = plotted(layer.point, top);
        let _ = writeln!(
            svg,
            r##"<circle class="point" cx="{:.1}" cy="{:.1}" r="3" fill="#f58518"><title>{name}: free-running {}</title></circle>"##,
            x + SLOT / 2.0,
            y(point),
            db_text(layer.point)
        );
        let (lx, ly) = (x + SLOT / 2.0 + 3.0, TOP + HEIGHT + 8.0);
        let _ = writeln!(
            svg,
            r#"<text x="{lx:.1}" y="{ly:.1}" transform="rotate(60 {lx:.1} {ly:.1})">{name}</text>"#
        );
    }
    svg.push_str("</svg>\n");
    svg
}
