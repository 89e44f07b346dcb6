// Package topology declares and creates the JetStream streams, key-value
// buckets and durable consumers comjobs runs on, as fixed by the design
// contract. Ensure is idempotent and never deletes data; Check only verifies
// that everything exists, so roles on a shared cluster need no stream-admin
// rights.
package topology

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/internal/startup"
	"github.com/comjobs/comjobs/schemas"
)

// BucketControl holds operational flags (pause), the tracker's leadership
// lease and the shared COM rate-limit budget. It is not part of the public
// contract.
const BucketControl = "comjobs-control"

// Durable consumer settings the roles rely on.
const (
	// ConsumerMaxDeliver is how often a request is delivered before the
	// consumer dead-letters it with reason retries-exhausted.
	ConsumerMaxDeliver = 20
	// ConsumerAckWait is how long a request may be held without an ack or
	// InProgress before JetStream redelivers it.
	ConsumerAckWait = 60 * time.Second
	// NotifierMaxDeliver bounds notification attempts of one event.
	NotifierMaxDeliver = 50
	// NotifierAckWait is the notifier's ack wait.
	NotifierAckWait = 60 * time.Second
	// TrackerAckWait is the tracker's ack wait for submitted events.
	TrackerAckWait = 30 * time.Second
	// TrackerFilter is the subject the tracker learns of new jobs from.
	TrackerFilter = schemas.SubjectEvents + ".submitted.>"
)

// Options tune the topology. Zero values take the documented defaults.
type Options struct {
	// Replicas of every stream and bucket: 1 for a single server, 3 on a cluster.
	Replicas int
	// DuplicateWindow is JetStream's Nats-Msg-Id dedupe window (default 2h).
	// The ledger, not this window, is what makes a request unrepeatable.
	DuplicateWindow time.Duration
	// EventsMaxAge bounds how long job events are kept (default 7 days).
	EventsMaxAge time.Duration
	// DLQMaxAge bounds how long dead letters are kept (default 30 days).
	DLQMaxAge time.Duration
	// LedgerTTL is how long the ledger remembers a request (default 365
	// days). A request republished after its entry expired would create a
	// second job, so keep this longer than any upstream system may retry.
	LedgerTTL time.Duration
	// JobsTTL bounds how long tracked-job records are kept (default 30 days).
	JobsTTL time.Duration
	// NotifiedTTL bounds how long notification records are kept (default 30 days).
	NotifiedTTL time.Duration
}

func (o *Options) defaults() {
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.DuplicateWindow <= 0 {
		o.DuplicateWindow = 2 * time.Hour
	}
	if o.EventsMaxAge <= 0 {
		o.EventsMaxAge = 7 * 24 * time.Hour
	}
	if o.DLQMaxAge <= 0 {
		o.DLQMaxAge = 30 * 24 * time.Hour
	}
	if o.LedgerTTL <= 0 {
		o.LedgerTTL = 365 * 24 * time.Hour
	}
	if o.JobsTTL <= 0 {
		o.JobsTTL = 30 * 24 * time.Hour
	}
	if o.NotifiedTTL <= 0 {
		o.NotifiedTTL = 30 * 24 * time.Hour
	}
}

// Streams returns the stream configurations for o.
func Streams(o Options) []jetstream.StreamConfig {
	o.defaults()
	return []jetstream.StreamConfig{
		{
			Name:        schemas.StreamRequests,
			Description: "comjobs job requests (work queue)",
			Subjects:    []string{schemas.SubjectRequests + ".>"},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    o.Replicas,
			Duplicates:  o.DuplicateWindow,
			MaxMsgSize:  1 << 20,
			Discard:     jetstream.DiscardOld,
		},
		{
			Name:        schemas.StreamEvents,
			Description: "comjobs job events",
			Subjects:    []string{schemas.SubjectEvents + ".>"},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    o.Replicas,
			Duplicates:  min(o.DuplicateWindow, o.EventsMaxAge),
			MaxAge:      o.EventsMaxAge,
		},
		{
			Name:        schemas.StreamDLQ,
			Description: "comjobs dead letters: original message plus reason headers",
			Subjects:    []string{schemas.SubjectDLQ + ".>"},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    o.Replicas,
			Duplicates:  min(o.DuplicateWindow, o.DLQMaxAge),
			MaxAge:      o.DLQMaxAge,
		},
	}
}

