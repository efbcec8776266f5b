package waybill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/wechat"
)

// scriptedTracer answers trace_waybill calls from a per-waybill script of
// errors; after the script runs out it succeeds. It stands in for WeChat where
// a test needs exact control over each answer.
type scriptedTracer struct {
	mu     sync.Mutex
	script map[string][]error // waybill_id → answers, in order
	calls  map[string]int
	times  map[string][]time.Time // waybill_id → when each call came, by time.Now
	remain map[string]int64       // appid → what openapi/quota/get reports
	// during, when set, runs inside each trace_waybill call (n counts from
	// 0), outside the lock; an error it returns is the call's answer.
	during func(ctx context.Context, waybill string, n int) error
	// answer, when set, replaces the successful response.
	answer func(appid, waybill string) *wechat.TraceWaybillResponse
}

func newScriptedTracer() *scriptedTracer {
	return &scriptedTracer{script: map[string][]error{}, calls: map[string]int{}, times: map[string][]time.Time{}, remain: map[string]int64{}}
}

func (s *scriptedTracer) on(waybill string, errs ...error) { s.script[waybill] = errs }

func (s *scriptedTracer) TraceWaybill(ctx context.Context, appid string, req *wechat.TraceWaybillRequest) (*wechat.TraceWaybillResponse, error) {
	s.mu.Lock()
	n := s.calls[req.WaybillID]
	s.calls[req.WaybillID] = n + 1
	s.times[req.WaybillID] = append(s.times[req.WaybillID], time.Now())
	during, answer := s.during, s.answer
	var scripted error
	if errs := s.script[req.WaybillID]; n < len(errs) {
		scripted = errs[n]
	}
	s.mu.Unlock()
	if during != nil {
		if err := during(ctx, req.WaybillID, n); err != nil {
			return nil, err
		}
	}
	if scripted != nil {
		return nil, scripted
	}
	if answer != nil {
		return answer(appid, req.WaybillID), nil
	}
	return &wechat.TraceWaybillResponse{WaybillToken: "tok-" + appid + "-" + req.WaybillID}, nil
}

func (s *scriptedTracer) timesOf(waybill string) []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.times[waybill]...)
}

// UpdateWaybillGoods answers from the script under "update:"+token.
func (s *scriptedTracer) UpdateWaybillGoods(_ context.Context, _ string, req *wechat.UpdateWaybillGoodsRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := "update:" + req.WaybillToken
	n := s.calls[key]
	s.calls[key] = n + 1
	if errs := s.script[key]; n < len(errs) && errs[n] != nil {
		return errs[n]
	}
	return nil
}

// GetQuota reports remain[appid] as trace_waybill's remaining quota.
func (s *scriptedTracer) GetQuota(_ context.Context, appid string, req *wechat.QuotaRequest) (*wechat.QuotaResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls["quota:"+appid]++
	if req.CGIPath != wechat.OpenMsgPath("trace_waybill") {
		return nil, fmt.Errorf("quota of %s asked", req.CGIPath)
	}
	return &wechat.QuotaResponse{Quota: wechat.Quota{DailyLimit: 100000, Remain: s.remain[appid]}}, nil
}

func (s *scriptedTracer) callsFor(waybill string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[waybill]
}

func wechatErr(code int) error {
	return &wechat.Error{Endpoint: "trace_waybill", Code: code, Msg: fmt.Sprintf("code %d", code), Class: wechat.DefaultClassify(code)}
}

// recorder is a Publisher that keeps what was published, and can fail.
type recorder struct {
	mu   sync.Mutex
	msgs map[string][]*message.Message
	fail error
}

func (r *recorder) Publish(topic string, msgs ...*message.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	if r.msgs == nil {
		r.msgs = map[string][]*message.Message{}
	}
	r.msgs[topic] = append(r.msgs[topic], msgs...)
	return nil
}

func (r *recorder) Close() error { return nil }

func (r *recorder) on(topic string) []*message.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*message.Message(nil), r.msgs[topic]...)
}

