//! The figures: each a [`Figure`] drawn from the data in [`crate::series`] or
//! [`crate::tensors`].

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

use crate::plot::{
    diverging, e, fit_text, fmt_num, line_chart, log_axis, log_floor, padded_range, palette,
    sequential, side_legend, text_on, title, Axes, DrawResult, Figure, LegendItem, Line, LineKind,
    FONT, LEGEND_WIDTH,
};
use crate::series::{
    AccuracyPanel, CurvePanel, NoiseSeries, TradeoffPanel, TrainingCurves, TransferMatrix,
};
use crate::tensors::{Image, LogitSweep, ModelImages};

const GREY: RGBColor = RGBColor(90, 90, 90);

/// A model's colour: the same in every figure.
fn model_color(order: &[String], model: &str) -> RGBColor {
    palette(order.iter().position(|m| m == model).unwrap_or(order.len()))
}

fn model_entry(order: &[String], model: &str, band: bool, marker: bool) -> LegendItem {
    LegendItem::Entry {
        label: model.to_string(),
        color: model_color(order, model),
        kind: LineKind::Solid,
        width: 2,
        band,
        marker,
    }
}

fn note(text: &str) -> LegendItem {
    LegendItem::Entry {
        label: text.to_string(),
        color: WHITE,
        kind: LineKind::Solid,
        width: 0,
        band: false,
        marker: false,
    }
}

/// Splits `area` into the chart and the legend column on its right.
fn with_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
) -> (DrawingArea<DB, Shift>, DrawingArea<DB, Shift>) {
    let (w, _) = area.dim_in_pixel();
    area.split_horizontally(w.saturating_sub(LEGEND_WIDTH))
}

/// A horizontal colour bar, 14 pixels high, one column per pixel of `width`: column `i` in
/// `colour(i)`.
fn colour_bar<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    (x, y): (i32, i32),
    width: i32,
    colour: impl Fn(i32) -> RGBColor,
) -> DrawResult {
    for i in 0..width {
        root.draw(&Rectangle::new(
            [(x + i, y), (x + i + 1, y + 14)],
            colour(i).filled(),
        ))
        .map_err(e)?;
    }
    Ok(())
}

fn centered(size: u32) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font()).pos(Pos::new(HPos::Center, VPos::Center))
}

/// Accuracy against ε, one line per model, Wilson bands, clean accuracy at ε = 0.
pub(crate) struct AccuracyFigure<'a> {
    pub panel: &'a AccuracyPanel,
    pub order: &'a [String],
}

impl Figure for AccuracyFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (1000, 620)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let p = self.panel;
        let method = p
            .method
            .as_deref()
            .map(|m| format!(", {m}"))
            .unwrap_or_default();
        let area = title(
            root,
            &format!("Accuracy under attack: {} ({}{method})", p.attack, p.norm),
        )?;
        let (chart, legend) = with_legend(&area);
        let max_eps = p.eps_values().last().copied().unwrap_or(1.0);
        let lines: Vec<Line> = p
            .series
            .iter()
            .map(|s| {
                let mut line = Line::new(
                    s.points.iter().map(|q| (q.x, q.y)).collect(),
                    model_color(self.order, &s.model),
                );
                line.band = s.points.iter().map(|q| (q.x, q.low, q.high)).collect();
                line
            })
            .collect();
        let axes = Axes {
            caption: None,
            x_label: if p.eps_written.is_empty() {
                format!("ε ({} budget, pixels in [0, 1])", p.norm)
            } else {
                let written: Vec<&str> = p.eps_written.iter().map(|(_, t)| t.as_str()).collect();
                format!(
                    "ε ({} budget, pixels in [0, 1]; {})",
                    p.norm,
                    written.join(", ")
                )
            },
            y_label: "accuracy".into(),
            x: 0.0..max_eps * 1.04,
            y: -0.015..1.02,
            x_percent: false,
            y_percent: true,
            x_integer: false,
            y_log: false,
        };
        line_chart(&chart, &axes, &lines, &[])?;
        let mut items = vec![LegendItem::Header("model".into())];
        items.extend(
            p.series
                .iter()
                .map(|s| model_entry(self.order, &s.model, true, true)),
        );
        items.push(LegendItem::Header("notes".into()));
        items.push(note(&format!("n = {} examples", p.n)));
        items.push(note("ε = 0: clean accuracy"));
        items.push(note("shaded: Wilson 95% CI"));
        if let Some(kind) = &p.kind {
            items.push(note(&format!("kind: {kind}")));
        }
        side_legend(&legend, 60, &items)
    }
}

/// Noise robustness: accuracy against σ, clipped (solid) and unclipped (dashed).
pub(crate) struct NoiseFigure<'a> {
    pub series: &'a [NoiseSeries],
    pub order: &'a [String],
}

