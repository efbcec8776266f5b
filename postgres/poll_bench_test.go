package postgres_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/waybillkit/waybill/internal/testpostgres"
	"github.com/waybillkit/waybill/postgres"
)

// BenchmarkDeliveryBesideParked is one publish, delivery and ack on a table
// that also holds 0 or 100,000 parked rows, due tomorrow: what parked events
// cost the events that flow past them.
func BenchmarkDeliveryBesideParked(b *testing.B) {
	for _, parked := range []int{0, 100_000} {
		b.Run(fmt.Sprintf("parked=%d", parked), func(b *testing.B) {
			db := testpostgres.DB(b)
			if err := postgres.InitializeTopics(context.Background(), db, topic); err != nil {
				b.Fatal(err)
			}
			if _, err := db.Exec(`INSERT INTO `+postgres.Table(topic)+` (uuid, payload, metadata, ready_at)
				SELECT 'parked-' || g, 'x', '{}', now() + interval '1 day' FROM generate_series(1, $1) g`, parked); err != nil {
				b.Fatal(err)
			}
			if _, err := db.Exec(`ANALYZE ` + postgres.Table(topic)); err != nil {
				b.Fatal(err)
			}
			pub, err := postgres.NewPublisher(db, postgres.Config{})
			if err != nil {
				b.Fatal(err)
			}
			ch := subscribe(b, db, postgres.Config{PollInterval: time.Millisecond})
			b.ResetTimer()
			for range b.N {
				if err := pub.Publish(topic, message.NewMessage("n", []byte("y"))); err != nil {
					b.Fatal(err)
				}
				(<-ch).Ack()
			}
		})
	}
}
