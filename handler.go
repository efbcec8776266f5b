package waybill

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/waybillkit/waybill/wechat"
)

// Default topic names.
const (
	DefaultInputTopic      = "order.shipped"
	DefaultTracedTopic     = "waybill.traced"
	DefaultDeadLetterTopic = "order.shipped.dead"
)

// Tracer is the one WeChat call the handler makes. *wechat.Client satisfies
// it; tests may pass their own.
type Tracer interface {
	TraceWaybill(ctx context.Context, appid string, req *wechat.TraceWaybillRequest) (*wechat.TraceWaybillResponse, error)
}

// Config configures a Handler. Client and Publisher are required; every
// other field has a default, documented on it.
type Config struct {
	// Client calls WeChat. Required.
	Client Tracer
	// Publisher publishes waybill.traced events and dead letters. Required.
	// With Kafka, build it with NewMarshaler so output is keyed by order id.
	Publisher message.Publisher

	// InputTopic is the topic the handler consumes; it is recorded in dead
	// letters so a replay knows where to send them. "" means
	// DefaultInputTopic.
	InputTopic string
	// TracedTopic: "" means DefaultTracedTopic.
	TracedTopic string
	// DeadLetterTopic: "" means DefaultDeadLetterTopic.
	DeadLetterTopic string

	// Decode turns a message into an OrderShipped. Nil means DecodeJSON, the
	// order.shipped schema. Plug in your own for your own event shape.
	Decode DecodeFunc
	// Classify maps a failed call's error to a wechat.Class. Nil means
	// wechat.ClassOf.
	Classify func(err error) wechat.Class
	// Retry holds the timing of the default decision table.
	Retry RetryPolicy
	// Decide maps a failed call to an action. Nil means Retry.Decide.
	Decide DecideFunc
	// Backoff is the wait before retry number attempt (1-based) of a
	// transient fault. Nil means DefaultBackoff.
	Backoff func(attempt int) time.Duration
	// Breaker configures the per-appid circuit breakers.
	Breaker BreakerConfig
	// Parking, when set, moves events that must wait (ActionPark) to delay
	// topics on Publisher and acknowledges them, so their partition flows on;
	// run a DelayRunner to bring them back. Nil means such events wait in
	// place, holding their partition: fine when one appid's traffic is all
	// there is, wrong for a service provider's mixed topic.
	Parking *ParkingConfig

	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// Logger: nil means no logging. Phone numbers, secrets and tokens are
	// never logged.
	Logger watermill.LoggerAdapter
}

func (c *Config) setDefaults() {
	if c.InputTopic == "" {
		c.InputTopic = DefaultInputTopic
	}
	if c.TracedTopic == "" {
		c.TracedTopic = DefaultTracedTopic
	}
	if c.DeadLetterTopic == "" {
		c.DeadLetterTopic = DefaultDeadLetterTopic
	}
	if c.Decode == nil {
		c.Decode = DecodeJSON
	}
	if c.Classify == nil {
		c.Classify = wechat.ClassOf
	}
	c.Retry.setDefaults()
	if c.Parking != nil {
		p := *c.Parking // the caller's value stays theirs
		p.setDefaults(c.InputTopic)
		c.Parking = &p
	}
	if c.Decide == nil {
		c.Decide = c.Retry.Decide
	}
	if c.Backoff == nil {
		c.Backoff = DefaultBackoff
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = watermill.NopLogger{}
	}
}

// Validate reports a configuration that cannot work.
func (c *Config) Validate() error {
	var errs []error
	if c.Client == nil {
		errs = append(errs, errors.New("Client is required"))
	}
	if c.Publisher == nil {
		errs = append(errs, errors.New("Publisher is required"))
	}
	if c.InputTopic == c.TracedTopic || c.InputTopic == c.DeadLetterTopic {
		errs = append(errs, fmt.Errorf("input topic %q must differ from the output topics", c.InputTopic))
	}
	if c.Parking != nil {
		if err := c.Parking.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("waybill config: %w", errors.Join(errs...))
	}
	return nil
}

