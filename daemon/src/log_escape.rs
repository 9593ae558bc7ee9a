//! Text logs that cannot be forged: control characters inside a log line are escaped.
//!
//! tracing-subscriber's text format prints `%` fields and messages as they are, so a
//! `reason` holding a newline would start a forged line in the log. Each event reaches the
//! writer as one formatted line (one `write` call ending in a newline); [`Escaping`] writes
//! it with every control character but that final newline (and tabs) escaped as `\n`,
//! `\r`, `\u{1b}`, ... — and keeps ESC only when colours are on (a terminal). The JSON
//! format escapes on its own.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// A [`MakeWriter`] for stderr that escapes control characters (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct Escaping {
    /// Keep ESC (colour codes from the formatter).
    pub ansi: bool,
}

/// The writer [`Escaping`] makes.
#[derive(Debug)]
pub struct EscapingWriter<W: Write> {
    inner: W,
    ansi: bool,
}

impl<'a> MakeWriter<'a> for Escaping {
    type Writer = EscapingWriter<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        EscapingWriter {
            inner: io::stderr(),
            ansi: self.ansi,
        }
    }
}

/// `line` with control characters escaped, except a final newline, tabs, and (with
/// `ansi`) ESC.
pub fn escape_line(line: &str, ansi: bool) -> String {
    let (body, nl) = match line.strip_suffix('\n') {
        Some(b) => (b, "\n"),
        None => (line, ""),
    };
    let mut out = String::with_capacity(line.len() + 8);
    for c in body.chars() {
        if c.is_control() && c != '\t' && !(ansi && c == '\u{1b}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push_str(nl);
    out
}

impl<W: Write> Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.inner
            .write_all(escape_line(&text, self.ansi).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Ensures a forged line break, carriage return and escape inside a line are escaped, and
    /// the line's own newline is kept.
    #[test]
    fn escapes_inside_the_line_only() {
        let got = escape_line(
            "INFO freeze: reason=INC-1\nINFO forged\r\u{1b}[2J\tend\n",
            false,
        );
        assert_eq!(
            got,
            "INFO freeze: reason=INC-1\\nINFO forged\\r\\u{1b}[2J\tend\n"
        );
        assert_eq!(got.matches('\n').count(), 1);
        assert_eq!(escape_line("a\u{1b}[1mb\n", true), "a\u{1b}[1mb\n");
    }

    /// Ensures the real formatter through the escaping writer gives one line per event even
    /// when a field and the message carry newlines.
    #[test]
    fn formatter_output_stays_one_line() {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || EscapingWriter {
                inner: sink.clone(),
                ansi: false,
            })
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let reason = "INC-1\n2026-01-01T00:00:00Z  INFO failoverd: forged";
            tracing::info!(reason = %reason, "freeze: {}", reason);
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("INC-1\\n2026"), "{text}");
    }
}
