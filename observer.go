package waybill

// Observation is one thing a Handler did, handed to Config.Observe: the
// outcomes of events, the limiter's and the trace store's answers, breaker
// changes. Package metrics turns them into Prometheus series. It carries
// appids, reasons and topic names only: never an order id, an openid, a
// phone number or a token.
type Observation struct {
	Kind ObservationKind
	// AppID is the event's appid; "" for an event that did not decode or
	// validate (its appid field may hold anything). For
	// ObservedBreaker it is the breaker's key: the appid (Breaker.Key's
	// answer), followed by " update_waybill_goods" for that endpoint's.
	AppID string
	// Detail qualifies Kind; each kind's doc says with what. Its values
	// form a small fixed set, fit for a metric label.
	Detail string
	// Remaining is, for ObservedQuota, the calls left in the appid's daily
	// window after this one; -1 when it has no daily limit.
	Remaining int64
}

// ObservationKind tells what an Observation reports.
type ObservationKind int

// The kinds of Observation.
const (
	// ObservedTraced: a waybill.traced was published. Detail is "call"
	// after a trace_waybill call, "store" when the trace store knew the
	// token (deduplicated: no trace_waybill call; an update_waybill_goods
	// call may have been made for changed goods).
	ObservedTraced ObservationKind = iota + 1
	// ObservedDeadLettered: a dead letter was published. Detail is its
	// deadletter.Reason.
	ObservedDeadLettered
	// ObservedParked: the event was published to a delay topic. Detail is
	// the topic.
	ObservedParked
	// ObservedRetried: a transient fault is retried in place. Detail is the
	// failure's wechat.Class.
	ObservedRetried
	// ObservedWaited: the delivery waits in place for a later time. Detail
	// is the failure's wechat.Class, or "quota" for a spent local quota.
	ObservedWaited
	// ObservedGoodsUpdated: update_waybill_goods succeeded for changed goods.
	ObservedGoodsUpdated
	// ObservedLimited: Config.Limiter held a trace_waybill call back
	// (GoodsLimiter's denials are not reported). Detail is the
	// ratelimit.Reason (app_daily, user_daily, rate).
	ObservedLimited
	// ObservedQuota: the limiter admitted a trace_waybill call; Remaining
	// says what is left of the appid's day.
	ObservedQuota
	// ObservedBreaker: a circuit breaker changed state. Detail is the new
	// state ("closed", "half-open", "open"). It is reported under the
	// breaker's lock: the function must not block.
	ObservedBreaker
	// ObservedTraceStore: the trace store answered. Detail is "hit" (a
	// stored token), "claim_won", "claim_lost" (another handler traces it)
	// or "error".
	ObservedTraceStore
	// ObservedReplayed: a delivery of an event sent back from the dead-letter
	// topic (it carries deadletter.HeaderReplays) began.
	ObservedReplayed
)

var observationNames = [...]string{
	ObservedTraced:       "traced",
	ObservedDeadLettered: "dead_lettered",
	ObservedParked:       "parked",
	ObservedRetried:      "retried",
	ObservedWaited:       "waited",
	ObservedGoodsUpdated: "goods_updated",
	ObservedLimited:      "limited",
	ObservedQuota:        "quota",
	ObservedBreaker:      "breaker",
	ObservedTraceStore:   "trace_store",
	ObservedReplayed:     "replayed",
}

// String returns the kind's snake_case name.
func (k ObservationKind) String() string {
	if k > 0 && int(k) < len(observationNames) {
		return observationNames[k]
	}
	return "unknown"
}

// observe hands o to Config.Observe, if set.
func (h *Handler) observe(kind ObservationKind, appid, detail string) {
	if h.cfg.Observe != nil {
		h.cfg.Observe(Observation{Kind: kind, AppID: appid, Detail: detail})
	}
}

// appID is the delivery's appid; "" until the event decoded and
// validated: an invalid event's appid field may hold anything.
func (d *delivery) appID() string {
	if d.ev == nil || !d.valid {
		return ""
	}
	return d.ev.AppID
}
