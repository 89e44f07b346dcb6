package tracker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/schemas"
)

// Record is what the tracker keeps about one job in the comjobs-jobs bucket,
// under Key(JobID). It is JSON; fields are only ever added.
type Record struct {
	JobID       string              `json:"jobId"`
	JobURI      string              `json:"jobUri,omitempty"`
	ParentJobID string              `json:"parentJobId,omitempty"`
	Template    schemas.TemplateRef `json:"template"`
	Resource    schemas.Resource    `json:"resource"`
	Labels      map[string]string   `json:"labels,omitempty"`
	Notify      *schemas.Notify     `json:"notify,omitempty"`
	Request     RequestRef          `json:"request"`

	// Observed is false until the first observation was recorded.
	Observed      bool            `json:"observed"`
	State         string          `json:"state,omitempty"`
	ResultCode    *string         `json:"resultCode,omitempty"`
	Status        string          `json:"status,omitempty"`
	StatusDetails json.RawMessage `json:"statusDetails,omitempty"`
	Generation    int64           `json:"generation"`
	// StateSince is when the current state was first observed.
	StateSince time.Time `json:"stateSince"`
	CreatedAt  time.Time `json:"createdAt"`
	UpdatedAt  time.Time `json:"updatedAt"`
	ObservedAt time.Time `json:"observedAt"`
	TrackedAt  time.Time `json:"trackedAt"`
	// Terminal is set once the job ended (COMPLETE, ERROR, LOST): it is no
	// longer polled; the record stays until the bucket's TTL.
	Terminal bool `json:"terminal"`
	// OverdueSent lists the thresholds (Go durations) already announced.
	OverdueSent []string `json:"overdueSent,omitempty"`
	// Outbox holds events decided but not yet known to be published, in order.
	Outbox []Pending `json:"outbox,omitempty"`
}

// RequestRef names the request a job came from, carried onto its events.
type RequestRef struct {
	ID          string `json:"id,omitempty"`
	Source      string `json:"source,omitempty"`
	TraceParent string `json:"traceparent,omitempty"`
}

// Pending is one event in a record's outbox.
type Pending struct {
	ID      string          `json:"id"`
	Subject string          `json:"subject"`
	Type    string          `json:"type"`
	Data    json.RawMessage `json:"data"`
}

// Key is the key of job id in the comjobs-jobs bucket: id with every byte
// outside [-_a-zA-Z0-9] written as =XX, so any id is a valid key and
// distinct ids get distinct keys.
func Key(id string) string {
	var b strings.Builder
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "=%02X", c)
		}
	}
	return b.String()
}

// unKey inverts Key.
func unKey(k string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(k); i++ {
		if k[i] != '=' {
			b.WriteByte(k[i])
			continue
		}
		if i+3 > len(k) {
			return "", false
		}
		v, err := strconv.ParseUint(k[i+1:i+3], 16, 8)
		if err != nil {
			return "", false
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), true
}

// ErrNotTracked is returned for a job the tracker has no record of.
var ErrNotTracked = errors.New("job not tracked")

// GetTracked returns the record of job id, or an error wrapping ErrNotTracked.
func GetTracked(ctx context.Context, js jetstream.JetStream, id string) (*Record, error) {
	kv, err := js.KeyValue(ctx, schemas.BucketJobs)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", schemas.BucketJobs, err)
	}
	rec, _, err := getRecord(ctx, kv, id)
	return rec, err
}

// ListTracked returns every tracked job's record (terminal ones too, until
// they expire), in no particular order.
func ListTracked(ctx context.Context, js jetstream.JetStream) ([]Record, error) {
	kv, err := js.KeyValue(ctx, schemas.BucketJobs)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", schemas.BucketJobs, err)
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("list tracked jobs: %w", err)
	}
	defer w.Stop()
	var out []Record
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("list tracked jobs: %w", ctx.Err())
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("list tracked jobs: watcher closed")
			}
			if e == nil {
				return out, nil
			}
			var r Record
			if err := json.Unmarshal(e.Value(), &r); err != nil {
				return nil, fmt.Errorf("decode record %s: %w", e.Key(), err)
			}
			out = append(out, r)
		}
	}
}

func getRecord(ctx context.Context, kv jetstream.KeyValue, id string) (*Record, uint64, error) {
	e, err := kv.Get(ctx, Key(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, 0, fmt.Errorf("job %s: %w", id, ErrNotTracked)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read record of job %s: %w", id, err)
	}
	var r Record
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, 0, fmt.Errorf("decode record of job %s: %w", id, err)
	}
	return &r, e.Revision(), nil
}
