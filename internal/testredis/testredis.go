// Package testredis gives tests a real Redis server; the tests of every
// package with a Redis store import it.
//
// Addr uses REDIS_ADDR when it is set; otherwise it runs scripts/redis.sh
// start once per test binary, which installs redis-server if needed and
// starts (or reuses) a private server on 127.0.0.1. The server outlives the
// test binary so that parallel packages share it; scripts/redis.sh stop ends
// it. A test that cannot get Redis fails; it is never skipped.
package testredis

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/waybillkit/waybill/internal/testservice"
)

// startTimeout bounds scripts/redis.sh start, which may have to install
// redis-server from Debian's packages on a fresh machine.
const startTimeout = 5 * time.Minute

var (
	once    sync.Once
	addr    string
	addrErr error
	seq     atomic.Uint64
)

// Addr returns the host:port of a running Redis server, starting one on the
// first call in this process. It calls t.Fatalf when none can be had.
func Addr(t testing.TB) string {
	t.Helper()
	once.Do(func() { addr, addrErr = resolve() })
	if addrErr != nil {
		t.Fatalf("testredis: no Redis server (set REDIS_ADDR or make scripts/redis.sh start work): %v", addrErr)
	}
	return addr
}

func resolve() (string, error) {
	if a := os.Getenv("REDIS_ADDR"); a != "" {
		return a, nil
	}
	return testservice.Start("scripts/redis.sh", startTimeout)
}

// Client returns a client of the server at Addr, checked with PING and closed
// when the test ends.
func Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: Addr(t)})
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		from := "started by scripts/redis.sh; see .cache/redis/redis.log"
		if os.Getenv("REDIS_ADDR") != "" {
			from = "from REDIS_ADDR; unset it to let scripts/redis.sh start a server"
		}
		t.Fatalf("testredis: PING %s (%s): %v", c.Options().Addr, from, err)
	}
	return c
}

var unsafeKeyChars = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// Prefix returns a key prefix that no other test, in this process or
// another, uses; every key under it is deleted when the test ends. The
// prefix contains no glob metacharacters.
func Prefix(t testing.TB) string {
	t.Helper()
	name := unsafeKeyChars.ReplaceAllString(t.Name(), "_")
	p := fmt.Sprintf("test:%s:%d.%d.%d:", name, os.Getpid(), time.Now().UnixNano(), seq.Add(1))
	c := Client(t)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := deleteKeys(ctx, c, p); err != nil {
			t.Errorf("testredis: deleting keys %s*: %v", p, err)
		}
	})
	return p
}

func deleteKeys(ctx context.Context, c *redis.Client, prefix string) error {
	iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	var batch []string
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 1000 {
			if err := c.Unlink(ctx, batch...).Err(); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	if err := iter.Err(); err != nil {
		return err
	}
	if len(batch) > 0 {
		return c.Unlink(ctx, batch...).Err()
	}
	return nil
}
