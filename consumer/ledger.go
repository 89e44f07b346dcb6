package consumer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
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
	// st is the bucket's stream, read for a key's last message whatever
	// its kind (kv.Get hides deletion markers and their revisions).
	st jetstream.Stream
}

// jsWait bounds a wait for JetStream's acknowledgement of one write (a
// variable for tests only).
var jsWait = 10 * time.Second

// subject is the bucket subject of key.
func (l ledger) subject(key string) string { return "$KV." + l.kv.Bucket() + "." + key }

// writeAsync stores value under key (or deletes key when del), as
// KeyValue.Put and Delete do, without waiting: the future resolves once
// the bucket stored it.
func (l ledger) writeAsync(key string, value []byte, del bool) (jetstream.PubAckFuture, error) {
	m := nats.NewMsg(l.subject(key))
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

// casAsync stores value under key, as KeyValue.Update does, but only if
// the last revision of guard is rev (guard "" is key itself; rev 0: never
// written). The bucket checks and stores in one step, so writes of several
// requests are in flight together. It does not wait; a failed check
// resolves the future with an error isConflict recognises.
func (l ledger) casAsync(key string, value []byte, guard string, rev uint64) (jetstream.PubAckFuture, error) {
	m := nats.NewMsg(l.subject(key))
	m.Data = value
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(rev, 10))
	if guard != "" {
		m.Header.Set(jetstream.ExpectedLastSubjSeqSubjHeader, l.subject(guard))
	}
	f, err := l.js.PublishMsgAsync(m)
	if err != nil {
		return nil, fmt.Errorf("ledger write %s: %w", key, err)
	}
	return f, nil
}

// answered returns JetStream's answer to f when it is in already, without
// waiting; in is false while it is not.
func answered(f jetstream.PubAckFuture) (seq uint64, in bool, err error) {
	select {
	case pa := <-f.Ok():
		return pa.Sequence, true, nil
	case err := <-f.Err():
		return 0, true, err
	default:
		return 0, false, nil
	}
}

// casEnd waits for casAsync(key, value, "", rev) and returns the new
// revision, or errConflict. A create (rev 0) that fails because the key
// holds a deletion marker is done again over the marker, as
// KeyValue.Create does.
func (l ledger) casEnd(ctx context.Context, f jetstream.PubAckFuture, key string, value []byte, rev uint64) (uint64, error) {
	n, err := waitSeq(ctx, f)
	return l.casSettle(ctx, key, value, rev, n, err)
}

// casSettle is casEnd once the write's answer (n, err) is in.
func (l ledger) casSettle(ctx context.Context, key string, value []byte, rev, n uint64, err error) (uint64, error) {
	if err == nil {
		return n, nil
	}
	if !isConflict(err) {
		return 0, fmt.Errorf("ledger write %s: %w", key, err)
	}
	if rev != 0 {
		return 0, errConflict
	}
	n, err = l.kv.Create(ctx, key, value)
	if isConflict(err) {
		return 0, errConflict
	}
	if err != nil {
		return 0, fmt.Errorf("ledger write %s: %w", key, err)
	}
	return n, nil
}

// isConflict reports a compare-and-set that found another revision.
func isConflict(err error) bool {
	var ae *jetstream.APIError
	if errors.As(err, &ae) && (ae.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		ae.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return true
	}
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}

// wait waits for an asynchronous ledger write.
func wait(ctx context.Context, f jetstream.PubAckFuture) error {
	_, err := waitSeq(ctx, f)
	return err
}

// waitSeq waits, at most jsWait, for an asynchronous write and returns
// its stream sequence (the key's new revision). An answer already in wins
// over ctx.
func waitSeq(ctx context.Context, f jetstream.PubAckFuture) (uint64, error) {
	if seq, in, err := answered(f); in {
		return seq, err
	}
	t := time.NewTimer(jsWait)
	defer t.Stop()
	select {
	case pa := <-f.Ok():
		return pa.Sequence, nil
	case err := <-f.Err():
		return 0, err
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return 0, fmt.Errorf("no acknowledgement from JetStream in time: %w", ctx.Err())
		}
		return 0, ctx.Err()
	case <-t.C:
		return 0, fmt.Errorf("no acknowledgement from JetStream within %s", jsWait)
	}
}

func reqKey(requestKey string) string { return "req." + requestKey }

// failKey is fail.<requestKey>: how many transient failures the request met.
func failKey(requestKey string) string { return "fail." + requestKey }

// failed adds one to the request's count of transient failures and returns
// the new count. Only failures are counted, not deliveries: hand-backs,
// drains and crashes do not make a request back off longer or give up
// sooner. It is written on the failure path only; the bucket's TTL removes
// it, and a replay of the request from the dead letters deletes it.
func (l ledger) failed(ctx context.Context, requestKey string) (int, error) {
	n := 0
	e, err := l.kv.Get(ctx, failKey(requestKey))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return 0, fmt.Errorf("ledger read %s: %w", failKey(requestKey), err)
	default:
		n, _ = strconv.Atoi(string(e.Value()))
	}
	n++
	if _, err := l.kv.Put(ctx, failKey(requestKey), []byte(strconv.Itoa(n))); err != nil {
		return 0, fmt.Errorf("ledger write %s: %w", failKey(requestKey), err)
	}
	return n, nil
}

