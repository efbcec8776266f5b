package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/postgres"
)

// shop is the order service: its own table of shipments, and the HTTP API
// that ships an order and shows what became of it.
type shop struct {
	db *sql.DB
}

const schema = `
CREATE TABLE IF NOT EXISTS shipments (
	order_id      text PRIMARY KEY,
	appid         text NOT NULL,
	waybill_id    text NOT NULL,
	shipped_at    timestamptz NOT NULL DEFAULT now(),
	waybill_token text,
	traced_at     timestamptz,
	dead_reason   text,
	dead_detail   text
)`

func (s *shop) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, schema); err != nil {
		return fmt.Errorf("create shipments: %w", err)
	}
	// The outbox publishes inside the shop's transactions, which must not
	// create tables: create the input topic's now.
	return postgres.InitializeTopics(ctx, s.db, event.OrderShippedTopic, event.WaybillTracedTopic, deadletter.DefaultTopic)
}

// errShipped: an order ships once.
var errShipped = errors.New("order already shipped")

// ship writes the shipment and its order.shipped event in one transaction:
// both or neither. The event goes first, so a shipment that cannot be
// written (the order shipped already) rolls the event back with it.
func (s *shop) ship(ctx context.Context, ev *event.OrderShipped) error {
	payload, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() // after Commit, a no-op
	msg := message.NewMessage(watermill.NewUUID(), payload)
	if err := postgres.PublishInTx(ctx, tx, event.OrderShippedTopic, msg); err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO shipments (order_id, appid, waybill_id) VALUES ($1, $2, $3)`, ev.OrderID, ev.AppID, ev.WaybillID)
	if pgErr := (*pgconn.PgError)(nil); errors.As(err, &pgErr) && pgErr.Code == "23505" { // unique_violation
		return errShipped
	}
	if err != nil {
		return err
	}
	return tx.Commit()
}

// Order is what GET /orders/{id} answers.
type Order struct {
	OrderID      string     `json:"order_id"`
	WaybillID    string     `json:"waybill_id"`
	Status       string     `json:"status"` // shipped, traced or dead
	WaybillToken string     `json:"waybill_token,omitempty"`
	TracedAt     *time.Time `json:"traced_at,omitempty"`
	DeadReason   string     `json:"dead_reason,omitempty"`
	DeadDetail   string     `json:"dead_detail,omitempty"`
}

func (s *shop) order(ctx context.Context, id string) (*Order, error) {
	var (
		o                   Order
		token, reason, what sql.NullString
		traced              sql.NullTime
	)
	err := s.db.QueryRowContext(ctx, `SELECT order_id, waybill_id, waybill_token, traced_at, dead_reason, dead_detail FROM shipments WHERE order_id = $1`, id).
		Scan(&o.OrderID, &o.WaybillID, &token, &traced, &reason, &what)
	if err != nil {
		return nil, err
	}
	o.Status, o.WaybillToken, o.DeadReason, o.DeadDetail = "shipped", token.String, reason.String, what.String
	switch {
	case token.Valid:
		o.Status, o.TracedAt = "traced", &traced.Time
	case reason.Valid:
		o.Status = "dead"
	}
	return &o, nil
}

// traced records a waybill.traced event on its shipment.
func (s *shop) traced(msg *message.Message) error {
	var t event.WaybillTraced
	if err := json.Unmarshal(msg.Payload, &t); err != nil {
		return nil // not ours to fix: drop it rather than spin
	}
	_, err := s.db.ExecContext(msg.Context(), `UPDATE shipments SET waybill_token = $2, traced_at = $3, dead_reason = NULL, dead_detail = NULL WHERE order_id = $1`,
		t.OrderID, t.WaybillToken, t.TracedAt)
	return err
}

// dead records a dead letter on its shipment, for the shop's operators.
func (s *shop) dead(msg *message.Message) error {
	l, err := deadletter.Parse(msg)
	key := msg.Metadata.Get(deadletter.HeaderDeadKey)
	if err != nil || key == "" {
		return nil
	}
	_, err = s.db.ExecContext(msg.Context(), `UPDATE shipments SET dead_reason = $2, dead_detail = $3 WHERE order_id = $1 AND waybill_token IS NULL`,
		key, string(l.Reason), l.Errmsg)
	return err
}

// routes is the HTTP API:
//
//	POST /orders/{id}/ship   body: the order.shipped event (order_id from the path)
//	GET  /orders/{id}
func (s *shop) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /orders/{id}/ship", func(w http.ResponseWriter, r *http.Request) {
		var ev event.OrderShipped
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&ev); err != nil {
			http.Error(w, "body: "+err.Error(), http.StatusBadRequest)
			return
		}
		ev.OrderID = r.PathValue("id")
		if ev.Version == 0 {
			ev.Version = event.SchemaVersion
		}
		switch err := s.ship(r.Context(), &ev); {
		case errors.Is(err, errShipped):
			http.Error(w, err.Error(), http.StatusConflict)
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
		default:
			w.WriteHeader(http.StatusAccepted)
		}
	})
	mux.HandleFunc("GET /orders/{id}", func(w http.ResponseWriter, r *http.Request) {
		o, err := s.order(r.Context(), r.PathValue("id"))
		if errors.Is(err, sql.ErrNoRows) {
			http.NotFound(w, r)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(o)
	})
	return mux
}

// dsnHost is the part of a URL safe to print: host, port and database.
func dsnHost(u string) string {
	p, err := url.Parse(u)
	if err != nil || p.Host == "" {
		return "(a connection string)" // key=value: no telling where a password is
	}
	return p.Host + p.Path
}
