//! When to renew: pure functions of a certificate's lifetime, the [`RenewPolicy`] and `now`, plus
//! the backoff after a failed renewal. Nothing here reads a clock, a file or a random source of
//! its own; callers pass `now`, a per-host jitter unit ([`jitter_unit`]) and an RNG.
//!
//! The renewal time is the configured point (`renew_before` or `renew_at_fraction`, default 2/3
//! of the lifetime as in cert-manager and step) moved *earlier* by a per-host, per-certificate
//! jitter, so that a fleet renewing the same certificate spreads out, and a restart does not
//! re-roll. An emergency floor makes a certificate with little life left renew at once.

use std::time::Duration;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// Renew at this fraction of the lifetime unless configured otherwise (cert-manager, step).
pub const DEFAULT_RENEW_AT_FRACTION: f64 = 2.0 / 3.0;
/// The jitter window as a fraction of the lifetime unless configured otherwise.
pub const DEFAULT_JITTER: f64 = 0.1;
/// The largest jitter fraction accepted by the configuration.
pub const MAX_JITTER: f64 = 0.5;
/// The default emergency floor is at most this fraction of the lifetime...
pub const DEFAULT_EMERGENCY_FRACTION: f64 = 0.1;
/// ... and at most this long.
pub const DEFAULT_EMERGENCY_MAX: Duration = Duration::from_secs(24 * 3600);

/// The configured renewal point, before jitter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RenewPoint {
    /// Renew when less than this much lifetime remains. If it is not shorter than the lifetime,
    /// [`DEFAULT_RENEW_AT_FRACTION`] applies instead (as cert-manager does), rather than renewing
    /// every freshly issued certificate at once.
    Before(Duration),
    /// Renew once this fraction (0 < f < 1) of the lifetime has passed.
    AtFraction(f64),
}

/// When a certificate is renewed.
#[derive(Clone, Debug, PartialEq)]
pub struct RenewPolicy {
    pub point: RenewPoint,
    /// The jitter window as a fraction of the lifetime, in `[0, MAX_JITTER]`; 0 disables jitter.
    pub jitter: f64,
    /// An upper bound on the jitter window.
    pub max_jitter: Option<Duration>,
    /// Renew at once, regardless of the schedule, when less than this much lifetime remains.
    /// `None`: the smallest of [`DEFAULT_EMERGENCY_MAX`], [`DEFAULT_EMERGENCY_FRACTION`] of the
    /// lifetime, and half of the lifetime left at the renewal point (so that the default floor
    /// is never reached before the ordinary renewal time).
    pub emergency_before: Option<Duration>,
}

impl Default for RenewPolicy {
    fn default() -> Self {
        Self {
            point: RenewPoint::AtFraction(DEFAULT_RENEW_AT_FRACTION),
            jitter: DEFAULT_JITTER,
            max_jitter: None,
            emergency_before: None,
        }
    }
}

/// A certificate's validity period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Lifetime {
    pub fn new(not_before: OffsetDateTime, not_after: OffsetDateTime) -> Self {
        Self {
            not_before,
            not_after,
        }
    }

    /// The total lifetime; zero for an inverted period.
    pub fn length(&self) -> time::Duration {
        (self.not_after - self.not_before).max(time::Duration::ZERO)
    }

    /// What is left at `now` (negative once expired).
    pub fn remaining(&self, now: OffsetDateTime) -> time::Duration {
        self.not_after - now
    }
}

/// Why a certificate is renewed now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RenewReason {
    /// The (jittered) renewal time has passed.
    Due,
    /// Less than the emergency floor is left: renew now, regardless of schedule.
    Emergency,
    /// The certificate has expired (or its period is empty).
    Expired,
}

impl RenewReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RenewReason::Due => "due",
            RenewReason::Emergency => "emergency",
            RenewReason::Expired => "expired",
        }
    }
}

/// What to do about a certificate now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Renew {
        reason: RenewReason,
    },
    /// Nothing to do before `until` (the renewal time, or the emergency time if earlier).
    Wait {
        until: OffsetDateTime,
    },
}

