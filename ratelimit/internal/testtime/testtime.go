// Package testtime writes the instants of ratelimit's tests as wall-clock
// times in named zones, as the daily windows are defined. The tests of
// ratelimit, of its stores and of the shared store suite import it, so that
// each helper exists once; nothing else does. It embeds the zone database,
// so that the daylight saving cases run on any machine.
package testtime

import (
	"time"
	_ "time/tzdata" // the DST tests need America/New_York on any machine
)

// MustLoad is time.LoadLocation for a zone that must exist: it panics when
// name is unknown.
func MustLoad(name string) *time.Location {
	loc, err := time.LoadLocation(name)
	if err != nil {
		panic(err)
	}
	return loc
}

var (
	// Shanghai is the default zone of the daily reset.
	Shanghai = MustLoad("Asia/Shanghai")
	// NewYork has daylight saving time, hence 23- and 25-hour days.
	NewYork = MustLoad("America/New_York")
)

// At parses a wall-clock time in loc, written "2006-01-02 15:04:05" with an
// optional fraction of a second. It panics on a malformed s.
func At(loc *time.Location, s string) time.Time {
	t, err := time.ParseInLocation("2006-01-02 15:04:05.999999999", s, loc)
	if err != nil {
		panic(err)
	}
	return t
}

// CST is At(Shanghai, s): China Standard Time, the zone of the default
// windows.
func CST(s string) time.Time { return At(Shanghai, s) }
