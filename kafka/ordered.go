package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/waybillkit/waybill/internal/wait"
)

// OrderedConfig configures an OrderedSubscriber. Its zero value means the
// defaults.
type OrderedConfig struct {
	// Concurrency is how many messages of one partition may be in flight at
	// once: handed out and neither acked nor given up. Zero means 16; 1 hands
	// out one message at a time, in offset order, as watermill-kafka does.
	Concurrency int
	// Key returns a record's ordering key. Records with equal keys are
	// handed out one at a time, in offset order; records with different
	// keys are independent. Nil means the record's Kafka key, with records
	// that have none independent of each other. OrderIDKey keys waybill's
	// order.shipped events by their order id.
	Key func(*sarama.ConsumerMessage) string
	// MaxBytes bounds the key and value bytes one partition holds: records
	// read but not yet acked, in flight or queued behind a busy key or a
	// full Concurrency. When it is reached, the partition reads nothing more
	// until a message is acked. A record larger than MaxBytes is still read,
	// when the partition holds nothing else. Zero means 256 KiB (about 400
	// order.shipped events, ample for 16 in flight).
	MaxBytes int
	// MaxUncommitted bounds how far a partition reads past its oldest
	// unfinished record: the records behind it that are acked cannot be
	// committed until it finishes, and a crash redelivers them. When it is
	// reached, the partition reads nothing more. Zero means 10,000.
	MaxUncommitted int
	// DrainTimeout bounds how long messages in flight may take to finish
	// once their partition is revoked or the subscriber closes; then their
	// contexts are cancelled and the partition is let go, the unfinished
	// messages to be redelivered to its next owner. With a heartbeat
	// interval and 5 s to spare, it must fit in sarama's
	// Consumer.Group.Rebalance.Timeout (60 s by default), within which Kafka
	// expects the partition back: the news of a rebalance comes with a
	// heartbeat, and the commit and the rejoin follow the drain. Zero means
	// 30 s.
	DrainTimeout time.Duration
	// NackResendSleep is how long a nacked message waits before it is
	// handed out again; meanwhile its key stays busy, and its slot goes to
	// other keys. Zero means Config.NackResendSleep.
	NackResendSleep time.Duration
	// Unmarshaler turns records into messages. Nil means NewMarshaler().
	Unmarshaler interface {
		Unmarshal(*sarama.ConsumerMessage) (*message.Message, error)
	}
}

func (c *OrderedConfig) setDefaults(k Config) {
	if c.Concurrency == 0 {
		c.Concurrency = 16
	}
	if c.Key == nil {
		c.Key = RecordKey
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = 256 << 10
	}
	if c.MaxUncommitted == 0 {
		c.MaxUncommitted = 10_000
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 30 * time.Second
	}
	if c.NackResendSleep == 0 {
		c.NackResendSleep = k.nackResendSleep()
	}
	if c.Unmarshaler == nil {
		c.Unmarshaler = NewMarshaler()
	}
}

// Validate reports a configuration that cannot work.
func (c OrderedConfig) Validate() error {
	switch {
	case c.Concurrency < 0:
		return fmt.Errorf("ordered subscriber: Concurrency %d is negative", c.Concurrency)
	case c.MaxBytes < 0:
		return fmt.Errorf("ordered subscriber: MaxBytes %d is negative", c.MaxBytes)
	case c.MaxUncommitted < 0:
		return fmt.Errorf("ordered subscriber: MaxUncommitted %d is negative", c.MaxUncommitted)
	case c.DrainTimeout < 0:
		return fmt.Errorf("ordered subscriber: DrainTimeout %v is negative", c.DrainTimeout)
	case c.MaxUncommitted > 0 && c.MaxUncommitted < c.Concurrency:
		return fmt.Errorf("ordered subscriber: MaxUncommitted %d is below Concurrency %d", c.MaxUncommitted, c.Concurrency)
	}
	return nil
}

// RecordKey is OrderedConfig's default Key: the record's Kafka key, or, for
// a record without one, a key of its own (its offset), so that keyless
// records are not ordered among themselves.
func RecordKey(rec *sarama.ConsumerMessage) string {
	if len(rec.Key) == 0 {
		return offsetKey(rec.Offset)
	}
	return string(rec.Key)
}

