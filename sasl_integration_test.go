package waybill

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/testevent"
	"github.com/waybillkit/waybill/internal/testkafka"
	"github.com/waybillkit/waybill/kafka"
	"github.com/waybillkit/waybill/replay"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

// TestIntegrationOverSASLAndTLS runs the service binary against the test
// broker's SASL_SSL listener, as managed Kafka is reached: SCRAM-SHA-512 over
// TLS with a private CA. The handler consumes and produces there, one event
// answered 45011 goes through a delay topic and its DelayRunner, and replay
// reads the dead letter and republishes it over the same listener. A wrong
// password and an untrusted CA each stop the service at start with a message
// naming the setting.
func TestIntegrationOverSASLAndTLS(t *testing.T) {
	sb := testkafka.SASL(t)
	plain := testkafka.Brokers(t) // the same broker, for making topics
	in := testkafka.Topic(t, "sasl.in")
	traced, dead, replayed := in+".traced", in+".dead", in+".replayed"
	delay := in + ".delay."
	for _, topic := range []string{in, traced, dead, replayed, delay + "10s", delay + "window"} {
		testkafka.CreateTopic(t, plain, topic, 1)
	}
	dir := t.TempDir()
	password := filepath.Join(dir, "kafka-password")
	require.NoError(t, os.WriteFile(password, []byte(sb.Password+"\n"), 0o600))
	wrong := filepath.Join(dir, "wrong-password")
	require.NoError(t, os.WriteFile(wrong, []byte("not-the-password\n"), 0o600))
	kc := kafka.Config{Brokers: []string{sb.Addr}, ConsumerGroup: in + "-observer",
		SASL: kafka.SASL{Mechanism: kafka.MechanismSCRAMSHA512, User: sb.User, Password: sb.Password},
		TLS:  kafka.TLS{CAFile: sb.CAFile}}

	sandbox := wechattest.NewServer(wechattest.Config{})
	defer sandbox.Close()
	sandbox.AddApp("wxapp1", "secret-1")
	secrets := filepath.Join(dir, "secrets")
	require.NoError(t, os.WriteFile(secrets, []byte("wxapp1=secret-1\n"), 0o600))
	// One waybill meets WeChat's per-minute limit once: parked, then back.
	sandbox.Inject(wechattest.Fault{Endpoint: "trace_waybill", Errcode: 45011, Times: 1,
		Match: func(c *wechattest.Call) bool { return c.Field("waybill_id") == "SFSASL2" }})

	bin := buildService(t)
	args := func(passwordFile, caFile string) []string {
		return []string{
			"-brokers", sb.Addr, "-group", in + "-group",
			"-kafka-sasl-mechanism", "SCRAM-SHA-512", "-kafka-sasl-user", sb.User, "-kafka-sasl-password-file", passwordFile,
			"-kafka-tls-ca-file", caFile,
			"-input-topic", in, "-traced-topic", traced, "-dead-letter-topic", dead,
			"-parking-tiers", "10s", "-parking-prefix", delay,
			"-wechat-url", sandbox.URL, "-secrets-file", secrets,
		}
	}

	t.Run("a wrong password or an untrusted CA stops the start, naming the setting", func(t *testing.T) {
		for name, tc := range map[string]struct {
			args []string
			want string
		}{
			"wrong password": {args(wrong, sb.CAFile), "check SASL.User and SASL.Password"},
			"untrusted CA":   {args(password, sb.OtherCAFile), "check TLS.CAFile"},
		} {
			p := startService(t, bin, strings.ReplaceAll(name, " ", "-"), tc.args)
			select {
			case <-p.done:
			case <-time.After(time.Minute):
				t.Fatalf("%s: the service did not stop", name)
			}
			require.Error(t, p.err, "%s: the service must exit non-zero", name)
			assert.Contains(t, p.logText(t), tc.want, name)
			assert.NotContains(t, p.logText(t), sb.Password, "the password is never logged")
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out := observe(ctx, t, kc, traced, dead)
	pub, err := kafka.NewPublisher(kc, watermill.NopLogger{})
	require.NoError(t, err)
	defer pub.Close()
	for i := 1; i <= 3; i++ {
		b, err := json.Marshal(testevent.Valid(fmt.Sprintf("sasl-%d", i), fmt.Sprintf("SFSASL%d", i)))
		require.NoError(t, err)
		require.NoError(t, pub.Publish(in, message.NewMessage(watermill.NewUUID(), b)))
	}
	require.NoError(t, pub.Publish(in, message.NewMessage(watermill.NewUUID(), testevent.JSON(t, func(ev *event.OrderShipped) { ev.OpenID = "" }))))

	svc := startService(t, bin, "service", args(password, sb.CAFile))
	require.NoError(t, out.wait(ctx, func(s seen) bool { return len(s.tokens) == 3 && s.dead == 1 }),
		"three traced and one dead letter over SASL_SSL")
	assert.Len(t, sandbox.CallsTo("trace_waybill"), 4, "the 45011 event was called again once, after its park")
	require.NoError(t, svc.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-svc.done:
	case <-ctx.Done():
		t.Fatal("the service did not stop after SIGTERM")
	}
	require.NoError(t, svc.err)
	assert.Contains(t, svc.logText(t), "parked event")
	assert.Regexp(t, `msg="waybill stopped" traced=3 dead_lettered=1 .* parked=[1-9][0-9]* returned=[1-9][0-9]*`, svc.logText(t), "the DelayRunner brought the parked event back over SASL_SSL")

	rc := kc
	rc.ConsumerGroup = "" // replay's own group, named after the selection
	rep, err := replay.Run(ctx, replay.Config{Kafka: rc, Topic: dead, To: replayed, Filter: replay.Filter{Reasons: []deadletter.Reason{deadletter.ReasonInvalidEvent}}})
	require.NoError(t, err)
	assert.Equal(t, replay.Counts{Scanned: 1, Replayed: 1}, rep.Counts)
	assert.Len(t, testkafka.ReadTopic(t, plain, replayed), 1, "replay produced over SASL_SSL")
}
