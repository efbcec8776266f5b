// Command waybill-bench measures the service against a bare Watermill
// forwarder on a real Kafka broker, so that what the chain costs beyond
// moving a message is a number anyone can reproduce:
//
//	go run ./cmd/waybill-bench                          # 0 ms WeChat, 6 partitions
//	go run ./cmd/waybill-bench -redis                   # the same with shared state in Redis
//	go run ./cmd/waybill-bench -latency 50ms -partitions 1 -forwarder=false
//	go run ./cmd/waybill-bench -backlog 100000          # the service's RSS through a backlog
//
// It starts the broker with scripts/kafka.sh (and Redis with scripts/redis.sh
// for -redis), builds cmd/waybill, runs a WeChat sandbox in this process, and
// for each round writes the same N order.shipped events to fresh topics, then
// runs, one after the other, the forwarder (a Watermill Router that consumes
// the input with watermill-kafka's subscriber, as kafka.NewSubscriber builds
// it, and republishes every message, keyed, with kafka.NewPublisher) and the
// service, each as a process of its own. It measures each from its first
// output record to its last (by the records' timestamps, so start-up and
// group joins are not counted), its CPU time over that span (from
// /proc/PID/stat) and its peak RSS, and prints every round and the medians.
//
// A benchmark, not a test: it asserts nothing, and a slow machine only gives
// slower numbers. docs/BENCHMARKS.md records its figures.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/IBM/sarama"

	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/testservice"
	"github.com/waybillkit/waybill/kafka"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "forward" {
		if err := forward(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "waybill-bench forward:", err)
			os.Exit(1)
		}
		return
	}
	if err := bench(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "waybill-bench:", err)
		os.Exit(1)
	}
}

type options struct {
	events, rounds, partitions, concurrency, appids int
	latency                                         time.Duration
	redis, forwarder                                bool
	backlog, forwardOrdered                         int
	serviceArgs, serviceEnv                         string
}

