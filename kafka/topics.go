package kafka

import (
	"errors"
	"fmt"
	"time"

	"github.com/IBM/sarama"
)

// TopicState is what the cluster has of one topic.
type TopicState struct {
	Name        string
	Exists      bool
	Partitions  int // 0 when it does not exist
	Replication int // replicas of its first partition; 0 when it does not exist
}

// admin connects a cluster admin that never creates a topic by asking for
// it (the test broker, like many, auto-creates on metadata requests).
func (c Config) admin() (sarama.ClusterAdmin, error) {
	sc, err := c.SaramaConfig(func(sc *sarama.Config) { sc.Metadata.AllowAutoTopicCreation = false })
	if err != nil {
		return nil, err
	}
	admin, err := sarama.NewClusterAdmin(c.Brokers, sc)
	if err != nil {
		return nil, c.Explain("kafka admin", err)
	}
	return admin, nil
}

// DescribeTopics reports each of names as the cluster has it, in order.
func DescribeTopics(c Config, names []string) ([]TopicState, error) {
	admin, err := c.admin()
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	return describe(admin, names)
}

func describe(admin sarama.ClusterAdmin, names []string) ([]TopicState, error) {
	meta, err := admin.DescribeTopics(names)
	if err != nil {
		return nil, fmt.Errorf("describe topics: %w", err)
	}
	byName := make(map[string]*sarama.TopicMetadata, len(meta))
	for _, m := range meta {
		byName[m.Name] = m
	}
	out := make([]TopicState, len(names))
	for i, n := range names {
		out[i].Name = n
		m, ok := byName[n]
		switch {
		case !ok || errors.Is(m.Err, sarama.ErrUnknownTopicOrPartition):
		case errors.Is(m.Err, sarama.ErrLeaderNotAvailable):
			// A topic just created, its leaders still being elected: it
			// exists, and waitVisible waits for its partitions.
			out[i].Exists, out[i].Partitions = true, 0
		case m.Err != sarama.ErrNoError:
			return nil, fmt.Errorf("describe topic %s: %w", n, m.Err)
		default:
			out[i].Exists, out[i].Partitions = true, len(m.Partitions)
			if len(m.Partitions) > 0 {
				out[i].Replication = len(m.Partitions[0].Replicas)
			}
		}
	}
	return out, nil
}

// CreateTopics creates those of names the cluster lacks, with partitions
// partitions of replication replicas each, and leaves the others as they
// are: running it twice changes nothing. It returns the names it created,
// once the brokers' metadata shows them (at most 30 s).
func CreateTopics(c Config, names []string, partitions int32, replication int16) ([]string, error) {
	if partitions < 1 || replication < 1 {
		return nil, fmt.Errorf("create topics: partitions %d and replication %d must be at least 1", partitions, replication)
	}
	admin, err := c.admin()
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	states, err := describe(admin, names)
	if err != nil {
		return nil, err
	}
	var created []string
	for _, s := range states {
		if s.Exists {
			continue
		}
		err := admin.CreateTopic(s.Name, &sarama.TopicDetail{NumPartitions: partitions, ReplicationFactor: replication}, false)
		if errors.Is(err, sarama.ErrTopicAlreadyExists) {
			continue // made meanwhile by another instance
		}
		if err != nil {
			return created, fmt.Errorf("create topic %s (%d partitions, replication %d): %w", s.Name, partitions, replication, err)
		}
		created = append(created, s.Name)
	}
	return created, waitVisible(admin, created)
}

// createdVisibleWithin bounds the wait for new topics to show in the
// brokers' metadata, which lags the controller by a moment.
const createdVisibleWithin = 30 * time.Second

// waitVisible waits until every one of names is described as existing, so
// that a check right after CreateTopics sees them.
func waitVisible(admin sarama.ClusterAdmin, names []string) error {
	deadline := time.Now().Add(createdVisibleWithin)
	for len(names) > 0 {
		states, err := describe(admin, names)
		if err != nil {
			return err
		}
		var pending []string
		for _, s := range states {
			if !s.Exists || s.Partitions == 0 {
				pending = append(pending, s.Name)
			}
		}
		if names = pending; len(names) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("created topics not visible after %s: %v", createdVisibleWithin, names)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return nil
}
