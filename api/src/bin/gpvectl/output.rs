//! Rendering: aligned tables like kubectl, or the server's data as JSON / YAML.

use std::io::Write;

use anyhow::Context;
use clap::ValueEnum;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// Pretty-printed JSON of the items (stable field names, for scripts).
    Json,
    /// The items as YAML.
    Yaml,
}

/// A table: column headers and one row of cells per item.
pub struct Table {
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

/// Prints `data` as JSON/YAML, or `table()` in table mode; `kind` names the items for
/// the "No X found." message.
pub fn print<T: Serialize>(
    format: Format,
    data: &T,
    kind: &str,
    table: impl FnOnce() -> Table,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, data).context("cannot write JSON")?;
            writeln!(out)?;
        }
        Format::Yaml => {
            let text = serde_yaml::to_string(data).context("cannot write YAML")?;
            out.write_all(text.as_bytes())?;
        }
        Format::Table => {
            let table = table();
            if table.rows.is_empty() {
                // kubectl prints this on stderr so pipelines see an empty stdout.
                eprintln!("No {kind} found.");
            } else {
                out.write_all(render(&table).as_bytes())?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

pub fn render(table: &Table) -> String {
    const GAP: &str = "   ";
    let mut widths: Vec<usize> = table.headers.iter().map(|h| h.chars().count()).collect();
    for row in &table.rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let headers: Vec<String> = table.headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&headers).chain(&table.rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str(GAP);
            }
            line.push_str(cell);
            let pad = widths.get(i).copied().unwrap_or(0);
            for _ in cell.chars().count()..pad {
                line.push(' ');
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn dash() -> String {
    "-".to_owned()
}

/// 1536 → "1.5Ki", in binary units like kubectl's quantities.
pub fn bytes(v: Option<u64>) -> String {
    let Some(v) = v else { return dash() };
    const UNITS: [&str; 6] = ["", "Ki", "Mi", "Gi", "Ti", "Pi"];
    let mut value = v as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v}")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

pub fn used_of(used: Option<u64>, max: Option<u64>) -> String {
    match (used, max) {
        (None, None) => dash(),
        (used, max) => format!("{}/{}", bytes(used), bytes(max)),
    }
}

/// A 0..1 fraction as a percentage.
pub fn percent(v: Option<f64>) -> String {
    v.map_or_else(dash, |f| format!("{:.1}%", f * 100.0))
}

/// 93784 s → "1d2h", like kubectl's AGE column.
pub fn duration(seconds: Option<u64>) -> String {
    let Some(s) = seconds else { return dash() };
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{}s", s % 60)
    } else {
        format!("{s}s")
    }
}

pub fn opt(v: Option<&str>) -> String {
    v.filter(|s| !s.is_empty()).map_or_else(dash, str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = Table {
            headers: vec!["NAME", "STATUS"],
            rows: vec![
                vec!["n1".into(), "online".into()],
                vec!["node-long".into(), "-".into()],
            ],
        };
        assert_eq!(
            render(&t),
            "NAME        STATUS\nn1          online\nnode-long   -\n"
        );
    }

    #[test]
    fn units_are_human() {
        assert_eq!(bytes(Some(512)), "512");
        assert_eq!(bytes(Some(1536)), "1.5Ki");
        assert_eq!(bytes(Some(3 * 1024 * 1024 * 1024)), "3.0Gi");
        assert_eq!(percent(Some(0.125)), "12.5%");
        assert_eq!(duration(Some(93_784)), "1d2h");
        assert_eq!(duration(Some(59)), "59s");
        assert_eq!(duration(Some(3_700)), "1h1m");
        assert_eq!(used_of(None, None), "-");
    }
}
