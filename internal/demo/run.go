package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/waybillkit/waybill"
)

// Config is what Run needs: a Kafka cluster whose topics exist, and a WeChat
// client.
type Config struct {
	Kafka  waybill.KafkaConfig
	Client waybill.Tracer
	// Topics; "" means waybill's defaults.
	InputTopic, TracedTopic, DeadLetterTopic string
	// Out receives one line per event and the summary; nil discards.
	Out io.Writer
	// Logger for watermill; nil means none.
	Logger watermill.LoggerAdapter
}

// Outcome is what became of one event, as seen on the output topics.
type Outcome struct {
	OrderID string
	// Result is "traced" or the dead-letter reason.
	Result  string
	Token   string
	Errcode int
	Errmsg  string
	// Copies counts how often the outcome was published (1, or more after a
	// redelivery).
	Copies int
}

// Summary is the accounting of a run.
type Summary struct {
	Events, Traced, DeadLettered, Lost int
	Outcomes                           map[string]*Outcome // by order id
	Stats                              waybill.Stats
}

// Line is the one-line summary the quickstart prints.
func (s Summary) Line() string {
	return fmt.Sprintf("%d events, %d traced, %d dead-lettered, %d lost", s.Events, s.Traced, s.DeadLettered, s.Lost)
}

// Run publishes cases to the input topic, runs the waybill handler on a
// Watermill router, and reads both output topics until every event is
// accounted for or ctx ends. Lost counts events with no outcome.
func Run(ctx context.Context, cfg Config, cases []Case) (Summary, error) {
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.Logger == nil {
		cfg.Logger = watermill.NopLogger{}
	}
	in, traced, dead := or(cfg.InputTopic, waybill.DefaultInputTopic), or(cfg.TracedTopic, waybill.DefaultTracedTopic), or(cfg.DeadLetterTopic, waybill.DefaultDeadLetterTopic)

	pub, err := waybill.NewKafkaPublisher(cfg.Kafka, cfg.Logger)
	if err != nil {
		return Summary{}, err
	}
	defer pub.Close()
	handler, err := waybill.NewHandler(waybill.Config{
		Client: cfg.Client, Publisher: pub, InputTopic: in, TracedTopic: traced, DeadLetterTopic: dead, Logger: cfg.Logger,
	})
	if err != nil {
		return Summary{}, err
	}
	sub, err := waybill.NewKafkaSubscriber(cfg.Kafka, cfg.Logger)
	if err != nil {
		return Summary{}, err
	}
	defer sub.Close()
	router, err := message.NewRouter(message.RouterConfig{}, cfg.Logger)
	if err != nil {
		return Summary{}, err
	}
	handler.AddTo(router, sub)

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	routerDone := make(chan error, 1)
	go func() { routerDone <- router.Run(runCtx) }()
	defer func() { _ = router.Close(); <-routerDone }()
	select {
	case <-router.Running():
	case err := <-routerDone:
		return Summary{}, fmt.Errorf("router stopped before running: %w", err)
	}

	observerCfg := cfg.Kafka
	observerCfg.ConsumerGroup = cfg.Kafka.ConsumerGroup + "-observer"
	observer, err := waybill.NewKafkaSubscriber(observerCfg, cfg.Logger)
	if err != nil {
		return Summary{}, err
	}
	defer observer.Close()
	tracedCh, err := observer.Subscribe(runCtx, traced)
	if err != nil {
		return Summary{}, err
	}
	deadCh, err := observer.Subscribe(runCtx, dead)
	if err != nil {
		return Summary{}, err
	}

	for _, c := range cases {
		msg := message.NewMessage(watermill.NewUUID(), c.Payload)
		msg.Metadata.Set(waybill.HeaderKey, c.OrderID)
		if err := pub.Publish(in, msg); err != nil {
			return Summary{}, fmt.Errorf("publish order %s: %w", c.OrderID, err)
		}
	}

	var mu sync.Mutex
	sum := Summary{Events: len(cases), Outcomes: map[string]*Outcome{}}
	want := map[string]bool{}
	for _, c := range cases {
		want[c.OrderID] = true
	}
	record := func(o *Outcome) {
		mu.Lock()
		defer mu.Unlock()
		if prev, ok := sum.Outcomes[o.OrderID]; ok {
			prev.Copies++
			return
		}
		o.Copies = 1
		sum.Outcomes[o.OrderID] = o
		if o.Result == "traced" {
			fmt.Fprintf(cfg.Out, "  %s  traced         waybill_token=%s…\n", o.OrderID, prefixOf(o.Token, 12))
		} else {
			fmt.Fprintf(cfg.Out, "  %s  dead-lettered  reason=%s errcode=%d %s\n", o.OrderID, o.Result, o.Errcode, o.Errmsg)
		}
	}
	pending := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for id := range want {
			if _, ok := sum.Outcomes[id]; !ok {
				n++
			}
		}
		return n
	}
	var readErr error
	for pending() > 0 && readErr == nil {
		select {
		case m, ok := <-tracedCh:
			if !ok {
				readErr = errors.New("traced subscription closed")
				break
			}
			var t waybill.WaybillTraced
			if err := json.Unmarshal(m.Payload, &t); err != nil {
				readErr = fmt.Errorf("decode waybill.traced: %w", err)
			} else if want[t.OrderID] {
				record(&Outcome{OrderID: t.OrderID, Result: "traced", Token: t.WaybillToken})
			}
			m.Ack()
		case m, ok := <-deadCh:
			if !ok {
				readErr = errors.New("dead-letter subscription closed")
				break
			}
			dl, err := waybill.ParseDeadLetter(m)
			id := m.Metadata.Get(waybill.HeaderDeadKey)
			if err != nil {
				readErr = err
			} else if want[id] {
				record(&Outcome{OrderID: id, Result: string(dl.Reason), Errcode: dl.Errcode, Errmsg: dl.Errmsg})
			}
			m.Ack()
		case <-ctx.Done():
			readErr = ctx.Err()
		}
	}

	for _, o := range sum.Outcomes {
		if o.Result == "traced" {
			sum.Traced++
		} else {
			sum.DeadLettered++
		}
	}
	sum.Lost = pending()
	sum.Stats = handler.Stats()
	if readErr != nil && sum.Lost > 0 {
		return sum, fmt.Errorf("%d of %d events unaccounted for: %w", sum.Lost, sum.Events, readErr)
	}
	return sum, nil
}

// Mismatches lists the events whose outcome differs from what the case wants.
func (s Summary) Mismatches(cases []Case) []string {
	var out []string
	for _, c := range cases {
		o, ok := s.Outcomes[c.OrderID]
		switch {
		case !ok:
			out = append(out, c.OrderID+": no outcome")
		case o.Result != c.Want:
			out = append(out, fmt.Sprintf("%s: %s, want %s", c.OrderID, o.Result, c.Want))
		}
	}
	sort.Strings(out)
	return out
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func prefixOf(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
