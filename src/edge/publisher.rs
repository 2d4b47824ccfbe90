//! The edge's own MQTT client: publishes what a connection's end calls for (its Will, its
//! `disconnected` status) into the broker, where every subscriber and the status pipeline
//! see it like any other message. It speaks MQTT 5, so that an MQTT 5 Will keeps its
//! properties (user properties, content type, payload format, expiry, response topic,
//! correlation data).

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming};
use rumqttc::Outgoing;
use tokio::task::JoinHandle;

use super::lifecycle::Publication;
use crate::endpoint::Endpoint;
use crate::mqtt_client::{drive, Polled};

/// A client of the broker used only by the edge.
pub struct Publisher {
    client: AsyncClient,
    /// Publishes handed to the client and not yet acknowledged by the broker (QoS 1/2), or
    /// not yet written (QoS 0).
    pending: Arc<AtomicI64>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Publisher {
    /// Connects to the broker's MQTT 5 listener at `endpoint` as `client_id` (reconnecting
    /// on its own).
    pub fn start(endpoint: &Endpoint, client_id: &str, max_packet: usize) -> Self {
        let options = crate::mqtt_client::publisher_options_v5(endpoint, client_id, max_packet);
        let (client, mut eventloop) = AsyncClient::new(options, 10_000);
        let pending = Arc::new(AtomicI64::new(0));
        let counter = pending.clone();
        let name = format!("{client_id} (edge publisher)");
        let task = tokio::spawn(async move {
            drive(&mut eventloop, &name, |polled| {
                std::future::ready(match polled {
                    Polled::Event(Event::Incoming(Incoming::PubAck(_) | Incoming::PubComp(_)))
                    | Polled::Event(Event::Outgoing(Outgoing::Publish(0))) => {
                        counter.fetch_sub(1, Ordering::Relaxed);
                        ControlFlow::Continue(())
                    }
                    Polled::Event(Event::Outgoing(Outgoing::Disconnect)) => ControlFlow::Break(()),
                    _ => ControlFlow::Continue(()),
                })
            })
            .await
        });
        Self {
            client,
            pending,
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    /// Queues one publication (waits only when the client's queue is full).
    pub async fn publish(&self, p: Publication) {
        let qos = match p.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        self.pending.fetch_add(1, Ordering::Relaxed);
        let sent = match p.properties {
            Some(props) => {
                let c = &self.client;
                c.publish_with_properties(p.topic, qos, p.retain, p.payload, *props)
                    .await
            }
            None => self.client.publish(p.topic, qos, p.retain, p.payload).await,
        };
        if let Err(error) = sent {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            tracing::error!(%error, "edge publisher: publication not queued");
        }
    }

    /// Waits until every queued publication is acknowledged (at most `wait`), then
    /// disconnects.
    pub(crate) async fn flush(&self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while self.pending.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = self.client.disconnect().await;
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
    }
}
