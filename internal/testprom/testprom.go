// Package testprom runs a real Prometheus server (Debian's, through
// scripts/prometheus.sh) for tests that prove the alert rules on real
// scrapes: it scrapes the given targets every second with
// deploy/prometheus/waybill.rules.yml loaded, and Query evaluates PromQL
// against what it scraped.
package testprom

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/waybillkit/waybill/internal/testservice"
)

const script = "scripts/prometheus.sh"

// Start starts a Prometheus server scraping targets (host:port) and returns
// its address; it is stopped when the test ends. A machine without
// Prometheus gets Debian's package installed by the script; if that fails,
// the test fails naming the script.
func Start(t testing.TB, targets ...string) string {
	t.Helper()
	root, err := testservice.RepoRoot()
	if err != nil {
		t.Fatalf("testprom: %v", err)
	}
	dir := t.TempDir()
	run := func(args ...string) (string, error) {
		var stdout, stderr bytes.Buffer
		cmd := exec.Command("bash", append([]string{filepath.Join(root, script)}, args...)...)
		cmd.Dir, cmd.Stdout, cmd.Stderr = root, &stdout, &stderr
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("%s %s: %w\n%s", script, args[0], err, testservice.Tail(stderr.String(), 30))
		}
		return strings.TrimSpace(stdout.String()), nil
	}
	addr, err := run(append([]string{"start", dir}, targets...)...)
	if err != nil {
		t.Fatalf("testprom: no Prometheus server: %v", err)
	}
	t.Cleanup(func() {
		if _, err := run("stop", dir); err != nil {
			t.Errorf("testprom: %v", err)
		}
	})
	return addr
}

// Series is one element of an instant vector: its labels (without
// __name__) and value.
type Series struct {
	Labels map[string]string
	Value  string
}

// Query evaluates expr now and returns the resulting vector.
func Query(t testing.TB, addr, expr string) []Series {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + addr + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		t.Fatalf("testprom: query %q: %v", expr, err)
	}
	defer resp.Body.Close()
	var body struct {
		Status string
		Error  string
		Data   struct {
			ResultType string
			Result     []struct {
				Metric map[string]string
				Value  [2]any
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("testprom: query %q: %v", expr, err)
	}
	if body.Status != "success" {
		t.Fatalf("testprom: query %q: %s", expr, body.Error)
	}
	if body.Data.ResultType != "vector" {
		t.Fatalf("testprom: query %q: a %s, want a vector", expr, body.Data.ResultType)
	}
	out := make([]Series, 0, len(body.Data.Result))
	for _, r := range body.Data.Result {
		delete(r.Metric, "__name__")
		v, _ := r.Value[1].(string)
		out = append(out, Series{Labels: r.Metric, Value: v})
	}
	return out
}
