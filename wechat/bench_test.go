package wechat

import (
	"context"
	"crypto/tls"
	"net/http"
	"testing"
	"time"

	"github.com/waybillkit/waybill/wechat/wechattest"
)

// BenchmarkTraceWaybillParallel is trace_waybill against the sandbox from
// 16 goroutines at once (as many partitions calling together), with the
// default client and with one keeping Go's default 2 idle connections per
// host, as the default client did before.
func BenchmarkTraceWaybillParallel(b *testing.B) {
	srv := wechattest.NewServer(wechattest.Config{OpenIDDailyQuota: -1, AppDailyQuota: -1})
	defer srv.Close()
	srv.AddApp("wxapp1", "secret-1")
	run := func(b *testing.B, hc *http.Client) {
		tokens, err := NewStableTokenSource(StableTokenConfig{BaseURL: srv.URL, Secrets: StaticSecrets{"wxapp1": "secret-1"}})
		if err != nil {
			b.Fatal(err)
		}
		c, err := NewClient(Config{BaseURL: srv.URL, Tokens: tokens, HTTPClient: hc})
		if err != nil {
			b.Fatal(err)
		}
		ctx, dialed := countDials(context.Background())
		b.SetParallelism(8) // 16 goroutines on 2 cores
		b.ReportAllocs()
		defer func() { b.ReportMetric(float64(dialed.Load())/float64(b.N), "dials/op") }()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := c.TraceWaybill(ctx, "wxapp1", sampleTrace()); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.Run("default", func(b *testing.B) { run(b, nil) })
	b.Run("idle_per_host_2", func(b *testing.B) {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		run(b, &http.Client{Transport: t, Timeout: 30 * time.Second})
	})
}
