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

#[cfg(test)]
mod tests {
    use super::ratio_within_runs;

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
