package waybill

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
)

// Parking moves an event that cannot succeed now but can later (quota spent,
// 45011, 931023, its appid's breaker open) off the hot partition: the handler
// publishes it to a delay topic with the time it may run again and
// acknowledges the input, so the events behind it flow on. A DelayRunner
// republishes it to the input topic when due.
//
// One delay topic with mixed due times would block behind its head: an event
// parked until midnight would hold back one due in a minute. So each delay
// topic is a tier with one fixed delay, in which due order equals arrival
// order, plus one tier for "the next quota window", whose due time (the next
// reset) only grows with arrival time. An event goes to the shortest tier that
// waits at least as long as it must; one that must wait longer than the
// longest tier goes round it again.
//
// Per-order ordering: a parked event leaves its partition, so a later event
// of the same order can overtake it. waybill publishes one trace per order, so
// this matters only to producers that publish several events per order.
type ParkingConfig struct {
	// Tiers are the fixed delays, ascending. Nil means 1 min, 10 min, 1 h.
	Tiers []time.Duration
	// TopicPrefix names the delay topics: prefix + tier (e.g.
	// "order.shipped.delay.10m0s") and prefix + "window". "" means the input
	// topic + ".delay.".
	TopicPrefix string
	// MaxParks bounds how often one event is parked for a quota answer
	// (45009, 45011) or 931023; then it is dead-lettered with
	// ReasonTooManyAttempts and its history. Parks that wait out a
	// transient state (a fault's backoff, an open breaker, the wait budget)
	// do not count: such an event is never dead-lettered. Zero means 200.
	MaxParks int
}

// Headers of a parked event, besides HeaderAttempts and HeaderFirstFailure.
const (
	HeaderDueAt      = "waybill_due_at"      // RFC 3339: when it may run again
	HeaderParkedFrom = "waybill_parked_from" // the topic to return it to
	HeaderParks      = "waybill_parks"       // how often it was parked
	HeaderParkedKey  = "waybill_parked_key"  // the order id: the parked copy's partition key
	// HeaderNotBefore is the earliest time the event may call WeChat again,
	// when that is later than its due time (it must wait longer than the
	// longest tier): back early, it is parked again without a call.
	HeaderNotBefore = "waybill_not_before"
	// HeaderNotYet counts WeChat's 931023 answers for the event, for the
	// bound RetryPolicy.NotYetAttempts.
	HeaderNotYet = "waybill_not_yet"
	// HeaderRetries counts the event's transient and token failures, so its
	// backoff keeps growing across parks.
	HeaderRetries = "waybill_retries"
	// HeaderTokenFailures counts its token failures, for
	// RetryPolicy.TokenAttempts across parks.
	HeaderTokenFailures = "waybill_token_failures"
)

func (c *ParkingConfig) setDefaults(input string) {
	if c.Tiers == nil {
		c.Tiers = []time.Duration{time.Minute, 10 * time.Minute, time.Hour}
	}
	if c.TopicPrefix == "" {
		c.TopicPrefix = input + ".delay."
	}
	if c.MaxParks == 0 {
		c.MaxParks = 200
	}
}

// Validate reports a configuration that cannot work. Zero fields mean their
// defaults.
func (c *ParkingConfig) Validate() error {
	if c.MaxParks < 0 {
		return fmt.Errorf("parking MaxParks %d must not be negative", c.MaxParks)
	}
	if c.Tiers == nil {
		return nil // the defaults
	}
	for i, d := range c.Tiers {
		if d <= 0 {
			return fmt.Errorf("parking tier %d: delay %s must be positive", i, d)
		}
		if i > 0 && d <= c.Tiers[i-1] {
			return fmt.Errorf("parking tiers must ascend: %s after %s", d, c.Tiers[i-1])
		}
	}
	if len(c.Tiers) == 0 {
		return errors.New("parking needs at least one tier")
	}
	return nil
}

// Topics lists every delay topic, for creating them and for a DelayRunner.
func (c ParkingConfig) Topics(input string) []string {
	c.setDefaults(input)
	out := make([]string, 0, len(c.Tiers)+1)
	for _, d := range c.Tiers {
		out = append(out, c.TopicPrefix+d.String())
	}
	return append(out, c.TopicPrefix+"window")
}

// route picks the delay topic and due time for an event that must wait until
// until. window marks "the next quota window".
func (c *ParkingConfig) route(now, until time.Time, window bool) (topic string, due time.Time) {
	if window {
		return c.TopicPrefix + "window", until
	}
	wait := until.Sub(now)
	for _, d := range c.Tiers {
		if d >= wait {
			return c.TopicPrefix + d.String(), now.Add(d)
		}
	}
	last := c.Tiers[len(c.Tiers)-1]
	return c.TopicPrefix + last.String(), now.Add(last)
}

