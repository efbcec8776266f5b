package postgres_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill"
	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/testevent"
	"github.com/waybillkit/waybill/internal/testpostgres"
	"github.com/waybillkit/waybill/postgres"
	"github.com/waybillkit/waybill/ratelimit"
	ratelimitpg "github.com/waybillkit/waybill/ratelimit/postgres"
	tracepg "github.com/waybillkit/waybill/tracestore/postgres"
	"github.com/waybillkit/waybill/wechat"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

// The merchants of these tests.
const (
	shopA = "wx1a2b3c4d5e6f7a80" // on a small local daily quota
	shopB = "wx9f8e7d6c5b4a3f21"
)

// sandbox is a WeChat sandbox that knows both shops, and a client of it.
func sandbox(t testing.TB) (*wechattest.Server, *wechat.Client) {
	t.Helper()
	srv := wechattest.NewServer(wechattest.Config{})
	t.Cleanup(srv.Close)
	secrets := wechat.StaticSecrets{shopA: "secret-a", shopB: "secret-b"}
	for appid, secret := range secrets {
		srv.AddApp(appid, secret)
	}
	tokens, err := wechat.NewStableTokenSource(wechat.StableTokenConfig{BaseURL: srv.URL, Secrets: secrets})
	require.NoError(t, err)
	client, err := wechat.NewClient(wechat.Config{BaseURL: srv.URL, Tokens: tokens})
	require.NoError(t, err)
	return srv, client
}

// process is one process of a monolith: its own pool on the shared schema,
// the Handler with its state in PostgreSQL, on a router.
type process struct {
	db      *sql.DB
	handler *waybill.Handler
}

type processConfig struct {
	pubsub  postgres.Config
	limits  map[string]ratelimit.Limits
	resetAt time.Duration // of the limiter's daily windows, in Asia/Shanghai
	handler func(*waybill.Config)
}

func startProcess(t testing.TB, url string, client waybill.Tracer, pc processConfig) *process {
	t.Helper()
	ctx := context.Background()
	db := testpostgres.Open(t, url)
	traces, err := tracepg.New(db, tracepg.Config{})
	require.NoError(t, err)
	quotas, err := ratelimitpg.New(db, ratelimitpg.Config{})
	require.NoError(t, err)
	limiter, err := ratelimit.New(ratelimit.Config{Store: quotas, Apps: pc.limits, ResetAt: pc.resetAt})
	require.NoError(t, err)
	pub, err := postgres.NewPublisher(db, pc.pubsub)
	require.NoError(t, err)
	cfg := waybill.Config{
		Client: client, Publisher: pub, TraceStore: traces, Limiter: limiter,
		Parking: &waybill.ParkingConfig{Delay: waybill.NativeDelay},
	}
	if pc.handler != nil {
		pc.handler(&cfg)
	}
	h, err := waybill.NewHandler(cfg)
	require.NoError(t, err)
	sub, err := postgres.NewSubscriber(db, pc.pubsub)
	require.NoError(t, err)
	router, err := message.NewRouter(message.RouterConfig{}, nil)
	require.NoError(t, err)
	h.AddTo(router, sub)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = router.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = sub.Close()
	})
	<-router.Running()
	return &process{db: db, handler: h}
}

// outcomes reads the output topics' tables: waybill.traced by order id, and
// dead letters by order id with their reason. Nothing consumes them, so
// every copy published is counted.
type outcomes struct {
	traced map[string][]event.WaybillTraced
	dead   map[string][]deadletter.Reason
}

func readOutcomes(t *testing.T, db *sql.DB) outcomes {
	t.Helper()
	o := outcomes{traced: map[string][]event.WaybillTraced{}, dead: map[string][]deadletter.Reason{}}
	for _, topic := range []string{event.WaybillTracedTopic, deadletter.DefaultTopic} {
		rows, err := db.Query(`SELECT uuid, payload, metadata FROM ` + postgres.Table(topic) + ` ORDER BY "offset"`)
		if err != nil {
			continue // no such table yet: nothing published there
		}
		for rows.Next() {
			var uuid string
			var payload, md []byte
			require.NoError(t, rows.Scan(&uuid, &payload, &md))
			msg := message.NewMessage(uuid, payload)
			require.NoError(t, json.Unmarshal(md, &msg.Metadata))
			if topic == event.WaybillTracedTopic {
				var tr event.WaybillTraced
				require.NoError(t, json.Unmarshal(payload, &tr))
				o.traced[tr.OrderID] = append(o.traced[tr.OrderID], tr)
				continue
			}
			l, err := deadletter.Parse(msg)
			require.NoError(t, err)
			key := msg.Metadata.Get(deadletter.HeaderDeadKey)
			o.dead[key] = append(o.dead[key], l.Reason)
		}
		require.NoError(t, rows.Err())
		rows.Close()
	}
	return o
}

