package waybill

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/testevent"
	"github.com/waybillkit/waybill/internal/testpub"
	"github.com/waybillkit/waybill/ratelimit"
	"github.com/waybillkit/waybill/wechat"
)

func TestLimiterParksSpentQuotasUntilTheWindow(t *testing.T) {
	now := time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC) // 11:00 in Shanghai
	reset := time.Date(2026, 11, 26, 16, 0, 0, 0, time.UTC)
	lim, err := ratelimit.New(ratelimit.Config{
		Defaults: ratelimit.Limits{AppDaily: 100_000, UserDaily: 2, Rate: -1},
		Apps:     map[string]ratelimit.Limits{"wxsmall": {AppDaily: 1}},
	})
	require.NoError(t, err)
	tr, pub := newScriptedTracer(), &testpub.Recorder{}
	h := newTestHandler(t, tr, pub, func(c *Config) {
		c.Limiter = lim
		c.Parking = &ParkingConfig{}
		c.Now = func() time.Time { return now }
	})
	handle := func(order, appid, openid, waybill string) {
		ev := testevent.Valid(order, waybill)
		ev.AppID, ev.OpenID = appid, openid
		require.NoError(t, h.Handle(msgOf(t, ev)))
	}
	handle("o1", "wxsmall", "buyer-a", "W1")
	handle("o2", "wxsmall", "buyer-b", "W2") // appid's day spent
	handle("o3", "wxbig", "buyer-c", "W3")
	handle("o4", "wxbig", "buyer-c", "W4")
	handle("o5", "wxbig", "buyer-c", "W5") // buyer's day spent
	handle("o6", "wxbig", "buyer-d", "W6") // another buyer flows

	assert.Len(t, pub.On(event.WaybillTracedTopic), 4)
	assert.Empty(t, pub.On(deadletter.DefaultTopic), "a spent quota is never a dead letter")
	parked := pub.On("order.shipped.delay.window")
	require.Len(t, parked, 2)
	for _, m := range parked {
		// Spread over the window's first 5 min by the time of day parked.
		due := reset.Add(spreadOf(11 * time.Hour))
		assert.Equal(t, due.Format(time.RFC3339Nano), m.Metadata.Get(deadletter.HeaderDueAt))
	}
	for _, w := range []string{"W2", "W5"} {
		assert.Zero(t, tr.callsFor(w), "no call is spent on a denied event")
	}
}

func TestLimiterRefundsCallsWeChatDidNotCount(t *testing.T) {
	// synctest: the three waits for the next minute pass at once.
	synctest.Test(t, func(t *testing.T) {
		lim, err := ratelimit.New(ratelimit.Config{Defaults: ratelimit.Limits{AppDaily: 2, Rate: -1}})
		require.NoError(t, err)
		tr, pub := newScriptedTracer(), &testpub.Recorder{}
		http503 := &wechat.Error{Endpoint: "trace_waybill", HTTPStatus: 503, Class: wechat.ClassTransient}
		tr.On("W1", wechatErr(45011), http503, wechatErr(45011)) // minute limit, gateway failure: not counted
		h := newTestHandler(t, tr, pub, func(c *Config) { c.Limiter = lim })
		ev := testevent.Valid("o1", "W1")
		ev.AppID = "wxa"
		_, err = redeliver(h, msgOf(t, ev), 100) // each minute wait passes the budget's end
		require.NoError(t, err)
		require.Len(t, pub.On(event.WaybillTracedTopic), 1)
		assert.Equal(t, 4, tr.callsFor("W1"))
		d, err := lim.Allow(context.Background(), "wxa", "someone", time.Now())
		require.NoError(t, err)
		assert.True(t, d.Allowed, "three refused calls were refunded; one counted")
		assert.Equal(t, int64(0), d.AppRemaining)
	})
}

// TestWeChat45009 shows both readings of 45009: when WeChat's quota report
// confirms the appid's day is spent, no more calls go out for it; when the
// appid still has quota (a buyer past their own calls gets the same errcode),
// only that event waits and the merchant's other buyers flow on.
func TestWeChat45009(t *testing.T) {
	for _, tc := range []struct {
		name        string
		remain      int64
		callsForW2  int
		parkedTotal int
	}{
		{"appid spent", 0, 0, 2},
		{"one buyer spent", 99_000, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)
			lim, err := ratelimit.New(ratelimit.Config{Defaults: ratelimit.Limits{Rate: -1}})
			require.NoError(t, err)
			tr, pub := newScriptedTracer(), &testpub.Recorder{}
			tr.remain["wxapp1"] = tc.remain
			tr.On("W1", wechatErr(45009))
			h := newTestHandler(t, tr, pub, func(c *Config) {
				c.Limiter = lim
				c.Parking = &ParkingConfig{}
				c.Now = func() time.Time { return now }
			})
			require.NoError(t, h.Handle(msgOf(t, testevent.Valid("o1", "W1"))))
			ev2 := testevent.Valid("o2", "W2")
			ev2.OpenID = "another-buyer"
			require.NoError(t, h.Handle(msgOf(t, ev2)))
			assert.Len(t, pub.On("order.shipped.delay.window"), tc.parkedTotal)
			assert.Equal(t, tc.callsForW2, tr.callsFor("W2"))
			assert.Equal(t, 1, tr.callsFor("quota:wxapp1"), "one quota check per 45009")
			assert.Empty(t, pub.On(deadletter.DefaultTopic))
		})
	}
}