// park publishes the event to its delay topic. The payload and the original
// headers travel untouched; the history headers are updated, and the copy
// is keyed by its order id (HeaderParkedKey), so that parked events spread
// over the delay topic's partitions whatever their producer set.
//
// counts says whether this park is a step towards MaxParks: parks for
// quota answers are; parks that wait out a transient state (a fault's
// backoff, an open breaker, the wait budget, a copy back early) are not.
func (d *delivery) park(until time.Time, window, counts bool, now time.Time) (parked bool, err error) {
	p, msg := d.h.cfg.Parking, d.msg
	parks, _ := strconv.Atoi(msg.Metadata.Get(HeaderParks))
	if counts && parks >= p.MaxParks {
		return false, nil
	}
	if counts {
		parks++
	}
	topic, due := p.route(now, until, window)
	out := message.NewMessage(msg.UUID, msg.Payload)
	out.Metadata = make(message.Metadata, len(msg.Metadata)+6)
	for k, v := range msg.Metadata {
		out.Metadata[k] = v
	}
	out.Metadata.Set(HeaderParkedKey, d.ev.OrderID)
	out.Metadata.Set(HeaderAttempts, strconv.Itoa(d.hist.attempts))
	out.Metadata.Set(HeaderFirstFailure, d.hist.firstFailure.UTC().Format(time.RFC3339Nano))
	out.Metadata.Set(HeaderDueAt, due.UTC().Format(time.RFC3339Nano))
	out.Metadata.Set(HeaderParkedFrom, d.h.cfg.InputTopic)
	out.Metadata.Set(HeaderParks, strconv.Itoa(parks))
	if n := d.hist.notYet; n > 0 {
		out.Metadata.Set(HeaderNotYet, strconv.Itoa(n))
	}
	if n := d.hist.retries; n > 0 {
		out.Metadata.Set(HeaderRetries, strconv.Itoa(n))
	}
	if n := d.hist.tokens; n > 0 {
		out.Metadata.Set(HeaderTokenFailures, strconv.Itoa(n))
	}
	// Always: a DelayRunner whose clock runs ahead must not make the call
	// early; the handler checks its own clock.
	out.Metadata.Set(HeaderNotBefore, until.UTC().Format(time.RFC3339Nano))
	if err := d.h.cfg.Publisher.Publish(topic, out); err != nil {
		// The redelivery must not call before until either, and parks it
		// the way this park meant to.
		if until.After(d.hist.notBefore) {
			d.hist.notBefore = until
		}
		d.hist.parkWindow, d.hist.parkCounts = window, counts
		d.remember(nil)
		return false, fmt.Errorf("park %s on %s: %w", msg.UUID, topic, err)
	}
	d.forget()
	return true, nil
}

// repark parks an event that came back before its not-before time.
func (d *delivery) repark(now time.Time) error {
	parked, err := d.park(d.hist.notBefore, d.hist.parkWindow, d.hist.parkCounts, now)
	if err != nil {
		return err
	}
	if parked {
		d.h.stats.parked.Add(1)
		return nil
	}
	return d.deadLetter(d.hist.deadLetter(d.src, ReasonTooManyAttempts, nil, "parked too often", now))
}

// parkOrDeadLetter parks the event until dec.Until, or dead-letters it with
// its history when it was parked MaxParks times already.
func (d *delivery) parkOrDeadLetter(dec Decision, callErr error, now time.Time, logFields watermill.LogFields, counts bool) error {
	d.hist.failed(now)
	parked, err := d.park(dec.Until, dec.Window, counts, now)
	if err != nil {
		return err
	}
	if parked {
		d.h.cfg.Logger.Info("parked event", logFields.Add(watermill.LogFields{"until": dec.Until}))
		d.h.stats.parked.Add(1)
		return nil
	}
	d.h.cfg.Logger.Info("dead-lettering event parked too often", logFields)
	return d.deadLetter(d.hist.deadLetter(d.src, ReasonTooManyAttempts, callErr, "", now))
}

