//! Small value types shared by the configuration and the modules whose settings it validates
//! (reload, deploy): durations ("30d", "1h30m"), file modes ("0600"), cron schedules (validated
//! with the parser tokio-cron-scheduler 0.15 uses), where a secret comes from
//! ([`SecretSource`]), RFC 3339 text, and the [`Problem`] a validation reports. A leaf: it
//! imports no other module of the crate (only the client crate's `Secret`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;

/// One thing wrong with the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The key path, like `certificates[2].pca.key_algorithm`; empty for the whole file.
    pub key: String,
    pub message: String,
    /// 1-based line and column, when known (TOML syntax and type errors).
    pub position: Option<(usize, usize)>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Parse a duration written as one or more `<integer><unit>` parts: `w` (weeks), `d`, `h`, `m`
/// (minutes), `s`, `ms`; for example `30d`, `12h`, `90m`, `1h30m`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration (write e.g. \"30d\", \"12h\", \"90m\")".into());
    }
    let bad = || {
        format!(
            "{s:?} is not a duration: write <number><unit> parts with units w, d, h, m, s, ms \
             (e.g. \"30d\", \"1h30m\")"
        )
    };
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_secs: Option<u64> = match &rest[..unit_len] {
            "w" => Some(7 * 86400),
            "d" => Some(86400),
            "h" => Some(3600),
            "m" => Some(60),
            "s" => Some(1),
            "ms" => None,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let part = match unit_secs {
            Some(secs) => n.checked_mul(secs).map(Duration::from_secs),
            None => Some(Duration::from_millis(n)),
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| format!("{s:?} is too long"))?;
    }
    Ok(total)
}

/// Write a duration the way [`parse_duration`] reads it (largest units first).
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, len) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    let ms = d.subsec_millis();
    if ms > 0 {
        out.push_str(&format!("{ms}ms"));
    }
    out
}

/// Parse a file mode written as an octal string: "0600", "640", "0o644".
pub fn parse_mode(value: &toml::Value) -> Result<u32, String> {
    let s = match value {
        toml::Value::String(s) => s.as_str(),
        toml::Value::Integer(_) => {
            return Err(
                "write the mode as an octal string such as \"0600\" (a TOML integer is ambiguous)"
                    .into(),
            );
        }
        other => {
            return Err(format!(
                "expected an octal string such as \"0600\", found {}",
                other.type_str()
            ));
        }
    };
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(format!("{s:?} is not an octal file mode such as \"0600\""));
    }
    u32::from_str_radix(digits, 8).map_err(|_| format!("{s:?} is not an octal file mode"))
}

/// A check schedule: a cron expression, accepted with 5 fields (standard cron, minute first), 6
/// (seconds first) or 7 (plus year), or a nickname (`@daily`, `@hourly`, ...). Stored in the
/// 6/7-field form tokio-cron-scheduler 0.15 requires, validated with the same parser it uses
/// (croner 3 with seconds required and day-of-month AND day-of-week). Times are UTC.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    written: String,
    expression: String,
    cron: croner::Cron,
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Self, String> {
        let written = s.trim();
        let fields = written.split_whitespace().count();
        let expression = if written.starts_with('@') {
            written.to_owned()
        } else {
            match fields {
                5 => format!(
                    "0 {}",
                    written.split_whitespace().collect::<Vec<_>>().join(" ")
                ),
                6 | 7 => written.split_whitespace().collect::<Vec<_>>().join(" "),
                n => {
                    return Err(format!(
                        "{written:?} has {n} fields; a cron expression has 5 (minute hour \
                         day-of-month month day-of-week), 6 (seconds first) or 7 (plus year)"
                    ));
                }
            }
        };
        let cron = parser()
            .parse(&expression)
            .map_err(|e| format!("{written:?} is not a valid cron expression: {e}"))?;
        Ok(Self {
            written: written.to_owned(),
            expression,
            cron,
        })
    }

    /// The expression to hand to `tokio_cron_scheduler::Job::new_async` (seconds first).
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The expression as written in the file.
    pub fn as_written(&self) -> &str {
        &self.written
    }

    /// The first run strictly after `t` (UTC).
    pub fn next_after(&self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        let secs = t.unix_timestamp();
        let nanos = t.nanosecond();
        let start = chrono::DateTime::<chrono::Utc>::from_timestamp(secs, nanos)?;
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        OffsetDateTime::from_unix_timestamp(next.timestamp()).ok()
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

/// The parser configured as tokio-cron-scheduler 0.15 configures it for `Job::new_async`.
fn parser() -> croner::parser::CronParser {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
}

/// Secret files larger than this are refused (a secret is short; a big file is a mistake).
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Where a secret (or a value kept with secrets) comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// Written in the file: only for values that are not secret (the access key id).
    Inline(String),
    /// The first of these environment variables that is set and not empty.
    Env(Vec<String>),
    /// A file, trailing newlines trimmed.
    File(PathBuf),
    /// A systemd credential (`LoadCredential=`): `$CREDENTIALS_DIRECTORY/<name>`.
    Credential(String),
}

