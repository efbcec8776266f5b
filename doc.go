// Package waybill turns order.shipped events into WeChat logistics
// trace_waybill calls, so that buyers can follow their parcels in the shop's
// mini program, and publishes the outcome: a waybill.traced event carrying the
// waybill_token, or a dead letter that says exactly why not.
//
// The Handler is a Watermill handler: run it on a message.Router over Kafka
// (NewKafkaSubscriber, NewKafkaPublisher) or any other Pub/Sub.
//
// # Guarantees
//
//   - At-least-once, nothing lost: a message is acknowledged only after its
//     outcome (waybill.traced, a dead letter, or a parked copy) was published.
//     One delivery waits in place at most Config.MaxWaitInPlace, then is
//     parked or left for redelivery, so it never holds a partition through a
//     consumer-group rebalance.
//     A redelivery can publish an outcome twice; waybill.traced then carries
//     the same message UUID (TracedMessageID), and with Config.Traces the
//     same payload and no second WeChat call.
//   - Invalid events are dead-lettered with ReasonInvalidEvent before WeChat
//     is called, saving the buyer's 100 calls a day.
//   - An event that could succeed later is never dead-lettered for a
//     transient fault: network errors, HTTP 5xx and errcode -1 are retried
//     with backoff; quota answers (45009, 45011), a waybill WeChat does not
//     know yet (931023, bounded) and an open breaker wait or park. The only
//     bounds are counts an operator sets: NotYetAttempts for 931023 and,
//     with parking, MaxParks; such events are dead-lettered with their
//     history and can be replayed.
//   - Dead letters keep the original payload and headers untouched and add
//     the HeaderDead* headers (ParseDeadLetter); Replay brings them back.
//   - One merchant does not stall another: each appid has its own circuit
//     breaker counting only transient faults, and with ParkingConfig waiting
//     events leave the partition for tiered delay topics (DelayRunner).
//
// Decisions are tables with exported defaults: wechat.DefaultClassify maps
// errcodes to classes, RetryPolicy.Decide maps classes to actions, and
// CountsAsFailure says what trips a breaker. Each can be replaced in Config.
package waybill
