package replay

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPacerSpacesEvents(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPacer(5)
		start := time.Now()
		for range 10 {
			require.NoError(t, p.wait(t.Context()))
		}
		assert.Equal(t, 9*200*time.Millisecond, time.Since(start), "the first at once, then one every 1/rate")

		// An idle pacer does not save up a burst.
		time.Sleep(10 * time.Second)
		start = time.Now()
		require.NoError(t, p.wait(t.Context()))
		require.NoError(t, p.wait(t.Context()))
		assert.Equal(t, 200*time.Millisecond, time.Since(start))

		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		assert.ErrorIs(t, p.wait(ctx), context.Canceled)
		assert.NoError(t, (*pacer)(nil).wait(t.Context()), "no rate, no wait")
	})
}
