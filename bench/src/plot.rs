//! The connections-per-reader case drawn: delivery p99 and server CPU per delivery
//! against the readers, one line per server, so that a reader of docs/benchmarks.md
//! ("Connections per reader") sees the curve bend rather than reads it out of three tables.
//!
//! Each point is the median of the runs at that count, with the runs' min–max as an error bar.
//! The p99 panel's y axis is logarithmic: NATS's p99 reaches 33 s at 19,000 readers where the
//! gRPC servers stay under a second, and on a linear axis those two lines would lie flat on zero.
//!
//! The SVG is written with plotters' SVG backend alone, without its TrueType support: the text is
//! left as `<text>` elements for the viewer to set, so the bench needs no font library, and the
//! label boxes are laid out from plotters' estimate of a glyph's width.

use std::{ops::Range, path::Path};

use plotters::{
    coord::{
        Shift,
        ranged1d::{AsRangedCoord, ValueFormatter},
    },
    prelude::*,
};

use crate::{
    readers::{Results, Run},
    report::summary,
};

/// The picture in pixels: two panels side by side under a title, wide enough for the title's
/// one line.
const SIZE: (u32, u32) = (1280, 540);

/// One colour per server, in the order the servers first appear in the results (storywire,
/// bare tonic, NATS as the case runs them); a fourth server would reuse the first.
const COLOURS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
];

/// The title, which leaves the machine and the date to the docs rather than guessing them here.
const TITLE: &str = "Connections per reader: median and min–max of the runs; machine and date in docs/benchmarks.md";

/// One panel: what it plots and how its y axis is scaled.
struct Panel {
    caption: &'static str,
    y_desc: &'static str,
    /// Reads the panel's figure from a run.
    figure: fn(&Run) -> f64,
    /// Logarithmic when the servers' figures lie orders of magnitude apart.
    log: bool,
    /// Where the legend goes: a corner the lines leave empty.
    legend: SeriesLabelPosition,
}

/// The two panels, left to right.
const PANELS: [Panel; 2] = [
    Panel {
        caption: "delivery p99",
        y_desc: "delivery p99, ms (log scale)",
        figure: |run| run.figures.p99_ms,
        log: true,
        legend: SeriesLabelPosition::UpperLeft,
    },
    Panel {
        caption: "server CPU per delivery",
        y_desc: "server CPU per delivery, µs",
        figure: |run| run.figures.cpu_us_per_delivery,
        log: false,
        legend: SeriesLabelPosition::LowerLeft,
    },
];

/// One server's runs at one count, summarised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub readers: usize,
    pub median: f64,
    pub low: f64,
    pub high: f64,
}

/// One server's line in a panel: a point per count it ran, in increasing count.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub server: String,
    pub points: Vec<Point>,
}

/// The lines of `figure`: one per server, in the order the servers first appear in `runs`.
pub fn lines(runs: &[Run], figure: fn(&Run) -> f64) -> Vec<Line> {
    let mut servers: Vec<&str> = Vec::new();
    for run in runs {
        if !servers.contains(&run.server.as_str()) {
            servers.push(&run.server);
        }
    }
    servers
        .into_iter()
        .map(|server| {
            let mine: Vec<&Run> = runs.iter().filter(|r| r.server == server).collect();
            let mut counts: Vec<usize> = mine.iter().map(|r| r.readers).collect();
            counts.sort_unstable();
            counts.dedup();
            let points = counts
                .into_iter()
                .map(|readers| {
                    let values: Vec<f64> = mine
                        .iter()
                        .filter(|r| r.readers == readers)
                        .map(|r| figure(r))
                        .collect();
                    let (median, low, high) = summary(&values);
                    Point {
                        readers,
                        median,
                        low,
                        high,
                    }
                })
                .collect();
            Line {
                server: server.to_owned(),
                points,
            }
        })
        .collect()
}

/// The x axis: from 0 to a little past the largest count, so that the last error bar is not
/// drawn on the frame.
pub fn x_range(lines: &[Line]) -> Range<f64> {
    let most = points(lines).map(|p| p.readers).max().unwrap_or(1).max(1);
    0.0..most as f64 * 1.05
}

