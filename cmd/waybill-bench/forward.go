package main

import (
	"context"
	"flag"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/kafka"
)

// forward is the bare forwarder: a Watermill Router that consumes -in and
// republishes every message to -out, keyed by its input key, with the
// subscriber and publisher settings the service's own Kafka wiring uses
// (watermill-kafka v3; -ordered: the OrderedSubscriber).
func forward(args []string) error {
	fs := flag.NewFlagSet("forward", flag.ContinueOnError)
	brokers := fs.String("brokers", "127.0.0.1:9092", "brokers")
	group := fs.String("group", "bench-forward", "consumer group")
	in := fs.String("in", "", "input topic")
	out := fs.String("out", "", "output topic")
	ordered := fs.Int("ordered", 0, "consume with an OrderedSubscriber of this concurrency instead of watermill-kafka's subscriber")
	if err := fs.Parse(args); err != nil {
		return err
	}
	kc := kafka.Config{Brokers: strings.Split(*brokers, ","), ConsumerGroup: *group}
	var sub message.Subscriber
	var err error
	if *ordered > 0 {
		sub, err = kafka.NewOrderedSubscriber(kc, kafka.OrderedConfig{Concurrency: *ordered}, nil)
	} else {
		sub, err = kafka.NewSubscriber(kc, nil)
	}
	if err != nil {
		return err
	}
	pub, err := kafka.NewPublisher(kc, nil)
	if err != nil {
		return err
	}
	router, err := message.NewRouter(message.RouterConfig{}, nil)
	if err != nil {
		return err
	}
	router.AddHandler("forward", *in, sub, *out, pub, func(msg *message.Message) ([]*message.Message, error) {
		o := message.NewMessage(msg.UUID, msg.Payload)
		o.Metadata = msg.Metadata
		if key, ok := kafka.MessageKey(msg); ok {
			o.Metadata.Set(deadletter.HeaderKey, string(key))
		}
		return []*message.Message{o}, nil
	})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	return router.Run(ctx)
}
