// Package kafka wires waybill to Apache Kafka through watermill-kafka and
// sarama: the connection settings (Config), a subscriber and a publisher
// built the way waybill needs them, the marshaler that keys every output by
// order id, the record's position for the Handler (Position), and the
// DelayRunner that brings parked events back when they are due.
//
// cmd/waybill and programs that run the Handler over Kafka import it; the
// root package never does, so a Handler on another Pub/Sub carries no Kafka
// client. It does not import the Handler either.
package kafka

import (
	"fmt"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wmkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
)

// Config holds what waybill needs to reach a Kafka cluster.
type Config struct {
	// Brokers to bootstrap from. Required.
	Brokers []string
	// ConsumerGroup for the subscriber. "" means "waybill".
	ConsumerGroup string
	// Version of the Kafka protocol. Zero means 4.0: Kafka 4.0 removed the
	// old protocol versions that sarama's default (2.1) uses for consumer
	// groups, so it must be set explicitly.
	Version sarama.KafkaVersion
	// ClientID names the connections in broker logs. "" means "waybill".
	ClientID string
	// NackResendSleep is how long a nacked message waits before redelivery.
	// Zero means 1 s: waybill nacks only when it cannot publish or is
	// shutting down, and redelivering at watermill's 100 ms would spin.
	NackResendSleep time.Duration
}

// SaramaConfig returns the sarama configuration every waybill client
// starts from: c's version and client id on sarama's defaults.
func (c Config) SaramaConfig() *sarama.Config {
	sc := sarama.NewConfig()
	sc.Version = sarama.V4_0_0_0
	if c.Version != (sarama.KafkaVersion{}) {
		sc.Version = c.Version
	}
	sc.ClientID = "waybill"
	if c.ClientID != "" {
		sc.ClientID = c.ClientID
	}
	return sc
}

// NewSubscriber returns a consumer-group subscriber that starts a new
// group at the oldest offset, so that events published before waybill first
// ran are traced too.
func NewSubscriber(c Config, logger watermill.LoggerAdapter) (*wmkafka.Subscriber, error) {
	sc := c.SaramaConfig()
	sc.Consumer.Return.Errors = true
	sc.Consumer.Offsets.Initial = sarama.OffsetOldest
	group := c.ConsumerGroup
	if group == "" {
		group = "waybill"
	}
	nack := c.NackResendSleep
	if nack == 0 {
		nack = time.Second
	}
	sub, err := wmkafka.NewSubscriber(wmkafka.SubscriberConfig{
		Brokers:               c.Brokers,
		Unmarshaler:           NewMarshaler(),
		OverwriteSaramaConfig: sc,
		ConsumerGroup:         group,
		NackResendSleep:       nack,
	}, logger)
	if err != nil {
		return nil, fmt.Errorf("kafka subscriber: %w", err)
	}
	return sub, nil
}

// NewPublisher returns a synchronous publisher that waits for all
// in-sync replicas (acks=all) and keys messages by PartitionKey, so that a
// published result survives a broker failure and stays in order per order.
func NewPublisher(c Config, logger watermill.LoggerAdapter) (*wmkafka.Publisher, error) {
	sc := c.SaramaConfig()
	sc.Producer.RequiredAcks = sarama.WaitForAll
	sc.Producer.Return.Successes = true
	sc.Producer.Retry.Max = 10
	pub, err := wmkafka.NewPublisher(wmkafka.PublisherConfig{
		Brokers:               c.Brokers,
		Marshaler:             NewMarshaler(),
		OverwriteSaramaConfig: sc,
	}, logger)
	if err != nil {
		return nil, fmt.Errorf("kafka publisher: %w", err)
	}
	return pub, nil
}
