package waybill

import (
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/testevent"
	"github.com/waybillkit/waybill/internal/testpub"
)

func TestParkingRoute(t *testing.T) {
	p := ParkingConfig{}
	p.setDefaults("order.shipped")
	now := time.Date(2026, 11, 26, 15, 4, 5, 0, time.UTC)
	cases := []struct {
		name   string
		wait   time.Duration
		window bool
		topic  string
		due    time.Duration
	}{
		{"next minute", 55 * time.Second, false, "order.shipped.delay.1m0s", time.Minute},
		{"exactly a tier", time.Minute, false, "order.shipped.delay.1m0s", time.Minute},
		{"breaker", 5 * time.Second, false, "order.shipped.delay.1m0s", time.Minute},
		{"between tiers", 5 * time.Minute, false, "order.shipped.delay.10m0s", 10 * time.Minute},
		{"not yet", time.Hour, false, "order.shipped.delay.1h0m0s", time.Hour},
		{"longer than every tier goes round", 3 * time.Hour, false, "order.shipped.delay.1h0m0s", time.Hour},
		{"quota window", 9 * time.Hour, true, "order.shipped.delay.window", 9 * time.Hour},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			topic, due := p.route("order.shipped", now, now.Add(tc.wait), tc.window)
			assert.Equal(t, tc.topic, topic)
			assert.Equal(t, now.Add(tc.due), due)
			assert.Contains(t, p.Topics("order.shipped"), topic)
		})
	}
}

func TestParkingRouteNative(t *testing.T) {
	p := ParkingConfig{Delay: NativeDelay}
	p.setDefaults("order.shipped")
	now := time.Date(2026, 11, 26, 15, 4, 5, 300_000_000, time.UTC)
	for _, tc := range []struct {
		name        string
		until, want time.Time
		window      bool
	}{
		{"rounded up to the second, never early", now.Add(55 * time.Second), time.Date(2026, 11, 26, 15, 5, 1, 0, time.UTC), false},
		{"a whole second stays", time.Date(2026, 11, 26, 16, 0, 0, 0, time.UTC), time.Date(2026, 11, 26, 16, 0, 0, 0, time.UTC), true},
		{"longer than any tier waits once", now.Add(9 * time.Hour), time.Date(2026, 11, 27, 0, 4, 6, 0, time.UTC), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topic, due := p.route("order.shipped", now, tc.until, tc.window)
			assert.Equal(t, "order.shipped", topic, "back to the input topic")
			assert.Equal(t, tc.want, due)
		})
	}
	assert.Empty(t, p.Topics("order.shipped"), "no delay topics")
}

func TestHandlerParksNatively(t *testing.T) {
	now := time.Date(2026, 11, 26, 15, 4, 5, 300_000_000, time.UTC)
	tr, pub := newScriptedTracer(), &testpub.Recorder{}
	tr.On("SF100", wechatErr(931023))
	h := newTestHandler(t, tr, pub, func(c *Config) {
		c.Parking = &ParkingConfig{Delay: NativeDelay}
		c.Now = func() time.Time { return now }
		c.Retry.NotYetDelay = time.Hour
	})
	require.NoError(t, h.Handle(msgOf(t, testevent.Valid("order-1", "SF100"))))
	parked := pub.On(event.OrderShippedTopic)
	require.Len(t, parked, 1, "parked on the input topic itself")
	md := parked[0].Metadata
	assert.Equal(t, "2026-11-26T16:04:06Z", md.Get(delay.DelayedUntilKey), "Watermill's delay metadata, rounded up")
	assert.NotEmpty(t, md.Get(delay.DelayedForKey))
	assert.Equal(t, now.Add(time.Hour).Format(time.RFC3339Nano), md.Get(deadletter.HeaderNotBefore), "the not-before time stays exact")
	assert.Equal(t, "1", md.Get(deadletter.HeaderNotYet))
	for _, topic := range (&ParkingConfig{}).Topics(event.OrderShippedTopic) {
		assert.Empty(t, pub.On(topic), "no delay topic")
	}
}

func TestParkingConfigValidate(t *testing.T) {
	assert.ErrorContains(t, (&ParkingConfig{Delay: 7}).Validate(), "ParkDelay(7)")
	assert.Error(t, (&ParkingConfig{Tiers: []time.Duration{time.Hour, time.Minute}}).Validate())
	assert.Error(t, (&ParkingConfig{Tiers: []time.Duration{0}}).Validate())
	assert.NoError(t, (&ParkingConfig{Tiers: []time.Duration{time.Minute, time.Hour}}).Validate())
	_, err := NewHandler(Config{Client: newScriptedTracer(), Publisher: &testpub.Recorder{}, Parking: &ParkingConfig{Tiers: []time.Duration{-1}}})
	assert.ErrorContains(t, err, "must be positive")
}

