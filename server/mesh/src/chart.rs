//! The latency chart of an experiment (SVG, drawn with plotters; SVG text needs no system
//! fonts): every answered request as a point, latency against time since the load started,
//! for the "off" and "on" runs, with the foreground objective and the burst marked.

use std::path::Path;

use plotters::prelude::*;

use crate::experiment::RunOutcome;
use crate::scenario::Scenario;

const COLORS: [RGBColor; 4] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(255, 152, 150),
    RGBColor(158, 202, 225),
];

/// Draws `runs` (labelled by their priorities flag) into an SVG file.
pub fn draw(path: &Path, scenario: &Scenario, runs: &[RunOutcome]) -> anyhow::Result<()> {
    let points = |r: &RunOutcome| r.series.values().flatten().copied().collect::<Vec<_>>();
    let all: Vec<(f64, f64)> = runs.iter().flat_map(points).collect();
    let x_max = all.iter().map(|p| p.0).fold(1.0, f64::max);
    let y_max = all.iter().map(|p| p.1).fold(10.0, f64::max) * 1.05;
    let root = SVGBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: end-to-end latency per request", scenario.name),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, (1f64..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds since the load started")
        .y_desc("latency (ms, log)")
        .draw()?;
    for run in runs {
        let label = if run.result.priorities { "on" } else { "off" };
        // Background classes first so the foreground stays visible on top.
        let mut classes: Vec<_> = scenario.classes.iter().collect();
        classes.sort_by_key(|c| !c.background);
        for class in classes {
            let Some(series) = run.series.get(&class.name) else {
                continue;
            };
            let c = match (class.background, run.result.priorities) {
                (false, false) => COLORS[0],
                (false, true) => COLORS[1],
                (true, false) => COLORS[2],
                (true, true) => COLORS[3],
            };
            chart
                .draw_series(
                    series
                        .iter()
                        .map(|&(x, y)| Circle::new((x, y.max(1.0)), 2, c.filled())),
                )?
                .label(format!("{} (priorities {label})", class.name))
                .legend(move |(x, y)| Circle::new((x + 10, y), 4, c.filled()));
        }
        let burst = run.warmup.as_secs_f64();
        if burst > 0.0 && run.result.priorities {
            chart.draw_series(LineSeries::new(
                [(burst, 1.0), (burst, y_max)],
                BLACK.stroke_width(1),
            ))?;
        }
    }
    for class in scenario.classes.iter().filter(|c| !c.background) {
        let l = class.objective.latency_ms;
        chart
            .draw_series(LineSeries::new(
                [(0.0, l), (x_max, l)],
                BLACK.stroke_width(2),
            ))?
            .label(format!(
                "{} objective p{} {l} ms",
                class.name,
                class.objective.quantile * 100.0
            ))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
