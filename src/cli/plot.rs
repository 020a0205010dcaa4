//! `fairyc plot`: loss curves from `fairyc train --loss-csv` files as one
//! PNG.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::ValueEnum;
use fairyc::train::read_records;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PlotColumn {
    Loss,
    Heldout,
}

pub(crate) fn plot_command(
    csvs: &[PathBuf],
    column: PlotColumn,
    smooth: usize,
    title: &str,
    output: &Path,
) -> Result<()> {
    let mut series = Vec::new();
    for path in csvs {
        let records = read_records(path)?;
        let raw: Vec<(f64, f64)> = records
            .iter()
            .filter_map(|r| match column {
                PlotColumn::Loss => Some((r.step as f64, f64::from(r.loss))),
                PlotColumn::Heldout => Some((r.step as f64, r.heldout?)),
            })
            .collect();
        let k = smooth.max(1);
        let points = raw
            .iter()
            .enumerate()
            .map(|(i, &(x, _))| {
                let window = &raw[i.saturating_sub(k - 1)..=i];
                (
                    x,
                    window.iter().map(|p| p.1).sum::<f64>() / window.len() as f64,
                )
            })
            .collect();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        series.push(fairyc::plot::Series { name, points });
    }
    let y = match column {
        PlotColumn::Loss => "training loss (nats)",
        PlotColumn::Heldout => "held-out loss (nats)",
    };
    fairyc::plot::line_chart(output, title, "step", y, &series)?;
    println!("wrote {}", output.display());
    Ok(())
}