func TestHandlerParksInsteadOfWaiting(t *testing.T) {
	now := time.Date(2026, 11, 26, 15, 4, 5, 0, time.UTC) // 23:04 in Shanghai
	cases := []struct {
		name  string
		code  int
		topic string
		due   time.Time
	}{
		{"daily quota waits for the window", 45009, "order.shipped.delay.window", time.Date(2026, 11, 26, 16, 0, 0, 0, time.UTC).Add(spreadOf(23*time.Hour + 4*time.Minute + 5*time.Second))},
		{"minute rate", 45011, "order.shipped.delay.1m0s", now.Add(time.Minute)},
		{"not yet", 931023, "order.shipped.delay.1h0m0s", now.Add(time.Hour)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr, pub := newScriptedTracer(), &testpub.Recorder{}
			tr.On("SF100", wechatErr(tc.code))
			h := newTestHandler(t, tr, pub, func(c *Config) {
				c.Parking = &ParkingConfig{}
				c.Now = func() time.Time { return now }
				c.Retry.QuotaReset = nil // the real one: next 00:00 Asia/Shanghai
				c.Retry.NotYetDelay = time.Hour
			})
			in := msgOf(t, testevent.Valid("order-1", "SF100"))
			in.Metadata.Set("trace_id", "abc")
			require.NoError(t, h.Handle(in), "parked events are acknowledged")

			assert.Empty(t, pub.On(event.WaybillTracedTopic))
			assert.Empty(t, pub.On(deadletter.DefaultTopic), "never dead-lettered")
			parked := pub.On(tc.topic)
			require.Len(t, parked, 1)
			p := parked[0]
			assert.Equal(t, in.UUID, p.UUID)
			assert.Equal(t, []byte(in.Payload), []byte(p.Payload))
			assert.Equal(t, "abc", p.Metadata.Get("trace_id"))
			assert.Equal(t, "1", p.Metadata.Get(deadletter.HeaderAttempts))
			assert.Equal(t, "1", p.Metadata.Get(deadletter.HeaderParks))
			assert.Equal(t, event.OrderShippedTopic, p.Metadata.Get(deadletter.HeaderParkedFrom))
			assert.Equal(t, now.Format(time.RFC3339Nano), p.Metadata.Get(deadletter.HeaderFirstFailure))
			assert.Equal(t, tc.due.Format(time.RFC3339Nano), p.Metadata.Get(deadletter.HeaderDueAt))
			assert.Equal(t, int64(1), h.Stats().Parked)
		})
	}
}

func TestHandlerHistorySurvivesParking(t *testing.T) {
	first := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)
	returned := func(attempts, parks int) *message.Message {
		m := message.NewMessage("m-1", testevent.JSON(t, func(*event.OrderShipped) {}))
		m.Metadata.Set(deadletter.HeaderAttempts, strconv.Itoa(attempts))
		m.Metadata.Set(deadletter.HeaderParks, strconv.Itoa(parks))
		m.Metadata.Set(deadletter.HeaderFirstFailure, first.Format(time.RFC3339Nano))
		return m
	}

	t.Run("not-yet bound counts earlier deliveries", func(t *testing.T) {
		tr, pub := newScriptedTracer(), &testpub.Recorder{}
		tr.On("SF100", wechatErr(931023))
		h := newTestHandler(t, tr, pub, func(c *Config) { c.Parking = &ParkingConfig{} })
		m := returned(23, 23)
		m.Metadata.Set(deadletter.HeaderNotYet, "23")
		require.NoError(t, h.Handle(m))
		dl := testpub.OnlyDeadLetter(t, pub)
		assert.Equal(t, deadletter.ReasonNotYetExhausted, dl.Reason)
		assert.Equal(t, 24, dl.Attempts)
		assert.Equal(t, first, dl.FirstFailure, "first failure travels from the first delivery")
		assert.Equal(t, 931023, dl.Errcode)
	})
	t.Run("parked too often", func(t *testing.T) {
		tr, pub := newScriptedTracer(), &testpub.Recorder{}
		tr.On("SF100", wechatErr(45011))
		h := newTestHandler(t, tr, pub, func(c *Config) { c.Parking = &ParkingConfig{MaxParks: 5} })
		require.NoError(t, h.Handle(returned(5, 5)))
		dl := testpub.OnlyDeadLetter(t, pub)
		assert.Equal(t, deadletter.ReasonTooManyAttempts, dl.Reason)
		assert.Equal(t, 45011, dl.Errcode)
		assert.Equal(t, 6, dl.Attempts)
	})
}