// offsetKey is a keyless record's own key: a NUL byte and its offset. A
// Kafka key of the same nine bytes would share it, which only makes the two
// records wait for each other.
func offsetKey(offset int64) string {
	var b [9]byte
	for i := range 8 {
		b[1+i] = byte(offset >> (8 * i))
	}
	return string(b[:])
}

// OrderedSubscriber is a Kafka consumer-group subscriber, for any Watermill
// Router, that keeps up to Concurrency messages of each partition in flight
// while keeping the order of each key. It exists because watermill-kafka
// hands out the next message of a partition only after the previous one was
// acked, so a partition is only as fast as one message's latency.
//
// The contract:
//
//   - Per key, order holds: a message is handed out only after every earlier
//     message of its key (by offset, in its partition) was acked. Messages
//     of different keys run at once, up to Concurrency per partition, and
//     may finish in any order. Keys of different partitions are never
//     related: key your topic so that what must stay ordered shares a
//     partition.
//   - Ack marks a message finished. A partition's offset is committed up to
//     (not including) its oldest unfinished message, never past it; commits
//     go to Kafka every Consumer.Offsets.AutoCommit.Interval (1 s) and when
//     the partition is let go. A crash therefore redelivers the unfinished
//     messages and those acked after the last commit or behind an unfinished
//     one: at-least-once, never a loss.
//   - Nack hands the message out again after NackResendSleep, with a new
//     message value; its key waits, and its slot serves other keys
//     meanwhile. The offset cannot be committed past it, so a message nacked
//     forever eventually stops its partition at MaxUncommitted.
//   - Back-pressure: a partition reads from Kafka only while it holds fewer
//     than MaxBytes of messages and is fewer than MaxUncommitted records past
//     its oldest unfinished one.
//   - When a partition is revoked (a rebalance) or the subscriber closes or
//     the Subscribe context ends, no more messages of that partition are
//     handed out; those in flight have DrainTimeout to finish, and their
//     acks are committed. Then their contexts are cancelled and everything
//     unfinished is left to the partition's next owner. A consumer that
//     does not stop when its message's context is cancelled may then still
//     be at work on it when the next owner (this process again, after an
//     eager rebalance) hands out its redelivery: only there can two
//     messages of one key be in flight at once.
//   - Rebalancing is eager (sarama's range, round-robin or sticky
//     strategies): every rebalance drains every partition. Cooperative
//     strategies are refused, as a partition under back-pressure would not
//     notice its revocation.
//   - A message's context carries the Subscribe context's values and its
//     partition, offset, key and timestamp (Position, and watermill-kafka's
//     accessors do not apply); it is cancelled on Ack, on Nack, and at the
//     drain deadline.
//
// Confluent's parallel-consumer, the reference for this, also records the
// acked offsets above the commit in the commit's metadata, so that a
// restart skips them; this subscriber does not, so a crash redelivers them
// and waybill's trace store keeps that to one WeChat call per waybill. Its
// unit of concurrency is one in-flight message per key, as here.
//
// It is safe for concurrent use.
type OrderedSubscriber struct {
	kafka  Config
	cfg    OrderedConfig
	sarama *sarama.Config
	group  string
	logger watermill.LoggerAdapter

	mu      sync.Mutex
	closed  bool
	cancels map[int]context.CancelFunc // of the running subscriptions
	next    int
	running sync.WaitGroup
}