/// `d × f` for `f` in `[0, 1]`, saturating.
fn scale(d: time::Duration, f: f64) -> time::Duration {
    let f = if f.is_finite() {
        f.clamp(0.0, 1.0)
    } else {
        0.0
    };
    time::Duration::checked_seconds_f64(d.as_seconds_f64() * f).unwrap_or(d)
}

fn to_time(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

/// The configured renewal point, before jitter; always within the lifetime.
pub fn scheduled_time(lifetime: &Lifetime, policy: &RenewPolicy) -> OffsetDateTime {
    let length = lifetime.length();
    let at_fraction = |f: f64| lifetime.not_before + scale(length, f);
    match policy.point {
        RenewPoint::AtFraction(f) => at_fraction(f),
        RenewPoint::Before(before) => {
            let before = to_time(before);
            if before >= length {
                at_fraction(DEFAULT_RENEW_AT_FRACTION)
            } else {
                lifetime.not_after - before
            }
        }
    }
}

/// How much earlier than [`scheduled_time`] this host renews, for `unit` in `[0, 1)`: `unit`
/// times the jitter window, which is the smallest of `jitter` × lifetime, `max_jitter`, and half
/// of the time from `not_before` to the scheduled point (so a certificate is never renewed right
/// after it was issued).
pub fn jitter_amount(lifetime: &Lifetime, policy: &RenewPolicy, unit: f64) -> time::Duration {
    let length = lifetime.length();
    let scheduled = scheduled_time(lifetime, policy);
    let mut window = scale(length, policy.jitter.min(MAX_JITTER));
    if let Some(max) = policy.max_jitter {
        window = window.min(to_time(max));
    }
    window = window.min(scale(scheduled - lifetime.not_before, 0.5));
    scale(window, unit)
}

/// When this host renews: the scheduled point moved earlier by [`jitter_amount`]. Never later
/// than the scheduled point, never outside `[not_before, not_after]`.
pub fn renewal_time(lifetime: &Lifetime, policy: &RenewPolicy, unit: f64) -> OffsetDateTime {
    let t = scheduled_time(lifetime, policy) - jitter_amount(lifetime, policy, unit);
    t.clamp(
        lifetime.not_before,
        lifetime.not_after.max(lifetime.not_before),
    )
}

/// The emergency floor for this lifetime (see [`RenewPolicy::emergency_before`]).
pub fn emergency_floor(lifetime: &Lifetime, policy: &RenewPolicy) -> time::Duration {
    let length = lifetime.length();
    match policy.emergency_before {
        Some(d) => to_time(d).min(length),
        None => {
            let left_at_point = lifetime.not_after - scheduled_time(lifetime, policy);
            to_time(DEFAULT_EMERGENCY_MAX)
                .min(scale(length, DEFAULT_EMERGENCY_FRACTION))
                .min(scale(left_at_point, 0.5))
        }
    }
}

/// From this moment on, a renewal is an emergency.
pub fn emergency_time(lifetime: &Lifetime, policy: &RenewPolicy) -> OffsetDateTime {
    lifetime.not_after - emergency_floor(lifetime, policy)
}

/// What to do at `now` about a certificate with this lifetime.
pub fn decide(
    now: OffsetDateTime,
    lifetime: &Lifetime,
    policy: &RenewPolicy,
    unit: f64,
) -> Decision {
    let renew = |reason| Decision::Renew { reason };
    if now >= lifetime.not_after {
        return renew(RenewReason::Expired);
    }
    if lifetime.length() <= time::Duration::ZERO {
        return renew(RenewReason::Emergency);
    }
    let emergency_at = emergency_time(lifetime, policy);
    if now >= emergency_at {
        return renew(RenewReason::Emergency);
    }
    let at = renewal_time(lifetime, policy, unit);
    if now >= at {
        return renew(RenewReason::Due);
    }
    Decision::Wait {
        until: at.min(emergency_at),
    }
}

/// A stable number in `[0, 1)` for this host and certificate: the same across restarts and
/// releases (SHA-256, not `std`'s hasher), different between hosts.
pub fn jitter_unit(host_id: &str, certificate: &str) -> f64 {
    let mut h = Sha256::new();
    h.update(host_id.as_bytes());
    h.update([0u8]);
    h.update(certificate.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // The top 53 bits make an exactly representable f64 in [0, 1).
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// The upper bound of the delay after `failures` consecutive failures: `base × 2^(failures-1)`,
/// at most `max`; zero before any failure. Monotone in `failures`.
pub fn retry_cap(failures: u32, base: Duration, max: Duration) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let factor = 2u32.saturating_pow(failures - 1);
    base.saturating_mul(factor).min(max)
}

/// The delay before retrying after `failures` consecutive failures: uniform in
/// `[0, retry_cap(..)]` ("full jitter"), so failing hosts do not retry in lockstep.
pub fn retry_delay(
    failures: u32,
    base: Duration,
    max: Duration,
    rng: &mut impl rand::Rng,
) -> Duration {
    use rand::RngExt;
    let cap = retry_cap(failures, base, max);
    let cap_ns = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(0..=cap_ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    const DAY: Duration = Duration::from_secs(86400);
    const HOUR: Duration = Duration::from_secs(3600);

    fn ninety_days() -> Lifetime {
        let nb = datetime!(2026-01-01 00:00 UTC);
        Lifetime::new(nb, nb + time::Duration::days(90))
    }

    fn no_jitter(point: RenewPoint) -> RenewPolicy {
        RenewPolicy {
            point,
            jitter: 0.0,
            ..RenewPolicy::default()
        }
    }

    #[test]
    fn default_renews_at_two_thirds() {
        let l = ninety_days();
        let p = no_jitter(RenewPoint::AtFraction(DEFAULT_RENEW_AT_FRACTION));
        assert_eq!(renewal_time(&l, &p, 0.7), datetime!(2026-03-02 00:00 UTC));
        assert_eq!(
            decide(datetime!(2026-03-01 23:59 UTC), &l, &p, 0.0),
            Decision::Wait {
                until: datetime!(2026-03-02 00:00 UTC)
            }
        );
        assert_eq!(
            decide(datetime!(2026-03-02 00:00 UTC), &l, &p, 0.0),
            Decision::Renew {
                reason: RenewReason::Due
            }
        );
    }

    #[test]
    fn renew_before_counts_back_from_not_after() {
        let l = ninety_days();
        let p = no_jitter(RenewPoint::Before(30 * DAY));
        assert_eq!(scheduled_time(&l, &p), datetime!(2026-03-02 00:00 UTC));
        let p = no_jitter(RenewPoint::Before(7 * DAY));
        assert_eq!(scheduled_time(&l, &p), datetime!(2026-03-25 00:00 UTC));
    }

    #[test]
    fn renew_before_longer_than_lifetime_falls_back_to_two_thirds() {
        let l = ninety_days();
        let p = no_jitter(RenewPoint::Before(365 * DAY));
        assert_eq!(scheduled_time(&l, &p), datetime!(2026-03-02 00:00 UTC));
    }

    #[test]
    fn jitter_moves_earlier_within_its_window() {
        let l = ninety_days();
        let p = RenewPolicy::default(); // 2/3, jitter 10% = 9 days
        assert_eq!(renewal_time(&l, &p, 0.0), datetime!(2026-03-02 00:00 UTC));
        assert_eq!(renewal_time(&l, &p, 0.5), datetime!(2026-02-25 12:00 UTC));
        let capped = RenewPolicy {
            max_jitter: Some(DAY),
            ..RenewPolicy::default()
        };
        assert_eq!(
            renewal_time(&l, &capped, 0.5),
            datetime!(2026-03-01 12:00 UTC)
        );
    }

    #[test]
    fn jitter_never_takes_more_than_half_the_time_to_the_point() {
        let l = ninety_days();
        // Renew at 10% (day 9) with a 50% jitter window: the window shrinks to 4.5 days.
        let p = RenewPolicy {
            point: RenewPoint::AtFraction(0.1),
            jitter: 0.5,
            ..RenewPolicy::default()
        };
        let earliest = renewal_time(&l, &p, 0.999_999_999);
        assert!(earliest >= datetime!(2026-01-05 12:00 UTC), "{earliest}");
    }

    #[test]
    fn emergency_floor_default_and_configured() {
        let l = ninety_days();
        let p = RenewPolicy::default();
        // min(24h, 9d, half of 30d) = 24h
        assert_eq!(emergency_floor(&l, &p), time::Duration::hours(24));
        assert_eq!(
            decide(datetime!(2026-03-31 00:00 UTC), &l, &p, 0.3),
            Decision::Renew {
                reason: RenewReason::Emergency
            }
        );
        // A one-hour certificate: 10% = 6 minutes.
        let nb = datetime!(2026-01-01 00:00 UTC);
        let short = Lifetime::new(nb, nb + time::Duration::hours(1));
        assert_eq!(emergency_floor(&short, &p), time::Duration::minutes(6));
        let explicit = RenewPolicy {
            emergency_before: Some(3 * DAY),
            ..RenewPolicy::default()
        };
        assert_eq!(emergency_floor(&l, &explicit), time::Duration::days(3));
        // The default floor never overtakes a late renewal point.
        let late = no_jitter(RenewPoint::Before(12 * HOUR));
        assert_eq!(emergency_floor(&l, &late), time::Duration::hours(6));
    }

    #[test]
    fn expired_and_inverted() {
        let l = ninety_days();
        let p = RenewPolicy::default();
        assert_eq!(
            decide(l.not_after, &l, &p, 0.1),
            Decision::Renew {
                reason: RenewReason::Expired
            }
        );
        let inverted = Lifetime::new(l.not_after, l.not_before);
        assert_eq!(inverted.length(), time::Duration::ZERO);
        assert_eq!(
            decide(l.not_before - time::Duration::hours(1), &inverted, &p, 0.1),
            Decision::Renew {
                reason: RenewReason::Emergency
            }
        );
        assert_eq!(RenewReason::Expired.as_str(), "expired");
    }

    #[test]
    fn jitter_unit_is_stable_and_host_specific() {
        let a = jitter_unit("web-1", "api");
        assert_eq!(a, jitter_unit("web-1", "api"));
        assert_ne!(a, jitter_unit("web-2", "api"));
        assert_ne!(a, jitter_unit("web-1", "api2"));
        // "ab"+"c" must differ from "a"+"bc".
        assert_ne!(jitter_unit("ab", "c"), jitter_unit("a", "bc"));
        assert!((0.0..1.0).contains(&a));
    }

    #[test]
    fn jitter_spreads_a_fleet() {
        let l = ninety_days();
        let p = RenewPolicy::default();
        let window = jitter_amount(&l, &p, 1.0);
        assert_eq!(window, time::Duration::days(9));
        let mut buckets = [0u32; 10];
        let times: Vec<_> = (0..1000)
            .map(|i| {
                let u = jitter_unit(&format!("host-{i}"), "web");
                buckets[(u * 10.0) as usize] += 1;
                renewal_time(&l, &p, u)
            })
            .collect();
        // Roughly uniform: every tenth of the window holds 50..150 of 1000 hosts.
        assert!(
            buckets.iter().all(|&b| (50..150).contains(&b)),
            "{buckets:?}"
        );
        let (min, max) = (
            times.iter().min().copied().unwrap_or(l.not_before),
            times.iter().max().copied().unwrap_or(l.not_before),
        );
        assert!(max - min > scale(window, 0.95), "spread {}", max - min);
    }

    #[test]
    fn retry_delay_grows_and_caps() {
        let (base, max) = (Duration::from_secs(60), Duration::from_secs(3600));
        assert_eq!(retry_cap(0, base, max), Duration::ZERO);
        assert_eq!(retry_cap(1, base, max), base);
        assert_eq!(retry_cap(3, base, max), 4 * base);
        assert_eq!(retry_cap(7, base, max), max);
        assert_eq!(retry_cap(u32::MAX, base, max), max);
        let mut rng = rand::rng();
        let delays: Vec<_> = (0..200)
            .map(|_| retry_delay(10, base, max, &mut rng))
            .collect();
        assert!(delays.iter().all(|d| *d <= max));
        // Full jitter really varies.
        assert!(delays.iter().any(|d| *d < max / 2) && delays.iter().any(|d| *d > max / 2));
    }

    fn arb_lifetime() -> impl Strategy<Value = Lifetime> {
        // Certificates from one minute to 20 years, starting anywhere in ~30 years.
        (0i64..1_000_000_000, 60i64..631_152_000).prop_map(|(start, len)| {
            let nb = datetime!(2020-01-01 00:00 UTC) + time::Duration::seconds(start);
            Lifetime::new(nb, nb + time::Duration::seconds(len))
        })
    }

    fn arb_policy() -> impl Strategy<Value = RenewPolicy> {
        let point = prop_oneof![
            (0.01f64..0.99).prop_map(RenewPoint::AtFraction),
            (1u64..800_000_000).prop_map(|s| RenewPoint::Before(Duration::from_secs(s))),
        ];
        (
            point,
            0.0f64..=MAX_JITTER,
            proptest::option::of(1u64..100_000_000),
            proptest::option::of(1u64..100_000_000),
        )
            .prop_map(|(point, jitter, max_jitter, emergency)| RenewPolicy {
                point,
                jitter,
                max_jitter: max_jitter.map(Duration::from_secs),
                emergency_before: emergency.map(Duration::from_secs),
            })
    }

    proptest! {
        #[test]
        fn never_later_than_configured_and_within_lifetime(
            l in arb_lifetime(), p in arb_policy(), unit in 0.0f64..1.0
        ) {
            let scheduled = scheduled_time(&l, &p);
            let at = renewal_time(&l, &p, unit);
            prop_assert!(at <= scheduled);
            prop_assert!(l.not_before <= at && at <= l.not_after);
            prop_assert!(l.not_before <= scheduled && scheduled <= l.not_after);
            // Never in the first half of the way to the scheduled point.
            let half = l.not_before + (scheduled - l.not_before) / 2;
            prop_assert!(at >= half - time::Duration::milliseconds(1));
        }

        #[test]
        fn decide_is_consistent(
            l in arb_lifetime(), p in arb_policy(), unit in 0.0f64..1.0, offset in 0.0f64..1.2
        ) {
            let now = l.not_before + scale(l.length(), offset.min(1.0))
                + if offset > 1.0 { time::Duration::seconds(1) } else { time::Duration::ZERO };
            let floor = emergency_floor(&l, &p);
            match decide(now, &l, &p, unit) {
                Decision::Wait { until } => {
                    prop_assert!(until > now);
                    prop_assert!(until <= renewal_time(&l, &p, unit));
                    prop_assert!(l.remaining(now) > floor);
                    // At `until` the answer is to renew.
                    let is_renew = matches!(decide(until, &l, &p, unit), Decision::Renew { .. });
                    prop_assert!(is_renew);
                }
                Decision::Renew { reason: RenewReason::Expired } => prop_assert!(now >= l.not_after),
                Decision::Renew { reason: RenewReason::Emergency } => {
                    prop_assert!(now < l.not_after);
                    prop_assert!(l.remaining(now) <= floor);
                }
                Decision::Renew { reason: RenewReason::Due } => {
                    prop_assert!(now >= renewal_time(&l, &p, unit));
                    prop_assert!(l.remaining(now) > floor);
                }
            }
        }

        #[test]
        fn emergency_triggers_inside_the_floor(
            l in arb_lifetime(), p in arb_policy(), unit in 0.0f64..1.0, f in 0.0f64..1.0
        ) {
            let floor = emergency_floor(&l, &p);
            prop_assume!(floor > time::Duration::ZERO);
            let now = l.not_after - scale(floor, f);
            prop_assume!(now < l.not_after);
            prop_assert_eq!(
                decide(now, &l, &p, unit),
                Decision::Renew { reason: RenewReason::Emergency }
            );
        }

        #[test]
        fn retry_delay_is_bounded_and_cap_monotone(
            failures in 0u32..200, base_ms in 1u64..100_000, max_ms in 1u64..100_000_000, seed in any::<u64>()
        ) {
            use rand::SeedableRng;
            let (base, max) = (Duration::from_millis(base_ms), Duration::from_millis(max_ms));
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let cap = retry_cap(failures, base, max);
            prop_assert!(cap <= max);
            prop_assert!(retry_cap(failures + 1, base, max) >= cap);
            prop_assert!(retry_delay(failures, base, max, &mut rng) <= cap);
            // A larger ceiling never lowers the cap.
            prop_assert!(retry_cap(failures, base, max * 2) >= cap);
        }
    }
}
