package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/waybillkit/waybill"
	"github.com/waybillkit/waybill/kafka"
	"github.com/waybillkit/waybill/metrics"
	"github.com/waybillkit/waybill/ratelimit"
	limitredis "github.com/waybillkit/waybill/ratelimit/redis"
	"github.com/waybillkit/waybill/tracestore"
	traceredis "github.com/waybillkit/waybill/tracestore/redis"
	"github.com/waybillkit/waybill/wechat"
	"github.com/waybillkit/waybill/wechat/redisstore"
)

// breakerCheck is how often every breaker's state is asked for, so that
// waybill_breaker_state leaves "open" once a breaker's open time has passed
// even for an appid without events.
const breakerCheck = 15 * time.Second

// closeSlack is how much longer the router waits for its handlers than they
// may run after a signal, so that a handler cut off at the shutdown timeout
// still nacks its event and releases its claim before the router gives up.
const closeSlack = 5 * time.Second

// redisTimeout bounds the PING that checks Redis at startup.
const redisTimeout = 5 * time.Second

// service is the running job: the handler on a Watermill router and, with
// parking, a DelayRunner.
type service struct {
	cfg     config
	log     *slog.Logger
	handler *waybill.Handler
	router  *message.Router
	runner  *kafka.DelayRunner
	delays  []string // delay topics, with parking
	// provider feeds the platform's tokens; nil without -component-appid.
	provider *provider
	admin    *admin
	// What a reload (SIGHUP) may change while events flow.
	secrets               *liveSecrets
	tokens                *tokenRoutes
	tokenStore            wechat.TokenStore // shared by every token source, old and new
	limiter, goodsLimiter *ratelimit.Limiter
	reloadMu              sync.Mutex
	applied               config // what reload compares with; under reloadMu
	// hard ends in-flight events: it is cancelled once the shutdown timeout
	// has passed after a signal.
	hard     context.Context
	hardStop context.CancelFunc
	closers  []func() error // closed last first
}

