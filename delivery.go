package waybill

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/trace"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/wait"
	"github.com/waybillkit/waybill/ratelimit"
	"github.com/waybillkit/waybill/tracestore"
	"github.com/waybillkit/waybill/wechat"
)

// The WeChat endpoints a delivery calls: each has its own breaker and quota.
const (
	endpointTrace = "trace_waybill"
	endpointGoods = "update_waybill_goods"
)

// longWait is the wait from which a delivery logs that it waits.
const longWait = time.Second

// errOverBudget is what a wait returns that would pass the delivery's
// MaxWaitInPlace.
var errOverBudget = errors.New("wait exceeds the delivery's MaxWaitInPlace budget")

// source is where a message was consumed.
type source struct {
	topic     string
	partition int32 // -1 when not from Kafka
	offset    int64 // -1 when not from Kafka
}

// history is what an event's earlier calls left behind: what travels in
// a parked copy's headers (deadletter.History), and what only this
// process's memo keeps between redeliveries.
type history struct {
	deadletter.History
	lastFailure time.Time
	// A park whose publish failed, for its redelivery to make again the
	// same way: into the window tier, and counted towards MaxParks.
	parkWindow, parkCounts bool
}

func (h *history) failed(now time.Time) {
	if h.FirstFailure.IsZero() {
		h.FirstFailure = now
	}
	h.lastFailure = now
}

// merge keeps the longer of two histories of one event.
func (h *history) merge(o history) {
	h.Attempts = max(h.Attempts, o.Attempts)
	h.NotYet = max(h.NotYet, o.NotYet)
	h.Retries = max(h.Retries, o.Retries)
	h.TokenFailures = max(h.TokenFailures, o.TokenFailures)
	h.parkWindow = h.parkWindow || o.parkWindow
	h.parkCounts = h.parkCounts || o.parkCounts
	if h.FirstFailure.IsZero() || (!o.FirstFailure.IsZero() && o.FirstFailure.Before(h.FirstFailure)) {
		h.FirstFailure = o.FirstFailure
	}
	if o.lastFailure.After(h.lastFailure) {
		h.lastFailure = o.lastFailure
	}
	if o.NotBefore.After(h.NotBefore) {
		h.NotBefore = o.NotBefore
	}
}

// deadLetter describes the event's end for the dead-letter topic.
func (h *history) deadLetter(src source, reason deadletter.Reason, callErr error, errmsg string, now time.Time) *deadletter.Letter {
	h.failed(now)
	dl := &deadletter.Letter{
		Reason: reason, Errmsg: errmsg, Attempts: h.Attempts,
		SourceTopic: src.topic, SourcePartition: src.partition, SourceOffset: src.offset,
		FirstFailure: h.FirstFailure, LastFailure: h.lastFailure,
	}
	var we *wechat.Error
	if errors.As(callErr, &we) {
		dl.HasErrcode, dl.Errcode, dl.Errmsg = true, we.Code, we.Msg
	} else if callErr != nil {
		dl.Errmsg = callErr.Error()
	}
	return dl
}

// delivery is one message on its way through the Handler: the event, its
// history, and the budget of time it may hold its partition. Its methods are
// the steps, in the order a message meets them.
type delivery struct {
	h   *Handler
	msg *message.Message
	ctx context.Context
	src source
	ev  *event.OrderShipped

	hist history
	// failures counts this delivery's failed calls by class; not_yet
	// answers count across deliveries (hist.NotYet).
	failures map[wechat.Class]int
	deadline time.Time // MaxWaitInPlace after the delivery began, by time.Now
	id       string    // the record's identity: topic/partition/offset, or the UUID
	owner    string    // this delivery's name for trace-store claims
	valid    bool      // decoded and validated: only then has it a memo key
	memoKey  string    // see memo; built when first needed, like fields
	out      *outcome  // decided by an earlier delivery, not yet published
	fields   watermill.LogFields
	// fromStore marks a waybill.traced republished from the trace store.
	fromStore bool
	parkedOn  string // the delay topic the event was parked on
}

