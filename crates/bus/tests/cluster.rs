//! The bus against the stack's Kafka-protocol broker (`scripts/stack`):
//! topics are created as the layout says, a request for more partitions
//! never stops a service, and passed-through librdkafka properties reach
//! the clients.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    producer::FutureRecord,
};
use turnstile_bus::{KafkaConnection, ProducerTuning, TopicLayout, ensure_topics, producer, properties_from_env};

fn kafka() -> KafkaConnection {
    KafkaConnection::new(std::env::var("TURNSTILE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned()))
}

fn unique(name: &str) -> String {
    format!("bus-{name}-{}", uuid::Uuid::new_v4().simple())
}

fn partitions_of(kafka: &KafkaConnection, topic: &str) -> usize {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .create()
        .unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    metadata.topics()[0].partitions().len()
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_are_created_as_laid_out_and_a_topic_short_of_partitions_still_starts() {
    let kafka = kafka();
    let topic = unique("grow");
    ensure_topics(&kafka, &[&topic], &TopicLayout::single_broker(2))
        .await
        .unwrap();
    assert_eq!(partitions_of(&kafka, &topic), 2);
    // Asking again for the same is a no-op. Asking for more asks the broker
    // to add them; tansu 0.6 cannot (CreatePartitions is unsupported), and
    // the topic then keeps its partitions without stopping the service.
    ensure_topics(&kafka, &[&topic], &TopicLayout::single_broker(2))
        .await
        .unwrap();
    ensure_topics(&kafka, &[&topic], &TopicLayout::single_broker(5))
        .await
        .unwrap();
    let after = partitions_of(&kafka, &topic);
    assert!(after == 2 || after == 5, "{after} partitions");
    // Fewer than the topic has: it keeps what it has.
    ensure_topics(&kafka, &[&topic], &TopicLayout::single_broker(1))
        .await
        .unwrap();
    assert_eq!(partitions_of(&kafka, &topic), after);
}

#[tokio::test(flavor = "multi_thread")]
async fn passed_through_properties_reach_the_clients() {
    let topic = unique("props");
    ensure_topics(&kafka(), &[&topic], &TopicLayout::single_broker(1))
        .await
        .unwrap();
    let tuning = ProducerTuning {
        delivery_timeout: Duration::from_secs(3),
        ..ProducerTuning::default()
    };
    let send = |kafka: KafkaConnection| {
        let topic = topic.clone();
        let tuning = tuning.clone();
        async move {
            let producer = producer(&kafka, &tuning).unwrap();
            producer
                .send(
                    FutureRecord::<str, str>::to(&topic).key("k").payload("v"),
                    Duration::ZERO,
                )
                .await
                .map(|_| ())
        }
    };
    // As the environment would set them: the broker speaks plaintext, so a
    // client told to use TLS cannot deliver, which shows the property took.
    let tls = properties_from_env([("TURNSTILE_KAFKA_SECURITY_PROTOCOL".to_owned(), "ssl".to_owned())]);
    assert_eq!(tls, vec![("security.protocol".to_owned(), "ssl".to_owned())]);
    assert!(send(kafka().with_properties(tls)).await.is_err());
    // And a harmless one leaves delivery working.
    let harmless = properties_from_env([("TURNSTILE_KAFKA_CLIENT_ID".to_owned(), "turnstile-test".to_owned())]);
    send(kafka().with_properties(harmless)).await.unwrap();
}
