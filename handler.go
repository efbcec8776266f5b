package waybill

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/ratelimit"
	"github.com/waybillkit/waybill/tracestore"
	"github.com/waybillkit/waybill/wechat"
)

// Tracer is the WeChat calls the handler makes. *wechat.Client satisfies
// it; tests may pass their own.
type Tracer interface {
	TraceWaybill(ctx context.Context, appid string, req *wechat.TraceWaybillRequest) (*wechat.TraceWaybillResponse, error)
	// UpdateWaybillGoods is called, with Config.TraceStore set, when an event
	// for an already traced waybill carries other goods.
	UpdateWaybillGoods(ctx context.Context, appid string, req *wechat.UpdateWaybillGoodsRequest) error
}

// Config configures a Handler. Client and Publisher are required; every
// other field has a default, documented on it.
type Config struct {
	// Client calls WeChat. Required.
	Client Tracer
	// Publisher publishes waybill.traced events, dead letters and parked
	// copies. Required. With Kafka, build it with kafka.NewPublisher (or
	// kafka.NewMarshaler) so output is keyed by order id. Every message
	// published carries the input's context (Message.Context), so that a
	// publisher can join the transaction the input was consumed in: with
	// package postgres, an outcome and the input's acknowledgement commit
	// together.
	Publisher message.Publisher

	// InputTopic is the topic the handler consumes; it is recorded in dead
	// letters so a replay knows where to send them. "" means
	// event.OrderShippedTopic.
	InputTopic string
	// TracedTopic: "" means event.WaybillTracedTopic.
	TracedTopic string
	// DeadLetterTopic: "" means deadletter.DefaultTopic.
	DeadLetterTopic string
	// Position returns where msg was consumed: its partition and offset,
	// ok false when the transport has none. Dead letters name the record
	// by it, so an operator can find the original, and it tells one
	// record's redeliveries from another record's. Nil means none: dead
	// letters carry partition and offset -1, and a message is known by its
	// UUID. With Kafka, use kafka.Position.
	Position func(msg *message.Message) (partition int32, offset int64, ok bool)

	// Decode turns a message into an event.OrderShipped. Nil means
	// event.DecodeJSON, the order.shipped schema. Plug in your own for your
	// own event shape.
	Decode event.DecodeFunc
	// MaxEventBytes bounds an input message's payload: a larger one is
	// dead-lettered as invalid_event before it is decoded. Zero means
	// DefaultMaxEventBytes.
	MaxEventBytes int
	// MaxDeadLetterBytes bounds a dead letter as published (payload plus
	// headers): a larger one is published reduced, its payload (and, if
	// still too large, its foreign headers) dropped and named in
	// deadletter.HeaderDeadDropped, so that an event the dead-letter topic cannot take
	// never stalls its partition. The source topic, partition and offset
	// still locate the original. Zero means DefaultMaxDeadLetterBytes; keep
	// it under the producer's MaxMessageBytes and the topic's
	// max.message.bytes.
	MaxDeadLetterBytes int
	// Classify maps a failed call's error to a wechat.Class. Nil means
	// wechat.ClassOf.
	Classify func(err error) wechat.Class
	// Retry holds the timing of the default decision table.
	Retry RetryPolicy
	// Decide maps a failed call to a Verdict. Nil means Retry.Decide.
	Decide DecideFunc
	// Backoff is the wait before retry number attempt (1-based) of a
	// transient fault. Nil means DefaultBackoff.
	Backoff func(attempt int) time.Duration
	// Breaker configures the per-appid circuit breakers.
	Breaker BreakerConfig
	// Parking, when set, moves events that must wait (ActionPark) off their
	// partition and acknowledges them, so it flows on: to delay topics on
	// Publisher, which a kafka.DelayRunner brings back, or with
	// ParkingConfig.Delay NativeDelay back to the input topic, held back by
	// the Pub/Sub itself (package postgres). Nil means such events wait in
	// place, holding their partition: fine when one appid's traffic is all
	// there is, wrong for a service provider's mixed topic. Without it the
	// event's history (calls made, 931023 answers, its not-before time) is
	// kept in this Handler's memory across redeliveries, so a redelivered
	// event makes no call before its time; with it the history travels in
	// the parked copy's headers and survives restarts too.
	Parking *ParkingConfig

	// Limiter, when set, is asked before every trace_waybill call: a spent
	// daily quota (the appid's or the buyer's) parks the event until the
	// next window, the smooth rate reserves the call's turn and waits for it
	// within MaxWaitInPlace. Calls WeChat refused without counting, or never
	// received, are refunded, and 45009 marks the appid's day spent. Nil
	// means no local limits: WeChat's own answers still apply.
	Limiter *ratelimit.Limiter
	// GoodsLimiter is Limiter for update_waybill_goods, which WeChat counts
	// under its own path: build it on the same store with another key
	// prefix. Nil means those calls are not limited locally.
	GoodsLimiter *ratelimit.Limiter

	// TraceStore, when set, remembers each waybill's token so that a redelivered
	// or duplicate event republishes the same waybill.traced without calling
	// WeChat (saving the buyer's 100 calls a day), and concurrent duplicates
	// make one call. Use tracestore.NewMemory for one process,
	// tracestore/redis for many. Nil means every event is traced (WeChat
	// answers a repeat with the same token, at the cost of a call).
	TraceStore tracestore.Store
	// ClaimTTL bounds how long a crashed handler's claim on a waybill blocks
	// others. A live handler renews its claim every ClaimTTL/3 for as long
	// as its calls take, so the TTL need not outlast a call; it should stay
	// under MaxWaitInPlace, so that an event waiting on a crashed handler's
	// claim takes it over within its own wait budget. Zero means 15 s.
	ClaimTTL time.Duration
	// ClaimPoll is how often a duplicate waits for the handler that holds the
	// claim. Zero means 100 ms.
	ClaimPoll time.Duration

	// MaxWaitInPlace bounds how long one delivery may hold its partition,
	// whatever it waits for: backoff, a claim, the smooth rate, an open
	// breaker, a quota window, a not-before time, and the WeChat call itself
	// (its deadline is what is left of the budget; a call is not started
	// with less than a fifth of the budget, at most 5 s, left). Rather than
	// wait past it, the event is parked, or without Parking left for
	// redelivery (Handle returns ErrWaitLimit and the router nacks). It keeps
	// a handler from holding its partition through a consumer-group
	// rebalance (sarama's default rebalance timeout is 60 s; watermill-kafka
	// does not cancel a message's context on rebalance). Publishing the
	// outcome comes after it. Zero means 25 s.
	MaxWaitInPlace time.Duration

	// TracerProvider makes the handler's spans: one per delivery ("waybill
	// handle <topic>"), continuing the trace in the input's headers, with a
	// child for each publish, park and dead letter. Nil means
	// otel.GetTracerProvider() (a no-op unless the program set one). Give
	// the wechat.Client the same provider, so that its calls nest under the
	// delivery's span.
	TracerProvider trace.TracerProvider
	// Propagator reads the trace context from input headers and writes it
	// into every message published (traced, dead letters, parked copies),
	// so that a trace follows an order through delay tiers and replays. Nil
	// means W3C Trace Context (traceparent, tracestate).
	Propagator propagation.TextMapPropagator

	// Observe, if not nil, is told what the handler does (see Observation),
	// in the handling goroutine: it must be quick and safe for concurrent
	// use. metrics.New(...).Observe is one.
	Observe func(Observation)

	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// Logger: nil means no logging. Phone numbers, secrets and tokens are
	// never logged.
	Logger watermill.LoggerAdapter
}

