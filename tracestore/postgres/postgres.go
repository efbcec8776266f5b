// Package postgres is a tracestore.Store on PostgreSQL, for a monolith
// whose processes share one PostgreSQL and no Redis: a redelivered event
// finds the token another process stored, and only one process at a time
// traces a key, as with package tracestore/redis.
//
// It uses database/sql only: the program opens the *sql.DB with its driver
// (pgx's stdlib, driver name "pgx", is the one tested), and keeps and
// closes it. No other package of the module imports this one (tests
// aside), so neither the waybill package nor package tracestore depends on
// a database driver.
//
// # Schema
//
// New creates the table and its index when they are missing. One row per
// key, in Config.Table (default waybill_trace), holds the key's record and
// its claim:
//
//	CREATE TABLE waybill_trace (
//		app_id            text NOT NULL,
//		waybill_id        text NOT NULL,
//		trans_id          text NOT NULL,
//		record            jsonb,       -- {"waybill_token":…,"goods_hash":…,"traced_at":…}
//		record_expires_at timestamptz, -- the last Put's now() + Config.TTL
//		claim_owner       text,        -- the caller's owner, or 32 random hex digits
//		claim_expires_at  timestamptz, -- the claim's now() + ttl
//		expires_at        timestamptz NOT NULL GENERATED ALWAYS AS
//			(coalesce(greatest(record_expires_at, claim_expires_at), '-infinity')) STORED,
//		PRIMARY KEY (app_id, waybill_id, trans_id),
//		CHECK ((record IS NULL) = (record_expires_at IS NULL)),
//		CHECK ((claim_owner IS NULL) = (claim_expires_at IS NULL))
//	);
//	CREATE INDEX waybill_trace_expires_idx ON waybill_trace (expires_at);
//
// The record's JSON is the Redis store's, so records can be copied between
// the two. A database administrator may create the table and index
// beforehand; New then only checks that they exist, and its role needs no
// CREATE right.
//
// Record and claim share a row so that every operation is one statement on
// one row, which PostgreSQL makes atomic: Claim is an INSERT … ON CONFLICT
// DO UPDATE … WHERE the claim is free, expired or the owner's own, and
// since that update sees the row's latest committed version, ClaimGet
// returns with a won claim the record that the previous holder's
// PutRelease stored. (A read of another table in the same statement would
// use the statement's snapshot, taken before it waited for the row, and
// could miss that record.)
//
// # Time and expiry
//
// Expiry uses the database's clock (now()), so processes on machines whose
// clocks differ still agree on when a claim lapses. A record whose
// record_expires_at has passed, or a claim whose claim_expires_at has, is
// absent to every operation. The rows themselves are deleted by Sweep,
// which the Store runs after every Config.SweepEvery-th write of its own
// (Put, Claim, ClaimGet, PutRelease), in the caller's goroutine: one DELETE
// of at most ten times SweepEvery expired rows, which skips rows that other
// statements hold, so expired rows are removed faster than writes can make
// them, and no timer or Close is needed.
//
// The statements assume PostgreSQL's default isolation, READ COMMITTED
// (default_transaction_isolation left alone); under REPEATABLE READ or
// SERIALIZABLE, racing claims can fail with serialization errors. PostgreSQL
// text cannot hold a NUL byte, so a key containing one is an error.
package postgres

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/waybillkit/waybill/internal/pgutil"
	"github.com/waybillkit/waybill/tracestore"
)

// DefaultTable names the table when Config.Table is empty.
const DefaultTable = "waybill_trace"

// DefaultSweepEvery is Config.SweepEvery when it is zero: a sweep costs one
// indexed DELETE per hundred writes.
const DefaultSweepEvery = 100

