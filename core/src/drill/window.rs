//! When a drill may run: allowed windows, blocked dates and the next scheduled time. Pure
//! functions of the drill and `now`, so they are tested with fixed instants.

use chrono::{DateTime, Datelike, Utc};
use jiff::Timestamp;

use super::spec::{LoadedDrill, TimeWindow};

fn to_chrono(t: Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.as_second(), u32::try_from(t.subsec_nanosecond()).ok()?)
}

fn to_jiff(t: DateTime<Utc>) -> Option<Timestamp> {
    Timestamp::new(
        t.timestamp(),
        i32::try_from(t.timestamp_subsec_nanos()).ok()?,
    )
    .ok()
}

fn window_allows(w: &TimeWindow, local: &chrono::NaiveDateTime) -> bool {
    let t = local.time();
    let day = local.weekday();
    let day_ok = |d: chrono::Weekday| w.days.is_empty() || w.days.contains(&d);
    if w.start < w.end {
        day_ok(day) && t >= w.start && t < w.end
    } else {
        // Crosses midnight: the part after midnight belongs to the previous day's window.
        (t >= w.start && day_ok(day)) || (t < w.end && day_ok(day.pred()))
    }
}

/// Why the drill may not run at `now` (None: it may). Blocked dates are checked first: a
/// blocked date wins over any window.
pub fn gate(d: &LoadedDrill, now: Timestamp) -> Option<String> {
    let Some(utc) = to_chrono(now) else {
        return Some("the clock is out of range".into());
    };
    let local = utc.with_timezone(&d.tz).naive_local();
    if d.blocked.contains(&local.date()) {
        return Some(format!(
            "{} is a blocked date in {}",
            local.date(),
            d.drill.spec.time_zone.value
        ));
    }
    if !d.windows.is_empty() && !d.windows.iter().any(|w| window_allows(w, &local)) {
        return Some(format!(
            "{} {} ({}) is outside every allowed window",
            local.weekday(),
            local.format("%Y-%m-%d %H:%M"),
            d.drill.spec.time_zone.value
        ));
    }
    None
}

/// The next time the schedule fires strictly after `now`, computed in the drill's time zone
/// (so daylight-saving changes move it correctly). None without a schedule.
pub fn next_run(d: &LoadedDrill, now: Timestamp) -> Option<Timestamp> {
    let cron = d.schedule.as_ref()?;
    let local = to_chrono(now)?.with_timezone(&d.tz);
    let next = cron.find_next_occurrence(&local, false).ok()?;
    to_jiff(next.with_timezone(&Utc))
}
