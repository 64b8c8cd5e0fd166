//! Scraping the server's Prometheus `/metrics` on its admin listener.
//!
//! The text format is read minimally: `name{labels} value` lines, comments skipped. A
//! metric the server does not (yet) expose is simply absent.

use std::net::SocketAddr;
use std::time::Duration;

/// The RSS gauge the server exposes.
pub const RSS: &str = "process_resident_memory_bytes";
/// Calls waiting for a pushed device right now.
pub const CALLS_PARKED: &str = "pushpark_calls_parked";
/// Calls parked so far.
pub const CALLS_PARKED_TOTAL: &str = "pushpark_calls_parked_total";
/// INVITEs for local users handed to the core so far.
pub const CALLS_TOTAL: &str = "pushpark_calls_total";
/// Final responses given to callers, by `code`.
pub const OUTCOMES_TOTAL: &str = "pushpark_call_outcomes_total";
/// Pushes by provider, result and reason.
pub const PUSHES_TOTAL: &str = "pushpark_pushes_total";
/// Call records the core holds.
pub const CORE_CALLS: &str = "pushpark_core_calls";
/// SIP transactions in progress.
pub const TRANSACTIONS: &str = "pushpark_transactions";
/// From a push to the woken device's REGISTER, as the server saw it (histogram).
pub const WAKEUP_DELAY: &str = "pushpark_wakeup_delay_seconds";
/// Answers from the push the app API got, by `answer` and `result`.
pub const APP_ANSWERS_TOTAL: &str = "pushpark_app_answers_total";

/// One sample: a metric name, its label set as written (without braces), its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name (with `_bucket`, `_sum`, `_count` for histogram series).
    pub name: String,
    /// The labels as written between the braces (empty when none).
    pub labels: String,
    /// The value.
    pub value: f64,
}

/// All samples of one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    /// The samples, in the order the server wrote them.
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses the Prometheus text format; lines that do not parse are skipped.
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(parse_line)
            .collect();
        Scrape { samples }
    }

    /// The value of the unlabelled sample `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels.is_empty())
            .map(|s| s.value)
    }

    /// The sum of every sample of `name`, whatever its labels (`None` when there is none).
    pub fn sum(&self, name: &str) -> Option<f64> {
        let mut found = false;
        let total = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .inspect(|_| found = true)
            .map(|s| s.value)
            .sum();
        found.then_some(total)
    }

    /// The samples of `name` by the value of their label `label`.
    pub fn by_label(&self, name: &str, label: &str) -> Vec<(String, f64)> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| Some((label_value(&s.labels, label)?, s.value)))
            .collect()
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find(['{', ' ']) {
        Some(i) if line.as_bytes()[i] == b'{' => {
            let close = closing_brace(line, i + 1)?;
            (&line[..i], &line[i + 1..close], &line[close + 1..])
        }
        Some(i) => (&line[..i], "", &line[i..]),
        None => return None,
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels: labels.to_owned(),
        value,
    })
}

/// The index of the `}` closing a label set that starts at `from` (quotes respected).
fn closing_brace(line: &str, from: usize) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line[from..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(from + i),
            _ => {}
        }
    }
    None
}

/// The value of `label` in a label set like `code="200",le="0.5"` (escapes undone).
fn label_value(labels: &str, label: &str) -> Option<String> {
    let mut rest = labels;
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().trim_start_matches(',').trim();
        let after = rest[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => return None,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end?;
        if key == label {
            return Some(value);
        }
        rest = &after[end + 1..];
    }
    None
}

/// Fetches and parses `http://<admin>/metrics`.
pub async fn scrape(client: &reqwest::Client, admin: SocketAddr) -> Result<Scrape, String> {
    let response = client
        .get(format!("http://{admin}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("GET http://{admin}/metrics: {e}"))?;
    if !response.status().is_success() {
        return Err(format!(
            "GET http://{admin}/metrics: HTTP {}",
            response.status()
        ));
    }
    let text = response
        .text()
        .await
        .map_err(|e| format!("GET http://{admin}/metrics: {e}"))?;
    Ok(Scrape::parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str =
        "# HELP pushpark_calls_total INVITEs.\n# TYPE pushpark_calls_total counter\n\
pushpark_calls_total 42\n\
pushpark_call_outcomes_total{code=\"200\"} 40\n\
pushpark_call_outcomes_total{code=\"486\"} 2\n\
pushpark_pushes_total{provider=\"loadgen\",result=\"transient\",reason=\"a \\\"b\\\" }\"} 3\n\
process_resident_memory_bytes 1.2345e7\n\
pushpark_wakeup_delay_seconds_bucket{le=\"+Inf\"} 7\n\
garbage line\n";

    #[test]
    fn reads_names_labels_and_values() {
        let scrape = Scrape::parse(TEXT);
        assert_eq!(scrape.get(CALLS_TOTAL), Some(42.0));
        assert_eq!(scrape.get(RSS), Some(12_345_000.0));
        assert_eq!(scrape.sum(OUTCOMES_TOTAL), Some(42.0));
        assert_eq!(scrape.get(OUTCOMES_TOTAL), None);
        assert_eq!(scrape.sum(CALLS_PARKED), None);
        assert_eq!(
            scrape.by_label(OUTCOMES_TOTAL, "code"),
            [("200".to_owned(), 40.0), ("486".to_owned(), 2.0)]
        );
        assert_eq!(
            scrape.by_label(PUSHES_TOTAL, "reason"),
            [("a \"b\" }".to_owned(), 3.0)]
        );
        assert_eq!(scrape.by_label(PUSHES_TOTAL, "result")[0].0, "transient");
        assert_eq!(scrape.samples.len(), 6);
    }
}