impl Figure for NoiseFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (1000, 620)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let area = title(root, "Error under Gaussian noise")?;
        let (chart, legend) = with_legend(&area);
        let max_sigma = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.x))
            .fold(0.0f64, f64::max);
        let kind = |clip: bool| {
            if clip {
                LineKind::Solid
            } else {
                LineKind::Dashed
            }
        };
        // Error on a log axis: accuracies of 98.5% and 99% (1.5% and 1% error) would overlap
        // on a linear accuracy axis that also shows 70%.
        let errors = || {
            self.series
                .iter()
                .flat_map(|s| s.points.iter().flat_map(|p| [1.0 - p.high, 1.0 - p.y]))
        };
        let smallest = errors().filter(|&v| v > 0.0).fold(1.0f64, f64::min);
        let largest = errors().fold(0.0f64, f64::max);
        let floor = log_floor(smallest);
        let lines: Vec<Line> = self
            .series
            .iter()
            .map(|s| {
                let mut line = Line::new(
                    s.points.iter().map(|q| (q.x, 1.0 - q.y)).collect(),
                    model_color(self.order, &s.model),
                );
                // Bands for the clipped series only: six overlapping bands read as one smear.
                if s.clip || self.series.iter().all(|t| !t.clip) {
                    line.band = s
                        .points
                        .iter()
                        .map(|q| (q.x, 1.0 - q.high, 1.0 - q.low))
                        .collect();
                }
                line.kind = kind(s.clip);
                line
            })
            .collect();
        let axes = Axes {
            caption: None,
            x_label: "σ (noise standard deviation, pixels in [0, 1])".into(),
            y_label: "error (1 − accuracy, log scale)".into(),
            x: 0.0..(if max_sigma > 0.0 {
                max_sigma * 1.04
            } else {
                1.0
            }),
            y: floor..(largest * 1.6).clamp(floor * 10.0, 1.25),
            x_percent: false,
            y_percent: true,
            x_integer: false,
            y_log: true,
        };
        line_chart(&chart, &axes, &lines, &[])?;
        let mut models: Vec<&str> = Vec::new();
        for s in self.series {
            if !models.contains(&s.model.as_str()) {
                models.push(&s.model);
            }
        }
        let mut items = vec![LegendItem::Header("model".into())];
        items.extend(
            models
                .iter()
                .map(|m| model_entry(self.order, m, true, true)),
        );
        items.push(LegendItem::Header("noisy images".into()));
        for clip in [true, false] {
            if self.series.iter().any(|s| s.clip == clip) {
                let label = if clip {
                    "clipped to [0, 1]"
                } else {
                    "not clipped"
                };
                items.push(LegendItem::line(label, GREY, kind(clip)));
            }
        }
        items.push(LegendItem::Header("notes".into()));
        items.push(note("σ = 0: clean error"));
        items.push(note("shaded: Wilson 95% CI"));
        if self.series.iter().any(|s| s.clip) && self.series.iter().any(|s| !s.clip) {
            items.push(note("(of the clipped series)"));
        }
        side_legend(&legend, 60, &items)
    }
}

/// Per-model panels in a grid of at most four columns, row by row.
fn grid<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    n: usize,
) -> Vec<DrawingArea<DB, Shift>> {
    let cols = n.clamp(1, 4);
    area.split_evenly((n.div_ceil(cols), cols))
}

fn grid_size(n: usize) -> (u32, u32) {
    let rows = n.max(1).div_ceil(n.clamp(1, 4)) as u32;
    (1400, 70 + rows * 330)
}

/// The last epoch of a model's curves: each panel spans its own (a stage-2 run of six epochs
/// beside a stage 1 of 490 would be a sliver on a shared axis).
fn last_epoch(c: &TrainingCurves) -> f64 {
    c.train_loss.iter().map(|p| p.0).fold(1.0f64, f64::max)
}

/// Error per epoch, one panel per model on a shared logarithmic axis (errors of 1–2% and of
/// 90% on one scale): train solid, validation dashed, attacked validation dotted (the
/// single-step attack) and dotted with markers (10-step PGD), each panel naming its check.
pub(crate) struct TrainingFigure<'a> {
    pub curves: &'a [TrainingCurves],
    pub order: &'a [String],
}

impl Figure for TrainingFigure<'_> {
    fn size(&self) -> (u32, u32) {
        grid_size(self.curves.len())
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let area = title(root, "Training curves: error per epoch")?;
        let (charts, legend) = with_legend(&area);
        let panels = grid(&charts, self.curves.len());
        // The axis floor: the 1-2-5 step at or below the smallest non-zero error (0% is drawn
        // there).
        let smallest = self
            .curves
            .iter()
            .flat_map(|c| {
                [
                    &c.train_error,
                    &c.valid_error,
                    &c.valid_adv_error,
                    &c.valid_pgd_error,
                ]
                .into_iter()
                .flat_map(|l| l.iter().map(|p| p.1))
            })
            .filter(|&v| v > 0.0)
            .fold(1.0f64, f64::min);
        let floor = log_floor(smallest);
        for (c, panel) in self.curves.iter().zip(&panels) {
            let max_epoch = last_epoch(c);
            let few = max_epoch <= 30.0;
            let color = model_color(self.order, &c.model);
            let mk = |points: &[(f64, f64)], kind: LineKind, markers: bool| {
                let mut line = Line::new(points.to_vec(), color);
                line.kind = kind;
                line.markers = markers || points.len() == 1;
                line
            };
            let mut pgd = mk(&c.valid_pgd_error, LineKind::Dotted, true);
            pgd.marker_every = (max_epoch / 12.0).ceil().max(1.0) as usize;
            let mut lines = vec![
                mk(&c.train_error, LineKind::Solid, few),
                mk(&c.valid_error, LineKind::Dashed, false),
                mk(&c.valid_adv_error, LineKind::Dotted, false),
                pgd,
            ];
            lines.retain(|l| !l.points.is_empty());
            let caption = match &c.check {
                Some(check) if !c.valid_adv_error.is_empty() => {
                    format!("{} · {check}", c.model)
                }
                _ => c.model.clone(),
            };
            let axes = Axes {
                caption: Some(caption),
                x_label: "epoch".into(),
                y_label: "error (log scale)".into(),
                x: 0.5..max_epoch + 0.5,
                y: floor..1.25,
                x_percent: false,
                y_percent: true,
                x_integer: true,
                y_log: true,
            };
            line_chart(panel, &axes, &lines, &[])?;
        }
        let mut items = vec![LegendItem::Header("split".into())];
        items.push(LegendItem::line("train", GREY, LineKind::Solid));
        if self.curves.iter().any(|c| !c.valid_error.is_empty()) {
            items.push(LegendItem::line("validation", GREY, LineKind::Dashed));
        }
        let single = self.curves.iter().any(|c| !c.valid_adv_error.is_empty());
        let pgd = self.curves.iter().any(|c| !c.valid_pgd_error.is_empty());
        if single || pgd {
            items.push(LegendItem::Header("validation, attacked".into()));
        }
        if single {
            items.push(LegendItem::line(
                "1-step (FGSM / FGM)",
                GREY,
                LineKind::Dotted,
            ));
        }
        if pgd {
            items.push(LegendItem::Entry {
                label: "10-step PGD".into(),
                color: GREY,
                kind: LineKind::Dotted,
                width: 2,
                band: false,
                marker: true,
            });
        }
        if single || pgd {
            items.push(LegendItem::Header("notes".into()));
            items.push(note("at the norm and ε in each"));
            items.push(note("panel's title"));
            items.push(note(&format!("0% drawn at {}%", fmt_num(floor * 100.0))));
        }
        side_legend(&legend, 60, &items)
    }
}

