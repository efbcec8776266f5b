package kafka

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/internal/testkafka"
)

// envCrashChild makes the test binary a consumer to be killed: it names the
// journal file, and the brokers and topic follow.
const envCrashChild = "WAYBILL_ORDERED_CRASH_CHILD"

func TestMain(m *testing.M) {
	if path := os.Getenv(envCrashChild); path != "" {
		crashChild(path, strings.Split(os.Getenv("CHILD_BROKERS"), ","), os.Getenv("CHILD_TOPIC"))
		return
	}
	os.Exit(m.Run())
}

// crashChild consumes topic until killed, writing "partition offset" to
// the journal for each message before it acks it, so that every line is on
// disk (in the page cache, which outlives the process) before its offset
// can be committed.
func crashChild(path string, brokers []string, topic string) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		panic(err)
	}
	sub, err := NewOrderedSubscriber(Config{Brokers: brokers, ConsumerGroup: topic}, OrderedConfig{Concurrency: 8}, nil)
	if err != nil {
		panic(err)
	}
	msgs, err := sub.Subscribe(context.Background(), topic)
	if err != nil {
		panic(err)
	}
	for m := range msgs {
		go func() {
			time.Sleep(rand.N(30 * time.Millisecond))
			p, o, _ := Position(m)
			if _, err := fmt.Fprintf(f, "%d %d\n", p, o); err != nil {
				panic(err)
			}
			m.Ack()
		}()
	}
}

// TestOrderedKill9: a consumer killed mid-run has committed no offset past
// a message it had not finished, and a restarted one handles everything
// that was left: every record at least once, none lost.
func TestOrderedKill9(t *testing.T) {
	t.Parallel()
	brokers, topic := orderedTopic(t, 3)
	n := produceSeq(t, brokers, topic, 300, 30)
	path := t.TempDir() + "/journal"
	run := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), envCrashChild+"="+path, "CHILD_BROKERS="+strings.Join(brokers, ","), "CHILD_TOPIC="+topic)
		cmd.Stderr = os.Stderr
		require.NoError(t, cmd.Start())
		return cmd
	}
	type pos struct {
		p int32
		o int64
	}
	read := func() map[pos]int {
		f, err := os.Open(path)
		if os.IsNotExist(err) {
			return nil
		}
		require.NoError(t, err)
		defer f.Close()
		got := map[pos]int{}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var x pos
			if _, err := fmt.Sscan(sc.Text(), &x.p, &x.o); err == nil {
				got[x]++
			}
		}
		return got
	}
	waitFor := func(what string, cond func(map[pos]int) bool) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for !cond(read()) {
			require.True(t, time.Now().Before(deadline), "%s: not after 2 min", what)
			time.Sleep(20 * time.Millisecond)
		}
	}

	child := run()
	t.Cleanup(func() { _ = child.Process.Kill() })
	// Past a commit (every second), with messages in flight.
	waitFor("a quarter handled", func(m map[pos]int) bool { return len(m) >= n/4 })
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		total := int64(0)
		for _, o := range committedOffsets(t, brokers, topic, 3) {
			total += o
		}
		if total > 0 {
			break
		}
		require.True(t, time.Now().Before(deadline), "no commit after a minute")
	}
	require.NoError(t, child.Process.Signal(syscall.SIGKILL))
	_ = child.Wait()

	handled := read()
	committed := committedOffsets(t, brokers, topic, 3)
	total := int64(0)
	for p, next := range committed {
		total += next
		for o := range next {
			assert.Positive(t, handled[pos{p, o}], "partition %d offset %d was committed (next %d) but never finished", p, o, next)
		}
	}
	require.Positive(t, total, "the killed consumer had committed something")
	require.Less(t, len(handled), n, "killed mid-run")
	t.Logf("killed after %d finished; %d committed", len(handled), total)

	ends := endOffsets(t, brokers, topic, 3)
	child = run()
	defer func() { _ = child.Process.Kill(); _ = child.Wait() }()
	waitFor("everything handled", func(m map[pos]int) bool {
		for p, end := range ends {
			for o := range end {
				if m[pos{p, o}] == 0 {
					return false
				}
			}
		}
		return true
	})
	again := 0
	for _, c := range read() {
		again += c - 1
	}
	t.Logf("%d records, %d handled twice (finished but not committed at the kill)", n, again)
}

