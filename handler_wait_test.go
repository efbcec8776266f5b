package waybill

import (
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/testclock"
	"github.com/waybillkit/waybill/internal/testevent"
	"github.com/waybillkit/waybill/internal/testpub"
	"github.com/waybillkit/waybill/wechat"
)

// TestWaitInPlaceIsBounded: a long outage never holds the partition past
// MaxWaitInPlace; the event is left for redelivery, or parked when parking
// is configured, and never dead-lettered.
func TestWaitInPlaceIsBounded(t *testing.T) {
	t.Run("without parking: nack", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			tr, pub := newScriptedTracer(), &testpub.Recorder{}
			tr.On("SF100", busy(1000)...)
			h := newTestHandler(t, tr, pub, func(c *Config) {
				c.MaxWaitInPlace = 25 * time.Second
				c.Backoff = func(int) time.Duration { return 10 * time.Second }
			})
			start := time.Now()
			err := h.Handle(msgOf(t, testevent.Valid("order-1", "SF100")))
			require.ErrorIs(t, err, ErrWaitLimit)
			assert.Equal(t, 20*time.Second, time.Since(start), "two backoffs fit in 25 s, a third does not")
			assert.Equal(t, 3, tr.callsFor("SF100"))
			assert.Empty(t, pub.On(deadletter.DefaultTopic))
		})
	})
	t.Run("with parking: park", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			tr, pub := newScriptedTracer(), &testpub.Recorder{}
			tr.On("SF100", busy(1000)...)
			h := newTestHandler(t, tr, pub, func(c *Config) {
				c.MaxWaitInPlace = 25 * time.Second
				c.Backoff = func(int) time.Duration { return 10 * time.Second }
				c.Parking = &ParkingConfig{}
			})
			require.NoError(t, h.Handle(msgOf(t, testevent.Valid("order-1", "SF100"))))
			parked := pub.On("order.shipped.delay.1m0s")
			require.Len(t, parked, 1)
			assert.Equal(t, "3", parked[0].Metadata.Get(deadletter.HeaderAttempts))
			assert.Empty(t, pub.On(deadletter.DefaultTopic))
		})
	})
}

// TestTokenRejectedAgainIsBounded: after the client's own refresh failed,
// a token WeChat keeps rejecting ends as a configuration dead letter instead
// of refetching tokens without end.
func TestTokenRejectedAgainIsBounded(t *testing.T) {
	tr, pub := newScriptedTracer(), &testpub.Recorder{}
	tr.On("SF100", wechatErr(40001), wechatErr(40001), wechatErr(40001), wechatErr(40001))
	h := newTestHandler(t, tr, pub, nil)
	require.NoError(t, h.Handle(msgOf(t, testevent.Valid("order-1", "SF100"))))
	assert.Equal(t, 3, tr.callsFor("SF100"))
	dl := testpub.OnlyDeadLetter(t, pub)
	assert.Equal(t, deadletter.ReasonConfiguration, dl.Reason)
	assert.Equal(t, 40001, dl.Errcode)
}

// TestNotYetBoundCountsOnlyNotYet: transient faults before a 931023 do not
// use up the not-yet bound.
func TestNotYetBoundCountsOnlyNotYet(t *testing.T) {
	tr, pub := newScriptedTracer(), &testpub.Recorder{}
	tr.On("SF100", append(busy(30), wechatErr(931023))...)
	h := newTestHandler(t, tr, pub, func(c *Config) { c.Parking = &ParkingConfig{}; c.Retry.NotYetDelay = time.Hour })
	require.NoError(t, h.Handle(msgOf(t, testevent.Valid("order-1", "SF100"))))
	assert.Empty(t, pub.On(deadletter.DefaultTopic))
	parked := pub.On("order.shipped.delay.1h0m0s")
	require.Len(t, parked, 1)
	assert.Equal(t, "1", parked[0].Metadata.Get(deadletter.HeaderNotYet))
	assert.Equal(t, "31", parked[0].Metadata.Get(deadletter.HeaderAttempts))
}

// TestBackEarlyFromTheLongestTier: an event that must wait longer than the
// longest tier comes back early and is parked again without a call.
func TestBackEarlyFromTheLongestTier(t *testing.T) {
	now := time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)
	tr, pub := newScriptedTracer(), &testpub.Recorder{}
	tr.On("SF100", wechatErr(931023))
	h := newTestHandler(t, tr, pub, func(c *Config) {
		c.Parking = &ParkingConfig{}
		c.Retry.NotYetDelay = 6 * time.Hour
		c.Now = func() time.Time { return now }
	})
	require.NoError(t, h.Handle(msgOf(t, testevent.Valid("order-1", "SF100"))))
	first := pub.On("order.shipped.delay.1h0m0s")
	require.Len(t, first, 1)
	assert.Equal(t, now.Add(6*time.Hour).Format(time.RFC3339Nano), first[0].Metadata.Get(deadletter.HeaderNotBefore))

	now = now.Add(time.Hour) // the kafka.DelayRunner returns it after the tier's hour
	require.NoError(t, h.Handle(first[0].Copy()))
	assert.Equal(t, 1, tr.callsFor("SF100"), "no call before its time")
	assert.Len(t, pub.On("order.shipped.delay.1h0m0s"), 2)

	now = now.Add(5 * time.Hour)
	require.NoError(t, h.Handle(pub.On("order.shipped.delay.1h0m0s")[1].Copy()))
	assert.Equal(t, 2, tr.callsFor("SF100"))
	assert.Len(t, pub.On(event.WaybillTracedTopic), 1)
}

