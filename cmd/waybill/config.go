package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/waybillkit/waybill"
	"github.com/waybillkit/waybill/internal/textlist"
	"github.com/waybillkit/waybill/kafka"
	"github.com/waybillkit/waybill/ratelimit"
	"github.com/waybillkit/waybill/wechat"
)

// envPrefix starts the environment variable of every flag: -dead-letter-topic
// falls back to WAYBILL_DEAD_LETTER_TOPIC.
const envPrefix = "WAYBILL_"

// config is the service's configuration after flags and environment.
type config struct {
	Kafka                                    kafka.Config
	InputTopic, TracedTopic, DeadLetterTopic string
	WeChatURL                                string
	// SecretsFile holds appid=secret lines; read at startup, never logged.
	SecretsFile string
	// ConfigFile is the YAML file whose keys are the flags' names, plus
	// merchants; "" means none.
	ConfigFile string
	// Merchants come from the config file, their references resolved and
	// each Token set (-token-api where the file names none).
	Merchants []merchant
	// TokenAPI is how the access tokens of -secrets-file's merchants, and of
	// the file's merchants that name none, are obtained: tokenStable or
	// tokenPlain.
	TokenAPI string
	// Component is the third-party platform; its AppID is "" without one.
	Component componentConfig
	// Redis is host:port or a redis:// (rediss://) URL; "" keeps every store
	// in memory.
	Redis       string
	RedisPrefix string
	// Parking is nil when parking is off.
	Parking   *waybill.ParkingConfig
	Limits    ratelimit.Limits
	AppLimits map[string]ratelimit.Limits
	ClaimTTL  time.Duration
	LogLevel  slog.Level
	LogFormat string // "text" or "json"
	// StatsInterval is how often the handler's counters are logged at debug
	// level.
	StatsInterval time.Duration
	// ShutdownTimeout is how long in-flight events may run after a signal.
	ShutdownTimeout time.Duration
	// Concurrency is how many events of one input partition are in flight
	// at once, never two of one order.
	Concurrency int
	// CreateTopics creates missing topics at start, with TopicPartitions
	// and TopicReplication; without it the service refuses to start.
	CreateTopics                      bool
	TopicPartitions, TopicReplication int
	// AdminListen is the address of /metrics, /healthz and /readyz; ""
	// serves none. Pprof adds /debug/pprof/ there.
	AdminListen      string
	Pprof            bool
	MetricsMaxAppIDs int
}

// errUsage reports bad flags or environment; the reason has been printed.
var errUsage = errors.New("usage")

// errHelp reports that -h was asked for and the usage printed: exit 0.
var errHelp = errors.New("help")

// parseArgs parses args, flags only, into fs, which prints to stderr. Bad
// flags, -h and any other argument are errUsage, said on fs.Output().
func parseArgs(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return errHelp
	} else if err != nil {
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected arguments: %q\n", fs.Args())
		return errUsage
	}
	return nil
}

// fallBackToEnv sets every flag of fs not given on the command line from
// its environment variable, when that is set; with only, just the flags it
// accepts.
func fallBackToEnv(fs *flag.FlagSet, getenv func(string) string, only ...func(name string) bool) []error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || (len(only) > 0 && !only[0](f.Name)) {
			return
		}
		if v := getenv(envName(f.Name)); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", envName(f.Name), err))
			}
		}
	})
	return errs
}

