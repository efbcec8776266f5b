package ratelimit_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/ratelimit"
)

// TestSetLimitsAppliesFromTheNextDecision: a new merchant's limits and a
// raised quota take effect at once, the counts so far kept; invalid limits
// change nothing.
func TestSetLimitsAppliesFromTheNextDecision(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	lim, err := ratelimit.New(ratelimit.Config{Defaults: ratelimit.Limits{AppDaily: 2, UserDaily: -1, Rate: -1}})
	require.NoError(t, err)
	for range 2 {
		d, err := lim.Allow(ctx, "wxA", "", now)
		require.NoError(t, err)
		require.True(t, d.Allowed)
	}
	d, err := lim.Allow(ctx, "wxA", "", now)
	require.NoError(t, err)
	assert.False(t, d.Allowed, "the day's two calls are spent")

	require.NoError(t, lim.SetLimits(ratelimit.Limits{AppDaily: 2, UserDaily: -1, Rate: -1},
		map[string]ratelimit.Limits{"wxA": {AppDaily: 3}, "wxNew": {AppDaily: 1}}))
	d, err = lim.Allow(ctx, "wxA", "", now)
	require.NoError(t, err)
	assert.True(t, d.Allowed, "the raised quota counts the two calls already made")
	assert.Equal(t, int64(1), lim.LimitsFor("wxNew").AppDaily)

	err = lim.SetLimits(ratelimit.Limits{AppDaily: 2, UserDaily: -1, Rate: -1}, map[string]ratelimit.Limits{"wxA": {Rate: 5, Burst: -3}})
	assert.Error(t, err)
	assert.Equal(t, int64(3), lim.LimitsFor("wxA").AppDaily, "an invalid change keeps the limits in force")
}
