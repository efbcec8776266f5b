package kafka

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/internal/testkafka"
)

// seqRecord is a test record's value: its key and its place among the
// records of that key.
type seqRecord struct {
	Key string `json:"order_id"`
	Seq int    `json:"seq"`
}

// produceSeq writes keys × perKey records, keyed, seq 0..perKey-1 per key,
// interleaved across keys, and returns how many.
func produceSeq(t *testing.T, brokers []string, topic string, keys, perKey int) int {
	t.Helper()
	sc := testkafka.Config()
	sc.Producer.Return.Successes = true
	sc.Producer.RequiredAcks = sarama.WaitForAll
	prod, err := sarama.NewSyncProducer(brokers, sc)
	require.NoError(t, err)
	defer prod.Close()
	var batch []*sarama.ProducerMessage
	for seq := range perKey {
		for k := range keys {
			v, _ := json.Marshal(seqRecord{Key: fmt.Sprintf("key-%03d", k), Seq: seq})
			batch = append(batch, &sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(fmt.Sprintf("key-%03d", k)), Value: sarama.ByteEncoder(v)})
		}
	}
	require.NoError(t, prod.SendMessages(batch))
	return len(batch)
}

// journal records what a consumer does with each message, and the ways it
// can break the subscriber's contract.
type journal struct {
	mu        sync.Mutex
	busy      map[string]bool
	next      map[string]int // the seq each key must reach next, for first handlings
	handled   map[seqRecord]int
	inFlight  int
	maxFlight int
	problems  []string
	finished  int
	done      chan struct{} // closed when every expected record was handled once
	want      int
}

func newJournal(want int) *journal {
	return &journal{busy: map[string]bool{}, next: map[string]int{}, handled: map[seqRecord]int{}, want: want, done: make(chan struct{})}
}

func (j *journal) begin(r seqRecord) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.busy[r.Key] {
		j.problems = append(j.problems, fmt.Sprintf("%s seq %d began while another message of its key was in flight", r.Key, r.Seq))
	}
	j.busy[r.Key] = true
	if j.handled[r] == 0 && r.Seq != j.next[r.Key] {
		j.problems = append(j.problems, fmt.Sprintf("%s seq %d first handled before seq %d", r.Key, r.Seq, j.next[r.Key]))
	}
	j.inFlight++
	j.maxFlight = max(j.maxFlight, j.inFlight)
}

func (j *journal) end(r seqRecord) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.busy[r.Key] = false
	j.inFlight--
	if j.handled[r] == 0 {
		j.next[r.Key] = r.Seq + 1
		j.finished++
		if j.finished == j.want {
			close(j.done)
		}
	}
	j.handled[r]++
}

func (j *journal) duplicates() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	n := 0
	for _, c := range j.handled {
		n += c - 1
	}
	return n
}

func (j *journal) check(t *testing.T) {
	t.Helper()
	j.mu.Lock()
	defer j.mu.Unlock()
	assert.Empty(t, j.problems)
	assert.Equal(t, j.want, j.finished, "every record handled at least once")
}

// handleWith consumes msgs as a Router does, a goroutine a message, with a
// random latency up to maxLatency, until msgs closes.
func handleWith(j *journal, msgs <-chan *message.Message, maxLatency time.Duration, count *atomic.Int64) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Go(func() {
		for m := range msgs {
			count.Add(1)
			wg.Go(func() {
				var r seqRecord
				if err := json.Unmarshal(m.Payload, &r); err != nil {
					panic(err)
				}
				j.begin(r)
				time.Sleep(rand.N(maxLatency))
				j.end(r)
				m.Ack()
			})
		}
	})
	return &wg
}

func orderedTopic(t *testing.T, partitions int32) ([]string, string) {
	brokers := testkafka.Brokers(t)
	topic := testkafka.Topic(t, "ordered")
	testkafka.CreateTopic(t, brokers, topic, partitions)
	return brokers, topic
}

func waitDone(t *testing.T, j *journal, d time.Duration) {
	t.Helper()
	select {
	case <-j.done:
	case <-time.After(d):
		j.mu.Lock()
		defer j.mu.Unlock()
		t.Fatalf("%d of %d records handled after %v", j.finished, j.want, d)
	}
}