// Config configures a Store. The zero value is ready to use.
type Config struct {
	// Table names the table of records and claims, optionally
	// schema-qualified ("traces.waybill_trace"): lowercase letters, digits
	// and underscores, so that it needs no quoting in psql either. Stores
	// share records and claims when they use the same database and table.
	// "" means DefaultTable, in the connection's search_path.
	Table string
	// TTL is how long a record lives after its last Put: the window in
	// which a redelivered event still finds its token. PostgreSQL keeps it
	// in microseconds. 0 means tracestore.DefaultTTL (30 days).
	TTL time.Duration
	// SweepEvery is how many writes of this Store go between two sweeps of
	// expired rows (see Store.Sweep). 0 means DefaultSweepEvery; a negative
	// value never sweeps, for a deployment that calls Sweep on its own
	// schedule.
	SweepEvery int
}

func (c *Config) setDefaults() {
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if c.TTL == 0 {
		c.TTL = tracestore.DefaultTTL
	}
	if c.SweepEvery == 0 {
		c.SweepEvery = DefaultSweepEvery
	}
}

// indexSuffix makes the expiry index's name from the table's.
const indexSuffix = "_expires_idx"

// Validate reports a configuration that cannot work.
func (c *Config) Validate() error {
	var errs []error
	if c.Table != "" {
		if err := pgutil.CheckName("Table", c.Table, len(indexSuffix)); err != nil {
			errs = append(errs, err)
		}
	}
	if c.TTL < 0 {
		errs = append(errs, fmt.Errorf("TTL %v is negative", c.TTL))
	}
	if c.TTL > 0 && c.TTL < time.Microsecond {
		errs = append(errs, fmt.Errorf("TTL %v is below PostgreSQL's microsecond", c.TTL))
	}
	if len(errs) > 0 {
		return fmt.Errorf("tracestore/postgres config: %w", errors.Join(errs...))
	}
	return nil
}

// Store is a tracestore.Store on PostgreSQL. It is safe for concurrent use.
type Store struct {
	db  *sql.DB
	cfg Config
	q   queries
	// writes counts this Store's writes, for SweepEvery.
	writes atomic.Uint64
}

var (
	_ tracestore.Store       = (*Store)(nil)
	_ tracestore.ClaimGetter = (*Store)(nil)
	_ tracestore.PutReleaser = (*Store)(nil)
)

// setupTimeout bounds New's look at the table and its DDL.
const setupTimeout = time.Minute

// New returns a Store on db, which the caller keeps and closes, after
// creating the table and index when they are missing (CREATE … IF NOT
// EXISTS under a transaction-scoped advisory lock, so that processes
// starting together do not trip over each other's DDL). It fails when cfg
// is invalid or db cannot be reached within a minute.
func New(db *sql.DB, cfg Config) (*Store, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if db == nil {
		return nil, errors.New("tracestore/postgres: nil db")
	}
	s := &Store{db: db, cfg: cfg, q: newQueries(cfg.Table)}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if err := s.createTable(ctx); err != nil {
		return nil, fmt.Errorf("tracestore/postgres: creating table %s: %w", cfg.Table, err)
	}
	return s, nil
}

// ddlLock serializes New's DDL across processes.
var ddlLock = pgutil.LockKey("github.com/waybillkit/waybill/tracestore/postgres DDL")

// createTable creates what the Store needs unless it all exists already.
func (s *Store) createTable(ctx context.Context) error {
	return pgutil.CreateOnce(ctx, s.db, ddlLock, `SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL`,
		[]any{s.q.table, s.q.index}, s.q.ddl)
}

// queries are the Store's statements, with its table's name in them.
type queries struct {
	table, index                               string // quoted
	ddl                                        []string
	get, put, claim, claimGet, putRelease, rel string
	sweep                                      string
}