func (h *Handler) newDelivery(msg *message.Message) *delivery {
	d := &delivery{
		h: h, msg: msg, ctx: msg.Context(),
		src:      source{topic: h.cfg.InputTopic, partition: -1, offset: -1},
		deadline: time.Now().Add(h.cfg.MaxWaitInPlace),
	}
	if h.cfg.Position != nil {
		if p, o, ok := h.cfg.Position(msg); ok {
			d.src.partition, d.src.offset = p, o
		}
	}
	// A redelivery of the same record is the same owner, so it can take
	// back a claim that its earlier delivery failed to release.
	switch {
	case d.src.offset >= 0:
		d.id = fmt.Sprintf("%s/%d/%d", d.src.topic, d.src.partition, d.src.offset)
	case msg.UUID != "":
		d.id = msg.UUID
	}
	if d.id != "" && h.cfg.TraceStore != nil {
		d.owner = h.instance + "/" + d.id
		if _, busy := h.active.LoadOrStore(d.owner, struct{}{}); busy {
			// The same record in two live deliveries (a partition handed
			// back during a rebalance): the second must not share the
			// first's claim.
			d.owner = fmt.Sprintf("%s#%d", d.owner, h.seq.Add(1))
			h.active.Store(d.owner, struct{}{})
		}
	}
	d.hist.History = deadletter.ReadHistory(msg.Metadata)
	return d
}

// decode turns the message into a valid event, or says why it is not one.
func (d *delivery) decode() error {
	if n, limit := len(d.msg.Payload), d.h.cfg.MaxEventBytes; n > limit {
		return fmt.Errorf("event is %d bytes, more than MaxEventBytes %d", n, limit)
	}
	ev, err := d.h.cfg.Decode(d.msg)
	if err == nil && ev == nil {
		err = errors.New("decode returned no event")
	}
	if ev != nil {
		d.ev = ev // even when invalid: its order id keys the dead letter
	}
	if err != nil {
		return err
	}
	if err := ev.Validate(); err != nil {
		return err
	}
	d.valid = true
	return nil
}

func (d *delivery) key() tracestore.Key {
	return tracestore.Key{AppID: d.ev.AppID, WaybillID: d.ev.WaybillID, TransID: d.ev.TransID}
}

// restore takes what an earlier delivery of the event left in the memo: its
// history, and an outcome only if it was decided for this very message (a
// corrected event for the same waybill must be judged afresh).
func (d *delivery) restore() {
	if d.h.memo.len() == 0 {
		return // the usual case: nothing pending anywhere
	}
	now := d.h.cfg.Now()
	if e, ok := d.h.memo.get(d.memo(), now); ok {
		d.hist.merge(e.hist)
	}
	if d.id == "" {
		return
	}
	if e, ok := d.h.memo.get(d.outcomeKey(), now); ok && e.out != nil {
		d.out = e.out
	}
}

// outcomeKey is where the memo keeps this message's undelivered outcome,
// apart from the event's history, which other messages of the event share.
func (d *delivery) outcomeKey() string { return d.memo() + "\x00" + d.id }

// memo is the event's key in the Handler's memo: its waybill and order.
func (d *delivery) memo() string {
	if d.memoKey == "" && d.valid {
		d.memoKey = d.key().String() + ":" + keyEscaper.Replace(d.ev.OrderID)
	}
	return d.memoKey
}

// log is the fields every log line about the event carries.
func (d *delivery) log() watermill.LogFields {
	if d.fields == nil {
		ev := d.ev
		d.fields = watermill.LogFields{"appid": ev.AppID, "order_id": ev.OrderID, "waybill_id": ev.WaybillID}
		if sc := trace.SpanContextFromContext(d.ctx); sc.HasTraceID() {
			d.fields["trace_id"] = sc.TraceID().String()
		}
	}
	return d.fields
}

// remember keeps the event's history, and an outcome not yet published, for
// its redelivery.
func (d *delivery) remember(out *outcome) {
	if d.memo() == "" {
		return // not a valid event: nothing to remember it by
	}
	now := d.h.cfg.Now()
	d.h.memo.put(d.memo(), memoEntry{hist: d.hist}, now)
	if out != nil && d.id != "" {
		d.h.memo.put(d.outcomeKey(), memoEntry{out: out}, now)
	}
}

// end releases what the delivery holds in the Handler.
func (d *delivery) end() {
	if d.owner != "" {
		d.h.active.Delete(d.owner)
	}
}

// forget drops the memo once the event has left the handler.
func (d *delivery) forget() {
	if d.h.memo.len() > 0 && d.memo() != "" {
		d.h.memo.forget(d.memo())
		if d.id != "" {
			d.h.memo.forget(d.outcomeKey())
		}
	}
}

