//! What makes a component's declarations invalid, and the checks that say so.

use switchyard::{Pattern, Topic};

/// A component declaration is not valid.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DeclarationError {
    /// A subscribe or publish pattern does not parse.
    #[error("component `{component}`: invalid pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// The component.
        component: String,
        /// The pattern.
        pattern: String,
        /// Why.
        reason: String,
    },
    /// A handler was registered for a pattern the component did not declare.
    #[error("component `{component}` registered a handler for undeclared pattern {pattern:?}")]
    UndeclaredSubscription {
        /// The component.
        component: String,
        /// The pattern.
        pattern: String,
    },
    /// The domain cannot be one topic segment (empty, a wildcard, a dot, a character topics
    /// do not allow): the component's implicit topics (`<domain>.status.update`,
    /// `<domain>.error`, ...) would not be topics.
    #[error("component `{component}`: domain {domain:?} is not one topic segment: {reason}")]
    InvalidDomain {
        /// The component.
        component: String,
        /// The domain.
        domain: String,
        /// Why.
        reason: String,
    },
    /// A declared subscription has no handler.
    #[error("component `{component}` declared {pattern:?} but registered no handler for it")]
    MissingHandler {
        /// The component.
        component: String,
        /// The pattern.
        pattern: String,
    },
}

pub(crate) fn parse_all(
    component: &str,
    patterns: &[String],
) -> Result<Vec<Pattern>, DeclarationError> {
    patterns
        .iter()
        .map(|p| {
            Pattern::new(p).map_err(|e| DeclarationError::InvalidPattern {
                component: component.to_owned(),
                pattern: p.clone(),
                reason: e.kind.reason().to_owned(),
            })
        })
        .collect()
}

/// Checks that `domain` is one topic segment.
pub(crate) fn check_domain(component: &str, domain: &str) -> Result<(), DeclarationError> {
    let reason = if domain.contains('.') {
        Some(
            "it contains '.' (a domain is one segment; name the component's topics with it)"
                .to_owned(),
        )
    } else {
        // A wildcard or a character topics refuse fails here, and so does "".
        Topic::new(domain).err().map(|e| e.kind.reason().to_owned())
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(DeclarationError::InvalidDomain {
            component: component.to_owned(),
            domain: domain.to_owned(),
            reason,
        }),
    }
}
