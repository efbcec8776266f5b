package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/waybillkit/waybill"
	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/demo"
	"github.com/waybillkit/waybill/internal/testkafka"
	"github.com/waybillkit/waybill/kafka"
	"github.com/waybillkit/waybill/replay"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

// deadLettered starts an in-process Kafka and lets the real handler
// dead-letter demo events (handled directly, so the input topic starts
// empty): SportShop's lack the plugin permission (48001), and demo.Cases adds
// an invalid one and a rejected buyer. It returns the broker address.
func deadLettered(t *testing.T) string {
	t.Helper()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3,
		event.OrderShippedTopic, event.WaybillTracedTopic, deadletter.DefaultTopic))
	require.NoError(t, err)
	t.Cleanup(cluster.Close)
	brokers := cluster.ListenAddrs()

	sandbox, err := demo.NewSandbox()
	require.NoError(t, err)
	t.Cleanup(sandbox.Close)
	sandbox.Inject(wechattest.Fault{Endpoint: "trace_waybill", Errcode: 48001,
		Match: func(c *wechattest.Call) bool { return c.AppID == demo.SportShop }})
	client := sandbox.Client

	pub, err := kafka.NewPublisher(kafka.Config{Brokers: brokers}, watermill.NopLogger{})
	require.NoError(t, err)
	defer pub.Close()
	h, err := waybill.NewHandler(waybill.Config{Client: client, Publisher: pub})
	require.NoError(t, err)
	for _, c := range demo.Cases("CMD", 6) {
		msg := message.NewMessage(watermill.NewUUID(), c.Payload)
		msg.Metadata.Set(deadletter.HeaderKey, c.OrderID)
		require.NoError(t, h.Handle(msg))
	}
	require.Equal(t, int64(4), h.Stats().DeadLettered, "two 48001, one invalid, one rejected buyer")
	return brokers[0]
}

// records counts the records of topic.
func records(t *testing.T, broker, topic string) int64 {
	t.Helper()
	client, err := sarama.NewClient([]string{broker}, testkafka.Config())
	require.NoError(t, err)
	defer client.Close()
	parts, err := client.Partitions(topic)
	require.NoError(t, err)
	var n int64
	for _, p := range parts {
		end, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		require.NoError(t, err)
		n += end
	}
	return n
}

func runReplayCmd(t *testing.T, tty bool, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	err = runReplay(ctx, args, env(nil), &out, &errOut, tty)
	return out.String(), errOut.String(), err
}

func TestReplayDryRunPrintsWhatWouldMove(t *testing.T) {
	broker := deadLettered(t)
	stdout, stderr, err := runReplayCmd(t, false, "-brokers", broker, "-reason", "configuration", "-errcode", "48001", "-dry-run")
	require.NoError(t, err)

	var would []string
	for _, line := range strings.Split(stdout, "\n") {
		if strings.HasPrefix(line, "would replay") {
			would = append(would, line)
		}
	}
	require.Len(t, would, 2, stdout)
	for _, line := range would {
		assert.Contains(t, line, "appid="+demo.SportShop)
		assert.Contains(t, line, "reason=configuration errcode=48001")
		assert.Contains(t, line, "replays=0 -> "+event.OrderShippedTopic)
	}
	assert.Contains(t, stdout, "4 scanned, 2 would replay, 2 skipped by filter, 0 skipped over the replay limit, 0 invalid")
	assert.Contains(t, stdout, "  configuration      2 scanned, 2 would replay, 0 skipped by filter")
	assert.Contains(t, stdout, "  permanent          1 scanned, 0 would replay, 1 skipped by filter")
	assert.Contains(t, stderr, "progress: 4/4 scanned, 2 would replay, 2 filtered, 0 over limit, 0 invalid\n",
		"plain progress lines when stderr is not a terminal")
	assert.NotContains(t, stderr, "\r")
	assert.Zero(t, records(t, broker, event.OrderShippedTopic), "a dry run moves nothing")
}

