// Package storetest is the behaviour every ratelimit.Store shares, run
// through a Limiter against each store so that MemoryStore and the Redis
// store cannot drift apart: the decision table, reservations, and limiters
// racing over shared counters. The tests of package ratelimit (on
// MemoryStore) and of ratelimit/redis import it; nothing else does.
package storetest

import (
	"testing"

	"github.com/waybillkit/waybill/ratelimit"
)

// Stores makes k stores over the same, empty counters: one MemoryStore k
// times, or k Redis stores each with its own client (its own connections,
// as separate processes would have) and one key prefix. The counters must
// be gone, or at least unseen by any other call, when t ends.
type Stores func(t testing.TB, k int) []ratelimit.Store

// one returns a single store over fresh counters.
func (s Stores) one(t testing.TB) ratelimit.Store { return s(t, 1)[0] }

// Run runs the whole suite, each part a subtest, against the stores that
// stores makes. It neither skips nor runs in parallel.
func Run(t *testing.T, stores Stores) {
	for _, part := range []struct {
		name string
		run  func(*testing.T, Stores)
	}{
		{"Decisions", testDecisions},
		{"DecisionsReserveZeroIsAllowN", testDecisionsReserveZeroIsAllowN},
		{"ReserveHugeMaxWait", testReserveHugeMaxWait},
		{"ConcurrentQuotas", testConcurrentQuotas},
		{"ConcurrentRefunds", testConcurrentRefunds},
		{"ConcurrentReservations", testConcurrentReservations},
	} {
		t.Run(part.name, func(t *testing.T) { part.run(t, stores) })
	}
}
