// Package redis is a tracestore.Store on Redis, for consumers in many
// processes (or machines) sharing one topic: a redelivered event finds the
// token another process stored, and only one process at a time traces a key.
//
// cmd/waybill imports it when given a Redis address, and so can any program
// that shares a trace store between processes; no other package of the
// module imports it (tests aside), so neither the waybill package nor
// package tracestore depends on a Redis client.
//
// Keys, under Config.Prefix, with k the tracestore.Key's String
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
// On one Redis (a *redis.Client, Sentinel's included) ClaimGet and
// PutRelease pipeline their two commands, one round trip each; a Cluster or
// Ring client could run them on two nodes in either order, so there they
// go one after the other.
package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/waybillkit/waybill/internal/redisutil"
	"github.com/waybillkit/waybill/tracestore"
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
	// milliseconds. 0 means tracestore.DefaultTTL (30 days).
	TTL time.Duration
}

func (c *Config) setDefaults() {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.TTL == 0 {
		c.TTL = tracestore.DefaultTTL
	}
}

// Validate reports a configuration that cannot work.
func (c *Config) Validate() error {
	if c.TTL < 0 {
		return fmt.Errorf("tracestore/redis config: TTL %v is negative", c.TTL)
	}
	if c.TTL > 0 && c.TTL < time.Millisecond {
		return fmt.Errorf("tracestore/redis config: TTL %v is below Redis's millisecond", c.TTL)
	}
	return nil
}

// Store is a tracestore.Store on Redis. It is safe for concurrent use.
type Store struct {
	rdb goredis.UniversalClient
	cfg Config
	// inOrder: rdb runs a pipeline on one connection, in order.
	inOrder bool
}

var (
	_ tracestore.Store       = (*Store)(nil)
	_ tracestore.ClaimGetter = (*Store)(nil)
	_ tracestore.PutReleaser = (*Store)(nil)
)

// New returns a Store using client, which the caller keeps and closes.
func New(client goredis.UniversalClient, cfg Config) (*Store, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if client == nil {
		return nil, errors.New("tracestore/redis: nil client")
	}
	_, inOrder := client.(*goredis.Client)
	return &Store{rdb: client, cfg: cfg, inOrder: inOrder}, nil
}

// record is the stored JSON. Its field names are the storage format shared by
// every version of this package (and of redisdedup before it).
type record struct {
	WaybillToken string    `json:"waybill_token"`
	GoodsHash    string    `json:"goods_hash,omitempty"`
	TracedAt     time.Time `json:"traced_at"`
}

func (s *Store) recordKey(key tracestore.Key) string { return s.cfg.Prefix + key.String() }
func (s *Store) claimKey(key tracestore.Key) string  { return s.cfg.Prefix + "claim:" + key.String() }

// Get implements tracestore.Store. A value that is not a record's JSON, or a
// key of another type, is tracestore.ErrBadRecord: Put's SET replaces it.
func (s *Store) Get(ctx context.Context, key tracestore.Key) (tracestore.Record, bool, error) {
	return s.decode(key, s.rdb.Get(ctx, s.recordKey(key)))
}

// Put implements tracestore.Store with one SET PX.
func (s *Store) Put(ctx context.Context, key tracestore.Key, rec tracestore.Record) error {
	b, err := json.Marshal(record{WaybillToken: rec.WaybillToken, GoodsHash: rec.GoodsHash, TracedAt: rec.TracedAt})
	if err != nil {
		return fmt.Errorf("tracestore/redis: encode %s: %w", key, err)
	}
	if err := s.rdb.Set(ctx, s.recordKey(key), b, s.cfg.TTL).Err(); err != nil {
		return fmt.Errorf("tracestore/redis: set %s: %w", key, err)
	}
	return nil
}

// releaseTimeout bounds a release, whatever the client's own timeouts.
const releaseTimeout = 5 * time.Second

