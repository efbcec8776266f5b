package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
)

// probeTimeout bounds each network step of a lag read or a ping, so that a
// scrape or a readiness probe answers within seconds when the cluster is
// unreachable instead of sarama's 30 s defaults.
const probeTimeout = 5 * time.Second

// PartitionLag is how far a consumer group is behind on one partition.
type PartitionLag struct {
	Topic     string
	Partition int32
	// Committed is the group's committed offset; -1 when it has none.
	Committed int64
	// HighWatermark is the offset the next record will get.
	HighWatermark int64
	// Lag is HighWatermark minus Committed; without a commit, the records
	// retained (HighWatermark minus the oldest offset), which is what a
	// group starting from the oldest offset, as ours do, has to read.
	Lag int64
}

// LagReader reads consumer groups' lag over one long-lived connection, for
// metrics and readiness. Safe for concurrent use.
type LagReader struct {
	client  sarama.Client
	admin   sarama.ClusterAdmin
	pinging atomic.Bool
}

// NewLagReader connects to the cluster c names.
func NewLagReader(c Config) (*LagReader, error) {
	sc, err := c.SaramaConfig(func(sc *sarama.Config) {
		sc.Metadata.AllowAutoTopicCreation = false
		sc.Net.DialTimeout, sc.Net.ReadTimeout, sc.Net.WriteTimeout = probeTimeout, probeTimeout, probeTimeout
		sc.Metadata.Retry.Max = 1
		sc.Metadata.Timeout = probeTimeout
	})
	if err != nil {
		return nil, err
	}
	client, err := sarama.NewClient(c.Brokers, sc)
	if err != nil {
		return nil, c.Explain("kafka lag reader", err)
	}
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		_ = client.Close()
		return nil, c.Explain("kafka lag reader", err)
	}
	return &LagReader{client: client, admin: admin}, nil
}

// Lag reports group's lag on every partition of topics. sarama's calls
// cannot be cancelled: ctx is checked between them, each bounded by 5 s.
func (r *LagReader) Lag(ctx context.Context, group string, topics []string) ([]PartitionLag, error) {
	parts := make(map[string][]int32, len(topics))
	for _, t := range topics {
		ps, err := r.client.Partitions(t)
		if err != nil {
			return nil, fmt.Errorf("lag of %s: partitions of %s: %w", group, t, err)
		}
		parts[t] = ps
	}
	committed, err := r.admin.ListConsumerGroupOffsets(group, parts)
	if err != nil {
		return nil, fmt.Errorf("lag of %s: committed offsets: %w", group, err)
	}
	if committed.Err != sarama.ErrNoError {
		return nil, fmt.Errorf("lag of %s: committed offsets: %w", group, committed.Err)
	}
	var out []PartitionLag
	for _, t := range topics {
		for _, p := range parts[t] {
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("lag of %s: %w", group, err)
			}
			high, err := r.client.GetOffset(t, p, sarama.OffsetNewest)
			if err != nil {
				return nil, fmt.Errorf("lag of %s: high watermark of %s/%d: %w", group, t, p, err)
			}
			l := PartitionLag{Topic: t, Partition: p, Committed: -1, HighWatermark: high}
			if b := committed.GetBlock(t, p); b != nil {
				if b.Err != sarama.ErrNoError {
					// Not "no commit": counting the whole retention as lag
					// would raise false alarms.
					return nil, fmt.Errorf("lag of %s: committed offset of %s/%d: %w", group, t, p, b.Err)
				}
				if b.Offset >= 0 {
					l.Committed = b.Offset
				}
			}
			if l.Committed >= 0 {
				l.Lag = max(0, high-l.Committed)
			} else {
				oldest, err := r.client.GetOffset(t, p, sarama.OffsetOldest)
				if err != nil {
					return nil, fmt.Errorf("lag of %s: oldest offset of %s/%d: %w", group, t, p, err)
				}
				l.Lag = max(0, high-oldest)
			}
			out = append(out, l)
		}
	}
	return out, nil
}

// Ping reports whether a broker answers a metadata request for topics
// before ctx ends. One ping runs at a time: while one hangs (sarama's
// request cannot be cancelled), the next ones fail at once instead of
// piling up.
func (r *LagReader) Ping(ctx context.Context, topics ...string) error {
	if !r.pinging.CompareAndSwap(false, true) {
		return errors.New("kafka: the previous metadata request has not been answered")
	}
	done := make(chan error, 1)
	go func() {
		defer r.pinging.Store(false)
		done <- r.client.RefreshMetadata(topics...)
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("kafka: %w", err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("kafka: no metadata answer: %w", ctx.Err())
	}
}

// Close closes the connection.
func (r *LagReader) Close() error { return r.client.Close() }
