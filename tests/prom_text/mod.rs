//! Reading samples out of a Prometheus text exposition (`/metrics`, `Metrics::encode`), for the
//! tests that assert metric values.

#![allow(dead_code)]

/// Whether `line` is a sample of `name` (not of a longer name that starts with it).
fn is_sample_of(line: &str, name: &str) -> bool {
    !line.starts_with('#') && line.starts_with(name) && line[name.len()..].starts_with(['{', ' '])
}

/// The value of the first sample of `name` that carries every one of `labels` (it may carry
/// others too).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| is_sample_of(l, name))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The sum of the samples of `name` whose label set (the text between the braces) satisfies
/// `keep`.
pub fn sum_where(text: &str, name: &str, keep: impl Fn(&str) -> bool) -> f64 {
    text.lines()
        .filter(|l| is_sample_of(l, name))
        .filter_map(|l| {
            let (set, value) = l[name.len()..].strip_prefix('{')?.rsplit_once("} ")?;
            keep(set).then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}
