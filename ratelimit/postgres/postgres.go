// Package postgres keeps the counters of ratelimit's Limiter in PostgreSQL,
// for a monolith whose processes share one PostgreSQL and no Redis:
// limiters in every process share one appid's quotas and rate, as with
// package ratelimit/redis. A program of one process needs only
// ratelimit.MemoryStore.
//
// It uses database/sql only: the program opens the *sql.DB with its driver
// (pgx's stdlib, driver name "pgx", is the one tested), and keeps and
// closes it. No other package of the module imports this one (tests
// aside), so package ratelimit links no database driver.
//
// # Schema
//
// New creates the tables and indexes when they are missing. With P the
// Config.TablePrefix (default waybill_ratelimit), A an appid, D a window's
// id (the local date it began, YYYYMMDD) and O an openid:
//
//	CREATE TABLE P_window (          -- one row per A and D
//		app_id     text    NOT NULL,
//		window_id  text    NOT NULL,
//		calls      bigint  NOT NULL, -- calls of A in D
//		exhausted  boolean NOT NULL, -- set by ExhaustApp
//		expires_at bigint  NOT NULL, -- µs since the epoch: Query.Expire
//		PRIMARY KEY (app_id, window_id)
//	);
//	CREATE INDEX P_window_expires_idx ON P_window (expires_at);
//	CREATE TABLE P_user (            -- one row per A, D and O
//		app_id     text   NOT NULL,
//		window_id  text   NOT NULL,
//		open_id    text   NOT NULL,
//		calls      bigint NOT NULL,  -- calls of O for A in D
//		expires_at bigint NOT NULL,
//		PRIMARY KEY (app_id, window_id, open_id)
//	);
//	CREATE INDEX P_user_expires_idx ON P_user (expires_at);
//	CREATE TABLE P_rate (            -- one row per A
//		app_id text   PRIMARY KEY,
//		tat    bigint NOT NULL       -- the smooth rate's state (GCRA theoretical arrival time, µs)
//	);
//
// A database administrator may create them beforehand; New then only
// checks that they exist, and its role needs no CREATE right.
//
// # Concurrency
//
// Take, Refund and Exhaust each run in one READ COMMITTED transaction that
// first takes a transaction-scoped advisory lock on the appid (a 64-bit
// hash of the prefix and the appid; two appids sharing one only wait for
// each other). The reads that follow see every earlier call's commit, and
// no other call on the appid comes between them and the writes, so
// limiters in any number of processes never exceed a quota, and every
// store decides exactly as ratelimit.MemoryStore does, with the same
// arithmetic in Go. An allowed decision costs five round trips (BEGIN, the
// lock, the read, one statement for every write, COMMIT), a denial four;
// the lock is held from its statement to COMMIT.
//
// # Time and expiry
//
// Every time is the one passed to the Limiter, never the database's clock,
// as the ratelimit.Store contract asks: a window's rows are absent to a
// call whose now is at or past their expires_at (a missing count reads as
// zero), and a tat in the past reads like a missing one. The rows
// themselves are deleted by Sweep, which the Store runs after every
// Config.SweepEvery-th write of its own (allowed decisions and Exhaust),
// in the caller's goroutine with that call's now: one statement deleting
// at most ten times SweepEvery expired rows of each table, skipping rows
// that other statements hold, so that expired rows go faster than writes
// make them, with no timer and no Close.
package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/waybillkit/waybill/internal/pgutil"
	"github.com/waybillkit/waybill/ratelimit"
)

// DefaultTablePrefix begins the tables' names when Config.TablePrefix is
// empty.
const DefaultTablePrefix = "waybill_ratelimit"

// DefaultSweepEvery is Config.SweepEvery when it is zero: a sweep costs one
// statement per hundred writes.
const DefaultSweepEvery = 100

