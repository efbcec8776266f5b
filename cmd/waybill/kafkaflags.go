package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/waybillkit/waybill/kafka"
)

// kafkaFlags are the flags that reach a Kafka cluster, the same for the
// service and its commands. The SASL password comes from a file, never
// from a flag, so that it shows in no process list or shell history.
type kafkaFlags struct {
	brokers, mechanism, user, passwordFile string
	tls                                    bool
	caFile, certFile, keyFile, serverName  string
	noIdempotence                          bool
}

// isKafkaFlag reports whether name is one of kafkaFlags'.
func isKafkaFlag(name string) bool { return name == "brokers" || strings.HasPrefix(name, "kafka-") }

func (k *kafkaFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&k.brokers, "brokers", "127.0.0.1:9092", "comma-separated Kafka `brokers`")
	fs.StringVar(&k.mechanism, "kafka-sasl-mechanism", "", "SASL `mechanism`: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (empty: no SASL)")
	fs.StringVar(&k.user, "kafka-sasl-user", "", "SASL `user`")
	fs.StringVar(&k.passwordFile, "kafka-sasl-password-file", "", "`file` holding the SASL password (trailing newline ignored)")
	fs.BoolVar(&k.tls, "kafka-tls", false, "connect over TLS (on whenever a TLS file is given)")
	fs.StringVar(&k.caFile, "kafka-tls-ca-file", "", "PEM `file` of the CAs that sign the brokers' certificates (default: the system's)")
	fs.StringVar(&k.certFile, "kafka-tls-cert-file", "", "PEM client certificate `file`, for mutual TLS")
	fs.StringVar(&k.keyFile, "kafka-tls-key-file", "", "PEM client key `file`, for mutual TLS")
	fs.StringVar(&k.serverName, "kafka-tls-server-name", "", "`name` the brokers' certificates must carry (default: each broker's host)")
	fs.BoolVar(&k.noIdempotence, "kafka-no-idempotence", false, "turn off the idempotent producer, for clusters that refuse it")
}

// apply sets the flags' values on c, reading the password file.
func (k *kafkaFlags) apply(c *kafka.Config) error {
	c.Brokers = splitList(k.brokers)
	c.SASL = kafka.SASL{Mechanism: strings.ToUpper(k.mechanism), User: k.user}
	if k.passwordFile != "" {
		b, err := os.ReadFile(k.passwordFile)
		if err != nil {
			return fmt.Errorf("-kafka-sasl-password-file: %w", err)
		}
		c.SASL.Password = strings.TrimRight(string(b), "\r\n")
	}
	c.TLS = kafka.TLS{Enable: k.tls, CAFile: k.caFile, CertFile: k.certFile, KeyFile: k.keyFile, ServerName: k.serverName}
	c.DisableIdempotence = k.noIdempotence
	if err := c.Validate(); err != nil {
		return fmt.Errorf("%w (flags -brokers, -kafka-sasl-*, -kafka-tls-*)", err)
	}
	return nil
}