func newQueries(table string) queries {
	var q queries
	q.table = pgutil.Quote(table)
	schema, base, qualified := strings.Cut(table, ".")
	if !qualified {
		schema, base = "", table
	}
	// An index lives in its table's schema; CREATE INDEX names it bare.
	q.index = pgutil.Quote(base + indexSuffix)
	if qualified {
		q.index = pgutil.Quote(schema) + "." + q.index
	}
	t := q.table
	q.ddl = []string{
		`CREATE TABLE IF NOT EXISTS ` + t + ` (
			app_id            text NOT NULL,
			waybill_id        text NOT NULL,
			trans_id          text NOT NULL,
			record            jsonb,
			record_expires_at timestamptz,
			claim_owner       text,
			claim_expires_at  timestamptz,
			expires_at        timestamptz NOT NULL GENERATED ALWAYS AS
				(coalesce(greatest(record_expires_at, claim_expires_at), '-infinity')) STORED,
			PRIMARY KEY (app_id, waybill_id, trans_id),
			CHECK ((record IS NULL) = (record_expires_at IS NULL)),
			CHECK ((claim_owner IS NULL) = (claim_expires_at IS NULL))
		)`,
		`CREATE INDEX IF NOT EXISTS ` + pgutil.Quote(base+indexSuffix) + ` ON ` + t + ` (expires_at)`,
	}
	const key = `app_id = $1 AND waybill_id = $2 AND trans_id = $3`
	// after is now() plus $n microseconds.
	after := func(n int) string { return fmt.Sprintf(`now() + $%d::bigint * interval '1 microsecond'`, n) }
	q.get = `SELECT record FROM ` + t + ` WHERE ` + key + ` AND record_expires_at > now()`
	upsertRecord := `INSERT INTO ` + t + ` AS t (app_id, waybill_id, trans_id, record, record_expires_at)
		VALUES ($1, $2, $3, $4::jsonb, ` + after(5) + `)
		ON CONFLICT (app_id, waybill_id, trans_id) DO UPDATE
		SET record = excluded.record, record_expires_at = excluded.record_expires_at`
	q.put = upsertRecord
	// The claim goes to $4 when it is free, lapsed or $4's own; otherwise
	// the row is left as it was and no row comes back.
	takeClaim := `INSERT INTO ` + t + ` AS t (app_id, waybill_id, trans_id, claim_owner, claim_expires_at)
		VALUES ($1, $2, $3, $4, ` + after(5) + `)
		ON CONFLICT (app_id, waybill_id, trans_id) DO UPDATE
		SET claim_owner = excluded.claim_owner, claim_expires_at = excluded.claim_expires_at
		WHERE t.claim_owner IS NULL OR t.claim_expires_at <= now() OR t.claim_owner = excluded.claim_owner`
	q.claim = takeClaim + ` RETURNING true`
	// A won claim brings the record of the row it updated, the latest
	// version; a lost one reads the record like Get (the statement's
	// snapshot), which is all a loser needs.
	q.claimGet = `WITH c AS (` + takeClaim + `
			RETURNING CASE WHEN t.record_expires_at > now() THEN t.record END AS record)
		SELECT EXISTS (SELECT FROM c), CASE WHEN EXISTS (SELECT FROM c) THEN (SELECT record FROM c)
			ELSE (SELECT record FROM ` + t + ` WHERE ` + key + ` AND record_expires_at > now()) END`
	q.putRelease = upsertRecord + `,
		claim_owner = CASE WHEN t.claim_owner = $6 THEN NULL ELSE t.claim_owner END,
		claim_expires_at = CASE WHEN t.claim_owner = $6 THEN NULL ELSE t.claim_expires_at END`
	q.rel = `UPDATE ` + t + ` SET claim_owner = NULL, claim_expires_at = NULL WHERE ` + key + ` AND claim_owner = $4`
	// SKIP LOCKED: a sweep never waits for a writer, nor for another
	// process's sweep; rows it skips are left for the next one.
	q.sweep = `DELETE FROM ` + t + ` WHERE (app_id, waybill_id, trans_id) IN (
			SELECT app_id, waybill_id, trans_id FROM ` + t + ` WHERE expires_at <= now()
			LIMIT $1 FOR UPDATE SKIP LOCKED)
		AND expires_at <= now()`
	return q
}

// record is the stored JSON, the Redis store's format.
type record struct {
	WaybillToken string    `json:"waybill_token"`
	GoodsHash    string    `json:"goods_hash,omitempty"`
	TracedAt     time.Time `json:"traced_at"`
}

func encode(key tracestore.Key, rec tracestore.Record) (string, error) {
	b, err := json.Marshal(record{WaybillToken: rec.WaybillToken, GoodsHash: rec.GoodsHash, TracedAt: rec.TracedAt})
	if err != nil {
		return "", fmt.Errorf("tracestore/postgres: encode %s: %w", key, err)
	}
	return string(b), nil
}