// Config configures a Store. The zero value is ready to use.
type Config struct {
	// TablePrefix begins the tables' names (TablePrefix_window, _user and
	// _rate), optionally schema-qualified ("limits.waybill_ratelimit"):
	// lowercase letters, digits and underscores, so that it needs no
	// quoting in psql either. Limiters share counts when their stores use
	// the same database and prefix. "" means DefaultTablePrefix, in the
	// connection's search_path.
	TablePrefix string
	// SweepEvery is how many writes of this Store go between two sweeps of
	// expired rows (see Store.Sweep). 0 means DefaultSweepEvery; a negative
	// value never sweeps, for a deployment that calls Sweep on its own
	// schedule.
	SweepEvery int
}

func (c *Config) setDefaults() {
	if c.TablePrefix == "" {
		c.TablePrefix = DefaultTablePrefix
	}
	if c.SweepEvery == 0 {
		c.SweepEvery = DefaultSweepEvery
	}
}

// Suffixes of the names made from the prefix; longestSuffix bounds it.
const (
	windowSuffix  = "_window"
	userSuffix    = "_user"
	rateSuffix    = "_rate"
	indexSuffix   = "_expires_idx"
	longestSuffix = len(windowSuffix + indexSuffix)
)

// Validate reports a configuration that cannot work.
func (c *Config) Validate() error {
	if c.TablePrefix == "" {
		return nil
	}
	if err := pgutil.CheckName("TablePrefix", c.TablePrefix, longestSuffix); err != nil {
		return fmt.Errorf("ratelimit/postgres config: %w", err)
	}
	return nil
}

// Store is a ratelimit.Store that keeps the counters in PostgreSQL, so that
// limiters in many processes share them. It is safe for concurrent use.
type Store struct {
	db  *sql.DB
	cfg Config
	q   queries
	// writes counts this Store's writes, for SweepEvery.
	writes atomic.Uint64
}

var _ ratelimit.Store = (*Store)(nil)

// setupTimeout bounds New's look at the tables and its DDL.
const setupTimeout = time.Minute

// New returns a Store on db, which the caller keeps and closes, after
// creating the tables and indexes when they are missing (CREATE … IF NOT
// EXISTS under a transaction-scoped advisory lock, so that processes
// starting together do not trip over each other's DDL). It fails when cfg
// is invalid or db cannot be reached within a minute.
func New(db *sql.DB, cfg Config) (*Store, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if db == nil {
		return nil, errors.New("ratelimit/postgres: nil db")
	}
	s := &Store{db: db, cfg: cfg, q: newQueries(cfg.TablePrefix)}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if err := s.createTables(ctx); err != nil {
		return nil, fmt.Errorf("ratelimit/postgres: creating tables %s_*: %w", cfg.TablePrefix, err)
	}
	return s, nil
}

// hash64 is a 64-bit advisory lock key for parts.
func hash64(parts ...string) int64 {
	h := fnv.New64a()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return int64(h.Sum64())
}

// ddlLock serializes New's DDL across processes.
var ddlLock = pgutil.LockKey("github.com/waybillkit/waybill/ratelimit/postgres DDL")

// createTables creates what the Store needs unless it all exists already.
func (s *Store) createTables(ctx context.Context) error {
	return pgutil.CreateOnce(ctx, s.db, ddlLock, s.q.exists, nil, s.q.ddl)
}

// queries are the Store's statements, with its tables' names in them.
type queries struct {
	exists                    string
	ddl                       []string
	read, write, exhaust, ref string
	sweep                     string
}

