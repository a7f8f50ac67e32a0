//! The emulator's own wire types and formats, written from the API reference (`shared/seeds`),
//! not taken from the client (`ccm_client`): a serde mistake in the client must not be mirrored
//! here, or the tests that put the two together would pass with both wrong.
//!
//! Request bodies each handler reads are declared next to it ([`super::scm`], [`super::pca`]),
//! every field optional so that a missing one gets its own documented error code; responses are
//! built field by field from the records. This module holds what several handlers and the stored
//! records share: the `DistinguishedName` and `CrlConfiguration` objects, and the formats of SCM
//! times, PCA epoch milliseconds, PEM text, and identifiers.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::macros::format_description;

/// `DistinguishedName` (reference tables 4-60, 4-69, 4-90, 4-162; `CertDistinguishedName`
/// 4-170): a certificate subject. Every attribute is optional on the wire; which are required
/// depends on the operation, and the handlers answer each omission with its own error code.
/// Also the stored form in [`super::pca::ca::CaRecord`] and [`super::pca::cert::CertRecord`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistinguishedName {
    /// CN, 1..=64 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    /// `[A-Za-z]{2}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// 1..=128 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// 1..=128 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    /// 1..=64 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// OU, 1..=64 characters. The tables name it `organizational_unit`; the create-CA example
    /// request (4.2.1.2) spells it `organization_unit`, so a request in that spelling is taken
    /// too. Responses always use the tables' name.
    #[serde(
        default,
        alias = "organization_unit",
        skip_serializing_if = "Option::is_none"
    )]
    pub organizational_unit: Option<String>,
}

/// `ListCrlConfiguration` (tables 4-61, 4-91): a CA's CRL settings as the service reports and
/// the emulator stores them. The request side (`CrlConfiguration`, table 4-71) is read by the
/// CA handlers with every field optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrlConfiguration {
    #[serde(default)]
    pub enabled: bool,
    /// Defaults to the id of the parent CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obs_bucket_name: Option<String>,
    /// 7..=30 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_days: Option<i64>,
    /// The CRL's address in the OBS bucket, made of the bucket and the CRL name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_dis_point: Option<String>,
}

/// An SCM time as the reference's examples show it: `"2021-05-27 16:46:25.0"` (UTC, one
/// fractional digit: tenths of a second).
pub fn scm_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let fmt = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    format!(
        "{}.{}",
        t.format(fmt).unwrap_or_default(),
        t.millisecond() / 100
    )
}

/// A time as PCA's epoch milliseconds (`not_before`, `not_after`, `create_time`, ...).
pub fn epoch_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// PCA epoch milliseconds as a time; `None` out of range.
pub fn from_epoch_ms(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// PEM text with `\n` line ends and a final newline (the form the records keep; responses
/// convert to `\r\n` where the reference's examples use it).
pub fn pem_lf(s: &str) -> String {
    let mut out = s.replace("\r\n", "\n");
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// A PCA id (`ca_id`, `certificate_id`): 36 characters, hexadecimal
/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn is_pca_id(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// An SCM certificate name on import (4.1.1.2): 3 to 63 characters, letters, digits,
/// underscores, hyphens and periods.
pub fn is_scm_name(name: &str) -> bool {
    (3..=63).contains(&name.chars().count())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scm_time_is_the_reference_form() {
        let t = OffsetDateTime::from_unix_timestamp(1_622_133_985).expect("time");
        assert_eq!(scm_time(t), "2021-05-27 16:46:25.0");
        let t = t + time::Duration::milliseconds(730);
        assert_eq!(scm_time(t), "2021-05-27 16:46:25.7");
    }

    #[test]
    fn epoch_ms_round_trips() {
        let t = from_epoch_ms(1_645_146_939_688).expect("ms");
        assert_eq!(epoch_ms(t), 1_645_146_939_688);
    }

    #[test]
    fn pem_lf_normalises() {
        assert_eq!(pem_lf("a\r\nb"), "a\nb\n");
        assert_eq!(pem_lf(""), "");
    }

    #[test]
    fn ids_and_names() {
        assert!(is_pca_id("66504812-fedc-414a-9b7c-4c1836398524"));
        assert!(!is_pca_id("66504812-fedc-414a-9b7c-4c183639852"));
        assert!(!is_pca_id("66504812xfedc-414a-9b7c-4c1836398524"));
        assert!(is_scm_name("www.example_com-1"));
        assert!(!is_scm_name("ab"));
        assert!(!is_scm_name("a b c"));
    }

    #[test]
    fn distinguished_name_reads_both_ou_spellings() {
        let a: DistinguishedName =
            serde_json::from_str(r#"{"common_name":"x","organization_unit":"dew"}"#)
                .expect("example spelling");
        let b: DistinguishedName =
            serde_json::from_str(r#"{"common_name":"x","organizational_unit":"dew"}"#)
                .expect("table spelling");
        assert_eq!(a, b);
        let out = serde_json::to_value(&a).expect("encode");
        assert_eq!(out["organizational_unit"], "dew");
        assert!(out.get("country").is_none());
    }
}
