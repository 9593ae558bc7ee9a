//! The one error of the notify room: a config problem naming its field. A leaf, so the
//! config, its templates and the sinks can all return it without importing each other.

/// A notify config problem, naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct NotifyError {
    /// e.g. `notify.webhooks[0].secretFile`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// A [`NotifyError`] for `field`.
pub(super) fn bad(field: impl Into<String>, message: impl Into<String>) -> NotifyError {
    NotifyError {
        field: field.into(),
        message: message.into(),
    }
}
