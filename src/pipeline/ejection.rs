//! Outlier ejection of one endpoint (Envoy's outlier detection, per endpoint): a state machine
//! with `now` passed in, like the breaker.
//!
//! - **Ready**: in the balancer's picks. `consecutive_failures` failed tries in a row eject it,
//!   if the set allows one more ejection (`max_ejected_percent`, decided by the caller).
//! - **Ejected** until a time: out of the picks. The first ejection lasts `base_ejection`,
//!   each re-ejection one `base_ejection` more, up to `max_ejection`, ± the jitter.
//! - **Probing**: the ejection ended and one try (the probe) was let through; nothing else is
//!   until it ends. A success re-admits the endpoint, a failure ejects it again for longer, a
//!   probe that ends without a verdict (the app went away) leaves the probe due at once.
//!
//! An endpoint that stayed ready for `max_ejection` after its re-admission starts its count
//! of ejections afresh.

use tokio::time::Instant;

use crate::policy::Outlier;

/// Where an endpoint is in its ejection cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ready,
    Ejected { until: Instant },
    Probing,
}

impl Health {
    /// `fusebox_endpoint_state`: 0 ready, 1 ejected, 2 probing.
    pub fn as_gauge(self) -> u8 {
        match self {
            Health::Ready => 0,
            Health::Ejected { .. } => 1,
            Health::Probing => 2,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Health::Ready => "ready",
            Health::Ejected { .. } => "ejected",
            Health::Probing => "probing",
        }
    }
}

/// A change of health the caller reports (metrics, logs) and mirrors for lock-free picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Ejected (again, when `times` > 1) until `until`.
    Ejected { until: Instant, times: u32 },
    /// The probe passed: ready again.
    Readmitted,
}

/// One endpoint's ejection state.
#[derive(Debug, Clone)]
pub struct Ejection {
    health: Health,
    consecutive: u32,
    /// Ejections since the count last started afresh.
    times: u32,
    readmitted_at: Option<Instant>,
}

impl Default for Ejection {
    fn default() -> Self {
        Ejection {
            health: Health::Ready,
            consecutive: 0,
            times: 0,
            readmitted_at: None,
        }
    }
}

impl Ejection {
    pub fn health(&self) -> Health {
        self.health
    }

    /// Ready, with no failure in a row and no re-admission to settle: a success would change
    /// nothing.
    pub fn is_clean(&self) -> bool {
        self.health == Health::Ready && self.consecutive == 0 && self.readmitted_at.is_none()
    }

    pub fn times_ejected(&self) -> u32 {
        self.times
    }

    /// Claims the probe of an endpoint whose ejection has ended: `true` for one caller only.
    pub fn claim_probe(&mut self, now: Instant) -> bool {
        match self.health {
            Health::Ejected { until } if until <= now => {
                self.health = Health::Probing;
                true
            }
            _ => false,
        }
    }

    /// A try succeeded (or a probe passed).
    pub fn succeeded(&mut self, now: Instant, config: &Outlier) -> Option<Change> {
        self.consecutive = 0;
        match self.health {
            Health::Probing => {
                self.health = Health::Ready;
                self.readmitted_at = Some(now);
                Some(Change::Readmitted)
            }
            Health::Ready => {
                let settled = self
                    .readmitted_at
                    .is_some_and(|at| now.saturating_duration_since(at) >= config.max_ejection);
                if settled {
                    self.times = 0;
                    self.readmitted_at = None;
                }
                None
            }
            Health::Ejected { .. } => None,
        }
    }

    /// A try failed through the endpoint's fault. `may_eject`: the set allows one more
    /// ejection; `jitter` in [-1, 1] spreads the ejection's length by up to ±10 %.
    pub fn failed(
        &mut self,
        now: Instant,
        config: &Outlier,
        may_eject: bool,
        jitter: f64,
    ) -> Option<Change> {
        match self.health {
            Health::Probing => Some(self.eject(now, config, jitter)),
            Health::Ready => {
                self.consecutive = self.consecutive.saturating_add(1);
                let over = self.consecutive >= config.consecutive_failures.max(1);
                (over && may_eject).then(|| self.eject(now, config, jitter))
            }
            Health::Ejected { .. } => None,
        }
    }