// Buckets returns the key-value bucket configurations for o.
func Buckets(o Options) []jetstream.KeyValueConfig {
	o.defaults()
	return []jetstream.KeyValueConfig{
		{Bucket: schemas.BucketLedger, Description: "request key -> claim / job id; job id -> request key", History: 1, TTL: o.LedgerTTL, Storage: jetstream.FileStorage, Replicas: o.Replicas},
		{Bucket: schemas.BucketJobs, Description: "tracked jobs", History: 1, TTL: o.JobsTTL, Storage: jetstream.FileStorage, Replicas: o.Replicas},
		{Bucket: schemas.BucketNotified, Description: "notifications posted (channel, ts)", History: 1, TTL: o.NotifiedTTL, Storage: jetstream.FileStorage, Replicas: o.Replicas},
		{Bucket: BucketControl, Description: "pause flags, tracker lease, shared COM rate budget", History: 1, Storage: jetstream.FileStorage, Replicas: o.Replicas},
	}
}

// Consumer is a durable consumer on a stream.
type Consumer struct {
	Stream string
	Config jetstream.ConsumerConfig
}

// Consumers returns the durable consumers for o.
func Consumers(o Options) []Consumer {
	o.defaults()
	return []Consumer{
		{Stream: schemas.StreamRequests, Config: jetstream.ConsumerConfig{
			Durable: schemas.DurableConsumer, Description: "submits requests to COM",
			AckPolicy: jetstream.AckExplicitPolicy, AckWait: ConsumerAckWait,
			MaxDeliver: ConsumerMaxDeliver, MaxAckPending: 10000, Replicas: o.Replicas,
		}},
		{Stream: schemas.StreamEvents, Config: jetstream.ConsumerConfig{
			Durable: schemas.DurableTracker, Description: "learns of submitted jobs",
			FilterSubject: TrackerFilter, AckPolicy: jetstream.AckExplicitPolicy,
			AckWait: TrackerAckWait, MaxDeliver: -1, MaxAckPending: 10000, Replicas: o.Replicas,
		}},
		{Stream: schemas.StreamEvents, Config: jetstream.ConsumerConfig{
			Durable: schemas.DurableNotifier, Description: "posts notifications",
			AckPolicy: jetstream.AckExplicitPolicy, AckWait: NotifierAckWait,
			MaxDeliver: NotifierMaxDeliver, MaxAckPending: 10000, Replicas: o.Replicas,
		}},
	}
}

// Report says what Ensure did, one line per item.
type Report []string

// Ensure creates or updates every stream, bucket and durable consumer. It
// never deletes anything; when an existing item cannot be updated in place
// (for example a different retention policy) the error says which item and
// what JetStream refused.
func Ensure(ctx context.Context, js jetstream.JetStream, o Options) (Report, error) {
	var rep Report
	var errs []error
	for _, sc := range Streams(o) {
		_, err := js.Stream(ctx, sc.Name)
		existed := err == nil
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			errs = append(errs, fmt.Errorf("stream %s: %w (existing data kept; change it by hand or run with matching settings)", sc.Name, err))
			continue
		}
		rep = append(rep, verb(existed)+" stream "+sc.Name)
	}
	for _, kc := range Buckets(o) {
		_, err := js.KeyValue(ctx, kc.Bucket)
		existed := err == nil
		if _, err := js.CreateOrUpdateKeyValue(ctx, kc); err != nil {
			errs = append(errs, fmt.Errorf("bucket %s: %w", kc.Bucket, err))
			continue
		}
		rep = append(rep, verb(existed)+" bucket "+kc.Bucket)
	}
	for _, c := range Consumers(o) {
		_, err := js.Consumer(ctx, c.Stream, c.Config.Durable)
		existed := err == nil
		if _, err := js.CreateOrUpdateConsumer(ctx, c.Stream, c.Config); err != nil {
			errs = append(errs, fmt.Errorf("consumer %s on %s: %w", c.Config.Durable, c.Stream, err))
			continue
		}
		rep = append(rep, verb(existed)+" consumer "+c.Config.Durable+" on "+c.Stream)
	}
	return rep, errors.Join(errs...)
}