/// A linear y axis: from 0, so that heights compare, to a tenth above the highest error bar.
pub fn linear_range(lines: &[Line]) -> Range<f64> {
    let highest = points(lines).map(|p| p.high).fold(0.0, f64::max);
    0.0..if highest > 0.0 { highest * 1.1 } else { 1.0 }
}

/// A logarithmic y axis: half the lowest error bar to twice the highest. A logarithm has no
/// zero, so values of 0 or less are left out of the range (and off the plot).
pub fn log_range(lines: &[Line]) -> Range<f64> {
    let positive = || {
        points(lines)
            .flat_map(|p| [p.low, p.high])
            .filter(|v| *v > 0.0)
    };
    let lowest = positive().fold(f64::INFINITY, f64::min);
    let highest = positive().fold(0.0, f64::max);
    if lowest.is_finite() {
        lowest / 2.0..highest * 2.0
    } else {
        1.0..10.0
    }
}

/// Every point of every line.
fn points(lines: &[Line]) -> impl Iterator<Item = &Point> {
    lines.iter().flat_map(|line| &line.points)
}

/// An axis label: whole numbers as such, others with one or two decimals below 10, so that a
/// log axis's ticks read `0.5`, `20`, `3000` rather than `3000.0000000004`.
pub fn tick(value: &f64) -> String {
    let whole = (value - value.round()).abs() < 1e-6 * value.abs().max(1.0);
    match value.abs() {
        v if whole || v >= 10.0 => format!("{value:.0}"),
        v if v >= 1.0 => format!("{value:.1}"),
        _ => format!("{value:.2}"),
    }
}

