//! PCA v1: private certificate authorities ([`ca`]) and private certificates ([`cert`]).
//! Types used by both live here. Serde names match the API reference exactly; unknown fields
//! are ignored and nulls tolerated on everything the service sends.

pub mod ca;
pub mod cert;

use serde::{Deserialize, Serialize};

/// A certificate subject (`DistinguishedName` in the reference).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistinguishedName {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// The reference's create-CA example spells it `organization_unit`; accepted as an alias.
    #[serde(
        default,
        alias = "organization_unit",
        skip_serializing_if = "Option::is_none"
    )]
    pub organizational_unit: Option<String>,
}

/// A validity period (`Validity` in the reference): `value` units of `type`, optionally starting
/// at `start_from` (epoch milliseconds, not earlier than now minus 5 minutes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validity {
    /// `YEAR` (12 months), `MONTH` (31 days), `DAY`, `HOUR`.
    #[serde(rename = "type")]
    pub kind: String,
    pub value: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_from: Option<i64>,
}

impl Validity {
    pub fn days(value: i64) -> Self {
        Self {
            kind: "DAY".into(),
            value,
            start_from: None,
        }
    }

    pub fn hours(value: i64) -> Self {
        Self {
            kind: "HOUR".into(),
            value,
            start_from: None,
        }
    }

    pub fn years(value: i64) -> Self {
        Self {
            kind: "YEAR".into(),
            value,
            start_from: None,
        }
    }
}

/// CRL settings of a CA (`CrlConfiguration` in the reference).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrlConfiguration {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obs_bucket_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_days: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_dis_point: Option<String>,
}
