//! In-process [`Bus`]: a tokio broadcast channel.
//!
//! Why broadcast: publishers never wait, and a lagging subscriber is told how many events it
//! lost instead of slowing everyone down, which is exactly the bus contract (at-most-once;
//! `sync` makes delivery whole).

use super::{Bus, BusEvent};
use crate::error::Result;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::broadcast;

/// See the module docs.
pub struct LocalBus {
    sender: broadcast::Sender<BusEvent>,
}

impl LocalBus {
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        LocalBus { sender }
    }
}

impl Bus for LocalBus {
    fn describe(&self) -> String {
        "local (in-process broadcast)".into()
    }

    fn publish(&self, event: BusEvent) -> Result<()> {
        // No subscriber (e.g. `admin` with no node in this process) is not an error.
        let _ = self.sender.send(event);
        Ok(())
    }

    fn subscribe(&self) -> BoxStream<'static, BusEvent> {
        let rx = self.sender.subscribe();
        futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => return Some((ev, rx)),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(lost = n, "bus subscriber lagged; clients recover through sync");
                        metrics::counter!("coolchat_bus_lost_events_total").increment(n);
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Address;

    #[tokio::test]
    async fn subscribers_see_events_published_after_subscribing() {
        let bus = LocalBus::new(16);
        let mut a = bus.subscribe();
        let ev = BusEvent::Typing {
            room_id: "r".into(),
            address: Address::from_bytes([1; 20]),
            active: true,
        };
        bus.publish(ev.clone()).unwrap();
        assert_eq!(a.next().await, Some(ev));
    }

    #[tokio::test]
    async fn lagging_subscriber_skips_instead_of_blocking() {
        let bus = LocalBus::new(2);
        let mut a = bus.subscribe();
        for i in 0..5 {
            bus.publish(BusEvent::Read {
                room_id: "r".into(),
                address: Address::from_bytes([1; 20]),
                seq: i,
            })
            .unwrap();
        }
        match a.next().await {
            Some(BusEvent::Read { seq, .. }) => assert_eq!(seq, 3),
            other => panic!("unexpected {other:?}"),
        }
    }
}
