package ratelimit

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/waybillkit/waybill/ratelimit/internal/testtime"
)

func TestWindow(t *testing.T) {
	utc := func(s string) time.Time { return testtime.At(time.UTC, s) }
	ny := func(s string) time.Time { return testtime.At(testtime.NewYork, s) }
	for _, c := range []struct {
		name       string
		loc        *time.Location
		resetAt    time.Duration
		now        time.Time
		start, end time.Time
		id         string
	}{
		{"default: 00:00 Shanghai, which is 16:00 UTC", nil, 0,
			utc("2026-03-14 15:59:59.999999999"), utc("2026-03-13 16:00:00"), utc("2026-03-14 16:00:00"), "20260314"},
		{"default, at the reset", nil, 0,
			utc("2026-03-14 16:00:00"), utc("2026-03-14 16:00:00"), utc("2026-03-15 16:00:00"), "20260315"},
		{"UTC 04:30, before the reset", time.UTC, 4*time.Hour + 30*time.Minute,
			utc("2026-01-01 04:29:59"), utc("2025-12-31 04:30:00"), utc("2026-01-01 04:30:00"), "20251231"},
		{"New York spring forward day", testtime.NewYork, 0,
			ny("2026-03-08 12:00:00"), utc("2026-03-08 05:00:00"), utc("2026-03-09 04:00:00"), "20260308"},
		{"New York fall back day", testtime.NewYork, 0,
			ny("2026-11-01 12:00:00"), utc("2026-11-01 04:00:00"), utc("2026-11-02 05:00:00"), "20261101"},
		// 02:30 does not exist on 2026-03-08 in New York; time.Date reads
		// it with the offset before the jump, 01:30 EST.
		{"New York, reset in the gap", testtime.NewYork, 2*time.Hour + 30*time.Minute,
			ny("2026-03-08 12:00:00"), utc("2026-03-08 06:30:00"), utc("2026-03-09 06:30:00"), "20260308"},
		{"New York, day before the gap", testtime.NewYork, 2*time.Hour + 30*time.Minute,
			ny("2026-03-08 01:00:00"), utc("2026-03-07 07:30:00"), utc("2026-03-08 06:30:00"), "20260307"},
		// Santiago skips 00:00-01:00 on 2026-09-06; time.Date reads that
		// midnight as 23:00 the evening before.
		{"Santiago, midnight in the gap", testtime.MustLoad("America/Santiago"), 0,
			testtime.At(testtime.MustLoad("America/Santiago"), "2026-09-05 23:34:00"), utc("2026-09-06 03:00:00"), utc("2026-09-07 03:00:00"), "20260906"},
		{"month and year boundary", testtime.Shanghai, 23 * time.Hour,
			testtime.CST("2026-01-01 22:00:00"), testtime.CST("2025-12-31 23:00:00"), testtime.CST("2026-01-01 23:00:00"), "20251231"},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, err := New(Config{Location: c.loc, ResetAt: c.resetAt})
			if err != nil {
				t.Fatal(err)
			}
			start, end, id := l.clock.window(c.now)
			if !start.Equal(c.start) || !end.Equal(c.end) || id != c.id {
				t.Errorf("window(%s) = [%s, %s) %s; want [%s, %s) %s",
					c.now, start.UTC(), end.UTC(), id, c.start.UTC(), c.end.UTC(), c.id)
			}
		})
	}
}

// TestWindowsTileTime walks a year in steps that hit every hour of the day
// and checks that windows hold the instant, abut without gap or overlap,
// begin at the reset's wall-clock time (except on a gap day), and last a
// day give or take a transition.
func TestWindowsTileTime(t *testing.T) {
	zones := []*time.Location{testtime.Shanghai, testtime.NewYork, time.UTC, testtime.MustLoad("Australia/Lord_Howe"), testtime.MustLoad("America/Santiago")}
	resets := []time.Duration{0, 2*time.Hour + 30*time.Minute, 23*time.Hour + 59*time.Minute}
	for _, loc := range zones {
		for _, r := range resets {
			c := newClock(loc, r)
			prevID := ""
			for now := testtime.At(loc, "2026-01-01 00:00:00"); now.Year() == 2026; now = now.Add(97 * time.Minute) {
				start, end, id := c.window(now)
				if now.Before(start) || !now.Before(end) {
					t.Fatalf("%s reset %v: window(%s) = [%s, %s) misses it", loc, r, now, start, end)
				}
				if s, _, sid := c.window(start); !s.Equal(start) || sid != id {
					t.Fatalf("%s reset %v: window(start %s) starts at %s (%s, want %s)", loc, r, start, s, sid, id)
				}
				if _, e, _ := c.window(start.Add(-time.Nanosecond)); !e.Equal(start) {
					t.Fatalf("%s reset %v: the window before %s ends at %s", loc, r, start, e)
				}
				if d := end.Sub(start); d < 22*time.Hour || d > 26*time.Hour {
					t.Fatalf("%s reset %v: window [%s, %s) lasts %v", loc, r, start, end, d)
				}
				h, m, sec := start.In(loc).Clock()
				if wall := time.Duration(h)*time.Hour + time.Duration(m)*time.Minute + time.Duration(sec)*time.Second; wall != r.Truncate(time.Second) {
					// Allowed only where that wall-clock time does not
					// exist: beside a change of offset.
					_, before := start.Add(-3 * time.Hour).Zone()
					_, after := start.Add(3 * time.Hour).Zone()
					if before == after {
						t.Fatalf("%s reset %v: window starts at %s, wall clock %v", loc, r, start, wall)
					}
				}
				if id < prevID {
					t.Fatalf("%s reset %v: window id went back from %s to %s", loc, r, prevID, id)
				}
				prevID = id
			}
		}
	}
}