/// Loss per epoch, one panel per model on its own scale: a regularized model's train loss is
/// its objective (with the adversarial term), not comparable with another model's.
pub(crate) struct TrainingLossFigure<'a> {
    pub curves: &'a [TrainingCurves],
    pub order: &'a [String],
}

impl Figure for TrainingLossFigure<'_> {
    fn size(&self) -> (u32, u32) {
        grid_size(self.curves.len())
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let area = title(root, "Training curves: loss per epoch")?;
        let (charts, legend) = with_legend(&area);
        let panels = grid(&charts, self.curves.len());
        for (c, panel) in self.curves.iter().zip(&panels) {
            let max_epoch = last_epoch(c);
            let few = max_epoch <= 30.0;
            let color = model_color(self.order, &c.model);
            let mut train = Line::new(c.train_loss.clone(), color);
            train.markers = few || c.train_loss.len() == 1;
            let mut valid = Line::new(c.valid_loss.clone(), color);
            valid.kind = LineKind::Dashed;
            valid.markers = c.valid_loss.len() == 1;
            let mut lines = vec![train, valid];
            lines.retain(|l| !l.points.is_empty());
            let values = || lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
            let top = values().fold(0.0f64, f64::max);
            let bottom = values().filter(|&v| v > 0.0).fold(f64::INFINITY, f64::min);
            let axes = Axes {
                caption: Some(if c.regularized {
                    format!("{} (train: objective)", c.model)
                } else {
                    c.model.clone()
                }),
                x_label: "epoch".into(),
                y_label: "loss (log scale)".into(),
                x: 0.5..max_epoch + 0.5,
                y: log_axis(bottom.min(top), (top * 1.5).max(1e-3)),
                x_percent: false,
                y_percent: false,
                x_integer: true,
                y_log: true,
            };
            line_chart(panel, &axes, &lines, &[])?;
        }
        let mut items = vec![LegendItem::Header("split".into())];
        items.push(LegendItem::line("train", GREY, LineKind::Solid));
        if self.curves.iter().any(|c| !c.valid_loss.is_empty()) {
            items.push(LegendItem::line("validation", GREY, LineKind::Dashed));
        }
        items.push(LegendItem::Header("notes".into()));
        items.push(note("cross-entropy; a regularized"));
        items.push(note("model's train line is its"));
        items.push(note("objective, with the r* term"));
        items.push(note("each panel on its own scale"));
        side_legend(&legend, 60, &items)
    }
}

/// Robust against clean accuracy, one point per model, with both intervals.
pub(crate) struct TradeoffFigure<'a> {
    pub panel: &'a TradeoffPanel,
    pub order: &'a [String],
}