// onlyDeadLetter requires exactly one dead letter on pub and returns it
// parsed.
func onlyDeadLetter(t *testing.T, pub interface {
	on(topic string) []*message.Message
}) *DeadLetter {
	t.Helper()
	dead := pub.on(DefaultDeadLetterTopic)
	require.Len(t, dead, 1)
	dl, err := ParseDeadLetter(dead[0])
	require.NoError(t, err)
	return dl
}

func validEvent(orderID, waybill string) *OrderShipped {
	return &OrderShipped{
		Version: 1, OrderID: orderID, AppID: "wxapp1", OpenID: "o-buyer-1",
		TransID: "4200001234202611260000000001", WaybillID: waybill, DeliveryID: "SF",
		ReceiverPhone: "13800138000", SenderPhone: "02012345678",
		Goods:     []Goods{{Name: "云南普洱茶 <特级> & 礼盒", ImageURL: "https://img.example.cn/tea.jpg", Description: "十年陈香"}},
		ShippedAt: time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC),
	}
}

func msgOf(t *testing.T, ev any) *message.Message {
	t.Helper()
	b, err := json.Marshal(ev)
	require.NoError(t, err)
	return message.NewMessage(watermill.NewUUID(), b)
}

func newTestHandler(t *testing.T, tr Tracer, pub message.Publisher, mod func(*Config)) *Handler {
	t.Helper()
	cfg := Config{
		Client: tr, Publisher: pub,
		Backoff: func(int) time.Duration { return time.Millisecond },
		Retry:   RetryPolicy{BreakerWait: time.Millisecond, NotYetDelay: time.Millisecond, QuotaReset: func(now time.Time) time.Time { return now.Add(time.Millisecond) }},
		Breaker: BreakerConfig{Disabled: true},
		// MaxWaitInPlace and ClaimTTL keep their production defaults: a
		// test-only budget once hid a loop of calls.
	}
	if mod != nil {
		mod(&cfg)
	}
	h, err := NewHandler(cfg)
	require.NoError(t, err)
	return h
}

func TestHandlePublishesTracedWithDeterministicID(t *testing.T) {
	tr, pub := newScriptedTracer(), &recorder{}
	h := newTestHandler(t, tr, pub, nil)
	ev := validEvent("order-1", "SF100")

	require.NoError(t, h.Handle(msgOf(t, ev)))
	require.NoError(t, h.Handle(msgOf(t, ev)), "a redelivery")

	out := pub.on(DefaultTracedTopic)
	require.Len(t, out, 2)
	assert.Equal(t, out[0].UUID, out[1].UUID, "a redelivery must produce the same message UUID")
	assert.Equal(t, TracedMessageID("wxapp1", "order-1", "SF100", ev.TransID), out[0].UUID)
	assert.Equal(t, "order-1", out[0].Metadata.Get(HeaderKey))
	var traced WaybillTraced
	require.NoError(t, json.Unmarshal(out[0].Payload, &traced))
	assert.Equal(t, "tok-wxapp1-SF100", traced.WaybillToken)
	assert.Equal(t, SchemaVersion, traced.Version)
	assert.Equal(t, "order-1", traced.OrderID)
	assert.Empty(t, pub.on(DefaultDeadLetterTopic))
	assert.NotContains(t, string(out[0].Payload), "13800138000", "phone numbers stay out of the output")
}