// errNotObject is the cause of an ErrBadRecord whose JSON is not an object
// (null, a string), which json.Unmarshal would not always refuse.
var errNotObject = errors.New("record is not a JSON object")

// decode reads a record column: nil (SQL NULL) is no record.
func decode(key tracestore.Key, b []byte) (tracestore.Record, bool, error) {
	if b == nil {
		return tracestore.Record{}, false, nil
	}
	var r record
	err := errNotObject
	if strings.HasPrefix(string(b), "{") {
		err = json.Unmarshal(b, &r)
	}
	if err != nil {
		return tracestore.Record{}, false, fmt.Errorf("tracestore/postgres: get %s: %w: %w", key, tracestore.ErrBadRecord, err)
	}
	return tracestore.Record{WaybillToken: r.WaybillToken, GoodsHash: r.GoodsHash, TracedAt: r.TracedAt}, true, nil
}

// Get implements tracestore.Store. A record column that does not decode is
// tracestore.ErrBadRecord: Put replaces it.
func (s *Store) Get(ctx context.Context, key tracestore.Key) (tracestore.Record, bool, error) {
	var b []byte
	err := s.db.QueryRowContext(ctx, s.q.get, key.AppID, key.WaybillID, key.TransID).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return tracestore.Record{}, false, nil
	}
	if err != nil {
		return tracestore.Record{}, false, fmt.Errorf("tracestore/postgres: get %s: %w", key, err)
	}
	return decode(key, b)
}

// Put implements tracestore.Store with one upsert, which leaves the key's
// claim alone.
func (s *Store) Put(ctx context.Context, key tracestore.Key, rec tracestore.Record) error {
	b, err := encode(key, rec)
	if err != nil {
		return err
	}
	if _, err := s.db.ExecContext(ctx, s.q.put, key.AppID, key.WaybillID, key.TransID, b, s.cfg.TTL.Microseconds()); err != nil {
		return fmt.Errorf("tracestore/postgres: put %s: %w", key, err)
	}
	s.wrote(ctx)
	return nil
}

// releaseTimeout bounds a release, whatever the caller's context.
const releaseTimeout = 5 * time.Second

// micros is ttl in whole microseconds, rounded, at least one.
func micros(ttl time.Duration) int64 {
	return max(ttl.Round(time.Microsecond), time.Microsecond).Microseconds()
}

// Claim implements tracestore.Store with one upsert that takes the claim
// when it is free, lapsed or owner's own; owner "" becomes 32 random hex
// digits. ttl is rounded to microseconds, at least one. The release func
// clears the claim only while owner still holds it, with ctx's values but
// not its cancellation (for up to five seconds), so that a claim taken
// during shutdown is still released; if PostgreSQL cannot be reached then,
// the claim lapses after ttl.
func (s *Store) Claim(ctx context.Context, key tracestore.Key, owner string, ttl time.Duration) (func(), bool, error) {
	if ttl <= 0 {
		return nil, false, fmt.Errorf("tracestore/postgres: claim %s: ttl %v is not positive", key, ttl)
	}
	if owner == "" {
		var id [16]byte
		_, _ = rand.Read(id[:]) // never fails (crypto/rand)
		owner = hex.EncodeToString(id[:])
	}
	var won bool
	err := s.db.QueryRowContext(ctx, s.q.claim, key.AppID, key.WaybillID, key.TransID, owner, micros(ttl)).Scan(&won)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("tracestore/postgres: claim %s: %w", key, err)
	}
	s.wrote(ctx)
	return s.releaser(ctx, key, owner), true, nil
}

// releaser returns the release func of owner's claim on key.
func (s *Store) releaser(ctx context.Context, key tracestore.Key, owner string) func() {
	return func() {
		// Best effort by design: the claim expires by itself.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		defer cancel()
		_ = s.release(rctx, key, owner)
	}
}

