package kafka_test

import (
	"context"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/waybillkit/waybill/kafka"
)

// An OrderedSubscriber under any Watermill Router: 32 messages of each
// partition in flight, never two of one order, each order's in the order
// they came. It needs a Kafka cluster, so it is compiled and not run.
func ExampleNewOrderedSubscriber() {
	logger := watermill.NewSlogLogger(nil)
	sub, err := kafka.NewOrderedSubscriber(
		kafka.Config{Brokers: []string{"kafka:9092"}, ConsumerGroup: "shipments"},
		kafka.OrderedConfig{Concurrency: 32, Key: kafka.OrderIDKey},
		logger,
	)
	if err != nil {
		panic(err)
	}
	router, _ := message.NewRouter(message.RouterConfig{}, logger)
	router.AddConsumerHandler("ship", "order.shipped", sub, func(msg *message.Message) error {
		// Returning nil acks: the offset is committed once every earlier
		// message of the partition is acked too. An error nacks: the message
		// comes again after NackResendSleep, and only its order waits.
		return nil
	})
	_ = router.Run(context.Background())
}
