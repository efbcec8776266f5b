package waybill

import (
	"fmt"

	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
)

// results publishes the outcome of each event: a waybill.traced message or a
// dead letter. Publishing happens before the input is acknowledged, so a
// crash in between redelivers the input (at-least-once) instead of losing it.
type results struct {
	pub         message.Publisher
	tracedTopic string
	deadTopic   string
}

// traced publishes the waybill.traced event for ev.
func (r *results) traced(ev *OrderShipped, out *WaybillTraced) error {
	payload, err := marshalJSON(out)
	if err != nil {
		return fmt.Errorf("encode waybill.traced for order %s: %w", ev.OrderID, err)
	}
	msg := message.NewMessage(TracedMessageID(ev.AppID, ev.OrderID, ev.WaybillID, ev.TransID), payload)
	msg.Metadata.Set(HeaderKey, ev.OrderID)
	if err := r.pub.Publish(r.tracedTopic, msg); err != nil {
		return fmt.Errorf("publish waybill.traced for order %s to %s: %w", ev.OrderID, r.tracedTopic, err)
	}
	return nil
}

// dead publishes the original message, payload and headers untouched, with
// the dead-letter headers added. key is the partition key: the order id when
// the event could be decoded.
func (r *results) dead(orig *message.Message, key string, d *DeadLetter) error {
	md := make(message.Metadata, len(orig.Metadata)+len(deadHeaders))
	for k, v := range orig.Metadata {
		md[k] = v
	}
	d.setHeaders(md)
	if key != "" {
		md.Set(HeaderDeadKey, key)
	}
	// Keep the original UUID: a redelivered event dead-letters as the same
	// message, which replay and downstream deduplication rely on.
	msg := message.NewMessage(orig.UUID, orig.Payload)
	msg.Metadata = md
	if err := r.pub.Publish(r.deadTopic, msg); err != nil {
		return fmt.Errorf("publish dead letter %s to %s: %w", orig.UUID, r.deadTopic, err)
	}
	return nil
}

// PartitionKey is the kafka.GeneratePartitionKey for waybill's output
// topics: the order id that waybill puts in HeaderDeadKey or HeaderKey, so
// that all output about one order lands on one partition and stays in order.
// Messages with neither fall back to their UUID.
func PartitionKey(_ string, msg *message.Message) (string, error) {
	if k := msg.Metadata.Get(HeaderDeadKey); k != "" {
		return k, nil
	}
	if k := msg.Metadata.Get(HeaderKey); k != "" {
		return k, nil
	}
	return msg.UUID, nil
}

// NewMarshaler returns the watermill-kafka marshaler for waybill's output
// topics, keyed by PartitionKey.
func NewMarshaler() kafka.MarshalerUnmarshaler {
	return kafka.NewWithPartitioningMarshaler(PartitionKey)
}
