//! The cqrs-es adapter: the only order code that knows the framework.

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};

use super::{OrderCommand, OrderError, OrderEvent, OrderState, decide, evolve};

/// An order as a cqrs-es aggregate; its id is the `OrderId`.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order(OrderState);

impl Order {
    pub fn state(&self) -> &OrderState {
        &self.0
    }
}

impl Aggregate for Order {
    /// Persisted in every event row. Never rename.
    const TYPE: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;
    type Services = ();

    async fn handle(
        &mut self,
        command: OrderCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), OrderError> {
        for event in decide(command, &self.0)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: OrderEvent) {
        self.0 = evolve(std::mem::take(&mut self.0), event);
    }
}