// TestOrderedPerKeyOrderThroughRouter: through a Watermill Router, many keys
// with several records each and random latencies: per key, one at a time
// and in order; across keys, many at once.
func TestOrderedPerKeyOrderThroughRouter(t *testing.T) {
	t.Parallel()
	brokers, topic := orderedTopic(t, 3)
	n := produceSeq(t, brokers, topic, 200, 8)
	j := newJournal(n)

	sub, err := NewOrderedSubscriber(Config{Brokers: brokers, ConsumerGroup: topic}, OrderedConfig{Concurrency: 8}, nil)
	require.NoError(t, err)
	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	require.NoError(t, err)
	router.AddConsumerHandler("order", topic, sub, func(m *message.Message) error {
		var r seqRecord
		if !assert.NoError(t, json.Unmarshal(m.Payload, &r)) {
			return nil
		}
		p, _, ok := Position(m)
		assert.True(t, ok && p >= 0 && p < 3, "position from the ordered subscriber")
		j.begin(r)
		time.Sleep(rand.N(20 * time.Millisecond))
		j.end(r)
		return nil
	})
	go func() { _ = router.Run(context.Background()) }()
	defer router.Close()

	waitDone(t, j, 2*time.Minute)
	j.check(t)
	assert.Greater(t, j.maxFlight, 3, "more than one message per partition in flight")
	assert.LessOrEqual(t, j.maxFlight, 3*8, "at most Concurrency per partition")
}

// TestOrderedRebalance: one consumer, then three, then one again, while
// records are in flight: nothing is lost, and per key the first handlings
// stay in order and never overlap, across owners.
func TestOrderedRebalance(t *testing.T) {
	t.Parallel()
	brokers, topic := orderedTopic(t, 6)
	// Enough records (about ten seconds' worth) that the joins of b and c,
	// each a rebalance of a few seconds, come while work is left.
	n := produceSeq(t, brokers, topic, 400, 30)
	j := newJournal(n)
	kc := Config{Brokers: brokers, ConsumerGroup: topic}
	var counts [3]atomic.Int64
	start := func(i int) (*OrderedSubscriber, *sync.WaitGroup) {
		sub, err := NewOrderedSubscriber(kc, OrderedConfig{Concurrency: 4}, nil)
		require.NoError(t, err)
		msgs, err := sub.Subscribe(context.Background(), topic)
		require.NoError(t, err)
		return sub, handleWith(j, msgs, 40*time.Millisecond, &counts[i])
	}
	finished := func() int {
		j.mu.Lock()
		defer j.mu.Unlock()
		return j.finished
	}
	until := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for !cond() {
			require.True(t, time.Now().Before(deadline), "%s: not after 2 min", what)
			time.Sleep(10 * time.Millisecond)
		}
	}

	a, aDone := start(0)
	until("a first share", func() bool { return finished() >= n/10 })
	b, bDone := start(1)
	c, cDone := start(2)
	until("b and c at work", func() bool { return counts[1].Load() >= 100 && counts[2].Load() >= 100 })
	require.Less(t, finished(), n, "records left for the way back to one consumer")
	require.NoError(t, b.Close())
	require.NoError(t, c.Close())
	bDone.Wait()
	cDone.Wait()
	waitDone(t, j, 3*time.Minute)
	require.NoError(t, a.Close())
	aDone.Wait()
	j.check(t)
	for i := range counts {
		assert.Positive(t, counts[i].Load(), "consumer %d got a share", i)
	}
	t.Logf("%d records, %d, %d and %d handed to the consumers, %d handled again after a rebalance", n, counts[0].Load(), counts[1].Load(), counts[2].Load(), j.duplicates())
}