    /// The probe ended without a verdict: it is due again at once.
    pub fn probe_abandoned(&mut self, now: Instant) {
        if self.health == Health::Probing {
            self.health = Health::Ejected { until: now };
        }
    }

    fn eject(&mut self, now: Instant, config: &Outlier, jitter: f64) -> Change {
        self.times = self.times.saturating_add(1);
        self.consecutive = 0;
        let length = config
            .base_ejection
            .saturating_mul(self.times)
            .min(config.max_ejection);
        let length = length.mul_f64((1.0 + 0.1 * jitter.clamp(-1.0, 1.0)).max(0.0));
        let until = now + length;
        self.health = Health::Ejected { until };
        Change::Ejected {
            until,
            times: self.times,
        }
    }
}

/// How many of `len` endpoints may be ejected at once.
pub fn max_ejected(len: usize, percent: u8) -> usize {
    len * usize::from(percent.min(100)) / 100
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::policy::Outlier;

    fn config() -> Outlier {
        Outlier {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            ..Outlier::default()
        }
    }

    fn fail_n(e: &mut Ejection, now: Instant, n: u32) -> Option<Change> {
        (0..n).fold(None, |_, _| e.failed(now, &config(), true, 0.0))
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let now = Instant::now();
        let mut e = Ejection::default();
        assert_eq!(fail_n(&mut e, now, 2), None);
        e.succeeded(now, &config());
        assert_eq!(fail_n(&mut e, now, 2), None);
        let until = now + Duration::from_secs(10);
        assert_eq!(
            e.failed(now, &config(), true, 0.0),
            Some(Change::Ejected { until, times: 1 })
        );
        assert_eq!(e.health(), Health::Ejected { until });
    }

    #[test]
    fn a_full_set_does_not_eject() {
        let now = Instant::now();
        let mut e = Ejection::default();
        for _ in 0..10 {
            assert_eq!(e.failed(now, &config(), false, 0.0), None);
        }
        assert_eq!(e.health(), Health::Ready);
    }

    #[test]
    fn one_probe_after_the_ejection_readmits_or_ejects_for_longer_up_to_the_max() {
        let t0 = Instant::now();
        let mut e = Ejection::default();
        fail_n(&mut e, t0, 3);
        assert!(!e.claim_probe(t0 + Duration::from_secs(9)));
        let t1 = t0 + Duration::from_secs(10);
        assert!(e.claim_probe(t1));
        assert!(!e.claim_probe(t1), "a second probe while the first is out");
        assert_eq!(
            e.failed(t1, &config(), false, 0.0),
            Some(Change::Ejected {
                until: t1 + Duration::from_secs(20),
                times: 2
            })
        );
        let t2 = t1 + Duration::from_secs(20);
        assert!(e.claim_probe(t2));
        assert_eq!(
            e.failed(t2, &config(), true, 0.0),
            Some(Change::Ejected {
                until: t2 + Duration::from_secs(25),
                times: 3
            }),
            "capped at max_ejection"
        );
        let t3 = t2 + Duration::from_secs(25);
        assert!(e.claim_probe(t3));
        assert_eq!(e.succeeded(t3, &config()), Some(Change::Readmitted));
        assert_eq!(e.health(), Health::Ready);
        assert_eq!(e.times_ejected(), 3);
        e.succeeded(t3 + Duration::from_secs(25), &config());
        assert_eq!(
            e.times_ejected(),
            0,
            "ready for max_ejection: the count starts afresh"
        );
    }

    #[test]
    fn an_abandoned_probe_is_due_again_and_jitter_spreads_the_length() {
        let t0 = Instant::now();
        let mut e = Ejection::default();
        fail_n(&mut e, t0, 3);
        let t1 = t0 + Duration::from_secs(10);
        assert!(e.claim_probe(t1));
        e.probe_abandoned(t1);
        assert!(e.claim_probe(t1));
        let change = e.failed(t1, &config(), true, 1.0);
        assert_eq!(
            change,
            Some(Change::Ejected {
                until: t1 + Duration::from_secs(22),
                times: 2
            })
        );
    }

    #[test]
    fn the_share_that_may_be_ejected() {
        assert_eq!(max_ejected(1, 50), 0);
        assert_eq!(max_ejected(2, 50), 1);
        assert_eq!(max_ejected(10, 50), 5);
        assert_eq!(max_ejected(10, 100), 10);
    }
}
