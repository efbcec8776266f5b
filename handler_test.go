package waybill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/testevent"
	"github.com/waybillkit/waybill/internal/testpub"
	"github.com/waybillkit/waybill/wechat"
)

func TestHandlePublishesTracedWithDeterministicID(t *testing.T) {
	tr, pub := newScriptedTracer(), &testpub.Recorder{}
	h := newTestHandler(t, tr, pub, nil)
	ev := testevent.Valid("order-1", "SF100")

	require.NoError(t, h.Handle(msgOf(t, ev)))
	require.NoError(t, h.Handle(msgOf(t, ev)), "a redelivery")

	out := pub.On(event.WaybillTracedTopic)
	require.Len(t, out, 2)
	assert.Equal(t, out[0].UUID, out[1].UUID, "a redelivery must produce the same message UUID")
	assert.Equal(t, event.TracedMessageID("wxapp1", "order-1", "SF100", ev.TransID), out[0].UUID)
	assert.Equal(t, "order-1", out[0].Metadata.Get(deadletter.HeaderKey))
	var traced event.WaybillTraced
	require.NoError(t, json.Unmarshal(out[0].Payload, &traced))
	assert.Equal(t, "tok-wxapp1-SF100", traced.WaybillToken)
	assert.Equal(t, event.SchemaVersion, traced.Version)
	assert.Equal(t, "order-1", traced.OrderID)
	assert.Empty(t, pub.On(deadletter.DefaultTopic))
	assert.NotContains(t, string(out[0].Payload), "13800138000", "phone numbers stay out of the output")
}

func TestHandleDeadLettersInvalidEventsWithoutCallingWeChat(t *testing.T) {
	long := strings.Repeat("茶", event.MaxGoodsDescRunes+1)
	cases := map[string]struct {
		payload []byte
		problem string
	}{
		"not json":          {[]byte(`{"order_id":`), "decode order.shipped"},
		"missing openid":    {testevent.JSON(t, func(e *event.OrderShipped) { e.OpenID = "" }), "openid: required"},
		"missing phone":     {testevent.JSON(t, func(e *event.OrderShipped) { e.ReceiverPhone = " " }), "receiver_phone: required"},
		"no goods":          {testevent.JSON(t, func(e *event.OrderShipped) { e.Goods = nil }), "goods: at least one item required"},
		"goods without url": {testevent.JSON(t, func(e *event.OrderShipped) { e.Goods[0].ImageURL = "" }), "goods[0].image_url: required"},
		"desc 41 runes":     {testevent.JSON(t, func(e *event.OrderShipped) { e.Goods[0].Description = long }), "goods[0].description: 41 characters, at most 40"},
		"future version":    {testevent.JSON(t, func(e *event.OrderShipped) { e.Version = 2 }), "version 2 is newer"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			tr, pub := newScriptedTracer(), &testpub.Recorder{}
			h := newTestHandler(t, tr, pub, nil)
			in := message.NewMessage("in-1", tc.payload)
			in.Metadata.Set("trace_id", "abc")
			require.NoError(t, h.Handle(in))

			assert.Zero(t, tr.callsFor("SF100"), "WeChat must not be called for an invalid event")
			dead := pub.On(deadletter.DefaultTopic)
			require.Len(t, dead, 1)
			assert.Equal(t, tc.payload, []byte(dead[0].Payload), "payload untouched")
			assert.Equal(t, "in-1", dead[0].UUID)
			assert.Equal(t, "abc", dead[0].Metadata.Get("trace_id"), "original headers kept")
			dl, err := deadletter.Parse(dead[0])
			require.NoError(t, err)
			assert.Equal(t, deadletter.ReasonInvalidEvent, dl.Reason)
			assert.False(t, dl.HasErrcode)
			assert.Contains(t, dl.Errmsg, tc.problem)
			assert.Equal(t, 0, dl.Attempts)
			assert.Equal(t, event.OrderShippedTopic, dl.SourceTopic)
			assert.Equal(t, map[string]string{"trace_id": "abc"}, map[string]string(deadletter.Original(dead[0])))
		})
	}
}

func TestGoodsDescriptionCountsRunesNotBytes(t *testing.T) {
	ev := testevent.Valid("o", "w")
	ev.Goods[0].Description = strings.Repeat("茶", event.MaxGoodsDescRunes) // 120 bytes
	assert.NoError(t, ev.Validate())
}