// committedOffsets reads the group's committed offset of each partition.
func committedOffsets(t *testing.T, brokers []string, topic string, partitions int32) map[int32]int64 {
	t.Helper()
	admin, err := sarama.NewClusterAdmin(brokers, testkafka.Config())
	require.NoError(t, err)
	defer admin.Close()
	ps := make([]int32, partitions)
	for i := range ps {
		ps[i] = int32(i)
	}
	resp, err := admin.ListConsumerGroupOffsets(topic, map[string][]int32{topic: ps})
	require.NoError(t, err)
	out := map[int32]int64{}
	for _, p := range ps {
		b := resp.GetBlock(topic, p)
		require.NotNil(t, b)
		out[p] = max(b.Offset, 0)
	}
	return out
}

// endOffsets reads each partition's high-water mark.
func endOffsets(t *testing.T, brokers []string, topic string, partitions int32) map[int32]int64 {
	t.Helper()
	client, err := sarama.NewClient(brokers, testkafka.Config())
	require.NoError(t, err)
	defer client.Close()
	out := map[int32]int64{}
	for p := range partitions {
		o, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		require.NoError(t, err)
		out[p] = o
	}
	return out
}

// TestOrderedDrainOnClose: at Close, a message that never finishes holds
// the subscriber for DrainTimeout (the default, 30 s) and no longer; its
// context is then cancelled; an ack made during the drain is committed,
// and the next consumer gets the unfinished message and those behind it,
// nothing before it.
func TestOrderedDrainOnClose(t *testing.T) {
	t.Parallel()
	brokers, topic := orderedTopic(t, 1)
	produceSeq(t, brokers, topic, 6, 1) // offsets 0..5, keys key-000..key-005
	kc := Config{Brokers: brokers, ConsumerGroup: topic}
	sub, err := NewOrderedSubscriber(kc, OrderedConfig{Concurrency: 4}, nil)
	require.NoError(t, err)
	msgs, err := sub.Subscribe(context.Background(), topic)
	require.NoError(t, err)

	// Offsets 0 and 1 are acked at once, 2 only once the drain began, 3
	// never; 4 and 5 take the freed slots but are never taken from the
	// channel, and are dropped at the drain.
	var late, stuck *message.Message
	for range 4 {
		m := receive(t, msgs)
		_, o, _ := Position(m)
		switch o {
		case 2:
			late = m
		case 3:
			stuck = m
		default:
			m.Ack()
		}
	}
	require.NotNil(t, late)
	require.NotNil(t, stuck)
	closed := make(chan struct{})
	go func() { _ = sub.Close(); close(closed) }()
	time.Sleep(200 * time.Millisecond)
	late.Ack()
	select {
	case <-closed:
		t.Fatal("Close returned while a message was in flight, before DrainTimeout")
	case <-time.After(5 * time.Second):
	}
	select {
	case <-closed:
	case <-time.After(40 * time.Second):
		t.Fatal("Close still waiting past DrainTimeout")
	}
	assert.Error(t, stuck.Context().Err(), "the stuck message's context was cancelled")

	assert.Equal(t, map[int32]int64{0: 3}, committedOffsets(t, brokers, topic, 1), "committed up to the unfinished message, the drain's ack included")
	next, err := NewOrderedSubscriber(kc, OrderedConfig{}, nil)
	require.NoError(t, err)
	defer next.Close()
	msgs, err = next.Subscribe(context.Background(), topic)
	require.NoError(t, err)
	var got []int64
	for range 3 {
		m := receive(t, msgs)
		_, o, _ := Position(m)
		got = append(got, o)
		m.Ack()
	}
	assert.ElementsMatch(t, []int64{3, 4, 5}, got)
}

// receive takes the next message, failing the test after a minute.
func receive(t *testing.T, msgs <-chan *message.Message) *message.Message {
	t.Helper()
	select {
	case m, ok := <-msgs:
		require.True(t, ok, "the channel closed")
		return m
	case <-time.After(time.Minute):
		t.Fatal("no message within a minute")
		return nil
	}
}
