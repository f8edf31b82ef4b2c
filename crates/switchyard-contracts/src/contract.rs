//! [`Contract`]: a message that describes itself as JSON Schema.

use schemars::JsonSchema;
use serde_json::Value;
use switchyard_core::Message;

/// A [`Message`] that describes itself as JSON Schema: derive [`JsonSchema`] next to
/// `Serialize` / `Deserialize` and add an empty `impl Contract for T {}`. Opt-in, so messages
/// without a schema keep compiling.
///
/// The name is [`Message::type_name`] and the version [`Message::VERSION`] (default 1), the
/// same two values [`Message::to_envelope`] stamps on the envelope (`type_name`,
/// `type_version`) when the message is published.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use switchyard_contracts::{Contract, JsonSchema};
/// use switchyard_core::Message;
///
/// #[derive(Clone, Serialize, Deserialize, JsonSchema)]
/// struct UserCreated { id: u64, email: String }
/// impl Message for UserCreated { const TOPIC: &'static str = "users.created"; const VERSION: u32 = 2; }
/// impl Contract for UserCreated {}
///
/// let schema = UserCreated::schema();
/// assert_eq!(schema["properties"]["id"]["type"], "integer");
/// assert_eq!(UserCreated::contract_version(), 2);
/// ```
pub trait Contract: Message + JsonSchema {
    /// The JSON Schema (draft 2020-12) of the payload, nested types under `$defs`.
    fn schema() -> Value {
        schemars::schema_for!(Self).to_value()
    }

    /// The name the message is registered and carried under ([`Message::type_name`]).
    fn contract_name() -> &'static str {
        <Self as Message>::type_name()
    }

    /// The schema version ([`Message::VERSION`]).
    fn contract_version() -> u32 {
        Self::VERSION
    }
}
