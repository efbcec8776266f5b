package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/waybillkit/waybill/kafka"

	"github.com/waybillkit/waybill"
	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
)

// Config is what Run needs: a Kafka cluster whose topics exist, and a WeChat
// client.
type Config struct {
	Kafka  kafka.Config
	Client waybill.Tracer
	// Topics; "" means waybill's defaults.
	InputTopic, TracedTopic, DeadLetterTopic string
	// Out receives one line per event and the summary; nil discards.
	Out io.Writer
	// Logger for watermill; nil means none.
	Logger watermill.LoggerAdapter
	// Customize adjusts the handler's config (limiter, parking, store…)
	// before the handler is built. With Parking set, a DelayRunner runs too.
	Customize func(*waybill.Config)
	// Recheck is the DelayRunner's Recheck; zero means its default.
	Recheck time.Duration
}

// Outcome is what became of one event, as seen on the output topics.
type Outcome struct {
	OrderID string
	// Result is "traced" or the dead-letter reason.
	Result string
	Token  string
	// Errcode is WeChat's errcode, "" when WeChat was not called.
	Errcode string
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

// Pipeline is the handler running on a Watermill router, with a DelayRunner
// when parking is configured, and an observer that records every output.
type Pipeline struct {
	cfg     Config
	pub     message.Publisher
	handler *waybill.Handler
	router  *message.Router
	stop    context.CancelFunc
	done    chan struct{}
	closers []func() error

	in      string
	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every new outcome
	out     map[string]*Outcome
	readErr error
}

// Start runs the pipeline until Close. The topics must exist.
func Start(ctx context.Context, cfg Config) (*Pipeline, error) {
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.Logger == nil {
		cfg.Logger = watermill.NopLogger{}
	}
	p := &Pipeline{cfg: cfg, done: make(chan struct{}), changed: make(chan struct{}), out: map[string]*Outcome{}}
	p.in = or(cfg.InputTopic, event.OrderShippedTopic)
	traced, dead := or(cfg.TracedTopic, event.WaybillTracedTopic), or(cfg.DeadLetterTopic, deadletter.DefaultTopic)
	ok := false
	defer func() {
		if !ok {
			p.Close()
		}
	}()

	pub, err := kafka.NewPublisher(cfg.Kafka, cfg.Logger)
	if err != nil {
		return nil, err
	}
	p.pub = pub
	p.closers = append(p.closers, pub.Close)
	hcfg := waybill.Config{
		Client: cfg.Client, Publisher: pub, Position: kafka.Position, InputTopic: p.in, TracedTopic: traced, DeadLetterTopic: dead, Logger: cfg.Logger,
	}
	if cfg.Customize != nil {
		cfg.Customize(&hcfg)
	}
	if p.handler, err = waybill.NewHandler(hcfg); err != nil {
		return nil, err
	}
	sub, err := kafka.NewOrderedSubscriber(cfg.Kafka, kafka.OrderedConfig{Key: kafka.OrderIDKey}, cfg.Logger)
	if err != nil {
		return nil, err
	}
	p.closers = append(p.closers, sub.Close)
	if p.router, err = message.NewRouter(message.RouterConfig{}, cfg.Logger); err != nil {
		return nil, err
	}
	p.handler.AddTo(p.router, sub)

	runCtx, stop := context.WithCancel(ctx)
	p.stop = stop
	var wg sync.WaitGroup
	routerErr := make(chan error, 1)
	wg.Go(func() { routerErr <- p.router.Run(runCtx) })
	if hcfg.Parking != nil {
		dcfg := kafka.DelayRunnerConfig{
			Kafka: cfg.Kafka, Topics: hcfg.Parking.Topics(p.in), Publisher: pub, DeadLetterTopic: dead, Now: hcfg.Now, Recheck: cfg.Recheck, Logger: cfg.Logger,
		}
		dcfg.Kafka.ConsumerGroup = cfg.Kafka.ConsumerGroup + "-delay"
		runner, err := kafka.NewDelayRunner(dcfg)
		if err != nil {
			return nil, err
		}
		wg.Go(func() { _ = runner.Run(runCtx) })
	}
	go func() { wg.Wait(); close(p.done) }()
	select {
	case <-p.router.Running():
	case err := <-routerErr:
		return nil, fmt.Errorf("router stopped before running: %w", err)
	}

	observerCfg := cfg.Kafka
	observerCfg.ConsumerGroup = cfg.Kafka.ConsumerGroup + "-observer"
	observer, err := kafka.NewSubscriber(observerCfg, cfg.Logger)
	if err != nil {
		return nil, err
	}
	p.closers = append(p.closers, observer.Close)
	tracedCh, err := observer.Subscribe(runCtx, traced)
	if err != nil {
		return nil, err
	}
	deadCh, err := observer.Subscribe(runCtx, dead)
	if err != nil {
		return nil, err
	}
	go p.observe(runCtx, tracedCh, deadCh)
	ok = true
	return p, nil
}

// observe records outcomes from both output topics until ctx ends.
func (p *Pipeline) observe(ctx context.Context, tracedCh, deadCh <-chan *message.Message) {
	for {
		var o *Outcome
		var err error
		select {
		case m, ok := <-tracedCh:
			if !ok {
				return
			}
			var t event.WaybillTraced
			if err = json.Unmarshal(m.Payload, &t); err == nil {
				o = &Outcome{OrderID: t.OrderID, Result: "traced", Token: t.WaybillToken}
			}
			m.Ack()
		case m, ok := <-deadCh:
			if !ok {
				return
			}
			var dl *deadletter.Letter
			if dl, err = deadletter.Parse(m); err == nil {
				o = &Outcome{OrderID: m.Metadata.Get(deadletter.HeaderDeadKey), Result: string(dl.Reason), Errmsg: dl.Errmsg}
				if dl.HasErrcode {
					o.Errcode = fmt.Sprint(dl.Errcode)
				}
			}
			m.Ack()
		case <-ctx.Done():
			return
		}
		p.record(o, err)
	}
}

func (p *Pipeline) record(o *Outcome, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	defer func() { close(p.changed); p.changed = make(chan struct{}) }()
	if err != nil {
		p.readErr = err
		return
	}
	if prev, ok := p.out[o.OrderID]; ok {
		prev.Copies++
		return
	}
	o.Copies = 1
	p.out[o.OrderID] = o
	if o.Result == "traced" {
		fmt.Fprintf(p.cfg.Out, "  %s  traced         waybill_token=%s…\n", o.OrderID, prefixOf(o.Token, 12))
	} else {
		code := o.Errcode
		if code == "" {
			code = "none (WeChat not called)"
		}
		fmt.Fprintf(p.cfg.Out, "  %s  dead-lettered  reason=%s errcode=%s: %s\n", o.OrderID, o.Result, code, o.Errmsg)
	}
}

// Publish sends cases to the input topic, keyed by order id.
func (p *Pipeline) Publish(cases []Case) error {
	for _, c := range cases {
		msg := message.NewMessage(watermill.NewUUID(), c.Payload)
		msg.Metadata.Set(deadletter.HeaderKey, c.OrderID)
		if err := p.pub.Publish(p.in, msg); err != nil {
			return fmt.Errorf("publish order %s: %w", c.OrderID, err)
		}
	}
	return nil
}

// Outcomes returns a copy of the outcomes seen so far, by order id.
func (p *Pipeline) Outcomes() map[string]Outcome {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]Outcome, len(p.out))
	for k, v := range p.out {
		out[k] = *v
	}
	return out
}

