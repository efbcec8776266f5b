// Package redisdedup is a waybill.TraceStore on Redis, for consumers in many
// processes (or machines) sharing one topic: a redelivered event finds the
// token another process stored, and only one process at a time traces a key.
//
// It is a package of its own so that the waybill package does not depend on a
// Redis client.
//
// Keys, under Config.Prefix, with k the waybill.DedupKey's String
// ("appid:waybill_id:trans_id", each part with ':' escaped, so exactly two
// colons):
//
//	<prefix><k>          the record: JSON {"waybill_token":…,"goods_hash":…,
//	                     "traced_at":…}, with a Redis TTL of Config.TTL
//	                     from its last Put
//	<prefix>claim:<k>    a claim: the owner id (the caller's, or a random one)
//	                     with a PX ttl, renewed and removed only by its owner
//	                     (compare-and-set, compare-and-delete); its three
//	                     colons keep it apart from every record key
//
// Each command touches one key, so the store works on Redis Cluster too.
package redisdedup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/waybillkit/waybill"
	"github.com/waybillkit/waybill/internal/redislock"
)

// DefaultPrefix namespaces the keys when Config.Prefix is empty.
const DefaultPrefix = "waybill:trace:"

// Config configures a Store. The zero value is ready to use.
type Config struct {
	// Prefix is put before every key, so that several systems (or several
	// waybill deployments) can share a Redis. "" means DefaultPrefix.
	Prefix string
	// TTL is how long a record lives after its last Put: the window in
	// which a redelivered event still finds its token. Redis keeps it in
	// milliseconds. 0 means waybill.DefaultTraceTTL (30 days).
	TTL time.Duration
}

func (c *Config) setDefaults() {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.TTL == 0 {
		c.TTL = waybill.DefaultTraceTTL
	}
}

// Validate reports a configuration that cannot work.
func (c *Config) Validate() error {
	if c.TTL < 0 {
		return fmt.Errorf("redisdedup config: TTL %v is negative", c.TTL)
	}
	if c.TTL > 0 && c.TTL < time.Millisecond {
		return fmt.Errorf("redisdedup config: TTL %v is below Redis's millisecond", c.TTL)
	}
	return nil
}

// Store is a waybill.TraceStore on Redis. It is safe for concurrent use.
type Store struct {
	rdb redis.UniversalClient
	cfg Config
}

var _ waybill.TraceStore = (*Store)(nil)

// New returns a Store using client, which the caller keeps and closes.
func New(client redis.UniversalClient, cfg Config) (*Store, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if client == nil {
		return nil, errors.New("redisdedup: nil client")
	}
	return &Store{rdb: client, cfg: cfg}, nil
}

// record is the stored JSON. Its field names are the storage format shared by
// every version of this package.
type record struct {
	WaybillToken string    `json:"waybill_token"`
	GoodsHash    string    `json:"goods_hash,omitempty"`
	TracedAt     time.Time `json:"traced_at"`
}

func (s *Store) recordKey(key waybill.DedupKey) string { return s.cfg.Prefix + key.String() }
func (s *Store) claimKey(key waybill.DedupKey) string  { return s.cfg.Prefix + "claim:" + key.String() }

// Get implements waybill.TraceStore.
func (s *Store) Get(ctx context.Context, key waybill.DedupKey) (waybill.TraceRecord, bool, error) {
	b, err := s.rdb.Get(ctx, s.recordKey(key)).Bytes()
	if errors.Is(err, redis.Nil) {
		return waybill.TraceRecord{}, false, nil
	}
	if err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE") {
		// Another kind of value sits on the key: Put's SET replaces it.
		return waybill.TraceRecord{}, false, fmt.Errorf("redisdedup: get %s: %w: %w", key, waybill.ErrBadRecord, err)
	}
	if err != nil {
		return waybill.TraceRecord{}, false, fmt.Errorf("redisdedup: get %s: %w", key, err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return waybill.TraceRecord{}, false, fmt.Errorf("redisdedup: decode %s: %w: %w", key, waybill.ErrBadRecord, err)
	}
	return waybill.TraceRecord{WaybillToken: r.WaybillToken, GoodsHash: r.GoodsHash, TracedAt: r.TracedAt}, true, nil
}

// Put implements waybill.TraceStore with one SET PX.
func (s *Store) Put(ctx context.Context, key waybill.DedupKey, rec waybill.TraceRecord) error {
	b, err := json.Marshal(record{WaybillToken: rec.WaybillToken, GoodsHash: rec.GoodsHash, TracedAt: rec.TracedAt})
	if err != nil {
		return fmt.Errorf("redisdedup: encode %s: %w", key, err)
	}
	if err := s.rdb.Set(ctx, s.recordKey(key), b, s.cfg.TTL).Err(); err != nil {
		return fmt.Errorf("redisdedup: set %s: %w", key, err)
	}
	return nil
}

// releaseTimeout bounds a release, whatever the client's own timeouts.
const releaseTimeout = 5 * time.Second

// Claim implements waybill.TraceStore: SET NX PX with a random owner id
// when owner is "", otherwise one script that takes a free claim or renews
// owner's own; ttl is rounded to milliseconds, at least one. The release func runs its
// compare-and-delete with ctx's values but not its cancellation (for up to
// five seconds), so a claim taken during shutdown is still released; if Redis
// cannot be reached then, the claim lapses after ttl.
func (s *Store) Claim(ctx context.Context, key waybill.DedupKey, owner string, ttl time.Duration) (func(), bool, error) {
	if ttl <= 0 {
		return nil, false, fmt.Errorf("redisdedup: claim %s: ttl %v is not positive", key, ttl)
	}
	ttl = max(ttl.Round(time.Millisecond), time.Millisecond)
	release, ok, err := redislock.AcquireAs(ctx, s.rdb, s.claimKey(key), owner, ttl)
	if err != nil {
		return nil, false, fmt.Errorf("redisdedup: claim %s: %w", key, err)
	}
	if !ok {
		return nil, false, nil
	}
	return func() {
		// Best effort by design: the claim expires by itself.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		defer cancel()
		_ = release(rctx)
	}, true, nil
}

// String shows the prefix, never a token.
func (s *Store) String() string { return "redisdedup.Store{" + s.cfg.Prefix + "}" }