// build connects the stores, the WeChat client and Kafka, and wires the
// handler. Nothing is consumed until run.
func build(ctx context.Context, cfg config, log *slog.Logger) (_ *service, err error) {
	s := &service{cfg: cfg, log: log, applied: cfg}
	s.hard, s.hardStop = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	secrets, kinds, err := cfg.merchantTable()
	if err != nil {
		return nil, err
	}
	if s.admin, err = newAdmin(cfg, log); err != nil {
		return nil, err
	}
	s.closers = append(s.closers, s.admin.close) // closed last
	// Before anything else touches Kafka: a wrong password or CA, or a
	// missing delay topic, is said at once and by name.
	created, err := ensureTopics(cfg.Kafka, neededTopics(cfg.InputTopic, cfg.TracedTopic, cfg.DeadLetterTopic, cfg.Parking),
		cfg.CreateTopics, cfg.TopicPartitions, cfg.TopicReplication)
	if err != nil {
		return nil, err
	}
	for _, t := range created {
		log.Info("created topic", "topic", t, "partitions", cfg.TopicPartitions, "replication", cfg.TopicReplication)
	}
	inputPartitions := 0
	if states, err := kafka.DescribeTopics(cfg.Kafka, []string{cfg.InputTopic}); err == nil && len(states) == 1 {
		inputPartitions = states[0].Partitions
	}

	// Without Redis every store lives in this process; with it, processes
	// sharing the prefix share tokens, quotas and traces.
	var (
		rdb        *redis.Client
		tokenStore wechat.TokenStore = new(wechat.MemoryStore)
		limitStore ratelimit.Store
		goodsStore ratelimit.Store  // update_waybill_goods: counted apart from trace_waybill
		traces     tracestore.Store = tracestore.NewMemory(tracestore.MemoryConfig{})
		redisAddr  string
	)
	if cfg.Redis != "" {
		if rdb, err = s.connectRedis(ctx); err != nil {
			return nil, err
		}
		redisAddr = rdb.Options().Addr
		tokenStore = redisstore.New(rdb, redisstore.Options{Prefix: cfg.RedisPrefix + "wechat:"})
		limitStore = limitredis.NewStore(rdb, cfg.RedisPrefix+"ratelimit:")
		goodsStore = limitredis.NewStore(rdb, cfg.RedisPrefix+"ratelimit:goods:")
		if traces, err = traceredis.New(rdb, traceredis.Config{Prefix: cfg.RedisPrefix + "trace:"}); err != nil {
			return nil, err
		}
	}

	if err := s.wireTokens(cfg, secrets, kinds, tokenStore); err != nil {
		return nil, err
	}
	if cfg.Component.AppID != "" {
		if s.provider, err = newProvider(cfg.Component, s.tokens, rdb, log); err != nil {
			return nil, err
		}
		if s.provider.ln != nil {
			s.closers = append(s.closers, func() error { _ = s.provider.ln.Close(); return nil })
		}
		if err := s.provider.seed(ctx, cfg.Merchants); err != nil {
			return nil, err
		}
	}
	client, err := wechat.NewClient(wechat.Config{BaseURL: cfg.WeChatURL, Tokens: s.tokens, Logger: log, OnCall: s.onCall(),
		IdleConns: idleConns(cfg.Concurrency, inputPartitions)})
	if err != nil {
		return nil, err
	}
	limiter, err := ratelimit.New(cfg.limiterConfig(limitStore))
	if err != nil {
		return nil, err
	}
	goodsLimiter, err := ratelimit.New(cfg.limiterConfig(goodsStore))
	if err != nil {
		return nil, err
	}
	s.limiter, s.goodsLimiter = limiter, goodsLimiter

	wlog := watermill.NewSlogLogger(log)
	kpub, err := kafka.NewPublisher(cfg.Kafka, wlog)
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, kpub.Close)
	metricsBuilder := s.admin.routerMetrics()
	pub, err := metricsBuilder.DecoratePublisher(kpub)
	if err != nil {
		return nil, err
	}
	s.handler, err = waybill.NewHandler(waybill.Config{
		Client: client, Publisher: pub, Position: kafka.Position,
		InputTopic: cfg.InputTopic, TracedTopic: cfg.TracedTopic, DeadLetterTopic: cfg.DeadLetterTopic,
		Limiter: limiter, GoodsLimiter: goodsLimiter, Parking: cfg.Parking, TraceStore: traces, ClaimTTL: cfg.ClaimTTL, Logger: wlog,
		Observe: s.admin.metrics.Observe,
	})
	if err != nil {
		return nil, err
	}
	sub, err := kafka.NewOrderedSubscriber(cfg.Kafka, kafka.OrderedConfig{
		Concurrency: cfg.Concurrency, Key: kafka.OrderIDKey, DrainTimeout: drainTimeout(cfg.ShutdownTimeout),
	}, wlog)
	if err != nil {
		return nil, err
	}
	s.closers = append(s.closers, sub.Close) // the router closes it too; twice is harmless
	s.router, err = message.NewRouter(message.RouterConfig{CloseTimeout: cfg.ShutdownTimeout + closeSlack}, wlog)
	if err != nil {
		return nil, err
	}
	s.handler.AddTo(s.router, sub).AddMiddleware(s.detach)
	metricsBuilder.AddPrometheusRouterMetrics(s.router)

	if cfg.Parking != nil {
		s.delays = cfg.Parking.Topics(cfg.InputTopic)
		dk := cfg.Kafka
		dk.ConsumerGroup += "-delay"
		s.runner, err = kafka.NewDelayRunner(kafka.DelayRunnerConfig{Kafka: dk, Topics: s.delays, Publisher: pub, InputTopic: cfg.InputTopic, DeadLetterTopic: cfg.DeadLetterTopic, Logger: wlog})
		if err != nil {
			return nil, err
		}
		for _, t := range s.delays {
			if err := s.admin.metrics.CounterFunc("returned_total", "Parked events the delay runner returned to the input topic.",
				prometheus.Labels{"topic": t}, func() float64 { return float64(s.runner.Returned(t)) }); err != nil {
				return nil, err
			}
		}
	}
	if err := s.watch(cfg, rdb, kinds); err != nil {
		return nil, err
	}

	log.Info("waybill configured",
		"brokers", cfg.Kafka.Brokers, "group", cfg.Kafka.ConsumerGroup,
		"input_topic", cfg.InputTopic, "traced_topic", cfg.TracedTopic, "dead_letter_topic", cfg.DeadLetterTopic,
		"wechat_url", cfg.WeChatURL, "appids", sortedKeys(kinds), "authorizers", countKind(kinds, tokenAuthorizer),
		"component", orNone(cfg.Component.AppID),
		"redis", orNone(redisAddr), "delay_topics", s.delays,
		"app_daily", cfg.Limits.AppDaily, "user_daily", cfg.Limits.UserDaily, "rate", cfg.Limits.Rate,
		"app_limits", len(cfg.AppLimits), "claim_ttl", cfg.ClaimTTL)
	return s, nil
}