func TestHandleDeadLettersInvalidEventsWithoutCallingWeChat(t *testing.T) {
	long := strings.Repeat("茶", MaxGoodsDescRunes+1)
	cases := map[string]struct {
		payload []byte
		problem string
	}{
		"not json":          {[]byte(`{"order_id":`), "decode order.shipped"},
		"missing openid":    {mustJSON(t, func(e *OrderShipped) { e.OpenID = "" }), "openid: required"},
		"missing phone":     {mustJSON(t, func(e *OrderShipped) { e.ReceiverPhone = " " }), "receiver_phone: required"},
		"no goods":          {mustJSON(t, func(e *OrderShipped) { e.Goods = nil }), "goods: at least one item required"},
		"goods without url": {mustJSON(t, func(e *OrderShipped) { e.Goods[0].ImageURL = "" }), "goods[0].image_url: required"},
		"desc 41 runes":     {mustJSON(t, func(e *OrderShipped) { e.Goods[0].Description = long }), "goods[0].description: 41 characters, at most 40"},
		"future version":    {mustJSON(t, func(e *OrderShipped) { e.Version = 2 }), "version 2 is newer"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			tr, pub := newScriptedTracer(), &recorder{}
			h := newTestHandler(t, tr, pub, nil)
			in := message.NewMessage("in-1", tc.payload)
			in.Metadata.Set("trace_id", "abc")
			require.NoError(t, h.Handle(in))

			assert.Zero(t, tr.callsFor("SF100"), "WeChat must not be called for an invalid event")
			dead := pub.on(DefaultDeadLetterTopic)
			require.Len(t, dead, 1)
			assert.Equal(t, tc.payload, []byte(dead[0].Payload), "payload untouched")
			assert.Equal(t, "in-1", dead[0].UUID)
			assert.Equal(t, "abc", dead[0].Metadata.Get("trace_id"), "original headers kept")
			dl, err := ParseDeadLetter(dead[0])
			require.NoError(t, err)
			assert.Equal(t, ReasonInvalidEvent, dl.Reason)
			assert.False(t, dl.HasErrcode)
			assert.Contains(t, dl.Errmsg, tc.problem)
			assert.Equal(t, 0, dl.Attempts)
			assert.Equal(t, DefaultInputTopic, dl.SourceTopic)
			assert.Equal(t, map[string]string{"trace_id": "abc"}, map[string]string(OriginalMetadata(dead[0])))
		})
	}
}

func TestGoodsDescriptionCountsRunesNotBytes(t *testing.T) {
	ev := validEvent("o", "w")
	ev.Goods[0].Description = strings.Repeat("茶", MaxGoodsDescRunes) // 120 bytes
	assert.NoError(t, ev.Validate())
}