impl Figure for TradeoffFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (1000, 680)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let p = self.panel;
        let area = title(
            root,
            &format!(
                "Robust vs clean accuracy: {} ({}) at ε = {}",
                p.attack,
                p.norm,
                fmt_num(p.eps)
            ),
        )?;
        let (chart_area, legend) = with_legend(&area);
        let clip = |r: std::ops::Range<f64>| r.start.max(0.0)..r.end.min(1.0);
        let x = clip(padded_range(
            p.points.iter().flat_map(|q| [q.clean.low, q.clean.high]),
            0.15,
        ));
        let y = clip(padded_range(
            p.points
                .iter()
                .flat_map(|q| [q.robust.low, q.robust.high, 0.0]),
            0.1,
        ));
        // A little room below 0 and left of the lowest bar, so no marker sits on an axis.
        let y = (y.start - 0.015 * (y.end - y.start))..y.end;
        let x = (x.start - 0.015 * (x.end - x.start))..x.end;
        let mut chart = ChartBuilder::on(&chart_area)
            .margin(12)
            .margin_right(24)
            .x_label_area_size(52)
            .y_label_area_size(72)
            .build_cartesian_2d(x.clone(), y.clone())
            .map_err(e)?;
        let pct = |v: &f64| crate::plot::fmt_pct_tick(*v);
        chart
            .configure_mesh()
            .x_desc("clean accuracy (attacked examples)")
            .y_desc(format!("robust accuracy at ε = {}", fmt_num(p.eps)))
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .x_label_formatter(&pct)
            .y_label_formatter(&pct)
            .bold_line_style(RGBColor(220, 220, 220))
            .light_line_style(RGBColor(242, 242, 242))
            .draw()
            .map_err(e)?;
        // Robust accuracy never exceeds clean accuracy: the diagonal bounds the cloud.
        let lo = x.start.max(y.start);
        let hi = x.end.min(y.end);
        let diagonal = hi > lo;
        if diagonal {
            chart
                .draw_series(DashedLineSeries::new(
                    [(lo, lo), (hi, hi)],
                    6,
                    4,
                    GREY.stroke_width(1),
                ))
                .map_err(e)?;
        }
        let label_font = (FONT, 15).into_font();
        let offsets = {
            let at = |x: f64, y: f64| chart.backend_coord(&(x, y));
            let mut obstacles = Vec::new();
            for q in &p.points {
                let (cx, cy) = at(q.clean.value, q.robust.value);
                obstacles.push(([cx - 9, cy - 9, cx + 9, cy + 9], 3));
                let (x0, x1) = (at(q.clean.low, 0.0).0, at(q.clean.high, 0.0).0);
                let (y0, y1) = (at(0.0, q.robust.high).1, at(0.0, q.robust.low).1);
                obstacles.push(([x0, cy - 2, x1, cy + 2], 1));
                obstacles.push(([cx - 2, y0, cx + 2, y1], 1));
            }
            let labels: Vec<PointLabel> = p
                .points
                .iter()
                .map(|q| {
                    let size = chart_area
                        .estimate_text_size(&q.model, &label_font.clone().into())
                        .unwrap_or((8 * q.model.len() as u32, 15));
                    PointLabel {
                        at: at(q.clean.value, q.robust.value),
                        size,
                    }
                })
                .collect();
            let (xs, ys) = chart.plotting_area().get_pixel_range();
            place_labels(&labels, obstacles, [xs.start, ys.start, xs.end, ys.end])
        };
        for (q, offset) in p.points.iter().zip(offsets) {
            let color = model_color(self.order, &q.model);
            let style = color.stroke_width(2);
            let (cx, cy) = (q.clean.value, q.robust.value);
            chart
                .draw_series([
                    PathElement::new(vec![(q.clean.low, cy), (q.clean.high, cy)], style),
                    PathElement::new(vec![(cx, q.robust.low), (cx, q.robust.high)], style),
                ])
                .map_err(e)?;
            chart
                .draw_series(std::iter::once(Circle::new((cx, cy), 7, color.filled())))
                .map_err(e)?;
            chart
                .draw_series(std::iter::once(
                    EmptyElement::at((cx, cy))
                        + Text::new(q.model.clone(), offset, label_font.clone()),
                ))
                .map_err(e)?;
        }
        let mut items = vec![LegendItem::Header("model".into())];
        items.extend(
            p.points
                .iter()
                .map(|q| model_entry(self.order, &q.model, false, true)),
        );
        items.push(LegendItem::Header("notes".into()));
        items.push(note("bars: Wilson 95% CIs"));
        if diagonal {
            items.push(note("dashed: robust = clean"));
        }
        side_legend(&legend, 60, &items)
    }
}

/// A point's label to place: the point and the label's size, in pixels.
struct PointLabel {
    at: (i32, i32),
    size: (u32, u32),
}

/// Offsets from each point to the top-left corner of its label, in pixels: of a few places
/// around the marker (above right first), the one whose box covers the least of the markers
/// and bars (`obstacles`, boxes `[x0, y0, x1, y1]` with a weight), the labels placed before it,
/// and the outside of `area`; ties go to the earlier place.
fn place_labels(
    labels: &[PointLabel],
    mut obstacles: Vec<([i32; 4], u32)>,
    area: [i32; 4],
) -> Vec<(i32, i32)> {
    let overlap =
        |a: [i32; 4], b: [i32; 4]| a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3];
    let mut placed = Vec::with_capacity(labels.len());
    for &PointLabel {
        at: (px, py),
        size: (w, h),
    } in labels
    {
        let (w, h) = (w as i32, h as i32);
        let mut candidates = vec![(10, -22), (10, 8), (-10 - w, -22), (-10 - w, 8)];
        candidates.extend((1..4).map(|k| (10, -22 - 18 * k)));
        let cost = |&(dx, dy): &(i32, i32)| {
            let b = [px + dx, py + dy, px + dx + w, py + dy + h];
            let inside = b[0] >= area[0] && b[1] >= area[1] && b[2] <= area[2] && b[3] <= area[3];
            let hits: u32 = obstacles
                .iter()
                .filter(|(o, _)| overlap(b, *o))
                .map(|(_, weight)| weight)
                .sum();
            hits + if inside { 0 } else { 5 }
        };
        let best = candidates
            .iter()
            .copied()
            .min_by_key(cost)
            .expect("candidates are not empty");
        let (dx, dy) = best;
        obstacles.push(([px + dx, py + dy, px + dx + w, py + dy + h], 3));
        placed.push(best);
    }
    placed
}

/// Target error on examples crafted against the source; white-box diagonal outlined.
pub(crate) struct TransferFigure<'a> {
    pub matrix: &'a TransferMatrix,
}

const CELL_W: u32 = 140;
const CELL_H: u32 = 80;

impl TransferFigure<'_> {
    fn left(&self) -> u32 {
        let longest = self
            .matrix
            .sources
            .iter()
            .map(|s| s.chars().count())
            .max()
            .unwrap_or(4) as u32;
        (60 + 9 * longest).clamp(220, 320)
    }
    const TOP: u32 = 130;
    const BOTTOM: u32 = 118;
}