// defaultConcurrency is -concurrency's default: at WeChat's tens of
// milliseconds, 16 calls in flight per partition make a partition about 16
// times faster than one at a time, while a partition's buffered events stay
// a few hundred kilobytes.
const defaultConcurrency = 16

// maxConcurrency bounds -concurrency: beyond it, a partition's calls would
// outrun any merchant's smooth rate long before they filled the slots.
const maxConcurrency = 1024

// drainTimeout is how long a revoked or closing partition's events in flight
// may finish: the shutdown timeout, kept under sarama's 60 s rebalance
// timeout, within which Kafka expects a revoked partition back.
func drainTimeout(shutdown time.Duration) time.Duration {
	return min(shutdown, 50*time.Second)
}

// idleConns sizes the WeChat client's idle connections to the calls that
// can be in flight at once, if this process owns every input partition
// (partitions unknown: 8), so that a burst after an idle spell reuses them
// instead of dialing (a TLS handshake each).
func idleConns(concurrency, partitions int) int {
	if partitions <= 0 {
		partitions = 8
	}
	return max(wechat.MaxIdleConnsPerHost, min(concurrency*partitions, 4096))
}

// onCall is the WeChat clients' call hook: the metrics', once admin exists.
func (s *service) onCall() func(wechat.CallInfo) {
	if s.admin == nil {
		return nil
	}
	return s.admin.metrics.ObserveCall
}

// readyTokenTries bounds how many merchants a readiness probe asks for a
// token, and readyRetryAfter how soon it asks again for one whose token
// failed: with WeChat down or a secret wrong, probes must not become a
// stream of token requests (cgi-bin/token allows about 2,000 a day).
const (
	readyTokenTries = 3
	readyRetryAfter = 5 * time.Minute
)

// watch sets what /readyz checks and the consumer lag the metrics read.
func (s *service) watch(cfg config, rdb *redis.Client, kinds map[string]string) error {
	lag, err := kafka.NewLagReader(cfg.Kafka)
	if err != nil {
		return err
	}
	a := s.admin
	a.kafka, a.kafkaTopics, a.rdb, a.running = lag, []string{cfg.InputTopic}, rdb, s.router.IsRunning
	a.metrics.Declare(sortedKeys(kinds)...)
	var (
		mu     sync.Mutex
		failed = map[string]time.Time{} // appid → when its token last failed
		last   error
	)
	a.token = func(ctx context.Context) error {
		appids := sortedKeys(s.tokens.p.Load().kinds)
		if len(appids) == 0 {
			return errors.New("no merchant configured")
		}
		tried := 0
		for _, appid := range appids {
			if tried == readyTokenTries || ctx.Err() != nil {
				break
			}
			mu.Lock()
			recent := time.Since(failed[appid]) < readyRetryAfter
			mu.Unlock()
			if recent {
				continue
			}
			tried++
			_, err := s.tokens.Token(ctx, appid)
			mu.Lock()
			if err == nil {
				delete(failed, appid)
				mu.Unlock()
				return nil
			}
			failed[appid], last = time.Now(), fmt.Errorf("%s: %w", appid, err)
			mu.Unlock()
		}
		mu.Lock()
		defer mu.Unlock()
		if last == nil {
			return errors.New("no token obtained")
		}
		return fmt.Errorf("no token for the merchants tried (each retried after %v): %w", readyRetryAfter, last)
	}
	group, delayGroup := cfg.Kafka.ConsumerGroup, cfg.Kafka.ConsumerGroup+"-delay"
	return a.metrics.Lag(a.ctx, func(ctx context.Context) ([]metrics.PartitionLag, error) {
		var out []metrics.PartitionLag
		for _, q := range []struct {
			group  string
			topics []string
		}{{group, []string{cfg.InputTopic}}, {delayGroup, s.delays}} {
			if len(q.topics) == 0 {
				continue
			}
			lags, err := lag.Lag(ctx, q.group, q.topics)
			if err != nil {
				return nil, err
			}
			for _, l := range lags {
				out = append(out, metrics.PartitionLag{Group: q.group, Topic: l.Topic, Partition: l.Partition, Lag: l.Lag})
			}
		}
		return out, nil
	})
}

