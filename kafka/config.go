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

	// SASL authenticates the connections; the zero value means none.
	SASL SASL
	// TLS encrypts them; the zero value means plaintext.
	TLS TLS
	// DisableIdempotence turns off the idempotent producer, for clusters
	// that refuse it (InitProducerId denied by an ACL, or an old managed
	// broker). With it on, the default, a produce retried after a lost
	// answer is written once, not twice.
	DisableIdempotence bool
	// Adjust, if not nil, is called last on every sarama configuration
	// built from this Config, for what waybill does not model (timeouts,
	// rack, a custom dialer). It must not undo what waybill relies on:
	// acks=all on producers, and the DelayRunner's and replay's manual
	// commits.
	Adjust func(*sarama.Config)
}

// SaramaConfig returns the sarama configuration of one waybill client:
// c's version, client id, SASL and TLS on sarama's defaults, then role
// (the client's own settings; nil for none), then Adjust. It fails when c
// is invalid or a TLS file cannot be read.
func (c Config) SaramaConfig(role func(*sarama.Config)) (*sarama.Config, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	sc := sarama.NewConfig()
	sc.Version = sarama.V4_0_0_0
	if c.Version != (sarama.KafkaVersion{}) {
		sc.Version = c.Version
	}
	sc.ClientID = "waybill"
	if c.ClientID != "" {
		sc.ClientID = c.ClientID
	}
	if err := c.secure(sc); err != nil {
		return nil, err
	}
	if role != nil {
		role(sc)
	}
	if c.Adjust != nil {
		c.Adjust(sc)
	}
	if err := sc.Validate(); err != nil {
		return nil, fmt.Errorf("kafka config: %w", err)
	}
	return sc, nil
}

// producer is the role of every waybill producer: acks=all, retried, and
// idempotent unless DisableIdempotence.
func (c Config) producer(sc *sarama.Config) {
	sc.Producer.RequiredAcks = sarama.WaitForAll
	sc.Producer.Return.Successes = true
	sc.Producer.Retry.Max = 10
	if !c.DisableIdempotence {
		// Idempotence needs one request in flight per connection to keep
		// its sequence numbers in order.
		sc.Producer.Idempotent = true
		sc.Net.MaxOpenRequests = 1
	}
}

// ProducerConfig is SaramaConfig for a producer as waybill's own: acks=all,
// retries, idempotence unless DisableIdempotence. Replay and provisioning
// tools build on it.
func (c Config) ProducerConfig(role func(*sarama.Config)) (*sarama.Config, error) {
	return c.SaramaConfig(func(sc *sarama.Config) {
		c.producer(sc)
		if role != nil {
			role(sc)
		}
	})
}

// Check connects to the cluster and reads its metadata, so that a service
// fails at start, with the setting to fix named, rather than at its first
// event. It returns what Explain makes of a failure.
func Check(c Config) error {
	sc, err := c.SaramaConfig(nil)
	if err != nil {
		return err
	}
	client, err := sarama.NewClient(c.Brokers, sc)
	if err != nil {
		return c.Explain("kafka", err)
	}
	return client.Close()
}

// NewSubscriber returns a consumer-group subscriber that starts a new
// group at the oldest offset, so that events published before waybill first
// ran are traced too.
func NewSubscriber(c Config, logger watermill.LoggerAdapter) (*wmkafka.Subscriber, error) {
	sc, err := c.SaramaConfig(func(sc *sarama.Config) {
		sc.Consumer.Return.Errors = true
		sc.Consumer.Offsets.Initial = sarama.OffsetOldest
	})
	if err != nil {
		return nil, err
	}
	group := c.ConsumerGroup
	if group == "" {
		group = "waybill"
	}
	sub, err := wmkafka.NewSubscriber(wmkafka.SubscriberConfig{
		Brokers:               c.Brokers,
		Unmarshaler:           NewMarshaler(),
		OverwriteSaramaConfig: sc,
		ConsumerGroup:         group,
		NackResendSleep:       c.nackResendSleep(),
	}, logger)
	if err != nil {
		return nil, c.Explain("kafka subscriber", err)
	}
	return sub, nil
}

// nackResendSleep is NackResendSleep with its default.
func (c Config) nackResendSleep() time.Duration {
	if c.NackResendSleep == 0 {
		return time.Second
	}
	return c.NackResendSleep
}

// NewPublisher returns a synchronous publisher that waits for all
// in-sync replicas (acks=all), is idempotent (unless DisableIdempotence)
// and keys messages by PartitionKey, so that a published result survives a
// broker failure, is written once however often the produce is retried,
// and stays in order per order. It connects at once: a wrong password or an
// untrusted certificate fails here, naming the setting.
func NewPublisher(c Config, logger watermill.LoggerAdapter) (*wmkafka.Publisher, error) {
	sc, err := c.ProducerConfig(nil)
	if err != nil {
		return nil, err
	}
	pub, err := wmkafka.NewPublisher(wmkafka.PublisherConfig{
		Brokers:               c.Brokers,
		Marshaler:             NewMarshaler(),
		OverwriteSaramaConfig: sc,
	}, logger)
	if err != nil {
		return nil, c.Explain("kafka publisher", err)
	}
	return pub, nil
}
