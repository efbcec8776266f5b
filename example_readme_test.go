package waybill_test

import (
	"context"
	"database/sql"
	"os"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	goredis "github.com/redis/go-redis/v9"

	"github.com/waybillkit/waybill"
	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/kafka"
	"github.com/waybillkit/waybill/postgres"
	"github.com/waybillkit/waybill/ratelimit"
	limitpg "github.com/waybillkit/waybill/ratelimit/postgres"
	limitredis "github.com/waybillkit/waybill/ratelimit/redis"
	"github.com/waybillkit/waybill/tracestore"
	tracepg "github.com/waybillkit/waybill/tracestore/postgres"
	"github.com/waybillkit/waybill/wechat"
)

// The examples below are the README's snippets, checked by
// TestReadmeSnippetsAreExamples. They need a Kafka cluster and WeChat, so
// they are compiled and not run.

// wireKafka is the README's "Wiring the handler into your Router".
func wireKafka(router *message.Router, logger watermill.LoggerAdapter) error {
	tokens, _ := wechat.NewStableTokenSource(wechat.StableTokenConfig{
		Secrets: wechat.StaticSecrets{"wx5f3a9c1d2e4b6a80": os.Getenv("WECHAT_SECRET")},
	})
	client, _ := wechat.NewClient(wechat.Config{Tokens: tokens})

	kcfg := kafka.Config{Brokers: []string{"kafka:9092"}, ConsumerGroup: "waybill"}
	pub, _ := kafka.NewPublisher(kcfg, logger) // acks=all, keyed by order id
	// 16 events of a partition in flight, never two of one order; oldest offset for a new group
	sub, _ := kafka.NewOrderedSubscriber(kcfg, kafka.OrderedConfig{Key: kafka.OrderIDKey}, logger)

	h, err := waybill.NewHandler(waybill.Config{
		Client: client, Publisher: pub, Logger: logger,
		Position: kafka.Position, // dead letters name the record's partition and offset
	})
	if err != nil {
		return err
	}
	h.AddTo(router, sub) // consumes order.shipped; or router.AddConsumerHandler(name, topic, sub, h.Handle)
	return nil
}

// Handler over Kafka, as a service wires it (see cmd/waybill for the whole
// service).
func ExampleHandler_kafka() {
	logger := watermill.NewSlogLogger(nil)
	router, _ := message.NewRouter(message.RouterConfig{}, logger)
	if err := wireKafka(router, logger); err != nil {
		panic(err)
	}
}

// parkOnKafka is the README's "Quotas, breakers and parking".
func parkOnKafka(ctx context.Context, rdb *goredis.Client, client *wechat.Client, pub message.Publisher, kcfg kafka.Config) {
	limiter, _ := ratelimit.New(ratelimit.Config{
		Store: limitredis.NewStore(rdb, ""), // shared by every process; nil Store = in memory
		Apps:  map[string]ratelimit.Limits{"wx5f3a9c1d2e4b6a80": {AppDaily: 50_000}},
	})
	parking := &waybill.ParkingConfig{} // tiers 1 min, 10 min, 1 h, plus the quota window
	h, _ := waybill.NewHandler(waybill.Config{Client: client, Publisher: pub, Position: kafka.Position, Limiter: limiter, Parking: parking})

	runner, _ := kafka.NewDelayRunner(kafka.DelayRunnerConfig{
		// Its own consumer group: sharing the handler's, each would rebalance the other.
		Kafka:     kafka.Config{Brokers: kcfg.Brokers, ConsumerGroup: "waybill-delay"},
		Topics:    parking.Topics(event.OrderShippedTopic),
		Publisher: pub, DeadLetterTopic: deadletter.DefaultTopic,
	})
	go runner.Run(ctx)
	_ = h
}

// A limiter shared through Redis, and parking on delay topics with the
// DelayRunner that brings events back.
func ExampleParkingConfig() {
	_ = parkOnKafka
}

// oneCall is the README's "One call per waybill".
func oneCall(client *wechat.Client, pub message.Publisher) {
	h, _ := waybill.NewHandler(waybill.Config{
		Client: client, Publisher: pub,
		TraceStore: tracestore.NewMemory(tracestore.MemoryConfig{}), // or tracestore/redis: redis.New(rdb, redis.Config{})
	})
	_ = h
}

// A trace store makes a redelivered or duplicate event republish its
// waybill.traced without calling WeChat again.
func ExampleConfig_traceStore() {
	_ = oneCall
}

// wireMonolith is the README's "The event-driven monolith".
func wireMonolith(ctx context.Context, db *sql.DB, client *wechat.Client, router *message.Router) error {
	pub, _ := postgres.NewPublisher(db, postgres.Config{})
	sub, _ := postgres.NewSubscriber(db, postgres.Config{Concurrency: 4}) // each in its own transaction
	traces, _ := tracepg.New(db, tracepg.Config{})                        // one call per waybill, across processes
	quotas, _ := limitpg.New(db, limitpg.Config{})                        // one count for every process
	limiter, _ := ratelimit.New(ratelimit.Config{Store: quotas})

	h, err := waybill.NewHandler(waybill.Config{
		Client: client, Publisher: pub, TraceStore: traces, Limiter: limiter,
		// PostgreSQL holds a parked event back itself: no delay topics, no runner
		Parking: &waybill.ParkingConfig{Delay: waybill.NativeDelay},
	})
	if err != nil {
		return err
	}
	h.AddTo(router, sub)
	// PublishInTx must not create tables inside your transaction: create the topic now
	return postgres.InitializeTopics(ctx, db, event.OrderShippedTopic)
}

// shipOrder is the README's outbox: the order's write and its event commit together.
func shipOrder(ctx context.Context, db *sql.DB, orderID string, payload []byte) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `UPDATE orders SET status = 'shipped' WHERE id = $1`, orderID); err != nil {
		return err
	}
	msg := message.NewMessage(watermill.NewUUID(), payload)
	if err := postgres.PublishInTx(ctx, tx, event.OrderShippedTopic, msg); err != nil {
		return err
	}
	return tx.Commit() // rolled back instead: nothing is traced
}

// The Handler in an event-driven monolith: topics, quotas and traces in
// the application's own PostgreSQL (see examples/monolith for all of it).
func ExampleHandler_postgres() {
	_, _ = wireMonolith, shipOrder
}