impl Figure for TransferFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let m = self.matrix;
        let w = self.left() + CELL_W * m.targets.len().max(1) as u32 + 40;
        let h = Self::TOP + CELL_H * m.sources.len().max(1) as u32 + Self::BOTTOM;
        (w.max(720), h)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let m = self.matrix;
        let (w, _) = self.size();
        let heading = format!(
            "Transfer: {} ({}) at ε = {}",
            m.attack,
            m.norm,
            fmt_num(m.eps)
        );
        root.draw(&Text::new(
            heading,
            (w as i32 / 2, 24),
            TextStyle::from((FONT, 22, FontStyle::Bold).into_font())
                .pos(Pos::new(HPos::Center, VPos::Center)),
        ))
        .map_err(e)?;
        let natural = self.left() + CELL_W * m.targets.len().max(1) as u32 + 40;
        let left = (self.left() + w.saturating_sub(natural) / 2) as i32;
        let top = Self::TOP as i32;
        let (cw, ch) = (CELL_W as i32, CELL_H as i32);
        let grid_w = cw * m.targets.len() as i32;
        let grid_h = ch * m.sources.len() as i32;
        // Axis titles.
        root.draw(&Text::new(
            "target (classifies the examples)",
            (left + grid_w / 2, 66),
            centered(17),
        ))
        .map_err(e)?;
        // Horizontal, above the row labels: a rotated title overflows a grid of one or two rows.
        let source_title =
            TextStyle::from((FONT, 17).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
        root.draw(&Text::new(
            "source (crafted on) ↓",
            (left - 10, top - 20),
            source_title,
        ))
        .map_err(e)?;
        let label = TextStyle::from((FONT, 15).into_font());
        for (j, t) in m.targets.iter().enumerate() {
            let text = fit_text(root, t, &label, CELL_W - 8);
            root.draw(&Text::new(
                text,
                (left + cw * j as i32 + cw / 2, top - 20),
                centered(15),
            ))
            .map_err(e)?;
        }
        let right_aligned =
            TextStyle::from((FONT, 15).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
        for (i, s) in m.sources.iter().enumerate() {
            let text = fit_text(root, s, &label, left as u32 - 50);
            root.draw(&Text::new(
                text,
                (left - 10, top + ch * i as i32 + ch / 2),
                right_aligned.clone(),
            ))
            .map_err(e)?;
        }
        for (i, row) in m.cells.iter().enumerate() {
            for (j, cell) in row.iter().enumerate() {
                let (x0, y0) = (left + cw * j as i32, top + ch * i as i32);
                let (cx, cy) = (x0 + cw / 2, y0 + ch / 2);
                match cell {
                    Some(c) => {
                        let bg = sequential(c.error);
                        root.draw(&Rectangle::new([(x0, y0), (x0 + cw, y0 + ch)], bg.filled()))
                            .map_err(e)?;
                        let fg = text_on(bg);
                        let big = TextStyle::from((FONT, 20, FontStyle::Bold).into_font())
                            .pos(Pos::new(HPos::Center, VPos::Center))
                            .color(&fg);
                        let small = centered(13).color(&fg);
                        root.draw(&Text::new(
                            format!("{:.1}%", c.error * 100.0),
                            (cx, cy - 14),
                            big,
                        ))
                        .map_err(e)?;
                        root.draw(&Text::new(
                            format!("[{:.1}, {:.1}]", c.low * 100.0, c.high * 100.0),
                            (cx, cy + 8),
                            small.clone(),
                        ))
                        .map_err(e)?;
                        if m.sources[i] == m.targets[j] {
                            root.draw(&Text::new("white-box", (cx, cy + 26), small))
                                .map_err(e)?;
                        }
                    }
                    None => {
                        root.draw(&Rectangle::new(
                            [(x0, y0), (x0 + cw, y0 + ch)],
                            RGBColor(235, 235, 235).filled(),
                        ))
                        .map_err(e)?;
                        root.draw(&Text::new("—", (cx, cy), centered(18)))
                            .map_err(e)?;
                    }
                }
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cw, y0 + ch)],
                    WHITE.stroke_width(1),
                ))
                .map_err(e)?;
            }
        }
        // The white-box diagonal, outlined on top of the grid lines.
        for (i, s) in m.sources.iter().enumerate() {
            if let Some(j) = m.targets.iter().position(|t| t == s) {
                let (x0, y0) = (left + cw * j as i32, top + ch * i as i32);
                // Four bars rather than a stroked rectangle: the SVG backend ignores stroke widths
                // of rectangles.
                let t = 3;
                for [a, b] in [
                    [(x0, y0), (x0 + cw, y0 + t)],
                    [(x0, y0 + ch - t), (x0 + cw, y0 + ch)],
                    [(x0, y0), (x0 + t, y0 + ch)],
                    [(x0 + cw - t, y0), (x0 + cw, y0 + ch)],
                ] {
                    root.draw(&Rectangle::new([a, b], BLACK.filled()))
                        .map_err(e)?;
                }
            }
        }
        let foot = TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        let y = top + grid_h + 26;
        root.draw(&Text::new(
            "cell: the target's error on examples crafted against the source [Wilson 95% CI];",
            (20, y),
            foot.clone(),
        ))
        .map_err(e)?;
        root.draw(&Text::new(
            "outlined diagonal: white-box (source = target). Darker = higher error.",
            (20, y + 20),
            foot.clone(),
        ))
        .map_err(e)?;
        // Colour bar: cell colours are absolute (0% to 100% error), the same in every matrix.
        let (bar_x, bar_y, bar_w) = (20 + 70, y + 46, 300);
        root.draw(&Text::new("error", (20, bar_y + 7), foot))
            .map_err(e)?;
        colour_bar(root, (bar_x, bar_y), bar_w, |i| {
            sequential(i as f64 / (bar_w - 1) as f64)
        })?;
        for k in 0..=4 {
            let x = bar_x + (bar_w - 1) * k / 4;
            root.draw(&Rectangle::new(
                [(x, bar_y + 14), (x + 1, bar_y + 19)],
                GREY.filled(),
            ))
            .map_err(e)?;
            root.draw(&Text::new(
                format!("{}%", 25 * k),
                (x, bar_y + 30),
                centered(13),
            ))
            .map_err(e)?;
        }
        Ok(())
    }
}

fn class_label(names: &[String], c: u32) -> String {
    match names.get(c as usize) {
        Some(name) => format!("{c} ({name})"),
        None => c.to_string(),
    }
}

/// Per model: each image, then per norm its r* map (diverging, symmetric about 0, scaled by
/// max|r| of that map) and the adversarial image with its new label and confidence.
pub(crate) struct PerturbationFigure<'a> {
    pub model: &'a ModelImages,
    pub class_names: &'a [String],
}

