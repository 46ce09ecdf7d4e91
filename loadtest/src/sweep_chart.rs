//! The sweep's chart: final answers per second against the offered load,
//! one line per mode, with the offered load itself (y = x) as a dashed
//! reference, so where a mode leaves the diagonal is where it saturates.
//!
//! Drawn as SVG by `plotters`' SVG backend, which writes its text as
//! `<text>` elements: no font is read, so it draws the same on a machine
//! without fonts. Pure: data in, markup out.

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::svg_chart::{FONT, format_count};

/// One mode's measurements across the sweep.
#[derive(Debug, Clone)]
pub struct Curve {
    /// The legend entry.
    pub name: String,
    /// Red, green, blue.
    pub color: (u8, u8, u8),
    /// `(offered claims/s, final answers/s)`, in offered order.
    pub points: Vec<(f64, f64)>,
}

const WIDTH: u32 = 760;
const HEIGHT: u32 = 440;
const OFFERED_COLOR: RGBColor = RGBColor(0x99, 0x99, 0x99);

/// The chart as a standalone `<svg>` document.
pub fn decided_against_offered(curves: &[Curve]) -> Result<String> {
    let all = || curves.iter().flat_map(|c| c.points.iter().copied());
    let offered_max = all().map(|(x, _)| x).fold(0.0, f64::max);
    let decided_max = all().map(|(_, y)| y).fold(0.0, f64::max);
    let x_max = if offered_max > 0.0 { offered_max * 1.05 } else { 1.0 };
    let y_max = (decided_max * 1.05).max(x_max);
    let failed = |e: &dyn std::fmt::Display| anyhow!("drawing the sweep chart: {e}");
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| failed(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Final answers per second against the offered load", (FONT, 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| failed(&e))?;
        let label = |v: &f64| format_count(*v);
        chart
            .configure_mesh()
            .x_desc("offered claims/s")
            .y_desc("answered claims/s")
            .x_label_formatter(&label)
            .y_label_formatter(&label)
            .x_labels(8)
            .y_labels(8)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .light_line_style(TRANSPARENT)
            .bold_line_style(RGBColor(0xe4, 0xe4, 0xe4))
            .draw()
            .map_err(|e| failed(&e))?;
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, 0.0), (x_max, x_max)],
                6,
                4,
                OFFERED_COLOR.stroke_width(1),
            ))
            .map_err(|e| failed(&e))?
            .label("offered")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], OFFERED_COLOR));
        for curve in curves {
            let (r, g, b) = curve.color;
            let color = RGBColor(r, g, b);
            chart
                .draw_series(LineSeries::new(curve.points.iter().copied(), color.stroke_width(2)))
                .map_err(|e| failed(&e))?
                .label(curve.name.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
            chart
                .draw_series(curve.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| failed(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(0xcc, 0xcc, 0xcc))
            .label_font((FONT, 15))
            .draw()
            .map_err(|e| failed(&e))?;
        root.present().map_err(|e| failed(&e))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::svg_chart::tests::texts;

    fn curve(name: &str, points: &[(f64, f64)]) -> Curve {
        Curve {
            name: name.to_owned(),
            color: (0x1f, 0x77, 0xb4),
            points: points.to_vec(),
        }
    }

    #[test]
    fn both_modes_the_offered_line_and_the_axis_labels_are_drawn() {
        let svg = decided_against_offered(&[
            curve(
                "pipeline",
                &[(2_000.0, 1_990.0), (5_000.0, 4_900.0), (10_000.0, 7_000.0)],
            ),
            curve(
                "sql-for-update",
                &[(2_000.0, 1_800.0), (5_000.0, 2_100.0), (10_000.0, 2_000.0)],
            ),
        ])
        .unwrap();
        assert!(svg.starts_with("<svg"), "{svg:.200}");
        let texts = texts(&svg);
        for text in [
            "pipeline",
            "sql-for-update",
            "offered",
            "offered claims/s",
            "answered claims/s",
        ] {
            assert!(texts.contains(&text), "no {text:?} in {texts:?}");
        }
        // One polyline per mode; the dashed reference is drawn as segments.
        assert!(svg.matches("<polyline").count() >= 2, "{svg}");
        assert!(texts.contains(&"10k"), "tick labels are short: {texts:?}");
    }

    #[test]
    fn no_points_is_still_a_chart() {
        let svg = decided_against_offered(&[]).unwrap();
        assert!(texts(&svg).contains(&"offered claims/s"));
    }
}