// NewOrderedSubscriber returns an OrderedSubscriber on c's cluster, in c's
// consumer group ("waybill" when ""), that starts a new group at the oldest
// offset. A nil logger logs nothing.
func NewOrderedSubscriber(c Config, oc OrderedConfig, logger watermill.LoggerAdapter) (*OrderedSubscriber, error) {
	oc.setDefaults(c)
	if err := oc.Validate(); err != nil {
		return nil, err
	}
	sc, err := c.SaramaConfig(func(sc *sarama.Config) {
		sc.Consumer.Return.Errors = true
		sc.Consumer.Offsets.Initial = sarama.OffsetOldest
		// Each partition holds its own read-ahead (MaxBytes); sarama's
		// buffers in front of it (256 records a partition and 1 MiB
		// fetches by default) would only add memory.
		sc.ChannelBufferSize = 32
		sc.Consumer.Fetch.Default = 256 << 10
	})
	if err != nil {
		return nil, err
	}
	if spare := sc.Consumer.Group.Heartbeat.Interval + drainSpare; oc.DrainTimeout+spare > sc.Consumer.Group.Rebalance.Timeout {
		return nil, fmt.Errorf("ordered subscriber: DrainTimeout %v and %v to spare exceed the rebalance timeout %v", oc.DrainTimeout, spare, sc.Consumer.Group.Rebalance.Timeout)
	}
	for _, st := range sc.Consumer.Group.Rebalance.GroupStrategies {
		if st.Name() == sarama.CooperativeStickyBalanceStrategyName {
			return nil, errors.New("ordered subscriber: cooperative rebalancing is not supported; use an eager strategy (range, roundrobin, sticky)")
		}
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	group := c.ConsumerGroup
	if group == "" {
		group = "waybill"
	}
	return &OrderedSubscriber{kafka: c, cfg: oc, sarama: sc, group: group, logger: logger, cancels: map[int]context.CancelFunc{}}, nil
}

// drainSpare is what a drain leaves of the rebalance timeout beyond a
// heartbeat interval: time to commit and rejoin.
const drainSpare = 5 * time.Second

// ErrSubscriberClosed is returned by Subscribe after Close.
var ErrSubscriberClosed = errors.New("kafka: subscriber closed")

// Subscribe joins the consumer group for topic and returns the channel its
// messages arrive on. The channel is closed after the subscription ends
// (ctx done, or Close) and its partitions were let go.
func (s *OrderedSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, ErrSubscriberClosed
	}
	// Connecting takes a while; Close must not wait for it under the lock.
	group, err := sarama.NewConsumerGroup(s.kafka.Brokers, s.group, s.sarama)
	if err != nil {
		return nil, s.kafka.Explain("kafka subscriber", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		_ = group.Close()
		return nil, ErrSubscriberClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	id := s.next
	s.next++
	s.cancels[id] = cancel
	out := make(chan *message.Message)
	h := &orderedHandler{s: s, out: out, values: context.WithoutCancel(ctx)}
	s.running.Add(2)
	go func() {
		defer s.running.Done()
		for err := range group.Errors() {
			s.logger.Error("kafka subscriber", err, watermill.LogFields{"topic": topic})
		}
	}()
	go func() {
		defer s.running.Done()
		defer close(out)
		defer group.Close()
		defer func() {
			s.mu.Lock()
			delete(s.cancels, id)
			s.mu.Unlock()
			cancel()
		}()
		s.consume(ctx, group, topic, h)
	}()
	return out, nil
}

// consume runs consumer-group sessions until ctx ends. A session ends at
// every rebalance; one that ends at once again and again must not spin.
func (s *OrderedSubscriber) consume(ctx context.Context, group sarama.ConsumerGroup, topic string, h sarama.ConsumerGroupHandler) {
	for ctx.Err() == nil {
		start := time.Now()
		err := group.Consume(ctx, []string{topic}, h)
		if errors.Is(err, sarama.ErrClosedConsumerGroup) || ctx.Err() != nil {
			return
		}
		if err != nil {
			s.logger.Error("kafka subscriber: consume", err, watermill.LogFields{"topic": topic})
		}
		if time.Since(start) < time.Second && wait.Sleep(ctx, time.Second) != nil {
			return
		}
	}
}

// Close ends every subscription, letting each partition's messages in
// flight finish within DrainTimeout, and returns when all are let go.
func (s *OrderedSubscriber) Close() error {
	s.mu.Lock()
	s.closed = true
	for _, cancel := range s.cancels {
		cancel()
	}
	s.mu.Unlock()
	s.running.Wait() // a second Close waits too
	return nil
}

// orderedHandler is one subscription as sarama's ConsumerGroupHandler.
type orderedHandler struct {
	s      *OrderedSubscriber
	out    chan *message.Message
	values context.Context // the Subscribe context's values, never cancelled
}

func (*orderedHandler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (*orderedHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }

// ConsumeClaim serves one partition until it is revoked or the session
// ends. It must not return before: sarama ends the whole session when a
// claim's handler returns on its own.
func (h *orderedHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	p := newPartition(h, sess, claim)
	defer p.stop()
	p.run()
	return nil
}
