// Command wechat-sandbox serves the wechattest WeChat API sandbox on a
// loopback address, so that a service can be pointed at it instead of
// https://api.weixin.qq.com:
//
//	go run ./wechat/wechattest/cmd/wechat-sandbox -addr 127.0.0.1:8399 -app wx0123456789abcdef:secret -v
//
// It prints the base URL to use, then serves until interrupted. Without -app
// it accepts any appid with any secret. Flags:
//
//	-addr host:port          loopback address to listen on (port 0 picks a free one)
//	-app appid:secret        register an app (repeatable)
//	-auto                    also accept unregistered appids with any secret
//	-component appid:secret[:ticket]   register a third-party platform (repeatable)
//	-authorizer component:appid:refresh_token   register a merchant of a platform (repeatable)
//	-unknown appid:waybill_id          answer 931023 for this waybill (repeatable)
//	-trace appid:waybill_id:s1,s2,...  script query_trace statuses (repeatable)
//	-fault key=value,...     inject a fault (repeatable), keys: endpoint, errcode, errmsg,
//	                         status, latency, drop, times, rate; e.g.
//	                         -fault endpoint=trace_waybill,errcode=-1,rate=0.1
//	-token-ttl, -app-quota, -openid-quota, -minute-limit, -quota-reset, -quota-tz, -seed
//	-v                       print one line per call
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
	_ "time/tzdata" // -quota-tz must work on machines without a zone database

	"github.com/waybillkit/waybill/wechat/wechattest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "wechat-sandbox:", err)
		}
		os.Exit(2)
	}
}

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, " ") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

// run parses args, serves until ctx is done, and prints to stdout the URL and,
// with -v, one line per call.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("wechat-sandbox", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var apps, components, authorizers, unknown, traces, faults list
	addr := fs.String("addr", "127.0.0.1:8399", "loopback `host:port` to listen on; port 0 picks a free one")
	fs.Var(&apps, "app", "register `appid:secret` (repeatable)")
	auto := fs.Bool("auto", false, "accept any appid with any secret (the default when no -app is given)")
	fs.Var(&components, "component", "register a third-party platform `appid:secret[:ticket]` (repeatable)")
	fs.Var(&authorizers, "authorizer", "register a merchant `component:appid:refresh_token` (repeatable)")
	fs.Var(&unknown, "unknown", "answer 931023 for `appid:waybill_id` (repeatable)")
	fs.Var(&traces, "trace", "script query_trace statuses `appid:waybill_id:s1,s2,...` (repeatable)")
	fs.Var(&faults, "fault", "inject a fault `key=value,...` with keys endpoint, errcode, errmsg, status, latency, drop, times, rate (repeatable)")
	var cfg wechattest.Config
	fs.DurationVar(&cfg.TokenTTL, "token-ttl", 0, "access_token lifetime (0 = 7200s)")
	fs.IntVar(&cfg.AppDailyQuota, "app-quota", 0, "daily calls per appid and path (0 = 100000, negative = unlimited)")
	fs.IntVar(&cfg.OpenIDDailyQuota, "openid-quota", 0, "daily query-plugin calls per appid and openid (0 = 100, negative = unlimited)")
	fs.IntVar(&cfg.MinuteLimit, "minute-limit", 0, "calls per appid and path a minute (0 = no limit)")
	fs.DurationVar(&cfg.QuotaReset, "quota-reset", 0, "time of day daily quotas reset, as a duration after midnight")
	tz := fs.String("quota-tz", "", "IANA time zone of -quota-reset (default UTC+8)")
	fs.Uint64Var(&cfg.Seed, "seed", 0, "seed for fault rates (0 = fixed default)")
	verbose := fs.Bool("v", false, "print one line per call")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if err := checkLoopback(*addr); err != nil {
		return err
	}
	if *tz != "" {
		loc, err := time.LoadLocation(*tz)
		if err != nil {
			return fmt.Errorf("-quota-tz: %w", err)
		}
		cfg.QuotaLocation = loc
	}
	cfg.AutoRegister = *auto || len(apps) == 0
	if *verbose {
		cfg.OnCall = func(c wechattest.Call) {
			fault := ""
			if c.Fault {
				fault = " (fault)"
			}
			fmt.Fprintf(stdout, "%s %s appid=%s http=%d errcode=%d%s\n",
				c.At.Format(time.TimeOnly), c.Endpoint, c.AppID, c.HTTPStatus, c.Errcode, fault)
		}
	}
	if err := cfg.Validate(); err != nil {
		return err
	}

	srv := wechattest.NewUnstartedServer(cfg)
	defer srv.Close()
	if err := configure(srv, apps, components, authorizers, unknown, traces, faults); err != nil {
		return err
	}
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	_ = srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	fmt.Fprintf(stdout, "wechat-sandbox: serving the WeChat API on %s (auto-register: %v)\n", srv.URL, cfg.AutoRegister)
	<-ctx.Done()
	return nil
}