impl PerturbationFigure<'_> {
    const LEFT: u32 = 80;
    const TOP: u32 = 100;
    const BOTTOM: u32 = 90;

    /// The norms, in order of first appearance.
    fn norms(&self) -> Vec<crate::schema::Lp> {
        let mut norms = Vec::new();
        for img in &self.model.images {
            for p in &img.perturbations {
                if !norms.contains(&p.norm) {
                    norms.push(p.norm);
                }
            }
        }
        norms
    }

    /// The ε of `norm`'s maps when every image has the same one.
    fn budget(&self, norm: crate::schema::Lp) -> Option<f64> {
        let mut eps = self
            .model
            .images
            .iter()
            .flat_map(|i| i.perturbations.iter().filter(|p| p.norm == norm))
            .map(|p| p.eps);
        let first = eps.next()??;
        eps.all(|e| e == Some(first)).then_some(first)
    }

    /// Whether `norm` is L1 and every image has an L2 map to take the top gradients from.
    fn top_k_source(&self, norm: crate::schema::Lp) -> bool {
        norm.p == 1.0
            && self
                .model
                .images
                .iter()
                .all(|i| i.perturbations.iter().any(|q| q.norm.p == 2.0))
    }

    /// Pixels per image pixel, and the side of the image box.
    fn scale(&self) -> (u32, u32) {
        let side = self
            .model
            .images
            .iter()
            .map(|i| i.image.height().max(i.image.width()))
            .max()
            .unwrap_or(28)
            .max(1) as u32;
        let s = (140 / side).max(1);
        (s, s * side)
    }

    fn cell(&self) -> (u32, u32) {
        let (_, px) = self.scale();
        ((px + 24).max(150), px + 50)
    }
}

fn draw_image<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    img: &Image,
    origin: (i32, i32),
    scale: i32,
    color: impl Fn(&Image, usize, usize) -> RGBColor,
) -> DrawResult {
    let (x0, y0) = origin;
    // One bitmap, each image pixel a `scale`-sided square: the SVG embeds it as one PNG rather
    // than a rectangle per pixel (2 MB per figure of L2 maps).
    let side = scale.max(1) as usize;
    let (bw, bh) = (img.width() * side, img.height() * side);
    let mut pixels = Vec::with_capacity(bw * bh * 3);
    for y in 0..img.height() {
        let row: Vec<u8> = (0..img.width())
            .flat_map(|x| {
                let c = color(img, y, x);
                std::iter::repeat_n([c.0, c.1, c.2], side).flatten()
            })
            .collect();
        for _ in 0..side {
            pixels.extend_from_slice(&row);
        }
    }
    let bitmap = BitMapElement::with_owned_buffer((x0, y0), (bw as u32, bh as u32), pixels)
        .expect("the buffer holds 3 bytes per pixel");
    root.draw(&bitmap).map_err(e)?;
    let (w, h) = (bw as i32, bh as i32);
    root.draw(&Rectangle::new(
        [(x0 - 1, y0 - 1), (x0 + w, y0 + h)],
        RGBColor(160, 160, 160).stroke_width(1),
    ))
    .map_err(e)
}

fn pixel_color(img: &Image, y: usize, x: usize) -> RGBColor {
    let v = |c: usize| (img.at(c, y, x).clamp(0.0, 1.0) * 255.0).round() as u8;
    if img.channels() == 3 {
        RGBColor(v(0), v(1), v(2))
    } else {
        let g = (img.mean_at(y, x).clamp(0.0, 1.0) * 255.0).round() as u8;
        RGBColor(g, g, g)
    }
}

