package main

import (
	"context"
	"encoding/json"
	"io"

	"github.com/waybillkit/waybill/replay"
)

// jsonRecord is one line of `waybill replay -json` for a record read.
type jsonRecord struct {
	Type      string `json:"type"` // "record"
	ID        string `json:"id"`
	Partition int32  `json:"partition"`
	Offset    int64  `json:"offset"`
	OrderID   string `json:"order_id,omitempty"`
	AppID     string `json:"appid,omitempty"`
	Reason    string `json:"reason,omitempty"`
	Errcode   *int   `json:"errcode,omitempty"`
	Replays   int    `json:"replays"`
	To        string `json:"to,omitempty"`
	Outcome   string `json:"outcome"`
	Problem   string `json:"problem,omitempty"`
}

// jsonReport is the last line of `waybill replay -json`.
type jsonReport struct {
	Type     string                `json:"type"` // "report"
	Topic    string                `json:"topic"`
	Group    string                `json:"group"`
	DryRun   bool                  `json:"dry_run"`
	Counts   jsonCounts            `json:"counts"`
	ByReason map[string]jsonCounts `json:"by_reason"`
	Error    string                `json:"error,omitempty"`
}

type jsonCounts struct {
	Scanned          int `json:"scanned"`
	Replayed         int `json:"replayed"` // would be replayed, in a dry run
	SkippedByFilter  int `json:"skipped_by_filter"`
	SkippedOverLimit int `json:"skipped_over_limit"`
	SkippedInvalid   int `json:"skipped_invalid"`
}

func countsOf(c replay.Counts) jsonCounts {
	return jsonCounts{c.Scanned, c.Replayed, c.SkippedByFilter, c.SkippedOverLimit, c.SkippedInvalid}
}

// replayJSON is runReplay with -json: stdout carries one JSON object a line
// (each record read, then the report, also when the replay failed), for
// scripts; stderr still carries the progress.
func replayJSON(ctx context.Context, cfg replay.Config, stdout, stderr io.Writer, tty bool) error {
	enc := json.NewEncoder(stdout)
	enc.SetEscapeHTML(false)
	bar := &progress{out: io.Discard, err: stderr, tty: tty, dry: cfg.DryRun}
	cfg.Progress = func(p replay.Progress) {
		ev := p.Event
		rec := jsonRecord{Type: "record", ID: ev.ID, Partition: ev.Partition, Offset: ev.Offset, OrderID: ev.OrderID,
			AppID: ev.AppID, Replays: ev.Replays, To: ev.To, Outcome: ev.Outcome.String(), Problem: ev.Problem}
		if d := ev.Dead; d != nil {
			rec.Reason = string(d.Reason)
			if d.HasErrcode {
				code := d.Errcode
				rec.Errcode = &code
			}
		}
		_ = enc.Encode(rec)
		bar.update(p)
	}
	rep, err := replay.Run(ctx, cfg)
	bar.finish()
	out := jsonReport{Type: "report", Topic: cfg.Topic, Group: cfg.Group(), DryRun: cfg.DryRun, ByReason: map[string]jsonCounts{}}
	if rep != nil {
		out.Counts = countsOf(rep.Counts)
		for r, c := range rep.ByReason {
			out.ByReason[string(r)] = countsOf(c)
		}
	}
	if err != nil {
		out.Error = err.Error()
	}
	_ = enc.Encode(out)
	return err
}
