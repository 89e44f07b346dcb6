package consumer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Ledger states of a request.
const (
	// stateClaimed: a worker is about to POST, is inside the POST, or
	// crashed around it. JobID is empty.
	stateClaimed = "claimed"
	// stateCreated: COM created JobID and the job is owned (job.<id>); the
	// submitted event (kept in Event) may not be published yet. Only
	// earlier versions wrote it; it is still read and finished.
	stateCreated = "created"
	// stateSubmitted: JobID is owned and the submitted event is in the
	// events stream. Final.
	stateSubmitted = "submitted"
	// stateRejected: the rejected event and the dead letter are out. Final
	// until a replay clears it.
	stateRejected = "rejected"
)

// ledgerEntry is the value of req.<requestKey>.
type ledgerEntry struct {
	State     string    `json:"state"`
	ClaimedAt time.Time `json:"claimedAt"`
	Owner     string    `json:"owner,omitempty"`
	// PostEndedAt is set when a POST returned without a job (an error that
	// may still have created one): no worker is inside the call any more.
	PostEndedAt  *time.Time `json:"postEndedAt,omitempty"`
	JobID        string     `json:"jobId,omitempty"`
	TemplateID   string     `json:"templateId,omitempty"`
	ResourceType string     `json:"resourceType,omitempty"`
	ResourceID   string     `json:"resourceId,omitempty"`
	Source       string     `json:"source,omitempty"`
	ID           string     `json:"id,omitempty"`
	Reason       string     `json:"reason,omitempty"`
	// Event is the submitted event's data, kept so a redelivery publishes
	// the very same event.
	Event     json.RawMessage `json:"event,omitempty"`
	UpdatedAt time.Time       `json:"updatedAt"`
}

// ledger wraps the ledger bucket with the key layout of the package doc.
type ledger struct {
	kv jetstream.KeyValue
	// js publishes the writes that need no compare-and-set straight to the
	// bucket's subjects, asynchronously, so they overlap other work.
	js jetstream.JetStream
}

// writeAsync stores value under key (or deletes key when del), as
// KeyValue.Put and Delete do, without waiting: the future resolves once
// the bucket stored it.
func (l ledger) writeAsync(key string, value []byte, del bool) (jetstream.PubAckFuture, error) {
	m := nats.NewMsg("$KV." + l.kv.Bucket() + "." + key)
	m.Data = value
	if del {
		m.Header.Set("KV-Operation", "DEL")
	}
	f, err := l.js.PublishMsgAsync(m)
	if err != nil {
		return nil, fmt.Errorf("ledger write %s: %w", key, err)
	}
	return f, nil
}

