package waybill

import (
	"context"
	"errors"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// tracerName names the handler's spans' instrumentation scope.
const tracerName = "github.com/waybillkit/waybill"

// The span kinds as start options, made once: each conversion to the
// option interface would allocate.
var (
	consumerKind = trace.WithSpanKind(trace.SpanKindConsumer)
	producerKind = trace.WithSpanKind(trace.SpanKindProducer)
)

// tracing is the handler's OpenTelemetry plumbing: one span per delivery,
// continuing the trace the input's headers carry (W3C traceparent by
// default), a child span per publish, and the context injected into every
// message published, so that a trace follows an order through delay tiers,
// dead letters and replays.
//
// Span names are built once, and attributes set only on a span that
// records: with tracing off, a delivery costs no allocation for it.
type tracing struct {
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
	handle string // "waybill handle <input topic>"
}

func newTracing(tp trace.TracerProvider, prop propagation.TextMapPropagator, input string) tracing {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if prop == nil {
		prop = propagation.TraceContext{}
	}
	return tracing{tracer: tp.Tracer(tracerName), prop: prop, handle: "waybill handle " + input}
}

// start begins the delivery's span under the context msg's headers carry.
func (t tracing) start(msg *message.Message, topic string) (context.Context, trace.Span) {
	ctx := msg.Context()
	// TraceContext.Extract costs two allocations even without a header.
	if _, ok := msg.Metadata["traceparent"]; ok || t.prop != (propagation.TraceContext{}) {
		ctx = t.prop.Extract(ctx, propagation.MapCarrier(msg.Metadata))
	}
	ctx, span := t.tracer.Start(ctx, t.handle, consumerKind)
	if span.IsRecording() {
		span.SetAttributes(
			attribute.String("messaging.system", "kafka"),
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.destination.name", topic),
			attribute.String("messaging.message.id", spanText(msg.UUID)),
		)
	}
	return ctx, span
}

// publish runs pub under a producer span, name (e.g. "waybill publish
// waybill.traced"), with that span's context in md: the propagator's
// headers md had (the input's, copied) are replaced, never mixed with
// another trace's. Under a delivery span that does not record (tracing
// off, or not sampled), it only passes the context on.
func (t tracing) publish(ctx context.Context, name, topic string, md message.Metadata, pub func() error) error {
	return t.send(ctx, name, topic, func(carried message.Metadata) message.Metadata {
		t.replace(md, carried)
		return md
	}, pub)
}

// send is publish for a message built knowing the trace headers it will
// carry (a bounded dead letter makes room for them): build gets them and
// returns the metadata published.
func (t tracing) send(ctx context.Context, name, topic string, build func(carried message.Metadata) message.Metadata, pub func() error) error {
	if !trace.SpanFromContext(ctx).IsRecording() {
		build(t.carried(ctx))
		return pub()
	}
	ctx, span := t.tracer.Start(ctx, name, producerKind)
	defer span.End()
	if span.IsRecording() {
		span.SetAttributes(attribute.String("messaging.system", "kafka"),
			attribute.String("messaging.operation.type", "send"),
			attribute.String("messaging.destination.name", spanText(topic)))
	}
	build(t.carried(ctx))
	err := pub()
	if err != nil {
		span.RecordError(errors.New(spanText(err.Error())))
		span.SetStatus(codes.Error, spanText(err.Error()))
	}
	return err
}

// carried is the trace headers ctx's span context makes.
func (t tracing) carried(ctx context.Context) message.Metadata {
	md := message.Metadata{}
	t.prop.Inject(ctx, propagation.MapCarrier(md))
	return md
}

// replace puts carried in md instead of any header of the propagator's.
func (t tracing) replace(md, carried message.Metadata) {
	for _, k := range t.prop.Fields() {
		delete(md, k)
	}
	for k, v := range carried {
		md[k] = v
	}
}

// without returns a copy of md without the propagator's headers.
func (t tracing) without(md message.Metadata) message.Metadata {
	out := make(message.Metadata, len(md))
	for k, v := range md {
		out[k] = v
	}
	for _, k := range t.prop.Fields() {
		delete(out, k)
	}
	return out
}

// maxSpanText bounds a span attribute taken from input: a message id, an
// error text. Exporters refuse invalid UTF-8 (a whole batch with it), and
// an event's fields may be of any length.
const maxSpanText = 256

// spanText makes s fit for a span: valid UTF-8, at most maxSpanText bytes.
func spanText(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) > maxSpanText {
		s = strings.ToValidUTF8(s[:maxSpanText], "") // a cut rune is dropped
	}
	return s
}

// endDelivery ends the delivery's span: an error means the message is
// nacked for redelivery (ErrWaitLimit among them).
func endDelivery(span trace.Span, err error) {
	if err != nil && span.IsRecording() {
		span.SetAttributes(attribute.String("waybill.outcome", "redelivered"))
		span.SetStatus(codes.Error, spanText(err.Error()))
	}
	span.End()
}

// outcome records on the delivery's span what became of the event.
func (d *delivery) outcome(outcome, key, value string) {
	if span := trace.SpanFromContext(d.ctx); span.IsRecording() {
		span.SetAttributes(attribute.String("waybill.outcome", outcome), attribute.String(key, spanText(value)))
	}
}
