//! Training curves as PNG (plotters' bitmap backend, encoded with `png`
//! and written atomically).
//!
//! Text needs a TrueType font: DejaVu Sans from the system (Debian's
//! `fonts-dejavu-core`, which `make setup` installs) or the file named by
//! `FAIRYC_FONT`. Without one the curves are drawn without labels and a
//! warning says so.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::Error;

/// One curve: a name for the legend and its points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const WIDTH: u32 = 960;
const HEIGHT: u32 = 600;
const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Registers a font for plotters once; whether one was found.
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        // An explicit FAIRYC_FONT is the only candidate.
        let candidates: Vec<String> = match std::env::var("FAIRYC_FONT") {
            Ok(path) => vec![path],
            Err(_) => FONT_PATHS.iter().map(|p| p.to_string()).collect(),
        };
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                // plotters keeps fonts for the whole process.
                if register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into())).is_ok() {
                    return true;
                }
            }
        }
        tracing::warn!("no TrueType font found (set FAIRYC_FONT): plots have no labels");
        false
    })
}

/// Draws `series` (x: step, y: loss) into a PNG at `path`, atomically.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), Error> {
    let points = || series.iter().flat_map(|s| s.points.iter());
    let finite: Vec<&(f64, f64)> = points()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if finite.is_empty() {
        return Err(Error::Usage(format!("{}: nothing to plot", path.display())));
    }
    let range = |f: fn(&&(f64, f64)) -> f64| {
        let lo = finite.iter().map(f).fold(f64::INFINITY, f64::min);
        let hi = finite.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
        let pad = ((hi - lo) * 0.05).max(1e-9);
        (lo - pad)..(hi + pad)
    };
    let (xs, ys) = (range(|p| p.0), range(|p| p.1));
    let labels = font_ready();
    let mut pixels = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    let drawn = (|| -> Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::with_buffer(&mut pixels, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut builder = ChartBuilder::on(&root);
        builder.margin(16);
        if labels {
            builder
                .caption(title, ("sans-serif", 24))
                .x_label_area_size(44)
                .y_label_area_size(64);
        }
        let mut chart = builder.build_cartesian_2d(xs, ys)?;
        let whole = |x: &f64| format!("{x:.0}");
        let mut mesh = chart.configure_mesh();
        if labels {
            mesh.x_desc(x_label)
                .y_desc(y_label)
                .x_label_formatter(&whole);
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw()?;
        for (s, color) in series.iter().zip(COLORS.iter().cycle()) {
            let line = chart.draw_series(LineSeries::new(
                s.points
                    .iter()
                    .copied()
                    .filter(|(x, y)| x.is_finite() && y.is_finite()),
                color.stroke_width(2),
            ))?;
            if labels {
                line.label(s.name.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            }
        }
        if labels {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
        Ok(())
    })();
    drawn.map_err(|e| Error::Usage(format!("{}: cannot draw the plot: {e}", path.display())))?;
    fairyc_ir::atomic::write_atomically(path, |w| {
        let mut encoder = png::Encoder::new(w, WIDTH, HEIGHT);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Best);
        encoder.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
        let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
        writer
            .write_image_data(&pixels)
            .map_err(std::io::Error::other)?;
        writer.finish().map_err(std::io::Error::other)
    })
    .map_err(|e| Error::Usage(format!("cannot write {}: {e}", path.display())))
}
