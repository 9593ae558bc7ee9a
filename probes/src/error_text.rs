//! Short, stable reasons for I/O and client errors, shared by every probe kind.
//!
//! A leaf module: it imports nothing from the rest of the crate, so the HTTP, TCP and
//! gRPC attempts and the load-time checks can all point down to it.

use std::error::Error;
use std::io;

/// Errors that mean this host ran out of something (file descriptors, buffers, memory,
/// ephemeral ports): the attempt did not really happen, so the target must not be
/// blamed for it.
pub(crate) fn is_local_exhaustion(e: &io::Error) -> bool {
    if matches!(
        e.kind(),
        io::ErrorKind::OutOfMemory | io::ErrorKind::AddrNotAvailable
    ) {
        return true;
    }
    // ENFILE and EMFILE have these values on Linux, macOS and the BSDs; ENOBUFS differs.
    #[cfg(unix)]
    {
        const ENFILE: i32 = 23;
        const EMFILE: i32 = 24;
        #[cfg(target_os = "linux")]
        const ENOBUFS: i32 = 105;
        #[cfg(not(target_os = "linux"))]
        const ENOBUFS: i32 = 55;
        matches!(e.raw_os_error(), Some(ENFILE | EMFILE | ENOBUFS))
    }
    #[cfg(not(unix))]
    false
}

/// The first `io::Error` in an error's source chain, if any.
pub(crate) fn io_cause<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a io::Error> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        current = err.source();
    }
    None
}

/// A short reason for a reqwest error. Its own `Display` is "error sending request for
/// url (...)", which hides the cause, so use the I/O cause or the innermost source.
pub(crate) fn describe(e: &(dyn Error + 'static)) -> String {
    if let Some(io) = io_cause(e) {
        return describe_io(io);
    }
    let mut innermost = e;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    innermost.to_string()
}

/// "Connection refused (os error 111)" → "connection refused".
pub(crate) fn describe_io(e: &io::Error) -> String {
    let text = e.to_string();
    match (e.raw_os_error(), text.rfind(" (os error ")) {
        (Some(_), Some(at)) => text[..at].to_lowercase(),
        _ => text,
    }
}
