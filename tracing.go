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

// tracing is the handler's OpenTelemetry plumbing: one span per delivery,
// continuing the trace the input's headers carry (W3C traceparent by
// default), a child span per publish, and the context injected into every
// message published, so that a trace follows an order through delay tiers,
// dead letters and replays.
type tracing struct {
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
}

func newTracing(tp trace.TracerProvider, prop propagation.TextMapPropagator) tracing {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if prop == nil {
		prop = propagation.TraceContext{}
	}
	return tracing{tracer: tp.Tracer(tracerName), prop: prop}
}

// start begins the delivery's span under the context msg's headers carry.
func (t tracing) start(msg *message.Message, topic string) (context.Context, trace.Span) {
	ctx := t.prop.Extract(msg.Context(), propagation.MapCarrier(msg.Metadata))
	return t.tracer.Start(ctx, "waybill handle "+topic, trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("messaging.system", "kafka"),
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.destination.name", topic),
			attribute.String("messaging.message.id", msg.UUID),
		))
}

// publish runs pub under a producer span named for what it publishes, with
// that span's context injected into md.
func (t tracing) publish(ctx context.Context, what, topic string, md message.Metadata, pub func() error) error {
	ctx, span := t.tracer.Start(ctx, "waybill "+what+" "+topic, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("messaging.system", "kafka"),
			attribute.String("messaging.operation.type", "send"),
			attribute.String("messaging.destination.name", topic)))
	defer span.End()
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
	if err != nil {
		span.SetAttributes(attribute.String("waybill.outcome", "redelivered"))
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// outcome records on the delivery's span what became of the event.
func (d *delivery) outcome(kv ...attribute.KeyValue) {
	trace.SpanFromContext(d.ctx).SetAttributes(kv...)
}
