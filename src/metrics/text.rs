//! A reader for the Prometheus text format 0.0.4 (samples only, comments skipped): how tests and
//! tools check what `/metrics` says; and the label value escaping `/metrics` writes with.

use std::collections::BTreeMap;

/// One sample line: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parse every sample of an exposition. Errors name the offending line.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).ok_or_else(|| format!("line {}: {line:?}", i + 1))?);
    }
    Ok(out)
}

/// The value of the one sample named `name` whose labels include all of `labels`; `None` if no
/// sample matches. Panics-free: with several matches, the first is returned.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    find(samples, name, labels).next().map(|s| s.value)
}

/// The samples named `name` whose labels include all of `labels`.
pub fn find<'a>(
    samples: &'a [Sample],
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = &'a Sample> + 'a {
    samples.iter().filter(move |s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

/// Append `value` to `out` escaped as a label value of the text format: backslash, double quote
/// and line feed become `\\`, `\"` and `\n`; everything else is kept.
pub fn escape_label_value(out: &mut String, value: &str) {
    let mut rest = value;
    while let Some(i) = rest.find(['\\', '"', '\n']) {
        out.push_str(&rest[..i]);
        out.push_str(match rest.as_bytes()[i] {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            _ => "\\n",
        });
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        loop {
            // Skip separators, find a label name or the closing brace.
            let (start, c) = *chars.peek()?;
            if c == '}' {
                rest = &after[start + 1..];
                break;
            }
            if c == ',' || c == ' ' {
                chars.next();
                continue;
            }
            let eq = after[start..].find('=')? + start;
            let key = after[start..eq].trim().to_owned();
            while chars.peek()?.0 <= eq {
                chars.next();
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                let (_, c) = chars.next()?;
                match c {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            }
            labels.insert(key, value);
        }
    }
    let mut fields = rest.split_whitespace();
    let value = match fields.next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_labels_with_escapes() {
        let s = parse(
            "# HELP x y\n# TYPE x gauge\nx{a=\"1\",b=\"q\\\"u\\\\o\\nte, }\"} 2.5\ny 3\nz_bucket{le=\"+Inf\"} 4 1700000000\n",
        )
        .unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].labels["b"], "q\"u\\o\nte, }");
        assert_eq!(value(&s, "x", &[("a", "1")]), Some(2.5));
        assert_eq!(value(&s, "y", &[]), Some(3.0));
        assert_eq!(value(&s, "z_bucket", &[("le", "+Inf")]), Some(4.0));
        assert!(parse("x{a=1} 2").is_err());
    }

    #[test]
    fn escaped_label_values_read_back() {
        for v in [
            "",
            "plain",
            "a\"b",
            "back\\slash",
            "two\nlines\n",
            "\\\"\n",
            "日本\"語",
        ] {
            let mut line = "x{v=\"".to_owned();
            escape_label_value(&mut line, v);
            line.push_str("\"} 1");
            assert_eq!(parse(&line).unwrap()[0].labels["v"], v, "{line}");
        }
        let mut out = String::new();
        escape_label_value(&mut out, "a\\b\"c\nd");
        assert_eq!(out, r#"a\\b\"c\nd"#);
    }
}