func bench(args []string) error {
	var o options
	fs := flag.NewFlagSet("waybill-bench", flag.ContinueOnError)
	fs.IntVar(&o.events, "events", 20000, "events per run")
	fs.IntVar(&o.rounds, "rounds", 3, "rounds, each running the forwarder then the service")
	fs.IntVar(&o.partitions, "partitions", 6, "partitions of the input topic")
	fs.IntVar(&o.concurrency, "concurrency", 0, "the service's -concurrency (0: its default)")
	fs.IntVar(&o.appids, "appids", 20, "merchants the events are spread over")
	fs.DurationVar(&o.latency, "latency", 0, "how long the WeChat sandbox takes to answer trace_waybill")
	fs.BoolVar(&o.redis, "redis", false, "run the service with -redis (started by scripts/redis.sh)")
	fs.BoolVar(&o.forwarder, "forwarder", true, "run the forwarder too, and print the ratios")
	fs.IntVar(&o.forwardOrdered, "forwarder-ordered", 0, "run the forwarder on an OrderedSubscriber of this concurrency instead of watermill-kafka's subscriber")
	fs.IntVar(&o.backlog, "backlog", 0, "instead of rounds: run the service once through this many events and print its RSS along the way")
	fs.StringVar(&o.serviceArgs, "service-args", "", "more flags for the service, space-separated")
	fs.StringVar(&o.serviceEnv, "service-env", "", "environment for the service, space-separated KEY=VALUE, e.g. GOMEMLIMIT=90MiB")
	if err := fs.Parse(args); err != nil {
		return err
	}
	root, err := testservice.RepoRoot()
	if err != nil {
		return err
	}
	addr, err := testservice.StartIn(root, "scripts/kafka.sh", 10*time.Minute)
	if err != nil {
		return err
	}
	brokers := strings.Split(addr, ",")
	redisAddr := ""
	if o.redis {
		if redisAddr, err = testservice.StartIn(root, "scripts/redis.sh", 5*time.Minute); err != nil {
			return err
		}
	}
	dir, err := os.MkdirTemp("", "waybill-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "waybill")
	build := exec.Command("go", "build", "-o", bin, "./cmd/waybill")
	build.Dir, build.Stderr = root, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("go build ./cmd/waybill: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}

	srv := wechattest.NewServer(wechattest.Config{AppDailyQuota: -1, OpenIDDailyQuota: -1})
	defer srv.Close()
	var secrets strings.Builder
	for i := range o.appids {
		appid := fmt.Sprintf("wxbench%010d", i)
		srv.AddApp(appid, "secret-"+appid)
		fmt.Fprintf(&secrets, "%s=secret-%s\n", appid, appid)
	}
	secretsFile := filepath.Join(dir, "secrets")
	if err := os.WriteFile(secretsFile, []byte(secrets.String()), 0o600); err != nil {
		return err
	}
	if o.latency > 0 {
		srv.Inject(wechattest.Fault{Endpoint: "trace_waybill", Latency: o.latency})
	}
	fwdSub := "watermill-kafka's subscriber"
	if o.forwardOrdered > 0 {
		fwdSub = fmt.Sprintf("an OrderedSubscriber of concurrency %d", o.forwardOrdered)
	}
	fmt.Printf("waybill-bench: %d events, %d partitions, WeChat latency %v, redis %v, %d appids, service concurrency %s, forwarder on %s, service flags %q, environment %q\n",
		max(o.events, o.backlog), o.partitions, o.latency, o.redis, o.appids, orDefault(o.concurrency), fwdSub, o.serviceArgs, o.serviceEnv)

	chain := func(run string) []string {
		a := []string{"-brokers", addr, "-group", run, "-input-topic", run + ".in", "-traced-topic", run + ".out", "-dead-letter-topic", run + ".dead",
			"-parking-prefix", run + ".delay.", "-create-topics", "-topic-partitions", strconv.Itoa(o.partitions), "-topic-replication", "1",
			"-wechat-url", srv.URL, "-secrets-file", secretsFile, "-app-daily", "-1", "-rate", "-1", "-log-level", "warn"}
		if o.concurrency > 0 {
			a = append(a, "-concurrency", strconv.Itoa(o.concurrency))
		}
		if redisAddr != "" {
			a = append(a, "-redis", redisAddr, "-redis-prefix", run+":")
		}
		return append(a, strings.Fields(o.serviceArgs)...)
	}
	service := func(run string) *exec.Cmd {
		cmd := exec.Command(bin, chain(run)...)
		cmd.Env = append(os.Environ(), strings.Fields(o.serviceEnv)...)
		return cmd
	}
	if o.backlog > 0 {
		run := runName("backlog")
		if err := prepare(brokers, run, o.partitions, o.backlog, o.appids); err != nil {
			return err
		}
		r, err := measure(brokers, run, o.backlog, service(run), true)
		if err != nil {
			return err
		}
		fmt.Println(r)
		return nil
	}

	var fwd, svc []result
	for round := range o.rounds {
		if o.forwarder {
			run := runName("fwd")
			if err := prepare(brokers, run, o.partitions, o.events, o.appids); err != nil {
				return err
			}
			r, err := measure(brokers, run, o.events, exec.Command(self, "forward", "-brokers", addr, "-group", run, "-in", run+".in", "-out", run+".out",
				"-ordered", strconv.Itoa(o.forwardOrdered)), false)
			if err != nil {
				return fmt.Errorf("forwarder: %w", err)
			}
			fmt.Printf("round %d forwarder: %s\n", round+1, r)
			fwd = append(fwd, r)
		}
		run := runName("svc")
		if err := prepare(brokers, run, o.partitions, o.events, o.appids); err != nil {
			return err
		}
		r, err := measure(brokers, run, o.events, service(run), false)
		if err != nil {
			return fmt.Errorf("service: %w", err)
		}
		fmt.Printf("round %d service:   %s\n", round+1, r)
		svc = append(svc, r)
	}
	ms := median(svc)
	fmt.Printf("median service:   %s\n", ms)
	if o.latency > 0 {
		bound := float64(o.partitions) / o.latency.Seconds()
		fmt.Printf("service / sequential bound (%d partitions ÷ %v = %.0f msg/s): %.2f×\n", o.partitions, o.latency, bound, ms.rate/bound)
	}
	if o.forwarder {
		mf := median(fwd)
		fmt.Printf("median forwarder: %s\n", mf)
		fmt.Printf("service / forwarder: throughput %.2f, CPU per message %.2f, peak RSS %.2f\n", ms.rate/mf.rate, ms.cpuPerMsg/mf.cpuPerMsg, ms.peakRSS/mf.peakRSS)
	}
	return nil
}

func orDefault(n int) string {
	if n == 0 {
		return "default"
	}
	return strconv.Itoa(n)
}

func runName(kind string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "bench-" + kind + "-" + hex.EncodeToString(b[:])
}

// prepare creates the run's topics and writes n events to its input, keyed
// by order id, spread over the appids, each buyer distinct.
func prepare(brokers []string, run string, partitions, n, appids int) error {
	kc := kafka.Config{Brokers: brokers, ClientID: "waybill-bench"}
	if _, err := kafka.CreateTopics(kc, []string{run + ".in", run + ".out"}, int32(partitions), 1); err != nil {
		return err
	}
	sc, err := kc.ProducerConfig(func(sc *sarama.Config) {
		sc.Producer.Flush.Messages = 500
		sc.Producer.Flush.Frequency = 5 * time.Millisecond
	})
	if err != nil {
		return err
	}
	prod, err := sarama.NewAsyncProducer(brokers, sc)
	if err != nil {
		return err
	}
	var failed atomic.Value
	var wg sync.WaitGroup
	wg.Go(func() {
		for err := range prod.Errors() {
			failed.Store(err)
		}
	})
	wg.Go(func() {
		for range prod.Successes() {
		}
	})
	for i := range n {
		orderID := fmt.Sprintf("%s-%07d", run, i)
		ev := event.OrderShipped{
			Version: 1, OrderID: orderID, AppID: fmt.Sprintf("wxbench%010d", i%appids), OpenID: fmt.Sprintf("o-buyer-%s-%07d", run, i),
			TransID: fmt.Sprintf("42000012342026%014d", i), WaybillID: fmt.Sprintf("SF%012d", i), DeliveryID: "SF",
			ReceiverPhone: "13800138000", SenderPhone: "02012345678",
			Goods:     []event.Goods{{Name: "云南普洱茶 特级礼盒", ImageURL: "https://img.example.cn/tea.jpg", Description: "十年陈香"}},
			ShippedAt: time.Date(2026, 11, 11, 10, 0, 0, 0, time.UTC),
		}
		v, _ := json.Marshal(ev)
		prod.Input() <- &sarama.ProducerMessage{Topic: run + ".in", Key: sarama.StringEncoder(orderID), Value: sarama.ByteEncoder(v)}
	}
	prod.AsyncClose()
	wg.Wait()
	if err, ok := failed.Load().(error); ok {
		return fmt.Errorf("produce: %w", err)
	}
	return nil
}

// result is one run's measurement.
type result struct {
	rate      float64 // outputs per second, first to last
	cpuPerMsg float64 // CPU seconds per output over that span
	peakRSS   float64 // bytes
	curve     []string
}

func (r result) String() string {
	s := fmt.Sprintf("%8.0f msg/s, %6.1f µs CPU/msg, peak RSS %5.1f MiB", r.rate, r.cpuPerMsg*1e6, r.peakRSS/(1<<20))
	if len(r.curve) > 0 {
		s += "\nRSS through the backlog (outputs: RSS):\n  " + strings.Join(r.curve, "\n  ")
	}
	return s
}

func median(rs []result) result {
	pick := func(f func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	return result{
		rate:      pick(func(r result) float64 { return r.rate }),
		cpuPerMsg: pick(func(r result) float64 { return r.cpuPerMsg }),
		peakRSS:   pick(func(r result) float64 { return r.peakRSS }),
	}
}

// measure starts cmd, counts its outputs on run.out until n, and samples
// its CPU and RSS every 100 ms.
func measure(brokers []string, run string, n int, cmd *exec.Cmd, curve bool) (result, error) {
	var logs strings.Builder
	cmd.Stderr = &lockedWriter{w: &logs}
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(40 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	var count atomic.Int64
	var first, last atomic.Int64 // record timestamps, unix nanoseconds
	first.Store(1<<63 - 1)
	watchErr := make(chan error, 1)
	go func() { watchErr <- watch(ctx, brokers, run+".out", &count, &first, &last) }()

	pid := cmd.Process.Pid
	var r result
	var cpuFirst, cpuLast float64
	var countFirst, countLast int64
	next := 0
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return r, fmt.Errorf("%d of %d outputs after 15 min; its log:\n%s", count.Load(), n, tail(logs.String()))
		case err := <-watchErr:
			return r, err
		case <-tick.C:
		}
		c := count.Load()
		cpu, rss, err := procStats(pid)
		if err != nil {
			return r, fmt.Errorf("process ended: %w; its log:\n%s", err, tail(logs.String()))
		}
		r.peakRSS = max(r.peakRSS, rss)
		if c > 0 && countFirst == 0 {
			cpuFirst, countFirst = cpu, c
		}
		if curve && c*20 >= int64(next)*int64(n) {
			r.curve = append(r.curve, fmt.Sprintf("%7d: %5.1f MiB", c, rss/(1<<20)))
			next++
		}
		if c >= int64(n) {
			cpuLast, countLast = cpu, c
			break
		}
	}
	span := time.Duration(last.Load() - first.Load()).Seconds()
	r.rate = float64(n-1) / span
	if countLast > countFirst {
		r.cpuPerMsg = (cpuLast - cpuFirst) / float64(countLast-countFirst)
	}
	return r, nil
}

// watch counts the records of topic, from the oldest, keeping the first and
// last record timestamps.
func watch(ctx context.Context, brokers []string, topic string, count, first, last *atomic.Int64) error {
	sc, err := kafka.Config{Brokers: brokers, ClientID: "waybill-bench"}.SaramaConfig(nil)
	if err != nil {
		return err
	}
	consumer, err := sarama.NewConsumer(brokers, sc)
	if err != nil {
		return err
	}
	defer consumer.Close()
	parts, err := consumer.Partitions(topic)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	for _, p := range parts {
		pc, err := consumer.ConsumePartition(topic, p, sarama.OffsetOldest)
		if err != nil {
			return err
		}
		wg.Go(func() {
			defer pc.Close()
			for {
				select {
				case <-ctx.Done():
					return
				case m := <-pc.Messages():
					ts := m.Timestamp.UnixNano()
					for f := first.Load(); ts < f && !first.CompareAndSwap(f, ts); f = first.Load() {
					}
					for l := last.Load(); ts > l && !last.CompareAndSwap(l, ts); l = last.Load() {
					}
					count.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return nil
}

// procStats reads a process's CPU time (user and system, seconds) and RSS
// (bytes) from /proc.
func procStats(pid int) (cpu, rss float64, err error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	if len(f) < 22 || f[0] == "Z" {
		return 0, 0, fmt.Errorf("pid %d exited", pid)
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	pages, _ := strconv.ParseFloat(f[21], 64)
	const ticks = 100 // USER_HZ on Linux
	return (utime + stime) / ticks, pages * float64(os.Getpagesize()), nil
}

type lockedWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func tail(s string) string {
	return testservice.Tail(s, 30)
}