// envName is the environment variable a flag falls back to.
func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseConfig reads args, falling back for each flag not given to its
// environment variable (looked up with getenv), then to its default. Errors
// are printed to stderr and reported as errUsage.
func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("waybill", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		c  config
		kf kafkaFlags
		tf topicFlags
		pf providerFlags
	)
	kf.register(fs)
	fs.StringVar(&c.Kafka.ConsumerGroup, "group", "waybill", "Kafka consumer `group`; parking adds <group>-delay")
	tf.register(fs)
	fs.BoolVar(&c.CreateTopics, "create-topics", false, "create missing topics at start (-topic-partitions, -topic-replication) instead of refusing to start")
	fs.StringVar(&c.WeChatURL, "wechat-url", wechat.DefaultBaseURL, "WeChat API base `URL`")
	fs.StringVar(&c.ConfigFile, "config", "", "YAML `file` with the flags' names as keys and a merchants list; the command line and WAYBILL_* override it")
	fs.StringVar(&c.SecretsFile, "secrets-file", "", "`file` of appid=secret lines (required unless the config file lists merchants)")
	fs.StringVar(&c.TokenAPI, "token-api", tokenStable, "how a merchant's access token is obtained with its app secret, unless its config entry says: stable_token, or token (cgi-bin/token, shared through -redis with the merchant's other systems)")
	pf.register(fs)
	fs.StringVar(&c.Redis, "redis", "", "Redis `address` (host:port or redis://user:pass@host:port/db) shared by tokens, rate limits and traces; empty keeps them in memory")
	fs.StringVar(&c.RedisPrefix, "redis-prefix", "waybill:", "`prefix` of every Redis key waybill writes (-verify-ticket-redis-key is read as given)")
	fs.Int64Var(&c.Limits.AppDaily, "app-daily", ratelimit.DefaultAppDaily, "daily calls per appid; negative: no limit")
	fs.Int64Var(&c.Limits.UserDaily, "user-daily", ratelimit.DefaultUserDaily, "daily calls per buyer and appid; negative: no limit")
	fs.Float64Var(&c.Limits.Rate, "rate", ratelimit.DefaultRate, "smooth calls per second per appid; negative: no limit")
	fs.IntVar(&c.Limits.Burst, "burst", 0, "calls at once after an idle spell; 0: one second's worth")
	fs.Var((*appLimits)(&c.AppLimits), "app-limits", "per-appid overrides `appid:key=value:...,...` with keys app_daily, user_daily, rate, burst")
	fs.DurationVar(&c.ClaimTTL, "claim-ttl", 15*time.Second, "how long a crashed process's claim on a waybill blocks others (live claims are renewed every third of it)")
	fs.StringVar(&c.AdminListen, "admin-listen", "", "`address` of /metrics, /healthz and /readyz, e.g. :9464 (empty: none)")
	fs.BoolVar(&c.Pprof, "pprof", false, "serve /debug/pprof/ on -admin-listen")
	fs.IntVar(&c.MetricsMaxAppIDs, "metrics-max-appids", 1000, "appids with series of their own; later ones are counted as other (negative: all as one)")
	fs.TextVar(&c.LogLevel, "log-level", slog.LevelInfo, "`level`: debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", "text", "`format` of the log: text (key=value) or json (one object a line, for log shippers)")
	fs.DurationVar(&c.StatsInterval, "stats-interval", time.Minute, "how often to log the counters at debug level")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "how long in-flight events may finish after SIGINT or SIGTERM")
	fs.IntVar(&c.Concurrency, "concurrency", defaultConcurrency, "events of one input partition in flight at once, one per order id (1: one at a time, in partition order)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: waybill [flags]\n       waybill %[1]s [flags]\n       waybill %[3]s check|create [flags]\n\n"+
			"The service's flags follow; every flag -x-y falls back to the environment variable %[2]sX_Y.\n"+
			"waybill %[1]s -h lists the flags of the command that sends dead letters back;\n"+
			"waybill %[3]s check|create checks or creates the topics these flags name.\n\n", replayCommand, envPrefix, topicsCommand)
		fs.PrintDefaults()
	}

	if err := parseArgs(fs, args); err != nil {
		return c, err
	}
	errs := fallBackToEnv(fs, getenv)
	if c.ConfigFile != "" {
		m, err := applyConfigFile(fs, c.ConfigFile, getenv)
		if err != nil {
			errs = append(errs, err)
		}
		c.Merchants = m
	}
	if c.TokenAPI != tokenStable && c.TokenAPI != tokenPlain {
		errs = append(errs, fmt.Errorf("-token-api %q: want %s or %s", c.TokenAPI, tokenStable, tokenPlain))
	}
	authorizers, plain := false, c.SecretsFile != "" && c.TokenAPI == tokenPlain
	for i := range c.Merchants {
		mc := &c.Merchants[i]
		if mc.Token == "" {
			mc.Token = c.TokenAPI
		}
		authorizers = authorizers || mc.Token == tokenAuthorizer
		plain = plain || mc.Token == tokenPlain
		if mc.Limits != (ratelimit.Limits{}) {
			if c.AppLimits == nil {
				c.AppLimits = map[string]ratelimit.Limits{}
			}
			c.AppLimits[mc.AppID] = overlay(mc.Limits, c.AppLimits[mc.AppID]) // -app-limits, key by key, wins
		}
	}
	if plain && c.Redis == "" {
		// Each process would void the others' token, and the merchant's other
		// systems' too.
		errs = append(errs, errors.New("merchants on cgi-bin/token (token: token, -token-api token) need -redis, where they share one token"))
	}
	if comp, err := pf.apply(c.Redis != "", authorizers); err != nil {
		errs = append(errs, err)
	} else {
		c.Component = comp
	}
	if err := kf.apply(&c.Kafka); err != nil {
		errs = append(errs, err)
	}
	c.InputTopic, c.TracedTopic, c.DeadLetterTopic = tf.input, tf.traced, tf.dead
	c.Parking = tf.parkingConfig()
	c.TopicPartitions, c.TopicReplication = tf.partitions, tf.replication
	if err := errors.Join(append(errs, c.validate())...); err != nil {
		fmt.Fprintln(stderr, "waybill:", err)
		return c, errUsage
	}
	return c, nil
}

