package consumer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/topology"
)

// PauseKey is the key in topology.BucketControl whose presence pauses
// submission on every consumer replica.
const PauseKey = "consumer.paused"

type pauseRecord struct {
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// Pause stops submission on every consumer replica, leaving requests queued,
// until Resume. It is safe to call when already paused (the reason is
// replaced).
func Pause(ctx context.Context, js jetstream.JetStream, reason string) error {
	kv, err := js.KeyValue(ctx, topology.BucketControl)
	if err != nil {
		return fmt.Errorf("pause: bucket %s: %w", topology.BucketControl, err)
	}
	b, _ := json.Marshal(pauseRecord{Reason: reason, At: time.Now().UTC()})
	if _, err := kv.Put(ctx, PauseKey, b); err != nil {
		return fmt.Errorf("pause: %w", err)
	}
	return nil
}

// Resume lets every consumer replica submit again. Resuming when not paused
// is not an error.
func Resume(ctx context.Context, js jetstream.JetStream) error {
	kv, err := js.KeyValue(ctx, topology.BucketControl)
	if err != nil {
		return fmt.Errorf("resume: bucket %s: %w", topology.BucketControl, err)
	}
	if err := kv.Delete(ctx, PauseKey); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("resume: %w", err)
	}
	return nil
}

// IsPaused reports whether submission is paused by hand, and why.
func IsPaused(ctx context.Context, js jetstream.JetStream) (bool, string, error) {
	kv, err := js.KeyValue(ctx, topology.BucketControl)
	if err != nil {
		return false, "", fmt.Errorf("pause state: bucket %s: %w", topology.BucketControl, err)
	}
	e, err := kv.Get(ctx, PauseKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, "", nil
	}
	if err != nil {
		return false, "", fmt.Errorf("pause state: %w", err)
	}
	var r pauseRecord
	_ = json.Unmarshal(e.Value(), &r)
	return true, r.Reason, nil
}
