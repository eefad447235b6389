//! Drawing primitives on plotters, the same code for the PNG and the SVG backend: fonts,
//! palettes and colormaps, a line chart with interval bands, a side legend, and `render`, which
//! writes a [`Figure`] as `<stem>.png` and `<stem>.svg`.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

use crate::error::{Error, Result};

/// The one font family the figures use: DejaVu Sans, compiled in (no system font lookup).
pub(crate) const FONT: &str = "sans-serif";

/// Registers DejaVu Sans (regular and bold) with plotters, once per process.
pub(crate) fn ensure_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are valid TTFs shipped by the `dejavu` crate; a failure here is a bug.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

/// plotters' drawing errors, as text.
pub(crate) type DrawResult = std::result::Result<(), String>;

pub(crate) fn e<E: std::fmt::Display>(error: E) -> String {
    error.to_string()
}

/// A figure that can draw itself on any backend.
pub(crate) trait Figure {
    /// Width and height in pixels (the SVG uses the same user units).
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult;
}

/// Writes `fig` as `dir/<stem>.png` and `dir/<stem>.svg`; returns both paths.
pub(crate) fn render(fig: &impl Figure, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf)> {
    ensure_fonts();
    let size = fig.size();
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    let plot_error = |path: &Path| {
        let path = path.to_path_buf();
        move |message| Error::Plot { path, message }
    };
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        root.fill(&WHITE).map_err(e).map_err(plot_error(&png))?;
        fig.draw(&root).map_err(plot_error(&png))?;
        root.present().map_err(e).map_err(plot_error(&png))?;
    }
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(e).map_err(plot_error(&svg))?;
        fig.draw(&root).map_err(plot_error(&svg))?;
        root.present().map_err(e).map_err(plot_error(&svg))?;
    }
    Ok((png, svg))
}

/// Tableau 10: distinct, colour-blind-friendlier than the plotters defaults.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The `i`-th categorical colour (cycling).
pub(crate) fn palette(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn lerp_stops(stops: &[(u8, u8, u8)], t: f64) -> RGBColor {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let scaled = t * (stops.len() - 1) as f64;
    let i = (scaled.floor() as usize).min(stops.len() - 2);
    let f = scaled - i as f64;
    let (a, b) = (stops[i], stops[i + 1]);
    let mix = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Diverging blue–white–red (ColorBrewer RdBu reversed) for `t` in `[-1, 1]`: 0 is white-grey,
/// negative blue, positive red.
pub(crate) fn diverging(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 5] = [
        (5, 48, 97),
        (67, 147, 195),
        (247, 247, 247),
        (214, 96, 77),
        (103, 0, 31),
    ];
    lerp_stops(&STOPS, (t + 1.0) / 2.0)
}

/// Sequential white to dark red (ColorBrewer Reds) for `t` in `[0, 1]`.
pub(crate) fn sequential(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 4] = [
        (255, 245, 240),
        (252, 146, 114),
        (203, 24, 29),
        (103, 0, 13),
    ];
    lerp_stops(&STOPS, t)
}

/// Black or white, whichever reads on `bg`.
pub(crate) fn text_on(bg: RGBColor) -> RGBColor {
    let luminance = 0.299 * bg.0 as f64 + 0.587 * bg.1 as f64 + 0.114 * bg.2 as f64;
    if luminance < 140.0 {
        WHITE
    } else {
        BLACK
    }
}

/// A number for a label: at most 4 decimals, trailing zeros dropped (`0.1`, `2`, `0.0375`).
pub(crate) fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let digits = if v.abs() >= 100.0 { 1 } else { 4 };
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

