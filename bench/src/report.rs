//! How every case runs and reports: [`in_turn`] runs what a case compares (servers, journals,
//! phases) one after the other, `runs` times; the tables are markdown, each cell the median of a
//! figure over the runs with its spread, or the ratio of two servers' figures.

use std::{fmt::Display, future::Future};

use hdrhistogram::Histogram;

use crate::error::Result;

/// What [`in_turn`] gathered: each contender's results in run order, and how many of its runs
/// failed.
pub struct Runs<T> {
    pub results: Vec<Vec<T>>,
    pub failed: Vec<usize>,
}

/// Runs `once` on each of `contenders`, `runs` times, rotating which goes first so that none
/// always runs on a warmer machine, and returns each one's results in run order with how many
/// of its runs failed. A run that fails is logged after `label` and counted, not allowed to lose
/// the others (the ratios then pair the runs that are left, in order).
pub async fn in_turn<K, T, F, Fut>(
    contenders: &[K],
    runs: usize,
    label: &str,
    mut once: F,
) -> Runs<T>
where
    K: Copy + Display,
    T: std::fmt::Debug,
    F: FnMut(K) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut results: Vec<Vec<T>> = contenders.iter().map(|_| Vec::new()).collect();
    let mut failed = vec![0; contenders.len()];
    for run in 0..runs {
        for k in 0..contenders.len() {
            let i = (k + run) % contenders.len();
            match once(contenders[i]).await {
                Ok(result) => {
                    eprintln!("{label}, {}: {result:?}", contenders[i]);
                    results[i].push(result);
                }
                Err(error) => {
                    eprintln!("{label}, {}: failed: {error}", contenders[i]);
                    failed[i] += 1;
                }
            }
        }
    }
    Runs { results, failed }
}

/// A markdown table, a row at a time.
pub struct Table(Vec<String>);

impl Table {
    /// A table with these column heads.
    pub fn new<S: AsRef<str>>(heads: &[S]) -> Self {
        let heads: Vec<&str> = heads.iter().map(AsRef::as_ref).collect();
        Self(vec![
            format!("| {} |", heads.join(" | ")),
            format!("|{}", "---|".repeat(heads.len())),
        ])
    }

    /// Rows to print under a head printed before.
    pub fn rows() -> Self {
        Self(Vec::new())
    }

    /// Adds a row of these cells.
    pub fn row<S: Display>(&mut self, cells: impl IntoIterator<Item = S>) {
        let cells: Vec<String> = cells.into_iter().map(|cell| cell.to_string()).collect();
        self.0.push(format!("| {} |", cells.join(" | ")));
    }
}

impl Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

/// Microseconds (a latency histogram's unit) as milliseconds.
pub fn ms(micros: u64) -> f64 {
    micros as f64 / 1_000.0
}

/// The `q` quantile of a latency histogram in microseconds, as milliseconds.
pub fn ms_at(latency: &Histogram<u64>, q: f64) -> f64 {
    ms(latency.value_at_quantile(q))
}

