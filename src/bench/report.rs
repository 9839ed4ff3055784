//! Figures out: percentiles and medians, an aligned table for people, JSON lines for
//! scripts. Every row is one `serde_json` object; the table shows chosen columns of it.

use serde_json::{Map, Value};

/// The `p`-th percentile (0..=100) of sorted values, nearest rank; 0 for none.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // The epsilon keeps 99.9 % of 1000 at rank 999 despite binary floating point.
    let rank = (p * sorted.len() as f64 / 100.0 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of `values` (the lower middle for an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[(v.len() - 1) / 2]
}

/// Rows collected by a command, printed at the end as a table or as JSON lines.
pub struct Report {
    pub json: bool,
    pub rows: Vec<Map<String, Value>>,
}

impl Report {
    pub fn new(json: bool) -> Report {
        Report {
            json,
            rows: Vec::new(),
        }
    }

    /// Adds a row; in JSON mode it is printed at once (a long run shows progress).
    pub fn push(&mut self, row: Value) {
        let Value::Object(map) = row else {
            panic!("a report row is a JSON object");
        };
        if self.json {
            println!("{}", Value::Object(map.clone()));
        }
        self.rows.push(map);
    }

    /// Prints `columns` of every row as an aligned table (nothing in JSON mode).
    pub fn table(&self, columns: &[&str]) {
        if self.json || self.rows.is_empty() {
            return;
        }
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|row| {
                columns
                    .iter()
                    .map(|c| row.get(*c).map_or("-".to_string(), show))
                    .collect()
            })
            .collect();
        let widths: Vec<usize> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                cells
                    .iter()
                    .map(|r| r[i].len())
                    .chain([c.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |items: Vec<String>| {
            items
                .iter()
                .zip(&widths)
                .map(|(s, w)| format!("{s:>w$}"))
                .collect::<Vec<_>>()
                .join("  ")
        };
        println!("{}", line(columns.iter().map(|c| c.to_string()).collect()));
        for row in cells {
            println!("{}", line(row));
        }
    }
}

fn show(value: &Value) -> String {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => {
                if f.abs() >= 100.0 {
                    format!("{f:.0}")
                } else if f.abs() >= 1.0 {
                    format!("{f:.2}")
                } else {
                    format!("{f:.3}")
                }
            }
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 50.0), 500);
        assert_eq!(percentile(&v, 99.0), 990);
        assert_eq!(percentile(&v, 99.9), 999);
        assert_eq!(percentile(&v, 100.0), 1000);
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }
}