// checkLoopback refuses to serve on anything but a loopback address: the
// sandbox accepts any secret and must not be reachable from elsewhere.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-addr: %w", err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("-addr %s is not a loopback address", addr)
	}
	return nil
}

// each splits every value of a colon-separated flag into between min and max
// parts and hands them to apply.
func each(flagName string, values list, min, max int, apply func(p []string) error) error {
	for _, v := range values {
		p := strings.SplitN(v, ":", max)
		if len(p) < min {
			return fmt.Errorf("-%s %q: want %d to %d colon-separated parts", flagName, v, min, max)
		}
		if err := apply(p); err != nil {
			return fmt.Errorf("-%s %q: %w", flagName, v, err)
		}
	}
	return nil
}

// configure registers what the flags ask for.
func configure(srv *wechattest.Server, apps, components, authorizers, unknown, traces, faults list) error {
	return errors.Join(
		each("app", apps, 2, 2, func(p []string) error { srv.AddApp(p[0], p[1]); return nil }),
		each("component", components, 2, 3, func(p []string) error {
			srv.AddComponent(p[0], p[1], strings.Join(p[2:], ""))
			return nil
		}),
		each("authorizer", authorizers, 3, 3, func(p []string) error { return addAuthorizer(srv, p[0], p[1], p[2]) }),
		each("unknown", unknown, 2, 2, func(p []string) error { srv.MarkUnknown(p[0], p[1]); return nil }),
		each("trace", traces, 3, 3, func(p []string) error {
			var statuses []int
			for _, s := range strings.Split(p[2], ",") {
				n, err := strconv.Atoi(s)
				if err != nil {
					return err
				}
				statuses = append(statuses, n)
			}
			srv.SetTrace(p[0], p[1], statuses...)
			return nil
		}),
		each("fault", faults, 1, 1, func(p []string) error {
			f, err := parseFault(p[0])
			if err == nil {
				srv.Inject(f)
			}
			return err
		}),
	)
}

// addAuthorizer turns AddAuthorizer's panic for an unknown platform into an error.
func addAuthorizer(srv *wechattest.Server, component, appid, refresh string) (err error) {
	defer func() {
		if recover() != nil {
			err = fmt.Errorf("platform %s is not registered with -component", component)
		}
	}()
	srv.AddAuthorizer(component, appid, refresh)
	return nil
}

// parseFault reads "endpoint=trace_waybill,errcode=-1,rate=0.1".
func parseFault(v string) (wechattest.Fault, error) {
	var f wechattest.Fault
	for kv := range strings.SplitSeq(v, ",") {
		k, val, ok := strings.Cut(kv, "=")
		if !ok {
			return f, fmt.Errorf("%q is not key=value", kv)
		}
		var err error
		switch k {
		case "endpoint":
			f.Endpoint = val
		case "errmsg":
			f.Errmsg = val
		case "errcode":
			f.Errcode, err = strconv.Atoi(val)
		case "status":
			f.HTTPStatus, err = strconv.Atoi(val)
		case "times":
			f.Times, err = strconv.Atoi(val)
		case "latency":
			f.Latency, err = time.ParseDuration(val)
		case "drop":
			f.Drop, err = strconv.ParseBool(val)
		case "rate":
			f.Rate, err = strconv.ParseFloat(val, 64)
		default:
			return f, fmt.Errorf("unknown key %q", k)
		}
		if err != nil {
			return f, fmt.Errorf("%s: %w", k, err)
		}
	}
	return f, f.Validate()
}
