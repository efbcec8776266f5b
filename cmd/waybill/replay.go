package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/replay"
)

// replayCommand is the first argument that selects `waybill replay`.
const replayCommand = "replay"

// replayMain runs `waybill replay` with args (those after "replay") and
// returns its exit status: 0 when the replay completed, 1 when it failed or
// was interrupted, 2 for bad flags.
func replayMain(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, tty bool) int {
	err := runReplay(ctx, args, getenv, stdout, stderr, tty)
	switch {
	case errors.Is(err, errHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case err != nil:
		fmt.Fprintln(stderr, err) // replay.Run's errors begin with "replay"
		return 1
	}
	return 0
}

// isTerminal reports whether f is a character device, as a terminal is.
func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// runReplay parses the arguments of `waybill replay`, replays, and writes
// results to stdout and progress to stderr (a bar when tty is true).
func runReplay(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, tty bool) error {
	cfg, asJSON, err := parseReplayFlags(args, getenv, stderr)
	if err != nil {
		return err
	}
	if asJSON {
		return replayJSON(ctx, cfg, stdout, stderr, tty)
	}
	verb := "replaying"
	if cfg.DryRun {
		verb = "dry run of replaying"
	}
	fmt.Fprintf(stdout, "%s %s (group %s)\n", verb, cfg.Topic, cfg.Group())

	bar := &progress{out: stdout, err: stderr, tty: tty, dry: cfg.DryRun}
	cfg.Progress = bar.update
	rep, err := replay.Run(ctx, cfg)
	bar.finish()
	if rep != nil {
		printReport(stdout, rep)
	}
	return err
}

// parseReplayFlags reads the flags of `waybill replay`. Errors are printed
// to stderr and reported as errUsage.
func parseReplayFlags(args []string, getenv func(string) string, stderr io.Writer) (cfg replay.Config, asJSON bool, err error) {
	fs := flag.NewFlagSet("waybill replay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		kf                    kafkaFlags
		reasons, codes, appid string
		orders, since, until  string
	)
	kf.register(fs)
	fs.StringVar(&cfg.Topic, "topic", deadletter.DefaultTopic, "dead-letter topic to read")
	fs.StringVar(&cfg.To, "to", "", "send every selected event to this topic instead of its source topic")
	fs.StringVar(&reasons, "reason", "", "comma-separated dead-letter reasons")
	fs.StringVar(&codes, "errcode", "", "comma-separated WeChat errcodes")
	fs.StringVar(&appid, "appid", "", "comma-separated appids")
	fs.StringVar(&orders, "order-id", "", "comma-separated order ids")
	fs.StringVar(&since, "since", "", "RFC 3339 time: last failure at or after it")
	fs.StringVar(&until, "until", "", "RFC 3339 time: last failure before it")
	fs.BoolVar(&cfg.DryRun, "dry-run", false, "print what would move; publish and commit nothing")
	fs.BoolVar(&asJSON, "json", false, "write one JSON object a line: every record read, then the report")
	fs.Float64Var(&cfg.Rate, "rate", 0, "events per second at most (0: no cap)")
	fs.IntVar(&cfg.MaxReplays, "max-replays", replay.DefaultMaxReplays, "skip events replayed this often already")
	fs.IntVar(&cfg.Batch, "batch", replay.DefaultBatch, "records between two commits of the position")
	fs.StringVar(&cfg.Kafka.ConsumerGroup, "group", "", "consumer group (default: named after the topic, -to and the filters)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: waybill replay [flags]\n\nThe Kafka flags (-brokers, -kafka-*) fall back to the service's %sBROKERS, %sKAFKA_*.\n\n", envPrefix, envPrefix)
		fs.PrintDefaults()
	}
	if err := parseArgs(fs, args); err != nil {
		return cfg, asJSON, err
	}

	// Only the Kafka flags read WAYBILL_*: the service's environment sets
	// -group and -rate for itself, and a replay run in its container must
	// not join the service's consumer group.
	errs := fallBackToEnv(fs, getenv, isKafkaFlag)
	if err := kf.apply(&cfg.Kafka); err != nil {
		errs = append(errs, err)
	}
	for _, r := range splitList(reasons) {
		cfg.Filter.Reasons = append(cfg.Filter.Reasons, deadletter.Reason(r))
	}
	cfg.Filter.AppIDs, cfg.Filter.OrderIDs = splitList(appid), splitList(orders)
	for _, c := range splitList(codes) {
		n, err := strconv.Atoi(c)
		if err != nil {
			errs = append(errs, fmt.Errorf("-errcode %q is not a number", c))
		}
		cfg.Filter.Errcodes = append(cfg.Filter.Errcodes, n)
	}
	parseTime := func(name, s string, into *time.Time) {
		if s == "" {
			return
		}
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			errs = append(errs, fmt.Errorf("-%s %q is not an RFC 3339 time such as 2026-11-01T00:00:00Z", name, s))
		}
		*into = t
	}
	parseTime("since", since, &cfg.Filter.Since)
	parseTime("until", until, &cfg.Filter.Until)
	if err := cfg.Validate(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		fmt.Fprintln(stderr, errors.Join(errs...))
		return cfg, asJSON, errUsage
	}
	return cfg, asJSON, nil
}

