package replay

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/kafka"
)

// Defaults of Config.
const (
	// DefaultMaxReplays is how often an event may be replayed before Run
	// skips it as poison.
	DefaultMaxReplays = 3
	// DefaultBatch is how many records Run handles on a partition between
	// two commits of its consumer position.
	DefaultBatch = 100
)

// Config configures Run. Kafka.Brokers is required; every other field has a
// default, documented on it.
type Config struct {
	// Kafka reaches the cluster. Brokers is required; Version zero means
	// 4.0; ClientID "" means "waybill-replay"; NackResendSleep is not used.
	//
	// ConsumerGroup is the group whose committed position records what has
	// been replayed. "" means Group(): a name derived from Topic, To and
	// Filter, so that running the same replay again resumes it, while a
	// replay with another filter starts from the oldest dead letter instead
	// of behind records an earlier, narrower replay skipped.
	Kafka kafka.Config
	// Topic is the dead-letter topic to read. "" means
	// deadletter.DefaultTopic.
	Topic string
	// To, if not "", receives every replayed event. "" sends each event back
	// to the topic it was consumed from (deadletter.HeaderDeadSourceTopic).
	To string
	// Filter selects the events to replay. The zero Filter selects all.
	Filter Filter
	// MaxReplays: an event whose deadletter.HeaderReplays has reached it is
	// not replayed but reported in Report.OverLimit, so a poison event
	// cannot loop between the handler and the dead-letter topic. Zero means
	// DefaultMaxReplays.
	MaxReplays int
	// DryRun reads and reports what would move and changes nothing: it
	// publishes nothing, commits nothing and does not join the consumer
	// group (so it does not disturb a replay in progress). It reads from the
	// group's committed position, so it shows what a real run would do now.
	DryRun bool
	// Rate caps the events republished per second; they leave evenly spaced
	// (no bursts), so the handler behind them does not spend WeChat's
	// per-minute quota in one go. Zero means no cap.
	Rate float64
	// Batch is how many records a partition may handle between two commits
	// of the consumer position. It bounds the duplicates of a crash; see
	// Run. Zero means DefaultBatch.
	Batch int
	// Decode reads the appid and order id of an event from its payload, for
	// the filters and the report. Nil means event.DecodeJSON. An event it
	// cannot decode has no appid, and its order id is
	// deadletter.HeaderDeadKey.
	Decode event.DecodeFunc
	// Progress, if not nil, is called after each record read, with the
	// counts so far. Calls never overlap, and the partitions wait while it
	// runs: it must return quickly.
	Progress func(Progress)
}

// Filter selects dead letters. Every non-empty condition must hold; a list
// holds when the event matches any of its elements. The zero value selects
// every dead letter.
type Filter struct {
	// Reasons are the reason classes to replay, e.g.
	// deadletter.ReasonConfiguration.
	Reasons []deadletter.Reason
	// Errcodes are WeChat errcodes; events with no errcode (WeChat was not
	// called) never match a non-empty list.
	Errcodes []int
	// AppIDs are mini program appids, read from the payload by Decode.
	AppIDs []string
	// OrderIDs are order ids, read from the payload by Decode or else from
	// deadletter.HeaderDeadKey.
	OrderIDs []string
	// Since, if not zero, selects events whose last failure is at or after
	// it.
	Since time.Time
	// Until, if not zero, selects events whose last failure is before it.
	Until time.Time
}

// Match reports whether f selects ev. An event that is not a waybill dead
// letter (ev.Dead is nil) never matches.
func (f *Filter) Match(ev *Event) bool {
	d := ev.Dead
	switch {
	case d == nil:
		return false
	case len(f.Reasons) > 0 && !slices.Contains(f.Reasons, d.Reason):
		return false
	case len(f.Errcodes) > 0 && (!d.HasErrcode || !slices.Contains(f.Errcodes, d.Errcode)):
		return false
	case len(f.AppIDs) > 0 && !slices.Contains(f.AppIDs, ev.AppID):
		return false
	case len(f.OrderIDs) > 0 && !slices.Contains(f.OrderIDs, ev.OrderID):
		return false
	case !f.Since.IsZero() && (d.LastFailure.IsZero() || d.LastFailure.Before(f.Since)):
		return false
	case !f.Until.IsZero() && (d.LastFailure.IsZero() || !d.LastFailure.Before(f.Until)):
		return false
	}
	return true
}

// key is a canonical text of f, for Group.
func (f *Filter) key() string {
	sorted := func(ss []string) string {
		ss = slices.Clone(ss)
		sort.Strings(ss)
		return strings.Join(ss, ",")
	}
	reasons := make([]string, len(f.Reasons))
	for i, r := range f.Reasons {
		reasons[i] = string(r)
	}
	codes := make([]string, len(f.Errcodes))
	for i, c := range f.Errcodes {
		codes[i] = strconv.Itoa(c)
	}
	instant := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339Nano)
	}
	return strings.Join([]string{sorted(reasons), sorted(codes), sorted(f.AppIDs), sorted(f.OrderIDs),
		instant(f.Since), instant(f.Until)}, "\x00")
}

func (c *Config) setDefaults() {
	if c.Topic == "" {
		c.Topic = deadletter.DefaultTopic
	}
	if c.Kafka.ConsumerGroup == "" {
		c.Kafka.ConsumerGroup = c.Group()
	}
	if c.Kafka.ClientID == "" {
		c.Kafka.ClientID = "waybill-replay"
	}
	if c.MaxReplays == 0 {
		c.MaxReplays = DefaultMaxReplays
	}
	if c.Batch == 0 {
		c.Batch = DefaultBatch
	}
	if c.Decode == nil {
		c.Decode = event.DecodeJSON
	}
}

// Group returns the consumer group Run uses: Kafka.ConsumerGroup, or, when
// that is "", "waybill-replay-" and a digest of the topic, the destination
// and the filter.
func (c Config) Group() string {
	if c.Kafka.ConsumerGroup != "" {
		return c.Kafka.ConsumerGroup
	}
	topic := c.Topic
	if topic == "" {
		topic = deadletter.DefaultTopic
	}
	sum := sha256.Sum256([]byte(topic + "\x00" + c.To + "\x00" + c.Filter.key()))
	return "waybill-replay-" + hex.EncodeToString(sum[:6])
}

// Validate reports a configuration that cannot work.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Kafka.Brokers) == 0 {
		errs = append(errs, errors.New("Kafka.Brokers is required"))
	}
	if c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) {
		errs = append(errs, fmt.Errorf("Rate %v is not a number of events per second ≥ 0", c.Rate))
	}
	if c.MaxReplays < 0 {
		errs = append(errs, fmt.Errorf("MaxReplays %d is negative", c.MaxReplays))
	}
	if c.Batch < 0 {
		errs = append(errs, fmt.Errorf("Batch %d is negative", c.Batch))
	}
	for _, r := range c.Filter.Reasons {
		if !r.Known() {
			// A misspelt reason would select nothing, silently.
			errs = append(errs, fmt.Errorf("Filter.Reasons: unknown reason %q", r))
		}
	}
	if f := c.Filter; !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until) {
		errs = append(errs, fmt.Errorf("Filter.Since %s is not before Filter.Until %s",
			f.Since.Format(time.RFC3339), f.Until.Format(time.RFC3339)))
	}
	if len(errs) > 0 {
		return fmt.Errorf("replay config: %w", errors.Join(errs...))
	}
	return nil
}