// validate checks what can be checked without reaching any service.
func (c *config) validate() error {
	var errs []error
	if len(c.Kafka.Brokers) == 0 {
		errs = append(errs, errors.New("-brokers is empty"))
	}
	if c.Kafka.ConsumerGroup == "" {
		errs = append(errs, errors.New("-group is empty"))
	}
	if c.Pprof && c.AdminListen == "" {
		errs = append(errs, errors.New("-pprof needs -admin-listen"))
	}
	if c.MetricsMaxAppIDs == 0 {
		errs = append(errs, errors.New("-metrics-max-appids 0: give a positive bound, or negative for one series"))
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Errorf("-log-format %q is not text or json", c.LogFormat))
	}
	if c.SecretsFile == "" && len(c.Merchants) == 0 {
		errs = append(errs, fmt.Errorf("-secrets-file (or %s, or merchants in -config) is required", envName("secrets-file")))
	}
	if c.Redis != "" {
		if _, err := redisOptions(c.Redis); err != nil {
			errs = append(errs, err)
		}
	}
	for name, d := range map[string]time.Duration{"claim-ttl": c.ClaimTTL, "stats-interval": c.StatsInterval, "shutdown-timeout": c.ShutdownTimeout} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("-%s %v must be positive", name, d))
		}
	}
	if c.Concurrency < 1 || c.Concurrency > maxConcurrency {
		errs = append(errs, fmt.Errorf("-concurrency %d must be between 1 and %d", c.Concurrency, maxConcurrency))
	}
	if c.Parking != nil {
		if err := c.Parking.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.limiterConfig(nil).Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// overlay is base with every limit over sets (not 0) taking its place.
func overlay(base, over ratelimit.Limits) ratelimit.Limits {
	if over.AppDaily != 0 {
		base.AppDaily = over.AppDaily
	}
	if over.UserDaily != 0 {
		base.UserDaily = over.UserDaily
	}
	if over.Rate != 0 {
		base.Rate = over.Rate
	}
	if over.Burst != 0 {
		base.Burst = over.Burst
	}
	return base
}

// limiterConfig is the rate limiter's configuration on store (nil: memory).
func (c *config) limiterConfig(store ratelimit.Store) ratelimit.Config {
	return ratelimit.Config{Store: store, Defaults: c.Limits, Apps: c.AppLimits}
}

// redisOptions reads -redis: a bare host:port, or a URL that may carry a
// user, password, database and TLS (rediss://).
func redisOptions(s string) (*redis.Options, error) {
	if !strings.Contains(s, "://") {
		return &redis.Options{Addr: s}, nil
	}
	opts, err := redis.ParseURL(s)
	if err != nil {
		// The URL may hold a password: do not repeat it.
		return nil, errors.New("-redis is not a valid redis:// or rediss:// URL")
	}
	return opts, nil
}

// merchantTable is every merchant the service serves: the app secrets of
// -secrets-file and of the config file's merchants, and how each appid's
// token is obtained. An appid given twice is an error.
func (c *config) merchantTable() (wechat.StaticSecrets, map[string]string, error) {
	secrets := wechat.StaticSecrets{}
	kinds := map[string]string{}
	if c.SecretsFile != "" {
		var err error
		if secrets, err = loadSecrets(c.SecretsFile); err != nil {
			return nil, nil, err
		}
		for appid := range secrets {
			kinds[appid] = c.TokenAPI
		}
	}
	for _, m := range c.Merchants {
		if _, dup := kinds[m.AppID]; dup {
			if c.SecretsFile == "" {
				return nil, nil, fmt.Errorf("appid %s is given twice among the merchants of %s", m.AppID, c.ConfigFile)
			}
			return nil, nil, fmt.Errorf("appid %s is in both %s and the merchants of %s", m.AppID, c.SecretsFile, c.ConfigFile)
		}
		kinds[m.AppID] = m.Token
		if m.Token != tokenAuthorizer {
			secrets[m.AppID] = m.Secret
		}
	}
	return secrets, kinds, nil
}

// secrets are the app secrets of merchantTable.
func (c *config) secrets() (wechat.StaticSecrets, error) {
	s, _, err := c.merchantTable()
	return s, err
}

// loadSecrets reads a file of appid=secret lines. Blank lines and lines
// starting with # are skipped. Errors name the line, never its content, which
// may be a secret.
func loadSecrets(path string) (wechat.StaticSecrets, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("secrets file: %w", err)
	}
	defer f.Close()
	return parseSecrets(f, path)
}

