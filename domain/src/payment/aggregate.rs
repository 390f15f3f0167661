//! The cqrs-es adapter: the only payment code that knows the framework.

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};

use super::{PaymentCommand, PaymentError, PaymentEvent, PaymentState, decide, evolve};

/// A payment as a cqrs-es aggregate; its id is the id of the order it pays for.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payment(PaymentState);

impl Payment {
    pub fn state(&self) -> &PaymentState {
        &self.0
    }
}

impl Aggregate for Payment {
    /// Persisted in every event row. Never rename.
    const TYPE: &'static str = "payment";
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Error = PaymentError;
    type Services = ();

    async fn handle(
        &mut self,
        command: PaymentCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), PaymentError> {
        for event in decide(command, &self.0)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: PaymentEvent) {
        self.0 = evolve(std::mem::take(&mut self.0), event);
    }
}
