package waybill

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/internal/testevent"
	"github.com/waybillkit/waybill/internal/testkafka"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

// TestIntegrationTraceThroughKafka runs the service with traces on
// (OTEL_TRACES_EXPORTER=console) on the real broker: an input carrying a
// traceparent yields a waybill.traced whose traceparent header is in the
// same trace, a parked copy in that trace too, log lines naming the trace
// id, and the exported spans, flushed at shutdown.
func TestIntegrationTraceThroughKafka(t *testing.T) {
	t.Parallel() // its own topics, groups, sandbox and processes
	brokers := testkafka.Brokers(t)
	in := testkafka.Topic(t, "trace.in")
	sandbox := wechattest.NewServer(wechattest.Config{})
	defer sandbox.Close()
	sandbox.AddApp("wxapp1", "secret-app1")
	sandbox.Inject(wechattest.Fault{Endpoint: "trace_waybill", Errcode: 931023,
		Match: func(c *wechattest.Call) bool { return c.Field("waybill_id") == "SFLATER" }})
	secrets := filepath.Join(t.TempDir(), "secrets")
	require.NoError(t, os.WriteFile(secrets, []byte("wxapp1=secret-app1\n"), 0o600))
	svc := startServiceEnv(t, buildService(t), "service", []string{"-secrets-file", secrets, "-brokers", strings.Join(brokers, ","),
		"-group", in + "-group", "-input-topic", in, "-traced-topic", in + ".traced", "-dead-letter-topic", in + ".dead",
		"-create-topics", "-topic-partitions", "1", "-topic-replication", "1", "-wechat-url", sandbox.URL},
		[]string{"OTEL_TRACES_EXPORTER=console", "OTEL_SERVICE_NAME=waybill-test"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	svc.waitLogged(ctx, t, "waybill running")

	const traceOK, traceLater = "4bf92f3577b34da6a3ce929d0e0e4736", "7bf92f3577b34da6a3ce929d0e0e4736"
	pc := testkafka.Config()
	pc.Producer.Return.Successes = true
	producer, err := sarama.NewSyncProducer(brokers, pc)
	require.NoError(t, err)
	defer producer.Close()
	for _, e := range []struct{ order, waybill, trace string }{{"t-ok", "SFOK", traceOK}, {"t-later", "SFLATER", traceLater}} {
		b, err := json.Marshal(testevent.Valid(e.order, e.waybill))
		require.NoError(t, err)
		_, _, err = producer.SendMessage(&sarama.ProducerMessage{Topic: in, Key: sarama.StringEncoder(e.order), Value: sarama.ByteEncoder(b),
			Headers: []sarama.RecordHeader{{Key: []byte("traceparent"), Value: []byte("00-" + e.trace + "-00f067aa0ba902b7-01")}}})
		require.NoError(t, err)
	}

	var traced []*sarama.ConsumerMessage
	svc.waitFor(ctx, t, "waybill.traced", func() bool { traced = testkafka.ReadTopic(t, brokers, in+".traced"); return len(traced) == 1 })
	tp, ok := testkafka.Header(traced[0], "traceparent")
	require.True(t, ok, "waybill.traced carries a traceparent")
	assert.Contains(t, tp, traceOK)
	assert.NotContains(t, tp, "00f067aa0ba902b7", "the output's parent is the service's span, not the input's")
	var parked []*sarama.ConsumerMessage
	svc.waitFor(ctx, t, "a parked copy", func() bool { parked = testkafka.ReadTopic(t, brokers, in+".delay.1h0m0s"); return len(parked) == 1 })
	tp, ok = testkafka.Header(parked[0], "traceparent")
	require.True(t, ok)
	assert.Contains(t, tp, traceLater, "the parked copy continues the order's trace")
	assert.NotContains(t, tp, "00f067aa0ba902b7", "under the service's park span")
	svc.waitLogged(ctx, t, "trace_id="+traceLater)

	require.NoError(t, svc.cmd.Process.Signal(syscall.SIGTERM))
	<-svc.done
	require.NoError(t, svc.err)
	logs := svc.logText(t)
	for _, want := range []string{`"Name":"waybill handle ` + in + `"`, `"Name":"wechat trace_waybill"`, `"TraceID":"` + traceOK + `"`, `"waybill-test"`} {
		assert.Contains(t, logs, want, "the exported spans")
	}
	assert.NotContains(t, logs, "secret-app1")
	assert.NotContains(t, logs, "access_token=")
}