func mustJSON(t testing.TB, mod func(*OrderShipped)) []byte {
	ev := validEvent("order-x", "SF100")
	mod(ev)
	b, err := json.Marshal(ev)
	require.NoError(t, err)
	return b
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// TestHandleRoutesFailures is the error-class → outcome table: transient
// faults end traced (never dead-lettered), permanent and configuration
// answers end dead-lettered with their errcode.
func TestHandleRoutesFailures(t *testing.T) {
	netErr := &net.OpError{Op: "dial", Net: "tcp", Err: timeoutErr{}}
	http503 := &wechat.Error{Endpoint: "trace_waybill", HTTPStatus: 503, Class: wechat.ClassTransient}
	cases := []struct {
		name    string
		answers []error
		reason  Reason // "" = traced
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
		{"not yet known, never", []error{wechatErr(931023), wechatErr(931023), wechatErr(931023)}, ReasonNotYetExhausted, 931023, 3},
		{"invalid openid", []error{wechatErr(40003)}, ReasonPermanent, 40003, 1},
		{"data format", []error{wechatErr(47001)}, ReasonPermanent, 47001, 1},
		{"plugin not enabled", []error{wechatErr(48001)}, ReasonConfiguration, 48001, 1},
		{"ip not allowed", []error{wechatErr(-1), wechatErr(40164)}, ReasonConfiguration, 40164, 2},
	}
	for _, tc := range cases {
		// synctest: waits for the next minute or quota window pass at once.
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tr, pub := newScriptedTracer(), &recorder{}
				tr.on("SF100", tc.answers...)
				h := newTestHandler(t, tr, pub, func(c *Config) { c.Retry.NotYetAttempts = 3 })
				// Waits past the 25 s budget end the delivery; Kafka
				// redelivers it.
				_, err := redeliver(h, msgOf(t, validEvent("order-1", "SF100")), 1000)
				require.NoError(t, err)

				assert.Equal(t, tc.calls, tr.callsFor("SF100"))
				traced, dead := pub.on(DefaultTracedTopic), pub.on(DefaultDeadLetterTopic)
				if tc.reason == "" {
					assert.Len(t, traced, 1)
					assert.Empty(t, dead, "a fault that could succeed later is never dead-lettered")
					return
				}
				assert.Empty(t, traced)
				require.Len(t, dead, 1)
				dl, err := ParseDeadLetter(dead[0])
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
	pub := &recorder{fail: errors.New("broker down")}
	h := newTestHandler(t, tr, pub, nil)
	err := h.Handle(msgOf(t, validEvent("order-1", "SF100")))
	require.Error(t, err, "an unpublished result must not be acknowledged")
	assert.ErrorContains(t, err, "broker down")
}

func TestHandleStopsRetryingWhenShuttingDown(t *testing.T) {
	tr, pub := newScriptedTracer(), &recorder{}
	errs := make([]error, 1000)
	for i := range errs {
		errs[i] = wechatErr(-1)
	}
	tr.on("SF100", errs...)
	h := newTestHandler(t, tr, pub, func(c *Config) { c.Backoff = func(int) time.Duration { return 10 * time.Millisecond } })
	msg := msgOf(t, validEvent("order-1", "SF100"))
	ctx, cancel := context.WithCancel(context.Background())
	msg.SetContext(ctx)
	time.AfterFunc(30*time.Millisecond, cancel)
	err := h.Handle(msg)
	require.ErrorIs(t, err, context.Canceled)
	assert.Empty(t, pub.on(DefaultDeadLetterTopic))
	assert.Empty(t, pub.on(DefaultTracedTopic))
}

func TestDecodeFuncPlugsInOwnShape(t *testing.T) {
	tr, pub := newScriptedTracer(), &recorder{}
	h := newTestHandler(t, tr, pub, func(c *Config) {
		c.Decode = func(msg *message.Message) (*OrderShipped, error) {
			var own struct {
				No, Shop, Buyer, Tracking, Phone, Item, Pic string
			}
			if err := json.Unmarshal(msg.Payload, &own); err != nil {
				return nil, err
			}
			return &OrderShipped{OrderID: own.No, AppID: own.Shop, OpenID: own.Buyer, WaybillID: own.Tracking,
				ReceiverPhone: own.Phone, Goods: []Goods{{Name: own.Item, ImageURL: own.Pic}}}, nil
		}
	})
	in := message.NewMessage("m", []byte(`{"No":"A1","Shop":"wxshop","Buyer":"ob","Tracking":"YD9","Phone":"139","Item":"茶","Pic":"https://x/y.jpg"}`))
	require.NoError(t, h.Handle(in))
	require.Len(t, pub.on(DefaultTracedTopic), 1)
	assert.Equal(t, 1, tr.callsFor("YD9"))
}

func TestConfigValidate(t *testing.T) {
	_, err := NewHandler(Config{})
	require.Error(t, err)
	assert.ErrorContains(t, err, "Client is required")
	assert.ErrorContains(t, err, "Publisher is required")
	_, err = NewHandler(Config{Client: newScriptedTracer(), Publisher: &recorder{}, TracedTopic: DefaultInputTopic})
	assert.ErrorContains(t, err, "must differ")
}

// TestHandlerOnRouter runs the handler on a Watermill router over the
// in-process GoChannel Pub/Sub, as an event-driven monolith would.
func TestHandlerOnRouter(t *testing.T) {
	logger := watermill.NopLogger{}
	ps := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, logger)
	tr := newScriptedTracer()
	tr.on("bad", wechatErr(40003))
	h := newTestHandler(t, tr, ps, nil)
	router, err := message.NewRouter(message.RouterConfig{}, logger)
	require.NoError(t, err)
	h.AddTo(router, ps)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = router.Run(ctx) }()
	<-router.Running()

	traced, err := ps.Subscribe(ctx, DefaultTracedTopic)
	require.NoError(t, err)
	dead, err := ps.Subscribe(ctx, DefaultDeadLetterTopic)
	require.NoError(t, err)
	for i, w := range []string{"w1", "bad", "w2"} {
		require.NoError(t, ps.Publish(DefaultInputTopic, msgOf(t, validEvent(fmt.Sprint("o", i), w))))
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
