package kafka

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/waybillkit/waybill/deadletter"
)

// TestPositionAndPartitionKey: a record consumed through NewSubscriber
// tells its partition and offset, a message from elsewhere says it has
// none, and output is keyed by the order id waybill's headers carry.
func TestPositionAndPartitionKey(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "in"))
	require.NoError(t, err)
	defer cluster.Close()
	kc := Config{Brokers: cluster.ListenAddrs(), ConsumerGroup: "position-test"}
	pub, err := NewPublisher(kc, nil)
	require.NoError(t, err)
	defer pub.Close()
	for _, id := range []string{"m-1", "m-2"} {
		m := message.NewMessage(id, []byte("{}"))
		m.Metadata.Set(deadletter.HeaderKey, "order-7") // one order: one partition
		require.NoError(t, pub.Publish("in", m))
	}

	sub, err := NewSubscriber(kc, nil)
	require.NoError(t, err)
	defer sub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	msgs, err := sub.Subscribe(ctx, "in")
	require.NoError(t, err)
	var parts []int32
	var offsets []int64
	for range 2 {
		select {
		case m := <-msgs:
			p, o, ok := Position(m)
			require.True(t, ok, "consumed from Kafka: it has a position")
			parts, offsets = append(parts, p), append(offsets, o)
			m.Ack()
		case <-ctx.Done():
			t.Fatal("nothing arrived")
		}
	}
	assert.Equal(t, parts[0], parts[1], "keyed by order id: one partition")
	assert.Equal(t, []int64{0, 1}, offsets)

	p, o, ok := Position(message.NewMessage("elsewhere", nil))
	assert.False(t, ok)
	assert.Equal(t, int32(-1), p)
	assert.Equal(t, int64(-1), o)

	for _, tc := range []struct {
		header, want string
	}{
		{deadletter.HeaderDeadKey, "A1"}, {deadletter.HeaderKey, "A1"}, {deadletter.HeaderParkedKey, "A1"}, {"", "uuid-1"},
	} {
		m := message.NewMessage("uuid-1", nil)
		if tc.header != "" {
			m.Metadata.Set(tc.header, "A1")
		}
		key, err := PartitionKey("any", m)
		require.NoError(t, err)
		assert.Equal(t, tc.want, key, "header %q", tc.header)
	}
}
