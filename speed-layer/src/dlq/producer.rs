//! Producing dead letters: never dropped. A full producer queue makes the consumer wait (the
//! queue drains as the broker confirms); a delivery that fails (a slow or restarting broker)
//! is sent again with backoff, and the flush that covers its offset waits for it; a record too
//! large for the broker is truncated, with headers saying so. Only once every dead letter of a
//! flush is confirmed does the flush move the offsets past them.

use std::collections::VecDeque;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tokio::sync::watch;
use tributary_shared::event::EventError;

/// A payload this long or longer is truncated to it (librdkafka's default `message.max.bytes`
/// is 1,000,000 for the whole record: headers and key need room too).
pub const MAX_PAYLOAD: usize = 900_000;

/// One dead letter, kept until the broker confirms it (so it can be sent again).
struct Letter {
    partition: i32,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    delivery: Option<DeliveryFuture>,
}

/// The shutdown signal came while dead letters were still unconfirmed.
#[derive(Debug, thiserror::Error)]
#[error("stopped with {0} dead letter(s) unconfirmed by the broker")]
pub struct Interrupted(pub usize);

/// The dead-letter producer of one consumer.
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    /// Partitions of the dead-letter topic (a record keeps its source partition when it can).
    partitions: i32,
    letters: VecDeque<Letter>,
    origin_topic: String,
}

impl DeadLetters {
    pub fn new(producer: FutureProducer, origin_topic: &str, dlq_partitions: i32) -> Self {
        DeadLetters {
            producer,
            topic: format!("{origin_topic}.dlq"),
            partitions: dlq_partitions.max(1),
            letters: VecDeque::new(),
            origin_topic: origin_topic.to_string(),
        }
    }

    /// The dead-letter topic grew (or was found larger).
    pub fn set_partitions(&mut self, n: i32) {
        self.partitions = n.max(1);
    }

    /// Dead letters not yet confirmed.
    pub fn pending(&self) -> usize {
        self.letters.len()
    }

    /// Queues a dead letter; waits (back-pressure) while the producer's queue is full.
    pub async fn send(
        &mut self,
        partition: i32,
        offset: i64,
        payload: &[u8],
        key: Option<&[u8]>,
        err: &EventError,
    ) {
        let mut headers = vec![
            ("tributary.error", err.to_string()),
            ("tributary.error_code", err.code().to_string()),
            (
                "tributary.source",
                format!("{}/{partition}/{offset}", self.origin_topic),
            ),
        ];
        let mut payload = payload.to_vec();
        if payload.len() > MAX_PAYLOAD {
            headers.push(("tributary.truncated", payload.len().to_string()));
            payload.truncate(MAX_PAYLOAD);
        }
        let mut letter = Letter {
            partition,
            key: key.map(<[u8]>::to_vec),
            payload,
            headers,
            delivery: None,
        };
        self.enqueue(&mut letter).await;
        self.letters.push_back(letter);
    }

    /// Hands a letter to the producer, waiting for room in its queue as long as it takes
    /// (librdkafka frees room as the broker confirms what it holds).
    async fn enqueue(&self, letter: &mut Letter) {
        let mut waited = 0u32;
        loop {
            match self.try_enqueue(letter) {
                Ok(d) => {
                    letter.delivery = Some(d);
                    return;
                }
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    waited += 1;
                    if waited.is_multiple_of(500) {
                        tracing::warn!(
                            pending = self.letters.len(),
                            "dead-letter producer queue full: waiting for the broker"
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
                    shrink(letter);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dead-letter produce refused; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    fn try_enqueue(&self, letter: &Letter) -> Result<DeliveryFuture, KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(letter.headers.len());
        for (k, v) in &letter.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_str()),
            });
        }
        // Same partition as the source while the DLQ has it (it follows the topic's count).
        let partition = letter.partition.rem_euclid(self.partitions);
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic)
            .payload(&letter.payload)
            .headers(headers)
            .partition(partition);
        if let Some(k) = &letter.key {
            record = record.key(k.as_slice());
        }
        self.producer.send_result(record).map_err(|(e, _)| e)
    }

    /// Waits until the broker has confirmed every dead letter sent so far, sending failed ones
    /// again with backoff. Returns early only when `shutdown` turns true.
    pub async fn confirm(&mut self, shutdown: &watch::Receiver<bool>) -> Result<(), Interrupted> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut failed = VecDeque::new();
            while let Some(mut letter) = self.letters.pop_front() {
                let Some(delivery) = letter.delivery.take() else {
                    failed.push_back(letter);
                    continue;
                };
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => {
                        if matches!(
                            e,
                            KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
                        ) {
                            shrink(&mut letter);
                        }
                        tracing::warn!(error = %e, "dead-letter delivery failed; it will be sent again");
                        failed.push_back(letter);
                    }
                    Err(_) => failed.push_back(letter),
                }
            }
            if failed.is_empty() {
                return Ok(());
            }
            if *shutdown.borrow() {
                let n = failed.len();
                self.letters = failed;
                return Err(Interrupted(n));
            }
            tracing::warn!(
                pending = failed.len(),
                retry_in = ?backoff,
                "dead letters not confirmed by the broker; sending them again"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            for letter in failed.iter_mut() {
                self.enqueue(letter).await;
            }
            self.letters = failed;
        }
    }
}

/// Makes a letter fit: half its payload, with the original size in a header.
fn shrink(letter: &mut Letter) {
    if !letter
        .headers
        .iter()
        .any(|(k, _)| *k == "tributary.truncated")
    {
        letter
            .headers
            .push(("tributary.truncated", letter.payload.len().to_string()));
    }
    let keep = (letter.payload.len() / 2).max(1);
    letter.payload.truncate(keep);
    tracing::warn!(
        bytes = keep,
        "dead letter too large for the broker: truncated (header tributary.truncated)"
    );
}
