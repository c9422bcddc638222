//! Pacing that keeps numbers alive. `spec.send.ratePerMinute` is a ceiling, never a target:
//! each gap between two sends is the rate's interval stretched by a random 5-60%, so sends
//! never come in a burst nor on a fixed beat, and no 60-second window holds more than the rate.
//! A daily cap and a daily window (in a time zone) hold messages back until they allow them.
//! Pure functions of the time they are given: tested on any clock.

use std::time::Duration;

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};
use rand::Rng;
use whatsapp_crds::SendSpec;

/// The wait after a send before the next one, at `rate_per_minute`.
pub fn next_gap(rate_per_minute: i32) -> Duration {
    gap_with(rate_per_minute, rand::rng().random_range(1.05..1.6))
}

fn gap_with(rate_per_minute: i32, stretch: f64) -> Duration {
    let interval = 60.0 / f64::from(rate_per_minute.max(1));
    Duration::from_secs_f64(interval * stretch)
}

/// The daily limits of a session's spec.
#[derive(Clone, Debug)]
pub struct Limits {
    daily_cap: Option<u64>,
    window: Option<(Time, Time)>,
    zone: TimeZone,
}

fn hh_mm(text: &str) -> Option<Time> {
    let (h, m) = text.split_once(':')?;
    Time::new(h.parse().ok()?, m.parse().ok()?, 0, 0).ok()
}

impl Limits {
    /// From the spec. A time zone this build does not know counts as UTC (and is said in the
    /// log by the caller through `zone_known`).
    pub fn of(spec: &SendSpec) -> Limits {
        let window = spec.window.as_ref();
        let zone = window.and_then(|w| TimeZone::get(&w.time_zone).ok()).unwrap_or(TimeZone::UTC);
        Limits {
            daily_cap: spec.daily_cap.map(|c| c.max(1) as u64),
            window: window.and_then(|w| Some((hh_mm(&w.start)?, hh_mm(&w.end)?))),
            zone,
        }
    }

    /// Whether the spec's time zone is one this build knows.
    pub fn zone_known(spec: &SendSpec) -> bool {
        spec.window.as_ref().is_none_or(|w| TimeZone::get(&w.time_zone).is_ok())
    }

    /// The day `at` falls on, in the limits' time zone, as YYYYMMDD: sends are counted per day.
    pub fn day(&self, at: Timestamp) -> u64 {
        let date = at.to_zoned(self.zone.clone()).date();
        date.year() as u64 * 10_000 + date.month() as u64 * 100 + date.day() as u64
    }

    /// The earliest moment at or after `now` when a send is allowed, given how many went out
    /// on `sent_day` (a `day()` value).
    pub fn opens_at(&self, now: Timestamp, sent_day: u64, sent: u64) -> Timestamp {
        let mut at = now.to_zoned(self.zone.clone());
        if let Some(cap) = self.daily_cap
            && sent_day == self.day(now)
            && sent >= cap
        {
            at = self.next_midnight(&at);
        }
        self.in_window(at).timestamp()
    }

    fn next_midnight(&self, at: &Zoned) -> Zoned {
        let tomorrow = at.date().checked_add(1.day()).unwrap_or(at.date());
        tomorrow.to_zoned(self.zone.clone()).unwrap_or_else(|_| at.clone())
    }

    /// `at` if the window is open then, else when it opens next.
    fn in_window(&self, at: Zoned) -> Zoned {
        let Some((start, end)) = self.window else { return at };
        let t = at.time();
        let open = if start < end { t >= start && t < end } else { t >= start || t < end };
        if open {
            return at;
        }
        let today = at.date().to_datetime(start).to_zoned(self.zone.clone()).unwrap_or_else(|_| at.clone());
        if today > at {
            today
        } else {
            let next = at.date().checked_add(1.day()).unwrap_or(at.date());
            next.to_datetime(start).to_zoned(self.zone.clone()).unwrap_or(today)
        }
    }
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

    fn limits(json: serde_json::Value) -> Limits {
        Limits::of(&serde_json::from_value(json).unwrap())
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn the_window_holds_messages_until_it_opens_in_its_time_zone() {
        // 08:00-20:00 in São Paulo (UTC-3).
        let l = limits(
            serde_json::json!({"window": {"start": "08:00", "end": "20:00", "timeZone": "America/Sao_Paulo"}}),
        );
        assert_eq!(
            l.opens_at(at("2026-12-02T12:00:00Z"), 0, 0),
            at("2026-12-02T12:00:00Z"),
            "09:00 local: open"
        );
        assert_eq!(
            l.opens_at(at("2026-12-02T10:30:00Z"), 0, 0),
            at("2026-12-02T11:00:00Z"),
            "07:30 local: at 08:00"
        );
        assert_eq!(
            l.opens_at(at("2026-12-02T23:00:00Z"), 0, 0),
            at("2026-12-03T11:00:00Z"),
            "20:00 local: tomorrow 08:00"
        );
        // Across midnight: 22:00-06:00 UTC.
        let night = limits(serde_json::json!({"window": {"start": "22:00", "end": "06:00"}}));
        assert_eq!(night.opens_at(at("2026-12-02T03:00:00Z"), 0, 0), at("2026-12-02T03:00:00Z"));
        assert_eq!(night.opens_at(at("2026-12-02T12:00:00Z"), 0, 0), at("2026-12-02T22:00:00Z"));
        // Nothing set: always now.
        assert_eq!(
            limits(serde_json::json!({})).opens_at(at("2026-12-02T03:00:00Z"), 0, 0),
            at("2026-12-02T03:00:00Z")
        );
    }

    #[test]
    fn the_daily_cap_holds_the_rest_until_the_next_day_of_the_window() {
        let l = limits(
            serde_json::json!({"dailyCap": 3, "window": {"start": "08:00", "end": "20:00", "timeZone": "America/Sao_Paulo"}}),
        );
        let noon = at("2026-12-02T15:00:00Z");
        let today = l.day(noon);
        assert_eq!(today, 20261202);
        assert_eq!(l.opens_at(noon, today, 2), noon, "under the cap");
        assert_eq!(l.opens_at(noon, today, 3), at("2026-12-03T11:00:00Z"), "capped: the next day's window");
        assert_eq!(l.opens_at(noon, today - 1, 3), noon, "yesterday's count does not hold today back");
        // The day is the window's: 23:30 UTC is still 20:30 of the 2nd in São Paulo.
        assert_eq!(l.day(at("2026-12-02T23:30:00Z")), 20261202);
        // Without a window the day is UTC's.
        let utc = limits(serde_json::json!({"dailyCap": 1}));
        assert_eq!(utc.opens_at(noon, utc.day(noon), 1), at("2026-12-03T00:00:00Z"));
    }

    #[test]
    fn an_unknown_time_zone_is_said_and_counts_as_utc() {
        let spec: SendSpec = serde_json::from_value(
            serde_json::json!({"window": {"start": "08:00", "end": "20:00", "timeZone": "Mars/Olympus"}}),
        )
        .unwrap();
        assert!(!Limits::zone_known(&spec));
        assert_eq!(Limits::of(&spec).opens_at(at("2026-12-02T07:00:00Z"), 0, 0), at("2026-12-02T08:00:00Z"));
    }
}
