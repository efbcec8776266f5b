package postgres_test

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/internal/testpostgres"
	"github.com/waybillkit/waybill/postgres"
)

const topic = "order.shipped"

// fast polls often so the tests wait little; the defaults are tried below.
var fast = postgres.Config{PollInterval: 50 * time.Millisecond, NackResendSleep: 50 * time.Millisecond}

func receive(t *testing.T, ch <-chan *message.Message, within time.Duration) *message.Message {
	t.Helper()
	select {
	case m, ok := <-ch:
		require.True(t, ok, "channel closed")
		return m
	case <-time.After(within):
		t.Fatalf("no message within %s", within)
		return nil
	}
}

func none(t *testing.T, ch <-chan *message.Message, within time.Duration) {
	t.Helper()
	select {
	case m := <-ch:
		t.Fatalf("unexpected message %s %q", m.UUID, m.Payload)
	case <-time.After(within):
	}
}

// newDB is a fresh schema and a publisher on it, in the default
// configuration.
func newDB(t testing.TB) (*sql.DB, message.Publisher) {
	t.Helper()
	db := testpostgres.DB(t)
	pub, err := postgres.NewPublisher(db, postgres.Config{})
	require.NoError(t, err)
	return db, pub
}

func subscribe(t testing.TB, db *sql.DB, cfg postgres.Config) <-chan *message.Message {
	t.Helper()
	sub, err := postgres.NewSubscriber(db, cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); _ = sub.Close() })
	ch, err := sub.Subscribe(ctx, topic)
	require.NoError(t, err)
	return ch
}

func rows(t testing.TB, db *sql.DB, topic string) int {
	t.Helper()
	var n int
	require.NoError(t, db.QueryRow(`SELECT count(*) FROM `+postgres.Table(topic)).Scan(&n))
	return n
}

func TestOutboxDeliversOnlyCommitted(t *testing.T) {
	ctx := context.Background()
	db := testpostgres.DB(t)
	require.NoError(t, postgres.InitializeTopics(ctx, db, topic))
	_, err := db.Exec(`CREATE TABLE shipments (order_id text PRIMARY KEY)`)
	require.NoError(t, err)

	ship := func(order string, commit bool) {
		tx, err := db.BeginTx(ctx, nil)
		require.NoError(t, err)
		_, err = tx.Exec(`INSERT INTO shipments VALUES ($1)`, order)
		require.NoError(t, err)
		require.NoError(t, postgres.PublishInTx(ctx, tx, topic, message.NewMessage(order, []byte(`{"order_id":"`+order+`"}`))))
		if commit {
			require.NoError(t, tx.Commit())
		} else {
			require.NoError(t, tx.Rollback())
		}
	}
	ship("rolled-back", false)
	ship("committed", true)

	ch := subscribe(t, db, fast)
	m := receive(t, ch, 5*time.Second)
	assert.Equal(t, "committed", m.UUID)
	m.Ack()
	none(t, ch, 500*time.Millisecond)
	assert.Eventually(t, func() bool { return rows(t, db, topic) == 0 }, 5*time.Second, 20*time.Millisecond, "acked rows are deleted")
	var n int
	require.NoError(t, db.QueryRow(`SELECT count(*) FROM shipments`).Scan(&n))
	assert.Equal(t, 1, n, "the rolled-back write is gone with its event")
}

func TestPublishInTxNeedsTheTable(t *testing.T) {
	ctx := context.Background()
	db := testpostgres.DB(t)
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback()
	err = postgres.PublishInTx(ctx, tx, "never.initialized", message.NewMessage("1", []byte("x")))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "never.initialized")
}

func TestDelayedMessageWaitsWithoutHoldingOthers(t *testing.T) {
	db, pub := newDB(t)
	due := time.Now().Add(2 * time.Second).Truncate(time.Second).Add(time.Second)
	later := message.NewMessage("later", []byte("1"))
	delay.Message(later, delay.Until(due))
	require.NoError(t, pub.Publish(topic, later))
	require.NoError(t, pub.Publish(topic, message.NewMessage("now", []byte("2"))))

	// The default configuration: one at a time, polling every second.
	ch := subscribe(t, db, postgres.Config{})
	m := receive(t, ch, 5*time.Second)
	assert.Equal(t, "now", m.UUID, "the delayed head does not hold back the message behind it")
	m.Ack()
	m = receive(t, ch, 10*time.Second)
	assert.Equal(t, "later", m.UUID)
	assert.False(t, time.Now().Before(due), "not before its due time")
	m.Ack()
}

