use std::any::Any;

/// A handler panicked; the panic message is kept as text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("handler panicked: {message}")]
pub struct PanicError {
    /// The panic message (`&str` or `String` payloads), or a placeholder for other payloads.
    pub message: String,
}

impl PanicError {
    /// Builds the error from a payload returned by `catch_unwind`.
    pub fn from_payload(payload: Box<dyn Any + Send>) -> Self {
        let message = switchyard_core::error::panic_text(&*payload)
            .unwrap_or("non-string panic payload")
            .to_owned();
        Self { message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_kinds() {
        assert_eq!(PanicError::from_payload(Box::new("a")).message, "a");
        assert_eq!(
            PanicError::from_payload(Box::new(String::from("b"))).message,
            "b"
        );
        assert_eq!(
            PanicError::from_payload(Box::new(7u8)).message,
            "non-string panic payload"
        );
    }
}
