// Package waybill turns order.shipped events into WeChat logistics
// trace_waybill calls, so that buyers can follow their parcels in the shop's
// mini program, and publishes the outcome: a waybill.traced event carrying the
// waybill_token, or a dead letter that says exactly why not.
//
// The Handler is a Watermill handler: run it on a message.Router over Kafka
// (package kafka), over PostgreSQL in an event-driven monolith (package
// postgres), or any other Pub/Sub. This package holds the Handler, its
// Config and the policies it applies (RetryPolicy, BreakerConfig,
// ParkingConfig); it imports no Kafka or Redis client. The service,
// cmd/waybill, imports it, and so does any program that runs the Handler on
// its own Watermill router. Its neighbours:
//
//   - event: the order.shipped and waybill.traced events, decoding, validation
//   - deadletter: every waybill_* header: dead letters and a parked event's history
//   - tracestore: the store of traced waybills (tracestore/redis to share it)
//   - ratelimit: WeChat's daily quotas and smooth rates (ratelimit/redis to share them)
//   - wechat: the WeChat API client; wechat/wechattest, its sandbox
//   - kafka: Kafka subscriber, publisher, partition key and the DelayRunner
//   - postgres: topics as PostgreSQL tables, the outbox (PublishInTx), native
//     delays for parking, SQL dead-letter replay (tracestore/postgres and
//     ratelimit/postgres keep the state there too)
//   - replay: bringing dead letters back once their cause is fixed
//
// # Guarantees
//
//   - At-least-once, nothing lost: a message is acknowledged only after its
//     outcome (waybill.traced, a dead letter, or a parked copy) was published.
//   - No delivery holds its partition longer than Config.MaxWaitInPlace,
//     whatever it waits for (backoff, a claim, the smooth rate, an open
//     breaker, a quota window, a not-before time) and the WeChat call
//     included, whose deadline is what is left of it; then the event is
//     parked or left for redelivery, so it never holds a partition through a
//     consumer-group rebalance.
//   - No WeChat call is made before an event's not-before time, however often
//     it is redelivered: with parking its history travels in headers, without
//     it the Handler keeps it across redeliveries (per process). Without
//     parking a 931023 event makes at most NotYetAttempts calls, NotYetDelay
//     apart. An outcome that could not be published is published again
//     without a second call.
//   - A claim on a waybill is renewed while its holder works, so it outlives
//     every call made under it; ClaimTTL only bounds a crashed holder's.
//   - A 45009 marks spent only the day in which its call was admitted, and
//     in the first RetryPolicy.QuotaGrace of a window means "try again
//     shortly"; events parked for the next window return spread over its
//     first RetryPolicy.QuotaSpread.
//   - Success means a non-empty waybill_token. Calls WeChat never received
//     (wechat.ErrNotSent) are refunded to the limiter and are not attempts.
//     A redelivery can publish an outcome twice; waybill.traced then carries
//     the same message UUID (event.TracedMessageID), and with Config.TraceStore the
//     same payload and no second WeChat call.
//   - Invalid events (too large, invalid UTF-8, fields out of bounds, failing
//     Validate) are dead-lettered with deadletter.ReasonInvalidEvent before
//     WeChat is called, saving the buyer's 100 calls a day. A dead letter too
//     large to publish is published reduced (deadletter.HeaderDeadDropped);
//     none stalls a partition.
//   - An event that could succeed later is never dead-lettered for a
//     transient fault: network errors, HTTP 5xx and errcode -1 are retried
//     with backoff; quota answers (45009, 45011), a waybill WeChat does not
//     know yet (931023, bounded) and an open breaker wait or park. The
//     backoff keeps growing across deliveries and parks. The only bounds
//     are counts an operator sets: NotYetAttempts for 931023 and, with
//     parking, MaxParks for parks on quota answers (transient parks do not
//     count); such events are dead-lettered with their history and can be
//     replayed.
//   - Dead letters keep the original payload and headers untouched and add
//     the deadletter.HeaderDead* headers (deadletter.Parse); replay.Run
//     brings them back.
//   - One merchant does not stall another: each appid has its own circuit
//     breaker counting only transient faults, and with ParkingConfig waiting
//     events leave the partition for tiered delay topics (kafka.DelayRunner),
//     or, on a Pub/Sub with native delays (NativeDelay), wait in the input
//     topic itself, each until its own due time.
//
// Decisions are tables with exported defaults: wechat.DefaultClassify maps
// errcodes to classes, RetryPolicy.Decide maps classes to actions, and
// CountsAsFailure says what trips a breaker. Each can be replaced in Config.
package waybill