/// A fraction as a percentage for tick labels (`85%`, `2.5%`).
pub(crate) fn fmt_pct_tick(v: f64) -> String {
    let pct = v * 100.0;
    if (pct - pct.round()).abs() < 1e-6 {
        format!("{}%", pct.round())
    } else {
        format!("{pct:.1}%")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LineKind {
    Solid,
    Dashed,
    Dotted,
}

/// One line of a [`line_chart`].
#[derive(Clone, Debug)]
pub(crate) struct Line {
    pub points: Vec<(f64, f64)>,
    /// `(x, low, high)`, drawn as a shaded band; empty for none.
    pub band: Vec<(f64, f64, f64)>,
    pub color: RGBColor,
    pub kind: LineKind,
    pub width: u32,
    pub markers: bool,
    /// Markers on every this-many points (1: all), so long series stay readable.
    pub marker_every: usize,
}

impl Line {
    pub fn new(points: Vec<(f64, f64)>, color: RGBColor) -> Self {
        Line {
            points,
            band: Vec::new(),
            color,
            kind: LineKind::Solid,
            width: 2,
            markers: true,
            marker_every: 1,
        }
    }
}

/// Axes of a [`line_chart`].
#[derive(Clone, Debug)]
pub(crate) struct Axes {
    /// Drawn above the plot (for sub-panels); figure titles go through [`title`].
    pub caption: Option<String>,
    pub x_label: String,
    pub y_label: String,
    pub x: Range<f64>,
    pub y: Range<f64>,
    pub x_percent: bool,
    pub y_percent: bool,
    /// Label only whole x values (epochs).
    pub x_integer: bool,
    /// A logarithmic y axis (`y.start > 0`); values below `y.start` are drawn at it.
    pub y_log: bool,
}

/// The floor of a log axis showing `smallest` (> 0): the largest 1, 2 or 5 x 10^k at or below
/// it, within [1e-4, 0.1].
pub(crate) fn log_floor(smallest: f64) -> f64 {
    let decade = 10f64.powf(smallest.log10().floor());
    let floor = [5.0, 2.0, 1.0]
        .iter()
        .map(|m| m * decade)
        .find(|&f| f <= smallest * (1.0 + 1e-9))
        .unwrap_or(decade);
    floor.clamp(1e-4, 0.1)
}

/// A log axis from [`log_floor`] of `smallest` to `top`, its floor lowered to the power of ten
/// below where the range holds none: plotters draws no tick on a log axis without one.
pub(crate) fn log_axis(smallest: f64, top: f64) -> Range<f64> {
    let floor = log_floor(smallest);
    let decade = 10f64.powf(floor.log10().ceil());
    if decade <= top * (1.0 + 1e-9) {
        floor..top
    } else {
        decade / 10.0..top
    }
}

/// `[min, max]` of `values` padded by `pad` of the span (a span of 0 becomes ±0.5).
pub(crate) fn padded_range(values: impl IntoIterator<Item = f64>, pad: f64) -> Range<f64> {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(v), h.max(v))
        });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let span = hi - lo;
    if span <= 0.0 {
        return (lo - 0.5)..(hi + 0.5);
    }
    (lo - pad * span)..(hi + pad * span)
}

/// The figure's title, centred at the top; returns the area below it.
pub(crate) fn title<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    text: &str,
) -> std::result::Result<DrawingArea<DB, Shift>, String> {
    root.margin(10, 0, 0, 0)
        .titled(text, (FONT, 22, FontStyle::Bold).into_font())
        .map_err(e)
}

/// A line chart with optional interval bands and vertical reference lines.
pub(crate) fn line_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    axes: &Axes,
    lines: &[Line],
    vlines: &[f64],
) -> DrawResult {
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(12)
        .margin_right(20)
        .x_label_area_size(52)
        .y_label_area_size(72);
    if let Some(caption) = &axes.caption {
        builder.caption(caption, (FONT, 18));
    }
    if axes.y_log {
        let chart = builder
            // Just below the floor: plotters' key points start at the first power of ten above
            // the range start, and log10(0.1) rounds to just above -1.
            .build_cartesian_2d(
                axes.x.clone(),
                (axes.y.start * (1.0 - 1e-9)..axes.y.end).log_scale(),
            )
            .map_err(e)?;
        draw_lines(chart, axes, lines, vlines)
    } else {
        let chart = builder
            .build_cartesian_2d(axes.x.clone(), axes.y.clone())
            .map_err(e)?;
        draw_lines(chart, axes, lines, vlines)
    }
}

