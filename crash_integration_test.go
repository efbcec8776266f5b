package waybill

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/testkafka"
	"github.com/waybillkit/waybill/internal/testredis"
	"github.com/waybillkit/waybill/kafka"
	"github.com/waybillkit/waybill/tracestore"
	traceredis "github.com/waybillkit/waybill/tracestore/redis"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

// TestIntegrationCrashRecoveryOneCallPerWaybill runs the cmd/waybill binary
// on a real Kafka 4.x broker (scripts/kafka.sh) with its trace store, tokens
// and quotas in a real Redis (scripts/redis.sh), against the WeChat sandbox.
// It publishes N = 60 events for D = 40 distinct orders: 20 are exact
// duplicates (same order, appid, waybill and trans_id, another message UUID),
// interleaved with the rest. The first process is killed with SIGKILL while
// one of its trace_waybill calls is held open in the sandbox (every call
// takes 100 ms, so others are in flight too) and after its group committed
// some progress: the crash leaves events committed, events handled but not
// yet committed (the auto-commit runs every second), and calls in flight. A
// second process in the same consumer group finishes the job.
//
// The bound. A waybill is called again after the crash only if the first
// process called WeChat for it but died before storing the answer in Redis:
// once stored, every redelivery or duplicate finds the token. Call K the
// number of the first process's calls whose waybill had no record in Redis
// when it died, counted from the sandbox's log and Redis after the kill. Then
// WeChat receives at most D + K trace_waybill calls, and a waybill at most
// 1 + its share of K. K is at least 1 (the held call) and at most the number
// of partitions: the service handles one event per partition at a time, and
// this scenario has no faults that would retry a call. Everything else a
// crash redelivers (events done but not committed, duplicates) costs no call.
//
// It also shows that every order gets its waybill.traced (every copy with
// the waybill's one token, the one stored in Redis), that nothing is
// dead-lettered, that the second process reused the access tokens the first
// stored in Redis, and that SIGTERM stops the service cleanly.
func TestIntegrationCrashRecoveryOneCallPerWaybill(t *testing.T) {
	const (
		partitions = 3
		distinct   = 40 // D
		duplicates = 20
		killAfter  = 12 // trace_waybill calls that reach WeChat before the crash
		appA       = "wx1a2b3c4d5e6f7a8b"
		appB       = "wx9f8e7d6c5b4a3f2e"
	)
	brokers := testkafka.Brokers(t)
	rdb := testredis.Client(t)
	prefix := testredis.Prefix(t)
	in, traced, dead := testkafka.Topic(t, "shipped"), testkafka.Topic(t, "traced"), testkafka.Topic(t, "dead")
	for _, topic := range append([]string{in, traced, dead}, ParkingConfig{}.Topics(in)...) {
		testkafka.CreateTopic(t, brokers, topic, partitions)
	}
	bin := buildService(t)

	// WeChat, slow enough that calls are in flight, and holding one call open
	// once killAfter have arrived from both appids, until the process that
	// made it is dead.
	hold := &holdPoint{after: killAfter, apps: 2, reached: make(chan struct{}), released: make(chan struct{})}
	sandbox := wechattest.NewServer(wechattest.Config{})
	defer sandbox.Close()
	defer hold.release() // before Close, which waits for the held call
	sandbox.Inject(wechattest.Fault{Endpoint: "trace_waybill", Latency: 100 * time.Millisecond, Match: hold.match})
	secrets := map[string]string{appA: "secret-a", appB: "secret-b"}
	var lines strings.Builder
	for appid, secret := range secrets {
		sandbox.AddApp(appid, secret)
		fmt.Fprintf(&lines, "%s=%s\n", appid, secret)
	}
	secretsFile := filepath.Join(t.TempDir(), "secrets")
	require.NoError(t, os.WriteFile(secretsFile, []byte(lines.String()), 0o600))

	// The events: order i, and after order j+7 a copy of every even order j
	// (the last copies at the end).
	events := make([]event.OrderShipped, distinct)
	for i := range events {
		appid := appA
		if i%2 == 1 {
			appid = appB
		}
		events[i] = event.OrderShipped{
			Version: event.SchemaVersion, OrderID: fmt.Sprintf("crash-%02d", i), AppID: appid,
			OpenID: fmt.Sprintf("o-buyer-%d", i%5), TransID: fmt.Sprintf("4200001234202611%08d", i),
			WaybillID: fmt.Sprintf("SF%010d", 7100000000+i), DeliveryID: "SF", ReceiverPhone: "13800138000",
			Goods:     []event.Goods{{Name: "龙井 明前茶", ImageURL: "https://img.example.cn/tea.jpg"}},
			ShippedAt: time.Date(2026, 11, 26, 9, 30, 0, 0, time.UTC),
		}
	}
	var order []int // indexes into events, in publish order
	for i := range distinct {
		order = append(order, i)
		if j := i - 7; j >= 0 && j%2 == 0 {
			order = append(order, j)
		}
	}
	for j := distinct - 7; j < distinct; j++ {
		if j%2 == 0 {
			order = append(order, j)
		}
	}
	require.Len(t, order, distinct+duplicates)

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	out := observe(ctx, t, kafka.Config{Brokers: brokers, ConsumerGroup: in + "-observer"}, traced, dead)
	publishEvents(t, brokers, in, events, order)

	group := in + "-group"
	args := []string{
		"-brokers", strings.Join(brokers, ","), "-group", group,
		"-input-topic", in, "-traced-topic", traced, "-dead-letter-topic", dead,
		"-wechat-url", sandbox.URL, "-secrets-file", secretsFile,
		"-redis", testredis.Addr(t), "-redis-prefix", prefix,
		// A crashed process's claim must not hold the restart up for the
		// default minute; 3 s still far exceeds one call here.
		"-claim-ttl", "3s",
		"-shutdown-timeout", "20s",
	}

	// First process: killed mid-call.
	first := startService(t, bin, "first", args)
	select {
	case <-hold.reached:
	case <-first.done:
		t.Fatalf("first process exited before the crash point: %v", first.err)
	case <-ctx.Done():
		t.Fatalf("WeChat saw %d trace_waybill calls, not %d, before the deadline", len(sandbox.CallsTo("trace_waybill")), killAfter)
	}
	// While that partition is stuck, let the others commit some progress, so
	// that the crash leaves events committed, events done but not committed,
	// and calls in flight.
	waitCommitted(ctx, t, brokers, group, in, partitions, "commit before the crash", func(c []int64) bool { return sumOffsets(c) > 0 })
	require.NoError(t, first.cmd.Process.Signal(syscall.SIGKILL))
	<-first.done
	committed := waitCommitted(ctx, t, brokers, group, in, partitions, "", func([]int64) bool { return true })

	// K: the first process's calls whose answer it never stored.
	store, err := traceredis.New(rdb, traceredis.Config{Prefix: prefix + "trace:"})
	require.NoError(t, err)
	beforeKill := sandbox.CallsTo("trace_waybill")
	unstored := map[string]int{} // waybill → calls of the first process without a record
	k := 0
	for _, c := range beforeKill {
		key := tracestore.Key{AppID: c.AppID, WaybillID: c.Field("waybill_id"), TransID: c.Field("trans_id")}
		_, ok, err := store.Get(ctx, key)
		require.NoError(t, err)
		if !ok {
			unstored[key.WaybillID]++
			k++
		}
	}
	hold.release()
	t.Logf("killed with %d of %d events committed, after %d trace_waybill calls, %d of them unstored (K)", sumOffsets(committed), len(order), len(beforeKill), k)
	require.GreaterOrEqual(t, len(beforeKill), killAfter)
	assert.Less(t, sumOffsets(committed), int64(len(order)), "the crash must come before the work is done")
	assert.GreaterOrEqual(t, k, 1, "the held call was in flight at the kill")
	assert.LessOrEqual(t, k, partitions, "at most one event per partition is in flight")

	// Second process: same group, finishes the job.
	second := startService(t, bin, "second", args)
	require.NoError(t, out.wait(ctx, func(s seen) bool { return len(s.tokens) == distinct || s.dead > 0 }),
		"every order must come out traced")
	end := endOffsets(t, brokers, in, partitions)
	waitCommitted(ctx, t, brokers, group, in, partitions, "every event handled", func(c []int64) bool { return slices.Equal(c, end) })
	require.NoError(t, second.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-second.done:
	case <-ctx.Done():
		t.Fatal("second process did not stop after SIGTERM")
	}
	require.NoError(t, second.err, "SIGTERM must stop the service cleanly")
	assert.Regexp(t, `msg="waybill stopped" traced=\d+ dead_lettered=0 `, second.logText(t))

	// Every order traced, each copy with its waybill's one token, the one in
	// Redis; no dead letter, neither seen nor on the topic.
	snapshot := out.snapshot()
	assert.Zero(t, snapshot.dead)
	assert.Zero(t, sumOffsets(endOffsets(t, brokers, dead, partitions)), "dead letters on %s", dead)
	for _, ev := range events {
		toks := snapshot.tokens[ev.OrderID]
		if !assert.NotEmpty(t, toks, "order %s has no waybill.traced", ev.OrderID) {
			continue
		}
		rec, ok, err := store.Get(ctx, tracestore.Key{AppID: ev.AppID, WaybillID: ev.WaybillID, TransID: ev.TransID})
		require.NoError(t, err)
		require.True(t, ok, "no trace record for order %s", ev.OrderID)
		for _, tok := range toks {
			assert.Equal(t, rec.WaybillToken, tok, "order %s", ev.OrderID)
		}
	}

	// The bound: D + K calls in all, 1 + its unstored calls per waybill.
	calls := sandbox.CallsTo("trace_waybill")
	perWaybill := map[string]int{}
	for _, c := range calls {
		perWaybill[c.Field("waybill_id")]++
	}
	t.Logf("N=%d events, D=%d waybills, K=%d: WeChat received %d trace_waybill calls", len(order), distinct, k, len(calls))
	assert.LessOrEqual(t, len(calls), distinct+k)
	assert.Len(t, perWaybill, distinct)
	for _, ev := range events {
		n := perWaybill[ev.WaybillID]
		assert.GreaterOrEqual(t, n, 1, "waybill %s", ev.WaybillID)
		assert.LessOrEqual(t, n, 1+unstored[ev.WaybillID], "waybill %s", ev.WaybillID)
	}
	// The restarted process took the access tokens from Redis.
	assert.Len(t, sandbox.CallsTo("stable_token"), len(secrets), "one stable_token fetch per appid across both processes")
}

