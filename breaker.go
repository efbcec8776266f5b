package waybill

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/waybillkit/waybill/wechat"
)

// ErrBreakerOpen is returned (wrapped) when a call was not made because the
// circuit breaker for its appid is open or half-open and busy. Events that
// meet it are not dead-lettered: they wait and flow again once a probe call
// succeeds.
var ErrBreakerOpen = errors.New("circuit breaker open")

// BreakerConfig configures the circuit breakers in front of WeChat. The zero
// value gives one breaker per appid that opens after 5 consecutive transient
// failures and probes again after 30 s.
type BreakerConfig struct {
	// Disabled turns the breakers off: every call goes through.
	Disabled bool
	// Key maps an appid to its breaker. Nil means one breaker per appid, so
	// that one merchant's failing calls do not stop the others. Return a
	// constant to share one breaker among all appids.
	Key func(appid string) string
	// ConsecutiveFailures trips the breaker. Zero means 5.
	ConsecutiveFailures uint32
	// OpenTimeout is how long the breaker stays open before it lets probe
	// calls through. Zero means 30 s.
	OpenTimeout time.Duration
	// HalfOpenRequests is how many probe calls may run while half-open. Zero
	// means 1.
	HalfOpenRequests uint32
	// IsFailure reports whether an error counts against the breaker. Nil
	// means CountsAsFailure. Errors for which it is false neither trip nor
	// reset the breaker.
	IsFailure func(err error) bool
	// OnStateChange is called on every state change. It runs under the
	// breaker's lock: it must not block.
	OnStateChange func(key string, from, to gobreaker.State)
}

// CountsAsFailure is the default BreakerConfig.IsFailure: only transient
// faults (network, HTTP 5xx, errcode -1, timeouts) say that WeChat is
// unwell. An invalid event, a permanent errcode, a quota answer or a
// cancelled context says nothing about WeChat's health.
func CountsAsFailure(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	return wechat.ClassOf(err) == wechat.ClassTransient
}

func (c *BreakerConfig) setDefaults() {
	if c.Key == nil {
		c.Key = func(appid string) string { return appid }
	}
	if c.ConsecutiveFailures == 0 {
		c.ConsecutiveFailures = 5
	}
	if c.OpenTimeout == 0 {
		c.OpenTimeout = 30 * time.Second
	}
	if c.HalfOpenRequests == 0 {
		c.HalfOpenRequests = 1
	}
	if c.IsFailure == nil {
		c.IsFailure = CountsAsFailure
	}
}

// breakers holds one gobreaker per key, created on first use.
type breakers struct {
	cfg BreakerConfig
	mu  sync.Mutex
	m   map[string]*gobreaker.CircuitBreaker[*wechat.TraceWaybillResponse]
}

func newBreakers(cfg BreakerConfig) *breakers {
	cfg.setDefaults()
	return &breakers{cfg: cfg, m: make(map[string]*gobreaker.CircuitBreaker[*wechat.TraceWaybillResponse])}
}

// get returns the breaker of appid's calls to endpoint. trace_waybill's is
// named by Key alone; other endpoints have their own, so that goods updates
// neither trip nor are held back by trace_waybill's breaker.
func (b *breakers) get(appid, endpoint string) *gobreaker.CircuitBreaker[*wechat.TraceWaybillResponse] {
	key := b.cfg.Key(appid)
	if endpoint != endpointTrace {
		key += " " + endpoint
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	cb, ok := b.m[key]
	if !ok {
		cfg := b.cfg
		cb = gobreaker.NewCircuitBreaker[*wechat.TraceWaybillResponse](gobreaker.Settings{
			Name:        key,
			MaxRequests: cfg.HalfOpenRequests,
			Timeout:     cfg.OpenTimeout,
			ReadyToTrip: func(c gobreaker.Counts) bool {
				return c.ConsecutiveFailures >= cfg.ConsecutiveFailures
			},
			// A success must count (it closes a half-open breaker); an
			// error that says nothing about WeChat's health must not.
			IsExcluded: func(err error) bool { return err != nil && !cfg.IsFailure(err) },
			OnStateChange: func(name string, from, to gobreaker.State) {
				if cfg.OnStateChange != nil {
					cfg.OnStateChange(name, from, to)
				}
			},
		})
		b.m[key] = cb
	}
	return cb
}

// execute runs call behind the breaker of appid's endpoint. While the
// breaker refuses, it returns an error wrapping ErrBreakerOpen.
func (b *breakers) execute(appid, endpoint string, call func() (*wechat.TraceWaybillResponse, error)) (*wechat.TraceWaybillResponse, error) {
	if b.cfg.Disabled {
		return call()
	}
	resp, err := b.get(appid, endpoint).Execute(call)
	if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
		return nil, errors.Join(ErrBreakerOpen, err)
	}
	return resp, err
}

// states reports every breaker's state, by key. gobreaker moves an open
// breaker to half-open only when asked, so this also reports (through
// OnStateChange) the breakers whose open time has passed.
func (b *breakers) states() map[string]gobreaker.State {
	b.mu.Lock()
	cbs := make(map[string]*gobreaker.CircuitBreaker[*wechat.TraceWaybillResponse], len(b.m))
	for k, cb := range b.m {
		cbs[k] = cb
	}
	b.mu.Unlock()
	out := make(map[string]gobreaker.State, len(cbs))
	for k, cb := range cbs {
		out[k] = cb.State()
	}
	return out
}

// State reports the state of the breaker that guards appid's endpoint.
func (b *breakers) state(appid, endpoint string) gobreaker.State {
	if b.cfg.Disabled {
		return gobreaker.StateClosed
	}
	return b.get(appid, endpoint).State()
}
