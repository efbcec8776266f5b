package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/waybillkit/waybill"
	"github.com/waybillkit/waybill/deadletter"
	"github.com/waybillkit/waybill/event"
	"github.com/waybillkit/waybill/kafka"
)

// topicsCommand is the first argument that runs `waybill topics`.
const topicsCommand = "topics"

// topicFlags name the topics the service uses, the same for the service and
// `waybill topics`, so that the command checks exactly what the service
// will need.
type topicFlags struct {
	input, traced, dead string
	parking             bool
	tiers               durations
	prefix              string
	partitions          int
	replication         int
}

func (f *topicFlags) register(fs *flag.FlagSet) {
	f.tiers = durations{time.Minute, 10 * time.Minute, time.Hour}
	fs.StringVar(&f.input, "input-topic", event.OrderShippedTopic, "`topic` of order.shipped events")
	fs.StringVar(&f.traced, "traced-topic", event.WaybillTracedTopic, "`topic` for waybill.traced events")
	fs.StringVar(&f.dead, "dead-letter-topic", deadletter.DefaultTopic, "`topic` for dead letters")
	fs.BoolVar(&f.parking, "parking", true, "park events that must wait on delay topics instead of holding their partition (-parking=false: wait in place)")
	fs.Var(&f.tiers, "parking-tiers", "comma-separated ascending `delays` of the delay topics")
	fs.StringVar(&f.prefix, "parking-prefix", "", "`prefix` of the delay topics (default <input-topic>.delay.)")
	fs.IntVar(&f.partitions, "topic-partitions", 6, "`partitions` of each topic created (the most consumers a topic can keep busy)")
	fs.IntVar(&f.replication, "topic-replication", 3, "`replicas` of each topic created")
}

// parkingConfig is nil when parking is off.
func (f *topicFlags) parkingConfig() *waybill.ParkingConfig {
	if !f.parking {
		return nil
	}
	return &waybill.ParkingConfig{Tiers: f.tiers, TopicPrefix: f.prefix}
}

// neededTopics lists every topic the service reads or writes: input,
// output, dead letters, and each delay tier when parking.
func neededTopics(input, traced, dead string, p *waybill.ParkingConfig) []string {
	out := []string{input, traced, dead}
	if p != nil {
		out = append(out, p.Topics(input)...)
	}
	return out
}

// ensureTopics checks that every needed topic exists, or creates the
// missing ones when create is set. A missing topic is an error that names
// every missing one.
func ensureTopics(kc kafka.Config, names []string, create bool, partitions, replication int) (created []string, err error) {
	if create {
		return kafka.CreateTopics(kc, names, int32(partitions), int16(replication))
	}
	states, err := kafka.DescribeTopics(kc, names)
	if err != nil {
		return nil, err
	}
	var missing []string
	for _, s := range states {
		if !s.Exists {
			missing = append(missing, s.Name)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("missing topics: %s (create them, run `waybill topics create`, or start with -create-topics)", strings.Join(missing, ", "))
	}
	return nil, nil
}

// topicsMain runs `waybill topics check|create [flags]`: check lists the
// topics the configuration needs and what the cluster has of them, create
// makes the missing ones. It returns the exit status: 0 when every topic
// exists (after create), 1 when some are missing or the cluster failed, 2
// for bad flags.
func topicsMain(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	usage := "Usage: waybill topics check|create [flags]\n\n" +
		"check lists the topics the configuration needs and what the cluster has of them;\n" +
		"create makes the missing ones with -topic-partitions and -topic-replication.\n" +
		"Every flag -x-y falls back to the environment variable " + envPrefix + "X_Y.\n\n"
	if len(args) == 0 || (args[0] != "check" && args[0] != "create") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
			fmt.Fprint(stdout, usage)
			return 0
		}
		fmt.Fprint(stderr, usage)
		return 2
	}
	verb := args[0]
	fs := flag.NewFlagSet("waybill topics "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var kf kafkaFlags
	var tf topicFlags
	var configFile string
	kf.register(fs)
	tf.register(fs)
	fs.StringVar(&configFile, "config", "", "the service's YAML config `file`: its Kafka and topic keys apply here too")
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage); fs.PrintDefaults() }
	err := parseArgs(fs, args[1:])
	if errors.Is(err, errHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	var kc kafka.Config
	errs := fallBackToEnv(fs, getenv)
	if configFile != "" {
		if _, err := applyConfigFileOnly(fs, configFile, getenv); err != nil {
			errs = append(errs, err)
		}
	}
	if err := kf.apply(&kc); err != nil {
		errs = append(errs, err)
	}
	p := tf.parkingConfig()
	if p != nil {
		if err := p.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintln(stderr, "waybill topics:", err)
		return 2
	}
	names := neededTopics(tf.input, tf.traced, tf.dead, p)
	if verb == "create" {
		created, err := kafka.CreateTopics(kc, names, int32(tf.partitions), int16(tf.replication))
		for _, n := range created {
			fmt.Fprintf(stdout, "created %s (%d partitions, replication %d)\n", n, tf.partitions, tf.replication)
		}
		if err != nil {
			fmt.Fprintln(stderr, "waybill topics create:", err)
			return 1
		}
	}
	states, err := kafka.DescribeTopics(kc, names)
	if err != nil {
		fmt.Fprintln(stderr, "waybill topics:", err)
		return 1
	}
	missing := 0
	for _, s := range states {
		if s.Exists {
			fmt.Fprintf(stdout, "ok       %s  partitions=%d replication=%d\n", s.Name, s.Partitions, s.Replication)
		} else {
			missing++
			fmt.Fprintf(stdout, "missing  %s\n", s.Name)
		}
	}
	if missing > 0 {
		fmt.Fprintf(stderr, "waybill topics: %d of %d topics missing; `waybill topics create` makes them\n", missing, len(names))
		return 1
	}
	return 0
}