func newQueries(prefix string) queries {
	schema, base, qualified := strings.Cut(prefix, ".")
	if !qualified {
		schema, base = "", prefix
	}
	// table quotes a table's or index's full name; an index lives in its
	// table's schema.
	table := func(suffix string) string {
		if qualified {
			return pgutil.Quote(schema) + "." + pgutil.Quote(base+suffix)
		}
		return pgutil.Quote(base + suffix)
	}
	win, usr, rate := table(windowSuffix), table(userSuffix), table(rateSuffix)
	winIdx, usrIdx := base+windowSuffix+indexSuffix, base+userSuffix+indexSuffix
	var q queries
	q.exists = `SELECT to_regclass('` + win + `') IS NOT NULL AND to_regclass('` + usr + `') IS NOT NULL
		AND to_regclass('` + rate + `') IS NOT NULL
		AND to_regclass('` + table(windowSuffix+indexSuffix) + `') IS NOT NULL
		AND to_regclass('` + table(userSuffix+indexSuffix) + `') IS NOT NULL`
	q.ddl = []string{
		`CREATE TABLE IF NOT EXISTS ` + win + ` (
			app_id     text    NOT NULL,
			window_id  text    NOT NULL,
			calls      bigint  NOT NULL,
			exhausted  boolean NOT NULL,
			expires_at bigint  NOT NULL,
			PRIMARY KEY (app_id, window_id)
		)`,
		`CREATE INDEX IF NOT EXISTS ` + pgutil.Quote(winIdx) + ` ON ` + win + ` (expires_at)`,
		`CREATE TABLE IF NOT EXISTS ` + usr + ` (
			app_id     text   NOT NULL,
			window_id  text   NOT NULL,
			open_id    text   NOT NULL,
			calls      bigint NOT NULL,
			expires_at bigint NOT NULL,
			PRIMARY KEY (app_id, window_id, open_id)
		)`,
		`CREATE INDEX IF NOT EXISTS ` + pgutil.Quote(usrIdx) + ` ON ` + usr + ` (expires_at)`,
		`CREATE TABLE IF NOT EXISTS ` + rate + ` (
			app_id text   PRIMARY KEY,
			tat    bigint NOT NULL
		)`,
	}
	// read: $1 appid, $2 window, $3 openid, $4 now, $5 whether to read the
	// openid's count. A row expired at now reads as absent.
	q.read = `SELECT coalesce(w.calls, 0), coalesce(w.exhausted, false),
			coalesce((SELECT u.calls FROM ` + usr + ` u WHERE $5::boolean AND u.app_id = $1::text
				AND u.window_id = $2::text AND u.open_id = $3::text AND u.expires_at > $4::bigint), 0),
			coalesce((SELECT r.tat FROM ` + rate + ` r WHERE r.app_id = $1::text), 0)
		FROM (VALUES (1)) AS one (x)
		LEFT JOIN ` + win + ` w ON w.app_id = $1::text AND w.window_id = $2::text AND w.expires_at > $4::bigint`
	// live is whether alias's row is live at $now, counting from zero
	// again when it is not: the row of a window swept late.
	live := func(alias, now string) string { return alias + `.expires_at > ` + now }
	keepExpiry := func(alias, now string) string {
		return `CASE WHEN ` + live(alias, now) + ` THEN greatest(` + alias + `.expires_at, excluded.expires_at) ELSE excluded.expires_at END`
	}
	// write: $1 appid, $2 window, $3 openid, $4 n, $5 now, $6 expire, $7
	// whether to count the openid, $8 whether to set the tat, $9 the tat.
	// It returns the counts after the call.
	q.write = `WITH win AS (
			INSERT INTO ` + win + ` AS w (app_id, window_id, calls, exhausted, expires_at)
			VALUES ($1::text, $2::text, $4::bigint, false, $6::bigint)
			ON CONFLICT (app_id, window_id) DO UPDATE SET
				calls = CASE WHEN ` + live("w", "$5::bigint") + ` THEN w.calls ELSE 0 END + excluded.calls,
				exhausted = w.exhausted AND ` + live("w", "$5::bigint") + `,
				expires_at = ` + keepExpiry("w", "$5::bigint") + `
			RETURNING w.calls),
		usr AS (
			INSERT INTO ` + usr + ` AS u (app_id, window_id, open_id, calls, expires_at)
			SELECT $1::text, $2::text, $3::text, $4::bigint, $6::bigint WHERE $7::boolean
			ON CONFLICT (app_id, window_id, open_id) DO UPDATE SET
				calls = CASE WHEN ` + live("u", "$5::bigint") + ` THEN u.calls ELSE 0 END + excluded.calls,
				expires_at = ` + keepExpiry("u", "$5::bigint") + `
			RETURNING u.calls),
		rate AS (
			INSERT INTO ` + rate + ` AS r (app_id, tat) SELECT $1::text, $9::bigint WHERE $8::boolean
			ON CONFLICT (app_id) DO UPDATE SET tat = excluded.tat)
		SELECT (SELECT calls FROM win), coalesce((SELECT calls FROM usr), 0)`
	// exhaust: $1 appid, $2 window, $3 now, $4 expire.
	q.exhaust = `INSERT INTO ` + win + ` AS w (app_id, window_id, calls, exhausted, expires_at)
		VALUES ($1::text, $2::text, 0, true, $4::bigint)
		ON CONFLICT (app_id, window_id) DO UPDATE SET
			calls = CASE WHEN ` + live("w", "$3::bigint") + ` THEN w.calls ELSE 0 END,
			exhausted = true,
			expires_at = ` + keepExpiry("w", "$3::bigint")
	// ref: $1 appid, $2 window, $3 openid ("": none), $4 n.
	q.ref = `WITH win AS (
			UPDATE ` + win + ` SET calls = calls - least(calls, $4::bigint)
			WHERE app_id = $1::text AND window_id = $2::text AND calls > 0)
		UPDATE ` + usr + ` SET calls = calls - least(calls, $4::bigint)
		WHERE $3::text <> '' AND app_id = $1::text AND window_id = $2::text AND open_id = $3::text AND calls > 0`
	// sweep: $1 now, $2 the most rows of each table (NULL: all). SKIP
	// LOCKED: a sweep never waits for a decision, nor for another process's
	// sweep; rows it skips are left for the next one.
	q.sweep = `WITH win AS (
			DELETE FROM ` + win + ` WHERE (app_id, window_id) IN (
				SELECT app_id, window_id FROM ` + win + ` WHERE expires_at <= $1::bigint
				LIMIT $2::bigint FOR UPDATE SKIP LOCKED)
			AND expires_at <= $1::bigint RETURNING 1),
		usr AS (
			DELETE FROM ` + usr + ` WHERE (app_id, window_id, open_id) IN (
				SELECT app_id, window_id, open_id FROM ` + usr + ` WHERE expires_at <= $1::bigint
				LIMIT $2::bigint FOR UPDATE SKIP LOCKED)
			AND expires_at <= $1::bigint RETURNING 1),
		rate AS (
			DELETE FROM ` + rate + ` WHERE app_id IN (
				SELECT app_id FROM ` + rate + ` WHERE tat <= $1::bigint
				LIMIT $2::bigint FOR UPDATE SKIP LOCKED)
			AND tat <= $1::bigint RETURNING 1)
		SELECT (SELECT count(*) FROM win) + (SELECT count(*) FROM usr) + (SELECT count(*) FROM rate)`
	return q
}

