package consumer

import (
	"errors"
	"fmt"
	"time"

	"github.com/comjobs/comjobs/topology"
)

// Config tunes a Consumer. Zero values take the documented defaults.
type Config struct {
	// Workers is how many requests are handled at once (default 16).
	Workers int
	// FetchBatch is how many messages one pull asks for (default Workers).
	FetchBatch int
	// FetchWait bounds one pull's wait for messages (default 1s); it is also
	// how quickly a stop or a pause is noticed by the fetcher.
	FetchWait time.Duration
	// POSTTimeout bounds a COM create call. A claim younger than this may
	// still have a worker inside the call, so nobody recovers it (default 60s).
	POSTTimeout time.Duration
	// ListLag is how long a job COM created may stay invisible to list calls
	// (default 10s). A claim whose job is not found is only submitted again
	// once its call ended at least ListLag ago.
	ListLag time.Duration
	// ClockSkew widens the createdAt window of a recovery search, for clocks
	// that disagree between comjobs and COM (default 30s).
	ClockSkew time.Duration
	// MaxSize is the largest request message accepted (default 64 KiB).
	MaxSize int
	// BackoffBase and BackoffMax bound NakWithDelay for transient failures:
	// base·2^(attempt-1), capped at max, with ±20% jitter (defaults 1s, 5m).
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// MaxDeliver is how many transient failures of one request make it
	// retries-exhausted. A transient failure on the durable's last delivery
	// does too, so it must not exceed the durable's MaxDeliver, which also
	// bounds the hand-backs that are not failures (default
	// topology.ConsumerMaxDeliver).
	MaxDeliver int
	// InProgressEvery is how often a message being worked on is extended with
	// InProgress (default 15s, well inside topology.ConsumerAckWait).
	InProgressEvery time.Duration
	// ProbeEvery is how often one request is let through while submission is
	// paused by a COM configuration fault, to find out whether it was fixed
	// (default 30s).
	ProbeEvery time.Duration
	// DrainTimeout bounds how long Run, after its context ends, lets
	// in-flight requests finish before handing them back (default 30s).
	DrainTimeout time.Duration
	// Stream and Durable name the requests stream and its durable consumer
	// (defaults schemas.StreamRequests and schemas.DurableConsumer).
	Stream  string
	Durable string
	// Owner names this process in ledger claims (default host:pid).
	Owner string
}

func (c *Config) defaults() {
	if c.Workers <= 0 {
		c.Workers = 16
	}
	if c.FetchBatch <= 0 {
		c.FetchBatch = c.Workers
	}
	if c.FetchWait <= 0 {
		c.FetchWait = time.Second
	}
	if c.POSTTimeout <= 0 {
		c.POSTTimeout = 60 * time.Second
	}
	if c.ListLag <= 0 {
		c.ListLag = 10 * time.Second
	}
	if c.ClockSkew <= 0 {
		c.ClockSkew = 30 * time.Second
	}
	if c.MaxSize <= 0 {
		c.MaxSize = 64 << 10
	}
	if c.BackoffBase <= 0 {
		c.BackoffBase = time.Second
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = 5 * time.Minute
	}
	if c.MaxDeliver <= 0 {
		c.MaxDeliver = topology.ConsumerMaxDeliver
	}
	if c.InProgressEvery <= 0 {
		c.InProgressEvery = 15 * time.Second
	}
	if c.ProbeEvery <= 0 {
		c.ProbeEvery = 30 * time.Second
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 30 * time.Second
	}
}

// validate names the first bad field.
func (c *Config) validate() error {
	var errs []error
	if c.BackoffMax < c.BackoffBase {
		errs = append(errs, fmt.Errorf("consumer: BackoffMax %s is below BackoffBase %s", c.BackoffMax, c.BackoffBase))
	}
	if c.InProgressEvery >= topology.ConsumerAckWait {
		errs = append(errs, fmt.Errorf("consumer: InProgressEvery %s must be below the ack wait %s", c.InProgressEvery, topology.ConsumerAckWait))
	}
	if c.MaxDeliver < 2 {
		errs = append(errs, fmt.Errorf("consumer: MaxDeliver %d must be at least 2", c.MaxDeliver))
	}
	return errors.Join(errs...)
}
