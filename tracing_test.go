package waybill

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/testevent"
	"github.com/waybillkit/waybill/internal/testpub"
	"github.com/waybillkit/waybill/wechat"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

// traceOf is the trace and span ids of a message's traceparent.
func traceOf(t *testing.T, md message.Metadata) trace.SpanContext {
	t.Helper()
	ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier(md))
	sc := trace.SpanContextFromContext(ctx)
	require.True(t, sc.IsValid(), "no traceparent in %v", md)
	return sc
}

// TestTracing: an input carrying traceparent yields a span for its handling
// under that trace, with the WeChat calls (token included) as children;
// every output carries the trace: waybill.traced, a parked copy, the
// traced event after its return, a dead letter, and what a replay of it
// republishes. No span holds a token, a secret or a phone number.
func TestTracing(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	sandbox := wechattest.NewServer(wechattest.Config{})
	defer sandbox.Close()
	sandbox.AddApp("wxapp1", "secret-app1")
	sandbox.Inject(wechattest.Fault{Endpoint: "trace_waybill", Errcode: 931023, Times: 1,
		Match: func(c *wechattest.Call) bool { return c.Field("waybill_id") == "SFPARK" }})
	sandbox.Inject(wechattest.Fault{Endpoint: "trace_waybill", Errcode: 47001,
		Match: func(c *wechattest.Call) bool { return c.Field("waybill_id") == "SFBAD" }})
	tokens, err := wechat.NewStableTokenSource(wechat.StableTokenConfig{BaseURL: sandbox.URL,
		Secrets: wechat.StaticSecrets{"wxapp1": "secret-app1"}, TracerProvider: tp})
	require.NoError(t, err)
	client, err := wechat.NewClient(wechat.Config{BaseURL: sandbox.URL, Tokens: tokens, TracerProvider: tp})
	require.NoError(t, err)
	pub := &testpub.Recorder{}
	h := newTestHandler(t, client, pub, func(c *Config) {
		c.TracerProvider = tp
		c.Parking = &ParkingConfig{}
	})
	input := func(order, waybill string, traceID string) *message.Message {
		msg := msgOf(t, testevent.Valid(order, waybill))
		msg.Metadata.Set("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
		return msg
	}
	const traceA, traceB, traceC = "4bf92f3577b34da6a3ce929d0e0e4736", "5bf92f3577b34da6a3ce929d0e0e4736", "6bf92f3577b34da6a3ce929d0e0e4736"
	spansOf := func(traceID string) []tracetest.SpanStub {
		var out []tracetest.SpanStub
		for _, s := range exp.GetSpans() {
			if s.SpanContext.TraceID().String() == traceID {
				out = append(out, s)
			}
		}
		return out
	}
	byName := func(spans []tracetest.SpanStub, name string) []tracetest.SpanStub {
		var out []tracetest.SpanStub
		for _, s := range spans {
			if s.Name == name {
				out = append(out, s)
			}
		}
		return out
	}

	// Traced at once.
	require.NoError(t, h.Handle(input("order-a", "SFOK", traceA)))
	spans := spansOf(traceA)
	handle := byName(spans, "waybill handle "+event.OrderShippedTopic)
	require.Len(t, handle, 1)
	assert.Equal(t, "00f067aa0ba902b7", handle[0].Parent.SpanID().String(), "under the input's span")
	assert.Equal(t, trace.SpanKindConsumer, handle[0].SpanKind)
	for _, name := range []string{"wechat stable_token", "wechat trace_waybill", "waybill publish " + event.WaybillTracedTopic} {
		child := byName(spans, name)
		require.Len(t, child, 1, name)
		assert.Equal(t, handle[0].SpanContext.SpanID(), child[0].Parent.SpanID(), "%s is a child of the handling", name)
	}
	traced := pub.On(event.WaybillTracedTopic)
	require.Len(t, traced, 1)
	assert.Equal(t, traceA, traceOf(t, traced[0].Metadata).TraceID().String())
	assert.Equal(t, byName(spans, "waybill publish "+event.WaybillTracedTopic)[0].SpanContext.SpanID(), traceOf(t, traced[0].Metadata).SpanID(),
		"the output's parent is the publish span")
	calls := sandbox.CallsTo("trace_waybill")
	require.Len(t, calls, 1)
	assert.Contains(t, calls[0].Header.Get("traceparent"), traceA, "WeChat's request carries the trace")

	// Parked (931023), then back from the delay topic and traced.
	require.NoError(t, h.Handle(input("order-b", "SFPARK", traceB)))
	var parked *message.Message
	for _, topic := range []string{"1m0s", "10m0s", "1h0m0s"} {
		if p := pub.On(event.OrderShippedTopic + ".delay." + topic); len(p) == 1 {
			parked = p[0]
		}
	}
	require.NotNil(t, parked, "parked on a delay topic")
	assert.Equal(t, traceB, traceOf(t, parked.Metadata).TraceID().String())
	park := byName(spansOf(traceB), "waybill park")
	require.Len(t, park, 1)
	assert.Equal(t, park[0].SpanContext.SpanID(), traceOf(t, parked.Metadata).SpanID(), "the parked copy's parent is the park span, not the input's")
	back := message.NewMessage(parked.UUID, parked.Payload)
	back.Metadata = parked.Metadata
	deadletter.Unpark(back.Metadata)
	back.Metadata.Set(deadletter.HeaderNotBefore, time.Now().Add(-time.Second).UTC().Format(time.RFC3339Nano))
	require.NoError(t, h.Handle(back))
	traced = pub.On(event.WaybillTracedTopic)
	require.Len(t, traced, 2)
	assert.Equal(t, traceB, traceOf(t, traced[1].Metadata).TraceID().String(), "the same trace after the park and return")
	assert.Len(t, byName(spansOf(traceB), "waybill handle "+event.OrderShippedTopic), 2, "both handlings in the order's trace")

	// Dead-lettered, and what a replay republishes.
	require.NoError(t, h.Handle(input("order-c", "SFBAD", traceC)))
	dl := pub.On(deadletter.DefaultTopic)
	require.Len(t, dl, 1)
	assert.Equal(t, traceC, traceOf(t, dl[0].Metadata).TraceID().String())
	assert.Equal(t, traceC, traceOf(t, deadletter.ReplayMetadata(dl[0])).TraceID().String(), "a replay continues the trace")
	assert.NotEmpty(t, byName(spansOf(traceC), "waybill dead_letter "+deadletter.DefaultTopic))

	// Nothing secret in any span.
	for _, s := range exp.GetSpans() {
		text := fmt.Sprintf("%s %v %v %v", s.Name, s.Attributes, s.Events, s.Status)
		for _, secret := range []string{"secret-app1", "access_token", "13800138000", "02012345678"} {
			assert.NotContains(t, text, secret, "span %s", s.Name)
		}
		if strings.HasPrefix(s.Name, "wechat ") {
			for _, kv := range s.Attributes {
				if kv.Key == "url.path" {
					assert.NotContains(t, kv.Value.AsString(), "?", "no query in %s", s.Name)
				}
			}
		}
	}
}

// TestTracingHeadersAndBounds: the outputs' trace headers are the
// delivery's only (an input's stray tracestate is not mixed into another
// trace); a dead letter with trace headers still fits MaxDeadLetterBytes
// and does not call them dropped; a message id that is not UTF-8 does not
// reach a span as such.
func TestTracingHeadersAndBounds(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	pub := &testpub.Recorder{}
	const limit = 2000
	h := newTestHandler(t, newScriptedTracer(), pub, func(c *Config) {
		c.TracerProvider, c.MaxDeadLetterBytes = tp, limit
	})

	// A malformed traceparent and a foreign tracestate: a new trace, alone.
	msg := msgOf(t, testevent.Valid("order-s", "SFS"))
	msg.Metadata.Set("traceparent", "00-00000000000000000000000000000000-0000000000000000-01")
	msg.Metadata.Set("tracestate", "foreign=abc")
	require.NoError(t, h.Handle(msg))
	out := pub.On(event.WaybillTracedTopic)
	require.Len(t, out, 1)
	assert.True(t, traceOf(t, out[0].Metadata).IsValid())
	assert.Empty(t, out[0].Metadata.Get("tracestate"), "no foreign tracestate in another trace")

	// An invalid event too large for the bound, with trace headers.
	big := message.NewMessage("bad-\xff-uuid", []byte(strings.Repeat("x", 3*limit)))
	big.Metadata.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	big.Metadata.Set("tracestate", "vendor="+strings.Repeat("v", 200))
	require.NoError(t, h.Handle(big))
	dead := pub.On(deadletter.DefaultTopic)
	require.Len(t, dead, 1)
	size := len(dead[0].Payload)
	for k, v := range dead[0].Metadata {
		size += len(k) + len(v)
	}
	assert.LessOrEqual(t, size, limit, "the published dead letter fits its bound, trace headers included")
	assert.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", traceOf(t, dead[0].Metadata).TraceID().String())
	assert.NotContains(t, dead[0].Metadata.Get(deadletter.HeaderDeadDropped), "traceparent")
	for _, s := range exp.GetSpans() {
		for _, kv := range s.Attributes {
			assert.True(t, utf8.ValidString(kv.Value.Emit()), "span %s attribute %s", s.Name, kv.Key)
		}
	}
}