func TestNackAndCloseGiveTheRowBack(t *testing.T) {
	db, pub := newDB(t)
	for i := range 3 {
		require.NoError(t, pub.Publish(topic, message.NewMessage(fmt.Sprint(i), []byte("x"))))
	}
	cfg := fast
	cfg.DrainTimeout = 200 * time.Millisecond
	sub, err := postgres.NewSubscriber(db, cfg)
	require.NoError(t, err)
	ch, err := sub.Subscribe(context.Background(), topic)
	require.NoError(t, err)
	m := receive(t, ch, 5*time.Second)
	require.Equal(t, "0", m.UUID)
	m.Nack()
	m = receive(t, ch, 5*time.Second)
	assert.Equal(t, "0", m.UUID, "a nacked message comes again")
	m.Ack()
	m = receive(t, ch, 5*time.Second)
	require.Equal(t, "1", m.UUID)
	// Closed with 1 unacked past the drain: it and 2 stay (watermill-sql's
	// batches would acknowledge them with 0).
	done := make(chan error)
	go func() { done <- sub.Close() }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	assert.Equal(t, 2, rows(t, db, topic), "nothing acked by a cut-short delivery")

	ch = subscribe(t, db, fast)
	for i := 1; i < 3; i++ {
		m := receive(t, ch, 5*time.Second)
		assert.Equal(t, fmt.Sprint(i), m.UUID)
		m.Ack()
	}
}

func TestAckDeadlineGivesTheRowBack(t *testing.T) {
	db, pub := newDB(t)
	require.NoError(t, pub.Publish(topic, message.NewMessage("slow", []byte("x"))))
	cfg := fast
	cfg.AckDeadline = 300 * time.Millisecond
	ch := subscribe(t, db, cfg)
	m := receive(t, ch, 5*time.Second)
	select {
	case <-m.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the context outlived AckDeadline")
	}
	again := receive(t, ch, 5*time.Second)
	assert.Equal(t, "slow", again.UUID)
	again.Ack()
}

