//! A strict reader of the Prometheus text exposition format (and OpenMetrics' `# EOF`), so tests
//! check that `/metrics` is what a scraper accepts, not only that it contains a string.

use std::collections::BTreeMap;

/// Samples by series (`name{label="value",...}` exactly as exposed) → value.
pub type Samples = BTreeMap<String, f64>;

/// Parses exposition text. Every sample line must be `name{labels} value` with valid metric and
/// label names and quoted label values, and belong to a family declared before it with
/// `# TYPE` (counters' `_total`, histograms' `_bucket`/`_sum`/`_count` and `_created` suffixes
/// included). The error names the offending line.
pub fn parse(text: &str) -> Result<Samples, String> {
    let mut families = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let fail = |what: &str| Err(format!("line {}: {what}: {line:?}", n + 1));
        if line == "# EOF" || line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let Some((name, kind)) = rest.split_once(' ') else {
                return fail("expected `# TYPE name kind`");
            };
            if !valid_name(name) {
                return fail("bad family name");
            }
            if !["counter", "gauge", "histogram", "summary", "unknown", "info"].contains(&kind) {
                return fail("bad type");
            }
            families.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with('#') {
            return fail("unexpected comment");
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            return fail("expected `series value`");
        };
        let Ok(value) = value.parse::<f64>() else {
            return fail("bad value");
        };
        let name = series.split('{').next().unwrap_or_default();
        if !valid_name(name) {
            return fail("bad sample name");
        }
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let Some(inner) = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}')) else {
                return fail("labels not in {..}");
            };
            for pair in inner.split(',') {
                let Some((k, v)) = pair.split_once('=') else {
                    return fail("expected label=\"value\"");
                };
                if !(valid_name(k) && v.len() >= 2 && v.starts_with('"') && v.ends_with('"')) {
                    return fail("bad label");
                }
            }
        }
        let family = ["_total", "_bucket", "_sum", "_count", "_created"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| families.contains_key(*f)))
            .unwrap_or(name);
        if !families.contains_key(family) {
            return fail("sample without # TYPE");
        }
        samples.insert(series.to_owned(), value);
    }
    Ok(samples)
}

fn valid_name(n: &str) -> bool {
    n.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_families_and_refuses_what_a_scraper_would() {
        let text = "# HELP up Up.\n# TYPE up gauge\nup 1\n# TYPE req counter\nreq_total{a=\"b\",c=\"d\"} 3\n# EOF\n";
        let s = parse(text).unwrap();
        assert_eq!(s["up"], 1.0);
        assert_eq!(s["req_total{a=\"b\",c=\"d\"}"], 3.0);
        assert!(parse("up 1\n").unwrap_err().contains("without # TYPE"));
        assert!(parse("# TYPE up gauge\nup{a=b} 1\n").unwrap_err().contains("bad label"));
        assert!(parse("# TYPE up gauge\nup one\n").unwrap_err().contains("bad value"));
        assert!(parse("# TYPE 9up gauge\n").unwrap_err().contains("bad family name"));
        assert!(parse("# comment\n").is_err());
    }
}