/// An empty latency histogram: 1 µs to 10 minutes, three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// Records `elapsed` in a latency histogram of microseconds, saturating at its top.
pub fn record(latency: &mut Histogram<u64>, elapsed: std::time::Duration) {
    latency.saturating_record(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
}

/// Median, minimum and maximum of one figure over the runs.
pub fn summary(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    (median, sorted[0], sorted[sorted.len() - 1])
}

/// `median (min–max)` with `decimals` decimals, just the value for a single run, `–` for none.
pub fn cell(values: &[f64], decimals: usize) -> String {
    if values.is_empty() {
        return "–".to_owned();
    }
    let (median, low, high) = summary(values);
    if values.len() > 1 {
        format!("{median:.decimals$} ({low:.decimals$}–{high:.decimals$})")
    } else {
        format!("{median:.decimals$}")
    }
}

/// The ratio of the medians, `ours / theirs`, as `1.23x`.
pub fn ratio(ours: &[f64], theirs: &[f64]) -> String {
    if ours.is_empty() || theirs.is_empty() {
        return "–".to_owned();
    }
    let (ours, _, _) = summary(ours);
    let (theirs, _, _) = summary(theirs);
    if theirs == 0.0 {
        "–".to_owned()
    } else {
        format!("{:.2}x", ours / theirs)
    }
}

/// The ratio `ours / theirs` taken within each run (the two lists are in run order), as
/// `median (min–max)` with an `x`: a machine that slows down for one run slows both servers in
/// it, and the ratio keeps less of that noise than the ratio of medians would.
pub fn ratio_within_runs(ours: &[f64], theirs: &[f64]) -> String {
    let ratios: Vec<f64> = ours
        .iter()
        .zip(theirs)
        .filter(|(_, theirs)| **theirs != 0.0)
        .map(|(ours, theirs)| ours / theirs)
        .collect();
    if ratios.is_empty() {
        return "–".to_owned();
    }
    let (median, low, high) = summary(&ratios);
    if ratios.len() > 1 {
        format!("{median:.2}x ({low:.2}–{high:.2})")
    } else {
        format!("{median:.2}x")
    }
}

/// A figure of a table: its name, how to read it from one run, and its decimals.
pub type Figure<T> = (&'static str, fn(&T) -> f64, usize);

/// A table with a row per figure and a column per server (each `median (min–max)` of its runs,
/// `–` without any), then the first server over each other one, taken within each run; then
/// each server's gaps and duplicates (`misses` of a run) summed over its runs, and, if any run
/// failed, how many did. `corner` heads the column of names.
pub fn by_server<K: Display, T>(
    corner: &str,
    names: &[K],
    figures: &[Figure<T>],
    runs: &Runs<T>,
    misses: fn(&T) -> (u64, u64),
) -> String {
    let (results, failed) = (&runs.results, &runs.failed);
    let ratios: Vec<String> = names[1..]
        .iter()
        .map(|name| format!("{} / {name}", names[0]))
        .collect();
    // A server alone (`--servers storywire`) has no ratio columns.
    let header: Vec<String> = names
        .iter()
        .map(ToString::to_string)
        .chain(ratios.iter().cloned())
        .collect();
    let mut lines = vec![
        format!("| {corner} | {} |", header.join(" | ")),
        format!("|---|{}", "---|".repeat(names.len() + ratios.len())),
    ];
    for (name, f, decimals) in figures {
        let column = |i: usize| -> Vec<f64> { results[i].iter().map(f).collect() };
        let cells: Vec<String> = (0..names.len())
            .map(|i| cell(&column(i), *decimals))
            .collect();
        let ratios: Vec<String> = (1..names.len())
            .map(|i| ratio_within_runs(&column(0), &column(i)))
            .collect();
        lines.push(format!(
            "| {name} | {} |",
            [cells, ratios].concat().join(" | ")
        ));
    }
    let no_ratios = " |".repeat(ratios.len());
    let misses: Vec<String> = results
        .iter()
        .map(|runs| {
            let (gaps, duplicates) = runs
                .iter()
                .map(misses)
                .fold((0, 0), |(g, d), (gaps, dups)| (g + gaps, d + dups));
            format!("{gaps} / {duplicates}")
        })
        .collect();
    lines.push(format!(
        "| gaps / duplicates, all runs | {} |{no_ratios}",
        misses.join(" | ")
    ));
    if failed.iter().any(|&n| n > 0) {
        let failed: Vec<String> = failed.iter().map(usize::to_string).collect();
        lines.push(format!(
            "| runs that failed (see the log) | {} |{no_ratios}",
            failed.join(" | ")
        ));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::{Runs, by_server, ratio_within_runs};

    #[test]
    fn a_table_by_server_has_a_column_per_server_and_a_ratio_per_other() {
        let figures: [super::Figure<f64>; 1] = [("value", |v| *v, 1)];
        let misses = |v: &f64| (*v as u64, 1);
        let names = ["a", "b"];
        let runs = Runs {
            results: vec![vec![2.0], vec![1.0]],
            failed: vec![0, 0],
        };
        let text = by_server("case", &names, &figures, &runs, misses);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "| case | a | b | a / b |");
        assert_eq!(lines[1], "|---|---|---|---|");
        assert_eq!(lines[2], "| value | 2.0 | 1.0 | 2.00x |");
        assert_eq!(
            lines[3],
            "| gaps / duplicates, all runs | 2 / 1 | 1 / 1 | |"
        );
        assert_eq!(lines.len(), 4);
        let runs = Runs {
            results: vec![vec![2.0], vec![]],
            failed: vec![0, 1],
        };
        let text = by_server("case", &names, &figures, &runs, misses);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[2], "| value | 2.0 | – | – |");
        assert_eq!(lines[4], "| runs that failed (see the log) | 0 | 1 | |");
    }

    #[test]
    fn ratios_are_taken_within_each_run_then_summarised() {
        // Run by run: 2x, 4x, 3x; the ratio of the medians (2 / 1) would say 2x.
        assert_eq!(
            ratio_within_runs(&[2.0, 4.0, 1.5], &[1.0, 1.0, 0.5]),
            "3.00x (2.00–4.00)"
        );
        assert_eq!(ratio_within_runs(&[1.0], &[0.0]), "–");
    }
}