// withBudget runs a store or limiter call made before a WeChat call under
// the delivery's deadline, so a slow store does not hold the partition
// either, and reports the budget running out as errOverBudget. (Recording
// the outcome afterwards is bounded by settleTimeout instead: losing it for
// the budget's sake would cost a call.)
func (d *delivery) withBudget(call func(ctx context.Context) error) error {
	ctx, cancel := context.WithDeadline(d.ctx, d.deadline)
	defer cancel()
	err := call(ctx)
	if err != nil && ctx.Err() != nil && d.ctx.Err() == nil {
		return errOverBudget
	}
	return err
}

// callFloor is the least budget a call may start with: one cut short by the
// deadline may still count at WeChat, for nothing.
func (d *delivery) callFloor() time.Duration {
	return min(5*time.Second, d.h.cfg.MaxWaitInPlace/5)
}

// wait sleeps for dur, or returns errOverBudget at once when dur does not
// fit in what is left of the budget.
func (d *delivery) wait(what string, dur time.Duration) error {
	if dur <= 0 {
		return d.ctx.Err()
	}
	if dur > time.Until(d.deadline) {
		return errOverBudget
	}
	if dur >= longWait {
		d.h.cfg.Logger.Info("waiting in place", d.log().Add(watermill.LogFields{"for": what, "wait": dur.Round(time.Millisecond)}))
	}
	if err := wait.Sleep(d.ctx, dur); err != nil {
		return fmt.Errorf("order %s: %w", d.ev.OrderID, err)
	}
	return nil
}

// waitUntil waits until t by the configured clock. When t lies past the
// budget it holds the partition for the rest of the budget (redelivering
// at once would only spin) and returns errOverBudget.
func (d *delivery) waitUntil(what string, t time.Time) error {
	for {
		dur := t.Sub(d.h.cfg.Now())
		if dur <= 0 {
			return nil
		}
		left := time.Until(d.deadline)
		if dur+d.callFloor() <= left {
			if err := d.wait(what, dur); err != nil {
				return err
			}
			continue // the clock may have been stepped meanwhile
		}
		// Too far off for a call in this delivery.
		d.h.cfg.Logger.Info("waiting in place until the budget ends", d.log().Add(watermill.LogFields{"for": what, "until": t, "wait": left.Round(time.Millisecond)}))
		if err := wait.Sleep(d.ctx, left); err != nil {
			return fmt.Errorf("order %s: %w", d.ev.OrderID, err)
		}
		return errOverBudget
	}
}

// leaveErr turns a failed wait into the event's exit: over budget, it
// leaves until next; any other error (shutdown) is returned as it is.
func (d *delivery) leaveErr(err error, next time.Time) error {
	if errors.Is(err, errOverBudget) {
		return d.leave(next, false, nil, d.log())
	}
	return err
}

// leave ends a delivery that used up its budget: it parks the event until
// until, or without parking records until as the event's not-before time and
// returns ErrWaitLimit for redelivery.
func (d *delivery) leave(until time.Time, window bool, callErr error, fields watermill.LogFields) error {
	now := d.h.cfg.Now()
	if d.h.cfg.Parking != nil {
		// A park for the budget's sake is no step towards MaxParks: the
		// event is waiting out a transient state, never dead-lettered for it.
		return d.parkOrDeadLetter(Verdict{Action: ActionPark, Until: until, Window: window}, callErr, now, fields.Add(watermill.LogFields{"action": ActionPark.String()}), window)
	}
	if until.After(d.hist.NotBefore) {
		d.hist.NotBefore = until
	}
	d.remember(nil)
	held := d.h.cfg.MaxWaitInPlace - time.Until(d.deadline)
	d.h.cfg.Logger.Info("leaving event for redelivery", fields.Add(watermill.LogFields{"action": "redeliver", "held": held.Round(time.Millisecond), "not_before": d.hist.NotBefore}))
	return fmt.Errorf("order %s: %w (held %s; next call not before %s)", d.ev.OrderID, ErrWaitLimit,
		held.Round(time.Millisecond), d.hist.NotBefore.UTC().Format(time.RFC3339))
}