// describe is the one-line account of an event. It holds no personal data:
// ids, codes and WeChat's errmsg (validation messages name fields, never
// their values).
func describe(ev replay.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "p%d@%d  order=%s", ev.Partition, ev.Offset, orDash(ev.OrderID))
	if ev.AppID != "" {
		fmt.Fprintf(&b, " appid=%s", ev.AppID)
	}
	if d := ev.Dead; d != nil {
		fmt.Fprintf(&b, " reason=%s", d.Reason)
		if d.HasErrcode {
			fmt.Fprintf(&b, " errcode=%d", d.Errcode)
		}
		if !d.LastFailure.IsZero() {
			fmt.Fprintf(&b, " failed=%s", d.LastFailure.UTC().Format(time.RFC3339))
		}
	}
	fmt.Fprintf(&b, " replays=%d", ev.Replays)
	switch ev.Outcome {
	case replay.WouldReplay, replay.Replayed:
		fmt.Fprintf(&b, " -> %s", ev.To)
	case replay.SkippedInvalid:
		fmt.Fprintf(&b, " (%s)", ev.Problem)
	}
	if d := ev.Dead; d != nil && d.Errmsg != "" && ev.Outcome == replay.WouldReplay {
		fmt.Fprintf(&b, "  %q", d.Errmsg)
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// printReport writes the summary: totals, a line per reason, and the events
// skipped for the replay limit.
func printReport(w io.Writer, rep *replay.Report) {
	moved := "replayed"
	if rep.DryRun {
		moved = "would replay"
	}
	c := rep.Counts
	fmt.Fprintf(w, "%d scanned, %d %s, %d skipped by filter, %d skipped over the replay limit, %d invalid\n",
		c.Scanned, c.Replayed, moved, c.SkippedByFilter, c.SkippedOverLimit, c.SkippedInvalid)
	reasons := make([]string, 0, len(rep.ByReason))
	for r := range rep.ByReason {
		reasons = append(reasons, string(r))
	}
	sort.Strings(reasons)
	for _, r := range reasons {
		rc := rep.ByReason[deadletter.Reason(r)]
		fmt.Fprintf(w, "  %-18s %d scanned, %d %s, %d skipped by filter, %d over limit, %d invalid\n",
			orDash(r), rc.Scanned, rc.Replayed, moved, rc.SkippedByFilter, rc.SkippedOverLimit, rc.SkippedInvalid)
	}
	if len(rep.OverLimit) > 0 {
		fmt.Fprintf(w, "skipped over the replay limit (raise -max-replays with a new selection to send them again):\n")
		for _, ev := range rep.OverLimit {
			fmt.Fprintf(w, "  %s  %s\n", ev.ID, describe(ev))
		}
	}
}

// progress draws the replay's progress on stderr and prints the events worth
// a line on stdout. replay.Run calls update serially.
type progress struct {
	out, err io.Writer
	tty, dry bool

	last      replay.Progress
	drawn     bool      // a bar is on the terminal's current line
	drawnAt   time.Time // when the bar was last drawn
	nextTenth int64     // plain mode: the next tenth to report
}

const barWidth = 30

func (p *progress) update(u replay.Progress) {
	p.last = u
	if line := p.eventLine(u.Event); line != "" {
		p.clear()
		fmt.Fprintln(p.out, line)
	}
	if p.tty {
		if time.Since(p.drawnAt) >= 100*time.Millisecond || int64(u.Scanned) == u.Total {
			p.draw()
		}
		return
	}
	if u.Total > 0 && int64(u.Scanned)*10 >= p.nextTenth*u.Total {
		fmt.Fprintf(p.err, "progress: %s\n", p.counts(u))
		for int64(u.Scanned)*10 >= p.nextTenth*u.Total {
			p.nextTenth++
		}
	}
}

// eventLine is the stdout line for an event, or "".
func (p *progress) eventLine(ev replay.Event) string {
	switch ev.Outcome {
	case replay.WouldReplay:
		return "would replay  " + describe(ev)
	case replay.SkippedOverLimit:
		return "over limit    " + describe(ev)
	case replay.SkippedInvalid:
		return "invalid       " + describe(ev)
	}
	return ""
}

func (p *progress) draw() {
	u := p.last
	filled := barWidth
	if u.Total > 0 {
		filled = int(int64(u.Scanned) * barWidth / u.Total)
	}
	fmt.Fprintf(p.err, "\r\033[K[%s%s] %s", strings.Repeat("#", filled), strings.Repeat(".", barWidth-filled), p.counts(u))
	p.drawn, p.drawnAt = true, time.Now()
}

// clear erases the bar so a line can be printed; the next update redraws it.
func (p *progress) clear() {
	if p.drawn {
		fmt.Fprint(p.err, "\r\033[K")
		p.drawn, p.drawnAt = false, time.Time{}
	}
}

// finish leaves the final bar on its own line.
func (p *progress) finish() {
	if p.tty && p.last.Scanned > 0 {
		p.draw()
		fmt.Fprintln(p.err)
	}
}

func (p *progress) counts(u replay.Progress) string {
	moved := "replayed"
	if p.dry {
		moved = "would replay"
	}
	return fmt.Sprintf("%d/%d scanned, %d %s, %d filtered, %d over limit, %d invalid",
		u.Scanned, u.Total, u.Replayed, moved, u.SkippedByFilter, u.SkippedOverLimit, u.SkippedInvalid)
}