// jobKey is job.<id>, or job.h<sha256> when the id holds characters a key
// may not (anything but [-_=a-zA-Z0-9]) or is empty.
func jobKey(jobID string) string {
	if safeKey(jobID) {
		return "job." + jobID
	}
	return "job.h" + hashOf(jobID)
}

func safeKey(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '=':
		default:
			return false
		}
	}
	return s != ""
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
	f, b, err := l.putAsync(requestKey, le, rev)
	if err != nil {
		return 0, err
	}
	return l.casEnd(ctx, f, reqKey(requestKey), b, rev)
}

// putAsync sends put's write without waiting; casEnd with the returned
// encoding waits for it.
func (l ledger) putAsync(requestKey string, le *ledgerEntry, rev uint64) (jetstream.PubAckFuture, []byte, error) {
	b, err := json.Marshal(le)
	if err != nil {
		return nil, nil, fmt.Errorf("ledger encode: %w", err)
	}
	f, err := l.casAsync(reqKey(requestKey), b, "", rev)
	return f, b, err
}

// own records that requestKey owns jobID. It reports false when another
// request already owns it.
func (l ledger) own(ctx context.Context, jobID, requestKey string) (bool, error) {
	f, err := l.ownAsync(jobID, requestKey)
	if err != nil {
		return false, err
	}
	return l.ownEnd(ctx, f, jobID, requestKey)
}

// ownAsync sends own's write without waiting; ownEnd waits for it.
func (l ledger) ownAsync(jobID, requestKey string) (jetstream.PubAckFuture, error) {
	f, err := l.casAsync(jobKey(jobID), []byte(requestKey), "", 0)
	if err != nil {
		return nil, fmt.Errorf("ledger own job %s: %w", jobID, err)
	}
	return f, nil
}

// ownEnd waits for ownAsync's write and reports whether requestKey owns jobID.
func (l ledger) ownEnd(ctx context.Context, f jetstream.PubAckFuture, jobID, requestKey string) (bool, error) {
	_, err := l.casEnd(ctx, f, jobKey(jobID), []byte(requestKey), 0)
	if errors.Is(err, errConflict) {
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
	b, _ := json.Marshal(flight{At: at})
	f, err := l.writeAsync(flyKey(res, requestKey), b, false)
	if err == nil {
		err = wait(ctx, f)
	}
	if err != nil {
		return fmt.Errorf("ledger in-flight mark: %w", err)
	}
	return nil
}

// startFlightAsync writes the in-flight mark, without waiting for it, only
// if lock.<res> is still at revision lockRev (0: never written): the mark
// and the lock's state are checked and stored in one step, so a recovery
// that takes the lock afterwards lists the mark, and a mark that would
// come after the lock is refused (isConflict).
func (l ledger) startFlightAsync(res, requestKey string, at time.Time, lockRev uint64) (jetstream.PubAckFuture, error) {
	b, _ := json.Marshal(flight{At: at})
	return l.casAsync(flyKey(res, requestKey), b, lockKey(res), lockRev)
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
// claim has no job id and no ended POST, and only for POSTTimeout. The
// caller holds lock.<res>, so every mark stored before it took the lock is
// listed (ledger.startFlightAsync). Whatever cannot be read is counted as
// in flight: a mark listed but not found, a mark without a claim.
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
			out[rk] = now
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
		if le == nil || le.State == stateClaimed && le.JobID == "" && le.PostEndedAt == nil {
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

// lockState returns the revision of lock.<res>'s last message (0: never
// written) and, when that message holds the lock, its holder ("" when
// free: released or never taken).
func (l ledger) lockState(ctx context.Context, res string) (uint64, string, error) {
	m, err := l.st.GetLastMsgForSubject(ctx, l.subject(lockKey(res)))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, "", nil
	}
	if err != nil {
		return 0, "", fmt.Errorf("ledger recovery lock: %w", err)
	}
	if m.Header.Get("KV-Operation") != "" { // DEL or PURGE
		return m.Sequence, "", nil
	}
	return m.Sequence, string(m.Data), nil
}

// lockRevs caches the last known revision of lock.<res> per res, so a
// fresh request guards its in-flight mark with the right revision at the
// first try. Only locks ever taken are kept (0 is the default); a stale
// revision costs one refused mark and one read.
type lockRevs struct {
	mu  sync.Mutex
	rev map[string]uint64
}

func (c *lockRevs) get(res string) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rev[res]
}

func (c *lockRevs) set(res string, rev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rev == nil || len(c.rev) >= 1<<16 {
		c.rev = map[string]uint64{}
	}
	c.rev[res] = rev
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