// locked runs fn in a READ COMMITTED transaction holding appid's advisory
// lock, and commits. READ COMMITTED is asked for, whatever the server's
// default: each statement after the lock must see the commits of the calls
// that held it before.
func (s *Store) locked(ctx context.Context, appid string, fn func(tx *sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, hash64(s.cfg.TablePrefix, appid)); err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit()
}

// Take implements ratelimit.Store: ratelimit.MemoryStore.Take's decision,
// on the rows read under the appid's lock, and one statement that writes
// what an allowed call counts.
func (s *Store) Take(ctx context.Context, q ratelimit.Query) (ratelimit.Outcome, error) {
	var o ratelimit.Outcome
	countUser := q.UserQuota >= 0
	err := s.locked(ctx, q.AppID, func(tx *sql.Tx) error {
		var tat int64
		if err := tx.QueryRowContext(ctx, s.q.read, q.AppID, q.Window, q.OpenID, q.Now, countUser).
			Scan(&o.App, &o.Exhausted, &o.User, &tat); err != nil {
			return err
		}
		switch {
		case o.Exhausted || (q.AppQuota >= 0 && o.App+q.N > q.AppQuota):
			o.Reason = ratelimit.ReasonAppDaily
			return nil
		case countUser && o.User+q.N > q.UserQuota:
			o.Reason = ratelimit.ReasonUserDaily
			return nil
		}
		o.At = q.Now
		if q.Interval > 0 {
			// A reservation may take tokens up to MaxWait ahead of the
			// bucket; its calls go when the last of them comes.
			tat = max(tat, q.Now) + q.N*q.Interval
			limit := q.Burst * q.Interval
			if tat-q.Now > limit+q.MaxWait {
				o.Reason, o.Retry, o.At = ratelimit.ReasonRate, tat-limit, 0
				return nil
			}
			o.At = max(q.Now, tat-limit)
		}
		// The counts come back from the rows, so that they tell what the
		// table holds even after a sweep that raced this call.
		if err := tx.QueryRowContext(ctx, s.q.write, q.AppID, q.Window, q.OpenID, q.N, q.Now, q.Expire,
			countUser, q.Interval > 0, tat).Scan(&o.App, &o.User); err != nil {
			return err
		}
		o.Allowed = true
		return nil
	})
	if err != nil {
		return ratelimit.Outcome{}, fmt.Errorf("ratelimit/postgres: take for appid %s: %w", q.AppID, err)
	}
	if o.Allowed {
		s.wrote(ctx, q.Now)
	}
	return o, nil
}