impl SecretSource {
    /// Read the value. `env` looks up environment variables (tests inject a map). Errors name
    /// where the value was looked for, never the value.
    pub fn resolve(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ccm_client::Secret, String> {
        match self {
            SecretSource::Inline(v) => Ok(ccm_client::Secret::new(v.clone())),
            SecretSource::Env(names) => names
                .iter()
                .find_map(|n| env(n).filter(|v| !v.is_empty()))
                .map(ccm_client::Secret::new)
                .ok_or_else(|| {
                    let list: Vec<_> = names.iter().map(|n| format!("${n}")).collect();
                    format!("not set: {} is unset or empty", list.join(" / "))
                }),
            SecretSource::File(path) => read_secret_file(path),
            SecretSource::Credential(name) => {
                let dir = env("CREDENTIALS_DIRECTORY")
                    .filter(|d| !d.is_empty())
                    .ok_or_else(|| {
                        format!(
                            "credential {name:?}: $CREDENTIALS_DIRECTORY is not set (use systemd \
                         LoadCredential= or an absolute path)"
                        )
                    })?;
                read_secret_file(&Path::new(&dir).join(name))
            }
        }
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("the configuration file"),
            SecretSource::Env(names) => {
                let list: Vec<_> = names.iter().map(|n| format!("${n}")).collect();
                f.write_str(&list.join(" or "))
            }
            SecretSource::File(p) => write!(f, "file {}", p.display()),
            SecretSource::Credential(n) => write!(f, "systemd credential {n:?}"),
        }
    }
}

fn read_secret_file(path: &Path) -> Result<ccm_client::Secret, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_SECRET_FILE {
        return Err(format!(
            "{}: larger than {MAX_SECRET_FILE} bytes",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(format!("{}: empty", path.display()));
    }
    Ok(ccm_client::Secret::new(value))
}

/// RFC 3339, for messages, the status file and what is published to the fleet.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86400)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 45s "), Ok(Duration::from_secs(45)));
        for bad in [
            "",
            "30",
            "d",
            "30x",
            "-5m",
            "1.5h",
            "30 d",
            "h30",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration("999999999999999w").is_err());
        for d in ["30d", "1d12h", "1h30m", "45s", "1s500ms"] {
            let parsed = parse_duration(d).expect("parses");
            assert_eq!(parse_duration(&format_duration(parsed)), Ok(parsed));
        }
        assert_eq!(format_duration(Duration::from_secs(90061)), "1d1h1m1s");
    }

    #[test]
    fn modes() {
        let s = |v: &str| toml::Value::String(v.into());
        assert_eq!(parse_mode(&s("0600")), Ok(0o600));
        assert_eq!(parse_mode(&s("644")), Ok(0o644));
        assert_eq!(parse_mode(&s("0o640")), Ok(0o640));
        assert_eq!(parse_mode(&s("2750")), Ok(0o2750));
        for bad in ["", "0800", "rw-------", "07777", "0x600"] {
            assert!(parse_mode(&s(bad)).is_err(), "{bad:?} accepted");
        }
        let err = parse_mode(&toml::Value::Integer(600)).expect_err("integer");
        assert!(err.contains("octal string"), "{err}");
    }

    #[test]
    fn schedules_accept_five_six_seven_fields_and_nicknames() {
        let s = Schedule::parse("0 3 * * *").expect("5 fields");
        assert_eq!(s.expression(), "0 0 3 * * *");
        assert_eq!(s.as_written(), "0 3 * * *");
        assert_eq!(
            s.next_after(datetime!(2026-01-01 00:00 UTC)),
            Some(datetime!(2026-01-01 03:00 UTC))
        );
        assert_eq!(
            s.next_after(datetime!(2026-01-01 03:00 UTC)),
            Some(datetime!(2026-01-02 03:00 UTC))
        );
        let s = Schedule::parse("30 */15 * * * *").expect("6 fields");
        assert_eq!(s.expression(), "30 */15 * * * *");
        assert_eq!(
            s.next_after(datetime!(2026-01-01 00:00 UTC)),
            Some(datetime!(2026-01-01 00:00:30 UTC))
        );
        assert!(Schedule::parse("0 0 3 * * * 2030").is_ok());
        let daily = Schedule::parse("@daily").expect("nickname");
        assert_eq!(
            daily.next_after(datetime!(2026-01-01 12:00 UTC)),
            Some(datetime!(2026-01-02 00:00 UTC))
        );
        for bad in [
            "",
            "* * *",
            "61 * * * *",
            "0 25 * * *",
            "a b c d e",
            "@sometimes",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// What we accept, tokio-cron-scheduler accepts, and what we reject, it rejects.
    #[test]
    fn schedules_match_tokio_cron_scheduler() {
        let cases = [
            "0 3 * * *",
            "*/5 * * * *",
            "0 0 3 * * MON-FRI",
            "0 0 12 1 * *",
            "@hourly",
            "0 61 * * * *",
            "0 0 3 * * * 2030",
        ];
        for case in cases {
            let ours = Schedule::parse(case);
            let expr = ours
                .as_ref()
                .map(|s| s.expression().to_owned())
                .unwrap_or_else(|_| case.to_owned());
            let theirs =
                tokio_cron_scheduler::Job::new_async(expr.as_str(), |_, _| Box::pin(async {}));
            assert_eq!(ours.is_ok(), theirs.is_ok(), "{case:?}");
        }
    }
}
