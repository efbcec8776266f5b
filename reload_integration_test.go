package waybill

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/internal/testevent"
	"github.com/waybillkit/waybill/internal/testkafka"
	"github.com/waybillkit/waybill/kafka"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

// TestIntegrationSIGHUPReloadsMerchants runs the service binary with a
// config file while events flow: a SIGHUP adds a merchant and changes a
// limit without losing an event, and a broken file is rejected, logged,
// and the running configuration stays.
func TestIntegrationSIGHUPReloadsMerchants(t *testing.T) {
	brokers := testkafka.Brokers(t)
	in := testkafka.Topic(t, "hup.in")
	traced, dead := in+".traced", in+".dead"
	for _, topic := range []string{in, traced, dead} {
		testkafka.CreateTopic(t, brokers, topic, 3)
	}
	sandbox := wechattest.NewServer(wechattest.Config{})
	defer sandbox.Close()
	sandbox.AddApp("wxshopA", "secret-a")
	sandbox.AddApp("wxshopB", "secret-b")
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "a"), []byte("secret-a\n"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "b"), []byte("secret-b\n"), 0o600))
	conf := filepath.Join(dir, "waybill.yaml")
	writeConf := func(text string) { require.NoError(t, os.WriteFile(conf, []byte(text), 0o600)) }
	merchantA := "  - appid: wxshopA\n    secret_file: " + dir + "/a\n"
	writeConf("parking: false\nmerchants:\n" + merchantA)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out := observe(ctx, t, kafka.Config{Brokers: brokers, ConsumerGroup: in + "-observer"}, traced, dead)
	pub, err := kafka.NewPublisher(kafka.Config{Brokers: brokers}, watermill.NopLogger{})
	require.NoError(t, err)
	defer pub.Close()
	var mu sync.Mutex // publish runs beside the reload once
	sent := 0
	publish := func(appid string, n int) {
		for range n {
			mu.Lock()
			sent++
			id := sent
			mu.Unlock()
			ev := testevent.Valid(fmt.Sprintf("hup-%03d", id), fmt.Sprintf("SFHUP%03d", id))
			ev.AppID = appid
			b, err := json.Marshal(ev)
			require.NoError(t, err)
			require.NoError(t, pub.Publish(in, message.NewMessage(watermill.NewUUID(), b)))
		}
	}

	svc := startService(t, buildService(t), "service", []string{"-config", conf, "-brokers", strings.Join(brokers, ","),
		"-group", in + "-group", "-input-topic", in, "-traced-topic", traced, "-dead-letter-topic", dead, "-wechat-url", sandbox.URL})
	svc.waitLogged(ctx, t, "waybill running")
	publish("wxshopA", 10)

	// Events in flight while the merchant arrives and A's limit changes.
	writeConf("parking: false\nmerchants:\n" + merchantA + "    limits: {app_daily: 5000}\n  - appid: wxshopB\n    secret_file: " + dir + "/b\n")
	published := make(chan struct{})
	go func() { defer close(published); publish("wxshopA", 10) }()
	require.NoError(t, svc.cmd.Process.Signal(syscall.SIGHUP))
	svc.waitLogged(ctx, t, `msg="configuration reloaded" merchants_added=[wxshopB] secrets_rotated=[] merchants_removed=[] limits_changed=[wxshopA]`)
	<-published
	require.NoError(t, out.wait(ctx, func(s seen) bool { return len(s.tokens) == 20 }), "A's events, before and during the reload")
	publish("wxshopB", 5)
	require.NoError(t, out.wait(ctx, func(s seen) bool { return len(s.tokens) == 25 }), "the new merchant's events are traced")

	// A broken file: rejected, and the service goes on as it was.
	writeConf("merchants:\n  - appid: wxshopC\n    secret: inline-is-refused\n")
	require.NoError(t, svc.cmd.Process.Signal(syscall.SIGHUP))
	svc.waitLogged(ctx, t, `msg="reload rejected; the running configuration stays"`)
	assert.Contains(t, svc.logText(t), `unknown merchant key \"secret\"`)
	publish("wxshopB", 3)
	require.NoError(t, out.wait(ctx, func(s seen) bool { return len(s.tokens) == 28 }), "still running on the old configuration")

	require.NoError(t, svc.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-svc.done:
	case <-ctx.Done():
		t.Fatal("the service did not stop")
	}
	require.NoError(t, svc.err)
	assert.Equal(t, 0, out.snapshot().dead, "nothing dead-lettered, nothing lost")
	assert.NotContains(t, svc.logText(t), "secret-a")
}
