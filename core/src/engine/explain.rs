//! Explanation keys: an explanation with its running clocks taken out, so a change of
//! reason can be told from a change of the clock.

/// The explanation with its running clocks taken out: every duration written the way the
/// engine writes them (humantime's `1m 3s 200ms`) becomes `…`.
///
/// While a playbook waits (recovering for `failback.after`, held by `minDwell`, a breach that
/// must last `for`, a stale signal) its explanation carries the time elapsed or left, so the
/// text changes every decision round. Comparing this key instead says whether the *reason*
/// changed, so the controller logs on a change of phase or reason, not of the clock.
pub fn explain_key(explain: &str) -> String {
    let mut out = String::with_capacity(explain.len());
    let mut i = 0;
    let mut prev: Option<char> = None;
    while let Some(c) = explain[i..].chars().next() {
        let starts_word = !prev.is_some_and(|p| p.is_alphanumeric() || p == '.' || p == '_');
        if c.is_ascii_digit()
            && starts_word
            && let Some(mut end) = duration_token_end(explain, i)
        {
            // A run of tokens (`1m 3s 200ms`) is one duration.
            while explain[end..].starts_with(' ') {
                match duration_token_end(explain, end + 1) {
                    Some(e) => end = e,
                    None => break,
                }
            }
            out.push('…');
            prev = explain[..end].chars().next_back();
            i = end;
            continue;
        }
        out.push(c);
        prev = Some(c);
        i += c.len_utf8();
    }
    out
}

/// The end of a humantime duration token (`200ms`, `3s`, `2days`) starting at `start`.
fn duration_token_end(s: &str, start: usize) -> Option<usize> {
    const UNITS: [&str; 13] = [
        "years", "year", "months", "month", "days", "day", "ms", "us", "µs", "ns", "h", "m", "s",
    ];
    let digits = s[start..].bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let rest = &s[start + digits..];
    UNITS.iter().find_map(|u| {
        let after = rest.strip_prefix(u)?;
        let boundary = !after.chars().next().is_some_and(char::is_alphanumeric);
        boundary.then_some(start + digits + u.len())
    })
}
