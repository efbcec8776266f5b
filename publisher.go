package waybill

import (
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"

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
	maxDead     int // Config.MaxDeadLetterBytes; 0: no bound
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
	payload := orig.Payload
	if r.maxDead > 0 && messageSize(payload, md) > r.maxDead {
		payload, md = reduce(payload, md, r.maxDead)
	}
	// Keep the original UUID: a redelivered event dead-letters as the same
	// message, which replay and downstream deduplication rely on.
	msg := message.NewMessage(orig.UUID, payload)
	msg.Metadata = md
	if err := r.pub.Publish(r.deadTopic, msg); err != nil {
		return fmt.Errorf("publish dead letter %s to %s: %w", orig.UUID, r.deadTopic, err)
	}
	return nil
}

// messageSize is what a message weighs on the broker, near enough: payload
// and headers.
func messageSize(payload []byte, md message.Metadata) int {
	n := len(payload)
	for k, v := range md {
		n += len(k) + len(v)
	}
	return n
}

// reduce makes a dead letter fit in limit bytes: it drops the payload, then,
// if that is not enough, the headers that are not waybill's own, and says
// what it dropped in HeaderDeadDropped. The dead letter's source topic,
// partition and offset still locate the original.
func reduce(payload []byte, md message.Metadata, limit int) ([]byte, message.Metadata) {
	dropped := fmt.Sprintf("payload (%d bytes)", len(payload))
	md.Set(HeaderDeadDropped, dropped)
	if messageSize(nil, md) > limit {
		var names []string
		for k := range md {
			if !strings.HasPrefix(k, "waybill_") {
				names = append(names, k)
			}
		}
		sort.Strings(names)
		for _, k := range names {
			delete(md, k)
		}
		dropped += fmt.Sprintf(", %d headers: %s", len(names), strings.Join(names, ","))
		md.Set(HeaderDeadDropped, truncate(dropped, maxReducedHeader))
		if messageSize(nil, md) > limit {
			// Only waybill's own headers are left, some of them from the
			// producer or the event (an order id as the key): cut each.
			for k, v := range md {
				md[k] = truncate(v, maxReducedHeader)
			}
		}
	}
	return []byte{}, md
}

// maxReducedHeader bounds each header of a reduced dead letter that is
// still too large without its payload.
const maxReducedHeader = 1024

// truncate cuts s to at most n bytes at a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// PartitionKey is the kafka.GeneratePartitionKey for waybill's output
// topics: the order id that waybill puts in HeaderDeadKey, HeaderKey or
// HeaderParkedKey, so that all output about one order lands on one
// partition and stays in order. Messages with none fall back to their UUID.
func PartitionKey(_ string, msg *message.Message) (string, error) {
	for _, h := range [...]string{HeaderDeadKey, HeaderKey, HeaderParkedKey} {
		if k := msg.Metadata.Get(h); k != "" {
			return k, nil
		}
	}
	return msg.UUID, nil
}

// NewMarshaler returns the watermill-kafka marshaler for waybill's output
// topics, keyed by PartitionKey.
func NewMarshaler() kafka.MarshalerUnmarshaler {
	return kafka.NewWithPartitioningMarshaler(PartitionKey)
}