// holdPoint is a sandbox Fault.Match that holds the first trace_waybill call
// arriving once `after` calls have come from `apps` appids (so that both
// appids have their access token in Redis), until release.
type holdPoint struct {
	after, apps int
	reached     chan struct{}
	released    chan struct{}

	mu      sync.Mutex
	n       int
	seen    map[string]bool
	fired   bool
	relOnce sync.Once
}

func (h *holdPoint) match(c *wechattest.Call) bool {
	h.mu.Lock()
	h.n++
	if h.seen == nil {
		h.seen = map[string]bool{}
	}
	h.seen[c.AppID] = true
	fire := !h.fired && h.n >= h.after && len(h.seen) >= h.apps
	h.fired = h.fired || fire
	h.mu.Unlock()
	if fire {
		close(h.reached)
		<-h.released
	}
	return true // every call gets the latency
}

func (h *holdPoint) release() { h.relOnce.Do(func() { close(h.released) }) }

// waitCommitted polls the offsets group has committed on topic (0 for a
// partition without a commit) until cond holds, and returns them.
func waitCommitted(ctx context.Context, t *testing.T, brokers []string, group, topic string, partitions int32, what string, cond func(committed []int64) bool) []int64 {
	t.Helper()
	admin, err := sarama.NewClusterAdmin(brokers, testkafka.Config())
	require.NoError(t, err)
	defer admin.Close()
	ids := make([]int32, partitions)
	for p := range partitions {
		ids[p] = p
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		resp, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: ids})
		require.NoError(t, err)
		committed := make([]int64, partitions)
		for p := range partitions {
			if b := resp.GetBlock(topic, p); b != nil {
				committed[p] = max(b.Offset, 0)
			}
		}
		if cond(committed) {
			return committed
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("group %s on %s: %s: %v (committed %v)", group, topic, what, ctx.Err(), committed)
		}
	}
}

// sumOffsets is the number of records the offsets cover.
func sumOffsets(v []int64) (n int64) {
	for _, x := range v {
		n += x
	}
	return n
}

// endOffsets returns the high-water mark of each partition of topic.
func endOffsets(t *testing.T, brokers []string, topic string, partitions int32) []int64 {
	t.Helper()
	client, err := sarama.NewClient(brokers, testkafka.Config())
	require.NoError(t, err)
	defer client.Close()
	end := make([]int64, partitions)
	for p := range partitions {
		end[p], err = client.GetOffset(topic, p, sarama.OffsetNewest)
		require.NoError(t, err)
	}
	return end
}