impl Figure for PerturbationFigure<'_> {
    fn size(&self) -> (u32, u32) {
        let (cw, ch) = self.cell();
        let cols = 1 + 2 * self.norms().len() as u32;
        let rows = self.model.images.len().max(1) as u32;
        (
            (Self::LEFT + cols * cw + 20).max(720),
            Self::TOP + rows * ch + Self::BOTTOM,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let (w, h) = self.size();
        let (scale, px) = self.scale();
        let (cw, ch) = self.cell();
        let norms = self.norms();
        let bold = TextStyle::from((FONT, 22, FontStyle::Bold).into_font())
            .pos(Pos::new(HPos::Center, VPos::Center));
        root.draw(&Text::new(
            format!("Optimal perturbations r*: {}", self.model.model),
            (w as i32 / 2, 24),
            bold,
        ))
        .map_err(e)?;
        let header = centered(16);
        let col_x = |k: u32| (Self::LEFT + k * cw) as i32;
        root.draw(&Text::new(
            "clean x",
            (col_x(0) + cw as i32 / 2, Self::TOP as i32 - 20),
            header.clone(),
        ))
        .map_err(e)?;
        let budget_style = centered(13);
        for (k, norm) in norms.iter().enumerate() {
            let k = k as u32;
            let mid = |col: u32| col_x(col) + cw as i32 / 2;
            root.draw(&Text::new(
                format!("r* ({norm})"),
                (mid(1 + 2 * k), Self::TOP as i32 - 36),
                header.clone(),
            ))
            .map_err(e)?;
            root.draw(&Text::new(
                format!("x + r* ({norm})"),
                (mid(2 + 2 * k), Self::TOP as i32 - 36),
                header.clone(),
            ))
            .map_err(e)?;
            let under = match (self.budget(*norm), self.top_k_source(*norm)) {
                (Some(eps), true) => format!("ε = {}; top {TOP_K} |∇ₓL|", fmt_num(eps)),
                (Some(eps), false) => format!("ε = {}", fmt_num(eps)),
                (None, true) => format!("top {TOP_K} |∇ₓL|"),
                (None, false) => String::new(),
            };
            root.draw(&Text::new(
                under,
                (mid(1 + 2 * k), Self::TOP as i32 - 16),
                budget_style.clone(),
            ))
            .map_err(e)?;
        }
        let caption = centered(13);
        for (row, img) in self.model.images.iter().enumerate() {
            let y0 = (Self::TOP + row as u32 * ch) as i32;
            let label = img
                .index
                .map(|i| format!("#{i}"))
                .unwrap_or_else(|| format!("{}", row + 1));
            root.draw(&Text::new(
                label,
                (Self::LEFT as i32 / 2, y0 + px as i32 / 2),
                centered(15),
            ))
            .map_err(e)?;
            let image_x =
                |k: u32| col_x(k) + (cw as i32 - img.image.width() as i32 * scale as i32) / 2;
            draw_image(
                root,
                &img.image,
                (image_x(0), y0),
                scale as i32,
                pixel_color,
            )?;
            let mut text = format!("label {}", class_label(self.class_names, img.label));
            if let Some(pred) = img.pred {
                text.push_str(&format!(", pred {pred}"));
            }
            let cap_y = y0 + px as i32 + 16;
            let cap = |k: u32, s: String| {
                Text::new(s, (col_x(k) + cw as i32 / 2, cap_y), caption.clone())
            };
            root.draw(&cap(0, text)).map_err(e)?;
            for (k, norm) in norms.iter().enumerate() {
                let k = k as u32;
                let Some(p) = img.perturbations.iter().find(|p| p.norm == *norm) else {
                    continue;
                };
                let max = p.r.max_abs();
                // An L1 r* is one pixel: show where the next-largest gradients are instead (the
                // L2 map is the gradient direction), the first of them the pixel r* moves.
                let top_k = self
                    .top_k_source(*norm)
                    .then(|| img.perturbations.iter().find(|q| q.norm.p == 2.0))
                    .flatten()
                    .map(|q| top_k(&q.r, TOP_K));
                let map = top_k.as_ref().unwrap_or(&p.r);
                let map_max = map.max_abs();
                let denom = if map_max > 0.0 { map_max } else { 1.0 };
                draw_image(
                    root,
                    map,
                    (image_x(1 + 2 * k), y0),
                    scale as i32,
                    |r, y, x| diverging((r.mean_at(y, x) / denom) as f64),
                )?;
                root.draw(&cap(1 + 2 * k, format!("max|r| = {}", fmt_num(max as f64))))
                    .map_err(e)?;
                draw_image(
                    root,
                    &p.adversarial,
                    (image_x(2 + 2 * k), y0),
                    scale as i32,
                    pixel_color,
                )?;
                let mut text = match p.adv_label {
                    Some(l) => format!("→ {}", class_label(self.class_names, l)),
                    None => "→ ?".to_string(),
                };
                if let Some(c) = p.confidence {
                    text.push_str(&format!(" ({:.0}%)", c * 100.0));
                }
                root.draw(&cap(2 + 2 * k, text)).map_err(e)?;
            }
        }
        // Colour bar for the r* maps.
        let bar_y = (h - Self::BOTTOM + 24) as i32;
        let (bar_x, bar_w) = (Self::LEFT as i32, 240);
        colour_bar(root, (bar_x, bar_y), bar_w, |i| {
            diverging(2.0 * i as f64 / (bar_w - 1) as f64 - 1.0)
        })?;
        for (text, x) in [
            ("−max|r|", bar_x),
            ("0", bar_x + bar_w / 2),
            ("+max|r|", bar_x + bar_w),
        ] {
            root.draw(&Text::new(text, (x, bar_y + 28), centered(13)))
                .map_err(e)?;
        }
        let note = TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        root.draw(&Text::new(
            "r* maps: blue < 0 < red, each scaled by its own max|r|;",
            (bar_x + bar_w + 40, bar_y + 4),
            note.clone(),
        ))
        .map_err(e)?;
        root.draw(&Text::new(
            "images: black = 0, white = 1; → new label (confidence).",
            (bar_x + bar_w + 40, bar_y + 24),
            note.clone(),
        ))
        .map_err(e)?;
        if norms.iter().any(|n| self.top_k_source(*n)) {
            root.draw(&Text::new(
                format!(
                    "L1 map: the {TOP_K} largest |∇ₓL| pixels (from the L2 map); r* puts all of ε on the largest."
                ),
                (bar_x + bar_w + 40, bar_y + 44),
                note,
            ))
            .map_err(e)?;
        }
        Ok(())
    }
}

/// Pixels shown in the L1 column.
const TOP_K: usize = 20;

/// `r` with all but its `k` largest-magnitude values set to 0 (over all channels).
fn top_k(r: &Image, k: usize) -> Image {
    let mut order: Vec<usize> = (0..r.data.len()).collect();
    order.sort_by(|&a, &b| r.data[b].abs().total_cmp(&r.data[a].abs()).then(a.cmp(&b)));
    let mut data = vec![0.0; r.data.len()];
    for &i in order.iter().take(k) {
        data[i] = r.data[i];
    }
    Image {
        shape: r.shape,
        data,
    }
}

/// Goodfellow et al.'s Fig. 4: the logits of one image along a fixed direction, one line per
/// class, the true class thick.
pub(crate) struct LogitSweepFigure<'a> {
    pub sweep: &'a LogitSweep,
    pub class_names: &'a [String],
}