// TestSubscribersShareATopic runs two processes' worth of subscribers (two
// pools, Concurrency 4 each) on one topic: each message is handed to one of
// them, all are handled, and up to 8 are in flight at once.
func TestSubscribersShareATopic(t *testing.T) {
	const n = 80
	_, url := testpostgres.Schema(t)
	dbA, dbB := testpostgres.Open(t, url), testpostgres.Open(t, url)
	pub, err := postgres.NewPublisher(dbA, postgres.Config{})
	require.NoError(t, err)
	for i := range n {
		require.NoError(t, pub.Publish(topic, message.NewMessage(fmt.Sprint(i), []byte("x"))))
	}
	cfg := fast
	cfg.Concurrency = 4
	var (
		mu          sync.Mutex
		seen        = map[string]int{}
		inFlight    int
		maxInFlight int
		wg          sync.WaitGroup
	)
	wg.Add(n)
	for _, db := range []*sql.DB{dbA, dbB} {
		ch := subscribe(t, db, cfg)
		go func() {
			for m := range ch {
				go func() {
					mu.Lock()
					seen[m.UUID]++
					inFlight++
					maxInFlight = max(maxInFlight, inFlight)
					mu.Unlock()
					time.Sleep(20 * time.Millisecond)
					mu.Lock()
					inFlight--
					mu.Unlock()
					m.Ack()
					wg.Done()
				}()
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("handled %d of %d", len(seen), n)
	}
	time.Sleep(300 * time.Millisecond) // a duplicate would show now
	mu.Lock()
	defer mu.Unlock()
	assert.Len(t, seen, n)
	for id, k := range seen {
		assert.Equal(t, 1, k, "message %s handed out %d times", id, k)
	}
	assert.Greater(t, maxInFlight, 4, "both processes worked at once")
	assert.LessOrEqual(t, maxInFlight, 8)
}

func TestConfigValidate(t *testing.T) {
	assert.Error(t, postgres.Config{Concurrency: -1}.Validate())
	assert.Error(t, postgres.Config{AckDeadline: -time.Second}.Validate())
	assert.NoError(t, postgres.Config{}.Validate())
}

// TestPoisonRowsNeverStallATopic publishes messages whose headers would
// break a poll that read them in SQL: a NUL (JSON "\u0000" cannot be
// text), and a delay that is not a time. Both are delivered, and so is the
// message behind them.
func TestPoisonRowsNeverStallATopic(t *testing.T) {
	db, pub := newDB(t)
	nul := message.NewMessage("nul", []byte("\x00\xff not even UTF-8"))
	nul.Metadata.Set("errmsg", "a\x00b")
	bad := message.NewMessage("bad-delay", []byte("x"))
	bad.Metadata.Set(delay.DelayedUntilKey, "tomorrow-ish")
	require.NoError(t, pub.Publish(topic, nul, bad, message.NewMessage("after", []byte("y"))))
	ch := subscribe(t, db, fast)
	for _, want := range []string{"nul", "bad-delay", "after"} {
		m := receive(t, ch, 5*time.Second)
		require.Equal(t, want, m.UUID)
		if want == "nul" {
			assert.Equal(t, "a\x00b", m.Metadata.Get("errmsg"), "headers and payload come back byte for byte")
			assert.Equal(t, []byte("\x00\xff not even UTF-8"), []byte(m.Payload))
		}
		m.Ack()
	}
}

func TestTopicNamesCannotEscapeTheirQuotes(t *testing.T) {
	db := testpostgres.DB(t)
	for _, bad := range []string{`x"; DROP TABLE y; --`, "a$waybill$b", "a'b"} {
		assert.Error(t, postgres.InitializeTopics(context.Background(), db, bad), bad)
		_, err := postgres.Replay(context.Background(), db, postgres.ReplayConfig{Topic: bad})
		assert.Error(t, err, bad)
	}
}

// TestCloseDrainsInFlight closes a subscriber (in the default configuration)
// while a message is in flight: Close waits, the message's context stays
// alive, no other message is handed out, and its ack during the drain is
// committed. The message behind it stays for the next subscriber.
func TestCloseDrainsInFlight(t *testing.T) {
	db, pub := newDB(t)
	require.NoError(t, pub.Publish(topic, message.NewMessage("busy", []byte("x")), message.NewMessage("next", []byte("y"))))
	sub, err := postgres.NewSubscriber(db, postgres.Config{})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := sub.Subscribe(ctx, topic)
	require.NoError(t, err)
	m := receive(t, ch, 5*time.Second)
	require.Equal(t, "busy", m.UUID)
	msgCtx := m.Context()

	cancel() // as a router stopping does, before it closes its subscribers
	closed := make(chan error)
	go func() { closed <- sub.Close() }()
	select {
	case <-closed:
		t.Fatal("Close returned with a message in flight")
	case <-msgCtx.Done():
		t.Fatal("the message in flight lost its context at the start of the drain")
	case <-time.After(2 * time.Second):
	}
	m.Ack()
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return once the message was acked")
	}
	for m := range ch {
		t.Errorf("handed out during the drain: %s", m.UUID)
	}
	assert.Equal(t, 1, rows(t, db, topic), "the ack during the drain was committed")
	next := receive(t, subscribe(t, db, fast), 5*time.Second)
	assert.Equal(t, "next", next.UUID)
	next.Ack()
}

// TestCloseWithoutReader: a subscription nobody reads closes too.
func TestCloseWithoutReader(t *testing.T) {
	db, pub := newDB(t)
	require.NoError(t, pub.Publish(topic, message.NewMessage("unread", []byte("x"))))
	sub, err := postgres.NewSubscriber(db, fast)
	require.NoError(t, err)
	_, err = sub.Subscribe(context.Background(), topic)
	require.NoError(t, err)
	time.Sleep(300 * time.Millisecond) // the row is taken, waiting for a reader
	closed := make(chan error)
	go func() { closed <- sub.Close() }()
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung on a subscription nobody reads")
	}
	assert.Equal(t, 1, rows(t, db, topic))
}