// connectRedis opens the client and checks it answers.
func (s *service) connectRedis(ctx context.Context) (*redis.Client, error) {
	opts, err := redisOptions(s.cfg.Redis)
	if err != nil {
		return nil, err
	}
	rdb := redis.NewClient(opts)
	s.closers = append(s.closers, rdb.Close)
	pctx, cancel := context.WithTimeout(ctx, redisTimeout)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		return nil, fmt.Errorf("redis at %s: %w", opts.Addr, err)
	}
	return rdb, nil
}

// detach runs each event on a context that a signal does not cancel: an
// event in flight when the router closes finishes its WeChat call, stores
// the token and publishes its result, so that the redelivery after a restart
// costs no call. Its acknowledgement is lost with the closed subscription,
// which is what at-least-once allows. After the shutdown timeout, hard
// cancels it: the event is left for redelivery and its claim released.
func (s *service) detach(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		ctx, cancel := context.WithCancel(context.WithoutCancel(msg.Context()))
		defer cancel()
		defer context.AfterFunc(s.hard, cancel)()
		msg.SetContext(ctx)
		return h(msg)
	}
}

// run consumes until ctx ends (a signal) or the router stops by itself, then
// shuts down: no new events, in-flight ones get cfg.ShutdownTimeout, and the
// counters are logged.
func (s *service) run(ctx context.Context) error {
	if s.admin != nil {
		s.admin.serve() // alive (and not ready) from the start
	}
	if s.provider != nil {
		// Closed first: its endpoint and polls use the token store (Redis)
		// until then, events in flight included.
		s.closers = append(s.closers, func() error { s.provider.stop(); return nil })
		if err := s.provider.start(ctx, countKind(s.tokens.p.Load().kinds, tokenAuthorizer) > 0); err != nil {
			s.close()
			if ctx.Err() != nil {
				return nil // a signal while waiting: a clean stop
			}
			return err
		}
	}
	routerErr := make(chan error, 1)
	go func() { routerErr <- s.router.Run(context.Background()) }()
	var wg sync.WaitGroup
	runnerCtx, stopRunner := context.WithCancel(ctx)
	defer stopRunner()
	if s.runner != nil {
		wg.Go(func() { _ = s.runner.Run(runnerCtx) })
	}
	ticker := time.NewTicker(s.cfg.StatsInterval)
	defer ticker.Stop()
	breakerTicker := time.NewTicker(breakerCheck)
	defer breakerTicker.Stop()
	running := s.router.Running()

	var err error
loop:
	for {
		select {
		case <-running:
			s.log.Info("waybill running")
			running = nil // closed: stop selecting it
		case <-ticker.C:
			s.logStats(slog.LevelDebug, "waybill stats")
		case <-breakerTicker.C:
			s.handler.BreakerStates() // an idle appid's breaker shows half-open once due
		case <-ctx.Done():
			s.log.Info("waybill shutting down", "timeout", s.cfg.ShutdownTimeout)
			break loop
		case rerr := <-routerErr:
			routerErr = nil
			if rerr == nil {
				rerr = errors.New("every subscription ended")
			}
			err = fmt.Errorf("router stopped: %w", rerr)
			break loop
		}
	}

	stopRunner()
	hard := time.AfterFunc(s.cfg.ShutdownTimeout, s.hardStop)
	defer hard.Stop()
	if cerr := s.router.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("closing router: %w", cerr))
	}
	if routerErr != nil {
		if rerr := <-routerErr; rerr != nil {
			err = errors.Join(err, fmt.Errorf("router: %w", rerr))
		}
	}
	wg.Wait()
	s.close()
	s.logStats(slog.LevelInfo, "waybill stopped")
	return err
}

