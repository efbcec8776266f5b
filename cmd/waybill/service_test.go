package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/wechat"
)

// heldTracer is a WeChat whose trace_waybill answers only when released, or
// fails when its context ends.
type heldTracer struct {
	started chan struct{} // closed when the first call arrives
	release chan struct{}
	once    sync.Once
	ctxErr  chan error // the call's context error when it ended
}

func newHeldTracer() *heldTracer {
	return &heldTracer{started: make(chan struct{}), release: make(chan struct{}), ctxErr: make(chan error, 1)}
}

func (h *heldTracer) TraceWaybill(ctx context.Context, _ string, _ *wechat.TraceWaybillRequest) (*wechat.TraceWaybillResponse, error) {
	h.once.Do(func() { close(h.started) })
	select {
	case <-h.release:
		h.ctxErr <- ctx.Err()
		return &wechat.TraceWaybillResponse{WaybillToken: "token-1"}, nil
	case <-ctx.Done():
		h.ctxErr <- ctx.Err()
		return nil, ctx.Err()
	}
}

func (h *heldTracer) UpdateWaybillGoods(context.Context, string, *wechat.UpdateWaybillGoodsRequest) error {
	return nil
}

// inMemoryService is the service as build wires it, on Go channels instead of
// Kafka, with one event published to the input topic. delivered receives the
// context each delivery of it came with, before detach.
func inMemoryService(t *testing.T, tracer waybill.Tracer, shutdown time.Duration) (s *service, delivered <-chan context.Context, traced <-chan *message.Message, logs *bytes.Buffer) {
	t.Helper()
	logs = &bytes.Buffer{}
	s = &service{
		cfg: config{StatsInterval: time.Hour, ShutdownTimeout: shutdown},
		log: slog.New(slog.NewTextHandler(logs, nil)),
	}
	s.hard, s.hardStop = context.WithCancel(context.Background())
	// The router closes its subscriber: the outputs need their own.
	in := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	out := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 10}, watermill.NopLogger{})
	t.Cleanup(func() { _ = in.Close(); _ = out.Close() })
	var err error
	s.handler, err = waybill.NewHandler(waybill.Config{Client: tracer, Publisher: out})
	require.NoError(t, err)
	s.router, err = message.NewRouter(message.RouterConfig{CloseTimeout: shutdown + closeSlack}, watermill.NopLogger{})
	require.NoError(t, err)
	contexts := make(chan context.Context, 10)
	record := func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			contexts <- msg.Context()
			return h(msg)
		}
	}
	s.handler.AddTo(s.router, in).AddMiddleware(record, s.detach) // record runs first

	traced, err = out.Subscribe(context.Background(), event.WaybillTracedTopic)
	require.NoError(t, err)
	ev, err := json.Marshal(event.OrderShipped{
		Version: 1, OrderID: "order-1", AppID: "wx0123456789abcdef", OpenID: "o-buyer", WaybillID: "SF1234567890",
		ReceiverPhone: "13800138000", Goods: []event.Goods{{Name: "茶", ImageURL: "https://img.example.cn/tea.jpg"}},
	})
	require.NoError(t, err)
	require.NoError(t, in.Publish(event.OrderShippedTopic, message.NewMessage(watermill.NewUUID(), ev)))
	return s, contexts, traced, logs
}

// TestShutdownLetsInFlightCallFinish: a signal while a WeChat call is in
// flight neither cancels the call nor drops its result.
func TestShutdownLetsInFlightCallFinish(t *testing.T) {
	tracer := newHeldTracer()
	s, delivered, traced, logs := inMemoryService(t, tracer, time.Minute)
	ctx, signal := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.run(ctx) }()

	orig := <-delivered
	<-tracer.started
	signal()
	// Answer only once the router has cancelled the delivery.
	<-orig.Done()
	close(tracer.release)

	require.NoError(t, <-done)
	assert.NoError(t, <-tracer.ctxErr, "the call's context must survive the signal")
	select {
	case m := <-traced:
		require.NotNil(t, m, "output subscription closed")
		var out event.WaybillTraced
		require.NoError(t, json.Unmarshal(m.Payload, &out))
		assert.Equal(t, "token-1", out.WaybillToken)
	case <-time.After(5 * time.Second):
		// GoChannel hands a published message to its subscriber on
		// another goroutine: published is not yet received.
		t.Fatal("the in-flight event's waybill.traced was not published")
	}
	assert.Contains(t, logs.String(), `msg="waybill stopped" traced=1 dead_lettered=0`)
}

// TestShutdownTimeoutEndsInFlightCall: past the shutdown timeout the call is
// cancelled and the event left for redelivery, not traced nor dead-lettered.
func TestShutdownTimeoutEndsInFlightCall(t *testing.T) {
	tracer := newHeldTracer()
	s, _, traced, logs := inMemoryService(t, tracer, 50*time.Millisecond)
	ctx, signal := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.run(ctx) }()

	<-tracer.started
	signal()
	require.NoError(t, <-done)
	assert.ErrorIs(t, <-tracer.ctxErr, context.Canceled)
	select {
	case m := <-traced:
		t.Fatalf("published %s for a cancelled call", m.UUID)
	default:
	}
	assert.Contains(t, logs.String(), `msg="waybill stopped" traced=0 dead_lettered=0`)
}
