//! The report's SVG plot, written by hand: SQNR by layer, teacher-forced as bars and
//! free-running as points, the worst layer's bar in red.

use std::fmt::Write;

use super::report::Report;

/// Plot height of the bars, in pixels.
const HEIGHT: f64 = 240.0;
/// Width of one layer's slot.
const SLOT: f64 = 28.0;
/// Left margin (axis labels).
const LEFT: f64 = 56.0;
/// Top margin (title).
const TOP: f64 = 36.0;
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

/// The SVG document of `report` (see [`Report::to_svg`]).
pub(super) fn render(report: &Report) -> String {
    let finite = report
        .layers
        .iter()
        .flat_map(|l| [l.forced_sqnr, l.output_sqnr])
        .flatten()
        .filter(|v| v.is_finite())
        .fold(10.0f64, f64::max);
    let top = (finite / 10.0).ceil() * 10.0;
    let width = LEFT + SLOT * report.layers.len().max(1) as f64 + 20.0;
    let total_height = TOP + HEIGHT + BOTTOM;
    let y = |v: f64| TOP + HEIGHT * (1.0 - v / top);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{total_height:.0}" viewBox="0 0 {width:.0} {total_height:.0}" font-family="sans-serif" font-size="10">"#
    );
    let title = match report.worst_layer() {
        Some(l) => format!("SQNR by layer (dB): bars teacher-forced, dots free-running; worst {}", l.name),
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
    let worst = report.worst.as_deref();
    for (i, layer) in report.layers.iter().enumerate() {
        let x = LEFT + SLOT * i as f64;
        let name = escape(&layer.name);
        let bar = plotted(layer.forced_sqnr, top);
        let fill = if Some(layer.name.as_str()) == worst { "#d62728" } else { "#4c78a8" };
        let _ = writeln!(
            svg,
            r#"<rect class="bar" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{fill}"><title>{name}: teacher-forced {}</title></rect>"#,
            x + 4.0,
            y(bar),
            SLOT - 8.0,
            HEIGHT * bar / top,
            super::report::db_text(layer.forced_sqnr)
        );
        let point = plotted(layer.output_sqnr, top);
        let _ = writeln!(
            svg,
            r##"<circle class="point" cx="{:.1}" cy="{:.1}" r="3" fill="#f58518"><title>{name}: free-running {}</title></circle>"##,
            x + SLOT / 2.0,
            y(point),
            super::report::db_text(layer.output_sqnr)
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
