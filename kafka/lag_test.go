package kafka

import (
	"context"
	"testing"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/internal/testkafka"
)

// TestLagReader on the real broker: a group without a commit lags by every
// record retained; after a commit, by what follows it.
func TestLagReader(t *testing.T) {
	brokers := testkafka.Brokers(t)
	topic := testkafka.Topic(t, "lag")
	testkafka.CreateTopic(t, brokers, topic, 1)
	pub, err := NewPublisher(Config{Brokers: brokers}, nil)
	require.NoError(t, err)
	defer pub.Close()
	for range 5 {
		require.NoError(t, pub.Publish(topic, message.NewMessage(watermill.NewUUID(), []byte("{}"))))
	}
	r, err := NewLagReader(Config{Brokers: brokers})
	require.NoError(t, err)
	defer r.Close()
	require.NoError(t, r.Ping(context.Background(), topic))
	group := topic + "-group"

	lag, err := r.Lag(context.Background(), group, []string{topic})
	require.NoError(t, err)
	assert.Equal(t, []PartitionLag{{Topic: topic, Partition: 0, Committed: -1, HighWatermark: 5, Lag: 5}}, lag)

	client, err := sarama.NewClient(brokers, sarama.NewConfig())
	require.NoError(t, err)
	defer client.Close()
	om, err := sarama.NewOffsetManagerFromClient(group, client)
	require.NoError(t, err)
	pom, err := om.ManagePartition(topic, 0)
	require.NoError(t, err)
	pom.MarkOffset(3, "")
	om.Commit()
	require.NoError(t, pom.Close())
	require.NoError(t, om.Close())

	lag, err = r.Lag(context.Background(), group, []string{topic})
	require.NoError(t, err)
	assert.Equal(t, []PartitionLag{{Topic: topic, Partition: 0, Committed: 3, HighWatermark: 5, Lag: 2}}, lag)

	_, err = r.Lag(context.Background(), group, []string{topic + ".missing"})
	assert.Error(t, err, "a topic that does not exist")
}