// TestOrderedNackDoesNotStopOtherKeys: messages nacked again and again hold
// only their own keys, not their slots: with as many poison keys as slots,
// every other key's records are handled while they are retried, and each
// poison key's later records wait for it.
func TestOrderedNackDoesNotStopOtherKeys(t *testing.T) {
	t.Parallel()
	brokers, topic := orderedTopic(t, 1)
	n := produceSeq(t, brokers, topic, 50, 4)
	const slots = 2
	sub, err := NewOrderedSubscriber(Config{Brokers: brokers, ConsumerGroup: topic}, OrderedConfig{Concurrency: slots}, nil)
	require.NoError(t, err)
	defer sub.Close()
	msgs, err := sub.Subscribe(context.Background(), topic)
	require.NoError(t, err)

	const nacks = 3
	var mu sync.Mutex
	var order []seqRecord // acked, in order
	poison := map[seqRecord]int{{Key: "key-000", Seq: 0}: 0, {Key: "key-001", Seq: 0}: 0}
	all := make(chan struct{})
	deadline := time.After(time.Minute)
	for waiting := true; waiting; {
		select {
		case m := <-msgs:
			go func() {
				var r seqRecord
				_ = json.Unmarshal(m.Payload, &r)
				mu.Lock()
				defer mu.Unlock()
				if c, ok := poison[r]; ok && c < nacks {
					poison[r]++
					m.Nack()
					return
				}
				order = append(order, r)
				if len(order) == n {
					close(all)
				}
				m.Ack()
			}()
		case <-all:
			waiting = false
		case <-deadline:
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("%d of %d acked", len(order), n)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, order, n)
	at := map[seqRecord]int{}
	for i, r := range order {
		at[r] = i
	}
	for p, c := range poison {
		assert.Equal(t, nacks, c)
		// Retried NackResendSleep (1 s) after each nack: the other 48 keys'
		// 192 records are done long before, through both slots.
		assert.GreaterOrEqual(t, at[p], n-8, "%s: every other key went on while it was retried", p.Key)
		for seq := 1; seq < 4; seq++ {
			assert.Greater(t, at[seqRecord{Key: p.Key, Seq: seq}], at[p], "its own key waited")
		}
	}
}

// TestOrderedBackPressure: a partition reads no further than MaxUncommitted
// past its oldest unfinished record, and goes on once that one is done.
func TestOrderedBackPressure(t *testing.T) {
	t.Parallel()
	brokers, topic := orderedTopic(t, 1)
	n := produceSeq(t, brokers, topic, 20, 1)
	sub, err := NewOrderedSubscriber(Config{Brokers: brokers, ConsumerGroup: topic}, OrderedConfig{Concurrency: 4, MaxUncommitted: 6}, nil)
	require.NoError(t, err)
	defer sub.Close()
	msgs, err := sub.Subscribe(context.Background(), topic)
	require.NoError(t, err)
	var head *message.Message
	var offsets []int64
	for range 6 {
		m := receive(t, msgs)
		_, o, _ := Position(m)
		offsets = append(offsets, o)
		if o == 0 {
			head = m
			continue
		}
		m.Ack()
	}
	assert.ElementsMatch(t, []int64{0, 1, 2, 3, 4, 5}, offsets)
	require.NotNil(t, head)
	select {
	case m := <-msgs:
		_, o, _ := Position(m)
		t.Fatalf("offset %d handed out six past the unfinished offset 0", o)
	case <-time.After(2 * time.Second):
	}
	head.Ack()
	for range n - 6 {
		receive(t, msgs).Ack()
	}
}

// TestOrderedConfig: what NewOrderedSubscriber refuses, and its lifecycle.
func TestOrderedConfig(t *testing.T) {
	kc := Config{Brokers: []string{"127.0.0.1:1"}}
	for _, tc := range []struct {
		name string
		oc   OrderedConfig
		adj  func(*sarama.Config)
		want string
	}{
		{"negative concurrency", OrderedConfig{Concurrency: -1}, nil, "Concurrency -1"},
		{"window below concurrency", OrderedConfig{Concurrency: 8, MaxUncommitted: 4}, nil, "below Concurrency"},
		{"drain without spare", OrderedConfig{DrainTimeout: 55 * time.Second}, nil, "exceed the rebalance timeout"},
		{"cooperative", OrderedConfig{}, func(sc *sarama.Config) {
			sc.Consumer.Group.Rebalance.GroupStrategies = []sarama.BalanceStrategy{sarama.NewBalanceStrategyCooperativeSticky()}
		}, "cooperative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := kc
			c.Adjust = tc.adj
			_, err := NewOrderedSubscriber(c, tc.oc, nil)
			assert.ErrorContains(t, err, tc.want)
		})
	}
	sub, err := NewOrderedSubscriber(kc, OrderedConfig{DrainTimeout: 52 * time.Second}, nil)
	require.NoError(t, err, "52 s, a 3 s heartbeat and 5 s to spare fit in 60 s")
	require.NoError(t, sub.Close())
	require.NoError(t, sub.Close(), "twice")
	_, err = sub.Subscribe(context.Background(), "t")
	assert.ErrorIs(t, err, ErrSubscriberClosed)
}