// wait waits for an asynchronous ledger write.
func wait(ctx context.Context, f jetstream.PubAckFuture) error {
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func reqKey(requestKey string) string { return "req." + requestKey }

var safeKey = regexp.MustCompile(`^[-_=a-zA-Z0-9]+$`)

// jobKey is job.<id>, or job.h<sha256> when the id holds characters a key may not.
func jobKey(jobID string) string {
	if safeKey.MatchString(jobID) {
		return "job." + jobID
	}
	return "job.h" + hashOf(jobID)
}

// resHash identifies a (template, resource) pair.
func resHash(templateID, resourceType, resourceID string) string {
	return hashOf(templateID + "\n" + resourceType + "\n" + resourceID)[:32]
}

func flyKey(res, requestKey string) string { return "fly." + res + "." + requestKey }
func lockKey(res string) string            { return "lock." + res }

func hashOf(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// get returns the entry and its revision; a missing or deleted key is (nil, 0, nil).
func (l ledger) get(ctx context.Context, requestKey string) (*ledgerEntry, uint64, error) {
	e, err := l.kv.Get(ctx, reqKey(requestKey))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("ledger get %s: %w", requestKey, err)
	}
	var le ledgerEntry
	if err := json.Unmarshal(e.Value(), &le); err != nil {
		return nil, 0, fmt.Errorf("ledger entry %s: %w", requestKey, err)
	}
	return &le, e.Revision(), nil
}

// errConflict means another writer changed the key first.
var errConflict = errors.New("ledger conflict")

// put writes the entry: created when rev is 0, else compare-and-set against
// rev. It returns the new revision, or errConflict.
func (l ledger) put(ctx context.Context, requestKey string, le *ledgerEntry, rev uint64) (uint64, error) {
	b, err := json.Marshal(le)
	if err != nil {
		return 0, fmt.Errorf("ledger encode: %w", err)
	}
	var n uint64
	if rev == 0 {
		n, err = l.kv.Create(ctx, reqKey(requestKey), b)
	} else {
		n, err = l.kv.Update(ctx, reqKey(requestKey), b, rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return 0, errConflict
	}
	if err != nil {
		return 0, fmt.Errorf("ledger write %s: %w", requestKey, err)
	}
	return n, nil
}

// own records that requestKey owns jobID. It reports false when another
// request already owns it.
func (l ledger) own(ctx context.Context, jobID, requestKey string) (bool, error) {
	_, err := l.kv.Create(ctx, jobKey(jobID), []byte(requestKey))
	if errors.Is(err, jetstream.ErrKeyExists) {
		e, gerr := l.kv.Get(ctx, jobKey(jobID))
		if gerr != nil {
			return false, fmt.Errorf("ledger owner of job %s: %w", jobID, gerr)
		}
		return string(e.Value()) == requestKey, nil
	}
	if err != nil {
		return false, fmt.Errorf("ledger own job %s: %w", jobID, err)
	}
	return true, nil
}

// owner returns the request key that owns jobID, "" when none does.
func (l ledger) owner(ctx context.Context, jobID string) (string, error) {
	e, err := l.kv.Get(ctx, jobKey(jobID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("ledger owner of job %s: %w", jobID, err)
	}
	return string(e.Value()), nil
}

// flight is the value of fly.<res>.<requestKey>.
type flight struct {
	At time.Time `json:"at"`
}

func (l ledger) startFlight(ctx context.Context, res, requestKey string, at time.Time) error {
	f, err := l.startFlightAsync(res, requestKey, at)
	if err == nil {
		err = wait(ctx, f)
	}
	if err != nil {
		return fmt.Errorf("ledger in-flight mark: %w", err)
	}
	return nil
}

// startFlightAsync writes the in-flight mark without waiting for it.
func (l ledger) startFlightAsync(res, requestKey string, at time.Time) (jetstream.PubAckFuture, error) {
	b, _ := json.Marshal(flight{At: at})
	return l.writeAsync(flyKey(res, requestKey), b, false)
}

func (l ledger) endFlight(ctx context.Context, res, requestKey string) error {
	if err := l.kv.Delete(ctx, flyKey(res, requestKey)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("ledger clear in-flight mark: %w", err)
	}
	return nil
}

// flights returns the requests other than except that may be inside a
// POST for res, with the time of their mark, and clears the marks of the
// requests that are done. A successful request leaves its mark behind (one
// stored message less on the hot path, and a mark weighs what the deletion
// tombstone would); the mark means "in flight" only while its request's
// claim has no job id and no ended POST, and only for POSTTimeout.
//
// A mark whose claim is not stored yet is not in flight either: its
// request reads lock.<res> only after both are stored, and the caller took
// the lock before calling flights, so that request will see the lock and
// back off.
func (l ledger) flights(ctx context.Context, res, except string, now time.Time, postTimeout time.Duration) (map[string]time.Time, error) {
	lister, err := l.kv.ListKeysFiltered(ctx, "fly."+res+".*")
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ledger list in-flight marks: %w", err)
	}
	defer lister.Stop()
	out := map[string]time.Time{}
	prefix := "fly." + res + "."
	for k := range lister.Keys() {
		rk := k[len(prefix):]
		if rk == except {
			continue
		}
		e, err := l.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("ledger in-flight mark %s: %w", k, err)
		}
		var f flight
		_ = json.Unmarshal(e.Value(), &f)
		if now.Sub(f.At) >= postTimeout {
			continue // a worker inside its POST has left it by now
		}
		le, _, err := l.get(ctx, rk)
		if err != nil {
			return nil, err
		}
		if le != nil && le.State == stateClaimed && le.JobID == "" && le.PostEndedAt == nil {
			out[rk] = f.At
			continue
		}
		if le != nil && le.State != stateClaimed {
			// Done: its job (if any) is owned. Clear the mark.
			_ = l.kv.Delete(ctx, k, jetstream.LastRevision(e.Revision()))
		}
	}
	return out, nil
}

// lockHolder returns the request key holding lock.<res>, "" when free.
func (l ledger) lockHolder(ctx context.Context, res string) (string, error) {
	e, err := l.kv.Get(ctx, lockKey(res))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("ledger recovery lock: %w", err)
	}
	return string(e.Value()), nil
}

// lock takes lock.<res> for requestKey; it returns the holder when another
// request holds it.
func (l ledger) lock(ctx context.Context, res, requestKey string) (string, error) {
	_, err := l.kv.Create(ctx, lockKey(res), []byte(requestKey))
	if errors.Is(err, jetstream.ErrKeyExists) {
		holder, err := l.lockHolder(ctx, res)
		if err != nil {
			return "", err
		}
		if holder == "" { // released meanwhile: try once more
			return l.lock(ctx, res, requestKey)
		}
		if holder == requestKey {
			return "", nil
		}
		return holder, nil
	}
	if err != nil {
		return "", fmt.Errorf("ledger recovery lock: %w", err)
	}
	return "", nil
}

// unlock releases lock.<res> if requestKey holds it.
func (l ledger) unlock(ctx context.Context, res, requestKey string) error {
	e, err := l.kv.Get(ctx, lockKey(res))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("ledger recovery unlock: %w", err)
	}
	if string(e.Value()) != requestKey {
		return nil
	}
	err = l.kv.Delete(ctx, lockKey(res), jetstream.LastRevision(e.Revision()))
	if err != nil && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) && !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("ledger recovery unlock: %w", err)
	}
	return nil
}
