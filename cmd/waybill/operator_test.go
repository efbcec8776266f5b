package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/waybillkit/waybill/metrics"
)

// registeredNames are the metrics the service registers, as build does.
func registeredNames(t *testing.T) map[string]bool {
	t.Helper()
	a, err := newAdmin(config{MetricsMaxAppIDs: 1000}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	b := a.routerMetrics()
	b.NewRouterMiddleware()
	_, err = b.DecoratePublisher(gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{}))
	require.NoError(t, err)
	require.NoError(t, a.metrics.Lag(a.ctx, func(context.Context) ([]metrics.PartitionLag, error) { return nil, nil }))
	t.Cleanup(a.stop)
	require.NoError(t, a.metrics.CounterFunc("returned_total", "h", prometheus.Labels{"topic": "t"}, func() float64 { return 0 }))
	return a.metricNames()
}

var metricRef = regexp.MustCompile(`\bwaybill_[a-z0-9_]+`)

// unknownMetrics lists the names expr uses that are not registered (a
// histogram's _bucket, _sum and _count count as its name).
func unknownMetrics(expr string, known map[string]bool) []string {
	var out []string
	for _, name := range metricRef.FindAllString(expr, -1) {
		base := name
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(name, suffix); ok && known[b] {
				base = b
			}
		}
		if !known[base] {
			out = append(out, name)
		}
	}
	return out
}

// TestDashboardAndRulesNameRealMetrics: every metric the Grafana dashboard
// and the alert rules query is one the service registers, so a renamed
// metric fails here; every alert has its runbook section.
func TestDashboardAndRulesNameRealMetrics(t *testing.T) {
	known := registeredNames(t)
	assert.True(t, known["waybill_traced_total"] && known["waybill_router_handler_execution_time_seconds"], "the registry is the service's")

	b, err := os.ReadFile("../../deploy/grafana/waybill.json")
	require.NoError(t, err)
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
		Templating struct {
			List []struct{ Definition string }
		}
	}
	require.NoError(t, json.Unmarshal(b, &dash))
	require.NotEmpty(t, dash.Panels)
	used := map[string]bool{}
	for _, p := range dash.Panels {
		require.NotEmpty(t, p.Targets, p.Title)
		for _, tg := range p.Targets {
			assert.Empty(t, unknownMetrics(tg.Expr, known), "panel %q: %s", p.Title, tg.Expr)
			for _, n := range metricRef.FindAllString(tg.Expr, -1) {
				used[n] = true
			}
		}
	}
	for _, v := range dash.Templating.List {
		assert.Empty(t, unknownMetrics(v.Definition, known), "variable %s", v.Definition)
	}
	for _, must := range []string{"waybill_traced_total", "waybill_dead_letters_total", "waybill_quota_remaining", "waybill_breaker_state", "waybill_consumer_lag"} {
		assert.True(t, used[must], "the dashboard shows %s", must)
	}

	b, err = os.ReadFile("../../deploy/prometheus/waybill.rules.yml")
	require.NoError(t, err)
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert       string
				Expr        string
				Annotations map[string]string
			}
		}
	}
	require.NoError(t, yaml.Unmarshal(b, &rules))
	runbook, err := os.ReadFile("../../docs/RUNBOOK.md")
	require.NoError(t, err)
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			assert.Empty(t, unknownMetrics(r.Expr, known), "alert %s: %s", r.Alert, r.Expr)
			assert.Equal(t, "docs/RUNBOOK.md#"+strings.ToLower(r.Alert), r.Annotations["runbook_url"], r.Alert)
			assert.Contains(t, string(runbook), "\n## "+r.Alert+"\n", "the runbook explains %s", r.Alert)
		}
	}
	assert.Len(t, alerts, 9)
}

// TestAlertRulesPromtool runs promtool check rules and the rules' unit tests
// (deploy/prometheus/waybill.rules.test.yml) through scripts/prometheus.sh,
// which installs Debian's prometheus when it is missing.
func TestAlertRulesPromtool(t *testing.T) {
	cmd := exec.Command("bash", "scripts/prometheus.sh", "check")
	cmd.Dir = "../.."
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Run(), "scripts/prometheus.sh check:\n%s", out.String())
	assert.Contains(t, out.String(), "SUCCESS: 9 rules found")
	assert.Contains(t, out.String(), "SUCCESS")
}