func TestReplayDrawsABarAndResumes(t *testing.T) {
	broker := deadLettered(t)
	args := []string{"-brokers", broker, "-appid", demo.SportShop, "-rate", "100"}
	stdout, stderr, err := runReplayCmd(t, true, args...)
	require.NoError(t, err)
	assert.Contains(t, stdout, "4 scanned, 2 replayed, 2 skipped by filter")
	assert.NotContains(t, stdout, "would replay")
	assert.Contains(t, stderr, "\r\033[K[")
	assert.True(t, strings.HasSuffix(stderr, "[##############################] 4/4 scanned, 2 replayed, 2 filtered, 0 over limit, 0 invalid\n"),
		"the final bar stays on its own line: %q", stderr)
	assert.Equal(t, int64(2), records(t, broker, event.OrderShippedTopic))

	// The same command again resumes after what it did: nothing left.
	stdout, _, err = runReplayCmd(t, true, args...)
	require.NoError(t, err)
	assert.Contains(t, stdout, "0 scanned, 0 replayed")
	assert.Equal(t, int64(2), records(t, broker, event.OrderShippedTopic))
}

func TestReplayBadFlags(t *testing.T) {
	cases := map[string][]string{
		"errcode not a number": {"-errcode", "48001,x"},
		"since not a time":     {"-since", "yesterday"},
		"empty time range":     {"-since", "2026-11-02T00:00:00Z", "-until", "2026-11-01T00:00:00Z"},
		"negative rate":        {"-rate", "-5"},
		"no brokers":           {"-brokers", " , "},
		"stray argument":       {"order.shipped.dead"},
		"unknown flag":         {"-topics", "x"},
	}
	for name, args := range cases {
		t.Run(name, func(t *testing.T) {
			stdout, stderr, err := runReplayCmd(t, false, args...)
			assert.True(t, errors.Is(err, errUsage), "%v", err)
			assert.Empty(t, stdout, "nothing runs")
			assert.NotEmpty(t, stderr, "the problem is said")
		})
	}
}

func TestReplayFlagsBuildTheConfig(t *testing.T) {
	var stderr bytes.Buffer
	cfg, _, err := parseReplayFlags([]string{"-brokers", "127.0.0.1:1,127.0.0.1:2", "-topic", "d", "-to", "o",
		"-reason", "configuration,permanent", "-errcode", "48001, 61007", "-appid", "wxA", "-order-id", "O1,O2",
		"-since", "2026-11-01T00:00:00Z", "-until", "2026-11-02T08:00:00+08:00", "-dry-run", "-rate", "50",
		"-max-replays", "5", "-batch", "10", "-group", "g"}, env(nil), &stderr)
	require.NoError(t, err, stderr.String())
	assert.Equal(t, []string{"127.0.0.1:1", "127.0.0.1:2"}, cfg.Kafka.Brokers)
	assert.Equal(t, "g", cfg.Kafka.ConsumerGroup)
	assert.Equal(t, "d", cfg.Topic)
	assert.Equal(t, "o", cfg.To)
	assert.Equal(t, replay.Filter{
		Reasons:  []deadletter.Reason{deadletter.ReasonConfiguration, deadletter.ReasonPermanent},
		Errcodes: []int{48001, 61007}, AppIDs: []string{"wxA"}, OrderIDs: []string{"O1", "O2"},
		Since: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), Until: time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC),
	}, normalized(cfg.Filter))
	assert.True(t, cfg.DryRun)
	assert.Equal(t, 50.0, cfg.Rate)
	assert.Equal(t, 5, cfg.MaxReplays)
	assert.Equal(t, 10, cfg.Batch)
}

// normalized puts the filter's times in UTC, for comparison.
func normalized(f replay.Filter) replay.Filter {
	f.Since, f.Until = f.Since.UTC(), f.Until.UTC()
	return f
}

// TestReplayExitStatus: 0 when the replay completed, 1 when it failed (the
// error printed), 2 for bad flags.
func TestReplayExitStatus(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, deadletter.DefaultTopic))
	require.NoError(t, err)
	t.Cleanup(cluster.Close)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	assert.Equal(t, 0, replayMain(ctx, []string{"-brokers", cluster.ListenAddrs()[0]}, env(nil), &stdout, &stderr, false), stderr.String())
	assert.Contains(t, stdout.String(), "0 scanned, 0 replayed")

	stderr.Reset()
	assert.Equal(t, 1, replayMain(ctx, []string{"-brokers", cluster.ListenAddrs()[0], "-topic", "no.such.topic"}, env(nil), &stdout, &stderr, false))
	assert.Contains(t, stderr.String(), "replay: partitions of the dead-letter topic")

	assert.Equal(t, 2, replayMain(ctx, []string{"-rate", "fast"}, env(nil), &stdout, &stderr, false))
}

