// Package publisher is the one way anything is put onto NATS JetStream in
// comjobs: job requests by upstream systems and `comjobs submit`, and job
// events by the consumer and the tracker. Every message is a binary-mode
// CloudEvent (package cenats) published with a Nats-Msg-Id, so JetStream
// drops a republished message inside its duplicate window.
//
// For upstream systems it offers NewRequest, Submit (validate locally with
// the same schemas the consumer enforces, then publish with the request's
// key as Nats-Msg-Id) and Wait (follow the request's events until a terminal
// one). For comjobs' own roles it offers NewEvent, Publish and the
// asynchronous PublishAsync and Flush.
package publisher

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/cenats"
	"github.com/comjobs/comjobs/schemas"
)

// Publisher publishes CloudEvents onto JetStream with dedupe ids. It is safe
// for concurrent use.
type Publisher struct {
	js     jetstream.JetStream
	logger *slog.Logger
	now    func() time.Time

	checkData    bool
	waitLookback time.Duration

	validatorOnce sync.Once
	validator     *schemas.Validator
	validatorErr  error

	mu        sync.Mutex
	submitted map[string]submission // request key → where and when, for Wait
}

// submission remembers a request this Publisher submitted, so that Wait can
// follow only its template's subjects from shortly before it was published.
type submission struct {
	slug string
	at   time.Time
}

// maxRemembered bounds the submissions remembered for Wait; beyond it, Wait
// reads the whole events stream for a forgotten request.
const maxRemembered = 10000

// Option configures a Publisher.
type Option func(*Publisher)

// WithValidator makes the Publisher use v (for example one with a clock)
// instead of compiling its own on first use.
func WithValidator(v *schemas.Validator) Option {
	return func(p *Publisher) { p.validator = v }
}

// WithClock sets the clock that stamps events' time (default time.Now).
func WithClock(now func() time.Time) Option {
	return func(p *Publisher) { p.now = now }
}

// WithoutDataCheck turns off the check of comjobs events' data against
// their schema in Publish and PublishAsync (on by default).
func WithoutDataCheck() Option {
	return func(p *Publisher) { p.checkData = false }
}

// WithWaitLookback sets how long before a submission Wait starts reading
// events, to allow for clock skew between this host and the server
// (default 5 minutes).
func WithWaitLookback(d time.Duration) Option {
	return func(p *Publisher) { p.waitLookback = d }
}

// New returns a Publisher on js. A nil logger discards logs.
func New(js jetstream.JetStream, logger *slog.Logger, opts ...Option) *Publisher {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	p := &Publisher{
		js:           js,
		logger:       logger.With("component", "publisher"),
		now:          time.Now,
		checkData:    true,
		waitLookback: 5 * time.Minute,
		submitted:    make(map[string]submission),
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

// schemaValidator returns the Validator, compiling it on first use.
func (p *Publisher) schemaValidator() (*schemas.Validator, error) {
	p.validatorOnce.Do(func() {
		if p.validator == nil {
			p.validator, p.validatorErr = schemas.NewValidator()
		}
	})
	return p.validator, p.validatorErr
}

// PubResult is JetStream's answer to a publish.
type PubResult struct {
	Stream string
	Seq    uint64
	// Duplicate is true when JetStream already held a message with the same
	// Nats-Msg-Id inside its duplicate window: nothing new was stored, and
	// Seq is the original message's sequence.
	Duplicate bool
}

// message encodes e for subject with Nats-Msg-Id msgID, after checking the
// data of comjobs' own event types against their schema.
func (p *Publisher) message(subject string, e event.Event, msgID string) (*nats.Msg, error) {
	if p.checkData && e.Context != nil {
		if _, known := schemas.DataSchema(e.Type()); known {
			v, err := p.schemaValidator()
			if err != nil {
				return nil, err
			}
			if err := v.ValidateData(e.Type(), e.Data()); err != nil {
				return nil, fmt.Errorf("publish %s %q to %s: %w", e.Type(), e.ID(), subject, err)
			}
		}
	}
	return p.encode(subject, e, msgID)
}

// encode is the binary-mode message for e on subject with Nats-Msg-Id msgID.
func (p *Publisher) encode(subject string, e event.Event, msgID string) (*nats.Msg, error) {
	if msgID == "" {
		return nil, fmt.Errorf("publish %s to %s: a Nats-Msg-Id is required", e.Type(), subject)
	}
	msg, err := cenats.Encode(subject, e)
	if err != nil {
		return nil, err
	}
	msg.Header.Set(jetstream.MsgIDHeader, msgID)
	return msg, nil
}

// Publish encodes e in binary mode, publishes it on subject with
// Nats-Msg-Id msgID (required) and waits for JetStream's acknowledgement.
// The data of comjobs' own event types is first checked against its schema
// (see WithoutDataCheck). Errors are wrapped; a JetStream refusal (no stream,
// wrong sequence) is returned as nats.go reports it.
func (p *Publisher) Publish(ctx context.Context, subject string, e event.Event, msgID string) (PubResult, error) {
	msg, err := p.message(subject, e, msgID)
	if err != nil {
		return PubResult{}, err
	}
	ack, err := p.js.PublishMsg(ctx, msg)
	if err != nil {
		return PubResult{}, fmt.Errorf("publish %s %q to %s: %w", e.Type(), e.ID(), subject, err)
	}
	if ack.Duplicate {
		p.logger.Debug("duplicate publish", "subject", subject, "msg_id", msgID, "stream", ack.Stream, "seq", ack.Sequence)
	}
	return PubResult{Stream: ack.Stream, Seq: ack.Sequence, Duplicate: ack.Duplicate}, nil
}

// PublishAsync is Publish without waiting: the acknowledgement, or the
// error, arrives on the returned future. nats.go bounds the number of
// outstanding publishes (jetstream.WithPublishAsyncMaxPending) and blocks
// or fails beyond it. Use Flush to wait for all of them.
func (p *Publisher) PublishAsync(subject string, e event.Event, msgID string) (jetstream.PubAckFuture, error) {
	msg, err := p.message(subject, e, msgID)
	if err != nil {
		return nil, err
	}
	return p.sendAsync(msg, e)
}

// PublishCheckedAsync is PublishAsync for a submitted or state-changed
// event whose data the caller encoded from a schemas.JobEvent that passed
// its Check method, which a test holds to the JSON Schema's verdict: the
// data is not parsed against the schema again, whatever WithoutDataCheck
// says. Use it for nothing else. Everything else (encoding, Nats-Msg-Id,
// the future) is as PublishAsync.
func (p *Publisher) PublishCheckedAsync(subject string, e event.Event, msgID string) (jetstream.PubAckFuture, error) {
	msg, err := p.encode(subject, e, msgID)
	if err != nil {
		return nil, err
	}
	return p.sendAsync(msg, e)
}

// sendAsync publishes the encoded e without waiting.
func (p *Publisher) sendAsync(msg *nats.Msg, e event.Event) (jetstream.PubAckFuture, error) {
	f, err := p.js.PublishMsgAsync(msg)
	if err != nil {
		return nil, fmt.Errorf("publish %s %q to %s: %w", e.Type(), e.ID(), msg.Subject, err)
	}
	return f, nil
}

// Flush waits until every asynchronous publish of the underlying JetStream
// context has been acknowledged or has failed (each future says which), or
// until ctx ends.
func (p *Publisher) Flush(ctx context.Context) error {
	select {
	case <-p.js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("flush async publishes: %w", ctx.Err())
	}
}
