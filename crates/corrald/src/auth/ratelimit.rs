//! Failed-login throttling: after [`MAX_FAILURES`] failures within [`WINDOW`] from one
//! address, or against one user name, further attempts are refused (429) until the
//! oldest failure ages out — whether or not the next guess would be right, so guessing
//! cannot go faster than that.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MAX_FAILURES: usize = 5;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Keys tracked at most; past it, stale ones are dropped first (memory stays bounded
/// when an attacker cycles through user names).
const MAX_KEYS: usize = 10_000;

#[derive(Default)]
pub struct FailureLimiter {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl FailureLimiter {
    /// How long until `keys` may try again, if any of them is over the limit.
    pub fn blocked(&self, keys: &[String], now: Instant) -> Option<Duration> {
        let mut map = self.lock();
        keys.iter()
            .filter_map(|k| {
                let q = map.get_mut(k)?;
                forget_old(q, now);
                (q.len() >= MAX_FAILURES).then(|| WINDOW - now.duration_since(q[0]))
            })
            .max()
    }

    pub fn record_failure(&self, keys: &[String], now: Instant) {
        let mut map = self.lock();
        if map.len() >= MAX_KEYS {
            map.retain(|_, q| {
                forget_old(q, now);
                !q.is_empty()
            });
        }
        for k in keys {
            if map.len() >= MAX_KEYS && !map.contains_key(k) {
                continue;
            }
            let q = map.entry(k.clone()).or_default();
            forget_old(q, now);
            q.push_back(now);
        }
    }

    pub fn record_success(&self, keys: &[String]) {
        let mut map = self.lock();
        for k in keys {
            map.remove(k);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Instant>>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn forget_old(q: &mut VecDeque<Instant>, now: Instant) {
    while q.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
        q.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_and_frees_with_time() {
        let l = FailureLimiter::default();
        let keys = ["ip:1.2.3.4".to_string(), "user:alice".to_string()];
        let t0 = Instant::now();
        for i in 0..MAX_FAILURES {
            assert_eq!(l.blocked(&keys, t0), None, "attempt {i}");
            l.record_failure(&keys, t0);
        }
        let wait = l.blocked(&keys[1..], t0 + Duration::from_secs(10));
        assert_eq!(wait, Some(WINDOW - Duration::from_secs(10)));
        assert_eq!(l.blocked(&keys, t0 + WINDOW), None);
        l.record_failure(&keys, t0);
        l.record_success(&keys);
        assert_eq!(l.blocked(&keys, t0), None);
    }
}
