package postgres_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/internal/storetest"
	"github.com/waybillkit/waybill/internal/testpostgres"
	"github.com/waybillkit/waybill/tracestore"
	"github.com/waybillkit/waybill/tracestore/postgres"
)

// newStore returns a Store on a pool of its own on u, as a separate process
// would have.
func newStore(t testing.TB, u string, cfg postgres.Config) *postgres.Store {
	t.Helper()
	s, err := postgres.New(testpostgres.Open(t, u), cfg)
	require.NoError(t, err)
	return s
}

// The PostgreSQL store passes the same behaviour table as the memory and
// Redis stores, every handle on a pool of its own over one fresh schema,
// on a real server (scripts/postgres.sh).
func TestStoreConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, ttl time.Duration) storetest.Env {
		_, u := testpostgres.Schema(t)
		return storetest.Env{
			Open:    func() tracestore.Store { return newStore(t, u, postgres.Config{TTL: ttl}) },
			Advance: func(d time.Duration) { time.Sleep(d) }, // the store keeps the server's time
		}
	})
}

var key = tracestore.Key{AppID: "wx0001", WaybillID: "SF1001", TransID: "4200001"}

// row is what the table holds for key, read with SQL as an operator would.
type row struct {
	record              sql.NullString
	recordTTL, claimTTL sql.NullFloat64 // seconds left
	owner               sql.NullString
	expiresIn           float64
}

func readRow(t *testing.T, db *sql.DB, table string) (row, bool) {
	t.Helper()
	var r row
	err := db.QueryRowContext(context.Background(), `SELECT record::text,
			extract(epoch FROM record_expires_at - now()), extract(epoch FROM claim_expires_at - now()),
			claim_owner, extract(epoch FROM expires_at - now())
		FROM `+table+` WHERE app_id = $1 AND waybill_id = $2 AND trans_id = $3`,
		key.AppID, key.WaybillID, key.TransID).Scan(&r.record, &r.recordTTL, &r.claimTTL, &r.owner, &r.expiresIn)
	if err == sql.ErrNoRows {
		return r, false
	}
	require.NoError(t, err)
	return r, true
}

