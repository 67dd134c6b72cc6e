//! The report's cells: the median of a figure over the runs with its spread, and the ratio of two
//! medians.

/// Median, minimum and maximum of one figure over the runs.
pub fn summary(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    (median, sorted[0], sorted[sorted.len() - 1])
}

/// `median (min–max)` with `decimals` decimals, or just the value for a single run.
pub fn cell(values: &[f64], decimals: usize) -> String {
    let (median, low, high) = summary(values);
    if values.len() > 1 {
        format!("{median:.decimals$} ({low:.decimals$}–{high:.decimals$})")
    } else {
        format!("{median:.decimals$}")
    }
}

/// The ratio of the medians, `ours / theirs`, as `1.23x`.
pub fn ratio(ours: &[f64], theirs: &[f64]) -> String {
    let (ours, _, _) = summary(ours);
    let (theirs, _, _) = summary(theirs);
    if theirs == 0.0 {
        "–".to_owned()
    } else {
        format!("{:.2}x", ours / theirs)
    }
}