// TestOutcomeCommitsWithTheAck: a handler publishes its outcome with the
// input's context, then its delivery dies (its backend is terminated, as
// when the process is killed): the outcome goes with it. The second delivery
// publishes and acks: one outcome in all. A publish without a delivery's
// context is immediate.
func TestOutcomeCommitsWithTheAck(t *testing.T) {
	db, pub := newDB(t)
	require.NoError(t, postgres.InitializeTopics(context.Background(), db, "outcome"))
	require.NoError(t, pub.Publish(topic, message.NewMessage("in", []byte("x"))))
	ch := subscribe(t, db, fast)

	first := receive(t, ch, 5*time.Second)
	out := message.NewMessage("out-1", []byte("y"))
	out.SetContext(first.Context())
	require.NoError(t, pub.Publish("outcome", out))
	assert.Equal(t, 0, rows(t, db, "outcome"), "not visible before the delivery commits")
	var killed int
	require.NoError(t, db.QueryRow(`SELECT count(pg_terminate_backend(pid)) FROM pg_locks
		WHERE relation = to_regclass($1)::oid AND pid <> pg_backend_pid()`, postgres.Table(topic)).Scan(&killed))
	require.Equal(t, 1, killed, "the delivery's backend")
	first.Ack() // too late: its transaction is gone

	second := receive(t, ch, 10*time.Second)
	require.Equal(t, "in", second.UUID, "redelivered")
	out = message.NewMessage("out-2", []byte("y"))
	out.SetContext(second.Context())
	require.NoError(t, pub.Publish("outcome", out))
	second.Ack()
	assert.Eventually(t, func() bool { return rows(t, db, topic) == 0 }, 5*time.Second, 20*time.Millisecond)
	assert.Equal(t, []string{"out-2"}, uuids(t, db, "outcome"), "the dead delivery's outcome is gone with it")

	require.NoError(t, pub.Publish("outcome", message.NewMessage("direct", []byte("z"))))
	assert.Equal(t, 2, rows(t, db, "outcome"), "without a delivery, at once")
}

// TestNackUndoesWhatTheDeliveryPublished: an outcome published before a
// nack is undone; the retry's, acked, is the one that stays.
func TestNackUndoesWhatTheDeliveryPublished(t *testing.T) {
	db, pub := newDB(t)
	require.NoError(t, postgres.InitializeTopics(context.Background(), db, "outcome"))
	require.NoError(t, pub.Publish(topic, message.NewMessage("in", []byte("x"))))
	ch := subscribe(t, db, fast)
	for attempt, verdict := range []func(*message.Message) bool{(*message.Message).Nack, (*message.Message).Ack} {
		m := receive(t, ch, 5*time.Second)
		out := message.NewMessage(fmt.Sprintf("out-%d", attempt), []byte("y"))
		out.SetContext(m.Context())
		require.NoError(t, pub.Publish("outcome", out))
		verdict(m)
	}
	assert.Eventually(t, func() bool { return rows(t, db, topic) == 0 }, 5*time.Second, 20*time.Millisecond)
	assert.Equal(t, []string{"out-1"}, uuids(t, db, "outcome"))
}

// TestFailedInsertDoesNotPoisonTheDelivery: an insert that fails aborts the
// delivery's transaction; the nack rolls it back to the delivery's
// savepoint, and the next delivery publishes at once (not after
// AckDeadline).
func TestFailedInsertDoesNotPoisonTheDelivery(t *testing.T) {
	ctx := context.Background()
	db, pub := newDB(t)
	require.NoError(t, postgres.InitializeTopics(ctx, db, "outcome"))
	for _, q := range []string{
		`CREATE SEQUENCE fail_once`,
		`CREATE FUNCTION fail_once() RETURNS trigger AS $f$ BEGIN
			IF nextval('fail_once') = 1 THEN RAISE EXCEPTION 'the first insert fails'; END IF;
			RETURN NEW; END $f$ LANGUAGE plpgsql`,
		`CREATE TRIGGER fail_once BEFORE INSERT ON ` + postgres.Table("outcome") + ` FOR EACH ROW EXECUTE FUNCTION fail_once()`,
	} {
		_, err := db.Exec(q)
		require.NoError(t, err, q)
	}
	require.NoError(t, pub.Publish(topic, message.NewMessage("in", []byte("x"))))
	ch := subscribe(t, db, fast)
	m := receive(t, ch, 5*time.Second)
	out := message.NewMessage("out", []byte("y"))
	out.SetContext(m.Context())
	require.Error(t, pub.Publish("outcome", out), "the trigger's first insert")
	m.Nack()
	start := time.Now()
	m = receive(t, ch, 5*time.Second)
	out = message.NewMessage("out", []byte("y"))
	out.SetContext(m.Context())
	require.NoError(t, pub.Publish("outcome", out), "the transaction is usable again")
	m.Ack()
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.Eventually(t, func() bool { return rows(t, db, topic) == 0 && rows(t, db, "outcome") == 1 }, 5*time.Second, 20*time.Millisecond)
}

