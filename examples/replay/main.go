// Command replay sends dead-lettered order.shipped events back to be traced
// again, once their cause is fixed: a permission granted, a phone number
// corrected, a producer repaired. It is waybill.Replay with flags.
//
//	go run ./examples/replay -brokers 127.0.0.1:9092 -topic order.shipped.dead \
//	    -reason configuration -errcode 48001 -appid wx5f3a9c1d2e4b6a80 \
//	    -since 2026-11-01T00:00:00Z -dry-run
//
// It reads the dead-letter topic up to the end offsets it finds when it
// starts, then stops, and republishes each selected event to the topic it was
// consumed from (or -to), as it was, with its waybill_replays header one
// higher. Events replayed -max-replays times already are skipped and listed.
//
// Flags:
//
//	-brokers      comma-separated Kafka brokers (default 127.0.0.1:9092)
//	-topic        dead-letter topic to read (default order.shipped.dead)
//	-to           send every selected event to this topic instead of its source topic
//	-reason       comma-separated reasons: invalid_event, permanent, configuration,
//	              not_yet_exhausted, too_many_attempts
//	-errcode      comma-separated WeChat errcodes, e.g. 48001,61007
//	-appid        comma-separated appids
//	-order-id     comma-separated order ids
//	-since        RFC 3339 time: last failure at or after it
//	-until        RFC 3339 time: last failure before it
//	-dry-run      print what would move; publish and commit nothing
//	-rate         events per second at most (0: no cap)
//	-max-replays  skip events replayed this often already (default 3)
//	-batch        records between two commits of the position (default 100)
//	-group        consumer group that records progress (default: named after
//	              -topic, -to and the filters, so the same command resumes)
//
// Selected conditions must all hold; a comma-separated list holds when any of
// its elements does. Without filters every dead letter is replayed.
//
// Output: a dry run prints one line per event that would move; a real run
// prints the events skipped for the replay limit or as invalid. Both end
// with a summary per reason. Progress goes to stderr: a bar when stderr is a
// terminal, a plain line every tenth of the way otherwise.
//
// Interrupting it (Ctrl-C) commits what was republished, so running the same
// command again resumes where it stopped. If it dies instead, the rerun
// republishes again at most -batch events per partition.
//
// Exit status: 0 when the replay completed, 1 when it failed or was
// interrupted, 2 for bad flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/waybillkit/waybill"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, isTerminal(os.Stderr))
	switch {
	case errors.Is(err, errUsage):
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, err) // waybill.Replay's errors begin with "replay"
		os.Exit(1)
	}
}

// errUsage reports bad flags; the flag package has printed why.
var errUsage = errors.New("usage")

// isTerminal reports whether f is a character device, as a terminal is.
func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// run parses args, replays, and writes results to stdout and progress to
// stderr (a bar when tty is true).
func run(ctx context.Context, args []string, stdout, stderr io.Writer, tty bool) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	verb := "replaying"
	if cfg.DryRun {
		verb = "dry run of replaying"
	}
	fmt.Fprintf(stdout, "%s %s (group %s)\n", verb, cfg.Topic, cfg.Group())

	bar := &progress{out: stdout, err: stderr, tty: tty, dry: cfg.DryRun}
	cfg.Progress = bar.update
	rep, err := waybill.Replay(ctx, cfg)
	bar.finish()
	if rep != nil {
		printReport(stdout, rep)
	}
	return err
}

