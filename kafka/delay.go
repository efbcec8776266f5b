package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/wait"
)

// DelayRunnerConfig configures a DelayRunner.
type DelayRunnerConfig struct {
	// Kafka reaches the cluster. ConsumerGroup "" means "waybill-delay"; it
	// must not be the handler's group, or each would rebalance the other.
	Kafka Config
	// Topics are the delay topics to serve: the Handler's
	// waybill.ParkingConfig.Topics(input).
	Topics []string
	// Publisher republishes due events to their input topic. Required.
	Publisher message.Publisher
	// InputTopic is where a parked record without deadletter.HeaderParkedFrom is
	// returned, and the source named in the dead letter of one that cannot
	// be read, so that a replay sends it where the handler validates it. ""
	// means event.OrderShippedTopic.
	InputTopic string
	// DeadLetterTopic receives parked records that cannot be returned (not
	// decodable), so they never stall the records behind them and are never
	// lost. "" means deadletter.DefaultTopic.
	DeadLetterTopic string
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// Recheck bounds one sleep: the runner looks at the clock again at
	// least this often, so that a clock step (an NTP correction, a test's
	// controllable clock) is noticed. Zero means 1 min.
	Recheck time.Duration
	// Logger: nil means none.
	Logger watermill.LoggerAdapter
}

// DelayRunner returns parked events to their input topic when they are due.
// Each partition of each tier is served on its own, so an event due later
// never holds back one due earlier elsewhere; within a partition due order is
// arrival order, so it waits for the head only. A parked event is committed
// only after it was republished: a crash republishes it again (at-least-once),
// never loses it. While waiting it holds no busy loop: one timer per
// partition.
type DelayRunner struct {
	cfg   DelayRunnerConfig
	group sarama.ConsumerGroup
	// unmarshal converts records to Watermill messages, as the subscriber
	// does, so headers and UUID round-trip.
	unmarshal func(*sarama.ConsumerMessage) (*message.Message, error)
	returned  sync.Map // topic → *counter, for tests and metrics
}