// TestDrainHoldsNoOtherRows: with Concurrency 3 and one message in flight,
// Close hands out nothing more and frees the rows its other slots had
// taken, for other processes, while the drain waits for the first.
func TestDrainHoldsNoOtherRows(t *testing.T) {
	db, pub := newDB(t)
	for i := range 4 {
		require.NoError(t, pub.Publish(topic, message.NewMessage(fmt.Sprint(i), []byte("x"))))
	}
	cfg := fast
	cfg.Concurrency = 3
	sub, err := postgres.NewSubscriber(db, cfg)
	require.NoError(t, err)
	ch, err := sub.Subscribe(context.Background(), topic)
	require.NoError(t, err)
	busy := receive(t, ch, 5*time.Second)
	closed := make(chan error)
	go func() { closed <- sub.Close() }()
	free := func() int {
		tx, err := db.Begin()
		require.NoError(t, err)
		defer tx.Rollback()
		var n int
		require.NoError(t, tx.QueryRow(`SELECT count(*) FROM (SELECT 1 FROM `+postgres.Table(topic)+` FOR UPDATE SKIP LOCKED) x`).Scan(&n))
		return n
	}
	assert.Eventually(t, func() bool { return free() == 3 }, 5*time.Second, 50*time.Millisecond, "all but the busy row free during the drain")
	busy.Ack()
	require.NoError(t, <-closed)
	assert.Equal(t, 3, rows(t, db, topic))
}

// TestCloseIsBoundedWhenTheDatabaseIsNot: a table locked by someone else
// blocks the subscriber's queries; Close still returns within DrainTimeout
// and the grace for database calls.
func TestCloseIsBoundedWhenTheDatabaseIsNot(t *testing.T) {
	db := testpostgres.DB(t)
	require.NoError(t, postgres.InitializeTopics(context.Background(), db, topic))
	cfg := fast
	cfg.DrainTimeout = 500 * time.Millisecond
	sub, err := postgres.NewSubscriber(db, cfg)
	require.NoError(t, err)
	_, err = sub.Subscribe(context.Background(), topic)
	require.NoError(t, err)
	lock, err := db.Begin()
	require.NoError(t, err)
	defer lock.Rollback()
	_, err = lock.Exec(`LOCK TABLE ` + postgres.Table(topic) + ` IN ACCESS EXCLUSIVE MODE`)
	require.NoError(t, err)
	time.Sleep(200 * time.Millisecond) // the poll now waits on the lock
	closed := make(chan error)
	go func() { closed <- sub.Close() }()
	select {
	case <-closed:
	case <-time.After(15 * time.Second):
		t.Fatal("Close waited for the lock")
	}
}

// TestSubscribeRacingClose: under -race, and no subscription outlives Close.
func TestSubscribeRacingClose(t *testing.T) {
	db := testpostgres.DB(t)
	require.NoError(t, postgres.InitializeTopics(context.Background(), db, topic))
	for range 5 {
		sub, err := postgres.NewSubscriber(db, fast)
		require.NoError(t, err)
		var chans []<-chan *message.Message
		var mu sync.Mutex
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				if ch, err := sub.Subscribe(context.Background(), topic); err == nil {
					mu.Lock()
					chans = append(chans, ch)
					mu.Unlock()
				}
			})
		}
		require.NoError(t, sub.Close())
		wg.Wait()
		mu.Lock()
		for _, ch := range chans {
			select {
			case _, ok := <-ch:
				assert.False(t, ok, "a message after Close")
			case <-time.After(10 * time.Second):
				t.Fatal("a subscription outlived Close")
			}
		}
		mu.Unlock()
	}
}

// uuids lists the message UUIDs in topic's table, oldest first.
func uuids(t testing.TB, db *sql.DB, topic string) []string {
	t.Helper()
	r, err := db.Query(`SELECT uuid FROM ` + postgres.Table(topic) + ` ORDER BY "offset"`)
	require.NoError(t, err)
	defer r.Close()
	var ids []string
	for r.Next() {
		var id string
		require.NoError(t, r.Scan(&id))
		ids = append(ids, id)
	}
	require.NoError(t, r.Err())
	return ids
}

