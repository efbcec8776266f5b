// Package metrics exposes what waybill does as Prometheus metrics: the
// outcome of every event, each WeChat call with its latency and errcode,
// the quota left per appid, breaker states, the trace store's answers,
// parked events returned and consumer lag. Register it in your own
// registry and wire its methods to the handler and the WeChat client:
//
//	m, err := metrics.New(metrics.Config{Registerer: reg})
//	client, err := wechat.NewClient(wechat.Config{..., OnCall: m.ObserveCall})
//	h, err := waybill.NewHandler(waybill.Config{..., Observe: m.Observe})
//
// # Cardinality
//
// Labels are bounded sets. appid has one value per merchant, up to
// Config.MaxAppIDs (1,000 by default); appids seen after that are counted
// under "other", and MaxAppIDs < 0 folds every appid into "all". The other
// labels take a handful of values each: outcome reasons, wechat.Class
// names, endpoints, delay topics, and errcodes (up to 64 distinct, then
// "other"). The per-appid series are waybill_traced_total (2 per appid),
// waybill_dead_letters_total (up to 5), waybill_parked_total (one per
// delay topic), waybill_retries_total and waybill_waits_total (one per
// class met), waybill_limited_total (up to 3), waybill_goods_updates_total,
// waybill_replayed_total and waybill_quota_remaining: about 20 per appid,
// so 20,000 series for 1,000 merchants. No label ever holds an order id,
// an openid, a phone number or a token.
package metrics

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/waybillkit/waybill"
	"github.com/waybillkit/waybill/internal/wait"
	"github.com/waybillkit/waybill/wechat"
)

// Config configures Metrics.
type Config struct {
	// Registerer receives every collector. Nil means
	// prometheus.DefaultRegisterer.
	Registerer prometheus.Registerer
	// Namespace starts every metric's name. "" means "waybill".
	Namespace string
	// MaxAppIDs bounds the appid label (see Cardinality). 0 means
	// DefaultMaxAppIDs; negative folds every appid into "all".
	MaxAppIDs int
	// OnlyDeclared labels only the appids given to Declare by name; any
	// other is counted as "unknown", so that an event for a merchant nobody
	// configured, or with a made-up appid, takes no series of its own. The
	// service sets it and declares its merchants.
	OnlyDeclared bool
}

// DefaultMaxAppIDs is Config.MaxAppIDs's default.
const DefaultMaxAppIDs = 1000

// maxErrcodes bounds the errcode label: WeChat's codes are a short list,
// but an unknown gateway could invent more.
const maxErrcodes = 64

// CallBuckets are the latency buckets of WeChat calls, in seconds: from a
// fast answer (10 ms) to the 30 s client timeout.
var CallBuckets = []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// Metrics holds waybill's collectors. Its methods are safe for concurrent
// use.
type Metrics struct {
	reg    prometheus.Registerer
	ns     string
	appids *fold
	codes  *fold

	traced, dead, parked, retries, waits, limited *prometheus.CounterVec
	goods, replayed                               *prometheus.CounterVec
	store                                         *prometheus.CounterVec
	quota                                         *prometheus.GaugeVec
	breaker                                       *prometheus.GaugeVec
	calls                                         *prometheus.CounterVec
	duration                                      *prometheus.HistogramVec
	// byDetail: the counters labelled appid and the observation's detail.
	byDetail map[waybill.ObservationKind]*prometheus.CounterVec
}

