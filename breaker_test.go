package waybill

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/sony/gobreaker/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/testevent"
	"github.com/waybillkit/waybill/internal/testpub"
	"github.com/waybillkit/waybill/wechat"
)

func fail(err error) func() (*wechat.TraceWaybillResponse, error) {
	return func() (*wechat.TraceWaybillResponse, error) { return nil, err }
}

func succeed() (*wechat.TraceWaybillResponse, error) {
	return &wechat.TraceWaybillResponse{WaybillToken: "t"}, nil
}

func TestBreakerCountsOnlyTransientFaults(t *testing.T) {
	cases := map[string]error{
		"invalid openid":     wechatErr(40003),
		"daily quota":        wechatErr(45009),
		"minute rate":        wechatErr(45011),
		"not yet":            wechatErr(931023),
		"plugin not enabled": wechatErr(48001),
		"cancelled":          fmt.Errorf("trace: %w", context.Canceled),
	}
	for name, err := range cases {
		t.Run(name, func(t *testing.T) {
			b := newBreakers(BreakerConfig{ConsecutiveFailures: 2})
			_, _ = b.execute("wxa", endpointTrace, fail(wechatErr(-1)))
			for range 10 {
				_, _ = b.execute("wxa", endpointTrace, fail(err))
			}
			assert.Equal(t, gobreaker.StateClosed, b.state("wxa", endpointTrace), "must not trip")
			// Nor reset: one more transient fault completes the streak.
			_, _ = b.execute("wxa", endpointTrace, fail(wechatErr(-1)))
			assert.Equal(t, gobreaker.StateOpen, b.state("wxa", endpointTrace), "must not reset the streak either")
		})
	}
}

func TestBreakerIsPerAppID(t *testing.T) {
	var mu sync.Mutex
	var changes []string
	b := newBreakers(BreakerConfig{OnStateChange: func(key string, from, to gobreaker.State) {
		mu.Lock()
		defer mu.Unlock()
		changes = append(changes, fmt.Sprintf("%s %s→%s", key, from, to))
	}})
	for range 5 {
		_, err := b.execute("wxbroken", endpointTrace, fail(wechatErr(-1)))
		require.Error(t, err)
	}
	called := false
	_, err := b.execute("wxbroken", endpointTrace, func() (*wechat.TraceWaybillResponse, error) { called = true; return succeed() })
	require.ErrorIs(t, err, ErrBreakerOpen)
	assert.False(t, called, "an open breaker must not call WeChat")

	resp, err := b.execute("wxhealthy", endpointTrace, succeed)
	require.NoError(t, err, "another merchant is unaffected")
	assert.Equal(t, "t", resp.WaybillToken)
	assert.Equal(t, []string{"wxbroken closed→open"}, changes)
}

func TestBreakerSharedKey(t *testing.T) {
	b := newBreakers(BreakerConfig{ConsecutiveFailures: 1, Key: func(string) string { return "all" }})
	_, _ = b.execute("wxa", endpointTrace, fail(wechatErr(-1)))
	_, err := b.execute("wxb", endpointTrace, succeed)
	assert.ErrorIs(t, err, ErrBreakerOpen)
}

func TestBreakerHalfOpenProbeCloses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBreakers(BreakerConfig{ConsecutiveFailures: 1, OpenTimeout: time.Minute})
		_, _ = b.execute("wxa", endpointTrace, fail(wechatErr(-1)))
		require.Equal(t, gobreaker.StateOpen, b.state("wxa", endpointTrace))
		time.Sleep(time.Minute + time.Second)
		assert.Equal(t, gobreaker.StateHalfOpen, b.state("wxa", endpointTrace))
		_, err := b.execute("wxa", endpointTrace, succeed)
		require.NoError(t, err)
		assert.Equal(t, gobreaker.StateClosed, b.state("wxa", endpointTrace))
	})
}

// TestHandlerWaitsOutOpenBreaker: with WeChat failing for a while, the
// breaker opens, the event waits instead of being dead-lettered, and it is
// traced once WeChat recovers.
func TestHandlerWaitsOutOpenBreaker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr, pub := newScriptedTracer(), &testpub.Recorder{}
		tr.On("SF100", wechatErr(-1), wechatErr(-1), wechatErr(-1), wechatErr(-1))
		logs := watermill.NewCaptureLogger()
		h := newTestHandler(t, tr, pub, func(c *Config) {
			c.Logger = logs
			c.Breaker = BreakerConfig{ConsecutiveFailures: 2, OpenTimeout: 10 * time.Second}
			c.Retry.BreakerWait = time.Second
			c.Backoff = func(int) time.Duration { return 100 * time.Millisecond }
		})
		// 30 s of open breaker pass the 25 s budget: redelivered once.
		n, err := redeliver(h, msgOf(t, testevent.Valid("order-1", "SF100")), 10)
		require.NoError(t, err)
		assert.Equal(t, 2, n, "deliveries")
		assert.Len(t, pub.On(event.WaybillTracedTopic), 1)
		assert.Empty(t, pub.On(deadletter.DefaultTopic))
		// Calls were made only while closed or half-open: 2 to trip, then one
		// probe per half-open period until the script runs out.
		assert.Equal(t, 5, tr.callsFor("SF100"))
		assert.Positive(t, h.Stats().Waits, "the event waited on the open breaker")
		assert.Equal(t, gobreaker.StateClosed, h.BreakerState("wxapp1"), "closed again after the probe succeeded")
		var changes []string
		for _, m := range logs.Captured()[watermill.InfoLogLevel] {
			if m.Msg == "circuit breaker state change" {
				changes = append(changes, fmt.Sprint(m.Fields["from"], "→", m.Fields["to"]))
			}
		}
		// Two failures trip it; two probes fail and reopen it; the third closes it.
		assert.Equal(t, []string{"closed→open", "open→half-open", "half-open→open", "open→half-open", "half-open→open", "open→half-open", "half-open→closed"}, changes)
	})
}

// TestBreakerStatesReportsHalfOpen: an open breaker of an appid without
// events is reported half-open once its open time has passed, through
// Observe too, when BreakerStates asks.
func TestBreakerStatesReportsHalfOpen(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := newScriptedTracer()
		tr.On("SF1", busy(10)...)
		rec := &recordObservations{}
		h := newTestHandler(t, tr, &testpub.Recorder{}, func(c *Config) {
			c.Breaker = BreakerConfig{ConsecutiveFailures: 2, OpenTimeout: 30 * time.Second}
			c.Observe = rec.observe
		})
		_ = h.Handle(msgOf(t, testevent.Valid("order-1", "SF1")))
		require.Equal(t, gobreaker.StateOpen, h.BreakerStates()["wxapp1"])
		time.Sleep(31 * time.Second)
		rec.take()
		assert.Equal(t, gobreaker.StateHalfOpen, h.BreakerStates()["wxapp1"])
		assert.Contains(t, rec.take(), Observation{Kind: ObservedBreaker, AppID: "wxapp1", Detail: "half-open"})
	})
}
