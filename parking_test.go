package waybill

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"
)

func TestParkingRoute(t *testing.T) {
	p := ParkingConfig{}
	p.setDefaults("order.shipped")
	now := time.Date(2026, 11, 26, 15, 4, 5, 0, time.UTC)
	cases := []struct {
		name   string
		wait   time.Duration
		window bool
		topic  string
		due    time.Duration
	}{
		{"next minute", 55 * time.Second, false, "order.shipped.delay.1m0s", time.Minute},
		{"exactly a tier", time.Minute, false, "order.shipped.delay.1m0s", time.Minute},
		{"breaker", 5 * time.Second, false, "order.shipped.delay.1m0s", time.Minute},
		{"between tiers", 5 * time.Minute, false, "order.shipped.delay.10m0s", 10 * time.Minute},
		{"not yet", time.Hour, false, "order.shipped.delay.1h0m0s", time.Hour},
		{"longer than every tier goes round", 3 * time.Hour, false, "order.shipped.delay.1h0m0s", time.Hour},
		{"quota window", 9 * time.Hour, true, "order.shipped.delay.window", 9 * time.Hour},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			topic, due := p.route(now, now.Add(tc.wait), tc.window)
			assert.Equal(t, tc.topic, topic)
			assert.Equal(t, now.Add(tc.due), due)
			assert.Contains(t, p.Topics("order.shipped"), topic)
		})
	}
}

func TestParkingConfigValidate(t *testing.T) {
	assert.Error(t, (&ParkingConfig{Tiers: []time.Duration{time.Hour, time.Minute}}).Validate())
	assert.Error(t, (&ParkingConfig{Tiers: []time.Duration{0}}).Validate())
	assert.NoError(t, (&ParkingConfig{Tiers: []time.Duration{time.Minute, time.Hour}}).Validate())
	_, err := NewHandler(Config{Client: newScriptedTracer(), Publisher: &recorder{}, Parking: &ParkingConfig{Tiers: []time.Duration{-1}}})
	assert.ErrorContains(t, err, "must be positive")
}

func TestHandlerParksInsteadOfWaiting(t *testing.T) {
	now := time.Date(2026, 11, 26, 15, 4, 5, 0, time.UTC) // 23:04 in Shanghai
	cases := []struct {
		name  string
		code  int
		topic string
		due   time.Time
	}{
		{"daily quota waits for the window", 45009, "order.shipped.delay.window", time.Date(2026, 11, 26, 16, 0, 0, 0, time.UTC).Add(spreadOf(23*time.Hour + 4*time.Minute + 5*time.Second))},
		{"minute rate", 45011, "order.shipped.delay.1m0s", now.Add(time.Minute)},
		{"not yet", 931023, "order.shipped.delay.1h0m0s", now.Add(time.Hour)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr, pub := newScriptedTracer(), &recorder{}
			tr.on("SF100", wechatErr(tc.code))
			h := newTestHandler(t, tr, pub, func(c *Config) {
				c.Parking = &ParkingConfig{}
				c.Now = func() time.Time { return now }
				c.Retry.QuotaReset = nil // the real one: next 00:00 Asia/Shanghai
				c.Retry.NotYetDelay = time.Hour
			})
			in := msgOf(t, validEvent("order-1", "SF100"))
			in.Metadata.Set("trace_id", "abc")
			require.NoError(t, h.Handle(in), "parked events are acknowledged")

			assert.Empty(t, pub.on(DefaultTracedTopic))
			assert.Empty(t, pub.on(DefaultDeadLetterTopic), "never dead-lettered")
			parked := pub.on(tc.topic)
			require.Len(t, parked, 1)
			p := parked[0]
			assert.Equal(t, in.UUID, p.UUID)
			assert.Equal(t, []byte(in.Payload), []byte(p.Payload))
			assert.Equal(t, "abc", p.Metadata.Get("trace_id"))
			assert.Equal(t, "1", p.Metadata.Get(HeaderAttempts))
			assert.Equal(t, "1", p.Metadata.Get(HeaderParks))
			assert.Equal(t, DefaultInputTopic, p.Metadata.Get(HeaderParkedFrom))
			assert.Equal(t, now.Format(time.RFC3339Nano), p.Metadata.Get(HeaderFirstFailure))
			assert.Equal(t, tc.due.Format(time.RFC3339Nano), p.Metadata.Get(HeaderDueAt))
			assert.Equal(t, int64(1), h.Stats().Parked)
		})
	}
}