// process traces a valid event, reusing a stored token when Config.TraceStore
// has one.
func (d *delivery) process() error {
	h := d.h
	store := h.cfg.TraceStore
	if store == nil {
		token, done, err := d.trace()
		if done {
			return err
		}
		return d.publishTraced(token, h.cfg.Now())
	}
	key, goods := d.key(), event.GoodsFingerprint(d.ev.Goods)
	// A store that claims and reads in one step saves the look before the
	// claim and the look after it: one round trip instead of three.
	cg, oneStep := store.(tracestore.ClaimGetter)
	oneStep = oneStep && d.owner != ""
	var waitingSince time.Time
	logged := false
	for {
		var rec tracestore.Record
		var ok, won bool
		var release func()
		var err error
		var seen *lookup // the record as read under a won claim
		if oneStep {
			err = d.withBudget(func(ctx context.Context) (err error) {
				release, won, rec, ok, err = cg.ClaimGet(ctx, key, d.owner, h.cfg.ClaimTTL)
				return err
			})
			if errors.Is(err, tracestore.ErrBadRecord) {
				// Released already; the look-claim-look path (which logs it)
				// treats the record as none, and the Put replaces it.
				oneStep = false
				continue
			}
			if err == nil && ok && rec.GoodsHash == goods {
				if won {
					release()
				}
				return d.publishStored(rec)
			}
			seen = &lookup{rec: rec, ok: ok}
		} else {
			rec, ok, err = d.get(key)
			if err != nil {
				// Not knowing whether it was traced, calling WeChat could waste
				// the buyer's quota: leave the event for redelivery.
				return d.leaveErr(err, h.cfg.Now())
			}
			if ok && rec.GoodsHash == goods {
				return d.publishStored(rec)
			}
			err = d.withBudget(func(ctx context.Context) (err error) {
				release, won, err = store.Claim(ctx, key, d.owner, h.cfg.ClaimTTL)
				return err
			})
		}
		if errors.Is(err, errOverBudget) {
			return d.leaveErr(err, h.cfg.Now())
		}
		if err != nil {
			h.observe(ObservedTraceStore, d.ev.AppID, "error")
			return fmt.Errorf("trace store claim %s: %w", key, err)
		}
		if won {
			h.observe(ObservedTraceStore, d.ev.AppID, "claim_won")
			return d.underClaim(key, goods, release, seen)
		}
		h.observe(ObservedTraceStore, d.ev.AppID, "claim_lost")
		// Another handler is tracing this waybill right now: wait for its
		// record instead of making a second call, within the budget.
		if waitingSince.IsZero() {
			waitingSince = time.Now()
		} else if !logged && time.Since(waitingSince) >= longWait {
			logged = true
			h.cfg.Logger.Info("waiting for another handler's claim", d.log().Add(watermill.LogFields{"key": key.String(), "claim_ttl": h.cfg.ClaimTTL}))
		}
		if err := d.wait("claim", h.cfg.ClaimPoll); err != nil {
			return d.leaveErr(err, h.cfg.Now())
		}
	}
}

// lookup is a record as the trace store reported it.
type lookup struct {
	rec tracestore.Record
	ok  bool
}

// underClaim traces, or updates the goods of, a waybill whose claim this
// delivery holds, renewing the claim until it is done. seen is the record
// as read after the claim was won, or nil to read it now.
func (d *delivery) underClaim(key tracestore.Key, goods string, release func(), seen *lookup) error {
	stop := sync.OnceFunc(d.holdClaim(key))
	released := false
	defer func() {
		stop()
		if !released {
			release()
		}
	}()
	h := d.h
	if seen == nil {
		// Someone may have finished between our Get and our Claim.
		rec, ok, err := d.get(key)
		if err != nil {
			return d.leaveErr(err, h.cfg.Now())
		}
		seen = &lookup{rec: rec, ok: ok}
	}
	rec, ok := seen.rec, seen.ok
	switch {
	case ok && rec.GoodsHash == goods:
		return d.publishStored(rec)
	case ok:
		if done, err := d.updateGoods(key, rec, goods); done {
			return err
		}
		return d.publishStored(rec)
	}
	token, done, err := d.trace()
	if done {
		return err
	}
	rec = tracestore.Record{WaybillToken: token, GoodsHash: goods, TracedAt: h.cfg.Now().UTC()}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(d.ctx), settleTimeout)
	defer cancel()
	if pr, oneStep := h.cfg.TraceStore.(tracestore.PutReleaser); oneStep && d.owner != "" {
		// Renewals end first: one still on its way could take the claim
		// again after the release. The claim has two thirds of its ttl
		// left; the put must not outlast half of it.
		stop()
		rctx, cancel := context.WithTimeout(pctx, h.cfg.ClaimTTL/2)
		err = pr.PutRelease(rctx, key, rec, d.owner)
		cancel()
		released = err == nil
	} else {
		err = h.cfg.TraceStore.Put(pctx, key, rec)
	}
	if err != nil {
		// WeChat has traced it; the output must not be lost for a store
		// fault. A redelivery finds the outcome in the memo; another
		// process would trace again, which WeChat answers with the token.
		h.cfg.Logger.Error("trace store put", err, watermill.LogFields{"key": key.String()})
		h.observe(ObservedTraceStore, d.ev.AppID, "error")
	}
	return d.publishTraced(token, rec.TracedAt)
}

