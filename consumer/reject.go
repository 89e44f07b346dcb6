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

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/publisher"
	"github.com/comjobs/comjobs/schemas"
)

// Dead-letter headers added to the original message's own.
const (
	HeaderDLQReason     = "Comjobs-Dlq-Reason"
	HeaderDLQMessage    = "Comjobs-Dlq-Message"
	HeaderDLQStreamSeq  = "Comjobs-Dlq-Stream-Seq"
	HeaderDLQSubject    = "Comjobs-Dlq-Subject"
	HeaderDLQRequestKey = "Comjobs-Dlq-Request-Key"
	HeaderDLQTime       = "Comjobs-Dlq-Time"
	// HeaderDLQMsgID keeps the original Nats-Msg-Id, which the copy cannot
	// carry (it has its own).
	HeaderDLQMsgID = "Comjobs-Dlq-Msg-Id"
)

// dlqRole is the <role> token of the consumer's dead letters.
const dlqRole = "consumer"

// reject publishes the rejected event, copies the message to the dead-letter
// stream and marks the request rejected in the ledger, in that order, so a
// redelivery after a crash repeats (deduplicated) what was not finished.
func (c *Consumer) reject(ctx context.Context, r *request, rej *schemas.Rejection, cause error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	now := c.now()
	data := schemas.Rejected{
		Reason: rej.Reason, Message: rej.Message, Field: rej.Field,
		Subject: r.subject, StreamSeq: r.seq, RejectedAt: now.UTC(),
	}
	slug := "unknown"
	var rh string
	if r.res != nil && r.res.Template != nil {
		t := r.res.Template
		slug = t.Slug
		data.Template = &schemas.TemplateRef{ID: t.ID, Name: t.Name, Slug: t.Slug}
		res := r.res.Resource
		data.Resource = &res
		data.Labels, data.Notify = r.res.Request.Labels, r.res.Request.Notify
		rh = resHash(t.ID, res.Type, res.ID)
	}
	var ce *com.Error
	if errors.As(cause, &ce) && rej.Reason == schemas.ReasonCOMRejected && ce.StatusCode != 0 {
		data.COMError = &schemas.COMError{HTTPStatusCode: ce.StatusCode, ErrorCode: ce.ErrorCode, Message: ce.Message, DebugID: ce.DebugID}
	}
	id := r.key + "/rejected"
	e, err := publisher.NewEvent(schemas.TypeRejected, eventSource, id, r.key, data, requestRef(r))
	if err != nil {
		return fmt.Errorf("rejected event: %w", err)
	}
	if err := c.publish(ctx, schemas.RejectedSubject(slug), e, id); err != nil {
		return fmt.Errorf("publish rejected event: %w", err)
	}
	if err := c.deadLetter(ctx, r, rej.Reason, rej.Error(), now); err != nil {
		return err
	}
	if err := c.markRejected(ctx, r, rej.Reason, now); err != nil {
		return err
	}
	if rh != "" {
		_ = c.ledger.endFlight(ctx, rh, r.key)
		_ = c.ledger.unlock(ctx, rh, r.key)
	}
	c.m.rejected.WithLabelValues(rej.Reason).Inc()
	r.log.Warn("rejected", "reason", rej.Reason, "message", rej.Message)
	return nil
}

func (c *Consumer) markRejected(ctx context.Context, r *request, reason string, now time.Time) error {
	for range 3 {
		le, rev, err := c.ledger.get(ctx, r.key)
		if err != nil {
			return err
		}
		if le == nil {
			le = &ledgerEntry{}
			if r.ev != nil {
				le.Source, le.ID = r.ev.Source(), r.ev.ID()
			}
		}
		if le.State == stateSubmitted || le.State == stateCreated {
			// Never hide a job: a request that has one is not rejected.
			return fmt.Errorf("request %s already has job %s", r.key, le.JobID)
		}
		le.State, le.Reason, le.UpdatedAt = stateRejected, reason, now
		if _, err = c.ledger.put(ctx, r.key, le, rev); !errors.Is(err, errConflict) {
			return err
		}
	}
	return fmt.Errorf("mark %s rejected: %w", r.key, errConflict)
}

// deadLetter copies the original message, headers and body intact, to
// comjobs.dlq.consumer.<reason> with the Comjobs-Dlq-* headers.
func (c *Consumer) deadLetter(ctx context.Context, r *request, reason, message string, now time.Time) error {
	m := nats.NewMsg(schemas.DLQSubject(dlqRole, reason))
	m.Header = nats.Header{}
	for k, vs := range r.header {
		if strings.HasPrefix(strings.ToLower(k), "nats-") {
			if strings.EqualFold(k, nats.MsgIdHdr) && len(vs) > 0 {
				m.Header.Set(HeaderDLQMsgID, vs[0])
			}
			continue // JetStream's own headers would steer the copy
		}
		m.Header[k] = append([]string(nil), vs...)
	}
	m.Header.Set(HeaderDLQReason, reason)
	m.Header.Set(HeaderDLQMessage, oneLine(message))
	m.Header.Set(HeaderDLQStreamSeq, strconv.FormatUint(r.seq, 10))
	m.Header.Set(HeaderDLQSubject, r.subject)
	m.Header.Set(HeaderDLQRequestKey, r.key)
	m.Header.Set(HeaderDLQTime, now.UTC().Format(time.RFC3339Nano))
	m.Data = r.data
	msgID := "dlq/" + r.key
	if r.bySeq {
		msgID = "dlq/seq/" + strconv.FormatUint(r.seq, 10)
	}
	if _, err := c.d.JS.PublishMsg(ctx, m, jetstream.WithMsgID(msgID)); err != nil {
		return fmt.Errorf("dead-letter to %s: %w", m.Subject, err)
	}
	c.m.deadLetters.WithLabelValues(reason).Inc()
	return nil
}

func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
	if len(s) > 1024 {
		s = s[:1024]
	}
	return s
}