/// The plot of `results` as an SVG document.
pub fn svg(results: &Results) -> Result<String, String> {
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let root = root
            .titled(TITLE, ("sans-serif", 18))
            .map_err(|e| e.to_string())?;
        let halves = root.split_evenly((1, PANELS.len()));
        for (area, panel) in halves.iter().zip(&PANELS) {
            let lines = lines(&results.runs, panel.figure);
            let x = x_range(&lines);
            if panel.log {
                draw(area, panel, &lines, x, log_range(&lines).log_scale())?;
            } else {
                draw(area, panel, &lines, x, linear_range(&lines))?;
            }
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(text)
}

/// Draws the plot of `results` to `path`.
pub fn write(results: &Results, path: &Path) -> Result<(), String> {
    let text = svg(results)?;
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// `storywire-bench plot`: draws the results file `from` again, to `out`.
pub fn redraw(from: &Path, out: &Path) -> Result<(), String> {
    write(&Results::read(from)?, out)?;
    eprintln!("{} drawn from {}", out.display(), from.display());
    Ok(())
}

/// One panel: its axes, then per server a line through the medians, a dot on each and an
/// error bar from the lowest run to the highest.
fn draw<DB, Y>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    lines: &[Line],
    x: Range<f64>,
    y: Y,
) -> Result<(), String>
where
    DB: DrawingBackend,
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(panel.caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("readers, each on a connection of its own")
        .y_desc(panel.y_desc)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, line) in lines.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let at = |p: &Point| (p.readers as f64, p.median);
        chart
            .draw_series(
                LineSeries::new(line.points.iter().map(at), colour.stroke_width(2)).point_size(3),
            )
            .map_err(|e| e.to_string())?
            .label(line.server.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(line.points.iter().map(|p| {
                ErrorBar::new_vertical(
                    p.readers as f64,
                    p.low,
                    p.median,
                    p.high,
                    colour.stroke_width(1),
                    8,
                )
            }))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .position(panel.legend.clone())
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Point, Results, Run, linear_range, lines, log_range, svg, tick, x_range};
    use crate::readers::Readers;

    /// A run of `server` at `readers` whose p99 and CPU per delivery are `p99` and `cpu`.
    fn run(server: &str, readers: usize, p99: f64, cpu: f64) -> Run {
        Run {
            server: server.to_owned(),
            readers,
            figures: Readers {
                subscribe_all_seconds: 1.0,
                p50_ms: p99 / 2.0,
                p99_ms: p99,
                max_ms: p99 * 2.0,
                cpu_us_per_delivery: cpu,
                rss_kib_per_connection: 32.0,
                gaps: 0,
                duplicates: 0,
            },
        }
    }

    fn results() -> Results {
        Results {
            note: "made up".to_owned(),
            runs: vec![
                run("storywire", 10_000, 250.0, 11.0),
                run("NATS", 1_000, 19.0, 15.0),
                run("storywire", 1_000, 22.0, 16.0),
                run("storywire", 1_000, 17.0, 15.0),
                run("storywire", 1_000, 35.0, 16.5),
                run("NATS", 10_000, 3300.0, 12.0),
            ],
        }
    }

    #[test]
    fn a_line_per_server_in_order_of_appearance_with_a_point_per_count() {
        let lines = lines(&results().runs, |r| r.figures.p99_ms);
        let servers: Vec<&str> = lines.iter().map(|l| l.server.as_str()).collect();
        assert_eq!(servers, ["storywire", "NATS"]);
        assert_eq!(
            lines[0].points,
            [
                Point {
                    readers: 1_000,
                    median: 22.0,
                    low: 17.0,
                    high: 35.0
                },
                Point {
                    readers: 10_000,
                    median: 250.0,
                    low: 250.0,
                    high: 250.0
                },
            ]
        );
    }

    #[test]
    fn axes_cover_every_error_bar() {
        let runs = results().runs;
        let p99 = lines(&runs, |r| r.figures.p99_ms);
        assert_eq!(x_range(&p99), 0.0..10_500.0);
        assert_eq!(log_range(&p99), 8.5..6600.0);
        let cpu = lines(&runs, |r| r.figures.cpu_us_per_delivery);
        let linear = linear_range(&cpu);
        assert_eq!(linear.start, 0.0);
        assert!((linear.end - 16.5 * 1.1).abs() < 1e-9);
    }

    #[test]
    fn axes_of_nothing_are_still_ranges() {
        assert_eq!(x_range(&[]), 0.0..1.05);
        assert_eq!(linear_range(&[]), 0.0..1.0);
        assert_eq!(log_range(&[]), 1.0..10.0);
    }

    #[test]
    fn ticks_read_as_numbers_not_floating_point_noise() {
        assert_eq!(tick(&3_000.000_000_4), "3000");
        assert_eq!(tick(&2.5), "2.5");
        assert_eq!(tick(&4.0), "4");
        assert_eq!(tick(&12.4), "12");
        assert_eq!(tick(&0.05), "0.05");
        assert_eq!(tick(&0.0), "0");
    }

    #[test]
    fn the_svg_has_a_line_per_server_in_each_panel_and_its_labels() {
        let text = svg(&results()).unwrap();
        assert!(text.starts_with("<svg"), "{}", &text[..100]);
        // The test's two servers take the first two colours; each has a line in each panel (and
        // its legend's sample).
        for colour in ["#1F77B4", "#FF7F0E"] {
            let line = format!(
                "<polyline fill=\"none\" opacity=\"1\" stroke=\"{colour}\" stroke-width=\"2\""
            );
            assert!(text.matches(&line).count() >= 2, "no line in {colour}");
        }
        for label in [
            "delivery p99",
            "server CPU per delivery",
            "storywire",
            "NATS",
            "docs/benchmarks.md",
        ] {
            assert!(text.contains(label), "no {label:?} in the SVG");
        }
    }

    #[test]
    fn the_results_transcribed_from_the_docs_read_and_draw() {
        let results: Results =
            serde_json::from_str(include_str!("../../docs/readers-2026-11-30.json")).unwrap();
        assert_eq!(results.runs.len(), 3 * 3 * 3);
        let p99 = lines(&results.runs, |r| r.figures.p99_ms);
        let servers: Vec<&str> = p99.iter().map(|l| l.server.as_str()).collect();
        assert_eq!(servers, ["storywire", "bare tonic", "NATS"]);
        let nats_19000 = p99[2].points[2];
        assert_eq!((nats_19000.readers, nats_19000.median), (19_000, 33_488.89));
        svg(&results).unwrap();
    }
}
