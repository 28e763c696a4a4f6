//! When a failed delivery is tried again: exponential backoff with jitter, up to
//! `notifications.max_attempts` attempts in all.

use std::time::Duration;

use notifications_contract::NotificationsSettings;

/// The delivery worker's retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) max_attempts: u32,
    pub(crate) first_delay: Duration,
    pub(crate) max_delay: Duration,
}

/// What follows a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    /// Try again after this long.
    RetryIn(Duration),
    /// Every attempt is spent.
    GiveUp,
}

impl Backoff {
    pub(crate) fn from_settings(settings: &NotificationsSettings) -> Self {
        Self {
            max_attempts: settings.max_attempts.max(1),
            first_delay: settings.retry_delay,
            max_delay: settings.max_retry_delay.max(settings.retry_delay),
        }
    }

    /// The delay before attempt `attempts + 1` without jitter: `first_delay` after the
    /// first failure, doubling each time, at most `max_delay`.
    pub(crate) fn base_delay(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(31);
        self.first_delay
            .checked_mul(1_u32 << doublings)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// What follows the failure of attempt number `attempts` (1 for the first). `jitter`
    /// is in `[0, 1)`: the delay is between half the base delay and the whole of it, so
    /// that deliveries that failed together do not come back together.
    pub(crate) fn after_failure(&self, attempts: u32, jitter: f64) -> AfterFailure {
        if attempts >= self.max_attempts {
            return AfterFailure::GiveUp;
        }
        let base = self.base_delay(attempts);
        let jitter = jitter.clamp(0.0, 1.0);
        AfterFailure::RetryIn(base.mul_f64(0.5 + jitter / 2.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Backoff {
        Backoff {
            max_attempts: 8,
            first_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
        }
    }

    #[test]
    fn delays_double_up_to_the_maximum() {
        let policy = policy();
        let delays: Vec<u64> = (1..=7).map(|n| policy.base_delay(n).as_secs()).collect();
        assert_eq!(delays, vec![2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(policy.base_delay(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn jitter_keeps_the_delay_between_half_and_all_of_it() {
        let policy = policy();
        assert_eq!(
            policy.after_failure(3, 0.0),
            AfterFailure::RetryIn(Duration::from_secs(4))
        );
        assert_eq!(
            policy.after_failure(3, 1.0),
            AfterFailure::RetryIn(Duration::from_secs(8))
        );
        for _ in 0..100 {
            let AfterFailure::RetryIn(delay) = policy.after_failure(2, fastrand::f64()) else {
                panic!("retries");
            };
            assert!(delay >= Duration::from_secs(2) && delay <= Duration::from_secs(4));
        }
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let policy = policy();
        assert!(matches!(
            policy.after_failure(7, 0.5),
            AfterFailure::RetryIn(_)
        ));
        assert_eq!(policy.after_failure(8, 0.5), AfterFailure::GiveUp);
        let once = Backoff {
            max_attempts: 1,
            ..policy
        };
        assert_eq!(once.after_failure(1, 0.5), AfterFailure::GiveUp);
    }

    #[test]
    fn settings_make_the_policy() {
        let settings = NotificationsSettings::default();
        let policy = Backoff::from_settings(&settings);
        assert_eq!(policy.max_attempts, 8);
        assert_eq!(policy.first_delay, settings.retry_delay);
    }
}
