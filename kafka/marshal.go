package kafka

import (
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
// watermill-kafka: the record's partition and offset, which name it in dead
// letters and tell one record's redeliveries from another record's.
func Position(msg *message.Message) (partition int32, offset int64, ok bool) {
	ctx := msg.Context()
	p, okp := wmkafka.MessagePartitionFromCtx(ctx)
	o, oko := wmkafka.MessagePartitionOffsetFromCtx(ctx)
	if !okp || !oko {
		return -1, -1, false
	}
	return p, o, true
}