// Handler turns order.shipped messages into trace_waybill calls and publishes
// the outcome. It is a Watermill NoPublishHandlerFunc (Handle) and is safe
// for concurrent use by many subscribers.
//
// Guarantee: every message Handle acknowledges has been published either as
// waybill.traced or as a dead letter first. Handle returns an error (the
// router nacks, and the message is redelivered) only when publishing failed
// or the router is shutting down, never for a WeChat fault: transient faults
// are retried in place, and quota or not-yet answers wait for their time.
type Handler struct {
	cfg      Config
	results  results
	breakers *breakers
	stats    counters
}

// NewHandler validates cfg and builds a Handler.
func NewHandler(cfg Config) (*Handler, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Handler{
		cfg:      cfg,
		results:  results{pub: cfg.Publisher, tracedTopic: cfg.TracedTopic, deadTopic: cfg.DeadLetterTopic},
		breakers: newBreakers(cfg.Breaker),
	}, nil
}

// AddTo registers the handler on router, consuming the input topic from sub.
func (h *Handler) AddTo(router *message.Router, sub message.Subscriber) *message.Handler {
	return router.AddConsumerHandler("waybill_trace", h.cfg.InputTopic, sub, h.Handle)
}

// Handle processes one message. See Handler for the guarantee.
func (h *Handler) Handle(msg *message.Message) error {
	ctx := msg.Context()
	st := newDelivery(msg, h.cfg.InputTopic)

	ev, err := h.cfg.Decode(msg)
	if err == nil {
		err = ev.Validate()
	}
	if err != nil {
		h.cfg.Logger.Info("dead-lettering invalid event", watermill.LogFields{"uuid": msg.UUID, "reason": err.Error()})
		now := h.cfg.Now()
		key := ""
		if ev != nil {
			key = ev.OrderID
		}
		return h.deadLetter(msg, key, st.deadLetter(ReasonInvalidEvent, nil, err.Error(), now))
	}
	fields := watermill.LogFields{"appid": ev.AppID, "order_id": ev.OrderID, "waybill_id": ev.WaybillID}

	req := ev.TraceRequest()
	for {
		st.attempts++
		resp, callErr := h.breakers.execute(ev.AppID, func() (*wechat.TraceWaybillResponse, error) {
			return h.cfg.Client.TraceWaybill(ctx, ev.AppID, req)
		})
		if callErr == nil {
			out := &WaybillTraced{
				Version: SchemaVersion, OrderID: ev.OrderID, AppID: ev.AppID, OpenID: ev.OpenID,
				WaybillID: ev.WaybillID, DeliveryID: ev.DeliveryID, WaybillToken: resp.WaybillToken,
				TracedAt: h.cfg.Now().UTC(),
			}
			if err := h.results.traced(ev, out); err != nil {
				return err
			}
			h.stats.traced.Add(1)
			return nil
		}
		if ctx.Err() != nil {
			// Shutting down: leave the message unacknowledged for redelivery.
			return fmt.Errorf("trace_waybill order %s: %w", ev.OrderID, ctx.Err())
		}
		now := h.cfg.Now()
		st.failed(now)
		class := h.cfg.Classify(callErr)
		d := h.cfg.Decide(callErr, class, st.attempts, now)
		logFields := fields.Add(watermill.LogFields{"attempt": st.attempts, "class": class.String(), "action": d.Action.String(), "err": callErr.Error()})
		switch d.Action {
		case ActionDeadLetter:
			h.cfg.Logger.Info("dead-lettering event", logFields)
			return h.deadLetter(msg, ev.OrderID, st.deadLetter(d.Reason, callErr, "", now))
		case ActionPark:
			if h.cfg.Parking != nil {
				parked, err := h.park(msg, st, d.Until, d.Window, now)
				if err != nil {
					return err
				}
				if parked {
					h.cfg.Logger.Info("parked event", logFields.Add(watermill.LogFields{"until": d.Until}))
					h.stats.parked.Add(1)
					return nil
				}
				h.cfg.Logger.Info("dead-lettering event parked too often", logFields)
				return h.deadLetter(msg, ev.OrderID, st.deadLetter(ReasonTooManyAttempts, callErr, "", now))
			}
			h.cfg.Logger.Info("waiting before the next attempt", logFields.Add(watermill.LogFields{"until": d.Until}))
			h.stats.waits.Add(1)
			if err := sleepUntil(ctx, h.cfg.Now, d.Until); err != nil {
				return fmt.Errorf("trace_waybill order %s: %w", ev.OrderID, err)
			}
		default:
			h.cfg.Logger.Debug("retrying after transient fault", logFields)
			h.stats.retries.Add(1)
			if err := sleepFor(ctx, h.cfg.Backoff(st.attempts)); err != nil {
				return fmt.Errorf("trace_waybill order %s: %w", ev.OrderID, err)
			}
		}
	}
}