// DelayRunnerConfig configures a DelayRunner.
type DelayRunnerConfig struct {
	// Kafka reaches the cluster. ConsumerGroup "" means "waybill-delay"; it
	// must not be the handler's group, or each would rebalance the other.
	Kafka KafkaConfig
	// Topics are the delay topics to serve: ParkingConfig.Topics(input).
	Topics []string
	// Publisher republishes due events to their input topic. Required.
	Publisher message.Publisher
	// InputTopic is where a parked record without HeaderParkedFrom is
	// returned, and the source named in the dead letter of one that cannot
	// be read, so that a replay sends it where the handler validates it. ""
	// means DefaultInputTopic.
	InputTopic string
	// DeadLetterTopic receives parked records that cannot be returned (not
	// decodable), so they never stall the records behind them and are never
	// lost. "" means DefaultDeadLetterTopic.
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
	returned  sync.Map // topic → *atomicCounter, for tests and metrics
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
		cfg.InputTopic = DefaultInputTopic
	}
	if cfg.DeadLetterTopic == "" {
		cfg.DeadLetterTopic = DefaultDeadLetterTopic
	}
	sc := cfg.Kafka.sarama()
	sc.Consumer.Offsets.Initial = sarama.OffsetOldest
	// Commit exactly what was republished, nothing ahead of it.
	sc.Consumer.Offsets.AutoCommit.Enable = false
	group, err := sarama.NewConsumerGroup(cfg.Kafka.Brokers, cfg.Kafka.ConsumerGroup, sc)
	if err != nil {
		return nil, fmt.Errorf("delay runner: %w", err)
	}
	return &DelayRunner{cfg: cfg, group: group, unmarshal: NewMarshaler().Unmarshal}, nil
}

// Run serves the delay topics until ctx ends, then closes the runner.
func (r *DelayRunner) Run(ctx context.Context) error {
	defer r.group.Close()
	for ctx.Err() == nil {
		start := time.Now()
		err := r.group.Consume(ctx, r.cfg.Topics, r)
		if errors.Is(err, sarama.ErrClosedConsumerGroup) || ctx.Err() != nil {
			break
		}
		if err != nil {
			r.cfg.Logger.Error("delay runner: consume", err, nil)
		}
		// A session ends on every rebalance; one that ends at once again
		// and again must not spin.
		if time.Since(start) < time.Second && sleepFor(ctx, time.Second) != nil {
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

// Setup is part of sarama.ConsumerGroupHandler.
func (r *DelayRunner) Setup(sarama.ConsumerGroupSession) error { return nil }

// Cleanup is part of sarama.ConsumerGroupHandler.
func (r *DelayRunner) Cleanup(sarama.ConsumerGroupSession) error { return nil }

// ConsumeClaim is part of sarama.ConsumerGroupHandler: it serves one
// partition, waiting for each event's due time in turn.
func (r *DelayRunner) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	ctx := sess.Context()
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
	dest := msg.Metadata.Get(HeaderParkedFrom)
	if dest == "" {
		dest = r.cfg.InputTopic
	}
	due, err := time.Parse(time.RFC3339Nano, msg.Metadata.Get(HeaderDueAt))
	if err != nil {
		due = time.Time{} // no due time: return it at once rather than lose it
	}
	for wait := due.Sub(r.cfg.Now()); wait > 0; wait = due.Sub(r.cfg.Now()) {
		if err := sleepFor(ctx, min(wait, r.cfg.Recheck)); err != nil {
			return err
		}
	}
	out := message.NewMessage(msg.UUID, msg.Payload)
	out.Metadata = msg.Metadata
	delete(out.Metadata, HeaderDueAt)
	delete(out.Metadata, HeaderParkedFrom)
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
	dl := &DeadLetter{
		Reason: ReasonInvalidEvent, Errmsg: fmt.Sprintf("parked record %s/%d/%d: %s", rec.Topic, rec.Partition, rec.Offset, cause),
		SourceTopic: r.cfg.InputTopic, SourcePartition: -1, SourceOffset: -1,
		FirstFailure: now, LastFailure: now,
	}
	out := message.NewMessage(msg.UUID, msg.Payload)
	out.Metadata = msg.Metadata
	dl.setHeaders(out.Metadata)
	return r.publish(ctx, r.cfg.DeadLetterTopic, out)
}

// publish retries until the message is published or ctx ends.
func (r *DelayRunner) publish(ctx context.Context, topic string, msg *message.Message) error {
	for attempt := 1; ; attempt++ {
		err := r.cfg.Publisher.Publish(topic, msg)
		if err == nil {
			return nil
		}
		r.cfg.Logger.Error("delay runner: publish", err, watermill.LogFields{"topic": topic, "uuid": msg.UUID, "attempt": attempt})
		if err := sleepFor(ctx, DefaultBackoff(attempt)); err != nil {
			return err
		}
	}
}

type counter struct{ n atomic.Int64 }