func parseSecrets(r io.Reader, name string) (wechat.StaticSecrets, error) {
	secrets := wechat.StaticSecrets{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		appid, secret, ok := strings.Cut(line, "=")
		appid, secret = strings.TrimSpace(appid), strings.TrimSpace(secret)
		switch {
		case !ok || appid == "" || secret == "":
			return nil, fmt.Errorf("secrets file %s, line %d: want appid=secret", name, n)
		case secrets[appid] != "":
			return nil, fmt.Errorf("secrets file %s, line %d: appid %s given twice", name, n, appid)
		}
		secrets[appid] = secret
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("secrets file %s: %w", name, err)
	}
	if len(secrets) == 0 {
		return nil, fmt.Errorf("secrets file %s holds no appid=secret line", name)
	}
	return secrets, nil
}

// splitList splits a comma-separated flag value, dropping blanks. Every
// list flag of the service and of waybill replay goes through it.
func splitList(s string) []string { return textlist.Split(s, ",") }

// durations is a comma-separated list of durations.
type durations []time.Duration

func (d *durations) String() string {
	parts := make([]string, len(*d))
	for i, v := range *d {
		parts[i] = v.String()
	}
	return strings.Join(parts, ",")
}

func (d *durations) Set(s string) error {
	var out durations
	for _, p := range splitList(s) {
		v, err := time.ParseDuration(p)
		if err != nil {
			return err
		}
		out = append(out, v)
	}
	*d = out
	return nil
}

// appLimits is the -app-limits flag: "wx1:app_daily=5000:rate=2,wx2:rate=1".
type appLimits map[string]ratelimit.Limits

func (a *appLimits) String() string {
	if a == nil || *a == nil {
		return ""
	}
	var items []string
	for appid, l := range *a {
		items = append(items, fmt.Sprintf("%s:app_daily=%d:user_daily=%d:rate=%g:burst=%d", appid, l.AppDaily, l.UserDaily, l.Rate, l.Burst))
	}
	return strings.Join(items, ",")
}

func (a *appLimits) Set(s string) error {
	out := appLimits{}
	for _, item := range splitList(s) {
		parts := strings.Split(item, ":")
		appid := parts[0]
		if appid == "" || len(parts) < 2 {
			return fmt.Errorf("%q: want appid:key=value[:key=value...]", item)
		}
		var l ratelimit.Limits
		for _, kv := range parts[1:] {
			k, v, _ := strings.Cut(kv, "=")
			if err := setLimit(&l, k, v); err != nil {
				return fmt.Errorf("%q: %w", item, err)
			}
		}
		out[appid] = l
	}
	*a = out
	return nil
}

// setLimit sets the limit named k (app_daily, user_daily, rate or burst)
// of l to v: the keys of -app-limits and of a merchant's limits in the
// config file.
func setLimit(l *ratelimit.Limits, k, v string) error {
	var err error
	switch k {
	case "app_daily":
		l.AppDaily, err = strconv.ParseInt(v, 10, 64)
	case "user_daily":
		l.UserDaily, err = strconv.ParseInt(v, 10, 64)
	case "rate":
		l.Rate, err = strconv.ParseFloat(v, 64)
	case "burst":
		l.Burst, err = strconv.Atoi(v)
	default:
		return fmt.Errorf("unknown key %q (want app_daily, user_daily, rate or burst)", k)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", k, err)
	}
	return nil
}
