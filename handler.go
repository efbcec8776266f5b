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
	"github.com/sony/gobreaker/v2"

	"github.com/waybillkit/waybill/ratelimit"
	"github.com/waybillkit/waybill/wechat"
)

// Default topic names.
const (
	DefaultInputTopic      = "order.shipped"
	DefaultTracedTopic     = "waybill.traced"
	DefaultDeadLetterTopic = "order.shipped.dead"
)

// Tracer is the WeChat calls the handler makes. *wechat.Client satisfies
// it; tests may pass their own.
type Tracer interface {
	TraceWaybill(ctx context.Context, appid string, req *wechat.TraceWaybillRequest) (*wechat.TraceWaybillResponse, error)
	// UpdateWaybillGoods is called, with Config.Traces set, when an event
	// for an already traced waybill carries other goods.
	UpdateWaybillGoods(ctx context.Context, appid string, req *wechat.UpdateWaybillGoodsRequest) error
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

	// Limiter, when set, is asked before every call: a spent daily quota
	// (the appid's or the buyer's) parks the event until the next window, the
	// smooth rate makes it wait for its next token. Calls WeChat refused
	// without counting are refunded, and 45009 marks the appid's day spent.
	// Nil means no local limits: WeChat's own answers still apply.
	Limiter *ratelimit.Limiter

	// Traces, when set, remembers each waybill's token so that a redelivered
	// or duplicate event republishes the same waybill.traced without calling
	// WeChat (saving the buyer's 100 calls a day), and concurrent duplicates
	// make one call. Use NewMemoryTraceStore for one process, redisdedup for many.
	// Nil means every event is traced (WeChat answers a repeat with the same
	// token, at the cost of a call).
	Traces TraceStore
	// ClaimTTL bounds how long a crashed handler's claim on a waybill blocks
	// others. It must outlast a delivery: MaxWaitInPlace plus the longest
	// call (the wechat client's 30 s timeout, twice with a token refresh),
	// or a duplicate could claim the waybill and call while the first
	// handler still works on it. Zero means 2 min.
	ClaimTTL time.Duration
	// ClaimPoll is how often a duplicate waits for the handler that holds the
	// claim. Zero means 100 ms.
	ClaimPoll time.Duration

	// MaxWaitInPlace bounds how long one delivery may hold its partition
	// before another wait in place (transient retries, an open breaker, the
	// next minute, a quota window without Parking). Rather than wait past
	// it, the event is parked, or without Parking left for redelivery
	// (Handle returns ErrWaitLimit and the router nacks). It is checked
	// between calls; a call in flight is bounded by the client's timeout.
	// It keeps a handler from holding its partition through a consumer-group
	// rebalance (sarama's default rebalance timeout is 60 s; watermill-kafka
	// does not cancel a message's context on rebalance) and from outliving
	// its claim on a waybill (ClaimTTL). Zero means 25 s, or half of
	// ClaimTTL when Traces is set and that is shorter.
	MaxWaitInPlace time.Duration

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
	if c.Retry.QuotaReset == nil && c.Limiter != nil {
		// One notion of the daily reset: the window tier's due order
		// relies on it.
		lim := c.Limiter
		c.Retry.QuotaReset = func(t time.Time) time.Time { _, end := lim.Window(t); return end }
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
		c.ClaimTTL = 2 * time.Minute
	}
	if c.MaxWaitInPlace == 0 {
		c.MaxWaitInPlace = 25 * time.Second
		if c.Traces != nil {
			c.MaxWaitInPlace = min(c.MaxWaitInPlace, c.ClaimTTL/2)
		}
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
	} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s %s must not be negative", name, d))
		}
	}
	if c.Traces != nil && c.ClaimTTL <= c.MaxWaitInPlace {
		errs = append(errs, fmt.Errorf("ClaimTTL %s must outlast MaxWaitInPlace %s", c.ClaimTTL, c.MaxWaitInPlace))
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
// the limiter's store failed, or the delivery waited MaxWaitInPlace without
// Parking (ErrWaitLimit) — never to give up on an event: transient faults
// are retried, and quota or not-yet answers wait for their time.
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
		if user != nil {
			user(key, from, to)
		}
	}
	return &Handler{
		cfg:      cfg,
		results:  results{pub: cfg.Publisher, tracedTopic: cfg.TracedTopic, deadTopic: cfg.DeadLetterTopic},
		breakers: newBreakers(bc),
	}, nil
}

