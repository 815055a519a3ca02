//! Is the Kafka cluster answering? A metadata request with a deadline, for the API's
//! readiness probe (the API itself neither produces nor consumes).

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer};
use std::sync::Arc;
use std::time::Duration;

pub struct KafkaProbe {
    client: Arc<BaseProducer>,
}

impl KafkaProbe {
    pub fn new(brokers: &str) -> Result<Self, KafkaError> {
        let client: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()?;
        Ok(Self {
            client: Arc::new(client),
        })
    }

    /// The number of brokers in the cluster's metadata, or why it could not be had
    /// within `timeout`.
    pub async fn brokers(&self, timeout: Duration) -> Result<usize, String> {
        let client = self.client.clone();
        tokio::task::spawn_blocking(move || {
            client
                .client()
                .fetch_metadata(None, timeout)
                .map(|m| m.brokers().len())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }
}
