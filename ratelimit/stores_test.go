package ratelimit_test

import (
	"testing"

	"github.com/waybillkit/waybill/ratelimit"
	"github.com/waybillkit/waybill/ratelimit/internal/storetest"
)

// memoryStores is one MemoryStore k times: limiters of one process share
// their counts by sharing the store.
func memoryStores(_ testing.TB, k int) []ratelimit.Store {
	s := ratelimit.NewMemoryStore()
	stores := make([]ratelimit.Store, k)
	for i := range stores {
		stores[i] = s
	}
	return stores
}

// TestMemoryStore runs the behaviour every store shares on MemoryStore;
// ratelimit/redis runs the same on Redis.
func TestMemoryStore(t *testing.T) { storetest.Run(t, memoryStores) }

func BenchmarkAllowMemory(b *testing.B) { storetest.BenchAllow(b, ratelimit.NewMemoryStore()) }

func BenchmarkAllowMemoryParallel(b *testing.B) {
	storetest.BenchAllowParallel(b, ratelimit.NewMemoryStore())
}
