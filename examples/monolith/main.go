// Command monolith is an event-driven monolith with waybill inside: a tiny
// order service on one PostgreSQL, no Kafka and no Redis. Shipping an order
// writes the shipment and its order.shipped event in one transaction (the
// outbox, package postgres); the waybill Handler runs in the same process on
// a Watermill router over the same database, parks events with PostgreSQL's
// native delays, and keeps its quotas and traced waybills there too; the
// shop reads waybill.traced and dead letters back into its shipments.
//
//	go run ./examples/monolith
//
// With no flags it uses the PostgreSQL of POSTGRES_URL, or starts one with
// scripts/postgres.sh (run it from the repository root), and an in-process
// WeChat sandbox; ships a handful of orders through its own HTTP API, one of
// them a second shipment whose transaction rolls back; prints what became of
// each; and exits 0 only if every order was traced or dead-lettered as
// expected and the rolled-back one made no WeChat call. With -serve it keeps
// serving instead:
//
//	POST /orders/{id}/ship   the order.shipped event as JSON (order_id from the path)
//	GET  /orders/{id}        {status: shipped|traced|dead, waybill_token, dead_reason, …}
package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver

	"github.com/waybillkit/waybill"
	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/postgres"
	"github.com/waybillkit/waybill/ratelimit"
	ratelimitpg "github.com/waybillkit/waybill/ratelimit/postgres"
	tracepg "github.com/waybillkit/waybill/tracestore/postgres"
	"github.com/waybillkit/waybill/wechat"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

// The shop's mini program, as the sandbox knows it. -wechat points at a
// WeChat that must know it too.
const (
	AppID     = "wx3b5d7f9a1c2e4068"
	AppSecret = "monolith-shop-secret"
	// RejectedOpenID is a buyer the in-process sandbox rejects (40003).
	RejectedOpenID = "oMono4yB7DIj3CxOb6ii-unknown"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "monolith:", err)
		os.Exit(1)
	}
}

type options struct {
	db, addr, wechatURL string
	serve               bool
	poll                time.Duration
}

func run(args []string) error {
	var o options
	fs := flag.NewFlagSet("monolith", flag.ContinueOnError)
	fs.StringVar(&o.db, "db", os.Getenv("POSTGRES_URL"), "PostgreSQL URL; empty starts one with scripts/postgres.sh")
	fs.StringVar(&o.addr, "addr", "127.0.0.1:0", "HTTP listen address")
	fs.StringVar(&o.wechatURL, "wechat", "", "WeChat API root; empty starts an in-process sandbox")
	fs.BoolVar(&o.serve, "serve", false, "serve until SIGINT or SIGTERM instead of running the demo")
	fs.DurationVar(&o.poll, "poll", 200*time.Millisecond, "how often idle subscribers look for new rows")
	if err := fs.Parse(args); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if o.db == "" {
		url, err := startPostgres(ctx)
		if err != nil {
			return err
		}
		o.db = url
	}
	var sandbox *wechattest.Server
	if o.wechatURL == "" {
		sandbox = wechattest.NewServer(wechattest.Config{})
		defer sandbox.Close()
		sandbox.AddApp(AppID, AppSecret)
		sandbox.Inject(wechattest.Fault{
			Endpoint: "trace_waybill",
			Match:    func(c *wechattest.Call) bool { return c.Field("openid") == RejectedOpenID },
			Errcode:  40003,
		})
		o.wechatURL = sandbox.URL
	}

	app, err := start(ctx, o)
	if err != nil {
		return err
	}
	defer app.close()
	fmt.Printf("monolith: serving on http://%s (PostgreSQL %s)\n", app.addr, dsnHost(o.db))
	if o.serve {
		<-ctx.Done()
		return nil
	}
	return demo(ctx, app, sandbox)
}

// startPostgres runs scripts/postgres.sh start and returns the URL it prints.
func startPostgres(ctx context.Context) (string, error) {
	if _, err := os.Stat("scripts/postgres.sh"); err != nil {
		return "", errors.New("no -db or POSTGRES_URL, and scripts/postgres.sh is not here: run from the repository root")
	}
	fmt.Println("monolith: starting PostgreSQL with scripts/postgres.sh (installs it from Debian's packages if missing)")
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "bash", "scripts/postgres.sh", "start")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("scripts/postgres.sh start: %w\n%s", err, stderr.String())
	}
	fields := strings.Fields(string(out))
	if len(fields) == 0 {
		return "", errors.New("scripts/postgres.sh start printed no URL")
	}
	return fields[len(fields)-1], nil
}

