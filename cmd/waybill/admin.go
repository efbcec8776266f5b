package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/pprof"
	"regexp"
	"sync"
	"time"

	wmetrics "github.com/ThreeDotsLabs/watermill/components/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/waybillkit/waybill/kafka"
	"github.com/waybillkit/waybill/metrics"
)

// probeTimeout bounds one readiness check: a probe answers within it
// whatever is down.
const probeTimeout = 5 * time.Second

// Buckets of Watermill's router metrics, in seconds. A handler may take up
// to MaxWaitInPlace (25 s) and a WeChat call; its defaults stop at 1 s.
var (
	handlerBuckets = []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60}
	publishBuckets = []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}
)

// admin is the operator's endpoint: /metrics, /healthz, /readyz and, with
// -pprof, /debug/pprof/, on -admin-listen.
type admin struct {
	reg     *prometheus.Registry
	regs    *describing // reg, remembering every metric's name
	metrics *metrics.Metrics
	ln      net.Listener // nil without -admin-listen
	srv     *http.Server
	log     *slog.Logger
	wg      sync.WaitGroup

	// What /readyz checks, set by build.
	running     func() bool
	kafka       *kafka.LagReader
	kafkaTopics []string // what the Kafka check asks metadata for
	rdb         *redis.Client
	token       func(context.Context) error
	// stop ends the lag reads.
	ctx  context.Context
	stop context.CancelFunc
}

func newAdmin(cfg config, log *slog.Logger) (*admin, error) {
	a := &admin{reg: prometheus.NewRegistry(), log: log}
	a.ctx, a.stop = context.WithCancel(context.Background())
	a.regs = &describing{Registerer: a.reg, names: map[string]bool{}}
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Only configured merchants get series: an event with a made-up appid
	// must not take one.
	m, err := metrics.New(metrics.Config{Registerer: a.regs, MaxAppIDs: cfg.MetricsMaxAppIDs, OnlyDeclared: true})
	if err != nil {
		return nil, err
	}
	a.metrics = m
	if cfg.AdminListen != "" {
		if a.ln, err = net.Listen("tcp", cfg.AdminListen); err != nil {
			return nil, fmt.Errorf("-admin-listen: %w", err)
		}
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{Registry: a.reg,
		Timeout: 10 * time.Second, MaxRequestsInFlight: 4}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", a.ready)
	if cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	// No WriteTimeout: a CPU profile streams for its seconds parameter.
	a.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	return a, nil
}

// routerMetrics adds Watermill's handler and publisher metrics.
func (a *admin) routerMetrics() wmetrics.PrometheusMetricsBuilder {
	b := wmetrics.NewPrometheusMetricsBuilder(a.regs, "waybill", "router")
	b.HandlerBuckets, b.PublishBuckets = handlerBuckets, publishBuckets
	return b
}

// describing is a Registerer that remembers the name of every metric
// registered through it, series or not: what the dashboard and the alert
// rules may name (a test checks them against it).
type describing struct {
	prometheus.Registerer
	mu    sync.Mutex
	names map[string]bool
}

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// Register implements prometheus.Registerer.
func (d *describing) Register(c prometheus.Collector) error {
	descs := make(chan *prometheus.Desc)
	go func() { c.Describe(descs); close(descs) }()
	d.mu.Lock()
	for desc := range descs {
		if m := fqName.FindStringSubmatch(desc.String()); m != nil {
			d.names[m[1]] = true
		}
	}
	d.mu.Unlock()
	return d.Registerer.Register(c)
}

// MustRegister implements prometheus.Registerer.
func (d *describing) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := d.Register(c); err != nil {
			panic(err)
		}
	}
}

// metricNames lists the metrics registered through regs.
func (a *admin) metricNames() map[string]bool {
	a.regs.mu.Lock()
	defer a.regs.mu.Unlock()
	return maps.Clone(a.regs.names)
}

// serve answers on the listener until close.
func (a *admin) serve() {
	if a.ln == nil {
		return
	}
	a.log.Info("admin endpoint listening", "addr", a.ln.Addr().String())
	a.wg.Go(func() {
		if err := a.srv.Serve(a.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("admin endpoint stopped", "err", err)
		}
	})
}

// close stops the endpoint: last, so that it answers (not ready) while the
// service drains.
func (a *admin) close() error {
	a.stop()
	if a.ln != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = a.srv.Shutdown(ctx)
		_ = a.ln.Close()
		a.wg.Wait()
	}
	if a.kafka != nil {
		return a.kafka.Close()
	}
	return nil
}

// ready answers 200 when the service consumes and reaches what it needs:
// the router runs, a Kafka broker answers, Redis (when configured) answers,
// and a WeChat token is obtainable; 503 otherwise. The checks run side by
// side, each bounded by probeTimeout, so that one hanging dependency is
// named as such and the probe answers within that bound. The body lists
// each check, as JSON.
func (a *admin) ready(w http.ResponseWriter, r *http.Request) {
	checks := map[string]func(context.Context) error{
		"router": func(context.Context) error {
			if a.running == nil || !a.running() {
				return errors.New("not consuming")
			}
			return nil
		},
	}
	if a.kafka != nil {
		checks["kafka"] = func(ctx context.Context) error { return a.kafka.Ping(ctx, a.kafkaTopics...) }
	}
	if a.rdb != nil {
		checks["redis"] = func(ctx context.Context) error { return a.rdb.Ping(ctx).Err() }
	}
	if a.token != nil {
		checks["wechat_token"] = a.token
	}
	var (
		mu     sync.Mutex
		wg     sync.WaitGroup
		result = map[string]string{}
		ok     = true
	)
	for name, check := range checks {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(r.Context(), probeTimeout)
			defer cancel()
			err := bounded(ctx, check)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				ok = false
				result[name] = err.Error()
			} else {
				result[name] = "ok"
			}
		})
	}
	wg.Wait()
	w.Header().Set("Content-Type", "application/json")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"ready": ok, "checks": result})
}

// bounded runs check, giving up when ctx ends even if check does not.
func bounded(ctx context.Context, check func(context.Context) error) error {
	done := make(chan error, 1)
	go func() { done <- check(ctx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("no answer within %v", probeTimeout)
	}
}