// publishStored publishes the waybill.traced of a token the trace store
// holds: deduplicated, no call.
func (d *delivery) publishStored(rec tracestore.Record) error {
	d.h.stats.deduped.Add(1)
	d.h.observe(ObservedTraceStore, d.ev.AppID, "hit")
	d.fromStore = true
	return d.publishTraced(rec.WaybillToken, rec.TracedAt)
}

// get reads key's record. An unreadable record counts as none: tracing
// again gets the same token from WeChat, and the Put overwrites it.
func (d *delivery) get(key tracestore.Key) (tracestore.Record, bool, error) {
	var rec tracestore.Record
	var ok bool
	err := d.withBudget(func(ctx context.Context) (err error) {
		rec, ok, err = d.h.cfg.TraceStore.Get(ctx, key)
		return err
	})
	if errors.Is(err, errOverBudget) {
		return rec, false, err
	}
	if errors.Is(err, tracestore.ErrBadRecord) {
		d.h.cfg.Logger.Error("trace store: unreadable record, tracing again", err, watermill.LogFields{"key": key.String()})
		d.h.observe(ObservedTraceStore, d.ev.AppID, "error")
		return tracestore.Record{}, false, nil
	}
	if err != nil {
		d.h.observe(ObservedTraceStore, d.ev.AppID, "error")
		return rec, false, fmt.Errorf("trace store get %s: %w", key, err)
	}
	return rec, ok, nil
}

// holdClaim renews this delivery's claim on key every ClaimTTL/3 until stop
// is called, so the claim outlives every call made under it.
func (d *delivery) holdClaim(key tracestore.Key) (stop func()) {
	h := d.h
	if d.owner == "" {
		return func() {} // no name to renew it by: the TTL alone bounds it
	}
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(h.cfg.ClaimTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				// Never cut short: a renewal still on its way when the claim
				// is released could take the claim again afterwards.
				ctx, cancel := context.WithTimeout(context.WithoutCancel(d.ctx), h.cfg.ClaimTTL/3)
				_, ok, err := h.cfg.TraceStore.Claim(ctx, key, d.owner, h.cfg.ClaimTTL)
				cancel()
				if err != nil {
					h.cfg.Logger.Error("trace store: renewing claim", err, watermill.LogFields{"key": key.String()})
				} else if !ok {
					h.cfg.Logger.Info("trace store: claim lost while held", watermill.LogFields{"key": key.String()})
				}
			}
		}
	}()
	return func() { close(quit); <-done }
}

// trace calls trace_waybill; done reports that the event left the handler
// instead (see call).
func (d *delivery) trace() (token string, done bool, err error) {
	ev := d.ev
	req := ev.TraceRequest()
	resp, done, err := d.call(endpointTrace, func(ctx context.Context) (*wechat.TraceWaybillResponse, error) {
		resp, err := d.h.cfg.Client.TraceWaybill(ctx, ev.AppID, req)
		if err == nil && (resp == nil || resp.WaybillToken == "") {
			// A Tracer other than *wechat.Client may answer so: the same
			// transient failure, retried, never published.
			err = fmt.Errorf("trace_waybill %s: %w", ev.AppID, wechat.ErrNoWaybillToken)
		}
		return resp, err
	})
	if done {
		return "", true, err
	}
	return resp.WaybillToken, false, nil
}