func parseFlags(args []string, stderr io.Writer) (waybill.ReplayConfig, error) {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg                            waybill.ReplayConfig
		brokers, reasons, codes, appid string
		orders, since, until           string
	)
	fs.StringVar(&brokers, "brokers", "127.0.0.1:9092", "comma-separated Kafka brokers")
	fs.StringVar(&cfg.Topic, "topic", waybill.DefaultDeadLetterTopic, "dead-letter topic to read")
	fs.StringVar(&cfg.To, "to", "", "send every selected event to this topic instead of its source topic")
	fs.StringVar(&reasons, "reason", "", "comma-separated dead-letter reasons")
	fs.StringVar(&codes, "errcode", "", "comma-separated WeChat errcodes")
	fs.StringVar(&appid, "appid", "", "comma-separated appids")
	fs.StringVar(&orders, "order-id", "", "comma-separated order ids")
	fs.StringVar(&since, "since", "", "RFC 3339 time: last failure at or after it")
	fs.StringVar(&until, "until", "", "RFC 3339 time: last failure before it")
	fs.BoolVar(&cfg.DryRun, "dry-run", false, "print what would move; publish and commit nothing")
	fs.Float64Var(&cfg.Rate, "rate", 0, "events per second at most (0: no cap)")
	fs.IntVar(&cfg.MaxReplays, "max-replays", waybill.DefaultMaxReplays, "skip events replayed this often already")
	fs.IntVar(&cfg.Batch, "batch", waybill.DefaultReplayBatch, "records between two commits of the position")
	fs.StringVar(&cfg.Kafka.ConsumerGroup, "group", "", "consumer group (default: named after the topic, -to and the filters)")
	if err := fs.Parse(args); err != nil {
		return cfg, errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected arguments: %q\n", fs.Args())
		return cfg, errUsage
	}

	cfg.Kafka.Brokers = list(brokers)
	for _, r := range list(reasons) {
		cfg.Filter.Reasons = append(cfg.Filter.Reasons, waybill.Reason(r))
	}
	cfg.Filter.AppIDs, cfg.Filter.OrderIDs = list(appid), list(orders)
	var errs []error
	for _, c := range list(codes) {
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
		return cfg, errUsage
	}
	return cfg, nil
}

// list splits a comma-separated flag, dropping blanks.
func list(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// describe is the one-line account of an event. It holds no personal data:
// ids, codes and WeChat's errmsg (validation messages name fields, never
// their values).
func describe(ev waybill.ReplayEvent) string {
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
	case waybill.WouldReplay, waybill.Replayed:
		fmt.Fprintf(&b, " -> %s", ev.To)
	case waybill.SkippedInvalid:
		fmt.Fprintf(&b, " (%s)", ev.Problem)
	}
	if d := ev.Dead; d != nil && d.Errmsg != "" && ev.Outcome == waybill.WouldReplay {
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
func printReport(w io.Writer, rep *waybill.ReplayReport) {
	moved := "replayed"
	if rep.DryRun {
		moved = "would replay"
	}
	c := rep.ReplayCounts
	fmt.Fprintf(w, "%d scanned, %d %s, %d skipped by filter, %d skipped over the replay limit, %d invalid\n",
		c.Scanned, c.Replayed, moved, c.SkippedByFilter, c.SkippedOverLimit, c.SkippedInvalid)
	reasons := make([]string, 0, len(rep.ByReason))
	for r := range rep.ByReason {
		reasons = append(reasons, string(r))
	}
	sort.Strings(reasons)
	for _, r := range reasons {
		rc := rep.ByReason[waybill.Reason(r)]
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
// a line on stdout. Replay calls update serially.
type progress struct {
	out, err io.Writer
	tty, dry bool

	last      waybill.ReplayProgress
	drawn     bool      // a bar is on the terminal's current line
	drawnAt   time.Time // when the bar was last drawn
	nextTenth int64     // plain mode: the next tenth to report
}

const barWidth = 30

func (p *progress) update(u waybill.ReplayProgress) {
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
func (p *progress) eventLine(ev waybill.ReplayEvent) string {
	switch ev.Outcome {
	case waybill.WouldReplay:
		return "would replay  " + describe(ev)
	case waybill.SkippedOverLimit:
		return "over limit    " + describe(ev)
	case waybill.SkippedInvalid:
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

func (p *progress) counts(u waybill.ReplayProgress) string {
	moved := "replayed"
	if p.dry {
		moved = "would replay"
	}
	return fmt.Sprintf("%d/%d scanned, %d %s, %d filtered, %d over limit, %d invalid",
		u.Scanned, u.Total, u.Replayed, moved, u.SkippedByFilter, u.SkippedOverLimit, u.SkippedInvalid)
}
