package replay

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/kafka"
)

func TestFilterMatch(t *testing.T) {
	base := func() Event {
		return Event{OrderID: "O1", AppID: "wxA", Dead: &deadletter.Letter{
			Reason: deadletter.ReasonConfiguration, HasErrcode: true, Errcode: 48001, LastFailure: rtDay.Add(12 * time.Hour)}}
	}
	noErrcode := base()
	noErrcode.Dead = &deadletter.Letter{Reason: deadletter.ReasonInvalidEvent, LastFailure: rtDay}
	notDead := base()
	notDead.Dead = nil
	noTime := base()
	noTime.Dead.LastFailure = time.Time{}

	cases := map[string]struct {
		f    Filter
		ev   Event
		want bool
	}{
		"zero filter selects all":           {Filter{}, base(), true},
		"zero filter skips non dead letter": {Filter{}, notDead, false},
		"reason in list":                    {Filter{Reasons: []deadletter.Reason{deadletter.ReasonPermanent, deadletter.ReasonConfiguration}}, base(), true},
		"reason not in list":                {Filter{Reasons: []deadletter.Reason{deadletter.ReasonPermanent}}, base(), false},
		"errcode in list":                   {Filter{Errcodes: []int{61007, 48001}}, base(), true},
		"errcode not in list":               {Filter{Errcodes: []int{61007}}, base(), false},
		"no errcode never matches codes":    {Filter{Errcodes: []int{0}}, noErrcode, false},
		"appid":                             {Filter{AppIDs: []string{"wxA"}}, base(), true},
		"other appid":                       {Filter{AppIDs: []string{"wxB"}}, base(), false},
		"order id":                          {Filter{OrderIDs: []string{"O9", "O1"}}, base(), true},
		"other order id":                    {Filter{OrderIDs: []string{"O9"}}, base(), false},
		"since is inclusive":                {Filter{Since: rtDay.Add(12 * time.Hour)}, base(), true},
		"before since":                      {Filter{Since: rtDay.Add(13 * time.Hour)}, base(), false},
		"until is exclusive":                {Filter{Until: rtDay.Add(12 * time.Hour)}, base(), false},
		"before until":                      {Filter{Until: rtDay.Add(13 * time.Hour)}, base(), true},
		"time filter needs a time":          {Filter{Since: rtDay.AddDate(-1, 0, 0)}, noTime, false},
		"all conditions hold": {Filter{Reasons: []deadletter.Reason{deadletter.ReasonConfiguration}, Errcodes: []int{48001},
			AppIDs: []string{"wxA"}, OrderIDs: []string{"O1"}, Since: rtDay, Until: rtDay.AddDate(0, 0, 1)}, base(), true},
		"one condition fails": {Filter{Reasons: []deadletter.Reason{deadletter.ReasonConfiguration}, Errcodes: []int{48001},
			AppIDs: []string{"wxB"}}, base(), false},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, c.want, c.f.Match(&c.ev))
		})
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{Kafka: kafka.Config{Brokers: []string{"127.0.0.1:9092"}}}
	require.NoError(t, ok.Validate())
	cases := map[string]func(*Config){
		"no brokers":        func(c *Config) { c.Kafka.Brokers = nil },
		"negative rate":     func(c *Config) { c.Rate = -1 },
		"negative limit":    func(c *Config) { c.MaxReplays = -1 },
		"negative batch":    func(c *Config) { c.Batch = -1 },
		"since after until": func(c *Config) { c.Filter.Since, c.Filter.Until = rtDay.AddDate(0, 0, 1), rtDay },
		"empty time range":  func(c *Config) { c.Filter.Since, c.Filter.Until = rtDay, rtDay },
		"misspelt reason":   func(c *Config) { c.Filter.Reasons = []deadletter.Reason{"configuraton"} },
	}
	for name, mod := range cases {
		t.Run(name, func(t *testing.T) {
			c := ok
			mod(&c)
			assert.Error(t, c.Validate())
			_, err := Run(t.Context(), c)
			assert.Error(t, err, "Run validates before it connects")
		})
	}
}

func TestConfigGroupNamesTheSelection(t *testing.T) {
	a := Config{Filter: Filter{Reasons: []deadletter.Reason{deadletter.ReasonConfiguration, deadletter.ReasonPermanent}, Errcodes: []int{48001, 61007}}}
	b := Config{Filter: Filter{Reasons: []deadletter.Reason{deadletter.ReasonPermanent, deadletter.ReasonConfiguration}, Errcodes: []int{61007, 48001}}}
	assert.Equal(t, a.Group(), b.Group(), "the order of a list does not matter")
	assert.Regexp(t, `^waybill-replay-[0-9a-f]{12}$`, a.Group())
	// Pinned: a replay run again must find the position its group
	// committed, in this release and every later one.
	assert.Equal(t, "waybill-replay-8d68cc17fc4c", Config{}.Group())
	pinned := Config{Topic: "shop.dead", To: "shop.in", Filter: Filter{
		Reasons: []deadletter.Reason{deadletter.ReasonConfiguration, deadletter.ReasonPermanent}, Errcodes: []int{48001},
		AppIDs: []string{"wxB", "wxA"}, Since: time.Date(2026, 11, 1, 8, 0, 0, 0, time.FixedZone("CST", 8*3600)),
	}}
	assert.Equal(t, "waybill-replay-5c3a6c1c963e", pinned.Group())

	others := []Config{
		{},
		{Topic: "other.dead"},
		{To: "order.shipped.v2"},
		{Filter: Filter{AppIDs: []string{"wxA"}}},
		{Filter: Filter{OrderIDs: []string{"wxA"}}},
		{Filter: Filter{Since: rtDay}},
		{Filter: Filter{Until: rtDay}},
	}
	seen := map[string]int{a.Group(): -1}
	for i, c := range others {
		g := c.Group()
		prev, dup := seen[g]
		assert.False(t, dup, "configs %d and %d share group %s", i, prev, g)
		seen[g] = i
	}
	assert.Equal(t, Config{Topic: deadletter.DefaultTopic}.Group(), Config{}.Group())
	assert.Equal(t, "mine", (&Config{Kafka: kafka.Config{ConsumerGroup: "mine"}}).Group())
}