// TestHandleRoutesFailures is the error-class → outcome table: transient
// faults end traced (never dead-lettered), permanent and configuration
// answers end dead-lettered with their errcode.
func TestHandleRoutesFailures(t *testing.T) {
	netErr := &net.OpError{Op: "dial", Net: "tcp", Err: timeoutErr{}}
	http503 := &wechat.Error{Endpoint: "trace_waybill", HTTPStatus: 503, Class: wechat.ClassTransient}
	cases := []struct {
		name    string
		answers []error
		reason  deadletter.Reason // "" = traced
		code    int
		calls   int
	}{
		{"system busy twice", []error{wechatErr(-1), wechatErr(-1)}, "", 0, 3},
		{"http 503", []error{http503}, "", 0, 2},
		{"network timeout", []error{netErr, netErr, netErr}, "", 0, 4},
		{"token still stale after refresh", []error{wechatErr(42001)}, "", 0, 2},
		{"minute rate", []error{wechatErr(45011)}, "", 0, 2},
		{"daily quota waits for reset", []error{wechatErr(45009)}, "", 0, 2},
		{"not yet known, then known", []error{wechatErr(931023)}, "", 0, 2},
		{"not yet known, never", []error{wechatErr(931023), wechatErr(931023), wechatErr(931023)}, deadletter.ReasonNotYetExhausted, 931023, 3},
		{"invalid openid", []error{wechatErr(40003)}, deadletter.ReasonPermanent, 40003, 1},
		{"data format", []error{wechatErr(47001)}, deadletter.ReasonPermanent, 47001, 1},
		{"plugin not enabled", []error{wechatErr(48001)}, deadletter.ReasonConfiguration, 48001, 1},
		{"ip not allowed", []error{wechatErr(-1), wechatErr(40164)}, deadletter.ReasonConfiguration, 40164, 2},
	}
	for _, tc := range cases {
		// synctest: waits for the next minute or quota window pass at once.
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tr, pub := newScriptedTracer(), &testpub.Recorder{}
				tr.On("SF100", tc.answers...)
				h := newTestHandler(t, tr, pub, func(c *Config) { c.Retry.NotYetAttempts = 3 })
				// Waits past the 25 s budget end the delivery; Kafka
				// redelivers it.
				_, err := redeliver(h, msgOf(t, testevent.Valid("order-1", "SF100")), 1000)
				require.NoError(t, err)

				assert.Equal(t, tc.calls, tr.callsFor("SF100"))
				traced, dead := pub.On(event.WaybillTracedTopic), pub.On(deadletter.DefaultTopic)
				if tc.reason == "" {
					assert.Len(t, traced, 1)
					assert.Empty(t, dead, "a fault that could succeed later is never dead-lettered")
					return
				}
				assert.Empty(t, traced)
				require.Len(t, dead, 1)
				dl, err := deadletter.Parse(dead[0])
				require.NoError(t, err)
				assert.Equal(t, tc.reason, dl.Reason)
				assert.True(t, dl.HasErrcode)
				assert.Equal(t, tc.code, dl.Errcode)
				assert.Equal(t, tc.calls, dl.Attempts)
				assert.False(t, dl.FirstFailure.IsZero())
				assert.False(t, dl.LastFailure.Before(dl.FirstFailure))
			})
		})
	}
}

func TestHandleNacksWhenPublishFails(t *testing.T) {
	tr := newScriptedTracer()
	pub := &testpub.Recorder{Fail: errors.New("broker down")}
	h := newTestHandler(t, tr, pub, nil)
	err := h.Handle(msgOf(t, testevent.Valid("order-1", "SF100")))
	require.Error(t, err, "an unpublished result must not be acknowledged")
	assert.ErrorContains(t, err, "broker down")
}

func TestHandleStopsRetryingWhenShuttingDown(t *testing.T) {
	tr, pub := newScriptedTracer(), &testpub.Recorder{}
	errs := make([]error, 1000)
	for i := range errs {
		errs[i] = wechatErr(-1)
	}
	tr.On("SF100", errs...)
	h := newTestHandler(t, tr, pub, func(c *Config) { c.Backoff = func(int) time.Duration { return 10 * time.Millisecond } })
	msg := msgOf(t, testevent.Valid("order-1", "SF100"))
	ctx, cancel := context.WithCancel(context.Background())
	msg.SetContext(ctx)
	time.AfterFunc(30*time.Millisecond, cancel)
	err := h.Handle(msg)
	require.ErrorIs(t, err, context.Canceled)
	assert.Empty(t, pub.On(deadletter.DefaultTopic))
	assert.Empty(t, pub.On(event.WaybillTracedTopic))
}