// BreakerState reports the state of the circuit breaker that guards appid.
func (h *Handler) BreakerState(appid string) gobreaker.State {
	return h.breakers.state(appid)
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
func (h *Handler) Handle(msg *message.Message) error {
	ctx := msg.Context()
	st := newDelivery(msg, h.cfg.InputTopic)

	ev, err := h.cfg.Decode(msg)
	if err == nil && ev == nil {
		err = errors.New("decode returned no event")
	}
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
	if now := h.cfg.Now(); h.cfg.Parking != nil && st.notBefore.After(now) {
		// Back from the longest tier before its time: round again,
		// without spending a call.
		return h.repark(msg, st, ev, now)
	}
	return h.process(ctx, msg, st, ev)
}

// repark parks an event that came back before its not-before time.
func (h *Handler) repark(msg *message.Message, st *delivery, ev *OrderShipped, now time.Time) error {
	parked, err := h.park(msg, st, st.notBefore, false, now)
	if err != nil {
		return err
	}
	if parked {
		h.stats.parked.Add(1)
		return nil
	}
	return h.deadLetter(msg, ev.OrderID, st.deadLetter(ReasonTooManyAttempts, nil, "parked too often", now))
}

// process traces a valid event, reusing a stored token when Config.Traces
// has one.
func (h *Handler) process(ctx context.Context, msg *message.Message, st *delivery, ev *OrderShipped) error {
	trace := func() (string, bool, error) {
		req := ev.TraceRequest()
		resp, done, err := h.call(ctx, msg, st, ev, func() (*wechat.TraceWaybillResponse, error) {
			return h.cfg.Client.TraceWaybill(ctx, ev.AppID, req)
		})
		if done {
			return "", true, err
		}
		return resp.WaybillToken, false, nil
	}
	store := h.cfg.Traces
	if store == nil {
		token, done, err := trace()
		if done {
			return err
		}
		return h.publishTraced(ev, token, h.cfg.Now())
	}

	key := DedupKey{AppID: ev.AppID, WaybillID: ev.WaybillID, TransID: ev.TransID}
	goods := GoodsFingerprint(ev.Goods)
	for {
		rec, ok, err := store.Get(ctx, key)
		if err != nil {
			// Not knowing whether it was traced, calling WeChat could waste
			// the buyer's quota: leave the event for redelivery.
			return fmt.Errorf("trace store get %s: %w", key, err)
		}
		if ok {
			if rec.GoodsHash != goods {
				if done, err := h.updateGoods(ctx, msg, st, ev, key, rec, goods); done {
					return err
				}
			}
			h.stats.deduped.Add(1)
			return h.publishTraced(ev, rec.WaybillToken, rec.TracedAt)
		}
		release, won, err := store.Claim(ctx, key, h.cfg.ClaimTTL)
		if err != nil {
			return fmt.Errorf("trace store claim %s: %w", key, err)
		}
		if !won {
			// Another handler is tracing this waybill right now: wait for
			// its record instead of making a second call.
			if err := sleepFor(ctx, h.cfg.ClaimPoll); err != nil {
				return fmt.Errorf("wait for trace of %s: %w", key, err)
			}
			continue
		}
		// Someone may have finished between our Get and our Claim.
		if _, ok, err := store.Get(ctx, key); err != nil || ok {
			release()
			if err != nil {
				return fmt.Errorf("trace store get %s: %w", key, err)
			}
			continue
		}
		token, done, err := trace()
		if done {
			release()
			return err
		}
		rec = TraceRecord{WaybillToken: token, GoodsHash: goods, TracedAt: h.cfg.Now().UTC()}
		if err := store.Put(ctx, key, rec); err != nil {
			// WeChat has traced it; the output must not be lost for a
			// store fault. A redelivery would trace again, which WeChat
			// answers with the same token.
			h.cfg.Logger.Error("trace store put", err, watermill.LogFields{"key": key.String()})
		}
		release()
		return h.publishTraced(ev, token, rec.TracedAt)
	}
}

// updateGoods calls update_waybill_goods for a waybill traced with other
// goods: WeChat ignores goods on a repeated trace_waybill.
func (h *Handler) updateGoods(ctx context.Context, msg *message.Message, st *delivery, ev *OrderShipped, key DedupKey, rec TraceRecord, goods string) (bool, error) {
	req := &wechat.UpdateWaybillGoodsRequest{WaybillToken: rec.WaybillToken, OpenID: ev.OpenID, GoodsInfo: ev.TraceRequest().GoodsInfo}
	_, done, err := h.call(ctx, msg, st, ev, func() (*wechat.TraceWaybillResponse, error) {
		return &wechat.TraceWaybillResponse{WaybillToken: rec.WaybillToken}, h.cfg.Client.UpdateWaybillGoods(ctx, ev.AppID, req)
	})
	if done {
		return true, err
	}
	h.stats.goodsUpdates.Add(1)
	rec.GoodsHash = goods
	if err := h.cfg.Traces.Put(ctx, key, rec); err != nil {
		h.cfg.Logger.Error("trace store put", err, watermill.LogFields{"key": key.String()})
	}
	return false, nil
}

// publishTraced publishes waybill.traced. tracedAt is when WeChat issued the
// token, so a duplicate republishes the very same event.
func (h *Handler) publishTraced(ev *OrderShipped, token string, tracedAt time.Time) error {
	out := &WaybillTraced{
		Version: SchemaVersion, OrderID: ev.OrderID, AppID: ev.AppID, OpenID: ev.OpenID,
		WaybillID: ev.WaybillID, DeliveryID: ev.DeliveryID, WaybillToken: token,
		TracedAt: tracedAt.UTC(),
	}
	if err := h.results.traced(ev, out); err != nil {
		return err
	}
	h.stats.traced.Add(1)
	return nil
}

// call makes one WeChat call for ev behind its appid's limiter and breaker,
// retrying, waiting or parking as the decision table says. It returns the
// response, or done=true when the event was dead-lettered or parked (err nil:
// acknowledge) or must be redelivered (err non-nil).
func (h *Handler) call(ctx context.Context, msg *message.Message, st *delivery, ev *OrderShipped, fn func() (*wechat.TraceWaybillResponse, error)) (*wechat.TraceWaybillResponse, bool, error) {
	fields := watermill.LogFields{"appid": ev.AppID, "order_id": ev.OrderID, "waybill_id": ev.WaybillID}
	for {
		allowed, err := h.admit(ctx, ev)
		if err != nil {
			return nil, true, err
		}
		if !allowed.Allowed && allowed.Reason == ratelimit.ReasonRate {
			// The next token is due within moments: wait for it here.
			if err := sleepUntil(ctx, h.cfg.Now, allowed.RetryAt); err != nil {
				return nil, true, fmt.Errorf("order %s: %w", ev.OrderID, err)
			}
			continue
		}
		if !allowed.Allowed {
			// A daily quota is spent: come back in the next window.
			d := Decision{Action: ActionPark, Until: allowed.RetryAt, Window: true}
			if done, err := h.apply(ctx, msg, st, ev, d, nil, fields.Add(watermill.LogFields{"limit": allowed.Reason.String()})); done {
				return nil, true, err
			}
			continue
		}
		resp, callErr := h.breakers.execute(ev.AppID, fn)
		if !errors.Is(callErr, ErrBreakerOpen) {
			st.attempts++ // calls sent, not calls the breaker held back
		}
		if callErr == nil {
			return resp, false, nil
		}
		if ctx.Err() != nil {
			// Shutting down: leave the message unacknowledged for redelivery.
			return nil, true, fmt.Errorf("order %s: %w", ev.OrderID, ctx.Err())
		}
		now := h.cfg.Now()
		st.failed(now)
		class := h.cfg.Classify(callErr)
		h.settleQuota(ctx, ev, allowed, callErr, class, now)
		n := st.count(class)
		d := h.cfg.Decide(callErr, class, n, now)
		logFields := fields.Add(watermill.LogFields{"attempt": st.attempts, "class": class.String(), "err": callErr.Error()})
		if done, err := h.apply(ctx, msg, st, ev, d, callErr, logFields); done {
			return nil, true, err
		}
	}
}

// apply carries out a decision. done reports that the event left the
// handler: dead-lettered or parked (err nil), or to be redelivered.
func (h *Handler) apply(ctx context.Context, msg *message.Message, st *delivery, ev *OrderShipped, d Decision, callErr error, logFields watermill.LogFields) (done bool, err error) {
	now := h.cfg.Now()
	logFields = logFields.Add(watermill.LogFields{"action": d.Action.String()})
	var wait time.Duration
	switch d.Action {
	case ActionDeadLetter:
		h.cfg.Logger.Info("dead-lettering event", logFields)
		return true, h.deadLetter(msg, ev.OrderID, st.deadLetter(d.Reason, callErr, "", now))
	case ActionPark:
		if h.cfg.Parking != nil {
			return true, h.parkOrDeadLetter(msg, st, ev, d, callErr, now, logFields)
		}
		wait = d.Until.Sub(now)
	default:
		wait = h.cfg.Backoff(max(1, st.failures[wechat.ClassTransient]+st.failures[wechat.ClassToken]))
	}
	if held := time.Since(st.start); held+wait > h.cfg.MaxWaitInPlace {
		// Waiting longer here would hold the partition through a
		// rebalance: park it, or leave it for redelivery.
		if h.cfg.Parking != nil {
			d = Decision{Action: ActionPark, Until: now.Add(wait), Window: d.Window}
			return true, h.parkOrDeadLetter(msg, st, ev, d, callErr, now, logFields)
		}
		h.cfg.Logger.Info("leaving event for redelivery", logFields.Add(watermill.LogFields{"held": held}))
		return true, fmt.Errorf("order %s: %w (%s)", ev.OrderID, ErrWaitLimit, held.Round(time.Millisecond))
	}
	if d.Action == ActionPark {
		h.cfg.Logger.Info("waiting before the next attempt", logFields.Add(watermill.LogFields{"until": d.Until}))
		h.stats.waits.Add(1)
	} else {
		h.cfg.Logger.Debug("retrying after transient fault", logFields)
		h.stats.retries.Add(1)
	}
	if err := sleepFor(ctx, wait); err != nil {
		return true, fmt.Errorf("order %s: %w", ev.OrderID, err)
	}
	return false, nil
}

// parkOrDeadLetter parks the event until d.Until, or dead-letters it with
// its history when it was parked MaxParks times already.
func (h *Handler) parkOrDeadLetter(msg *message.Message, st *delivery, ev *OrderShipped, d Decision, callErr error, now time.Time, logFields watermill.LogFields) error {
	st.failed(now)
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

// admit asks the limiter for one call. Without a limiter every call is
// allowed.
func (h *Handler) admit(ctx context.Context, ev *OrderShipped) (ratelimit.Decision, error) {
	if h.cfg.Limiter == nil {
		return ratelimit.Decision{Allowed: true}, nil
	}
	d, err := h.cfg.Limiter.Allow(ctx, ev.AppID, ev.OpenID, h.cfg.Now())
	if err != nil {
		// The limiter's store failed: calling anyway could overspend the
		// quota, so leave the event for redelivery.
		return d, fmt.Errorf("rate limiter for %s: %w", ev.AppID, err)
	}
	return d, nil
}

// quotaGetter is the optional part of a Tracer that reads an API's
// remaining daily quota; *wechat.Client has it.
type quotaGetter interface {
	GetQuota(ctx context.Context, appid string, req *wechat.QuotaRequest) (*wechat.QuotaResponse, error)
}

// settleQuota squares the local count with WeChat's answer: a call the
// breaker held back was never sent, one that failed at WeChat's HTTP layer
// (5xx, no errcode) never reached the API, one WeChat refused for token or
// quota reasons did not count there. A 45009 marks the appid's day spent
// only when WeChat's quota report confirms it: the same errcode is what a
// buyer past their own daily calls may get, and one busy buyer must not
// close the merchant until midnight.
func (h *Handler) settleQuota(ctx context.Context, ev *OrderShipped, d ratelimit.Decision, callErr error, class wechat.Class, now time.Time) {
	lim := h.cfg.Limiter
	if lim == nil {
		return
	}
	var err error
	switch {
	case errors.Is(callErr, ErrBreakerOpen), httpFailure(callErr), class == wechat.ClassToken, class == wechat.ClassMinuteRate:
		err = lim.Refund(ctx, d)
	case class == wechat.ClassDailyQuota:
		err = lim.Refund(ctx, d)
		if h.appQuotaSpent(ctx, ev.AppID) {
			err = errors.Join(err, lim.ExhaustApp(ctx, ev.AppID, now))
		}
	}
	if err != nil {
		h.cfg.Logger.Error("rate limiter: settle quota", err, watermill.LogFields{"appid": ev.AppID})
	}
}

// appQuotaSpent asks WeChat whether appid's trace_waybill quota is spent
// for the day. Without an answer it says no: each event then meets its own
// 45009 and is parked alone.
func (h *Handler) appQuotaSpent(ctx context.Context, appid string) bool {
	qg, ok := h.cfg.Client.(quotaGetter)
	if !ok {
		return false
	}
	q, err := qg.GetQuota(ctx, appid, &wechat.QuotaRequest{CGIPath: wechat.OpenMsgPath("trace_waybill")})
	if err != nil {
		h.cfg.Logger.Info("quota check after 45009 failed", watermill.LogFields{"appid": appid, "err": err.Error()})
		return false
	}
	return q.Quota.Remain <= 0
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

// delivery is the history of one event: where it came from and how its
// calls failed, including earlier deliveries recorded in its headers.
type delivery struct {
	topic        string
	partition    int32
	offset       int64
	attempts     int // calls sent, all deliveries together
	firstFailure time.Time
	lastFailure  time.Time
	notBefore    time.Time // a parked event's earliest next call
	// failures counts failed calls by class in this delivery; not_yet
	// answers are counted across deliveries (HeaderNotYet), the bound on
	// 931023 spans hours of parking.
	failures map[wechat.Class]int
	start    time.Time // when this delivery began, for MaxWaitInPlace
}

func newDelivery(msg *message.Message, topic string) *delivery {
	d := &delivery{topic: topic, partition: -1, offset: -1, failures: map[wechat.Class]int{}, start: time.Now()}
	if p, ok := kafka.MessagePartitionFromCtx(msg.Context()); ok {
		d.partition = p
	}
	if o, ok := kafka.MessagePartitionOffsetFromCtx(msg.Context()); ok {
		d.offset = o
	}
	if n, err := strconv.Atoi(msg.Metadata.Get(HeaderAttempts)); err == nil && n > 0 {
		d.attempts = n
	}
	if n, err := strconv.Atoi(msg.Metadata.Get(HeaderNotYet)); err == nil && n > 0 {
		d.failures[wechat.ClassNotYet] = n
	}
	if t, err := time.Parse(time.RFC3339Nano, msg.Metadata.Get(HeaderFirstFailure)); err == nil {
		d.firstFailure = t
	}
	if t, err := time.Parse(time.RFC3339Nano, msg.Metadata.Get(HeaderNotBefore)); err == nil {
		d.notBefore = t
	}
	return d
}

// count records one more failure of class and returns how many there are.
func (d *delivery) count(class wechat.Class) int {
	d.failures[class]++
	return d.failures[class]
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

// httpFailure reports an HTTP error status without a WeChat errcode.
func httpFailure(err error) bool {
	var we *wechat.Error
	return errors.As(err, &we) && we.HTTPStatus != 0 && we.Code == 0
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