// deadLetter publishes a dead letter and counts it.
func (h *Handler) deadLetter(msg *message.Message, key string, d *DeadLetter) error {
	if err := h.results.dead(msg, key, d); err != nil {
		return err
	}
	h.stats.dead.Add(1)
	return nil
}

// Stats counts what the handler did since it was built.
type Stats struct {
	Traced       int64 // waybill.traced events published
	DeadLettered int64 // dead letters published
	Retries      int64 // in-place retries after transient faults
	Waits        int64 // in-place waits for a later time (quota, rate, not-yet, breaker)
	Parked       int64 // events moved to a delay topic
}

type counters struct{ traced, dead, retries, waits, parked atomic.Int64 }

// Stats returns a snapshot of the handler's counters.
func (h *Handler) Stats() Stats {
	return Stats{
		Traced: h.stats.traced.Load(), DeadLettered: h.stats.dead.Load(),
		Retries: h.stats.retries.Load(), Waits: h.stats.waits.Load(), Parked: h.stats.parked.Load(),
	}
}

// delivery is the history of one event: where it came from and how often it
// failed, including earlier deliveries recorded in its headers.
type delivery struct {
	topic        string
	partition    int32
	offset       int64
	attempts     int
	firstFailure time.Time
	lastFailure  time.Time
}

func newDelivery(msg *message.Message, topic string) *delivery {
	d := &delivery{topic: topic, partition: -1, offset: -1}
	if p, ok := kafka.MessagePartitionFromCtx(msg.Context()); ok {
		d.partition = p
	}
	if o, ok := kafka.MessagePartitionOffsetFromCtx(msg.Context()); ok {
		d.offset = o
	}
	if n, err := strconv.Atoi(msg.Metadata.Get(HeaderAttempts)); err == nil && n > 0 {
		d.attempts = n
	}
	if t, err := time.Parse(time.RFC3339Nano, msg.Metadata.Get(HeaderFirstFailure)); err == nil {
		d.firstFailure = t
	}
	return d
}

func (d *delivery) failed(now time.Time) {
	if d.firstFailure.IsZero() {
		d.firstFailure = now
	}
	d.lastFailure = now
}

func (d *delivery) deadLetter(reason Reason, callErr error, errmsg string, now time.Time) *DeadLetter {
	d.failed(now)
	dl := &DeadLetter{
		Reason: reason, Errmsg: errmsg, Attempts: d.attempts,
		SourceTopic: d.topic, SourcePartition: d.partition, SourceOffset: d.offset,
		FirstFailure: d.firstFailure, LastFailure: d.lastFailure,
	}
	var we *wechat.Error
	if errors.As(callErr, &we) {
		dl.HasErrcode, dl.Errcode, dl.Errmsg = true, we.Code, we.Msg
	} else if callErr != nil {
		dl.Errmsg = callErr.Error()
	}
	return dl
}

func sleepFor(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func sleepUntil(ctx context.Context, now func() time.Time, until time.Time) error {
	return sleepFor(ctx, until.Sub(now()))
}
