package waybill

import (
	"context"

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
	if _, ok := msg.Metadata["traceparent"]; ok || t.prop != (propagation.TraceContext{}) {
		ctx = t.prop.Extract(ctx, propagation.MapCarrier(msg.Metadata))
	}
	ctx, span := t.tracer.Start(ctx, t.handle, consumerKind)
	if span.IsRecording() {
		span.SetAttributes(
			attribute.String("messaging.system", "kafka"),
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.destination.name", topic),
			attribute.String("messaging.message.id", msg.UUID),
		)
	}
	return ctx, span
}

// publish runs pub under a producer span, name (e.g. "waybill publish
// waybill.traced"), with that span's context injected into md.
// Under a delivery span that does not record (tracing off, or not
// sampled), it only passes the context on.
func (t tracing) publish(ctx context.Context, name, topic string, md message.Metadata, pub func() error) error {
	if !trace.SpanFromContext(ctx).IsRecording() {
		t.prop.Inject(ctx, propagation.MapCarrier(md))
		return pub()
	}
	ctx, span := t.tracer.Start(ctx, name, producerKind)
	defer span.End()
	if span.IsRecording() {
		span.SetAttributes(attribute.String("messaging.system", "kafka"),
			attribute.String("messaging.operation.type", "send"),
			attribute.String("messaging.destination.name", topic))
	}
	t.prop.Inject(ctx, propagation.MapCarrier(md))
	err := pub()
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	return err
}

// endDelivery ends the delivery's span: an error means the message is
// nacked for redelivery (ErrWaitLimit among them).
func endDelivery(span trace.Span, err error) {
	if err != nil && span.IsRecording() {
		span.SetAttributes(attribute.String("waybill.outcome", "redelivered"))
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// outcome records on the delivery's span what became of the event.
func (d *delivery) outcome(outcome, key, value string) {
	if span := trace.SpanFromContext(d.ctx); span.IsRecording() {
		span.SetAttributes(attribute.String("waybill.outcome", outcome), attribute.String(key, value))
	}
}