// The table is a storage format: other versions of this package, and
// operators with psql, read it.
func TestStoreTable(t *testing.T) {
	ctx := context.Background()
	_, u := testpostgres.Schema(t)
	db := testpostgres.Open(t, u)
	s := newStore(t, u, postgres.Config{TTL: time.Hour})
	assert.Equal(t, "tracestore/postgres.Store{waybill_trace}", s.String())

	traced := time.Date(2026, 3, 1, 8, 30, 15, 0, time.UTC)
	require.NoError(t, s.Put(ctx, key, tracestore.Record{WaybillToken: "tok-1", GoodsHash: "abc", TracedAt: traced}))
	r, ok := readRow(t, db, "waybill_trace")
	require.True(t, ok)
	assert.JSONEq(t, `{"waybill_token":"tok-1","goods_hash":"abc","traced_at":"2026-03-01T08:30:15Z"}`, r.record.String)
	assert.InDelta(t, time.Hour.Seconds(), r.recordTTL.Float64, 60, "record expiry")
	assert.False(t, r.owner.Valid)
	assert.InDelta(t, r.recordTTL.Float64, r.expiresIn, 0.001, "expires_at is the record's")

	release, ok, err := s.Claim(ctx, key, "", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	r, _ = readRow(t, db, "waybill_trace")
	assert.Len(t, r.owner.String, 32, "owner id")
	assert.True(t, r.claimTTL.Float64 > 0 && r.claimTTL.Float64 <= 60, "claim expiry in %vs", r.claimTTL.Float64)
	assert.True(t, r.record.Valid, "the claim left the record")
	release()
	r, _ = readRow(t, db, "waybill_trace")
	assert.False(t, r.owner.Valid, "release left the claim")
	assert.False(t, r.claimTTL.Valid, "release left the claim's expiry")
	assert.True(t, r.record.Valid, "release removed the record")

	// A second claimer gets a different owner id: a release cannot be forged
	// by guessing.
	_, ok, err = s.Claim(ctx, key, "", time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	r2, _ := readRow(t, db, "waybill_trace")
	assert.Len(t, r2.owner.String, 32)
	assert.NotEqual(t, r.owner.String, r2.owner.String)

	// The index the sweep uses.
	var idx int
	require.NoError(t, db.QueryRowContext(ctx, `SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema() AND indexname = 'waybill_trace_expires_idx'`).Scan(&idx))
	assert.Equal(t, 1, idx)
}

func TestStoreDefaults(t *testing.T) {
	ctx := context.Background()
	_, u := testpostgres.Schema(t)
	db := testpostgres.Open(t, u)
	s := newStore(t, u, postgres.Config{})
	require.NoError(t, s.Put(ctx, key, tracestore.Record{WaybillToken: "tok"}))
	r, ok := readRow(t, db, postgres.DefaultTable)
	require.True(t, ok)
	assert.InDelta(t, tracestore.DefaultTTL.Seconds(), r.recordTTL.Float64, 60, "expiry, want 30 days")
}

// A schema-qualified table, and one named by a reserved word, work; the
// index lands beside the table.
func TestStoreTableNames(t *testing.T) {
	ctx := context.Background()
	schema, u := testpostgres.Schema(t)
	db := testpostgres.Open(t, u)
	for _, table := range []string{schema + ".traces", "user"} {
		s := newStore(t, u, postgres.Config{Table: table})
		assert.Equal(t, "tracestore/postgres.Store{"+table+"}", s.String())
		require.NoError(t, s.Put(ctx, key, tracestore.Record{WaybillToken: "tok-" + table}))
		rec, ok, err := s.Get(ctx, key)
		require.NoError(t, err)
		require.True(t, ok)
		assert.Equal(t, "tok-"+table, rec.WaybillToken)
	}
	var n int
	require.NoError(t, db.QueryRowContext(ctx, `SELECT count(*) FROM pg_indexes WHERE schemaname = $1
		AND indexname IN ('traces_expires_idx', 'user_expires_idx')`, schema).Scan(&n))
	assert.Equal(t, 2, n)
}

func TestNewValidates(t *testing.T) {
	db, err := sql.Open("pgx", "postgres://127.0.0.1:1/none") // never dialled
	require.NoError(t, err)
	defer db.Close()
	for cfg, want := range map[postgres.Config]string{
		{TTL: -time.Second}:                     "TTL",
		{TTL: time.Nanosecond}:                  "microsecond",
		{Table: "Traces"}:                       "lowercase",
		{Table: "a;drop table x"}:               "lowercase",
		{Table: "a.b.c"}:                        "lowercase",
		{Table: "1abc"}:                         "lowercase",
		{Table: strings.Repeat("t", 52)}:        "longer than 51",
		{Table: "s." + strings.Repeat("t", 52)}: "longer than 51",
	} {
		_, err := postgres.New(db, cfg)
		assert.ErrorContains(t, err, want, "%+v", cfg)
	}
	_, err = postgres.New(nil, postgres.Config{})
	assert.ErrorContains(t, err, "nil db")
	assert.NoError(t, (&postgres.Config{}).Validate(), "the zero Config")
}

// Processes that start at once all create the table, under the advisory
// lock, without failing on each other's DDL.
func TestConcurrentNew(t *testing.T) {
	_, u := testpostgres.Schema(t)
	const processes = 8
	dbs := make([]*sql.DB, processes)
	for i := range dbs {
		dbs[i] = testpostgres.Open(t, u)
	}
	for round := range 3 { // a fresh table each round
		table := fmt.Sprintf("race_%d", round)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for _, db := range dbs {
			wg.Go(func() {
				<-start
				_, err := postgres.New(db, postgres.Config{Table: table})
				assert.NoError(t, err)
			})
		}
		close(start)
		wg.Wait()
	}
}

// An unreadable record column is reported as tracestore.ErrBadRecord, by
// Get and ClaimGet (which releases the claim it took), and Put replaces it.
func TestUnreadableRecordIsBadRecord(t *testing.T) {
	ctx := context.Background()
	_, u := testpostgres.Schema(t)
	db := testpostgres.Open(t, u)
	s := newStore(t, u, postgres.Config{TTL: time.Hour})
	for _, bad := range []string{`"a string"`, `null`, `[1, 2]`, `{"waybill_token": 7}`, `{"traced_at": "yesterday"}`} {
		t.Run(bad, func(t *testing.T) {
			require.NoError(t, s.Put(ctx, key, tracestore.Record{WaybillToken: "tok-0"}))
			_, err := db.ExecContext(ctx, `UPDATE waybill_trace SET record = $1::jsonb`, bad)
			require.NoError(t, err)

			_, ok, err := s.Get(ctx, key)
			assert.ErrorIs(t, err, tracestore.ErrBadRecord)
			assert.ErrorContains(t, err, "tracestore/postgres: get "+key.String())
			assert.False(t, ok)

			release, won, _, ok, err := s.ClaimGet(ctx, key, "owner-a", time.Minute)
			assert.ErrorIs(t, err, tracestore.ErrBadRecord)
			assert.False(t, won)
			assert.False(t, ok)
			assert.Nil(t, release)
			r, _ := readRow(t, db, "waybill_trace")
			assert.False(t, r.owner.Valid, "the claim was not released")

			require.NoError(t, s.Put(ctx, key, tracestore.Record{WaybillToken: "tok-1"}))
			rec, ok, err := s.Get(ctx, key)
			require.NoError(t, err)
			assert.True(t, ok)
			assert.Equal(t, "tok-1", rec.WaybillToken)
		})
	}
}

func count(t *testing.T, db *sql.DB, table string) int {
	t.Helper()
	var n int
	require.NoError(t, db.QueryRowContext(context.Background(), `SELECT count(*) FROM `+table).Scan(&n))
	return n
}

// Expired rows do not pile up: a write now and then sweeps them, and
// rows with a live record or claim stay.
func TestExpiredRowsAreSwept(t *testing.T) {
	ctx := context.Background()
	_, u := testpostgres.Schema(t)
	db := testpostgres.Open(t, u)
	const ttl = 100 * time.Millisecond
	short := newStore(t, u, postgres.Config{TTL: ttl, SweepEvery: -1})
	keys := storetest.Keys(30)
	for _, k := range keys[:10] {
		require.NoError(t, short.Put(ctx, k, storetest.Record)) // records that expire
	}
	for _, k := range keys[10:20] {
		_, ok, err := short.Claim(ctx, k, "", ttl) // claims a crashed holder never released
		require.NoError(t, err)
		require.True(t, ok)
	}
	for _, k := range keys[20:25] {
		release, ok, err := short.Claim(ctx, k, "", time.Hour) // claims released at once
		require.NoError(t, err)
		require.True(t, ok)
		release()
	}
	long := newStore(t, u, postgres.Config{TTL: time.Hour, SweepEvery: 3})
	require.NoError(t, long.Put(ctx, keys[25], storetest.Record)) // a live record
	_, ok, err := long.Claim(ctx, keys[26], "", time.Hour)        // a live claim on an expiring record
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, short.Put(ctx, keys[26], storetest.Record))
	require.Equal(t, 27, count(t, db, "waybill_trace"))

	time.Sleep(ttl + 50*time.Millisecond)
	// Unswept, expired rows are absent all the same.
	_, found, err := long.Get(ctx, keys[0])
	require.NoError(t, err)
	assert.False(t, found)
	_, ok, err = long.Claim(ctx, keys[10], "", time.Hour) // long's third write: the sweep
	require.NoError(t, err)
	assert.True(t, ok, "an expired claim blocks its key")
	// Gone: 10 records, 9 lapsed claims (keys[10] is claimed again), 5
	// released claims.
	assert.Equal(t, 27-24, count(t, db, "waybill_trace"), "rows left after the sweep")
	for _, k := range keys[25:27] {
		_, ok, err := long.Get(ctx, k)
		require.NoError(t, err)
		assert.Equal(t, k == keys[25], ok, "%v", k)
	}
	_, ok, err = short.Claim(ctx, keys[26], "", time.Hour)
	require.NoError(t, err)
	assert.False(t, ok, "the sweep removed a live claim")

	// Sweep on demand finds nothing more.
	n, err := long.Sweep(ctx)
	require.NoError(t, err)
	assert.Zero(t, n)
}

// A sweep removes at most ten times SweepEvery rows, so one write never
// pays for a backlog of any size.
func TestSweepIsBounded(t *testing.T) {
	ctx := context.Background()
	_, u := testpostgres.Schema(t)
	db := testpostgres.Open(t, u)
	s := newStore(t, u, postgres.Config{TTL: time.Millisecond, SweepEvery: 2})
	_, err := db.ExecContext(ctx, `INSERT INTO waybill_trace (app_id, waybill_id, trans_id, record, record_expires_at)
		SELECT 'wx', 'SF' || i, '', '{}', now() - interval '1 day' FROM generate_series(1, 50) i`)
	require.NoError(t, err)
	n, err := s.Sweep(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(20), n)
	n, err = s.Sweep(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(20), n)
	assert.Equal(t, 10, count(t, db, "waybill_trace"))
}

// Errors name the operation and the key, wrap the driver's error, and
// never carry a token.
func TestStoreWrapsErrors(t *testing.T) {
	_, u := testpostgres.Schema(t)
	db := testpostgres.Open(t, u)
	s, err := postgres.New(db, postgres.Config{})
	require.NoError(t, err)
	require.NoError(t, db.Close())

	ctx := context.Background()
	const closed = "sql: database is closed" // database/sql does not export it
	_, _, err = s.Get(ctx, key)
	assert.ErrorContains(t, err, closed)
	assert.True(t, strings.HasPrefix(err.Error(), "tracestore/postgres: get "+key.String()), err.Error())
	err = s.Put(ctx, key, tracestore.Record{WaybillToken: "token-ABC123"})
	assert.ErrorContains(t, err, closed)
	assert.True(t, strings.HasPrefix(err.Error(), "tracestore/postgres: put "+key.String()), err.Error())
	assert.NotContains(t, err.Error(), "ABC123", "an error must not carry the token")
	_, ok, err := s.Claim(ctx, key, "", time.Second)
	assert.ErrorContains(t, err, "tracestore/postgres: claim "+key.String())
	assert.False(t, ok)
	release, won, _, _, err := s.ClaimGet(ctx, key, "owner-a", time.Second)
	assert.ErrorContains(t, err, "tracestore/postgres: claim "+key.String())
	assert.False(t, won)
	assert.Nil(t, release)
	err = s.PutRelease(ctx, key, tracestore.Record{WaybillToken: "token-ABC123"}, "owner-a")
	assert.ErrorContains(t, err, closed)
	assert.NotContains(t, err.Error(), "ABC123")
	_, err = s.Sweep(ctx)
	assert.ErrorContains(t, err, "tracestore/postgres: sweep waybill_trace")
}

// A holder whose process dies mid-trace (its pool closes, nothing is
// released) blocks the key until its claim's ttl, and no longer; the
// database's clock decides.
func TestCrashedHolderClaimExpires(t *testing.T) {
	ctx := context.Background()
	_, u := testpostgres.Schema(t)
	const ttl = 300 * time.Millisecond

	doomedDB := testpostgres.Open(t, u)
	doomed, err := postgres.New(doomedDB, postgres.Config{})
	require.NoError(t, err)
	claimed := time.Now()
	_, ok, err := doomed.Claim(ctx, key, "", ttl)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, doomedDB.Close()) // the crash

	survivors := []*postgres.Store{newStore(t, u, postgres.Config{}), newStore(t, u, postgres.Config{}), newStore(t, u, postgres.Config{})}
	var (
		winner   int
		wonAt    time.Time
		deadline = time.Now().Add(30 * time.Second)
	)
	for wonAt.IsZero() {
		require.True(t, time.Now().Before(deadline), "the crashed claim never expired")
		for i, s := range survivors {
			release, ok, err := s.Claim(ctx, key, "", time.Hour)
			require.NoError(t, err)
			if ok {
				winner, wonAt = i, time.Now()
				t.Cleanup(release)
				break
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	assert.GreaterOrEqual(t, wonAt.Sub(claimed), ttl, "the claim lapsed before its ttl")
	for i, s := range survivors {
		_, ok, err := s.Claim(ctx, key, "", time.Hour)
		require.NoError(t, err)
		assert.False(t, ok, "survivor %d claimed the key survivor %d holds", i, winner)
	}
}

// TestClaimGetSeesRecordOfReleasingHolder races ClaimGet against the
// holder's PutRelease many times: whenever the claim is won, the record
// the holder stored with its release is there, or WeChat would be called
// twice for one waybill.
func TestClaimGetSeesRecordOfReleasingHolder(t *testing.T) {
	ctx := context.Background()
	_, u := testpostgres.Schema(t)
	holder, racer := newStore(t, u, postgres.Config{}), newStore(t, u, postgres.Config{})
	for i := range 200 {
		k := tracestore.Key{AppID: "wx0001", WaybillID: fmt.Sprint("SF", i)}
		_, won, _, _, err := holder.ClaimGet(ctx, k, "holder", time.Minute)
		require.NoError(t, err)
		require.True(t, won)
		done := make(chan error, 1)
		go func() { done <- holder.PutRelease(ctx, k, tracestore.Record{WaybillToken: "tok"}, "holder") }()
		for {
			release, won, rec, found, err := racer.ClaimGet(ctx, k, "racer", time.Minute)
			require.NoError(t, err)
			if won {
				require.True(t, found, "round %d: won the claim but missed the holder's record", i)
				assert.Equal(t, "tok", rec.WaybillToken)
				release()
				break
			}
		}
		require.NoError(t, <-done)
	}
}

// TestRecordJSONRoundTrip: the record column reads back what the Redis
// store would, nanoseconds and zone offset included.
func TestRecordJSONRoundTrip(t *testing.T) {
	ctx := context.Background()
	_, u := testpostgres.Schema(t)
	db := testpostgres.Open(t, u)
	s := newStore(t, u, postgres.Config{})
	traced := time.Date(2026, 3, 1, 8, 30, 15, 123456789, time.FixedZone("CST", 8*3600))
	require.NoError(t, s.Put(ctx, key, tracestore.Record{WaybillToken: "tok", TracedAt: traced}))
	var raw string
	require.NoError(t, db.QueryRowContext(ctx, `SELECT record->>'traced_at' FROM waybill_trace`).Scan(&raw))
	assert.Equal(t, "2026-03-01T08:30:15.123456789+08:00", raw)
	var m map[string]any
	require.NoError(t, db.QueryRowContext(ctx, `SELECT record FROM waybill_trace`).Scan(jsonScanner{&m}))
	assert.NotContains(t, m, "goods_hash", "an empty goods hash is left out, as in Redis")
}

// jsonScanner decodes a jsonb column into v.
type jsonScanner struct{ v any }

func (j jsonScanner) Scan(src any) error { return json.Unmarshal(src.([]byte), j.v) }

func BenchmarkPostgresStoreGet(b *testing.B) {
	_, u := testpostgres.Schema(b)
	storetest.BenchGet(b, newStore(b, u, postgres.Config{TTL: time.Hour}))
}

// BenchmarkPostgresStoreTrace is the handler's path for a new waybill:
// ClaimGet that wins and finds nothing, then PutRelease.
func BenchmarkPostgresStoreTrace(b *testing.B) {
	ctx := context.Background()
	_, u := testpostgres.Schema(b)
	s := newStore(b, u, postgres.Config{TTL: time.Hour})
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		k := tracestore.Key{AppID: "wx0001", WaybillID: fmt.Sprintf("SF%010d", i)}
		_, won, _, _, err := s.ClaimGet(ctx, k, "owner", time.Minute)
		if err != nil || !won {
			b.Fatal(won, err)
		}
		if err := s.PutRelease(ctx, k, storetest.Record, "owner"); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