// New builds the collectors and registers them.
func New(cfg Config) (*Metrics, error) {
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.DefaultRegisterer
	}
	if cfg.Namespace == "" {
		cfg.Namespace = "waybill"
	}
	if cfg.MaxAppIDs == 0 {
		cfg.MaxAppIDs = DefaultMaxAppIDs
	}
	m := &Metrics{reg: cfg.Registerer, ns: cfg.Namespace, appids: newFold(cfg.MaxAppIDs, "all"), codes: newFold(maxErrcodes, "")}
	m.appids.onlyDeclared = cfg.OnlyDeclared
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: m.ns, Name: name, Help: help}, labels)
	}
	m.traced = counter("traced_total", "waybill.traced events published, by how the token was obtained: a WeChat call, or the trace store (deduplicated).", "appid", "via")
	m.dead = counter("dead_letters_total", "Dead letters published, by reason.", "appid", "reason")
	m.parked = counter("parked_total", "Events moved to a delay topic.", "appid", "topic")
	m.retries = counter("retries_total", "In-place retries, by the failure's class.", "appid", "class")
	m.waits = counter("waits_total", "In-place waits for a later time, by the failure's class (quota: a spent local quota).", "appid", "class")
	m.limited = counter("limited_total", "Calls the local limiter held back, by limit.", "appid", "reason")
	m.goods = counter("goods_updates_total", "update_waybill_goods calls for changed goods.", "appid")
	m.replayed = counter("replayed_total", "Deliveries of events replayed from the dead-letter topic.", "appid")
	m.store = counter("trace_store_total", "Trace store answers: hit, claim_won, claim_lost, error.", "result")
	m.calls = counter("wechat_calls_total", "HTTP requests to WeChat, by endpoint, errcode (0: none) and class (none: success).", "endpoint", "errcode", "class")
	m.quota = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: m.ns, Name: "quota_remaining",
		Help: "trace_waybill calls left in the appid's daily window, as of its last admitted call (-1: no daily limit)."}, []string{"appid"})
	m.breaker = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: m.ns, Name: "breaker_state",
		Help: "Circuit breaker state by breaker (appid, or appid and endpoint): 0 closed, 1 half-open, 2 open. Set on each change; call Handler.BreakerStates now and then so that an idle breaker's timeout shows."}, []string{"breaker"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: m.ns, Name: "wechat_call_duration_seconds",
		Help: "Latency of HTTP requests to WeChat.", Buckets: CallBuckets}, []string{"endpoint"})
	m.byDetail = map[waybill.ObservationKind]*prometheus.CounterVec{
		waybill.ObservedTraced: m.traced, waybill.ObservedDeadLettered: m.dead, waybill.ObservedParked: m.parked,
		waybill.ObservedRetried: m.retries, waybill.ObservedWaited: m.waits, waybill.ObservedLimited: m.limited,
	}
	for _, c := range []prometheus.Collector{m.traced, m.dead, m.parked, m.retries, m.waits, m.limited, m.goods,
		m.replayed, m.store, m.calls, m.quota, m.breaker, m.duration} {
		if err := m.reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// deadReasons and limitReasons are the values Declare starts at zero.
var (
	deadReasons  = []string{"invalid_event", "permanent", "configuration", "not_yet_exhausted", "too_many_attempts"}
	limitReasons = []string{"app_daily", "user_daily", "rate"}
)

// Declare names appids that get series of their own (within MaxAppIDs), and
// starts their outcome counters at zero: an alert on increase() then sees
// an appid's first dead letter or denial, which a counter created by that
// very event would hide. It also starts the counters of events without a
// (valid) appid ("none") and, with OnlyDeclared, of "unknown" appids. Call
// it at start and again when merchants are added; it is idempotent.
func (m *Metrics) Declare(appids ...string) {
	labels := []string{"none"}
	if m.appids.onlyDeclared {
		labels = append(labels, "unknown")
	}
	for _, a := range appids {
		if l := m.appids.declare(a); l != "" {
			labels = append(labels, l)
		}
	}
	for _, app := range labels {
		for _, r := range deadReasons {
			m.dead.WithLabelValues(app, r)
		}
		for _, r := range limitReasons {
			m.limited.WithLabelValues(app, r)
		}
		m.traced.WithLabelValues(app, "call")
		m.traced.WithLabelValues(app, "store")
	}
}

// Observe records o: wire it to waybill.Config.Observe.
func (m *Metrics) Observe(o waybill.Observation) {
	app := m.appids.get(o.AppID)
	if vec, ok := m.byDetail[o.Kind]; ok {
		vec.WithLabelValues(app, o.Detail).Inc()
		return
	}
	switch o.Kind {
	case waybill.ObservedGoodsUpdated:
		m.goods.WithLabelValues(app).Inc()
	case waybill.ObservedReplayed:
		m.replayed.WithLabelValues(app).Inc()
	case waybill.ObservedTraceStore:
		m.store.WithLabelValues(o.Detail).Inc()
	case waybill.ObservedQuota:
		m.quota.WithLabelValues(app).Set(float64(o.Remaining))
	case waybill.ObservedBreaker:
		// The key is the appid, or the appid and an endpoint: fold on the appid.
		m.breaker.WithLabelValues(m.appids.getKey(o.AppID)).Set(breakerValue(o.Detail))
	}
}

func breakerValue(state string) float64 {
	switch state {
	case "half-open":
		return 1
	case "open":
		return 2
	}
	return 0
}

// ObserveCall records one WeChat request: wire it to wechat.Config.OnCall
// and to the token sources' OnCall.
func (m *Metrics) ObserveCall(c wechat.CallInfo) {
	code := m.codes.get(strconv.Itoa(c.Errcode))
	m.calls.WithLabelValues(c.Endpoint, code, c.Class.String()).Inc()
	m.duration.WithLabelValues(c.Endpoint).Observe(c.Duration.Seconds())
}

// CounterFunc registers a counter read from f at each scrape, such as a
// kafka.DelayRunner's Returned for one delay topic:
//
//	m.CounterFunc("returned_total", "Parked events returned.", prometheus.Labels{"topic": t}, func() float64 { return float64(r.Returned(t)) })
func (m *Metrics) CounterFunc(name, help string, labels prometheus.Labels, f func() float64) error {
	c := prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: m.ns, Name: name, Help: help, ConstLabels: labels}, f)
	return m.reg.Register(c)
}

// PartitionLag is one partition's lag, as LagFunc reports it.
type PartitionLag struct {
	Group, Topic string
	Partition    int32
	Lag          int64
}