// TestLongRedeliveryNeverCommitsUnacked: a handler that publishes and nacks
// again and again, for longer than watermill-sql's own deadline for a row
// (2 × AckDeadline + DrainTimeout + 10 s here, 10.7 s; on it watermill-sql
// would commit what is pending),
// leaves no outcome behind; its ack, at last, leaves one.
func TestLongRedeliveryNeverCommitsUnacked(t *testing.T) {
	db, pub := newDB(t)
	require.NoError(t, postgres.InitializeTopics(context.Background(), db, "outcome"))
	require.NoError(t, pub.Publish(topic, message.NewMessage("in", []byte("x"))))
	cfg := postgres.Config{PollInterval: 10 * time.Millisecond, AckDeadline: 300 * time.Millisecond, DrainTimeout: 100 * time.Millisecond, NackResendSleep: time.Millisecond}
	ch := subscribe(t, db, cfg)
	until := time.Now().Add(13 * time.Second) // past the row's deadline
	n := 0
	for ; time.Now().Before(until); n++ {
		m := receive(t, ch, 10*time.Second)
		out := message.NewMessage(fmt.Sprintf("out-%d", n), []byte("y"))
		out.SetContext(m.Context())
		_ = pub.Publish("outcome", out) // may fail once its delivery is given up
		if n%4 == 0 {
			m.Nack()
		} else {
			<-m.Context().Done() // past AckDeadline: given up for us
		}
		require.Empty(t, uuids(t, db, "outcome"), "delivery %d: nothing unacked committed", n)
	}
	m := receive(t, ch, 10*time.Second)
	out := message.NewMessage("final", []byte("y"))
	out.SetContext(m.Context())
	require.NoError(t, pub.Publish("outcome", out))
	m.Ack()
	assert.Eventually(t, func() bool { return rows(t, db, topic) == 0 }, 5*time.Second, 20*time.Millisecond)
	assert.Equal(t, []string{"final"}, uuids(t, db, "outcome"), "after %d deliveries", n)
}

// TestCloseIsNotHeldByTheNackSleep: a nacked message waits NackResendSleep
// before it comes again; Close does not wait that out.
func TestCloseIsNotHeldByTheNackSleep(t *testing.T) {
	db, pub := newDB(t)
	require.NoError(t, pub.Publish(topic, message.NewMessage("in", []byte("x"))))
	sub, err := postgres.NewSubscriber(db, postgres.Config{PollInterval: 10 * time.Millisecond, NackResendSleep: time.Minute})
	require.NoError(t, err)
	ch, err := sub.Subscribe(context.Background(), topic)
	require.NoError(t, err)
	receive(t, ch, 5*time.Second).Nack()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	require.NoError(t, sub.Close())
	assert.Less(t, time.Since(start), 10*time.Second)
	assert.Equal(t, 1, rows(t, db, topic))
}

// TestNothingHandedOutAfterTheEnd: a subscription whose context has ended
// hands out nothing, however ready its rows.
func TestNothingHandedOutAfterTheEnd(t *testing.T) {
	db, pub := newDB(t)
	require.NoError(t, pub.Publish(topic, message.NewMessage("in", []byte("x"))))
	cfg := fast
	cfg.Concurrency = 4
	for range 10 {
		sub, err := postgres.NewSubscriber(db, cfg)
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		ch, err := sub.Subscribe(ctx, topic)
		require.NoError(t, err)
		for m := range ch {
			t.Errorf("handed out after the end: %s", m.UUID)
			m.Ack()
		}
		require.NoError(t, sub.Close())
	}
	assert.Equal(t, 1, rows(t, db, topic))
}

// TestBrokenTransactionIsReplaced: the delivery's connection dies (its
// backend terminated); the nacked message comes again soon, on a new
// transaction, rather than after watermill-sql's deadline for the row.
func TestBrokenTransactionIsReplaced(t *testing.T) {
	db, pub := newDB(t)
	require.NoError(t, pub.Publish(topic, message.NewMessage("in", []byte("x"))))
	ch := subscribe(t, db, fast)
	m := receive(t, ch, 5*time.Second)
	var killed int
	require.NoError(t, db.QueryRow(`SELECT count(pg_terminate_backend(pid)) FROM pg_locks
		WHERE relation = to_regclass($1)::oid AND pid <> pg_backend_pid()`, postgres.Table(topic)).Scan(&killed))
	require.Equal(t, 1, killed)
	m.Nack()
	start := time.Now()
	again := receive(t, ch, 30*time.Second)
	assert.Less(t, time.Since(start), 5*time.Second, "not after the row's deadline (4.5 min by default)")
	assert.Equal(t, "in", again.UUID)
	again.Ack()
	assert.Eventually(t, func() bool { return rows(t, db, topic) == 0 }, 5*time.Second, 20*time.Millisecond)
}
