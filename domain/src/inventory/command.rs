use crate::Timestamp;
use crate::ids::OrderId;
use crate::money::{Money, Quantity};
use crate::text::{ItemName, Sku};

/// What can be asked of an inventory item.
#[derive(Debug, Clone, PartialEq)]
pub enum InventoryCommand {
    /// Start selling a SKU. `initial_stock` may be zero (announced but not yet delivered).
    Register {
        sku: Sku,
        name: ItemName,
        unit_price: Money,
        initial_stock: u32,
        at: Timestamp,
    },
    /// Goods arrived.
    Restock { quantity: Quantity, at: Timestamp },
    /// Hold `quantity` units for an order: all of them or none.
    Reserve {
        order_id: OrderId,
        quantity: Quantity,
        at: Timestamp,
    },
    /// Give an order's reservation back (the order was cancelled).
    Release { order_id: OrderId, at: Timestamp },
    /// The order shipped: its reserved units leave the warehouse.
    Commit { order_id: OrderId, at: Timestamp },
}