// Claim implements tracestore.Store: SET NX PX with a random owner id when
// owner is "", otherwise one script that takes a free claim or renews
// owner's own; ttl is rounded to milliseconds, at least one. The release
// func runs its compare-and-delete with ctx's values but not its
// cancellation (for up to five seconds), so a claim taken during shutdown is
// still released; if Redis cannot be reached then, the claim lapses after
// ttl.
func (s *Store) Claim(ctx context.Context, key tracestore.Key, owner string, ttl time.Duration) (func(), bool, error) {
	if ttl <= 0 {
		return nil, false, fmt.Errorf("tracestore/redis: claim %s: ttl %v is not positive", key, ttl)
	}
	ttl = max(ttl.Round(time.Millisecond), time.Millisecond)
	release, ok, err := redisutil.AcquireAs(ctx, s.rdb, s.claimKey(key), owner, ttl)
	if err != nil {
		return nil, false, fmt.Errorf("tracestore/redis: claim %s: %w", key, err)
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

// ClaimGet implements tracestore.ClaimGetter: the claim's script, then the
// GET, in one pipeline on one Redis (one after the other on a Cluster). The
// two are not atomic, which the handler does not need: the GET runs after
// the claim, so a record Put before the claim was won is seen.
func (s *Store) ClaimGet(ctx context.Context, key tracestore.Key, owner string, ttl time.Duration) (release func(), won bool, rec tracestore.Record, found bool, err error) {
	if ttl <= 0 {
		return nil, false, rec, false, fmt.Errorf("tracestore/redis: claim %s: ttl %v is not positive", key, ttl)
	}
	if owner == "" {
		return nil, false, rec, false, fmt.Errorf("tracestore/redis: claim %s: no owner", key)
	}
	if !s.inOrder {
		return tracestore.ClaimThenGet(ctx, s, key, owner, ttl)
	}
	claim := redisutil.Owned{Key: s.claimKey(key), Owner: owner}
	var acq *goredis.Cmd
	var get *goredis.StringCmd
	redisutil.Pipelined(ctx, s.rdb, func(p goredis.Pipeliner, eval bool) {
		acq = redisutil.PipeAcquire(ctx, p, claim, ttl, eval)
		get = p.Get(ctx, s.recordKey(key))
	})
	n, err := acq.Int64()
	if err != nil {
		return nil, false, rec, false, fmt.Errorf("tracestore/redis: claim %s: %w", key, err)
	}
	if won = n == 1; won {
		release = func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
			defer cancel()
			redisutil.Pipelined(rctx, s.rdb, func(p goredis.Pipeliner, eval bool) { redisutil.PipeRelease(rctx, p, claim, eval) })
		}
	}
	rec, found, err = s.decode(key, get)
	if err != nil && won {
		release()
		return nil, false, tracestore.Record{}, false, err
	}
	return release, won, rec, found, err
}

// decode reads a record from its GET's answer.
func (s *Store) decode(key tracestore.Key, get *goredis.StringCmd) (tracestore.Record, bool, error) {
	var r record
	ok, err := redisutil.DecodeJSON(get, &r)
	if errors.Is(err, redisutil.ErrUnreadable) {
		return tracestore.Record{}, false, fmt.Errorf("tracestore/redis: get %s: %w: %w", key, tracestore.ErrBadRecord, err)
	}
	if err != nil {
		return tracestore.Record{}, false, fmt.Errorf("tracestore/redis: get %s: %w", key, err)
	}
	if !ok {
		return tracestore.Record{}, false, nil
	}
	return tracestore.Record{WaybillToken: r.WaybillToken, GoodsHash: r.GoodsHash, TracedAt: r.TracedAt}, true, nil
}

// PutRelease implements tracestore.PutReleaser: the SET and the claim's
// compare-and-delete in one pipeline on one Redis (one after the other on a
// Cluster, the release only after a SET that succeeded). Should the SET
// fail on its own in a pipeline (Redis out of memory refuses a SET, not a
// DEL), the claim is released all the same, and a handler that takes it
// next traces again. A release that failed is an error too, so the caller
// can release again.
func (s *Store) PutRelease(ctx context.Context, key tracestore.Key, rec tracestore.Record, owner string) error {
	claim := redisutil.Owned{Key: s.claimKey(key), Owner: owner}
	if !s.inOrder {
		if err := s.Put(ctx, key, rec); err != nil {
			return err
		}
		rel := redisutil.Pipelined(ctx, s.rdb, func(p goredis.Pipeliner, eval bool) { redisutil.PipeRelease(ctx, p, claim, eval) })
		if err := rel[0].Err(); err != nil && !errors.Is(err, goredis.Nil) {
			return fmt.Errorf("tracestore/redis: release claim %s: %w", key, err)
		}
		return nil
	}
	b, err := json.Marshal(record{WaybillToken: rec.WaybillToken, GoodsHash: rec.GoodsHash, TracedAt: rec.TracedAt})
	if err != nil {
		return fmt.Errorf("tracestore/redis: encode %s: %w", key, err)
	}
	var set *goredis.StatusCmd
	var rel *goredis.Cmd
	redisutil.Pipelined(ctx, s.rdb, func(p goredis.Pipeliner, eval bool) {
		set = p.Set(ctx, s.recordKey(key), b, s.cfg.TTL)
		rel = redisutil.PipeRelease(ctx, p, claim, eval)
	})
	if err := set.Err(); err != nil {
		return fmt.Errorf("tracestore/redis: set %s: %w", key, err)
	}
	if err := rel.Err(); err != nil && !errors.Is(err, goredis.Nil) {
		return fmt.Errorf("tracestore/redis: release claim %s: %w", key, err)
	}
	return nil
}

// String shows the prefix, never a token.
func (s *Store) String() string { return "tracestore/redis.Store{" + s.cfg.Prefix + "}" }