// Refund implements ratelimit.Store in one statement under the appid's
// lock. It leaves counts at zero in place: the sweep removes them with
// their window.
func (s *Store) Refund(ctx context.Context, appid, openid, window string, n int64) error {
	err := s.locked(ctx, appid, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, s.q.ref, appid, window, openid, n)
		return err
	})
	if err != nil {
		return fmt.Errorf("ratelimit/postgres: refund for appid %s: %w", appid, err)
	}
	return nil
}

// Exhaust implements ratelimit.Store with one upsert under the appid's
// lock; the window's row lives until at least expire.
func (s *Store) Exhaust(ctx context.Context, appid, window string, now, expire int64) error {
	err := s.locked(ctx, appid, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, s.q.exhaust, appid, window, now, expire)
		return err
	})
	if err != nil {
		return fmt.Errorf("ratelimit/postgres: exhaust appid %s: %w", appid, err)
	}
	s.wrote(ctx, now)
	return nil
}

// sweepFactor is how many expired rows of each table a sweep may delete
// per write between two sweeps: more than one, since a write makes at most
// one row of each, so sweeping keeps ahead of expiry.
const sweepFactor = 10

// wrote counts a write and runs the sweep, with the write's now, when one
// is due. The write has succeeded, so the sweep's error is not the
// caller's: the next sweep tries again.
func (s *Store) wrote(ctx context.Context, now int64) {
	if n := s.cfg.SweepEvery; n > 0 && s.writes.Add(1)%uint64(n) == 0 {
		_, _ = s.sweep(ctx, now, int64(n)*sweepFactor)
	}
}

// Sweep deletes the rows that have expired at now (windows whose
// expires_at is at or before it, with their openids' counts, and rates
// whose tat is), up to ten times Config.SweepEvery rows of each table (a
// thousand by default; all of them when SweepEvery is negative), and
// returns how many went. Rows other statements hold are skipped, for the
// next sweep. The Store calls it itself every SweepEvery writes, with the
// write's time; a deployment that sweeps on its own passes time.Now().
// Expired rows are absent to Take whether swept or not, so Sweep only
// frees their space.
func (s *Store) Sweep(ctx context.Context, now time.Time) (int64, error) {
	limit := int64(s.cfg.SweepEvery) * sweepFactor
	if limit <= 0 {
		limit = -1
	}
	return s.sweep(ctx, now.UnixMicro(), limit)
}

// sweep deletes up to limit expired rows of each table; -1 is no limit.
func (s *Store) sweep(ctx context.Context, now, limit int64) (int64, error) {
	var arg any = limit
	if limit < 0 {
		arg = nil // LIMIT NULL is no limit
	}
	var n int64
	if err := s.db.QueryRowContext(ctx, s.q.sweep, now, arg).Scan(&n); err != nil {
		return 0, fmt.Errorf("ratelimit/postgres: sweep %s_*: %w", s.cfg.TablePrefix, err)
	}
	return n, nil
}