// close releases what build opened, last opened first.
func (s *service) close() {
	s.hardStop()
	for i := len(s.closers) - 1; i >= 0; i-- {
		if err := s.closers[i](); err != nil {
			s.log.Warn("closing", "err", err)
		}
	}
	s.closers = nil
}

// logStats logs the handler's counters and, with parking, how many parked
// events came back.
func (s *service) logStats(level slog.Level, msg string) {
	st := s.handler.Stats()
	var returned int64
	if s.runner != nil {
		for _, t := range s.delays {
			returned += s.runner.Returned(t)
		}
	}
	s.log.Log(context.Background(), level, msg,
		"traced", st.Traced, "dead_lettered", st.DeadLettered, "deduplicated", st.Deduplicated,
		"goods_updates", st.GoodsUpdates, "retries", st.Retries, "waits", st.Waits,
		"parked", st.Parked, "returned", returned)
}

// wireTokens builds the token sources on store and routes cfg's merchants
// to them.
func (s *service) wireTokens(cfg config, secrets wechat.StaticSecrets, kinds map[string]string, store wechat.TokenStore) error {
	s.secrets, s.tokenStore = newLiveSecrets(secrets), store
	byStable, err := wechat.NewStableTokenSource(wechat.StableTokenConfig{
		BaseURL: cfg.WeChatURL, Secrets: s.secrets, Store: store, Logger: s.log, OnCall: s.onCall()})
	if err != nil {
		return err
	}
	byToken, err := wechat.NewAccessTokenSource(wechat.AccessTokenConfig{
		BaseURL: cfg.WeChatURL, Secrets: s.secrets, Store: store, Logger: s.log, OnCall: s.onCall()})
	if err != nil {
		return err
	}
	s.tokens = &tokenRoutes{stable: byStable, plain: byToken}
	table, err := s.routeTable(cfg, kinds, nil)
	if err != nil {
		return err
	}
	s.tokens.p.Store(table)
	return nil
}

// routeTable is the token routing of cfg's merchants. It keeps cur's
// platform source when the platform's secret is unchanged (its tokens are
// in the store either way; keeping it keeps its in-process copies).
func (s *service) routeTable(cfg config, kinds map[string]string, cur *routeTable) (*routeTable, error) {
	t := &routeTable{kinds: kinds}
	c := cfg.Component
	if c.AppID == "" {
		return t, nil
	}
	if cur != nil && cur.component != nil && cur.secret == c.Secret {
		t.component, t.secret = cur.component, cur.secret
		return t, nil
	}
	comp, err := wechat.NewComponentTokenSource(wechat.ComponentConfig{BaseURL: cfg.WeChatURL,
		ComponentAppID: c.AppID, ComponentSecret: c.Secret, Store: s.tokenStore, Logger: s.log, OnCall: s.onCall()})
	if err != nil {
		return nil, err
	}
	t.component, t.secret = comp, c.Secret
	return t, nil
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

func countKind(kinds map[string]string, kind string) int {
	n := 0
	for _, k := range kinds {
		if k == kind {
			n++
		}
	}
	return n
}

func orNone(s string) string {
	if s == "" {
		return "none (in memory)"
	}
	return s
}