func TestDecodeFuncPlugsInOwnShape(t *testing.T) {
	tr, pub := newScriptedTracer(), &testpub.Recorder{}
	h := newTestHandler(t, tr, pub, func(c *Config) {
		c.Decode = func(msg *message.Message) (*event.OrderShipped, error) {
			var own struct {
				No, Shop, Buyer, Tracking, Phone, Item, Pic string
			}
			if err := json.Unmarshal(msg.Payload, &own); err != nil {
				return nil, err
			}
			return &event.OrderShipped{OrderID: own.No, AppID: own.Shop, OpenID: own.Buyer, WaybillID: own.Tracking,
				ReceiverPhone: own.Phone, Goods: []event.Goods{{Name: own.Item, ImageURL: own.Pic}}}, nil
		}
	})
	in := message.NewMessage("m", []byte(`{"No":"A1","Shop":"wxshop","Buyer":"ob","Tracking":"YD9","Phone":"139","Item":"茶","Pic":"https://x/y.jpg"}`))
	require.NoError(t, h.Handle(in))
	require.Len(t, pub.On(event.WaybillTracedTopic), 1)
	assert.Equal(t, 1, tr.callsFor("YD9"))
}

func TestConfigValidate(t *testing.T) {
	_, err := NewHandler(Config{})
	require.Error(t, err)
	assert.ErrorContains(t, err, "Client is required")
	assert.ErrorContains(t, err, "Publisher is required")
	_, err = NewHandler(Config{Client: newScriptedTracer(), Publisher: &testpub.Recorder{}, TracedTopic: event.OrderShippedTopic})
	assert.ErrorContains(t, err, "must differ")
}

// TestHandlerOnRouter runs the handler on a Watermill router over the
// in-process GoChannel Pub/Sub, as an event-driven monolith would.
func TestHandlerOnRouter(t *testing.T) {
	logger := watermill.NopLogger{}
	ps := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, logger)
	tr := newScriptedTracer()
	tr.On("bad", wechatErr(40003))
	h := newTestHandler(t, tr, ps, nil)
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	require.NoError(t, err)
	h.AddTo(router, ps)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = router.Run(ctx) }()
	<-router.Running()

	traced, err := ps.Subscribe(ctx, event.WaybillTracedTopic)
	require.NoError(t, err)
	dead, err := ps.Subscribe(ctx, deadletter.DefaultTopic)
	require.NoError(t, err)
	for i, w := range []string{"w1", "bad", "w2"} {
		require.NoError(t, ps.Publish(event.OrderShippedTopic, msgOf(t, testevent.Valid(fmt.Sprint("o", i), w))))
	}
	got := map[string]int{}
	for range 3 {
		select {
		case m := <-traced:
			got["traced"]++
			m.Ack()
		case m := <-dead:
			got["dead"]++
			m.Ack()
		case <-time.After(10 * time.Second):
			t.Fatalf("timed out; got %v", got)
		}
	}
	assert.Equal(t, map[string]int{"traced": 2, "dead": 1}, got)
	// The counters move just after each publish returns.
	require.Eventually(t, func() bool { return h.Stats() == Stats{Traced: 2, DeadLettered: 1} }, 5*time.Second, time.Millisecond, "%+v", h.Stats())
}

// TestPositionNamesTheRecord: Config.Position locates the record in its dead
// letter; without it (or without a position) the dead letter says -1.
func TestPositionNamesTheRecord(t *testing.T) {
	for name, tc := range map[string]struct {
		position func(*message.Message) (int32, int64, bool)
		p        int32
		o        int64
	}{
		"kafka record": {func(*message.Message) (int32, int64, bool) { return 2, 41, true }, 2, 41},
		"no position":  {func(*message.Message) (int32, int64, bool) { return 0, 0, false }, -1, -1},
		"nil Position": {nil, -1, -1},
	} {
		t.Run(name, func(t *testing.T) {
			tr, pub := newScriptedTracer(), &testpub.Recorder{}
			tr.On("SF100", wechatErr(40003))
			h := newTestHandler(t, tr, pub, func(c *Config) { c.Position = tc.position })
			require.NoError(t, h.Handle(msgOf(t, testevent.Valid("order-1", "SF100"))))
			dl := testpub.OnlyDeadLetter(t, pub)
			assert.Equal(t, deadletter.ReasonPermanent, dl.Reason)
			assert.Equal(t, tc.p, dl.SourcePartition)
			assert.Equal(t, tc.o, dl.SourceOffset)
		})
	}
}