// updateGoods calls update_waybill_goods for a waybill traced with other
// goods (WeChat ignores goods on a repeated trace_waybill) and records them.
func (d *delivery) updateGoods(key tracestore.Key, rec tracestore.Record, goods string) (bool, error) {
	ev := d.ev
	req := &wechat.UpdateWaybillGoodsRequest{WaybillToken: rec.WaybillToken, OpenID: ev.OpenID, GoodsInfo: ev.TraceRequest().GoodsInfo}
	_, done, err := d.call(endpointGoods, func(ctx context.Context) (*wechat.TraceWaybillResponse, error) {
		return &wechat.TraceWaybillResponse{WaybillToken: rec.WaybillToken}, d.h.cfg.Client.UpdateWaybillGoods(ctx, ev.AppID, req)
	})
	if done {
		return true, err
	}
	d.h.stats.goodsUpdates.Add(1)
	d.h.observe(ObservedGoodsUpdated, d.ev.AppID, "")
	rec.GoodsHash = goods
	pctx, cancel := context.WithTimeout(context.WithoutCancel(d.ctx), settleTimeout)
	defer cancel()
	if err := d.h.cfg.TraceStore.Put(pctx, key, rec); err != nil {
		d.h.cfg.Logger.Error("trace store put", err, watermill.LogFields{"key": key.String()})
	}
	return false, nil
}

// call makes one WeChat call to endpoint behind its limiter and breaker,
// retrying, waiting or parking as the decision table says, within the
// delivery's budget; the call's own deadline is what is left of it. It
// returns the response, or done=true when the event was dead-lettered or
// parked (err nil: acknowledge) or must be redelivered (err non-nil).
func (d *delivery) call(endpoint string, fn func(ctx context.Context) (*wechat.TraceWaybillResponse, error)) (*wechat.TraceWaybillResponse, bool, error) {
	h, ev := d.h, d.ev
	lim := h.cfg.Limiter
	if endpoint == endpointGoods {
		lim = h.cfg.GoodsLimiter
	}
	// Built only when a line is logged: the happy path logs nothing.
	fields := func() watermill.LogFields { return d.log().Add(watermill.LogFields{"endpoint": endpoint}) }
	for {
		if time.Until(d.deadline) < d.callFloor() {
			return nil, true, d.leave(h.cfg.Now(), false, nil, fields().Add(watermill.LogFields{"reason": "budget left is too short for a call"}))
		}
		admitted, admittedAt, err := d.admit(lim)
		if err != nil {
			return nil, true, d.leaveErr(err, admittedAt)
		}
		if !admitted.Allowed && endpoint == endpointTrace {
			h.observe(ObservedLimited, ev.AppID, admitted.Reason.String())
		} else if admitted.Allowed && lim != nil && endpoint == endpointTrace && h.cfg.Observe != nil {
			h.cfg.Observe(Observation{Kind: ObservedQuota, AppID: ev.AppID, Remaining: admitted.AppRemaining})
		}
		if !admitted.Allowed && admitted.Reason == ratelimit.ReasonRate {
			// Its turn at the smooth rate comes after this delivery's budget.
			return nil, true, d.leave(admitted.RetryAt, false, nil, fields().Add(watermill.LogFields{"limit": admitted.Reason.String()}))
		}
		if !admitted.Allowed {
			// A daily quota is spent: come back in the next window.
			start, _ := lim.Window(admittedAt)
			dec := Verdict{Action: ActionPark, Until: h.cfg.Retry.windowDue(admittedAt, start, admitted.RetryAt), Window: true}
			if done, err := d.apply(dec, nil, fields().Add(watermill.LogFields{"limit": admitted.Reason.String()})); done {
				return nil, true, err
			}
			continue
		}
		if wait := admitted.At.Sub(h.cfg.Now()); wait > 0 {
			// The reservation's turn, within the budget unless the limiter's
			// own round trip ate into it.
			if err := d.wait("smooth rate", wait); err != nil {
				d.refund(lim, admitted)
				return nil, true, d.leaveErr(err, admitted.At)
			}
			if time.Until(d.deadline) < d.callFloor() {
				// The limiter's round trips ate the call's share.
				d.refund(lim, admitted)
				return nil, true, d.leave(h.cfg.Now(), false, nil, fields())
			}
		}
		callCtx, cancel := context.WithDeadline(d.ctx, d.deadline)
		resp, callErr := h.breakers.execute(ev.AppID, endpoint, func() (*wechat.TraceWaybillResponse, error) { return fn(callCtx) })
		cancel()
		held := errors.Is(callErr, ErrBreakerOpen)
		if callErr == nil || !(held || errors.Is(callErr, wechat.ErrNotSent)) {
			d.hist.Attempts++ // calls sent, not calls held back or never sent
		}
		if callErr == nil {
			return resp, false, nil
		}
		now := h.cfg.Now()
		class := h.cfg.Classify(callErr)
		d.settleQuota(endpoint, lim, admitted, admittedAt, callErr, class)
		if d.ctx.Err() != nil {
			// Shutting down: leave the message unacknowledged for redelivery.
			return nil, true, fmt.Errorf("order %s: %w", ev.OrderID, d.ctx.Err())
		}
		d.hist.failed(now)
		n := d.count(class, held)
		judged := now
		if class == wechat.ClassDailyQuota {
			judged = admittedAt // the window the call was counted in
		}
		dec := h.cfg.Decide(callErr, class, n, judged)
		logFields := fields().Add(watermill.LogFields{"attempt": d.hist.Attempts, "class": class.String(), "err": callErr.Error()})
		if done, err := d.apply(dec, callErr, logFields); done {
			return nil, true, err
		}
	}
}