// LagEvery is how often Lag reads the consumer lag, and LagTimeout bounds
// one read: a scrape serves the last read and never waits on Kafka.
const (
	LagEvery   = 15 * time.Second
	LagTimeout = 10 * time.Second
)

// Lag registers waybill_consumer_lag{group, topic, partition}, read by read
// (kafka.LagReader.Lag, for the service's groups and topics) every LagEvery
// in the background until ctx ends; a scrape serves the last read.
// waybill_consumer_lag_up is 1 when the last read succeeded within
// LagTimeout, and waybill_consumer_lag_age_seconds is how old the lag
// served is. After a failed read the lag series are absent.
func (m *Metrics) Lag(ctx context.Context, read func(context.Context) ([]PartitionLag, error)) error {
	c := &lagCollector{
		desc: prometheus.NewDesc(prometheus.BuildFQName(m.ns, "", "consumer_lag"),
			"Records between a consumer group's committed offset and the partition's high watermark.", []string{"group", "topic", "partition"}, nil),
		up: prometheus.NewDesc(prometheus.BuildFQName(m.ns, "", "consumer_lag_up"),
			"1 when the last read of the consumer lag succeeded.", nil, nil),
		age: prometheus.NewDesc(prometheus.BuildFQName(m.ns, "", "consumer_lag_age_seconds"),
			"Seconds since the consumer lag served was read.", nil, nil),
	}
	if err := m.reg.Register(c); err != nil {
		return err
	}
	c.refresh(ctx, read) // the first scrape has a value
	go wait.Every(ctx, LagEvery, func() { c.refresh(ctx, read) })
	return nil
}

type lagCollector struct {
	desc, up, age *prometheus.Desc
	busy          atomic.Bool // a read is running
	mu            sync.Mutex
	lags          []PartitionLag
	ok            bool
	at            time.Time // of the last successful read
}

// refresh reads once, within LagTimeout. A read that overruns is
// abandoned (its result dropped) and no other starts while it runs, so a
// hung cluster costs one goroutine, not one per tick.
func (c *lagCollector) refresh(ctx context.Context, read func(context.Context) ([]PartitionLag, error)) {
	if !c.busy.CompareAndSwap(false, true) {
		c.mu.Lock()
		c.ok = false
		c.mu.Unlock()
		return
	}
	rctx, cancel := context.WithTimeout(ctx, LagTimeout)
	defer cancel()
	type result struct {
		lags []PartitionLag
		err  error
	}
	done := make(chan result, 1)
	go func() {
		defer c.busy.Store(false)
		lags, err := read(rctx)
		done <- result{lags, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-rctx.Done():
		r.err = rctx.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ok = r.err == nil
	if c.ok {
		c.lags, c.at = r.lags, time.Now()
	}
}

func (c *lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc; ch <- c.up; ch <- c.age }

func (c *lagCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	up := 0.0
	if c.ok {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up)
	if c.at.IsZero() {
		return
	}
	ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, time.Since(c.at).Seconds())
	if !c.ok {
		return
	}
	for _, l := range c.lags {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(l.Lag),
			l.Group, l.Topic, strconv.Itoa(int(l.Partition)))
	}
}

// maxLabelBytes bounds an appid label (WeChat's are 18 bytes): a longer
// value is a producer's mistake, not a merchant.
const maxLabelBytes = 64

// fold bounds a label's values: the first max distinct values keep their
// name, later ones become "other"; max < 0 maps every value to all. With
// onlyDeclared, values not declared become "unknown". A value that is not
// valid UTF-8 or is too long becomes "invalid" (Prometheus refuses the
// one, and the other is no appid).
type fold struct {
	max          int
	all          string
	onlyDeclared bool
	mu           sync.Mutex
	seen         map[string]bool
}

func newFold(max int, all string) *fold { return &fold{max: max, all: all, seen: map[string]bool{}} }

func (f *fold) get(v string) string {
	if f.max < 0 {
		return f.all
	}
	switch {
	case v == "":
		return "none"
	case len(v) > maxLabelBytes || !utf8.ValidString(v):
		return "invalid"
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.seen[v] {
		return v
	}
	if f.onlyDeclared {
		return "unknown"
	}
	return f.addLocked(v)
}

// declare admits v as a value of its own and returns its label ("" when
// every value folds into one).
func (f *fold) declare(v string) string {
	if f.max < 0 {
		return ""
	}
	if v == "" || len(v) > maxLabelBytes || !utf8.ValidString(v) {
		return ""
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.seen[v] {
		return v
	}
	return f.addLocked(v)
}

func (f *fold) addLocked(v string) string {
	if len(f.seen) >= f.max {
		return "other"
	}
	f.seen[v] = true
	return v
}

// getKey folds a breaker key, "appid" or "appid endpoint", on its appid.
func (f *fold) getKey(key string) string {
	appid, rest, ok := strings.Cut(key, " ")
	if !ok {
		return f.get(key)
	}
	return f.get(appid) + " " + rest
}