func verb(existed bool) string {
	if existed {
		return "updated"
	}
	return "created"
}

// Check verifies that every stream, bucket and durable consumer exists. Its
// error is a *CheckError naming all that are missing, every lookup
// JetStream refused and every lookup it did not answer.
func Check(ctx context.Context, js jetstream.JetStream) error {
	e := &CheckError{}
	note := func(what string, err error) {
		var denied error
		if err != nil {
			e.errs = append(e.errs, err)
			denied = deniedByNATS(js)
		}
		switch {
		case err == nil:
		case errors.Is(err, jetstream.ErrStreamNotFound), errors.Is(err, jetstream.ErrBucketNotFound),
			errors.Is(err, jetstream.ErrConsumerNotFound):
			e.Missing = append(e.Missing, what+" ("+err.Error()+")")
		case denied != nil:
			// A denied JetStream API call looks like a timeout; the
			// connection knows better. Not worth waiting for.
			e.Refused = append(e.Refused, what+" ("+err.Error()+"; "+denied.Error()+")")
		case startup.Transient(err), errors.Is(err, context.Canceled):
			e.Unanswered = append(e.Unanswered, what+" ("+err.Error()+")")
		default:
			e.Refused = append(e.Refused, what+" ("+err.Error()+")")
		}
	}
	for _, sc := range Streams(Options{}) {
		_, err := js.Stream(ctx, sc.Name)
		note("stream "+sc.Name, err)
	}
	for _, kc := range Buckets(Options{}) {
		_, err := js.KeyValue(ctx, kc.Bucket)
		note("bucket "+kc.Bucket, err)
	}
	for _, c := range Consumers(Options{}) {
		_, err := js.Consumer(ctx, c.Stream, c.Config.Durable)
		note("consumer "+c.Config.Durable, err)
	}
	if len(e.Missing) > 0 || len(e.Unanswered) > 0 || len(e.Refused) > 0 {
		return e
	}
	return nil
}

// deniedByNATS returns the connection's last error when it is a
// permissions violation (the user may not call the JetStream API), else nil.
func deniedByNATS(js jetstream.JetStream) error {
	if nc := js.Conn(); nc != nil {
		if le := nc.LastError(); errors.Is(le, nats.ErrPermissionViolation) {
			return le
		}
	}
	return nil
}

// CheckError is what Check found wrong: things that do not exist, lookups
// JetStream did not answer (a server restarting, no leader yet), and
// lookups it refused (JetStream not enabled, for example).
type CheckError struct {
	Missing    []string
	Unanswered []string
	Refused    []string
	errs       []error
}

// Unwrap returns the lookups' errors, for errors.Is and errors.As.
func (e *CheckError) Unwrap() []error { return e.errs }

func (e *CheckError) Error() string {
	var parts []string
	if len(e.Missing) > 0 {
		parts = append(parts, "topology incomplete, run `comjobs setup`: missing "+strings.Join(e.Missing, "; "))
	}
	if len(e.Refused) > 0 {
		parts = append(parts, "JetStream refused the lookup of "+strings.Join(e.Refused, "; "))
	}
	if len(e.Unanswered) > 0 {
		parts = append(parts, "JetStream did not answer for "+strings.Join(e.Unanswered, "; ")+
			" (a server restarting or electing a leader; no responders at all: is JetStream enabled?)")
	}
	return strings.Join(parts, "; ")
}

// Transient reports a check whose only trouble is lookups JetStream did
// not answer: worth trying again shortly.
func (e *CheckError) Transient() bool { return len(e.Missing) == 0 && len(e.Refused) == 0 }