// count records one more failure of class and returns how many there are.
// held marks a call the breaker held back: no call, no step of the backoff.
func (d *delivery) count(class wechat.Class, held bool) int {
	if class == wechat.ClassNotYet {
		d.hist.NotYet++
		return d.hist.NotYet
	}
	if !held && (class == wechat.ClassTransient || class == wechat.ClassToken) {
		d.hist.Retries++
	}
	if class == wechat.ClassToken {
		d.hist.TokenFailures++
		return d.hist.TokenFailures
	}
	if d.failures == nil {
		d.failures = make(map[wechat.Class]int, 2)
	}
	d.failures[class]++
	return d.failures[class]
}

// apply carries out a decision. done reports that the event left the
// handler: dead-lettered or parked (err nil), or to be redelivered.
func (d *delivery) apply(dec Verdict, callErr error, logFields watermill.LogFields) (done bool, err error) {
	h := d.h
	now := h.cfg.Now()
	var pause time.Duration
	switch dec.Action {
	case ActionDeadLetter:
		h.cfg.Logger.Info("dead-lettering event", logFields.Add(watermill.LogFields{"action": dec.Action.String()}))
		return true, d.deadLetter(d.hist.deadLetter(d.src, dec.Reason, callErr, "", now))
	case ActionPark:
		if h.cfg.Parking != nil {
			// Parks for quota answers count towards MaxParks; an open
			// breaker is a transient state and never ends an event.
			counts := !errors.Is(callErr, ErrBreakerOpen)
			return true, d.parkOrDeadLetter(dec, callErr, now, logFields.Add(watermill.LogFields{"action": dec.Action.String()}), counts)
		}
		pause = dec.Until.Sub(now)
	default:
		pause = h.cfg.Backoff(max(1, d.hist.Retries))
	}
	if pause+d.callFloor() > time.Until(d.deadline) {
		// Waiting here would hold the partition past the budget, through a
		// rebalance: park it, or leave it for redelivery.
		return true, d.leave(now.Add(max(pause, 0)), dec.Window, callErr, logFields)
	}
	logFields = logFields.Add(watermill.LogFields{"action": dec.Action.String()})
	class := "quota" // no call made: a spent local quota
	if callErr != nil {
		class = h.cfg.Classify(callErr).String()
	}
	if dec.Action == ActionPark {
		h.cfg.Logger.Info("waiting before the next attempt", logFields.Add(watermill.LogFields{"until": dec.Until}))
		h.stats.waits.Add(1)
		h.observe(ObservedWaited, d.ev.AppID, class)
	} else {
		h.cfg.Logger.Debug("retrying after transient fault", logFields)
		h.stats.retries.Add(1)
		h.observe(ObservedRetried, d.ev.AppID, class)
	}
	if err := wait.Sleep(d.ctx, pause); err != nil {
		return true, fmt.Errorf("order %s: %w", d.ev.OrderID, err)
	}
	return false, nil
}

