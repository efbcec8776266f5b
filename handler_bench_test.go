package waybill

import (
	"context"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/testevent"
	"github.com/waybillkit/waybill/ratelimit"
	"github.com/waybillkit/waybill/tracestore"
	"github.com/waybillkit/waybill/wechat"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

// discard is a Publisher that drops messages, so a benchmark measures the
// handler, not a broker.
type discard struct{}

func (discard) Publish(string, ...*message.Message) error { return nil }
func (discard) Close() error                              { return nil }

// instantTracer answers every call at once with a fixed token.
type instantTracer struct{}

func (instantTracer) TraceWaybill(context.Context, string, *wechat.TraceWaybillRequest) (*wechat.TraceWaybillResponse, error) {
	return &wechat.TraceWaybillResponse{WaybillToken: "o_ARWHaxIxzWHmdui-AIw9KBr8qNnbmc08V0KhDyXE"}, nil
}

func (instantTracer) UpdateWaybillGoods(context.Context, string, *wechat.UpdateWaybillGoodsRequest) error {
	return nil
}

func benchHandle(b *testing.B, tr Tracer, mod func(*Config)) {
	cfg := Config{Client: tr, Publisher: discard{}}
	if mod != nil {
		mod(&cfg)
	}
	h, err := NewHandler(cfg)
	if err != nil {
		b.Fatal(err)
	}
	payload := testevent.JSON(b, func(*event.OrderShipped) {})
	b.ReportAllocs()
	for b.Loop() {
		if err := h.Handle(message.NewMessage("m", payload)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHandle is the handler's own cost per message: decode, validate,
// breaker, publish, with WeChat answering instantly.
func BenchmarkHandle(b *testing.B) {
	b.Run("plain", func(b *testing.B) { benchHandle(b, instantTracer{}, nil) })
	b.Run("dedup_hit", func(b *testing.B) {
		benchHandle(b, instantTracer{}, func(c *Config) { c.TraceStore = tracestore.NewMemory(tracestore.MemoryConfig{}) })
	})
	b.Run("limiter", func(b *testing.B) {
		lim, err := ratelimit.New(ratelimit.Config{Defaults: ratelimit.Limits{AppDaily: -1, UserDaily: -1, Rate: -1}})
		if err != nil {
			b.Fatal(err)
		}
		benchHandle(b, instantTracer{}, func(c *Config) { c.Limiter = lim })
	})
}

// BenchmarkHandleSandbox adds the real client: JSON encoding, a token from
// the cache and an HTTP round trip to the sandbox on loopback.
func BenchmarkHandleSandbox(b *testing.B) {
	benchHandle(b, sandboxClient(b), nil)
}

// sandboxClient is a client of a sandbox that answers every call, for the
// benchmark's life.
func sandboxClient(b *testing.B) *wechat.Client {
	srv := wechattest.NewServer(wechattest.Config{AutoRegister: true, AppDailyQuota: -1, OpenIDDailyQuota: -1})
	b.Cleanup(srv.Close)
	tokens, err := wechat.NewStableTokenSource(wechat.StableTokenConfig{BaseURL: srv.URL, Secrets: wechat.StaticSecrets{"wxapp1": "s"}})
	if err != nil {
		b.Fatal(err)
	}
	client, err := wechat.NewClient(wechat.Config{BaseURL: srv.URL, Tokens: tokens})
	if err != nil {
		b.Fatal(err)
	}
	return client
}

// BenchmarkHandleSandboxRouterGoroutine is BenchmarkHandleSandbox with each
// message handled on a goroutine of its own, as Watermill's Router does:
// the cost a goroutine's stack growth adds.
func BenchmarkHandleSandboxRouterGoroutine(b *testing.B) {
	h, err := NewHandler(Config{Client: sandboxClient(b), Publisher: discard{}})
	if err != nil {
		b.Fatal(err)
	}
	payload := testevent.JSON(b, func(*event.OrderShipped) {})
	b.ReportAllocs()
	done := make(chan error)
	for b.Loop() {
		go func() { done <- h.Handle(message.NewMessage("m", payload)) }()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
}
