// Package testpostgres gives tests a real PostgreSQL server; the tests of
// every package with a PostgreSQL part import it.
//
// URL uses POSTGRES_URL when it is set; otherwise it runs
// scripts/postgres.sh start once per test binary, which installs postgresql
// if needed and starts (or reuses) a private server on 127.0.0.1. The server
// outlives the test binary so that parallel packages share it;
// scripts/postgres.sh stop ends it. A test that cannot get PostgreSQL fails;
// it is never skipped.
package testpostgres

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver

	"github.com/waybillkit/waybill/internal/testservice"
)

// startTimeout bounds scripts/postgres.sh start, which may have to install
// postgresql from Debian's packages on a fresh machine.
const startTimeout = 5 * time.Minute

var (
	once   sync.Once
	base   string
	urlErr error
	seq    atomic.Uint64
)

// URL returns the URL of a running PostgreSQL server, starting one on the
// first call in this process. It calls t.Fatalf when none can be had.
func URL(t testing.TB) string {
	t.Helper()
	once.Do(func() { base, urlErr = resolve() })
	if urlErr != nil {
		t.Fatalf("testpostgres: no PostgreSQL server (set POSTGRES_URL or make scripts/postgres.sh start work): %v", urlErr)
	}
	return base
}

func resolve() (string, error) {
	if u := os.Getenv("POSTGRES_URL"); u != "" {
		return u, nil
	}
	return testservice.Start("scripts/postgres.sh", startTimeout)
}

var unsafeChars = regexp.MustCompile(`[^a-z0-9_]+`)

// Schema creates a schema no other test uses, dropped with everything in it
// when the test ends, and returns its name and a URL whose connections use
// it as their search_path: tables a test (or watermill-sql) creates without
// a schema name land there.
func Schema(t testing.TB) (name, schemaURL string) {
	t.Helper()
	u := URL(t)
	tag := unsafeChars.ReplaceAllString(strings.ToLower(t.Name()), "_")
	if len(tag) > 30 {
		tag = tag[:30]
	}
	name = fmt.Sprintf("t_%s_%d_%d", tag, os.Getpid(), seq.Add(1))
	admin := open(t, u)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.ExecContext(ctx, `CREATE SCHEMA `+name); err != nil {
		t.Fatalf("testpostgres: CREATE SCHEMA %s on %s: %v", name, u, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(ctx, `DROP SCHEMA `+name+` CASCADE`); err != nil {
			t.Errorf("testpostgres: DROP SCHEMA %s: %v", name, err)
		}
	})
	parsed, err := url.Parse(u)
	if err != nil {
		t.Fatalf("testpostgres: %q: %v", u, err)
	}
	q := parsed.Query()
	q.Set("search_path", name)
	parsed.RawQuery = q.Encode()
	return name, parsed.String()
}

// DB returns a pool on a fresh schema (see Schema), closed when the test ends.
func DB(t testing.TB) *sql.DB {
	t.Helper()
	_, u := Schema(t)
	return open(t, u)
}

// Open returns a pool on u, checked with a ping and closed when the test
// ends; a second pool on a Schema URL is a second process's view.
func Open(t testing.TB, u string) *sql.DB { t.Helper(); return open(t, u) }

func open(t testing.TB, u string) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", u)
	if err != nil {
		t.Fatalf("testpostgres: open %s: %v", u, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		from := "started by scripts/postgres.sh; see its log next to .cache/postgres/url"
		if os.Getenv("POSTGRES_URL") != "" {
			from = "from POSTGRES_URL; unset it to let scripts/postgres.sh start a server"
		}
		t.Fatalf("testpostgres: ping %s (%s): %v", u, from, err)
	}
	// Cleanups run last-in first-out: pools opened after the schema close
	// before it is dropped.
	t.Cleanup(func() { _ = db.Close() })
	return db
}