// app is the running monolith.
type app struct {
	shop    *shop
	handler *waybill.Handler
	addr    string
	closers []func() error
	wg      sync.WaitGroup
}

func (a *app) close() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		_ = a.closers[i]()
	}
	a.wg.Wait()
}

// start wires the monolith: one pool, the shop, waybill's Handler with its
// state in the same database, the router, the HTTP server.
func start(ctx context.Context, o options) (_ *app, err error) {
	a := &app{}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	db, err := sql.Open("pgx", o.db)
	if err != nil {
		return nil, err
	}
	a.closers = append(a.closers, db.Close)
	// Every subscriber's delivery holds a connection for its transaction;
	// the stores and the shop need theirs besides.
	db.SetMaxOpenConns(32)
	if err := db.PingContext(ctx); err != nil {
		return nil, fmt.Errorf("PostgreSQL at %s: %w", dsnHost(o.db), err)
	}
	a.shop = &shop{db: db}
	if err := a.shop.migrate(ctx); err != nil {
		return nil, err
	}

	tokens, err := wechat.NewStableTokenSource(wechat.StableTokenConfig{BaseURL: o.wechatURL, Secrets: wechat.StaticSecrets{AppID: AppSecret}})
	if err != nil {
		return nil, err
	}
	client, err := wechat.NewClient(wechat.Config{BaseURL: o.wechatURL, Tokens: tokens})
	if err != nil {
		return nil, err
	}
	traces, err := tracepg.New(db, tracepg.Config{})
	if err != nil {
		return nil, err
	}
	quotas, err := ratelimitpg.New(db, ratelimitpg.Config{})
	if err != nil {
		return nil, err
	}
	limiter, err := ratelimit.New(ratelimit.Config{Store: quotas})
	if err != nil {
		return nil, err
	}
	logger := watermill.NopLogger{}
	pub, err := postgres.NewPublisher(db, postgres.Config{})
	if err != nil {
		return nil, err
	}
	a.handler, err = waybill.NewHandler(waybill.Config{
		Client:    client,
		Publisher: pub,
		// PostgreSQL holds a parked event back itself: no delay topics.
		Parking:    &waybill.ParkingConfig{Delay: waybill.NativeDelay},
		TraceStore: traces,
		Limiter:    limiter,
		Logger:     logger,
	})
	if err != nil {
		return nil, err
	}
	pcfg := postgres.Config{PollInterval: o.poll, Concurrency: 4}
	in, err := postgres.NewSubscriber(db, pcfg)
	if err != nil {
		return nil, err
	}
	a.closers = append(a.closers, in.Close)
	pcfg.Concurrency = 1
	results, err := postgres.NewSubscriber(db, pcfg)
	if err != nil {
		return nil, err
	}
	a.closers = append(a.closers, results.Close)
	// Dead letters stay in their table once the shop has read them, for
	// postgres.Replay to bring back when their cause is fixed.
	pcfg.KeepAcked = true
	deadSub, err := postgres.NewSubscriber(db, pcfg)
	if err != nil {
		return nil, err
	}
	a.closers = append(a.closers, deadSub.Close)

	// Longer than the subscribers' drain (30 s), so that the router waits
	// for the events in flight.
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 45 * time.Second}, logger)
	if err != nil {
		return nil, err
	}
	a.handler.AddTo(router, in)
	router.AddNoPublisherHandler("shop_traced", event.WaybillTracedTopic, results, a.shop.traced)
	router.AddNoPublisherHandler("shop_dead", deadletter.DefaultTopic, deadSub, a.shop.dead)
	runCtx, cancel := context.WithCancel(context.Background())
	routerErr := make(chan error, 1)
	a.wg.Go(func() { routerErr <- router.Run(runCtx) })
	a.closers = append(a.closers, func() error { cancel(); return router.Close() })
	select {
	case <-router.Running():
	case err := <-routerErr:
		return nil, fmt.Errorf("router: %w", err)
	}

	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		return nil, err
	}
	a.addr = ln.Addr().String()
	srv := &http.Server{Handler: a.shop.routes(), ReadHeaderTimeout: 5 * time.Second}
	a.wg.Go(func() { _ = srv.Serve(ln) })
	a.closers = append(a.closers, func() error {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	return a, nil
}

// order is one order of the demo and what must become of it.
type order struct {
	ev   event.OrderShipped
	want string // traced, a dead-letter reason, or "rolled_back"
}

func orders(run string) []order {
	goods := []event.Goods{{Name: "云南普洱茶 357克 七子饼", ImageURL: "https://img.example.cn/puer.jpg", Description: "2016年春茶"}}
	mk := func(i int, want string, edit func(*event.OrderShipped)) order {
		ev := event.OrderShipped{
			Version: event.SchemaVersion, OrderID: fmt.Sprintf("MONO-%s-%02d", run, i), AppID: AppID,
			OpenID: fmt.Sprintf("oMono4yB7DIj3CxOb6ii-buyer%02d", i), WaybillID: fmt.Sprintf("SF%s%04d", run, i),
			DeliveryID: "SF", ReceiverPhone: fmt.Sprintf("1390013%04d", i), Goods: goods,
		}
		if edit != nil {
			edit(&ev)
		}
		return order{ev: ev, want: want}
	}
	out := []order{
		mk(1, "traced", nil), mk(2, "traced", nil), mk(3, "traced", nil), mk(4, "traced", nil),
		mk(5, string(deadletter.ReasonInvalidEvent), func(e *event.OrderShipped) {
			e.Goods = []event.Goods{{Name: "手工 丝绸 围巾", ImageURL: "https://img.example.cn/silk.jpg", Description: strings.Repeat("杭州真丝", 11)}}
		}),
		mk(6, string(deadletter.ReasonPermanent), func(e *event.OrderShipped) { e.OpenID = RejectedOpenID }),
	}
	// Order 1 shipped again with another waybill: the shipment insert
	// fails, and its event rolls back with it.
	again := out[0]
	again.ev.WaybillID += "X"
	again.want = "rolled_back"
	return append(out, again)
}

func demo(ctx context.Context, a *app, sandbox *wechattest.Server) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	base := "http://" + a.addr
	list := orders(time.Now().UTC().Format("060102150405"))
	for _, o := range list {
		body, _ := json.Marshal(o.ev)
		resp, err := http.Post(base+"/orders/"+o.ev.OrderID+"/ship", "application/json", bytes.NewReader(body))
		if err != nil {
			return err
		}
		resp.Body.Close()
		fmt.Printf("monolith: POST /orders/%s/ship (waybill %s): %s\n", o.ev.OrderID, o.ev.WaybillID, resp.Status)
		if want := map[bool]int{true: http.StatusConflict, false: http.StatusAccepted}[o.want == "rolled_back"]; resp.StatusCode != want {
			return fmt.Errorf("ship %s: %s, want %d", o.ev.OrderID, resp.Status, want)
		}
	}

	var traced, dead, lost int
	var bad []string
	for _, o := range list {
		if o.want == "rolled_back" {
			continue
		}
		got, err := waitSettled(ctx, base, o.ev.OrderID)
		if err != nil {
			lost++
			bad = append(bad, fmt.Sprintf("%s: %v", o.ev.OrderID, err))
			continue
		}
		result := got.Status
		switch got.Status {
		case "traced":
			traced++
			fmt.Printf("monolith: %s traced, waybill_token %s\n", got.OrderID, got.WaybillToken)
		case "dead":
			dead++
			result = got.DeadReason
			fmt.Printf("monolith: %s dead-lettered: %s (%s)\n", got.OrderID, got.DeadReason, got.DeadDetail)
		}
		if result != o.want {
			bad = append(bad, fmt.Sprintf("%s: %s, want %s", o.ev.OrderID, result, o.want))
		}
	}
	rolledBack := list[len(list)-1].ev
	if sandbox != nil {
		for _, c := range sandbox.CallsTo("trace_waybill") {
			if c.Field("waybill_id") == rolledBack.WaybillID {
				bad = append(bad, "the rolled-back shipment reached WeChat")
			}
		}
		fmt.Printf("monolith: WeChat sandbox received %d trace_waybill calls\n", len(sandbox.CallsTo("trace_waybill")))
	}
	fmt.Printf("monolith: %d orders shipped, 1 rolled back, %d traced, %d dead-lettered, %d lost\n", len(list)-1, traced, dead, lost)
	if len(bad) > 0 {
		return fmt.Errorf("unexpected outcomes: %v", bad)
	}
	return nil
}

// waitSettled polls GET /orders/{id} until the order is traced or dead.
func waitSettled(ctx context.Context, base, id string) (*Order, error) {
	for {
		o, err := get(ctx, base, id)
		if err == nil && o.Status != "shipped" {
			return o, nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("still %s", o.Status)
			}
			return nil, fmt.Errorf("%w: %w", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func get(ctx context.Context, base, id string) (*Order, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/orders/"+id, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", id, resp.Status)
	}
	var o Order
	return &o, json.NewDecoder(resp.Body).Decode(&o)
}
