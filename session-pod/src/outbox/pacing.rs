//! Pacing that keeps numbers alive: `spec.send.ratePerMinute` is a ceiling, never a target.
//! Each gap between two sends is the rate's interval stretched by a random 5-60%, so sends
//! never come in a burst nor on a fixed beat, and no 60-second window ever holds more than
//! the rate.

use std::time::Duration;

use rand::Rng;

/// The wait after a send before the next one, at `rate_per_minute`.
pub fn next_gap(rate_per_minute: i32) -> Duration {
    gap_with(rate_per_minute, rand::rng().random_range(1.05..1.6))
}

fn gap_with(rate_per_minute: i32, stretch: f64) -> Duration {
    let interval = 60.0 / f64::from(rate_per_minute.max(1));
    Duration::from_secs_f64(interval * stretch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_random_and_never_shorter_than_the_rate_allows() {
        for rate in [1, 5, 20, 180] {
            let gaps: Vec<Duration> = (0..500).map(|_| next_gap(rate)).collect();
            let floor = Duration::from_secs_f64(60.0 / f64::from(rate));
            assert!(gaps.iter().all(|g| *g > floor && *g < floor * 2), "rate {rate}");
            // No 60 s window holds more than `rate` sends: the sum of any `rate` gaps exceeds 60 s.
            let window = gaps.windows(rate as usize).map(|w| w.iter().sum::<Duration>()).min().unwrap();
            assert!(window > Duration::from_secs(60), "rate {rate}: {window:?}");
            let distinct: std::collections::HashSet<_> = gaps.iter().map(|g| g.as_millis()).collect();
            assert!(distinct.len() > 10, "not a fixed beat");
        }
        assert_eq!(gap_with(0, 1.0), Duration::from_secs(60), "a nonsense rate still paces");
    }
}
