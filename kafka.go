package waybill

import (
	"fmt"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
)

// KafkaVersion is the protocol version waybill speaks to Kafka by default.
// Kafka 4.0 removed the old protocol versions that sarama's default (2.1)
// uses for consumer groups, so it must be set explicitly.
var KafkaVersion = sarama.V4_0_0_0

// KafkaConfig holds what waybill needs to reach a Kafka cluster.
type KafkaConfig struct {
	// Brokers to bootstrap from. Required.
	Brokers []string
	// ConsumerGroup for the subscriber. "" means "waybill".
	ConsumerGroup string
	// Version of the Kafka protocol. Zero means KafkaVersion.
	Version sarama.KafkaVersion
	// ClientID names the connections in broker logs. "" means "waybill".
	ClientID string
	// NackResendSleep is how long a nacked message waits before redelivery.
	// Zero means 1 s: waybill nacks only when it cannot publish or is
	// shutting down, and redelivering at watermill's 100 ms would spin.
	NackResendSleep time.Duration
}

func (c KafkaConfig) sarama() *sarama.Config {
	sc := sarama.NewConfig()
	sc.Version = KafkaVersion
	if c.Version != (sarama.KafkaVersion{}) {
		sc.Version = c.Version
	}
	sc.ClientID = "waybill"
	if c.ClientID != "" {
		sc.ClientID = c.ClientID
	}
	return sc
}

// NewKafkaSubscriber returns a consumer-group subscriber that starts a new
// group at the oldest offset, so that events published before waybill first
// ran are traced too.
func NewKafkaSubscriber(c KafkaConfig, logger watermill.LoggerAdapter) (*kafka.Subscriber, error) {
	sc := c.sarama()
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
	sub, err := kafka.NewSubscriber(kafka.SubscriberConfig{
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

// NewKafkaPublisher returns a synchronous publisher that waits for all
// in-sync replicas (acks=all) and keys messages by PartitionKey, so that a
// published result survives a broker failure and stays in order per order.
func NewKafkaPublisher(c KafkaConfig, logger watermill.LoggerAdapter) (*kafka.Publisher, error) {
	sc := c.sarama()
	sc.Producer.RequiredAcks = sarama.WaitForAll
	sc.Producer.Return.Successes = true
	sc.Producer.Retry.Max = 10
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{
		Brokers:               c.Brokers,
		Marshaler:             NewMarshaler(),
		OverwriteSaramaConfig: sc,
	}, logger)
	if err != nil {
		return nil, fmt.Errorf("kafka publisher: %w", err)
	}
	return pub, nil
}
