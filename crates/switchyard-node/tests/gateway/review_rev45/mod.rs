//! Review rev45: `/metrics`, `/v1/stats`, `/v1/health`, `/health` and `/ready` as an SRE who
//! alerts on them relies on them (docs/gateway.md "Observability"): exact counters after a
//! known workload in both views, Prometheus text validity, label cardinality, breakers in
//! `/v1/health`, and which endpoints need a token.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::common::{TestNode, client};

mod counters;
mod format;
mod health;
mod ws;

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// GETs `/metrics` (with `token` as a bearer when given) and returns the text.
pub async fn scrape(node: &TestNode, token: Option<&str>) -> String {
    let mut req = client().get(node.url("/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200, "GET /metrics");
    res.text().await.unwrap()
}

/// Parses `{a="x",b="y"}` (the text after the metric name) with the format's escapes
/// (`\\`, `\"`, `\n`); panics naming `line` when it is not valid.
fn parse_labels(rest: &str, line: &str) -> (BTreeMap<String, String>, String) {
    let mut labels = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    if chars.peek() != Some(&'{') {
        return (labels, rest.to_owned());
    }
    chars.next();
    loop {
        match chars.peek() {
            Some('}') => {
                chars.next();
                break;
            }
            Some(',') => {
                chars.next();
                continue;
            }
            None => panic!("unterminated label set in {line:?}"),
            _ => {}
        }
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        assert!(
            !key.is_empty()
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !key.starts_with(|c: char| c.is_ascii_digit()),
            "bad label name {key:?} in {line:?}"
        );
        assert_eq!(
            chars.next(),
            Some('"'),
            "label value not quoted in {line:?}"
        );
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => panic!("bad escape \\{other:?} in {line:?}"),
                },
                Some('"') => break,
                Some('\n') => panic!("raw newline in a label value: {line:?}"),
                Some(c) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        }
        assert!(
            labels.insert(key.clone(), value).is_none(),
            "label {key} twice in {line:?}"
        );
    }
    (labels, chars.collect())
}

/// The family a sample belongs to, given the declared types.
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    if types.contains_key(name) {
        return name;
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.contains_key(base)
        {
            return base;
        }
    }
    name
}

/// Parses and checks a whole exposition as a Prometheus server would (text format 0.0.4):
/// every line is a comment, HELP/TYPE or a sample; HELP and TYPE at most once per family and
/// before its samples; a family's samples together; every sample typed; counters named
/// `_total`; no series twice; histogram buckets cumulative with `le="+Inf"` equal to
/// `_count`. Returns the samples.
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut seen_samples: HashSet<String> = HashSet::new(); // families with samples
    let mut closed: HashSet<String> = HashSet::new(); // families whose block ended
    let mut current: Option<String> = None;
    let mut series: HashSet<(String, BTreeMap<String, String>)> = HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kw = parts.next().unwrap_or("");
            let name = parts.next().unwrap_or("").to_owned();
            match kw {
                "HELP" => {
                    assert!(helps.insert(name.clone()), "HELP twice for {name}");
                    assert!(
                        !seen_samples.contains(&name),
                        "HELP of {name} after samples"
                    );
                }
                "TYPE" => {
                    let ty = parts.next().unwrap_or("").to_owned();
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"]
                            .contains(&ty.as_str()),
                        "bad TYPE line {line:?}"
                    );
                    assert!(
                        types.insert(name.clone(), ty).is_none(),
                        "TYPE twice for {name}"
                    );
                    assert!(
                        !seen_samples.contains(&name),
                        "TYPE of {name} after samples"
                    );
                }
                _ => {}
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let name = &line[..name_end];
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        let (labels, rest) = parse_labels(&line[name_end..], line);
        let value_text = rest.trim().split(' ').next().unwrap_or("");
        let value: f64 = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value {v:?} in {line:?}")),
        };
        let family = family_of(name, &types).to_owned();
        let ty = types
            .get(&family)
            .unwrap_or_else(|| panic!("sample {name} without a TYPE line: {line:?}"));
        if ty == "counter" {
            // docs/gateway.md documents `switchyard_handler_duration_seconds_{count,sum,max}`
            // and `switchyard_end_to_end_latency_seconds_{count,sum}` as plain families (a
            // counter named `_count`, gauges for `_sum`/`_max`), not a histogram or summary:
            // accepted by Prometheus's 0.0.4 parser, so allowed here (noted in the review).
            assert!(
                name.ends_with("_total") || name.ends_with("_seconds_count"),
                "counter {name} not named _total"
            );
            assert!(value >= 0.0, "negative counter {line:?}");
        }
        if current.as_deref() != Some(family.as_str()) {
            if let Some(prev) = current.take() {
                closed.insert(prev);
            }
            assert!(
                !closed.contains(&family),
                "samples of {family} are not together (again at {line:?})"
            );
            current = Some(family.clone());
        }
        seen_samples.insert(family.clone());
        assert!(
            series.insert((name.to_owned(), labels.clone())),
            "series twice: {line:?}"
        );
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    check_histograms(&samples, &types);
    samples
}

/// Buckets cumulative, `+Inf` present and equal to `_count`, for every histogram series.
fn check_histograms(samples: &[Sample], types: &HashMap<String, String>) {
    for (family, ty) in types {
        if ty != "histogram" {
            continue;
        }
        let bucket = format!("{family}_bucket");
        let count = format!("{family}_count");
        let mut groups: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.name == bucket) {
            let mut key = s.labels.clone();
            let le = key.remove("le").expect("a bucket without le");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            groups.entry(key).or_default().push((le, s.value));
        }
        for (key, mut buckets) in groups {
            buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
            for w in buckets.windows(2) {
                assert!(
                    w[0].1 <= w[1].1,
                    "{family}{key:?} buckets not cumulative: {buckets:?}"
                );
            }
            let inf = buckets.last().unwrap();
            assert!(
                inf.0.is_infinite(),
                "{family}{key:?} has no le=\"+Inf\" bucket"
            );
            let c = samples
                .iter()
                .find(|s| s.name == count && s.labels == key)
                .unwrap_or_else(|| panic!("{family}{key:?} has no _count"));
            assert_eq!(inf.1, c.value, "{family}{key:?}: +Inf bucket != _count");
        }
    }
}

/// The value of the one sample `name` whose labels include every `(key, value)` of `want`.
pub fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(
        found.len() <= 1,
        "{name} {want:?} matches {} series",
        found.len()
    );
    found.first().map(|s| s.value)
}
