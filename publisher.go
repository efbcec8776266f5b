package waybill

import (
	"context"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/rawjson"
)

// results publishes the outcome of each event: a waybill.traced message or a
// dead letter. Publishing happens before the input is acknowledged, so a
// crash in between redelivers the input (at-least-once) instead of losing it.
// Each message published carries the delivery's context (the input's), so a
// publisher can join the transaction the input was consumed in.
type results struct {
	tr                   tracing
	tracedSpan, deadSpan string // the publish spans' names
	pub                  message.Publisher
	tracedTopic          string
	deadTopic            string
	maxDead              int // Config.MaxDeadLetterBytes; 0: no bound
}

// traced publishes the waybill.traced event for ev, under ctx's trace.
func (r *results) traced(ctx context.Context, ev *event.OrderShipped, out *event.WaybillTraced) error {
	payload, err := rawjson.Marshal(out)
	if err != nil {
		return fmt.Errorf("encode waybill.traced for order %s: %w", ev.OrderID, err)
	}
	msg := message.NewMessage(event.TracedMessageID(ev.AppID, ev.OrderID, ev.WaybillID, ev.TransID), payload)
	msg.Metadata.Set(deadletter.HeaderKey, ev.OrderID)
	msg.SetContext(ctx)
	if err := r.tr.publish(ctx, r.tracedSpan, r.tracedTopic, msg.Metadata, func() error { return r.pub.Publish(r.tracedTopic, msg) }); err != nil {
		return fmt.Errorf("publish waybill.traced for order %s to %s: %w", ev.OrderID, r.tracedTopic, err)
	}
	return nil
}

// metadataSize is what md weighs on the broker, near enough.
func metadataSize(md message.Metadata) int {
	n := 0
	for k, v := range md {
		n += len(k) + len(v)
	}
	return n
}

// dead publishes the dead letter of orig; key is the partition key: the
// order id when the event could be decoded.
//
// The trace headers it carries are the delivery's, never the input's, and
// count within maxDead: the letter is reduced to leave room for them, so
// that what is published fits the bound.
func (r *results) dead(ctx context.Context, orig *message.Message, key string, d *deadletter.Letter) error {
	var msg *message.Message
	build := func(carried message.Metadata) message.Metadata {
		clean := message.NewMessage(orig.UUID, orig.Payload)
		clean.Metadata = r.tr.without(orig.Metadata)
		limit := r.maxDead
		if limit > 0 {
			limit = max(1, limit-metadataSize(carried))
		}
		msg = d.Message(clean, key, limit)
		msg.SetContext(ctx)
		for k, v := range carried {
			msg.Metadata[k] = v
		}
		return msg.Metadata
	}
	if err := r.tr.send(ctx, r.deadSpan, r.deadTopic, build, func() error { return r.pub.Publish(r.deadTopic, msg) }); err != nil {
		return fmt.Errorf("publish dead letter %s to %s: %w", orig.UUID, r.deadTopic, err)
	}
	return nil
}
