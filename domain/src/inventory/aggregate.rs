//! The cqrs-es adapter: the only inventory code that knows the framework.

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};

use super::{InventoryCommand, InventoryError, InventoryEvent, InventoryState, decide, evolve};

/// An inventory item as a cqrs-es aggregate; its id is the SKU.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct InventoryItem(InventoryState);

impl InventoryItem {
    pub fn state(&self) -> &InventoryState {
        &self.0
    }
}

impl Aggregate for InventoryItem {
    /// Persisted in every event row. Never rename.
    const TYPE: &'static str = "inventory_item";
    type Command = InventoryCommand;
    type Event = InventoryEvent;
    type Error = InventoryError;
    type Services = ();

    async fn handle(
        &mut self,
        command: InventoryCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), InventoryError> {
        for event in decide(command, &self.0)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: InventoryEvent) {
        self.0 = evolve(std::mem::take(&mut self.0), event);
    }
}
