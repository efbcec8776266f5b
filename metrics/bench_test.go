package metrics_test

import (
	"context"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/waybillkit/waybill"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/testevent"
	"github.com/waybillkit/waybill/metrics"
	"github.com/waybillkit/waybill/wechat"
)

type discard struct{}

func (discard) Publish(string, ...*message.Message) error { return nil }
func (discard) Close() error                              { return nil }

type instant struct{}

func (instant) TraceWaybill(context.Context, string, *wechat.TraceWaybillRequest) (*wechat.TraceWaybillResponse, error) {
	return &wechat.TraceWaybillResponse{WaybillToken: "o_ARWHaxIxzWHmdui-AIw9KBr8qNnbmc08V0KhDyXE"}, nil
}

func (instant) UpdateWaybillGoods(context.Context, string, *wechat.UpdateWaybillGoodsRequest) error {
	return nil
}

// BenchmarkObservability is what metrics and traces add to the handler's
// own cost per message (WeChat answering at once, the publisher a no-op):
// plain, with Observe wired to Metrics, and with a recording tracer too.
func BenchmarkObservability(b *testing.B) {
	payload := testevent.JSON(b, func(*event.OrderShipped) {})
	run := func(b *testing.B, mod func(*waybill.Config)) {
		cfg := waybill.Config{Client: instant{}, Publisher: discard{}}
		mod(&cfg)
		h, err := waybill.NewHandler(cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if err := h.Handle(message.NewMessage("m", payload)); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("plain", func(b *testing.B) { run(b, func(*waybill.Config) {}) })
	b.Run("metrics", func(b *testing.B) {
		m, err := metrics.New(metrics.Config{Registerer: prometheus.NewRegistry()})
		if err != nil {
			b.Fatal(err)
		}
		run(b, func(c *waybill.Config) { c.Observe = m.Observe })
	})
	b.Run("metrics_and_traces", func(b *testing.B) {
		m, err := metrics.New(metrics.Config{Registerer: prometheus.NewRegistry()})
		if err != nil {
			b.Fatal(err)
		}
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
		defer func() { _ = tp.Shutdown(context.Background()) }()
		run(b, func(c *waybill.Config) { c.Observe, c.TracerProvider = m.Observe, tp })
	})
}
