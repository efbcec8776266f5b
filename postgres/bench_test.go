package postgres_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/internal/testpostgres"
	"github.com/waybillkit/waybill/postgres"
	"github.com/waybillkit/waybill/ratelimit"
	"github.com/waybillkit/waybill/wechat/wechattest"
)

// BenchmarkHandlerThroughput is the monolith's path per event: a row in
// the input table, taken by a subscriber, traced against the sandbox with
// the trace store and limiter on PostgreSQL, its waybill.traced inserted and
// the input row deleted. It reports events/s with Concurrency 1 and 4, with
// WeChat answering at once and after 50 ms, for one appid without a smooth
// rate (its daily quotas still counted).
func BenchmarkHandlerThroughput(b *testing.B) {
	for _, latency := range []time.Duration{0, 50 * time.Millisecond} {
		for _, conc := range []int{1, 4} {
			b.Run(fmt.Sprintf("latency=%s/concurrency=%d", latency, conc), func(b *testing.B) {
				_, url := testpostgres.Schema(b)
				db := testpostgres.Open(b, url)
				srv, client := sandbox(b)
				if latency > 0 {
					srv.Inject(wechattest.Fault{Endpoint: "trace_waybill", Latency: latency})
				}
				startProcess(b, url, client, processConfig{
					pubsub: postgres.Config{PollInterval: 10 * time.Millisecond, Concurrency: conc},
					// The default smooth rate (WeChat's 20 calls/s per appid)
					// would be all this measures.
					limits: map[string]ratelimit.Limits{shopB: {Rate: -1}},
				})
				pub, err := postgres.NewPublisher(db, postgres.Config{})
				if err != nil {
					b.Fatal(err)
				}
				if err := postgres.InitializeTopics(context.Background(), db, event.WaybillTracedTopic); err != nil {
					b.Fatal(err)
				}
				msgs := make([]*message.Message, b.N)
				for i := range msgs {
					id := fmt.Sprintf("BENCH-%d", i)
					msgs[i] = message.NewMessage(id, payload(b, shipment(id, shopB, fmt.Sprintf("SF%010d", i))))
				}
				b.ResetTimer()
				if err := pub.Publish(event.OrderShippedTopic, msgs...); err != nil {
					b.Fatal(err)
				}
				for rows(b, db, event.WaybillTracedTopic) < b.N {
					time.Sleep(5 * time.Millisecond)
				}
				b.StopTimer()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
			})
		}
	}
}
