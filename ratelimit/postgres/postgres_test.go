package postgres_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/waybillkit/waybill/internal/testpostgres"
	"github.com/waybillkit/waybill/ratelimit"
	"github.com/waybillkit/waybill/ratelimit/internal/storetest"
	"github.com/waybillkit/waybill/ratelimit/internal/testtime"
	"github.com/waybillkit/waybill/ratelimit/postgres"
)

func newStore(t testing.TB, db *sql.DB, cfg postgres.Config) *postgres.Store {
	t.Helper()
	s, err := postgres.New(db, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// pgStores makes k Stores, each on a pool of its own (its own
// connections, as separate processes would have), over one fresh schema
// of the server testpostgres gives; a test without that server fails.
func pgStores(t testing.TB, k int) []ratelimit.Store {
	_, u := testpostgres.Schema(t)
	stores := make([]ratelimit.Store, k)
	for i := range stores {
		stores[i] = newStore(t, testpostgres.Open(t, u), postgres.Config{})
	}
	return stores
}

// TestStore runs the behaviour every store shares on PostgreSQL; package
// ratelimit runs the same on MemoryStore, ratelimit/redis on Redis.
func TestStore(t *testing.T) { storetest.Run(t, pgStores) }

func BenchmarkAllowPostgres(b *testing.B) {
	storetest.BenchAllow(b, pgStores(b, 1)[0])
}

func BenchmarkAllowPostgresParallel(b *testing.B) {
	storetest.BenchAllowParallel(b, pgStores(b, 1)[0])
}

// TestTwoPoolsNeverExceedQuota has two processes (two pools) race Take from
// many goroutines each, straight on the Store: the allowed calls are
// exactly the quota (or the burst), and each allowed call saw a count of
// its own, as when every decision is atomic.
func TestTwoPoolsNeverExceedQuota(t *testing.T) {
	now := testtime.CST("2026-03-14 10:00:00").UnixMicro()
	expire := testtime.CST("2026-03-15 00:05:00").UnixMicro()
	for _, c := range []struct {
		name  string
		q     ratelimit.Query
		want  int
		count func(ratelimit.Outcome) int64 // nil: no distinct-count check
	}{
		{"appid quota", ratelimit.Query{AppQuota: 37, UserQuota: -1}, 37, func(o ratelimit.Outcome) int64 { return o.App }},
		{"openid quota", ratelimit.Query{OpenID: "buyer", AppQuota: -1, UserQuota: 11}, 11, func(o ratelimit.Outcome) int64 { return o.User }},
		{"burst", ratelimit.Query{AppQuota: -1, UserQuota: -1, Interval: 1_000_000, Burst: 13}, 13, nil},
		{"reservations", ratelimit.Query{AppQuota: -1, UserQuota: -1, Interval: 1000, Burst: 3, MaxWait: 20_000}, 23, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			stores := pgStores(t, 2)
			const goroutines, calls = 32, 200
			var (
				next    atomic.Int64
				mu      sync.Mutex
				allowed []ratelimit.Outcome
				wg      sync.WaitGroup
				start   = make(chan struct{})
			)
			for g := range goroutines {
				s := stores[g%len(stores)]
				wg.Go(func() {
					<-start
					for next.Add(1) <= calls {
						q := c.q
						q.AppID, q.Window, q.N, q.Now, q.Expire = "wxA", "20260314", 1, now, expire
						o, err := s.Take(context.Background(), q)
						if err != nil {
							t.Error(err)
							return
						}
						if o.Allowed {
							mu.Lock()
							allowed = append(allowed, o)
							mu.Unlock()
						}
					}
				})
			}
			close(start)
			wg.Wait()
			if len(allowed) != c.want {
				t.Fatalf("%d calls allowed, want %d", len(allowed), c.want)
			}
			if c.count != nil {
				var counts []int64
				for _, o := range allowed {
					counts = append(counts, c.count(o))
				}
				slices.Sort(counts)
				for i, n := range counts {
					if n != int64(i+1) {
						t.Fatalf("counts of the allowed calls %v, want each of 1..%d once", counts, c.want)
					}
				}
			}
			if c.q.MaxWait > 0 {
				// Each reservation got a turn of its own.
				var ats []int64
				for _, o := range allowed {
					ats = append(ats, o.At-now)
				}
				slices.Sort(ats)
				want := []int64{0, 0, 0}
				for i := int64(1); i <= 20; i++ {
					want = append(want, i*1000)
				}
				if !slices.Equal(ats, want) {
					t.Errorf("waits %v, want %v", ats, want)
				}
			}
		})
	}
}

// TestMatchesMemoryStore plays one random sequence of Takes, Refunds and
// Exhausts, with times that cross resets and their grace and some calls
// for the window before, on a MemoryStore (the reference) and on the
// PostgreSQL store through two pools, and wants every Outcome alike.
func TestMatchesMemoryStore(t *testing.T) {
	ctx := context.Background()
	pg := pgStores(t, 2)
	mem := ratelimit.NewMemoryStore()
	rng := rand.New(rand.NewPCG(1, 2))
	const day = int64(24 * time.Hour / time.Microsecond)
	const grace = int64(5 * time.Minute / time.Microsecond)
	const cst = int64(8 * time.Hour / time.Microsecond)
	now := testtime.CST("2026-03-14 23:58:00").UnixMicro()
	apps, users := []string{"wxA", "wxB"}, []string{"", "u1", "u2", "u3"}
	var allowed []ratelimit.Query
	seen := map[string]int{} // outcomes by reason and by where Now is: within the window, its grace, past it
	for i := range 1000 {
		switch r := rng.IntN(100); {
		case r < 2:
			// On to two minutes before the next reset (23:58 Shanghai).
			now = ((now+cst)/day+1)*day - cst + rng.Int64N(60_000_000) - 2*60_000_000
		case r < 7:
			now += rng.Int64N(10 * 60 * 1_000_000) // up to 10 minutes: into and past a grace
		default:
			now += rng.Int64N(100_000) // up to 0.1 s: the rate's scale
		}
		d := (now + cst) / day // the Shanghai date
		if rng.IntN(5) == 0 {
			d-- // a caller whose clock runs behind: within the grace, or past it
		}
		window, expire := fmt.Sprint(20000000+d), (d+1)*day-cst+grace
		pgs := pg[rng.IntN(len(pg))]
		app := apps[rng.IntN(len(apps))]
		switch op := rng.IntN(40); {
		case op == 0:
			if err := mem.Exhaust(ctx, app, window, now, expire); err != nil {
				t.Fatal(err)
			}
			if err := pgs.Exhaust(ctx, app, window, now, expire); err != nil {
				t.Fatal(err)
			}
		case op <= 4 && len(allowed) > 0:
			q := allowed[rng.IntN(len(allowed))]
			openid := q.OpenID
			if q.UserQuota < 0 {
				openid = ""
			}
			n := 1 + rng.Int64N(q.N)
			if err := mem.Refund(ctx, q.AppID, openid, q.Window, n); err != nil {
				t.Fatal(err)
			}
			if err := pgs.Refund(ctx, q.AppID, openid, q.Window, n); err != nil {
				t.Fatal(err)
			}
		default:
			q := ratelimit.Query{
				AppID: app, OpenID: users[rng.IntN(len(users))], Window: window,
				N: 1 + rng.Int64N(3), Now: now, Expire: expire,
				AppQuota: 60 + rng.Int64N(3), UserQuota: 12,
			}
			if rng.IntN(3) == 0 {
				q.AppQuota = -1
			}
			if q.OpenID == "" || rng.IntN(4) == 0 {
				q.UserQuota = -1
			}
			if rng.IntN(4) > 0 {
				q.Interval, q.Burst = 100_000, 4 // 10 calls/s
				if rng.IntN(2) == 0 {
					q.MaxWait = rng.Int64N(1_000_000)
				}
			}
			want, err := mem.Take(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			got, err := pgs.Take(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Fatalf("op %d: Take(%+v) =\n\t%+v, MemoryStore says\n\t%+v", i, q, got, want)
			}
			if got.Allowed {
				allowed = append(allowed, q)
			}
			seen[fmt.Sprint(got.Reason, q.Now < q.Expire-grace, q.Now < q.Expire)]++
			seen[got.Reason.String()]++
		}
	}
	// The sequence must reach every case, or it checks less than it says.
	for _, c := range []string{"none true true", "none false true", "none false false", "app_daily", "user_daily", "rate"} {
		if seen[c] == 0 {
			t.Errorf("no outcome %q in the sequence: %v", c, seen)
		}
	}
}

func count(t *testing.T, db *sql.DB, table string) int {
	t.Helper()
	var n int
	if err := db.QueryRowContext(context.Background(), `SELECT count(*) FROM `+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestTables checks the documented layout, and that every row carries the
// time it expires: window rows five minutes after the window ends, the
// rate row its tat.
func TestTables(t *testing.T) {
	ctx := context.Background()
	db := testpostgres.DB(t)
	l, err := ratelimit.New(ratelimit.Config{Store: newStore(t, db, postgres.Config{}),
		Defaults: ratelimit.Limits{AppDaily: 10, UserDaily: 5, Rate: 10, Burst: 5}})
	if err != nil {
		t.Fatal(err)
	}
	now := testtime.CST("2026-03-14 23:00:00")
	if d, err := l.Allow(ctx, "wxA", "u1", now); err != nil || !d.Allowed {
		t.Fatalf("Allow = %+v, %v", d, err)
	}
	if err := l.ExhaustApp(ctx, "wxA", now); err != nil {
		t.Fatal(err)
	}
	expire := testtime.CST("2026-03-15 00:05:00").UnixMicro()
	var (
		calls, expiresAt, tat int64
		exhausted             bool
	)
	if err := db.QueryRowContext(ctx, `SELECT calls, exhausted, expires_at FROM waybill_ratelimit_window
		WHERE app_id = 'wxA' AND window_id = '20260314'`).Scan(&calls, &exhausted, &expiresAt); err != nil {
		t.Fatal(err)
	}
	if calls != 1 || !exhausted || expiresAt != expire {
		t.Errorf("window row: calls %d, exhausted %v, expires_at %d; want 1, true, %d", calls, exhausted, expiresAt, expire)
	}
	if err := db.QueryRowContext(ctx, `SELECT calls, expires_at FROM waybill_ratelimit_user
		WHERE app_id = 'wxA' AND window_id = '20260314' AND open_id = 'u1'`).Scan(&calls, &expiresAt); err != nil {
		t.Fatal(err)
	}
	if calls != 1 || expiresAt != expire {
		t.Errorf("user row: calls %d, expires_at %d; want 1, %d", calls, expiresAt, expire)
	}
	if err := db.QueryRowContext(ctx, `SELECT tat FROM waybill_ratelimit_rate WHERE app_id = 'wxA'`).Scan(&tat); err != nil {
		t.Fatal(err)
	}
	if want := now.Add(100 * time.Millisecond).UnixMicro(); tat != want {
		t.Errorf("tat %d, want %d", tat, want)
	}
	var idx int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema() AND indexname IN
		('waybill_ratelimit_window_expires_idx', 'waybill_ratelimit_user_expires_idx')`).Scan(&idx); err != nil || idx != 2 {
		t.Errorf("%d expiry indexes, %v; want 2", idx, err)
	}
}

func TestNoOpenIDNoUserRow(t *testing.T) {
	ctx := context.Background()
	db := testpostgres.DB(t)
	l, err := ratelimit.New(ratelimit.Config{Store: newStore(t, db, postgres.Config{})})
	if err != nil {
		t.Fatal(err)
	}
	now := testtime.CST("2026-03-14 10:00:00")
	d, err := l.Allow(ctx, "wxA", "", now)
	if err != nil || !d.Allowed {
		t.Fatalf("Allow = %+v, %v", d, err)
	}
	if err := l.Refund(ctx, d); err != nil {
		t.Fatal(err)
	}
	if n := count(t, db, "waybill_ratelimit_user"); n != 0 {
		t.Errorf("%d user rows, want none", n)
	}
	var calls int64
	if err := db.QueryRowContext(ctx, `SELECT calls FROM waybill_ratelimit_window`).Scan(&calls); err != nil || calls != 0 {
		t.Errorf("app count after refund %d, %v; want 0", calls, err)
	}
}

// Expired rows do not pile up: a write now and then sweeps the windows
// ended (with their grace) at its time, their openids and the rates whose
// tat has passed, and leaves the rest.
func TestExpiredRowsAreSwept(t *testing.T) {
	ctx := context.Background()
	_, u := testpostgres.Schema(t)
	db := testpostgres.Open(t, u)
	l, err := ratelimit.New(ratelimit.Config{Store: newStore(t, db, postgres.Config{SweepEvery: 4}),
		Defaults: ratelimit.Limits{AppDaily: 100, UserDaily: 10, Rate: 100, Burst: 10}})
	if err != nil {
		t.Fatal(err)
	}
	day1 := testtime.CST("2026-03-14 10:00:00")
	for _, user := range []string{"u1", "u2", "u3"} { // writes 1-3
		if d, err := l.Allow(ctx, "wxA", user, day1); err != nil || !d.Allowed {
			t.Fatalf("Allow = %+v, %v", d, err)
		}
	}
	rows := func() [3]int {
		return [3]int{count(t, db, "waybill_ratelimit_window"), count(t, db, "waybill_ratelimit_user"), count(t, db, "waybill_ratelimit_rate")}
	}
	if got := rows(); got != [3]int{1, 3, 1} {
		t.Fatalf("rows %v, want 1 window, 3 users, 1 rate", got)
	}
	// Within the grace, day 1's rows stay.
	if d, err := l.Allow(ctx, "wxB", "u1", testtime.CST("2026-03-15 00:04:00")); err != nil || !d.Allowed { // write 4: a sweep
		t.Fatalf("Allow = %+v, %v", d, err)
	}
	if got := rows(); got != [3]int{2, 4, 1} {
		t.Fatalf("rows after a sweep within the grace %v, want 2 windows, 4 users, 1 rate (wxA's tat has passed)", got)
	}
	// Past it, they go.
	later := testtime.CST("2026-03-15 00:05:00")
	for range 4 { // writes 5-8: a sweep
		if d, err := l.Allow(ctx, "wxB", "u2", later); err != nil || !d.Allowed {
			t.Fatalf("Allow = %+v, %v", d, err)
		}
	}
	if got := rows(); got != [3]int{1, 2, 1} {
		t.Fatalf("rows after the grace %v, want wxB's window, its 2 users and its rate", got)
	}
	// Sweep on demand, at a time past everything, leaves nothing.
	s := newStore(t, testpostgres.Open(t, u), postgres.Config{})
	n, err := s.Sweep(ctx, later.Add(24*time.Hour))
	if err != nil || n != 4 {
		t.Errorf("Sweep = %d, %v; want 4", n, err)
	}
	if got := rows(); got != [3]int{} {
		t.Errorf("rows after the last sweep %v, want none", got)
	}
}

// An expired row nobody swept reads as absent: a caller whose clock is
// past a window's grace gets a fresh count, as from MemoryStore.
func TestUnsweptExpiredRowIsAbsent(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, testpostgres.DB(t), postgres.Config{SweepEvery: -1})
	q := ratelimit.Query{AppID: "wxA", OpenID: "u1", Window: "20260314", N: 1,
		Now: 1000, Expire: 2000, AppQuota: 1, UserQuota: 1}
	if o, err := s.Take(ctx, q); err != nil || !o.Allowed {
		t.Fatalf("Take = %+v, %v", o, err)
	}
	if o, err := s.Take(ctx, q); err != nil || o.Allowed || o.Reason != ratelimit.ReasonAppDaily {
		t.Fatalf("Take over the quota = %+v, %v; want an app_daily denial", o, err)
	}
	if err := s.Exhaust(ctx, "wxA", "20260314", 1500, 2000); err != nil {
		t.Fatal(err)
	}
	q.Now, q.Expire = 2000, 3000
	if o, err := s.Take(ctx, q); err != nil || !o.Allowed || o.App != 1 || o.User != 1 || o.Exhausted {
		t.Errorf("Take after expiry = %+v, %v; want allowed with fresh counts", o, err)
	}
}

// A sweep removes at most ten times SweepEvery rows of each table, so one
// write never pays for a backlog of any size.
func TestSweepIsBounded(t *testing.T) {
	ctx := context.Background()
	db := testpostgres.DB(t)
	s := newStore(t, db, postgres.Config{SweepEvery: 2})
	if _, err := db.ExecContext(ctx, `INSERT INTO waybill_ratelimit_user (app_id, window_id, open_id, calls, expires_at)
		SELECT 'wxA', '20260314', 'u' || i, 1, 1000 FROM generate_series(1, 50) i`); err != nil {
		t.Fatal(err)
	}
	for _, want := range []int64{20, 20, 10, 0} {
		if n, err := s.Sweep(ctx, time.UnixMicro(1000)); err != nil || n != want {
			t.Errorf("Sweep = %d, %v; want %d", n, err, want)
		}
	}
}

// Processes that start at once all create the tables, under the advisory
// lock, without failing on each other's DDL.
func TestConcurrentNew(t *testing.T) {
	_, u := testpostgres.Schema(t)
	dbs := make([]*sql.DB, 8)
	for i := range dbs {
		dbs[i] = testpostgres.Open(t, u)
	}
	for round := range 3 { // fresh tables each round
		var wg sync.WaitGroup
		start := make(chan struct{})
		for _, db := range dbs {
			wg.Go(func() {
				<-start
				if _, err := postgres.New(db, postgres.Config{TablePrefix: fmt.Sprint("race_", round)}); err != nil {
					t.Error(err)
				}
			})
		}
		close(start)
		wg.Wait()
	}
}

// A schema-qualified prefix, and one that is a reserved word, work.
func TestTablePrefixes(t *testing.T) {
	ctx := context.Background()
	schema, u := testpostgres.Schema(t)
	db := testpostgres.Open(t, u)
	for _, prefix := range []string{schema + ".limits", "user"} {
		s := newStore(t, db, postgres.Config{TablePrefix: prefix})
		q := ratelimit.Query{AppID: "wxA", OpenID: "u1", Window: "20260314", N: 1, Now: 1000, Expire: 2000,
			AppQuota: 1, UserQuota: 1, Interval: 10, Burst: 1}
		if o, err := s.Take(ctx, q); err != nil || !o.Allowed {
			t.Fatalf("%s: Take = %+v, %v", prefix, o, err)
		}
		if o, err := s.Take(ctx, q); err != nil || o.Allowed {
			t.Fatalf("%s: second Take = %+v, %v; want a denial", prefix, o, err)
		}
		if err := s.Refund(ctx, "wxA", "u1", "20260314", 1); err != nil {
			t.Fatal(err)
		}
		if err := s.Exhaust(ctx, "wxA", "20260314", 1000, 2000); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Sweep(ctx, time.UnixMicro(5000)); err != nil {
			t.Fatal(err)
		}
	}
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = $1`, schema).Scan(&n); err != nil || n != 6 {
		t.Errorf("%d tables in %s, %v; want 6", n, schema, err)
	}
}

func TestNewValidates(t *testing.T) {
	db, err := sql.Open("pgx", "postgres://127.0.0.1:1/none") // never dialled
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for prefix, want := range map[string]string{
		"Limits":                       "lowercase",
		"a;drop table x":               "lowercase",
		"a.b.c":                        "lowercase",
		"9lives":                       "lowercase",
		strings.Repeat("p", 45):        "longer than 44",
		"s." + strings.Repeat("p", 45): "longer than 44",
	} {
		if _, err := postgres.New(db, postgres.Config{TablePrefix: prefix}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New with TablePrefix %q: %v, want an error saying %q", prefix, err, want)
		}
	}
	if _, err := postgres.New(nil, postgres.Config{}); err == nil || !strings.Contains(err.Error(), "nil db") {
		t.Errorf("New(nil) = %v, want a nil db error", err)
	}
	if err := (&postgres.Config{}).Validate(); err != nil {
		t.Errorf("the zero Config: %v", err)
	}
}

// Errors name the operation and the appid and wrap database/sql's.
func TestErrors(t *testing.T) {
	ctx := context.Background()
	db := testpostgres.DB(t)
	l, err := ratelimit.New(ratelimit.Config{Store: newStore(t, db, postgres.Config{})})
	if err != nil {
		t.Fatal(err)
	}
	now := testtime.CST("2026-03-14 10:00:00")
	ok, err := l.Allow(ctx, "wxA", "u1", now)
	if err != nil || !ok.Allowed {
		t.Fatalf("Allow = %+v, %v", ok, err)
	}
	_ = db.Close()
	const closed = "sql: database is closed" // database/sql does not export it
	d, err := l.Allow(ctx, "wxA", "u1", now)
	if err == nil || !strings.Contains(err.Error(), "ratelimit/postgres: take for appid wxA: "+closed) || d.Allowed {
		t.Errorf("Allow on a closed pool = %+v, %v; want a denial and a wrapped error", d, err)
	}
	if err := l.Refund(ctx, ok); err == nil || !strings.Contains(err.Error(), "ratelimit/postgres: refund for appid wxA: "+closed) {
		t.Errorf("Refund on a closed pool = %v", err)
	}
	if err := l.ExhaustApp(ctx, "wxA", now); err == nil || !strings.Contains(err.Error(), "ratelimit/postgres: exhaust appid wxA: "+closed) {
		t.Errorf("ExhaustApp on a closed pool = %v", err)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	s := newStore(t, testpostgres.DB(t), postgres.Config{})
	if _, err := s.Take(canceled, ratelimit.Query{AppID: "wxA", N: 1, AppQuota: -1, UserQuota: -1}); !errors.Is(err, context.Canceled) {
		t.Errorf("Take with a canceled context = %v, want context.Canceled", err)
	}
}