// Defaults of Config's size bounds.
const (
	// DefaultMaxEventBytes is far above any real order.shipped (a few KB)
	// and far below Kafka's 1 MB default message size.
	DefaultMaxEventBytes = 64 << 10
	// DefaultMaxDeadLetterBytes leaves room, under sarama's default
	// Producer.MaxMessageBytes (1,000,000), for the record's key and framing.
	DefaultMaxDeadLetterBytes = 900_000
)

func (c *Config) setDefaults() {
	if c.InputTopic == "" {
		c.InputTopic = event.OrderShippedTopic
	}
	if c.TracedTopic == "" {
		c.TracedTopic = event.WaybillTracedTopic
	}
	if c.DeadLetterTopic == "" {
		c.DeadLetterTopic = deadletter.DefaultTopic
	}
	if c.Decode == nil {
		c.Decode = event.DecodeJSON
	}
	if c.MaxEventBytes == 0 {
		c.MaxEventBytes = DefaultMaxEventBytes
	}
	if c.MaxDeadLetterBytes == 0 {
		c.MaxDeadLetterBytes = DefaultMaxDeadLetterBytes
	}
	if c.Classify == nil {
		c.Classify = wechat.ClassOf
	}
	if c.Retry.QuotaReset == nil && c.Limiter != nil {
		// One notion of the daily reset: the window tier's due order
		// relies on it.
		lim := c.Limiter
		c.Retry.QuotaReset = func(t time.Time) time.Time { _, end := lim.Window(t); return end }
		if c.Retry.QuotaWindowStart == nil {
			c.Retry.QuotaWindowStart = func(t time.Time) time.Time { start, _ := lim.Window(t); return start }
		}
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
	if c.ClaimTTL == 0 {
		c.ClaimTTL = 15 * time.Second
	}
	if c.MaxWaitInPlace == 0 {
		c.MaxWaitInPlace = 25 * time.Second
	}
	if c.ClaimPoll == 0 {
		c.ClaimPoll = 100 * time.Millisecond
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
	if c.InputTopic == c.TracedTopic || c.InputTopic == c.DeadLetterTopic || c.TracedTopic == c.DeadLetterTopic {
		errs = append(errs, fmt.Errorf("topics %q, %q and %q must differ", c.InputTopic, c.TracedTopic, c.DeadLetterTopic))
	}
	for name, d := range map[string]time.Duration{
		"ClaimTTL": c.ClaimTTL, "ClaimPoll": c.ClaimPoll, "MaxWaitInPlace": c.MaxWaitInPlace,
		"Retry.NotYetDelay": c.Retry.NotYetDelay, "Retry.BreakerWait": c.Retry.BreakerWait, "Breaker.OpenTimeout": c.Breaker.OpenTimeout,
		"Retry.QuotaGrace": c.Retry.QuotaGrace, "Retry.QuotaSpread": c.Retry.QuotaSpread,
	} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s %s must not be negative", name, d))
		}
	}
	if c.TraceStore != nil && c.ClaimTTL < 3*c.ClaimPoll {
		// Renewed every ClaimTTL/3: a shorter TTL would lapse between renewals
		// on a busy store.
		errs = append(errs, fmt.Errorf("ClaimTTL %s must be at least 3 × ClaimPoll %s", c.ClaimTTL, c.ClaimPoll))
	}
	if c.MaxEventBytes < 0 || c.MaxDeadLetterBytes < 0 {
		errs = append(errs, errors.New("MaxEventBytes and MaxDeadLetterBytes must not be negative"))
	}
	if c.Retry.NotYetAttempts < 0 || c.Retry.TokenAttempts < 0 {
		errs = append(errs, errors.New("Retry attempts must not be negative"))
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
// Guarantee: every message Handle acknowledges has been published first as
// waybill.traced, as a dead letter, or as a parked copy on a delay topic.
// Handle returns an error (the router nacks, and the message is redelivered)
// when publishing failed, the router is shutting down, the trace store or
// the limiter's store failed, or the delivery used up MaxWaitInPlace without
// Parking (ErrWaitLimit) — never to give up on an event: transient faults
// are retried, and quota or not-yet answers wait for their time. A
// redelivered event makes no WeChat call before its not-before time, and an
// outcome that could not be published is published again without a call.
type Handler struct {
	cfg      Config
	results  results
	breakers *breakers
	memo     *memo
	instance string   // tells this handler's claims from other processes'
	active   sync.Map // claim owners of the deliveries in progress
	seq      atomic.Uint64
	stats    counters
	tracing  tracing
}

// NewHandler validates cfg and builds a Handler.
func NewHandler(cfg Config) (*Handler, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	bc := cfg.Breaker
	if bc.IsFailure == nil {
		// The breaker follows the handler's classification, overrides
		// included.
		classify := cfg.Classify
		bc.IsFailure = func(err error) bool {
			return err != nil && !errors.Is(err, context.Canceled) && classify(err) == wechat.ClassTransient
		}
	}
	user := bc.OnStateChange
	bc.OnStateChange = func(key string, from, to gobreaker.State) {
		// Under the breaker's lock: logging is quick and never blocks on it.
		cfg.Logger.Info("circuit breaker state change", watermill.LogFields{"breaker": key, "from": from.String(), "to": to.String()})
		if cfg.Observe != nil {
			cfg.Observe(Observation{Kind: ObservedBreaker, AppID: key, Detail: to.String()})
		}
		if user != nil {
			user(key, from, to)
		}
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	tr := newTracing(cfg.TracerProvider, cfg.Propagator, cfg.InputTopic)
	return &Handler{
		cfg:      cfg,
		tracing:  tr,
		results:  results{tr: tr, pub: cfg.Publisher, tracedSpan: "waybill publish " + cfg.TracedTopic, deadSpan: "waybill dead_letter " + cfg.DeadLetterTopic, tracedTopic: cfg.TracedTopic, deadTopic: cfg.DeadLetterTopic, maxDead: cfg.MaxDeadLetterBytes},
		breakers: newBreakers(bc),
		memo:     newMemo(defaultMemoEntries),
		instance: hex.EncodeToString(id[:]),
	}, nil
}

// BreakerState reports the state of the circuit breaker that guards appid's
// trace_waybill calls.
func (h *Handler) BreakerState(appid string) gobreaker.State {
	return h.breakers.state(appid, endpointTrace)
}

// BreakerStates reports the state of every circuit breaker used so far, by
// its key (the appid, or the appid and " update_waybill_goods"). Asking
// moves an open breaker whose OpenTimeout has passed to half-open and
// reports that change to Config.Observe: call it now and then (the service
// does every 15 s) so that a breaker of an appid without events does not
// look open for ever.
func (h *Handler) BreakerStates() map[string]gobreaker.State {
	return h.breakers.states()
}

// AddTo registers the handler on router, consuming the input topic from sub,
// under the name "waybill_trace_" + the input topic.
func (h *Handler) AddTo(router *message.Router, sub message.Subscriber) *message.Handler {
	return router.AddConsumerHandler("waybill_trace_"+h.cfg.InputTopic, h.cfg.InputTopic, sub, h.Handle)
}

// ErrWaitLimit is returned (wrapped) by Handle when a delivery has waited
// Config.MaxWaitInPlace and no parking is configured: the router nacks the
// message and it is redelivered, its partition no longer held.
var ErrWaitLimit = errors.New("waited in place as long as allowed")

// Handle processes one message. See Handler for the guarantee.
func (h *Handler) Handle(msg *message.Message) (err error) {
	_ = growStack()
	ctx, span := h.tracing.start(msg, h.cfg.InputTopic)
	defer func() { endDelivery(span, err) }()
	msg.SetContext(ctx)
	d := h.newDelivery(msg)
	defer d.end()
	err = d.decode()
	if d.valid && span.IsRecording() {
		// Only a valid event's: an invalid one's fields may hold anything.
		span.SetAttributes(attribute.String("waybill.appid", d.ev.AppID), attribute.String("waybill.order_id", d.ev.OrderID))
	}
	if r := msg.Metadata.Get(deadletter.HeaderReplays); r != "" && r != "0" {
		h.observe(ObservedReplayed, d.appID(), "")
	}
	if err != nil {
		h.cfg.Logger.Info("dead-lettering invalid event", watermill.LogFields{"uuid": msg.UUID, "reason": err.Error()})
		return d.deadLetter(d.hist.deadLetter(d.src, deadletter.ReasonInvalidEvent, nil, err.Error(), h.cfg.Now()))
	}
	d.restore()
	if d.out != nil {
		// Decided by an earlier delivery whose publish failed: publish it,
		// never call WeChat for it again.
		return d.republish()
	}
	if now := h.cfg.Now(); d.hist.NotBefore.After(now) {
		if done, err := d.tracedElsewhere(); done {
			// A duplicate of a waybill traced meanwhile need not wait.
			return err
		}
		if h.cfg.Parking != nil && d.hist.NotBefore.Sub(now)+d.callFloor() > time.Until(d.deadline) {
			// Back from the longest tier before its time: round again,
			// without spending a call. (Back a moment early, by a clock
			// that runs ahead, it waits the moment out below.)
			return d.repark(now)
		}
		if err := d.waitUntil("not-before time", d.hist.NotBefore); err != nil {
			return d.leaveErr(err, d.hist.NotBefore)
		}
	}
	return d.process()
}

// publishTraced publishes waybill.traced. tracedAt is when WeChat issued the
// token, so a duplicate republishes the very same event.
func (d *delivery) publishTraced(token string, tracedAt time.Time) error {
	ev := d.ev
	out := &event.WaybillTraced{
		Version: event.SchemaVersion, OrderID: ev.OrderID, AppID: ev.AppID, OpenID: ev.OpenID,
		WaybillID: ev.WaybillID, DeliveryID: ev.DeliveryID, WaybillToken: token,
		TracedAt: tracedAt.UTC(),
	}
	if err := d.h.results.traced(d.ctx, ev, out); err != nil {
		d.remember(&outcome{token: token, tracedAt: tracedAt, stored: d.fromStore})
		return err
	}
	d.forget()
	d.h.stats.traced.Add(1)
	via := "call"
	if d.fromStore {
		via = "store"
	}
	d.h.observe(ObservedTraced, ev.AppID, via)
	d.outcome("traced", "waybill.via", via)
	return nil
}

// deadLetter publishes a dead letter and counts it.
func (d *delivery) deadLetter(dl *deadletter.Letter) error {
	key := ""
	if d.ev != nil {
		key = d.ev.OrderID
	}
	if err := d.h.results.dead(d.ctx, d.msg, key, dl); err != nil {
		d.remember(&outcome{dead: dl})
		return err
	}
	d.forget()
	d.h.stats.dead.Add(1)
	d.h.observe(ObservedDeadLettered, d.appID(), string(dl.Reason))
	d.outcome("dead_lettered", "waybill.reason", string(dl.Reason))
	return nil
}

// republish publishes the outcome an earlier delivery decided.
func (d *delivery) republish() error {
	if d.out.dead != nil {
		return d.deadLetter(d.out.dead)
	}
	d.fromStore = d.out.stored
	return d.publishTraced(d.out.token, d.out.tracedAt)
}

// Stats counts what the handler did since it was built.
type Stats struct {
	Traced       int64 // waybill.traced events published
	DeadLettered int64 // dead letters published
	Retries      int64 // in-place retries after transient faults
	Waits        int64 // in-place waits for a later time (quota, rate, not-yet, breaker)
	Parked       int64 // events parked (ParkingConfig)
	Deduplicated int64 // traced from a stored token, without trace_waybill
	GoodsUpdates int64 // update_waybill_goods calls for changed goods
}

type counters struct {
	traced, dead, retries, waits, parked, deduped, goodsUpdates atomic.Int64
}

// Stats returns a snapshot of the handler's counters.
func (h *Handler) Stats() Stats {
	return Stats{
		Traced: h.stats.traced.Load(), DeadLettered: h.stats.dead.Load(),
		Retries: h.stats.retries.Load(), Waits: h.stats.waits.Load(), Parked: h.stats.parked.Load(),
		Deduplicated: h.stats.deduped.Load(), GoodsUpdates: h.stats.goodsUpdates.Load(),
	}
}

// growStack grows the goroutine's stack to what a delivery needs in one
// step, while it is still shallow. Watermill's Router runs every message on
// a new goroutine, whose small stack would otherwise double several times
// as the delivery deepens (JSON, HTTP, tracing), each time copying every
// frame on it: 14 % of the service's CPU before this.
//
//go:noinline
func growStack() byte {
	var frame [stackFrame]byte
	return frame[stackIndex]
}

// stackFrame is what a delivery's stack reaches, rounded up.
const stackFrame = 16 << 10

// stackIndex keeps the compiler from removing frame: it cannot know the
// index. Never written, so reading it races with nothing.
var stackIndex = 0