func (s *Store) release(ctx context.Context, key tracestore.Key, owner string) error {
	if _, err := s.db.ExecContext(ctx, s.q.rel, key.AppID, key.WaybillID, key.TransID, owner); err != nil {
		return fmt.Errorf("tracestore/postgres: release claim %s: %w", key, err)
	}
	return nil
}

// ClaimGet implements tracestore.ClaimGetter in one statement: the claim's
// upsert and, in the same round trip, the record. A won claim comes with
// the record as the row holds it once the claim is taken, so a record that
// the previous holder stored before releasing is always seen.
func (s *Store) ClaimGet(ctx context.Context, key tracestore.Key, owner string, ttl time.Duration) (release func(), won bool, rec tracestore.Record, found bool, err error) {
	if ttl <= 0 {
		return nil, false, rec, false, fmt.Errorf("tracestore/postgres: claim %s: ttl %v is not positive", key, ttl)
	}
	if owner == "" {
		return nil, false, rec, false, fmt.Errorf("tracestore/postgres: claim %s: no owner", key)
	}
	var b []byte
	if err := s.db.QueryRowContext(ctx, s.q.claimGet, key.AppID, key.WaybillID, key.TransID, owner, micros(ttl)).Scan(&won, &b); err != nil {
		return nil, false, rec, false, fmt.Errorf("tracestore/postgres: claim %s: %w", key, err)
	}
	if won {
		s.wrote(ctx)
		release = s.releaser(ctx, key, owner)
	}
	rec, found, err = decode(key, b)
	if err != nil && won {
		release()
		return nil, false, tracestore.Record{}, false, err
	}
	return release, won, rec, found, err
}

// PutRelease implements tracestore.PutReleaser in one statement: the
// record's upsert clears owner's claim in the same row, atomically, so a
// Put that fails releases nothing.
func (s *Store) PutRelease(ctx context.Context, key tracestore.Key, rec tracestore.Record, owner string) error {
	b, err := encode(key, rec)
	if err != nil {
		return err
	}
	if _, err := s.db.ExecContext(ctx, s.q.putRelease, key.AppID, key.WaybillID, key.TransID, b, s.cfg.TTL.Microseconds(), owner); err != nil {
		return fmt.Errorf("tracestore/postgres: put %s: %w", key, err)
	}
	s.wrote(ctx)
	return nil
}

// sweepFactor is how many expired rows a sweep may delete per write
// between two sweeps: more than one, since a write makes at most one row,
// so sweeping keeps ahead of expiry.
const sweepFactor = 10

// wrote counts a write and runs the sweep when one is due. The write has
// succeeded, so the sweep's error is not the caller's: the next sweep
// tries again.
func (s *Store) wrote(ctx context.Context) {
	if n := s.cfg.SweepEvery; n > 0 && s.writes.Add(1)%uint64(n) == 0 {
		_, _ = s.sweep(ctx, int64(n)*sweepFactor)
	}
}

// Sweep deletes the rows whose record and claim have both expired, up to
// ten times Config.SweepEvery of them (a thousand by default; or all of
// them when SweepEvery is negative), and returns how many went. Rows other
// statements hold are skipped, for the next sweep. The Store calls it
// itself every SweepEvery writes; expired rows are absent to every other
// method whether swept or not, so Sweep only frees their space.
func (s *Store) Sweep(ctx context.Context) (int64, error) {
	limit := int64(s.cfg.SweepEvery) * sweepFactor
	if limit <= 0 {
		limit = -1
	}
	return s.sweep(ctx, limit)
}

// sweep deletes up to limit expired rows; -1 is no limit.
func (s *Store) sweep(ctx context.Context, limit int64) (int64, error) {
	var arg any = limit
	if limit < 0 {
		arg = nil // LIMIT NULL is no limit
	}
	res, err := s.db.ExecContext(ctx, s.q.sweep, arg)
	if err != nil {
		return 0, fmt.Errorf("tracestore/postgres: sweep %s: %w", s.cfg.Table, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("tracestore/postgres: sweep %s: %w", s.cfg.Table, err)
	}
	return n, nil
}

// String shows the table, never a token.
func (s *Store) String() string { return "tracestore/postgres.Store{" + s.cfg.Table + "}" }