impl Figure for LogitSweepFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (1000, 620)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let s = self.sweep;
        let index = s.index.map(|i| format!(", image #{i}")).unwrap_or_default();
        let area = title(
            root,
            &format!("Logits along a fixed attack direction: {}{index}", s.model),
        )?;
        let (chart, legend) = with_legend(&area);
        let classes = s.logits[0].len();
        let lines: Vec<Line> = (0..classes)
            .map(|c| {
                let points = s
                    .eps
                    .iter()
                    .zip(&s.logits)
                    .map(|(&x, row)| (x, row[c]))
                    .collect();
                let mut line = Line::new(points, palette(c));
                line.markers = false;
                if c as u32 == s.label {
                    line.width = 4;
                }
                line
            })
            .collect();
        // Draw the true class last so that it stays on top.
        let mut ordered: Vec<Line> = lines
            .iter()
            .enumerate()
            .filter(|(c, _)| *c as u32 != s.label)
            .map(|(_, l)| l.clone())
            .collect();
        ordered.push(lines[s.label as usize].clone());
        let norm = s.norm.map(|n| format!(" ({n})")).unwrap_or_default();
        let axes = Axes {
            caption: None,
            x_label: format!("ε: x + ε·d, d the steepest-ascent direction{norm} at ε = 0"),
            y_label: "logit".into(),
            x: padded_range(s.eps.iter().copied(), 0.02),
            y: padded_range(s.logits.iter().flatten().copied(), 0.05),
            x_percent: false,
            y_percent: false,
            x_integer: false,
            y_log: false,
        };
        line_chart(&chart, &axes, &ordered, &[0.0])?;
        let mut items = vec![LegendItem::Header("class".into())];
        for c in 0..classes {
            let mut label = class_label(self.class_names, c as u32);
            if c as u32 == s.label {
                label.push_str(" (true)");
            }
            items.push(LegendItem::Entry {
                label,
                color: palette(c),
                kind: LineKind::Solid,
                width: if c as u32 == s.label { 4 } else { 2 },
                band: false,
                marker: false,
            });
        }
        side_legend(&legend, 60, &items)
    }
}

/// `attack (method)`, or the name alone where the suite kept the method's own.
pub(crate) fn named(attack: &str, method: &str) -> String {
    if attack == method {
        attack.to_string()
    } else {
        format!("{attack} ({method})")
    }
}

/// Security curves: robust accuracy at every ε from each minimum-norm attack (a step line with
/// its Wilson band), and the fixed-ε attacks' points of the same model and norm beside them.
pub(crate) struct SecurityCurveFigure<'a> {
    pub panel: &'a CurvePanel,
}

impl Figure for SecurityCurveFigure<'_> {
    fn size(&self) -> (u32, u32) {
        (1000, 620)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let p = self.panel;
        let area = title(root, &format!("Security curves: {} ({})", p.model, p.norm))?;
        let (chart, legend) = with_legend(&area);
        // Up to the largest distance found or fixed ε, whichever is larger.
        let max_eps = p
            .curves
            .iter()
            .flat_map(|(_, c)| c.points.iter().map(|q| q.eps))
            .chain(
                p.fixed
                    .iter()
                    .flat_map(|(_, _, pts)| pts.iter().map(|q| q.x)),
            )
            .fold(0.0f64, f64::max);
        let max_eps = if max_eps > 0.0 { max_eps * 1.05 } else { 1.0 };
        let mut lines = Vec::new();
        let mut items = vec![LegendItem::Header("minimum-norm attack".into())];
        for (k, (attack, curve)) in p.curves.iter().enumerate() {
            // The step function: flat from each point to the next, and on to the right edge.
            let mut points = Vec::new();
            let mut band = Vec::new();
            for (i, q) in curve.points.iter().enumerate() {
                let next = curve.points.get(i + 1).map_or(max_eps, |n| n.eps);
                points.push((q.eps, q.robust_accuracy));
                points.push((next, q.robust_accuracy));
                band.push((q.eps, q.ci_low, q.ci_high));
                band.push((next, q.ci_low, q.ci_high));
            }
            let color = palette(k);
            let mut line = Line::new(points, color);
            line.band = band;
            line.markers = false;
            lines.push(line);
            items.push(LegendItem::Entry {
                label: named(attack, &curve.method),
                color,
                kind: LineKind::Solid,
                width: 2,
                band: true,
                marker: false,
            });
        }
        if let Some(env) = &p.envelope {
            let mut points = Vec::new();
            for (i, q) in env.curve.points.iter().enumerate() {
                let next = env.curve.points.get(i + 1).map_or(max_eps, |n| n.eps);
                points.push((q.eps, q.robust_accuracy));
                points.push((next, q.robust_accuracy));
            }
            let mut line = Line::new(points, BLACK);
            line.markers = false;
            line.width = 1;
            lines.push(line);
            items.push(LegendItem::Entry {
                label: "envelope".into(),
                color: BLACK,
                kind: LineKind::Solid,
                width: 1,
                band: false,
                marker: false,
            });
        }
        if !p.fixed.is_empty() {
            items.push(LegendItem::Header("fixed-ε attack".into()));
        }
        for (k, (attack, method, pts)) in p.fixed.iter().enumerate() {
            let color = palette(p.curves.len() + k);
            let mut line = Line::new(pts.iter().map(|q| (q.x, q.y)).collect(), color);
            line.kind = LineKind::Dashed;
            lines.push(line);
            items.push(LegendItem::Entry {
                label: named(attack, method),
                color,
                kind: LineKind::Dashed,
                width: 2,
                band: false,
                marker: true,
            });
        }
        let axes = Axes {
            caption: None,
            x_label: format!("ε ({} budget, pixels in [0, 1])", p.norm),
            y_label: "robust accuracy".into(),
            x: 0.0..max_eps,
            y: -0.015..1.02,
            x_percent: false,
            y_percent: true,
            x_integer: false,
            y_log: false,
        };
        line_chart(&chart, &axes, &lines, &[])?;
        items.push(LegendItem::Header("notes".into()));
        if let Some((_, c)) = p.curves.first() {
            items.push(note(&format!("n = {} examples", c.n)));
        }
        if p.envelope.is_some() {
            items.push(note("envelope: per-example best"));
        }
        items.push(note("curve: one search, every ε"));
        items.push(note("shaded: Wilson 95% CI"));
        side_legend(&legend, 60, &items)
    }
}