func waitOutcomes(t *testing.T, db *sql.DB, within time.Duration, what string, cond func(outcomes) bool) outcomes {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		o := readOutcomes(t, db)
		if cond(o) {
			return o
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s; traced %d orders, dead %d", what, within, len(o.traced), len(o.dead))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func payload(t testing.TB, ev event.OrderShipped) []byte {
	t.Helper()
	b, err := json.Marshal(ev)
	require.NoError(t, err)
	return b
}

func shipment(order, appid, waybill string) event.OrderShipped {
	ev := testevent.Valid(order, waybill)
	ev.AppID = appid
	ev.OpenID = "oBuyer-" + order
	return *ev
}

// TestHandlerOutbox runs the Handler in the default configuration of this
// package and of the Handler: an event published in a rolled-back
// transaction is never traced, one committed is traced once.
func TestHandlerOutbox(t *testing.T) {
	ctx := context.Background()
	_, url := testpostgres.Schema(t)
	db := testpostgres.Open(t, url)
	require.NoError(t, postgres.InitializeTopics(ctx, db, event.OrderShippedTopic))
	_, err := db.Exec(`CREATE TABLE shipments (order_id text PRIMARY KEY, waybill_id text NOT NULL)`)
	require.NoError(t, err)
	srv, client := sandbox(t)
	startProcess(t, url, client, processConfig{})

	ship := func(ev event.OrderShipped, commit bool) {
		tx, err := db.BeginTx(ctx, nil)
		require.NoError(t, err)
		_, err = tx.Exec(`INSERT INTO shipments VALUES ($1, $2)`, ev.OrderID, ev.WaybillID)
		require.NoError(t, err)
		require.NoError(t, postgres.PublishInTx(ctx, tx, event.OrderShippedTopic, message.NewMessage(ev.OrderID+"-msg", payload(t, ev))))
		if commit {
			require.NoError(t, tx.Commit())
		} else {
			require.NoError(t, tx.Rollback())
		}
	}
	ship(shipment("ORD-ROLLED", shopB, "SF0000000001"), false)
	ship(shipment("ORD-COMMIT", shopB, "SF0000000002"), true)

	o := waitOutcomes(t, db, 30*time.Second, "the committed order traced", func(o outcomes) bool { return len(o.traced["ORD-COMMIT"]) > 0 })
	require.Len(t, o.traced["ORD-COMMIT"], 1, "traced once")
	assert.NotEmpty(t, o.traced["ORD-COMMIT"][0].WaybillToken)

	// Give the rolled-back one every chance to show up: several polls.
	time.Sleep(3 * time.Second)
	o = readOutcomes(t, db)
	assert.Empty(t, o.traced["ORD-ROLLED"], "a rolled-back event is never traced")
	assert.Empty(t, o.dead, "nor dead-lettered")
	calls := srv.CallsTo("trace_waybill")
	require.Len(t, calls, 1, "one WeChat call in all")
	assert.Equal(t, "SF0000000002", calls[0].Field("waybill_id"))
	assert.Equal(t, 0, rows(t, db, event.OrderShippedTopic), "the input row is gone once handled")
}

// TestHandlerParksNativelyAcrossTwoProcesses runs two processes on one
// database, each with its own pool, subscriber, Handler and limiter, sharing
// the quota and trace stores. Shop A has a local daily quota of 3 calls
// whose window resets a few seconds into the test; shop B has none, and one
// of its waybills is not known to WeChat at first (931023).
//
// It shows that:
//   - the two processes together never make more than 3 calls for shop A in
//     a window: the others are parked, natively, on the input table itself
//     (Watermill's delay metadata, no delay topic), until the next window;
//   - the parked events do not hold back shop B's, traced meanwhile;
//   - the 931023 event is parked for NotYetDelay and traced when due, not
//     before; and when the window turns, shop A's parked events come back
//     and are traced, 3 more calls;
//   - every order is traced exactly once and WeChat called once per waybill.
func TestHandlerParksNativelyAcrossTwoProcesses(t *testing.T) {
	const notYet = 3 * time.Second
	_, url := testpostgres.Schema(t)
	db := testpostgres.Open(t, url)
	srv, client := sandbox(t)
	srv.Inject(wechattest.Fault{Endpoint: "trace_waybill", Errcode: 931023, Times: 1,
		Match: func(c *wechattest.Call) bool { return c.Field("waybill_id") == "YT9310230001" }})

	// The limiter's day begins at a wall-clock time of day: make it begin
	// a few seconds from now, so the window turns during the test.
	shanghai := time.FixedZone("CST", 8*3600)
	turn := time.Now().Add(8 * time.Second).Truncate(time.Second)
	local := turn.In(shanghai)
	resetAt := time.Duration(local.Hour())*time.Hour + time.Duration(local.Minute())*time.Minute + time.Duration(local.Second())*time.Second
	pc := processConfig{
		pubsub:  postgres.Config{PollInterval: 100 * time.Millisecond, Concurrency: 2},
		limits:  map[string]ratelimit.Limits{shopA: {AppDaily: 3}},
		resetAt: resetAt,
		handler: func(c *waybill.Config) {
			c.Retry.NotYetDelay = notYet
			c.Retry.QuotaSpread = time.Second // the default 5 min would outlast the test
		},
	}
	startProcess(t, url, client, pc)
	startProcess(t, url, client, pc)

	pub, err := postgres.NewPublisher(db, postgres.Config{})
	require.NoError(t, err)
	var a, b []string
	for i := range 6 {
		id := fmt.Sprintf("A-%d", i)
		a = append(a, id)
		require.NoError(t, pub.Publish(event.OrderShippedTopic, message.NewMessage(id, payload(t, shipment(id, shopA, fmt.Sprintf("SF00000001%02d", i))))))
	}
	start := time.Now()
	require.NoError(t, pub.Publish(event.OrderShippedTopic, message.NewMessage("B-notyet", payload(t, shipment("B-notyet", shopB, "YT9310230001")))))
	for i := range 4 {
		id := fmt.Sprintf("B-%d", i)
		b = append(b, id)
		require.NoError(t, pub.Publish(event.OrderShippedTopic, message.NewMessage(id, payload(t, shipment(id, shopB, fmt.Sprintf("ZT00000002%02d", i))))))
	}

	callsFor := func(appid string) int {
		n := 0
		for _, c := range srv.CallsTo("trace_waybill") {
			if c.AppID == appid {
				n++
			}
		}
		return n
	}
	// Before the window turns: shop B done, shop A at its quota, the rest
	// of shop A and the 931023 event parked on the input table.
	tracedA := func(o outcomes) int {
		n := 0
		for _, id := range a {
			n += len(o.traced[id])
		}
		return n
	}
	waitOutcomes(t, db, 10*time.Second, "shop B traced, and 3 of shop A", func(o outcomes) bool {
		for _, id := range b {
			if len(o.traced[id]) == 0 {
				return false
			}
		}
		return tracedA(o) >= 3
	})
	time.Sleep(500 * time.Millisecond) // a call over the quota would show now
	o := readOutcomes(t, db)
	require.True(t, time.Now().Before(turn), "the test machine is too slow for this window: %s to get here", time.Since(start))
	assert.Equal(t, 3, tracedA(o), "3 of shop A's orders in the first window")
	assert.Equal(t, 3, callsFor(shopA), "no more calls than the quota, across both processes")
	var parked int
	require.NoError(t, db.QueryRow(`SELECT count(*) FROM `+postgres.Table(event.OrderShippedTopic)+
		` WHERE (metadata->>'`+delay.DelayedUntilKey+`')::timestamptz > now()`).Scan(&parked))
	assert.GreaterOrEqual(t, parked, 3, "parked on the input table with a due time")
	var tables int
	require.NoError(t, db.QueryRow(`SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name LIKE '%delay%'`).Scan(&tables))
	assert.Zero(t, tables, "no delay topics")

	// After it: everything traced, once.
	o = waitOutcomes(t, db, 30*time.Second, "every order traced", func(o outcomes) bool {
		for _, id := range append(append([]string{"B-notyet"}, a...), b...) {
			if len(o.traced[id]) == 0 {
				return false
			}
		}
		return true
	})
	for id, copies := range o.traced {
		assert.Len(t, copies, 1, "order %s traced %d times", id, len(copies))
	}
	assert.Empty(t, o.dead, "nothing dead-lettered")
	assert.Equal(t, 6, callsFor(shopA), "3 calls per window for shop A")
	var notYetCalls []time.Time
	perWaybill := map[string]int{}
	for _, c := range srv.CallsTo("trace_waybill") {
		perWaybill[c.Field("waybill_id")]++
		if c.Field("waybill_id") == "YT9310230001" {
			notYetCalls = append(notYetCalls, c.At)
		}
	}
	for w, n := range perWaybill {
		if w == "YT9310230001" {
			assert.Equal(t, 2, n, "the 931023 waybill: one refused call, one after NotYetDelay")
		} else {
			assert.Equal(t, 1, n, "waybill %s called %d times", w, n)
		}
	}
	require.Len(t, notYetCalls, 2)
	assert.GreaterOrEqual(t, notYetCalls[1].Sub(notYetCalls[0]), notYet, "not called again before it was due")
	assert.Equal(t, 0, rows(t, db, event.OrderShippedTopic), "the input table is empty")
}

// TestTwoProcessesNeverExceedAQuota races two processes over 20 events of
// one shop with a daily quota of 7 that will not reset during the test:
// exactly 7 calls reach WeChat, and the other 13 events wait parked.
func TestTwoProcessesNeverExceedAQuota(t *testing.T) {
	_, url := testpostgres.Schema(t)
	db := testpostgres.Open(t, url)
	srv, client := sandbox(t)
	srv.Inject(wechattest.Fault{Endpoint: "trace_waybill", Latency: 30 * time.Millisecond})
	pc := processConfig{
		pubsub: postgres.Config{PollInterval: 50 * time.Millisecond, Concurrency: 4},
		limits: map[string]ratelimit.Limits{shopA: {AppDaily: 7}},
	}
	startProcess(t, url, client, pc)
	startProcess(t, url, client, pc)
	pub, err := postgres.NewPublisher(db, postgres.Config{})
	require.NoError(t, err)
	for i := range 20 {
		id := fmt.Sprintf("Q-%02d", i)
		require.NoError(t, pub.Publish(event.OrderShippedTopic, message.NewMessage(id, payload(t, shipment(id, shopA, fmt.Sprintf("SF00000003%02d", i))))))
	}
	waitOutcomes(t, db, 30*time.Second, "7 traced", func(o outcomes) bool { return len(o.traced) >= 7 })
	var parked int
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		require.NoError(t, db.QueryRow(`SELECT count(*) FROM `+postgres.Table(event.OrderShippedTopic)+
			` WHERE (metadata->>'`+delay.DelayedUntilKey+`')::timestamptz > now()`).Scan(&parked))
		if parked == 13 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	assert.Equal(t, 13, parked, "the rest parked until the next window")
	time.Sleep(time.Second) // a call over the quota would show now
	assert.Len(t, srv.CallsTo("trace_waybill"), 7, "exactly the quota, across two processes")
	assert.Len(t, readOutcomes(t, db).traced, 7)
}

// TestReplayDeadLetters dead-letters two events for a configuration fault
// (48001) and one invalid event, fixes the fault, and replays the
// configuration ones: a dry run changes nothing, the replay moves exactly
// those two back to the input, where they are traced, and leaves the invalid
// one; a second replay finds nothing more to move.
func TestReplayDeadLetters(t *testing.T) {
	ctx := context.Background()
	_, url := testpostgres.Schema(t)
	db := testpostgres.Open(t, url)
	srv, client := sandbox(t)
	fix := srv.Inject(wechattest.Fault{Endpoint: "trace_waybill", Errcode: 48001})
	startProcess(t, url, client, processConfig{pubsub: postgres.Config{PollInterval: 100 * time.Millisecond}})
	pub, err := postgres.NewPublisher(db, postgres.Config{})
	require.NoError(t, err)
	for i, id := range []string{"R-1", "R-2"} {
		require.NoError(t, pub.Publish(event.OrderShippedTopic, message.NewMessage(id, payload(t, shipment(id, shopB, fmt.Sprintf("SF00000004%02d", i))))))
	}
	bad := shipment("R-bad", shopB, "SF0000000499")
	bad.Goods = nil
	require.NoError(t, pub.Publish(event.OrderShippedTopic, message.NewMessage("R-bad", payload(t, bad))))
	waitOutcomes(t, db, 30*time.Second, "three dead letters", func(o outcomes) bool { return len(o.dead) == 3 })
	fix()

	configuration := func(l *deadletter.Letter, _ *message.Message) bool { return l.Reason == deadletter.ReasonConfiguration }
	rep, err := postgres.Replay(ctx, db, postgres.ReplayConfig{Select: configuration, DryRun: true})
	require.NoError(t, err)
	assert.Equal(t, postgres.ReplayReport{Scanned: 3, Replayed: 2, Skipped: 1}, rep)
	assert.Equal(t, 3, rows(t, db, deadletter.DefaultTopic), "a dry run changes nothing")

	rep, err = postgres.Replay(ctx, db, postgres.ReplayConfig{Select: configuration})
	require.NoError(t, err)
	assert.Equal(t, postgres.ReplayReport{Scanned: 3, Replayed: 2, Skipped: 1}, rep)
	o := waitOutcomes(t, db, 30*time.Second, "the replayed events traced", func(o outcomes) bool {
		return len(o.traced["R-1"]) > 0 && len(o.traced["R-2"]) > 0
	})
	assert.Equal(t, []deadletter.Reason{deadletter.ReasonInvalidEvent}, o.dead["R-bad"], "the invalid one stays")
	assert.Len(t, o.dead, 1, "replayed dead letters leave the table")

	rep, err = postgres.Replay(ctx, db, postgres.ReplayConfig{Select: configuration})
	require.NoError(t, err)
	assert.Equal(t, postgres.ReplayReport{Scanned: 1, Skipped: 1}, rep, "nothing left to move")
}
