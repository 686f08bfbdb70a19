//! `backfill.active_hours`: the times of day at which workers start batches, such as
//! `22:00-06:00` or `12:00-13:00, 20:00-24:00`. Pure: parsed and asked in seconds of the day,
//! the clock is read by the caller.

const DAY: u32 = 24 * 60 * 60;

/// One or more ranges of the day, each from its start (inclusive) to its end (exclusive),
/// wrapping past midnight when the end is earlier than the start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    ranges: Vec<(u32, u32)>,
}

/// An empty (or blank) setting: no window, batches start at any time.
pub fn parse(text: &str) -> Result<Option<Window>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let ranges = text
        .split(',')
        .map(|range| {
            let range = range.trim();
            let (start, end) = range
                .split_once('-')
                .ok_or_else(|| format!("\"{range}\" is not a range of the form HH:MM-HH:MM"))?;
            let (start, end) = (time_of_day(start.trim())?, time_of_day(end.trim())?);
            if start % DAY == end % DAY {
                return Err(format!(
                    "\"{range}\" starts where it ends; leave backfill.active_hours empty to run at any time"
                ));
            }
            Ok((start % DAY, end % DAY))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Some(Window { ranges }))
}

/// "HH:MM" (00:00 to 24:00) in seconds of the day.
fn time_of_day(text: &str) -> Result<u32, String> {
    let invalid = || format!("\"{text}\" is not a time of day HH:MM (00:00 to 24:00)");
    let (hours, minutes) = text.split_once(':').ok_or_else(invalid)?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(hours) || minutes.len() != 2 || !digits(minutes) {
        return Err(invalid());
    }
    let (hours, minutes): (u32, u32) = (
        hours.parse().map_err(|_| invalid())?,
        minutes.parse().map_err(|_| invalid())?,
    );
    if minutes > 59 || hours > 24 || (hours == 24 && minutes > 0) {
        return Err(invalid());
    }
    Ok(hours * 3600 + minutes * 60)
}

impl Window {
    /// None when `second` of the day is inside the window; otherwise how many seconds until it
    /// opens.
    pub fn closed_for(&self, second: u32) -> Option<u32> {
        let second = second % DAY;
        let inside = |&(start, end): &(u32, u32)| {
            if start < end {
                start <= second && second < end
            } else {
                second >= start || second < end
            }
        };
        if self.ranges.iter().any(inside) {
            return None;
        }
        self.ranges
            .iter()
            .map(|&(start, _)| (start + DAY - second) % DAY)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hours: u32, minutes: u32) -> u32 {
        hours * 3600 + minutes * 60
    }

    #[test]
    fn empty_means_always() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("  "), Ok(None));
    }

    #[test]
    fn a_window_past_midnight() {
        let w = parse("22:00-06:00").unwrap().unwrap();
        assert_eq!(w.closed_for(at(23, 0)), None);
        assert_eq!(w.closed_for(at(0, 0)), None);
        assert_eq!(w.closed_for(at(5, 59)), None);
        assert_eq!(w.closed_for(at(6, 0)), Some(at(16, 0)));
        assert_eq!(w.closed_for(at(21, 59) + 30), Some(30));
        assert_eq!(w.closed_for(at(22, 0)), None);
    }

    #[test]
    fn several_ranges_open_at_the_nearest() {
        let w = parse("12:00-13:00, 20:00-24:00").unwrap().unwrap();
        assert_eq!(w.closed_for(at(12, 30)), None);
        assert_eq!(w.closed_for(at(23, 59)), None);
        assert_eq!(w.closed_for(at(13, 0)), Some(at(7, 0)));
        assert_eq!(w.closed_for(at(1, 0)), Some(at(11, 0)));
        assert_eq!(w.closed_for(0), Some(at(12, 0)));
    }

    #[test]
    fn malformed_values_say_what_is_wrong() {
        for bad in [
            "22:00",
            "22-06",
            "25:00-01:00",
            "10:60-11:00",
            "24:01-01:00",
            "10:00-10:00",
            "00:00-24:00",
            "9:5-10:00",
            "10:00-11:00,",
            "a:bc-10:00",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
        assert!(parse("9:00-17:30").is_ok());
    }
}
