package kafka

import (
	"encoding/json"

	"github.com/IBM/sarama"
	wmkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/waybillkit/waybill/deadletter"
)

// PartitionKey is the watermill-kafka GeneratePartitionKey for waybill's
// output topics: the order id that waybill puts in its key headers
// (deadletter.Key), so that all output about one order lands on one
// partition and stays in order. Messages with none fall back to their UUID.
func PartitionKey(_ string, msg *message.Message) (string, error) {
	if k := deadletter.Key(msg.Metadata); k != "" {
		return k, nil
	}
	return msg.UUID, nil
}

// NewMarshaler returns the watermill-kafka marshaler for waybill's output
// topics, keyed by PartitionKey.
func NewMarshaler() wmkafka.MarshalerUnmarshaler {
	return wmkafka.NewWithPartitioningMarshaler(PartitionKey)
}

// Position is the Handler's Config.Position for messages consumed through
// an OrderedSubscriber or watermill-kafka's subscriber: the record's
// partition and offset, which name it in dead letters and tell one record's
// redeliveries from another record's.
func Position(msg *message.Message) (partition int32, offset int64, ok bool) {
	ctx := msg.Context()
	if pos, ok := ctx.Value(recordPositionKey{}).(*recordPosition); ok {
		return pos.partition, pos.offset, true
	}
	p, okp := wmkafka.MessagePartitionFromCtx(ctx)
	o, oko := wmkafka.MessagePartitionOffsetFromCtx(ctx)
	if !okp || !oko {
		return -1, -1, false
	}
	return p, o, true
}

// MessageKey is the Kafka key of a message consumed through an
// OrderedSubscriber or watermill-kafka's subscriber; ok is false for a
// message from elsewhere.
func MessageKey(msg *message.Message) (key []byte, ok bool) {
	ctx := msg.Context()
	if pos, ok := ctx.Value(recordPositionKey{}).(*recordPosition); ok {
		return pos.key, true
	}
	return wmkafka.MessageKeyFromCtx(ctx)
}

// OrderIDKey is the OrderedConfig.Key for order.shipped events: their
// order_id, so that the events of one order in one partition are handled
// one at a time, in order, even where the producer's key is something else
// (a merchant, say). Order across partitions is not kept: producers must
// send all of an order's events to one partition, by keying them by
// anything that determines the order id. A record whose value has no
// order_id (it is not valid JSON, say: the handler will dead-letter it) falls
// back to RecordKey.
func OrderIDKey(rec *sarama.ConsumerMessage) string {
	if id, ok := topLevelString(rec.Value, "order_id"); ok {
		if id != "" {
			return id
		}
		return RecordKey(rec)
	}
	var v struct {
		OrderID string `json:"order_id"`
	}
	if json.Unmarshal(rec.Value, &v) == nil && v.OrderID != "" {
		return v.OrderID
	}
	return RecordKey(rec)
}
