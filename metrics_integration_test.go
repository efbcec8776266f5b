package waybill

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/testevent"
	"github.com/waybillkit/waybill/internal/testkafka"
	"github.com/waybillkit/waybill/internal/testprom"
	"github.com/waybillkit/waybill/kafka"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

// scrape reads url's Prometheus text exposition.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)
	return fams
}

// sample is the value of the series of family name whose labels include
// want; ok is false when there is none.
func sample(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			match = match && have[k] == v
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

// adminURL waits for the service to log its admin address.
func adminURL(ctx context.Context, t *testing.T, p *serviceProc) string {
	t.Helper()
	return "http://" + p.waitLogMatch(ctx, t, `admin endpoint listening" addr=(\S+)`)[1]
}

// TestIntegrationMetrics runs the service on the real broker with the
// sandbox, sends a mix of events (traced, a duplicate, invalid, 45009,
// 931023, a burst of 503s that opens an appid's breaker, a wrong secret)
// and checks that /metrics says what happened. A real Prometheus server
// (Debian's) scrapes it all along, and each alert rule's expression,
// evaluated on what it scraped, names what the run should have set off.
func TestIntegrationMetrics(t *testing.T) {
	t.Parallel() // its own topics, groups, sandbox and processes
	brokers := testkafka.Brokers(t)
	in := testkafka.Topic(t, "metrics.in")
	sandbox := wechattest.NewServer(wechattest.Config{})
	defer sandbox.Close()
	for _, app := range []string{"wxshop", "wxquota", "wxbusy", "wxlimited"} {
		sandbox.AddApp(app, "secret-"+app)
	}
	sandbox.AddApp("wxbadsecret", "secret-right")
	sandbox.Inject(wechattest.Fault{Endpoint: "trace_waybill", Errcode: 45009, Match: func(c *wechattest.Call) bool { return c.AppID == "wxquota" }})
	sandbox.Inject(wechattest.Fault{Endpoint: "trace_waybill", Errcode: 931023, Match: func(c *wechattest.Call) bool { return c.Field("waybill_id") == "SFNOTYET" }})
	sandbox.Inject(wechattest.Fault{Endpoint: "trace_waybill", HTTPStatus: 503, Match: func(c *wechattest.Call) bool { return c.AppID == "wxbusy" }})
	dir := t.TempDir()
	secrets := filepath.Join(dir, "secrets")
	require.NoError(t, os.WriteFile(secrets, []byte("wxshop=secret-wxshop\nwxquota=secret-wxquota\nwxbusy=secret-wxbusy\nwxlimited=secret-wxlimited\nwxbadsecret=secret-wrong\n"), 0o600))

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	svc := startService(t, buildService(t), "service", []string{"-secrets-file", secrets, "-brokers", strings.Join(brokers, ","),
		"-group", in + "-group", "-input-topic", in, "-traced-topic", in + ".traced", "-dead-letter-topic", in + ".dead",
		"-create-topics", "-topic-partitions", "3", "-topic-replication", "1",
		// Small, so that the quota alert's projection is certain, and one
		// call a day for wxlimited, so that its second event meets the limiter.
		"-app-limits", "wxshop:app_daily=200,wxlimited:app_daily=1",
		"-wechat-url", sandbox.URL, "-admin-listen", "127.0.0.1:0"})
	base := adminURL(ctx, t, svc)
	svc.waitLogged(ctx, t, "waybill running")
	prom := testprom.Start(t, strings.TrimPrefix(base, "http://"))
	waitQuery := func(expr string, ok func([]testprom.Series) bool) {
		t.Helper()
		svc.waitFor(ctx, t, "Prometheus to see "+expr, func() bool { return ok(testprom.Query(t, prom, expr)) })
	}
	// Scraped before any event, so that the counters' increases show.
	waitQuery(`count_over_time(up{job="waybill"}[1m]) >= 2`, func(v []testprom.Series) bool { return len(v) == 1 })

	var events []event.OrderShipped
	add := func(appid, order, waybill string) {
		ev := testevent.Valid(order, waybill)
		ev.AppID = appid
		events = append(events, *ev)
	}
	for i := range 5 {
		add("wxshop", fmt.Sprintf("m-ok-%d", i), fmt.Sprintf("SFOK%d", i))
	}
	add("wxshop", "m-notyet", "SFNOTYET")
	add("wxquota", "m-quota", "SFQUOTA")
	for i := range 3 {
		add("wxbusy", fmt.Sprintf("m-busy-%d", i), fmt.Sprintf("SFBUSY%d", i))
	}
	add("wxbadsecret", "m-bad", "SFBAD")
	add("wxlimited", "m-limited-1", "SFLIMITED1")
	add("wxshop", "m-ok-0", "SFOK0") // a duplicate, last: the trace store answers
	order := make([]int, len(events))
	for i := range order {
		order[i] = i
	}
	publishEvents(t, brokers, in, events, order[:len(order)-1])
	pub, err := kafka.NewPublisher(kafka.Config{Brokers: brokers}, watermill.NopLogger{})
	require.NoError(t, err)
	defer pub.Close()
	require.NoError(t, pub.Publish(in, message.NewMessage(watermill.NewUUID(), []byte("not json"))))

	type metric struct {
		name   string
		labels map[string]string
		value  float64
	}
	waitMetrics := func(want []metric, extra func(map[string]*dto.MetricFamily) []string) map[string]*dto.MetricFamily {
		t.Helper()
		for {
			fams := scrape(t, base+"/metrics")
			var missing []string
			for _, w := range want {
				if got, ok := sample(fams, w.name, w.labels); !ok || got != w.value {
					missing = append(missing, fmt.Sprintf("%s%v = %v (present %v), want %v", w.name, w.labels, got, ok, w.value))
				}
			}
			if extra != nil {
				missing = append(missing, extra(fams)...)
			}
			if len(missing) == 0 {
				return fams
			}
			select {
			case <-ctx.Done():
				t.Fatalf("metrics never matched:\n%s", strings.Join(missing, "\n"))
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
	parkedBusy := func(fams map[string]*dto.MetricFamily) []string {
		n := 0.0
		for _, tier := range []string{"1m0s", "10m0s", "1h0m0s"} {
			v, _ := sample(fams, "waybill_parked_total", map[string]string{"appid": "wxbusy", "topic": in + ".delay." + tier})
			n += v
		}
		// At least: a parked event comes back after a minute, finds the
		// breaker half-open and may fail and park again.
		var out []string
		if n < 3 {
			out = append(out, fmt.Sprintf("wxbusy's parked events: %v, want 3 or more", n))
		}
		if d, _ := sample(fams, "waybill_dead_letters_total", map[string]string{"appid": "wxbusy"}); d != 0 {
			out = append(out, fmt.Sprintf("wxbusy: %v dead letters for a transient fault", d))
		}
		if v, _ := sample(fams, "waybill_wechat_calls_total", map[string]string{"endpoint": "trace_waybill", "class": "transient"}); v < 5 {
			out = append(out, fmt.Sprintf("transient calls: %v, want 5 or more (what opens the breaker)", v))
		}
		return out
	}
	waitMetrics([]metric{
		{"waybill_traced_total", map[string]string{"appid": "wxshop", "via": "call"}, 5},
		{"waybill_dead_letters_total", map[string]string{"appid": "none", "reason": "invalid_event"}, 1},
		{"waybill_dead_letters_total", map[string]string{"appid": "wxbadsecret", "reason": "configuration"}, 1},
		{"waybill_parked_total", map[string]string{"appid": "wxquota", "topic": in + ".delay.window"}, 1},
		{"waybill_parked_total", map[string]string{"appid": "wxshop", "topic": in + ".delay.1h0m0s"}, 1},
		{"waybill_wechat_calls_total", map[string]string{"endpoint": "trace_waybill", "errcode": "45009", "class": "daily_quota"}, 1},
		{"waybill_wechat_calls_total", map[string]string{"endpoint": "trace_waybill", "errcode": "931023", "class": "not_yet"}, 1},
		{"waybill_wechat_calls_total", map[string]string{"endpoint": "trace_waybill", "errcode": "0", "class": "none"}, 6},
		{"waybill_wechat_calls_total", map[string]string{"endpoint": "stable_token", "errcode": "0", "class": "none"}, 4},
		{"waybill_traced_total", map[string]string{"appid": "wxlimited", "via": "call"}, 1},
		{"waybill_breaker_state", map[string]string{"breaker": "wxbusy"}, 2},
		{"waybill_quota_remaining", map[string]string{"appid": "wxshop"}, 200 - 6},
		{"waybill_consumer_lag", map[string]string{"group": in + "-group", "topic": in}, 0},
	}, parkedBusy)

	// The duplicate, once its original is traced; a second event for the
	// appid whose day is spent, held back by the limiter without a call.
	publishEvents(t, brokers, in, events, order[len(order)-1:])
	add("wxlimited", "m-limited-2", "SFLIMITED2")
	publishEvents(t, brokers, in, events, []int{len(events) - 1})
	// The wrong secret again: the token request is refused a second time,
	// once Prometheus has seen the first (the series is born with it, and
	// only a later increase shows in increase()).
	waitQuery(`waybill_wechat_calls_total{endpoint="stable_token",class="configuration"}`, func(v []testprom.Series) bool { return len(v) > 0 })
	add("wxbadsecret", "m-bad-2", "SFBAD2")
	publishEvents(t, brokers, in, events, []int{len(events) - 1})
	// A steady stream on the small quota, scraped as it goes.
	for i := range 20 {
		add("wxshop", fmt.Sprintf("m-stream-%d", i), fmt.Sprintf("SFSTREAM%d", i))
		publishEvents(t, brokers, in, events, []int{len(events) - 1})
		time.Sleep(300 * time.Millisecond)
	}
	fams := waitMetrics([]metric{
		{"waybill_traced_total", map[string]string{"appid": "wxshop", "via": "call"}, 25},
		{"waybill_traced_total", map[string]string{"appid": "wxshop", "via": "store"}, 1},
		{"waybill_trace_store_total", map[string]string{"result": "hit"}, 1},
		{"waybill_limited_total", map[string]string{"appid": "wxlimited", "reason": "app_daily"}, 1},
		{"waybill_dead_letters_total", map[string]string{"appid": "wxbadsecret", "reason": "configuration"}, 2},
		{"waybill_parked_total", map[string]string{"appid": "wxlimited", "topic": in + ".delay.window"}, 1},
		{"waybill_quota_remaining", map[string]string{"appid": "wxshop"}, 200 - 26},
		{"waybill_wechat_calls_total", map[string]string{"endpoint": "trace_waybill", "errcode": "45009", "class": "daily_quota"}, 1},
	}, nil)
	_, ok := sample(fams, "waybill_router_handler_execution_time_seconds", map[string]string{})
	assert.True(t, ok, "Watermill's router metrics are served")
	_, ok = sample(fams, "waybill_returned_total", map[string]string{"topic": in + ".delay.1m0s"})
	assert.True(t, ok, "the delay runner's returns are served")
	v, _ := sample(fams, "waybill_consumer_lag_up", nil)
	assert.Equal(t, 1.0, v)

	// Nothing secret in any label.
	resp, err := http.Get(base + "/metrics")
	require.NoError(t, err)
	text, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, secret := range []string{"secret-", "13800138000", "o-buyer-1", "m-ok-"} {
		assert.NotContains(t, string(text), secret)
	}

	// Ready: consuming, Kafka and a token.
	resp, err = http.Get(base + "/readyz")
	require.NoError(t, err)
	var ready struct {
		Ready  bool
		Checks map[string]string
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&ready))
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode, ready.Checks)
	assert.Equal(t, map[string]string{"router": "ok", "kafka": "ok", "wechat_token": "ok"}, ready.Checks)

	// Every alert's expression over the real scrapes: what this run set off
	// (the alerts' "for" durations aside), and nothing else.
	waitQuery(`waybill_quota_remaining{appid="wxshop"} == 174`, func(v []testprom.Series) bool { return len(v) == 1 })
	wantAlerts := map[string][]map[string]string{
		"WaybillQuotaRunningOut":          {{"appid": "wxshop"}},
		"WaybillQuotaSpent":               {{"appid": "wxlimited"}},
		"WaybillBreakerOpen":              {{"breaker": "wxbusy"}},
		"WaybillDeadLettersConfiguration": {{"appid": "wxbadsecret"}},
		"WaybillDeadLettersGrowing":       nil,
		"WaybillDelayLagGrowing":          nil,
		"WaybillStalled":                  nil,
		"WaybillTokenFetchFailing":        {{"endpoint": "stable_token"}},
		"WaybillLagUnknown":               nil,
	}
	for _, r := range alertRules(t) {
		want, ok := wantAlerts[r.Alert]
		require.True(t, ok, "alert %s has no expectation here", r.Alert)
		got := testprom.Query(t, prom, r.Expr)
		assert.Len(t, got, len(want), "%s: %+v", r.Alert, got)
		for _, w := range want {
			assert.True(t, slices.ContainsFunc(got, func(s testprom.Series) bool {
				for k, v := range w {
					if s.Labels[k] != v {
						return false
					}
				}
				return true
			}), "%s: want a series with %v, got %+v", r.Alert, w, got)
		}
	}
}

// alertRules reads deploy/prometheus/waybill.rules.yml.
func alertRules(t *testing.T) []struct{ Alert, Expr string } {
	t.Helper()
	b, err := os.ReadFile("deploy/prometheus/waybill.rules.yml")
	require.NoError(t, err)
	var f struct {
		Groups []struct {
			Rules []struct{ Alert, Expr string }
		}
	}
	require.NoError(t, yaml.Unmarshal(b, &f))
	var out []struct{ Alert, Expr string }
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	return out
}

// TestIntegrationReadyzFollowsKafka: /readyz fails while the broker does
// not answer and recovers when it does; /healthz answers throughout.
func TestIntegrationReadyzFollowsKafka(t *testing.T) {
	t.Parallel() // its own topics, groups, sandbox and processes
	broker := testkafka.Private(t)
	in := testkafka.Topic(t, "ready.in")
	sandbox := wechattest.NewServer(wechattest.Config{AutoRegister: true})
	defer sandbox.Close()
	secrets := filepath.Join(t.TempDir(), "secrets")
	require.NoError(t, os.WriteFile(secrets, []byte("wxshop=secret-wxshop\n"), 0o600))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	svc := startService(t, buildService(t), "service", []string{"-secrets-file", secrets, "-brokers", broker.Addr,
		"-group", in + "-group", "-input-topic", in, "-traced-topic", in + ".traced", "-dead-letter-topic", in + ".dead",
		"-parking=false", "-create-topics", "-topic-partitions", "1", "-topic-replication", "1",
		"-wechat-url", sandbox.URL, "-admin-listen", "127.0.0.1:0"})
	base := adminURL(ctx, t, svc)
	status := func(path string) int {
		resp, err := http.Get(base + path)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	waitStatus := func(path string, code int) {
		t.Helper()
		svc.waitFor(ctx, t, fmt.Sprintf("%s answering %d", path, code), func() bool { return status(path) == code })
	}
	waitStatus("/readyz", http.StatusOK)
	broker.Freeze()
	waitStatus("/readyz", http.StatusServiceUnavailable)
	assert.Equal(t, http.StatusOK, status("/healthz"), "alive while Kafka is away")
	resp, err := http.Get(base + "/readyz")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Contains(t, string(body), `"kafka":`)
	assert.NotContains(t, string(body), `"kafka":"ok"`)
	broker.Thaw()
	waitStatus("/readyz", http.StatusOK)
}