// TestBreakerRefusalsAreNotAttempts: calls the open breaker held back are
// not counted as calls made.
func TestBreakerRefusalsAreNotAttempts(t *testing.T) {
	tr, pub := newScriptedTracer(), &testpub.Recorder{}
	tr.On("SF100", wechatErr(-1), wechatErr(40003))
	h := newTestHandler(t, tr, pub, func(c *Config) {
		c.Breaker = BreakerConfig{ConsecutiveFailures: 1, OpenTimeout: 20 * time.Millisecond}
		c.Retry.BreakerWait = time.Millisecond
	})
	require.NoError(t, h.Handle(msgOf(t, testevent.Valid("order-1", "SF100"))))
	dl := testpub.OnlyDeadLetter(t, pub)
	assert.Equal(t, 2, dl.Attempts, "two calls were sent, however often the breaker refused")
}

// TestBreakerFollowsClassify: a user's classification decides what trips
// the breaker, not only what the handler does.
func TestBreakerFollowsClassify(t *testing.T) {
	tr, pub := newScriptedTracer(), &testpub.Recorder{}
	tr.On("SF100", wechatErr(40003), wechatErr(40003))
	h := newTestHandler(t, tr, pub, func(c *Config) {
		c.Breaker = BreakerConfig{ConsecutiveFailures: 2, OpenTimeout: 10 * time.Millisecond}
		c.Classify = func(err error) wechat.Class {
			var we *wechat.Error
			if errors.As(err, &we) && we.Code == 40003 {
				return wechat.ClassTransient // this deployment's sandbox flakes with 40003
			}
			return wechat.ClassOf(err)
		}
		c.Retry.BreakerWait = time.Millisecond
	})
	require.NoError(t, h.Handle(msgOf(t, testevent.Valid("order-1", "SF100"))))
	assert.Positive(t, h.Stats().Waits, "two 40003s reclassified as transient opened the breaker")
	assert.Len(t, pub.On(event.WaybillTracedTopic), 1)
}

func TestDecodeReturningNothingIsInvalid(t *testing.T) {
	tr, pub := newScriptedTracer(), &testpub.Recorder{}
	h := newTestHandler(t, tr, pub, func(c *Config) {
		c.Decode = func(*message.Message) (*event.OrderShipped, error) { return nil, nil }
	})
	require.NoError(t, h.Handle(message.NewMessage("m", []byte("{}"))))
	require.Len(t, pub.On(deadletter.DefaultTopic), 1)
}

func TestConfigRejectsNegatives(t *testing.T) {
	for name, mod := range map[string]func(*Config){
		"ClaimTTL":        func(c *Config) { c.ClaimTTL = -time.Second },
		"ClaimPoll":       func(c *Config) { c.ClaimPoll = -time.Second },
		"MaxWaitInPlace":  func(c *Config) { c.MaxWaitInPlace = -time.Second },
		"NotYetAttempts":  func(c *Config) { c.Retry.NotYetAttempts = -1 },
		"MaxParks":        func(c *Config) { c.Parking = &ParkingConfig{MaxParks: -1} },
		"same topics":     func(c *Config) { c.TracedTopic = "x"; c.DeadLetterTopic = "x" },
		"Breaker timeout": func(c *Config) { c.Breaker.OpenTimeout = -time.Second },
	} {
		t.Run(name, func(t *testing.T) {
			cfg := Config{Client: newScriptedTracer(), Publisher: &testpub.Recorder{}}
			mod(&cfg)
			_, err := NewHandler(cfg)
			assert.Error(t, err)
		})
	}
	assert.NoError(t, (&ParkingConfig{}).Validate(), "the zero value means the defaults")
}

// TestReplayRestartsHistory: a dead letter that died of its attempt count
// comes back from a replay with a fresh history, so it is parked again
// instead of dying of its old count.
func TestReplayRestartsHistory(t *testing.T) {
	tr, pub := newScriptedTracer(), &testpub.Recorder{}
	tr.On("SF100", wechatErr(45011), wechatErr(45011), wechatErr(45011))
	clock := testclock.New(time.Date(2026, 11, 26, 3, 0, 10, 0, time.UTC))
	h := newTestHandler(t, tr, pub, func(c *Config) { c.Parking = &ParkingConfig{MaxParks: 1}; c.Now = clock.Now })
	in := msgOf(t, testevent.Valid("order-1", "SF100"))
	in.Metadata.Set("trace_id", "abc")
	require.NoError(t, h.Handle(in))
	parked := pub.On("order.shipped.delay.1m0s")
	require.Len(t, parked, 1)
	clock.Set(clock.Now().Add(time.Minute)) // the kafka.DelayRunner returns it when due
	require.NoError(t, h.Handle(parked[0].Copy()))
	dead := pub.On(deadletter.DefaultTopic)
	require.Len(t, dead, 1, "parked once, allowed once")

	replayed := message.NewMessage(dead[0].UUID, dead[0].Payload)
	replayed.Metadata = deadletter.ReplayMetadata(dead[0])
	assert.Equal(t, message.Metadata{"trace_id": "abc"}, replayed.Metadata)
	require.NoError(t, h.Handle(replayed))
	assert.Len(t, pub.On("order.shipped.delay.1m0s"), 2, "parked again, not dead on arrival")
	assert.Len(t, pub.On(deadletter.DefaultTopic), 1)
}