func TestHandlerHistorySurvivesParking(t *testing.T) {
	first := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)
	returned := func(attempts, parks int) *message.Message {
		m := message.NewMessage("m-1", mustJSON(t, func(*OrderShipped) {}))
		m.Metadata.Set(HeaderAttempts, strconv.Itoa(attempts))
		m.Metadata.Set(HeaderParks, strconv.Itoa(parks))
		m.Metadata.Set(HeaderFirstFailure, first.Format(time.RFC3339Nano))
		return m
	}

	t.Run("not-yet bound counts earlier deliveries", func(t *testing.T) {
		tr, pub := newScriptedTracer(), &recorder{}
		tr.on("SF100", wechatErr(931023))
		h := newTestHandler(t, tr, pub, func(c *Config) { c.Parking = &ParkingConfig{} })
		m := returned(23, 23)
		m.Metadata.Set(HeaderNotYet, "23")
		require.NoError(t, h.Handle(m))
		dl := onlyDeadLetter(t, pub)
		assert.Equal(t, ReasonNotYetExhausted, dl.Reason)
		assert.Equal(t, 24, dl.Attempts)
		assert.Equal(t, first, dl.FirstFailure, "first failure travels from the first delivery")
		assert.Equal(t, 931023, dl.Errcode)
	})
	t.Run("parked too often", func(t *testing.T) {
		tr, pub := newScriptedTracer(), &recorder{}
		tr.on("SF100", wechatErr(45011))
		h := newTestHandler(t, tr, pub, func(c *Config) { c.Parking = &ParkingConfig{MaxParks: 5} })
		require.NoError(t, h.Handle(returned(5, 5)))
		dl := onlyDeadLetter(t, pub)
		assert.Equal(t, ReasonTooManyAttempts, dl.Reason)
		assert.Equal(t, 45011, dl.Errcode)
		assert.Equal(t, 6, dl.Attempts)
	})
}

// TestDelayRunnerReturnsByDueTime runs the DelayRunner on an in-process
// Kafka with a controllable clock: an event due later on one tier does not
// hold back one due now on another, a record that cannot be returned does
// not stall the one behind it, events come back to the input topic with
// their history when due, and the runner commits only what it returned.
func TestDelayRunnerReturnsByDueTime(t *testing.T) {
	p := ParkingConfig{Tiers: []time.Duration{time.Minute, time.Hour}}
	topics := p.Topics("in")
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, append(topics, "in", "dead")...))
	require.NoError(t, err)
	defer cluster.Close()
	kc := KafkaConfig{Brokers: cluster.ListenAddrs(), ConsumerGroup: "delay-test"}
	pub, err := NewKafkaPublisher(kc, nil)
	require.NoError(t, err)
	defer pub.Close()

	t0 := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	var offset atomic.Int64
	now := func() time.Time { return t0.Add(time.Duration(offset.Load())) }
	park := func(id, topic string, due time.Time, from string) {
		m := message.NewMessage(id, []byte(`{"order_id":"`+id+`"}`))
		m.Metadata.Set(HeaderDueAt, due.UTC().Format(time.RFC3339Nano))
		if from != "" {
			m.Metadata.Set(HeaderParkedFrom, from)
		}
		m.Metadata.Set(HeaderAttempts, "3")
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

	sub, err := NewKafkaSubscriber(KafkaConfig{Brokers: kc.Brokers, ConsumerGroup: "delay-test-observer"}, nil)
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
	require.Contains(t, first, "foreign", "a record without %s goes back to InputTopic", HeaderParkedFrom)
	m := first["now"]
	assert.Empty(t, m.Metadata.Get(HeaderDueAt))
	assert.Empty(t, m.Metadata.Get(HeaderParkedFrom))
	assert.Equal(t, "3", m.Metadata.Get(HeaderAttempts))

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

	admin, err := sarama.NewClusterAdmin(kc.Brokers, kc.sarama())
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
	pub := &recorder{}
	r := &DelayRunner{cfg: DelayRunnerConfig{Publisher: pub, InputTopic: "shop.shipped", DeadLetterTopic: DefaultDeadLetterTopic, Now: time.Now, Logger: watermill.NopLogger{}}}
	rec := &sarama.ConsumerMessage{Topic: "shop.shipped.delay.1m0s", Partition: 2, Offset: 41, Key: []byte("k"), Value: []byte("{}")}
	require.NoError(t, r.reject(context.Background(), rec, nil, errors.New("unreadable headers")))
	dl := onlyDeadLetter(t, pub)
	assert.Equal(t, "shop.shipped", dl.SourceTopic, "a replay must send it where it can succeed")
	assert.Contains(t, dl.Errmsg, "shop.shipped.delay.1m0s/2/41")
}
