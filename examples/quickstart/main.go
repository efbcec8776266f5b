// Command quickstart runs the whole waybill job in one process, with no
// configuration: an in-process Kafka (kfake), the WeChat sandbox, a dozen
// order.shipped events, the handler on a Watermill router, and an account of
// what became of every event.
//
//	go run ./examples/quickstart
//
// It exits 0 only if every event was traced or dead-lettered as expected and
// none was lost.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/demo"
	"github.com/waybillkit/waybill/kafka"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// An in-process Kafka with waybill's three topics.
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3,
		event.OrderShippedTopic, event.WaybillTracedTopic, deadletter.DefaultTopic))
	if err != nil {
		return fmt.Errorf("start in-process kafka: %w", err)
	}
	defer cluster.Close()

	// The WeChat sandbox, with two merchants and one buyer it rejects.
	sandbox, err := demo.NewSandbox()
	if err != nil {
		return err
	}
	defer sandbox.Close()

	cases := demo.Cases("QS", 12)
	fmt.Printf("quickstart: publishing %d order.shipped events to an in-process Kafka at %s\n", len(cases), cluster.ListenAddrs()[0])
	sum, err := demo.Run(ctx, demo.Config{
		Kafka:  kafka.Config{Brokers: cluster.ListenAddrs(), ConsumerGroup: "quickstart"},
		Client: sandbox.Client,
		Out:    os.Stdout,
	}, cases)
	if err != nil {
		return err
	}

	calls := len(sandbox.CallsTo("trace_waybill"))
	fmt.Printf("quickstart: WeChat sandbox received %d trace_waybill calls\n", calls)
	fmt.Println("quickstart:", sum.Line())
	if bad := sum.Mismatches(cases); len(bad) > 0 {
		return fmt.Errorf("unexpected outcomes: %v", bad)
	}
	if sum.Lost != 0 {
		return fmt.Errorf("%d events lost", sum.Lost)
	}
	return nil
}
