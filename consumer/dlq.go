package consumer

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/schemas"
)

// DeadLetter is one message in the dead-letter stream.
type DeadLetter struct {
	// Seq is the dead letter's sequence in schemas.StreamDLQ (what Replay takes).
	Seq uint64
	// Role and Reason come from the subject comjobs.dlq.<role>.<reason>.
	Role, Reason string
	// Message is the human explanation.
	Message string
	// Subject and StreamSeq locate the original message.
	Subject   string
	StreamSeq uint64
	// RequestKey is the request's identity (or the key of its stream
	// sequence when it had none).
	RequestKey string
	// At is when it was dead-lettered; Age is how long ago.
	At  time.Time
	Age time.Duration
}

// ListDLQ returns every dead letter, oldest first.
func ListDLQ(ctx context.Context, js jetstream.JetStream) ([]DeadLetter, error) {
	var out []DeadLetter
	err := eachDeadLetter(ctx, js, func(m *jetstream.RawStreamMsg) error {
		out = append(out, deadLetterOf(m, time.Now()))
		return nil
	})
	return out, err
}

func deadLetterOf(m *jetstream.RawStreamMsg, now time.Time) DeadLetter {
	d := DeadLetter{Seq: m.Sequence, Message: m.Header.Get(HeaderDLQMessage), Subject: m.Header.Get(HeaderDLQSubject),
		RequestKey: m.Header.Get(HeaderDLQRequestKey), Reason: m.Header.Get(HeaderDLQReason)}
	if rest, ok := strings.CutPrefix(m.Subject, schemas.SubjectDLQ+"."); ok {
		role, reason, _ := strings.Cut(rest, ".")
		d.Role = role
		if d.Reason == "" {
			d.Reason = reason
		}
	}
	d.StreamSeq, _ = strconv.ParseUint(m.Header.Get(HeaderDLQStreamSeq), 10, 64)
	d.At = m.Time
	if t, err := time.Parse(time.RFC3339Nano, m.Header.Get(HeaderDLQTime)); err == nil {
		d.At = t
	}
	d.Age = now.Sub(d.At)
	return d
}

func eachDeadLetter(ctx context.Context, js jetstream.JetStream, fn func(*jetstream.RawStreamMsg) error) error {
	s, err := js.Stream(ctx, schemas.StreamDLQ)
	if err != nil {
		return fmt.Errorf("dead letters: stream %s: %w", schemas.StreamDLQ, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return fmt.Errorf("dead letters: %w", err)
	}
	if info.State.Msgs == 0 {
		return nil
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("dead letter %d: %w", seq, err)
		}
		if err := fn(m); err != nil {
			return err
		}
	}
	return nil
}

// Replay re-publishes the consumer's dead letter seq (0: all of them) to
// its original subject with its original headers and body, and removes it
// from the dead-letter stream. A request the ledger marks rejected is
// forgotten first, so it is submitted again; one that was submitted stays a
// duplicate. The request keeps its identity, so replaying twice cannot
// create two jobs. It returns how many were replayed.
func Replay(ctx context.Context, js jetstream.JetStream, seq uint64) (int, error) {
	s, err := js.Stream(ctx, schemas.StreamDLQ)
	if err != nil {
		return 0, fmt.Errorf("replay: stream %s: %w", schemas.StreamDLQ, err)
	}
	kv, err := js.KeyValue(ctx, schemas.BucketLedger)
	if err != nil {
		return 0, fmt.Errorf("replay: bucket %s: %w", schemas.BucketLedger, err)
	}
	l := ledger{kv: kv}
	one := func(m *jetstream.RawStreamMsg) error {
		if !strings.HasPrefix(m.Subject, schemas.SubjectDLQ+"."+dlqRole+".") {
			return fmt.Errorf("replay: dead letter %d is not a request (%s)", m.Sequence, m.Subject)
		}
		return replayOne(ctx, js, s, l, m)
	}
	if seq != 0 {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			return 0, fmt.Errorf("replay: dead letter %d: %w", seq, err)
		}
		if err := one(m); err != nil {
			return 0, err
		}
		return 1, nil
	}
	n := 0
	err = eachDeadLetter(ctx, js, func(m *jetstream.RawStreamMsg) error {
		if !strings.HasPrefix(m.Subject, schemas.SubjectDLQ+"."+dlqRole+".") {
			return nil
		}
		if err := replayOne(ctx, js, s, l, m); err != nil {
			return err
		}
		n++
		return nil
	})
	return n, err
}

func replayOne(ctx context.Context, js jetstream.JetStream, s jetstream.Stream, l ledger, m *jetstream.RawStreamMsg) error {
	subject := m.Header.Get(HeaderDLQSubject)
	key := m.Header.Get(HeaderDLQRequestKey)
	if subject == "" || key == "" {
		return fmt.Errorf("replay: dead letter %d lacks %s or %s", m.Sequence, HeaderDLQSubject, HeaderDLQRequestKey)
	}
	e, err := l.kv.Get(ctx, reqKey(key))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return fmt.Errorf("replay %d: ledger: %w", m.Sequence, err)
	default:
		le, _, gerr := l.get(ctx, key)
		if gerr != nil {
			return fmt.Errorf("replay %d: %w", m.Sequence, gerr)
		}
		if le != nil && le.State == stateRejected {
			if err := l.kv.Delete(ctx, reqKey(key), jetstream.LastRevision(e.Revision())); err != nil {
				return fmt.Errorf("replay %d: forget the rejection: %w", m.Sequence, err)
			}
		}
	}
	// The replayed request starts with no failures counted.
	if err := l.kv.Purge(ctx, failKey(key)); err != nil {
		return fmt.Errorf("replay %d: forget the failures: %w", m.Sequence, err)
	}
	out := nats.NewMsg(subject)
	out.Header = nats.Header{}
	for k, vs := range m.Header {
		if strings.HasPrefix(strings.ToLower(k), "comjobs-dlq-") || strings.HasPrefix(strings.ToLower(k), "nats-") {
			continue
		}
		out.Header[k] = append([]string(nil), vs...)
	}
	out.Data = m.Data
	// Not the request key itself: the requests stream's dedupe window
	// would drop a replay inside it. The ledger keeps the identity.
	msgID := key + "/replay/" + strconv.FormatUint(m.Sequence, 10)
	if _, err := js.PublishMsg(ctx, out, jetstream.WithMsgID(msgID)); err != nil {
		return fmt.Errorf("replay %d to %s: %w", m.Sequence, subject, err)
	}
	if err := s.DeleteMsg(ctx, m.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("replay %d: remove the dead letter: %w", m.Sequence, err)
	}
	return nil
}
