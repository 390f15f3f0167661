//! Identifier newtypes. Ids are UUIDs minted at the edge; the domain only parses them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// The underlying UUID, for adapters that store it natively.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;

            fn from_str(text: &str) -> Result<Self, InvalidId> {
                Uuid::try_parse(text).map(Self).map_err(|_| InvalidId {
                    kind: stringify!($name),
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Hyphenated lower case: the form stored as `aggregate_id`, so never change it.
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }
    };
}

uuid_id!(
    /// An order; also the id of the order's payment (one payment per order).
    OrderId
);
uuid_id!(
    /// A customer, owned by another service; we only ever receive it.
    CustomerId
);
uuid_id!(
    /// One refund of a payment, so that a retried refund is recognised and applied once.
    RefundId
);

/// A string that is not a UUID where one was required.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} must be a UUID such as 0f8fad5b-d9cb-469f-a165-70867728950e")]
pub struct InvalidId {
    /// Which id type was being parsed, so the message names it.
    pub kind: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_hyphenated_lower_case() {
        let order_id: OrderId = "0F8FAD5B-D9CB-469F-A165-70867728950E".parse().unwrap();
        assert_eq!(order_id.to_string(), "0f8fad5b-d9cb-469f-a165-70867728950e");
    }

    #[test]
    fn rejects_non_uuids() {
        assert_eq!(
            "42".parse::<CustomerId>(),
            Err(InvalidId { kind: "CustomerId" })
        );
    }
}