// WaitFor blocks until cond holds for the outcomes seen, or ctx ends.
func (p *Pipeline) WaitFor(ctx context.Context, cond func(map[string]Outcome) bool) error {
	for {
		p.mu.Lock()
		changed, readErr := p.changed, p.readErr
		p.mu.Unlock()
		if readErr != nil {
			return readErr
		}
		if cond(p.Outcomes()) {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Handler is the running handler, for its Stats.
func (p *Pipeline) Handler() *waybill.Handler { return p.handler }

// Close stops the pipeline and waits for it.
func (p *Pipeline) Close() {
	if p.router != nil {
		_ = p.router.Close()
	}
	if p.stop != nil {
		p.stop()
		<-p.done
	}
	for i := len(p.closers) - 1; i >= 0; i-- {
		_ = p.closers[i]()
	}
}

// Run publishes cases to the input topic, runs the pipeline, and reads both
// output topics until every event is accounted for or ctx ends. Lost counts
// events with no outcome.
func Run(ctx context.Context, cfg Config, cases []Case) (Summary, error) {
	p, err := Start(ctx, cfg)
	if err != nil {
		return Summary{}, err
	}
	defer p.Close()
	if err := p.Publish(cases); err != nil {
		return Summary{}, err
	}
	waitErr := p.WaitFor(ctx, func(out map[string]Outcome) bool { return len(missing(out, cases)) == 0 })

	out := p.Outcomes()
	sum := Summary{Events: len(cases), Outcomes: map[string]*Outcome{}, Stats: p.Handler().Stats()}
	for _, c := range cases {
		o, ok := out[c.OrderID]
		if !ok {
			continue
		}
		sum.Outcomes[c.OrderID] = &o
		if o.Result == "traced" {
			sum.Traced++
		} else {
			sum.DeadLettered++
		}
	}
	sum.Lost = len(missing(out, cases))
	if waitErr != nil && sum.Lost > 0 {
		return sum, fmt.Errorf("%d of %d events unaccounted for: %w", sum.Lost, sum.Events, waitErr)
	}
	return sum, nil
}

// missing lists the cases with no outcome yet.
func missing(out map[string]Outcome, cases []Case) []string {
	var ids []string
	for _, c := range cases {
		if _, ok := out[c.OrderID]; !ok {
			ids = append(ids, c.OrderID)
		}
	}
	return ids
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