// admit reserves one call with lim, within what the budget leaves for the
// wait. Without a limiter every call is allowed at once.
func (d *delivery) admit(lim *ratelimit.Limiter) (ratelimit.Decision, time.Time, error) {
	now := d.h.cfg.Now()
	if lim == nil {
		return ratelimit.Decision{Allowed: true, At: now}, now, nil
	}
	maxWait := max(0, time.Until(d.deadline)-d.callFloor())
	var dec ratelimit.Decision
	err := d.withBudget(func(ctx context.Context) (err error) {
		dec, err = lim.Reserve(ctx, d.ev.AppID, d.ev.OpenID, now, maxWait)
		return err
	})
	if errors.Is(err, errOverBudget) {
		return dec, now, err
	}
	if err != nil {
		// The limiter's store failed: calling anyway could overspend the
		// quota, so leave the event for redelivery.
		return dec, now, fmt.Errorf("rate limiter for %s: %w", d.ev.AppID, err)
	}
	return dec, now, nil
}

// settleTimeout bounds the limiter and quota calls that settle a failed
// call, which run even when the delivery's context has ended.
const settleTimeout = 5 * time.Second

// settleQuota squares the local count with WeChat's answer: a call the
// breaker held back or that never reached WeChat was not counted there, nor
// one that failed at WeChat's HTTP layer (5xx, no errcode), nor one WeChat
// refused for token or quota reasons. A 45009 marks the appid's day spent,
// for the window in which the call was admitted, only when WeChat's quota
// report confirms it (the same errcode is what a buyer past their own daily
// calls may get, and one busy buyer must not close the merchant until
// midnight), and never in the first minutes after a reset (RetryPolicy.QuotaGrace),
// when WeChat's own reset may lag.
func (d *delivery) settleQuota(endpoint string, lim *ratelimit.Limiter, admitted ratelimit.Decision, admittedAt time.Time, callErr error, class wechat.Class) {
	if lim == nil || !admitted.Allowed {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(d.ctx), settleTimeout)
	defer cancel()
	var err error
	refund, spent := quotaEffect(callErr, class)
	if refund {
		err = lim.Refund(ctx, admitted)
	}
	if spent && !d.h.cfg.Retry.inResetGrace(admittedAt) && d.h.appQuotaSpent(ctx, d.ev.AppID, endpoint) {
		err = errors.Join(err, lim.ExhaustApp(ctx, d.ev.AppID, admittedAt))
	}
	if err != nil {
		d.h.cfg.Logger.Error("rate limiter: settle quota", err, watermill.LogFields{"appid": d.ev.AppID})
	}
}

// refund gives back a reservation that was not used.
func (d *delivery) refund(lim *ratelimit.Limiter, admitted ratelimit.Decision) {
	if lim == nil || !admitted.Allowed {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(d.ctx), settleTimeout)
	defer cancel()
	if err := lim.Refund(ctx, admitted); err != nil {
		d.h.cfg.Logger.Error("rate limiter: refund", err, watermill.LogFields{"appid": d.ev.AppID})
	}
}

// quotaGetter is the optional part of a Tracer that reads an API's
// remaining daily quota; *wechat.Client has it.
type quotaGetter interface {
	GetQuota(ctx context.Context, appid string, req *wechat.QuotaRequest) (*wechat.QuotaResponse, error)
}

// appQuotaSpent asks WeChat whether appid's quota for endpoint is spent for
// the day. Without an answer it says no: each event then meets its own
// 45009 and is parked alone.
func (h *Handler) appQuotaSpent(ctx context.Context, appid, endpoint string) bool {
	qg, ok := h.cfg.Client.(quotaGetter)
	if !ok {
		return false
	}
	q, err := qg.GetQuota(ctx, appid, &wechat.QuotaRequest{CGIPath: wechat.OpenMsgPath(endpoint)})
	if err != nil {
		h.cfg.Logger.Info("quota check after 45009 failed", watermill.LogFields{"appid": appid, "err": err.Error()})
		return false
	}
	return q.Quota.Remain <= 0
}

// tracedElsewhere publishes the stored trace of a waybill whose record has
// the event's goods, so that a duplicate does not wait out a not-before time
// for nothing. done is false when there is no such record (or no store).
func (d *delivery) tracedElsewhere() (done bool, err error) {
	if d.h.cfg.TraceStore == nil {
		return false, nil
	}
	rec, ok, err := d.get(d.key())
	if err != nil || !ok || rec.GoodsHash != event.GoodsFingerprint(d.ev.Goods) {
		return false, nil // the normal path will meet the store's error, if any
	}
	return true, d.publishStored(rec)
}