/// [`line_chart`]'s mesh and lines, for a linear or a logarithmic y axis.
fn draw_lines<DB, Y>(
    mut chart: ChartContext<'_, DB, Cartesian2d<RangedCoordf64, Y>>,
    axes: &Axes,
    lines: &[Line],
    vlines: &[f64],
) -> DrawResult
where
    DB: DrawingBackend,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    // A log axis has no zero: a 0% error is drawn at the axis floor.
    let floor = if axes.y_log {
        axes.y.start
    } else {
        f64::NEG_INFINITY
    };
    let at = |y: f64| y.max(floor);
    let x_fmt = |v: &f64| {
        if axes.x_integer && (v.fract().abs() > 1e-9 || *v < 0.0) {
            String::new()
        } else if axes.x_percent {
            fmt_pct_tick(*v)
        } else {
            fmt_num(*v)
        }
    };
    let y_fmt = |v: &f64| {
        // A log axis asks for every 1..9 x 10^k (grid lines) and labels 1, 2 and 5 of them.
        let mantissa = v / 10f64.powf(v.log10().floor());
        if axes.y_log && ![1.0, 2.0, 5.0].iter().any(|m| (mantissa - m).abs() < 1e-6) {
            String::new()
        } else if axes.y_percent {
            fmt_pct_tick(*v)
        } else {
            fmt_num(*v)
        }
    };
    chart
        .configure_mesh()
        .x_desc(axes.x_label.as_str())
        .y_desc(axes.y_label.as_str())
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .x_labels(6)
        .y_labels(if axes.y_log { 40 } else { 8 })
        .max_light_lines(if axes.y_log { 0 } else { 4 })
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .bold_line_style(RGBColor(220, 220, 220))
        .light_line_style(RGBColor(242, 242, 242))
        .draw()
        .map_err(e)?;
    for &x in vlines {
        chart
            .draw_series(DashedLineSeries::new(
                [(x, axes.y.start), (x, axes.y.end)],
                6,
                4,
                RGBColor(120, 120, 120).stroke_width(1),
            ))
            .map_err(e)?;
    }
    for line in lines {
        if line.band.len() >= 2 {
            let mut poly: Vec<(f64, f64)> = line.band.iter().map(|&(x, _, h)| (x, at(h))).collect();
            poly.extend(line.band.iter().rev().map(|&(x, l, _)| (x, at(l))));
            chart
                .draw_series(std::iter::once(Polygon::new(
                    poly,
                    line.color.mix(0.15).filled(),
                )))
                .map_err(e)?;
        } else if line.band.len() == 1 {
            let (x, l, h) = line.band[0];
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x, at(l)), (x, at(h))],
                    line.color.mix(0.5).stroke_width(3),
                )))
                .map_err(e)?;
        }
    }
    for line in lines {
        let style = line.color.stroke_width(line.width);
        let points = line.points.iter().map(|&(x, y)| (x, at(y)));
        match line.kind {
            LineKind::Solid => chart
                .draw_series(LineSeries::new(points, style))
                .map(|_| ()),
            LineKind::Dashed => chart
                .draw_series(DashedLineSeries::new(points, 9, 5, style))
                .map(|_| ()),
            LineKind::Dotted => chart
                .draw_series(DashedLineSeries::new(points, 2, 4, style))
                .map(|_| ()),
        }
        .map_err(e)?;
        if line.markers {
            chart
                .draw_series(
                    line.points
                        .iter()
                        .step_by(line.marker_every.max(1))
                        .map(|&(x, y)| {
                            Circle::new((x, at(y)), line.width + 2, line.color.filled())
                        }),
                )
                .map_err(e)?;
        }
    }
    Ok(())
}

/// One row of a [`side_legend`].
#[derive(Clone, Debug)]
pub(crate) enum LegendItem {
    /// A bold group heading.
    Header(String),
    Entry {
        label: String,
        color: RGBColor,
        kind: LineKind,
        width: u32,
        /// Draw a shaded box behind the sample (the series has a band).
        band: bool,
        marker: bool,
    },
}

impl LegendItem {
    pub fn line(label: impl Into<String>, color: RGBColor, kind: LineKind) -> Self {
        LegendItem::Entry {
            label: label.into(),
            color,
            kind,
            width: 2,
            band: false,
            marker: false,
        }
    }
}

/// Width of the legend column the charts reserve on their right.
pub(crate) const LEGEND_WIDTH: u32 = 230;

/// `text` cut to fit `max_width` pixels in `style`, with an ellipsis.
pub(crate) fn fit_text<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    text: &str,
    style: &TextStyle<'_>,
    max_width: u32,
) -> String {
    let width = |s: &str| {
        area.estimate_text_size(s, style)
            .map(|(w, _)| w)
            .unwrap_or(0)
    };
    if width(text) <= max_width {
        return text.to_string();
    }
    let chars: Vec<char> = text.chars().collect();
    for keep in (1..chars.len()).rev() {
        let candidate: String = chars[..keep].iter().chain(['…'].iter()).collect();
        if width(&candidate) <= max_width {
            return candidate;
        }
    }
    "…".to_string()
}

