package tracestore

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// DefaultMemoryEntries is MemoryConfig.MaxEntries when it is zero.
const DefaultMemoryEntries = 100_000

// MemoryConfig configures a Memory store. The zero value is ready to use.
type MemoryConfig struct {
	// MaxEntries bounds the records kept; the least recently used (read or
	// written) goes first. 0 means DefaultMemoryEntries.
	MaxEntries int
	// TTL is how long a record lives after its last Put; reading it does not
	// extend it. 0 means DefaultTTL.
	TTL time.Duration
	// Now is the clock, called under the store's lock. Nil means time.Now.
	Now func() time.Time
}

func (c *MemoryConfig) setDefaults() {
	if c.MaxEntries == 0 {
		c.MaxEntries = DefaultMemoryEntries
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate reports a configuration that cannot work.
func (c *MemoryConfig) Validate() error {
	var errs []error
	if c.MaxEntries < 0 {
		errs = append(errs, fmt.Errorf("MaxEntries %d is negative", c.MaxEntries))
	}
	if c.TTL < 0 {
		errs = append(errs, fmt.Errorf("TTL %v is negative", c.TTL))
	}
	if len(errs) > 0 {
		return fmt.Errorf("memory store config: %w", errors.Join(errs...))
	}
	return nil
}

// Memory is a Store for one process: a bounded LRU of records, each living
// TTL after its Put, and claims that hold only within the process. Every
// operation is O(1) (amortized for claims). It is safe for concurrent use.
type Memory struct {
	cfg MemoryConfig

	mu      sync.Mutex
	entries map[Key]*memEntry
	lru     list.List // of *memEntry, most recently used first
	byAge   list.List // of *memEntry, oldest Put first: expiry order, as TTL is uniform

	claims    map[Key]memClaim
	claimSeq  uint64
	sweepSize int // len(claims) at which expired claims are swept next
}

type memEntry struct {
	key     Key
	rec     Record
	expires time.Time
	lruElem *list.Element
	ageElem *list.Element
}

type memClaim struct {
	owner   string
	expires time.Time
}

const minClaimSweep = 64

// NewMemory builds a Memory store. It panics if cfg.Validate fails, as a
// negative size or TTL is a programming error.
func NewMemory(cfg MemoryConfig) *Memory {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		panic("tracestore: " + err.Error())
	}
	return &Memory{
		cfg:       cfg,
		entries:   make(map[Key]*memEntry),
		claims:    make(map[Key]memClaim),
		sweepSize: minClaimSweep,
	}
}

var _ Store = (*Memory)(nil)

// Get implements Store. A hit makes the record the most recently used.
func (s *Memory) Get(ctx context.Context, key Key) (Record, bool, error) {
	if err := ctx.Err(); err != nil {
		return Record{}, false, fmt.Errorf("trace store get: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropExpired(s.cfg.Now())
	e, ok := s.entries[key]
	if !ok {
		return Record{}, false, nil
	}
	s.lru.MoveToFront(e.lruElem)
	return e.rec, true, nil
}

// Put implements Store. When the store is full, the least recently used
// record makes room.
func (s *Memory) Put(ctx context.Context, key Key, rec Record) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("trace store put: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Now()
	s.dropExpired(now)
	expires := now.Add(s.cfg.TTL)
	if e, ok := s.entries[key]; ok {
		e.rec, e.expires = rec, expires
		s.lru.MoveToFront(e.lruElem)
		s.byAge.MoveToBack(e.ageElem)
		return nil
	}
	e := &memEntry{key: key, rec: rec, expires: expires}
	e.lruElem = s.lru.PushFront(e)
	e.ageElem = s.byAge.PushBack(e)
	s.entries[key] = e
	for len(s.entries) > s.cfg.MaxEntries {
		s.remove(s.lru.Back().Value.(*memEntry))
	}
	return nil
}

// Len is the number of live records.
func (s *Memory) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropExpired(s.cfg.Now())
	return len(s.entries)
}

// dropExpired removes the records whose time is up, oldest first, so expired
// records free their memory without waiting to be evicted.
func (s *Memory) dropExpired(now time.Time) {
	for el := s.byAge.Front(); el != nil; el = s.byAge.Front() {
		e := el.Value.(*memEntry)
		if now.Before(e.expires) {
			return
		}
		s.remove(e)
	}
}

func (s *Memory) remove(e *memEntry) {
	s.lru.Remove(e.lruElem)
	s.byAge.Remove(e.ageElem)
	delete(s.entries, e.key)
}

// Claim implements Store. The claim holds within this Memory store only.
func (s *Memory) Claim(ctx context.Context, key Key, owner string, ttl time.Duration) (func(), bool, error) {
	if ttl <= 0 {
		return nil, false, fmt.Errorf("trace store claim %s: ttl %v is not positive", key, ttl)
	}
	if err := ctx.Err(); err != nil {
		return nil, false, fmt.Errorf("trace store claim %s: %w", key, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Now()
	if owner == "" {
		s.claimSeq++
		owner = "\x00" + strconv.FormatUint(s.claimSeq, 10) // no caller can name it
	}
	if c, held := s.claims[key]; held && now.Before(c.expires) && c.owner != owner {
		return nil, false, nil
	}
	s.claims[key] = memClaim{owner: owner, expires: now.Add(ttl)}
	s.sweepClaims(now)
	release := func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		// The owner's: a later take by the same owner is released by it too,
		// as the Redis store's compare-and-delete on the owner does.
		if c, held := s.claims[key]; held && c.owner == owner {
			delete(s.claims, key)
		}
	}
	return release, true, nil
}

// sweepClaims forgets expired claims that nobody released (a holder that
// crashed), each time the claim count doubles: amortized O(1).
func (s *Memory) sweepClaims(now time.Time) {
	if len(s.claims) < s.sweepSize {
		return
	}
	for k, c := range s.claims {
		if !now.Before(c.expires) {
			delete(s.claims, k)
		}
	}
	s.sweepSize = max(2*len(s.claims), minClaimSweep)
}