// NewDelayRunner connects to Kafka.
func NewDelayRunner(cfg DelayRunnerConfig) (*DelayRunner, error) {
	if cfg.Publisher == nil {
		return nil, errors.New("delay runner: Publisher is required")
	}
	if len(cfg.Topics) == 0 {
		return nil, errors.New("delay runner: no Topics")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Recheck == 0 {
		cfg.Recheck = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = watermill.NopLogger{}
	}
	if cfg.Kafka.ConsumerGroup == "" {
		cfg.Kafka.ConsumerGroup = "waybill-delay"
	}
	if cfg.InputTopic == "" {
		cfg.InputTopic = event.OrderShippedTopic
	}
	if cfg.DeadLetterTopic == "" {
		cfg.DeadLetterTopic = deadletter.DefaultTopic
	}
	sc, err := cfg.Kafka.SaramaConfig(func(sc *sarama.Config) {
		sc.Consumer.Offsets.Initial = sarama.OffsetOldest
		// Commit exactly what was republished, nothing ahead of it.
		sc.Consumer.Offsets.AutoCommit.Enable = false
	})
	if err != nil {
		return nil, fmt.Errorf("delay runner: %w", err)
	}
	group, err := sarama.NewConsumerGroup(cfg.Kafka.Brokers, cfg.Kafka.ConsumerGroup, sc)
	if err != nil {
		return nil, cfg.Kafka.Explain("delay runner", err)
	}
	return &DelayRunner{cfg: cfg, group: group, unmarshal: NewMarshaler().Unmarshal}, nil
}

// Run serves the delay topics until ctx ends, then closes the runner.
func (r *DelayRunner) Run(ctx context.Context) error {
	defer r.group.Close()
	for ctx.Err() == nil {
		start := time.Now()
		err := r.group.Consume(ctx, r.cfg.Topics, delayHandler{r})
		if errors.Is(err, sarama.ErrClosedConsumerGroup) || ctx.Err() != nil {
			break
		}
		if err != nil {
			r.cfg.Logger.Error("delay runner: consume", err, nil)
		}
		// A session ends on every rebalance; one that ends at once again
		// and again must not spin.
		if time.Since(start) < time.Second && wait.Sleep(ctx, time.Second) != nil {
			break
		}
	}
	return nil
}

// Returned reports how many events were returned from topic.
func (r *DelayRunner) Returned(topic string) int64 {
	if v, ok := r.returned.Load(topic); ok {
		return v.(*counter).n.Load()
	}
	return 0
}

// delayHandler is the runner as sarama's ConsumerGroupHandler.
type delayHandler struct{ r *DelayRunner }

func (delayHandler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (delayHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }

// ConsumeClaim serves one partition, waiting for each event's due time in
// turn.
func (h delayHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	r, ctx := h.r, sess.Context()
	for {
		select {
		case <-ctx.Done():
			return nil
		case rec, ok := <-claim.Messages():
			if !ok {
				return nil
			}
			if err := r.release(ctx, rec); err != nil {
				// Not committed: the next session (after a rebalance, or a
				// restart) starts from this record.
				return nil
			}
			sess.MarkMessage(rec, "")
			sess.Commit()
		}
	}
}

// release waits until rec is due and returns it to its input topic. It
// returns an error only when ctx ended first; a failing publisher is retried
// with backoff, and a record that cannot be decoded is dead-lettered, so
// that it never stalls the partition behind it.
func (r *DelayRunner) release(ctx context.Context, rec *sarama.ConsumerMessage) error {
	msg, err := r.unmarshal(rec)
	if err != nil {
		return r.reject(ctx, rec, msg, err)
	}
	dest, due := deadletter.Unpark(msg.Metadata)
	if dest == "" {
		dest = r.cfg.InputTopic
	}
	for left := due.Sub(r.cfg.Now()); left > 0; left = due.Sub(r.cfg.Now()) {
		if err := wait.Sleep(ctx, min(left, r.cfg.Recheck)); err != nil {
			return err
		}
	}
	out := message.NewMessage(msg.UUID, msg.Payload)
	out.Metadata = msg.Metadata
	if err := r.publish(ctx, dest, out); err != nil {
		return err
	}
	c, _ := r.returned.LoadOrStore(rec.Topic, &counter{})
	c.(*counter).n.Add(1)
	return nil
}

// reject dead-letters a parked record that cannot be returned and moves
// past it. The dead letter names the input topic as its source, so that a
// replay sends it back to the handler, which validates it, rather than to
// the delay topic that rejected it; the delay topic's partition and offset
// travel in its errmsg.
func (r *DelayRunner) reject(ctx context.Context, rec *sarama.ConsumerMessage, msg *message.Message, cause error) error {
	fields := watermill.LogFields{"topic": rec.Topic, "partition": rec.Partition, "offset": rec.Offset}
	r.cfg.Logger.Error("delay runner: parked record cannot be returned", cause, fields)
	if msg == nil {
		msg = message.NewMessage(string(rec.Key), rec.Value)
	}
	now := r.cfg.Now()
	dl := &deadletter.Letter{
		Reason: deadletter.ReasonInvalidEvent, Errmsg: fmt.Sprintf("parked record %s/%d/%d: %s", rec.Topic, rec.Partition, rec.Offset, cause),
		SourceTopic: r.cfg.InputTopic, SourcePartition: -1, SourceOffset: -1,
		FirstFailure: now, LastFailure: now,
	}
	return r.publish(ctx, r.cfg.DeadLetterTopic, dl.Message(msg, "", 0))
}

// publish retries until the message is published or ctx ends.
func (r *DelayRunner) publish(ctx context.Context, topic string, msg *message.Message) error {
	for attempt := 1; ; attempt++ {
		err := r.cfg.Publisher.Publish(topic, msg)
		if err == nil {
			return nil
		}
		r.cfg.Logger.Error("delay runner: publish", err, watermill.LogFields{"topic": topic, "uuid": msg.UUID, "attempt": attempt})
		if err := wait.Sleep(ctx, wait.Backoff(attempt)); err != nil {
			return err
		}
	}
}

type counter struct{ n atomic.Int64 }
