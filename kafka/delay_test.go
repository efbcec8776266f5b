package kafka

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/internal/testkafka"
	"github.com/waybillkit/waybill/internal/testpub"
)

// TestDelayRunnerReturnsByDueTime runs the DelayRunner on an in-process
// Kafka with a controllable clock: an event due later on one tier does not
// hold back one due now on another, a record that cannot be returned does
// not stall the one behind it, events come back to the input topic with
// their history when due, and the runner commits only what it returned.
func TestDelayRunnerReturnsByDueTime(t *testing.T) {
	// The topics of the Handler's ParkingConfig{Tiers: 1m, 1h} for input "in".
	topics := []string{"in.delay.1m0s", "in.delay.1h0m0s", "in.delay.window"}
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, append(topics, "in", "dead")...))
	require.NoError(t, err)
	defer cluster.Close()
	kc := Config{Brokers: cluster.ListenAddrs(), ConsumerGroup: "delay-test"}
	pub, err := NewPublisher(kc, nil)
	require.NoError(t, err)
	defer pub.Close()

	t0 := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	var offset atomic.Int64
	now := func() time.Time { return t0.Add(time.Duration(offset.Load())) }
	park := func(id, topic string, due time.Time, from string) {
		m := message.NewMessage(id, []byte(`{"order_id":"`+id+`"}`))
		m.Metadata.Set(deadletter.HeaderDueAt, due.UTC().Format(time.RFC3339Nano))
		if from != "" {
			m.Metadata.Set(deadletter.HeaderParkedFrom, from)
		}
		m.Metadata.Set(deadletter.HeaderAttempts, "3")
		require.NoError(t, pub.Publish(topic, m))
	}
	park("later", topics[1], t0.Add(time.Hour), "in") // head of the 1h tier
	park("foreign", topics[0], t0, "")                // no input topic recorded: goes to InputTopic
	park("soon", topics[0], t0.Add(time.Minute), "in")
	park("now", topics[2], t0.Add(-time.Second), "in")

	runner, err := NewDelayRunner(DelayRunnerConfig{
		Kafka: kc, Topics: topics, Publisher: pub, InputTopic: "in", DeadLetterTopic: "dead", Now: now, Recheck: 10 * time.Millisecond,
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runner.Run(ctx) }()

	sub, err := NewSubscriber(Config{Brokers: kc.Brokers, ConsumerGroup: "delay-test-observer"}, nil)
	require.NoError(t, err)
	defer sub.Close()
	back, err := sub.Subscribe(ctx, "in")
	require.NoError(t, err)
	dead, err := sub.Subscribe(ctx, "dead")
	require.NoError(t, err)
	next := func(ch <-chan *message.Message) *message.Message {
		select {
		case m := <-ch:
			m.Ack()
			return m
		case <-time.After(30 * time.Second):
			t.Fatal("nothing arrived")
			return nil
		}
	}

	first := map[string]*message.Message{}
	for range 2 {
		m := next(back)
		first[m.UUID] = m
	}
	require.Contains(t, first, "now", "due at once on its own tier")
	require.Contains(t, first, "foreign", "a record without %s goes back to InputTopic", deadletter.HeaderParkedFrom)
	m := first["now"]
	assert.Empty(t, m.Metadata.Get(deadletter.HeaderDueAt))
	assert.Empty(t, m.Metadata.Get(deadletter.HeaderParkedFrom))
	assert.Equal(t, "3", m.Metadata.Get(deadletter.HeaderAttempts))

	offset.Store(int64(2 * time.Minute))
	assert.Equal(t, "soon", next(back).UUID, "due once the clock passed its time")
	assert.Equal(t, int64(0), runner.Returned(topics[1]), "the 1h event is not due")
	select {
	case m := <-dead:
		t.Errorf("dead-lettered %s: nothing here is unreadable", m.UUID)
	default:
	}
	cancel()
	require.NoError(t, <-done)

	admin, err := sarama.NewClusterAdmin(kc.Brokers, testkafka.Config())
	require.NoError(t, err)
	defer admin.Close()
	offsets, err := admin.ListConsumerGroupOffsets("delay-test", map[string][]int32{topics[0]: {0}, topics[1]: {0}, topics[2]: {0}})
	require.NoError(t, err)
	assert.Equal(t, int64(2), offsets.GetBlock(topics[0], 0).Offset, "foreign and soon: committed")
	assert.Equal(t, int64(1), offsets.GetBlock(topics[2], 0).Offset, "returned: committed")
	assert.Equal(t, int64(-1), offsets.GetBlock(topics[1], 0).Offset, "still parked: not committed")
}

// TestDelayRunnerRejectReplaysToTheInput: a parked record the runner cannot
// read is dead-lettered with the input topic as its source, so a replay
// sends it to the handler (which validates it) and not back to the delay
// topic that rejected it; with no DeadLetterTopic given it still goes to the
// default one, never dropped.
func TestDelayRunnerRejectReplaysToTheInput(t *testing.T) {
	pub := &testpub.Recorder{}
	r := &DelayRunner{cfg: DelayRunnerConfig{Publisher: pub, InputTopic: "shop.shipped", DeadLetterTopic: deadletter.DefaultTopic, Now: time.Now, Logger: watermill.NopLogger{}}}
	rec := &sarama.ConsumerMessage{Topic: "shop.shipped.delay.1m0s", Partition: 2, Offset: 41, Key: []byte("k"), Value: []byte("{}")}
	require.NoError(t, r.reject(context.Background(), rec, nil, errors.New("unreadable headers")))
	dl := testpub.OnlyDeadLetter(t, pub)
	assert.Equal(t, "shop.shipped", dl.SourceTopic, "a replay must send it where it can succeed")
	assert.Contains(t, dl.Errmsg, "shop.shipped.delay.1m0s/2/41")
}
