//! Time fields parsed once at the API boundary: SCM strings such as `"2021-05-27 16:46:25.0"`
//! and PCA epoch milliseconds both become `OffsetDateTime` (UTC).

use time::OffsetDateTime;
use time::macros::format_description;

/// Parse an SCM time string (`"2021-05-27 16:46:25.0"`, with or without fraction), taken as UTC.
pub fn parse_scm_time(s: &str) -> Option<OffsetDateTime> {
    let s = s.trim();
    let (main, frac) = match s.split_once('.') {
        Some((m, f)) => (m, Some(f)),
        None => (s, None),
    };
    let fmt = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let base = time::PrimitiveDateTime::parse(main, fmt).ok()?.assume_utc();
    match frac {
        None => Some(base),
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => {
            let nanos: i64 = format!("{f:0<9}").parse().ok()?;
            Some(base + time::Duration::nanoseconds(nanos))
        }
        Some(_) => None,
    }
}

/// Format a time the way SCM sends it: `"2021-05-27 16:46:25.0"`.
pub fn format_scm_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let fmt = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    format!(
        "{}.{}",
        t.format(fmt).unwrap_or_default(),
        t.millisecond() / 100
    )
}

/// A PCA epoch-milliseconds value as a time.
pub fn from_epoch_ms(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// A time as PCA epoch milliseconds.
pub fn to_epoch_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Serde helpers for optional SCM time strings: `null`, absent, or a string.
pub mod scm_time_opt {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(v: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(t) => s.serialize_str(&super::format_scm_time(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        let raw: Option<String> = Option::deserialize(d)?;
        match raw.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(s) => super::parse_scm_time(s)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("not an SCM time: {s:?}"))),
        }
    }
}

/// Serde helpers for optional PCA epoch-millisecond fields.
pub mod epoch_ms_opt {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(v: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(t) => s.serialize_i64(super::to_epoch_ms(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        let raw: Option<i64> = Option::deserialize(d)?;
        match raw {
            None => Ok(None),
            Some(ms) => super::from_epoch_ms(ms)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("epoch ms out of range: {ms}"))),
        }
    }
}

/// Normalise PEM text from the API: `\r\n` to `\n`, and a trailing newline.
pub fn normalize_pem(s: &str) -> String {
    let mut out = s.replace("\r\n", "\n");
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scm_time_roundtrip() {
        let t = parse_scm_time("2021-05-27 16:46:25.0").expect("parse");
        assert_eq!(t.unix_timestamp(), 1_622_133_985);
        assert_eq!(format_scm_time(t), "2021-05-27 16:46:25.0");
        assert!(parse_scm_time("2021-05-27 16:46:25").is_some());
        assert!(parse_scm_time("2021-05-27T16:46:25Z").is_none());
        assert!(parse_scm_time("garbage").is_none());
    }

    #[test]
    fn epoch_ms_roundtrip() {
        let t = from_epoch_ms(1_645_146_939_688).expect("ms");
        assert_eq!(to_epoch_ms(t), 1_645_146_939_688);
    }

    #[test]
    fn pem_normalised() {
        assert_eq!(normalize_pem("a\r\nb"), "a\nb\n");
        assert_eq!(normalize_pem(""), "");
    }
}