// TestReplayEveryFlagDocumented keeps the replay section of the package
// comment in step with the flags of waybill replay.
func TestReplayEveryFlagDocumented(t *testing.T) {
	var usage bytes.Buffer
	_, _, err := parseReplayFlags([]string{"-h"}, env(nil), &usage)
	require.ErrorIs(t, err, errHelp)
	assert.Equal(t, 0, replayMain(context.Background(), []string{"-h"}, env(nil), &bytes.Buffer{}, &bytes.Buffer{}, false), "-h is no error")
	assert.True(t, strings.HasPrefix(usage.String(), "Usage: waybill replay [flags]\n"), usage.String())
	flags := regexp.MustCompile(`(?m)^  -([a-z-]+)`).FindAllStringSubmatch(usage.String(), -1)
	require.NotEmpty(t, flags)
	src, err := os.ReadFile("main.go")
	require.NoError(t, err)
	_, section, ok := strings.Cut(string(src), "\n// # Replaying dead letters\n")
	require.True(t, ok, "main.go has a section on waybill replay")
	documented := regexp.MustCompile(`(?m)^//\t-([a-z-]+) `).FindAllStringSubmatch(section, -1)
	names := func(matches [][]string) []string {
		var out []string
		for _, m := range matches {
			out = append(out, m[1])
		}
		return out
	}
	assert.ElementsMatch(t, names(flags), names(documented))
}

// TestReplayJSONIsMachineReadable: with -json every stdout line is a JSON
// object, one per record read and the report last, with the same counts
// the text output gives.
func TestReplayJSONIsMachineReadable(t *testing.T) {
	broker := deadLettered(t)
	stdout, _, err := runReplayCmd(t, false, "-brokers", broker, "-reason", "configuration", "-errcode", "48001", "-dry-run", "-json")
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	require.Len(t, lines, 5, "four records and the report")
	would := 0
	for _, l := range lines[:4] {
		var rec jsonRecord
		require.NoError(t, json.Unmarshal([]byte(l), &rec), l)
		assert.Equal(t, "record", rec.Type)
		if rec.Outcome == "would_replay" {
			would++
			assert.Equal(t, "configuration", rec.Reason)
			require.NotNil(t, rec.Errcode)
			assert.Equal(t, 48001, *rec.Errcode)
			assert.Equal(t, demo.SportShop, rec.AppID)
			assert.Equal(t, event.OrderShippedTopic, rec.To)
		}
	}
	assert.Equal(t, 2, would)
	var rep jsonReport
	require.NoError(t, json.Unmarshal([]byte(lines[4]), &rep))
	assert.Equal(t, "report", rep.Type)
	assert.True(t, rep.DryRun)
	assert.Equal(t, jsonCounts{Scanned: 4, Replayed: 2, SkippedByFilter: 2}, rep.Counts)
	assert.Equal(t, 2, rep.ByReason["configuration"].Replayed)
	assert.Empty(t, rep.Error)
}

// TestReplayReadsOnlyTheKafkaVariables: run beside the service, a replay
// reaches the same cluster through WAYBILL_BROKERS and WAYBILL_KAFKA_*, but
// the service's WAYBILL_GROUP and WAYBILL_RATE are not its own: it must
// not join the service's consumer group.
func TestReplayReadsOnlyTheKafkaVariables(t *testing.T) {
	vars := map[string]string{"WAYBILL_BROKERS": "k1:9092,k2:9092", "WAYBILL_KAFKA_TLS": "true",
		"WAYBILL_GROUP": "waybill", "WAYBILL_RATE": "20"}
	cfg, _, err := parseReplayFlags(nil, env(vars), &bytes.Buffer{})
	require.NoError(t, err)
	assert.Equal(t, []string{"k1:9092", "k2:9092"}, cfg.Kafka.Brokers)
	assert.True(t, cfg.Kafka.TLS.Enable)
	assert.Empty(t, cfg.Kafka.ConsumerGroup, "replay's own group, named after the selection")
	assert.Zero(t, cfg.Rate)
}
