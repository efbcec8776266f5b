package postgres

import (
	"context"
	stdsql "database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	wmsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/waybillkit/waybill/deadletter"
)

// DefaultMaxReplays is how often an event may be replayed before Replay
// leaves it as poison; the same bound as package replay's for Kafka.
const DefaultMaxReplays = 3

// ReplayConfig configures Replay. The zero value replays every waybill dead
// letter of deadletter.DefaultTopic to the topic it came from.
type ReplayConfig struct {
	// Topic is the dead-letter topic. "" means deadletter.DefaultTopic.
	Topic string
	// To, if not "", receives every replayed event; "" sends each back to
	// the topic it was consumed from (deadletter.HeaderDeadSourceTopic).
	To string
	// Select picks the dead letters to replay, e.g. by l.Reason or
	// l.Errcode, or by the payload. Nil selects all.
	Select func(l *deadletter.Letter, msg *message.Message) bool
	// MaxReplays: an event whose deadletter.HeaderReplays has reached it is
	// left in the dead-letter table and counted in ReplayReport.OverLimit,
	// so a poison event cannot loop. Zero means DefaultMaxReplays.
	MaxReplays int
	// DryRun counts what would move and changes nothing.
	DryRun bool
}

// ReplayReport is the account of a Replay.
type ReplayReport struct {
	Scanned  int // dead letters read
	Replayed int // republished (in a dry run: would be)
	// Skipped: not selected; not a waybill dead letter, or one with an
	// unreadable HeaderReplays; naming no topic while To is "", or one with
	// no table; or published reduced (deadletter.HeaderDeadDropped), its
	// payload gone.
	Skipped   int
	OverLimit int // selected, but replayed MaxReplays times already
}

// Replay brings dead letters back after their cause was fixed: each selected
// dead letter is republished to its source topic (or cfg.To) as it was
// before it died, with the same message UUID and payload, the original
// headers without waybill's dead-letter and attempt-history headers, and
// deadletter.HeaderReplays one higher.
//
// Exactly once: the event is inserted into its destination and the dead
// letter deleted in one transaction, so an interrupted replay, run again,
// neither loses nor repeats one. Dead letters that are not replayed stay,
// acknowledged or not: the dead-letter table is read as an archive, not a
// queue. Replay reads the rows that were there when it started, oldest
// first, so replaying into the dead-letter topic itself terminates.
func Replay(ctx context.Context, db *stdsql.DB, cfg ReplayConfig) (ReplayReport, error) {
	if cfg.Topic == "" {
		cfg.Topic = deadletter.DefaultTopic
	}
	if cfg.MaxReplays == 0 {
		cfg.MaxReplays = DefaultMaxReplays
	}
	var rep ReplayReport
	if err := checkTopic(cfg.Topic); err != nil {
		return rep, err
	}
	if cfg.To != "" {
		if err := checkTopic(cfg.To); err != nil {
			return rep, err
		}
	}
	if cfg.MaxReplays < 0 {
		return rep, fmt.Errorf("postgres replay: MaxReplays %d must not be negative", cfg.MaxReplays)
	}
	table := Table(cfg.Topic)
	var end int64
	if err := db.QueryRowContext(ctx, `SELECT COALESCE(MAX("offset"), 0) FROM `+table).Scan(&end); err != nil {
		return rep, fmt.Errorf("postgres replay %s: %w", cfg.Topic, err)
	}
	for after := int64(0); ; {
		next, done, err := replayOne(ctx, db, cfg, table, after, end, &rep)
		if err != nil || done {
			return rep, err
		}
		after = next
	}
}

// replayOne handles the first dead letter after offset after, up to end, in
// its own transaction.
func replayOne(ctx context.Context, db *stdsql.DB, cfg ReplayConfig, table string, after, end int64, rep *ReplayReport) (next int64, done bool, err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return 0, false, fmt.Errorf("postgres replay %s: %w", cfg.Topic, err)
	}
	defer tx.Rollback() // after Commit, a no-op
	var (
		offset      int64
		uuid        string
		payload, md []byte
	)
	err = tx.QueryRowContext(ctx, `SELECT "offset", uuid, payload, metadata FROM `+table+
		` WHERE "offset" > $1 AND "offset" <= $2 ORDER BY "offset" LIMIT 1 FOR UPDATE`, after, end).
		Scan(&offset, &uuid, &payload, &md)
	if errors.Is(err, stdsql.ErrNoRows) {
		return 0, true, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("postgres replay %s: %w", cfg.Topic, err)
	}
	rep.Scanned++
	msg := message.NewMessage(uuid, payload)
	if md != nil {
		if err := json.Unmarshal(md, &msg.Metadata); err != nil {
			rep.Skipped++
			return offset, false, nil
		}
	}
	l, err := deadletter.Parse(msg)
	to := cfg.To
	if err == nil && to == "" {
		to = l.SourceTopic
	}
	if err != nil || to == "" || l.Dropped != "" || (cfg.Select != nil && !cfg.Select(l, msg)) {
		rep.Skipped++
		return offset, false, nil
	}
	replays := 0
	if s := msg.Metadata.Get(deadletter.HeaderReplays); s != "" {
		if replays, err = strconv.Atoi(s); err != nil || replays < 0 {
			rep.Skipped++
			return offset, false, nil
		}
	}
	if replays >= cfg.MaxReplays {
		rep.OverLimit++
		return offset, false, nil
	}
	// A source topic that cannot be a table, or has none (renamed, or
	// never on this database), is skipped, not created: it may be misspelt.
	if checkTopic(to) != nil {
		rep.Skipped++
		return offset, false, nil
	}
	q := wmsql.TxFromStdSQL(tx)
	exists, err := tableIn(ctx, q, to)
	if err != nil {
		return 0, false, fmt.Errorf("postgres replay %s (offset %d): %w", uuid, offset, err)
	}
	if !exists {
		rep.Skipped++
		return offset, false, nil
	}
	rep.Replayed++
	if cfg.DryRun {
		return offset, false, nil
	}
	out := message.NewMessage(uuid, payload)
	out.Metadata = deadletter.ReplayMetadata(msg)
	out.Metadata.Set(deadletter.HeaderReplays, strconv.Itoa(replays+1))
	// Due now: a park's old due time has passed anyway.
	delete(out.Metadata, delay.DelayedUntilKey)
	delete(out.Metadata, delay.DelayedForKey)
	out.SetContext(ctx)
	if err := insertIn(q, to, []*message.Message{out}); err != nil {
		rep.Replayed--
		return 0, false, fmt.Errorf("postgres replay %s (offset %d): %w", uuid, offset, err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM `+table+` WHERE "offset" = $1`, offset); err != nil {
		rep.Replayed--
		return 0, false, fmt.Errorf("postgres replay %s (offset %d): %w", uuid, offset, err)
	}
	if err := tx.Commit(); err != nil {
		rep.Replayed--
		return 0, false, fmt.Errorf("postgres replay %s (offset %d): %w", uuid, offset, err)
	}
	return offset, false, nil
}