func TestDefaultLocationWithoutZoneDatabase(t *testing.T) {
	defer func(f func(string) (*time.Location, error)) { loadLocation = f }(loadLocation)
	loadLocation = func(string) (*time.Location, error) { return nil, errors.New("no zone database") }
	l, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	start, end := l.Window(testtime.At(time.UTC, "2026-07-01 15:00:00"))
	if want := testtime.At(time.UTC, "2026-06-30 16:00:00"); !start.Equal(want) || !end.Equal(want.Add(24*time.Hour)) {
		t.Errorf("Window = [%s, %s), want to start at %s", start, end, want)
	}
	if name, off := start.Zone(); name != "CST" || off != 8*3600 {
		t.Errorf("zone %s %d, want CST +8h", name, off)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  Config
		want string // substring of the error; empty: valid
	}{
		{"zero", Config{}, ""},
		{"reset 23:59:59.999999999", Config{ResetAt: 24*time.Hour - 1}, ""},
		{"reset negative", Config{ResetAt: -time.Second}, "ResetAt"},
		{"reset 24h", Config{ResetAt: 24 * time.Hour}, "ResetAt"},
		{"negative burst", Config{Defaults: Limits{Burst: -1}}, "Defaults"},
		{"NaN rate in an app", Config{Apps: map[string]Limits{"wxA": {Rate: math.NaN()}}}, `Apps["wxA"]`},
		{"tiny rate", Config{Defaults: Limits{Rate: 1e-12}}, "Defaults"},
		{"century-deep bucket", Config{Apps: map[string]Limits{"wxA": {Rate: 1e-6, Burst: 1 << 30}}}, `Apps["wxA"]`},
		{"negative burst ignored without a rate", Config{Defaults: Limits{Rate: -1, Burst: -1}}, ""},
		{"app inherits a bad default", Config{Defaults: Limits{Burst: -3}, Apps: map[string]Limits{"wxA": {Rate: 5}}}, "Defaults"},
		{"unlimited everything", Config{Defaults: Limits{AppDaily: -1, UserDaily: -1, Rate: math.Inf(1)}}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.cfg.Validate()
			if c.want == "" && err != nil {
				t.Fatalf("Validate() = %v, want nil", err)
			}
			if c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
				t.Fatalf("Validate() = %v, want an error naming %s", err, c.want)
			}
			if _, nerr := New(c.cfg); (nerr == nil) != (err == nil) {
				t.Errorf("New error %v disagrees with Validate %v", nerr, err)
			}
		})
	}
}

func TestLimitsFor(t *testing.T) {
	l, err := New(Config{
		Defaults: Limits{UserDaily: 50, Rate: 2.5},
		Apps: map[string]Limits{
			"wxA": {AppDaily: 1000, Burst: 10},
			"wxB": {AppDaily: -5, UserDaily: -1, Rate: -1, Burst: 7},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		appid string
		want  Limits
	}{
		{"wxA", Limits{AppDaily: 1000, UserDaily: 50, Rate: 2.5, Burst: 10}},
		{"wxB", Limits{AppDaily: -1, UserDaily: -1, Rate: math.Inf(1), Burst: 0}},
		{"other", Limits{AppDaily: DefaultAppDaily, UserDaily: 50, Rate: 2.5, Burst: 3}},
	} {
		if got := l.LimitsFor(c.appid); got != c.want {
			t.Errorf("LimitsFor(%s) = %+v, want %+v", c.appid, got, c.want)
		}
	}
}

func TestReasonString(t *testing.T) {
	for r, want := range map[Reason]string{
		ReasonNone: "none", ReasonAppDaily: "app_daily", ReasonUserDaily: "user_daily", ReasonRate: "rate", 9: "Reason(9)",
	} {
		if got := r.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", r, got, want)
		}
	}
}