/// A legend drawn in its own area (beside a chart, never over the data), from `top` down.
pub(crate) fn side_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    top: i32,
    items: &[LegendItem],
) -> DrawResult {
    let (w, _) = area.dim_in_pixel();
    let text = TextStyle::from((FONT, 15).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let bold = TextStyle::from((FONT, 15, FontStyle::Bold).into_font())
        .pos(Pos::new(HPos::Left, VPos::Center));
    let mut y = top;
    for item in items {
        match item {
            LegendItem::Header(label) => {
                y += 4;
                let label = fit_text(area, label, &bold, w.saturating_sub(12));
                area.draw(&Text::new(label, (6, y), bold.clone()))
                    .map_err(e)?;
                y += 22;
            }
            LegendItem::Entry {
                label,
                color,
                kind,
                width,
                band,
                marker,
            } => {
                if *width == 0 && !*marker {
                    // A note: text only.
                    let label = fit_text(area, label, &text, w.saturating_sub(16));
                    let grey = text.color(&RGBColor(70, 70, 70));
                    area.draw(&Text::new(label, (10, y), grey)).map_err(e)?;
                    y += 22;
                    continue;
                }
                let (x0, x1) = (10, 44);
                if *band {
                    area.draw(&Rectangle::new(
                        [(x0, y - 7), (x1, y + 7)],
                        color.mix(0.15).filled(),
                    ))
                    .map_err(e)?;
                }
                let style = color.stroke_width(*width);
                match kind {
                    _ if *width == 0 => {}
                    LineKind::Solid => {
                        area.draw(&PathElement::new(vec![(x0, y), (x1, y)], style))
                            .map_err(e)?;
                    }
                    LineKind::Dashed | LineKind::Dotted => {
                        let (dash, gap) = if *kind == LineKind::Dashed {
                            (8, 4)
                        } else {
                            (2, 4)
                        };
                        let mut x = x0;
                        while x < x1 {
                            let end = (x + dash).min(x1);
                            area.draw(&PathElement::new(vec![(x, y), (end, y)], style))
                                .map_err(e)?;
                            x = end + gap;
                        }
                    }
                }
                if *marker {
                    area.draw(&Circle::new(((x0 + x1) / 2, y), 4, color.filled()))
                        .map_err(e)?;
                }
                let label = fit_text(area, label, &text, w.saturating_sub(60));
                area.draw(&Text::new(label, (52, y), text.clone()))
                    .map_err(e)?;
                y += 24;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_floor_is_the_next_1_2_5_step_below() {
        assert_eq!(log_floor(0.0083), 0.005);
        assert_eq!(log_floor(0.012), 0.01);
        assert_eq!(log_floor(0.03), 0.02);
        assert_eq!(log_floor(0.2), 0.1);
        assert_eq!(log_floor(1e-7), 1e-4);
    }

    #[test]
    fn a_log_axis_holds_a_power_of_ten() {
        // 0.02..0.045 holds none: the floor goes down to 0.01.
        let r = log_axis(0.028, 0.045);
        assert!((r.start - 0.01).abs() < 1e-12 && r.end == 0.045, "{r:?}");
        // 0.1..0.3 holds 0.1; 0.005..0.05 holds 0.01: both unchanged.
        assert_eq!(log_axis(0.19, 0.3), 0.1..0.3);
        assert_eq!(log_axis(0.0083, 0.05), 0.005..0.05);
    }

    #[test]
    fn numbers_and_colours() {
        assert_eq!(fmt_num(0.1), "0.1");
        assert_eq!(fmt_num(2.0), "2");
        assert_eq!(fmt_num(0.0375), "0.0375");
        assert_eq!(fmt_num(-400.0), "-400");
        assert_eq!(fmt_pct_tick(0.85), "85%");
        assert_eq!(fmt_pct_tick(0.025), "2.5%");
        assert_eq!(diverging(0.0), RGBColor(247, 247, 247));
        assert_eq!(diverging(-1.0), RGBColor(5, 48, 97));
        assert_eq!(diverging(1.0), RGBColor(103, 0, 31));
        assert_eq!(sequential(0.0), RGBColor(255, 245, 240));
        assert_eq!(padded_range([1.0, 3.0], 0.5), 0.0..4.0);
    }
}
