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

/// Sub-buckets per power of two: a recorded value is known to within 1/32 (3 %).
const HISTOGRAM_SUB_BITS: u32 = 5;
const HISTOGRAM_SUB_BUCKETS: usize = 1 << HISTOGRAM_SUB_BITS;
/// Values at or above 2^40 (18 minutes in nanoseconds) land in the last bucket.
const HISTOGRAM_MAX_BITS: u32 = 40;
const HISTOGRAM_BUCKETS: usize =
    (HISTOGRAM_MAX_BITS - HISTOGRAM_SUB_BITS + 1) as usize * HISTOGRAM_SUB_BUCKETS;

/// A log-linear histogram of latencies: a fixed array of counters (about 10 KiB), so a run
/// of any length costs the same memory and one add per value; percentiles are read to
/// within 1/32 of the value.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            counts: vec![0; HISTOGRAM_BUCKETS],
            total: 0,
        }
    }
}

impl Histogram {
    pub fn record(&mut self, value: u64) {
        self.counts[Self::bucket(value)] += 1;
        self.total += 1;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// Values below 32 have a bucket each; above, each power of two is cut in 32.
    fn bucket(value: u64) -> usize {
        let value = value.min((1 << HISTOGRAM_MAX_BITS) - 1);
        if value < HISTOGRAM_SUB_BUCKETS as u64 {
            return value as usize;
        }
        let top_bit = 63 - value.leading_zeros();
        let shift = top_bit - HISTOGRAM_SUB_BITS;
        let sub = (value >> shift) as usize & (HISTOGRAM_SUB_BUCKETS - 1);
        (shift as usize + 1) * HISTOGRAM_SUB_BUCKETS + sub
    }

    /// The largest value that lands in bucket `index`.
    fn bucket_top(index: usize) -> u64 {
        let octave = index / HISTOGRAM_SUB_BUCKETS;
        let sub = (index % HISTOGRAM_SUB_BUCKETS) as u64;
        if octave == 0 {
            return sub;
        }
        let shift = octave as u32 - 1;
        ((HISTOGRAM_SUB_BUCKETS as u64 + sub + 1) << shift) - 1
    }

    /// The `p`-th percentile (0..=100) by nearest rank, as its bucket's top (never below
    /// the true value, at most 1/32 above it); 0 for no values.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((p * self.total as f64 / 100.0 - 1e-9).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Self::bucket_top(index);
            }
        }
        unreachable!("the counts sum to the total")
    }
}

/// A target's rate over a base's, round by round (`rates[k]` and `base[k]` were measured in
/// the same round, so under the same machine load): the median of those ratios and their
/// spread, (median, min, max); `None` for no rounds. A base of 0 counts as 1.
pub fn round_ratios(rates: &[f64], base: &[f64]) -> Option<(f64, f64, f64)> {
    assert_eq!(rates.len(), base.len(), "one rate per round on each side");
    let ratios: Vec<f64> = rates
        .iter()
        .zip(base)
        .map(|(rate, base)| rate / base.max(1.0))
        .collect();
    ratio_spread(&ratios)
}

/// Median of ratios and their spread: (median, min, max); `None` for none.
fn ratio_spread(ratios: &[f64]) -> Option<(f64, f64, f64)> {
    let min = ratios.iter().copied().reduce(f64::min)?;
    let max = ratios.iter().copied().reduce(f64::max)?;
    Some((median(ratios), min, max))
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

    #[test]
    fn ratios_pair_rates_by_round_not_medians_by_side() {
        // Ratios 3, 0.5, 0.5: the median is 0.5, though the medians of each side are equal.
        assert_eq!(
            round_ratios(&[3.0, 1.0, 2.0], &[1.0, 2.0, 4.0]),
            Some((0.5, 0.5, 3.0))
        );
        assert_eq!(round_ratios(&[5.0], &[0.0]), Some((5.0, 5.0, 5.0)));
        assert_eq!(round_ratios(&[], &[]), None);
    }

    #[test]
    fn ratios_give_median_and_spread() {
        assert_eq!(ratio_spread(&[]), None);
        assert_eq!(ratio_spread(&[0.8]), Some((0.8, 0.8, 0.8)));
        assert_eq!(ratio_spread(&[1.2, 0.7, 0.9]), Some((0.9, 0.7, 1.2)));
        // An even count takes the lower middle, as `median` does.
        assert_eq!(ratio_spread(&[4.0, 1.0, 3.0, 2.0]), Some((2.0, 1.0, 4.0)));
    }

    #[test]
    fn histogram_buckets_hold_their_values_within_a_32nd() {
        let mut value = 0u64;
        while value < 1 << 41 {
            let index = Histogram::bucket(value);
            let top = Histogram::bucket_top(index);
            if value < 1 << HISTOGRAM_MAX_BITS {
                assert!(top >= value, "{value} above its bucket's top {top}");
                assert!(top - value <= value / 32, "{value}: top {top} too far");
                if index > 0 {
                    assert!(Histogram::bucket_top(index - 1) < value, "{value}");
                }
            } else {
                assert_eq!(index, HISTOGRAM_BUCKETS - 1);
            }
            value = value + 1 + value / 7;
        }
    }

    #[test]
    fn histogram_percentiles_track_the_sorted_values() {
        let values: Vec<u64> = (0..10_000u64).map(|i| (i * 7919) % 1_000_003 + 1).collect();
        let mut histogram = Histogram::default();
        for &v in &values {
            histogram.record(v);
        }
        let mut sorted = values.clone();
        sorted.sort_unstable();
        assert_eq!(histogram.count(), 10_000);
        for p in [1.0, 50.0, 99.0, 99.9, 100.0] {
            let exact = percentile(&sorted, p);
            let read = histogram.percentile(p);
            assert!(
                read >= exact && read - exact <= exact / 32,
                "p{p}: {read} vs {exact}"
            );
        }
        assert_eq!(Histogram::default().percentile(99.0), 0);
    }
}
