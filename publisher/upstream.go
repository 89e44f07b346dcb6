package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/cenats"
	"github.com/comjobs/comjobs/schemas"
)

// NewRequest builds a comjobs.job.requested event: id and source are the
// request's identity (publishing the same pair again never creates a second
// job), time is now, data is r as JSON with its dataschema. It fails if the
// envelope would be invalid (empty id or source, source not a URI
// reference); the data is checked by Submit.
func NewRequest(source, id string, r schemas.Request) (event.Event, error) {
	e := event.New()
	e.SetID(id)
	e.SetSource(source)
	e.SetType(schemas.TypeRequested)
	e.SetTime(time.Now().UTC())
	e.SetDataSchema(schemas.DataSchemaRequested)
	if err := e.SetData(event.ApplicationJSON, r); err != nil {
		return event.Event{}, fmt.Errorf("new request %q: %w", id, err)
	}
	if err := e.Validate(); err != nil {
		return event.Event{}, fmt.Errorf("new request %q: %w", id, err)
	}
	return e, nil
}

// SubmitResult says where a request went.
type SubmitResult struct {
	// Key is schemas.RequestKey(source, id), also the message's Nats-Msg-Id.
	Key string
	// Subject is comjobs.requests.<template-slug>.
	Subject string
	// Seq is the request's sequence in COMJOBS_REQUESTS.
	Seq uint64
	// Duplicate is true when JetStream already held this request (same
	// source and id inside the duplicate window): nothing new was queued.
	// The consumer's ledger catches duplicates outside the window too.
	Duplicate bool
}

// Submit validates the request e exactly as the consumer will — it encodes
// it, decodes it with cenats.Decode's default limits and runs
// schemas.Validator.ValidateRequest — and publishes it on
// comjobs.requests.<template-slug> with Nats-Msg-Id = RequestKey(source,
// id). A request that can never succeed is not published: the error is the
// *schemas.Rejection saying why. Other errors are publish failures, safe to
// retry with the same event.
func (p *Publisher) Submit(ctx context.Context, e event.Event) (SubmitResult, error) {
	v, err := p.schemaValidator()
	if err != nil {
		return SubmitResult{}, err
	}
	// First resolve the template to learn the subject, then check the
	// message as it will travel.
	res, err := v.ValidateRequest("", e)
	if err != nil {
		return SubmitResult{}, err
	}
	subject := schemas.RequestSubject(res.Template.Slug)
	msg, err := cenats.Encode(subject, e)
	if err != nil {
		return SubmitResult{}, fmt.Errorf("submit %q: %w", e.ID(), err)
	}
	// The consumer counts every header in the size limit, Nats-Msg-Id too.
	msg.Header.Set(jetstream.MsgIDHeader, res.Key)
	decoded, err := cenats.Decode(msg.Header, msg.Data, cenats.DecodeOptions{})
	if err != nil {
		return SubmitResult{}, err
	}
	if res, err = v.ValidateRequest(subject, decoded); err != nil {
		return SubmitResult{}, err
	}
	ack, err := p.js.PublishMsg(ctx, msg)
	if err != nil {
		return SubmitResult{}, fmt.Errorf("submit %q to %s: %w", e.ID(), subject, err)
	}
	if !ack.Duplicate {
		p.remember(res.Key, res.Template.Slug)
	}
	p.logger.Info("request submitted", "key", res.Key, "subject", subject, "seq", ack.Sequence, "duplicate", ack.Duplicate)
	return SubmitResult{Key: res.Key, Subject: subject, Seq: ack.Sequence, Duplicate: ack.Duplicate}, nil
}

func (p *Publisher) remember(key, slug string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.submitted) >= maxRemembered {
		for k := range p.submitted { // forget an arbitrary one
			delete(p.submitted, k)
			break
		}
	}
	p.submitted[key] = submission{slug: slug, at: p.now()}
}

func (p *Publisher) recall(key string) (submission, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.submitted[key]
	return s, ok
}

// Wait follows the events of the request (source, id) on comjobs.events.>
// — those whose requestsource and requestid extensions match — calling fn
// (if not nil) on each in stream order, and returns the terminal one: a
// comjobs.job.rejected event, or a comjobs.job.state-changed event whose
// data says terminal. It reads through an ordered consumer on
// COMJOBS_EVENTS: for a request this Publisher submitted, only its
// template's subjects, from shortly before the submission (see
// WithWaitLookback); otherwise the whole stream. It returns ctx's error
// wrapped when ctx ends first. Events that do not decode are logged and
// skipped.
func (p *Publisher) Wait(ctx context.Context, source, id string, fn func(event.Event)) (event.Event, error) {
	key := schemas.RequestKey(source, id)
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{schemas.SubjectEvents + ".>"},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
	if s, ok := p.recall(key); ok {
		start := s.at.Add(-p.waitLookback)
		cfg.FilterSubjects = []string{schemas.SubjectEvents + ".*." + s.slug, schemas.RejectedSubject("unknown")}
		cfg.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		cfg.OptStartTime = &start
	}
	cons, err := p.js.OrderedConsumer(ctx, schemas.StreamEvents, cfg)
	if err != nil {
		return event.Event{}, fmt.Errorf("wait for request %q: %w", id, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return event.Event{}, fmt.Errorf("wait for request %q: %w", id, err)
	}
	defer it.Stop()
	logger := p.logger.With("request_key", key)
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return event.Event{}, fmt.Errorf("wait for request %q: %w", id, ctx.Err())
			}
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return event.Event{}, fmt.Errorf("wait for request %q: %w", id, err)
			}
			logger.Warn("reading events", "err", err)
			continue
		}
		e, err := cenats.Decode(msg.Headers(), msg.Data(), cenats.DecodeOptions{MaxSize: 1 << 20})
		if err != nil {
			logger.Warn("skipping undecodable event", "subject", msg.Subject(), "err", err)
			continue
		}
		if ext(e, schemas.ExtRequestSource) != source || ext(e, schemas.ExtRequestID) != id {
			continue
		}
		if fn != nil {
			fn(e)
		}
		if Terminal(e) {
			return e, nil
		}
	}
}

// Terminal reports whether e ends its request's story: a rejection, or a
// state change whose data says terminal for the request's own job. A group
// job's children carry their parent's request too; their ends are not the
// request's end.
func Terminal(e event.Event) bool {
	switch e.Type() {
	case schemas.TypeRejected:
		return true
	case schemas.TypeStateChanged:
		var d struct {
			Terminal    bool    `json:"terminal"`
			ParentJobID *string `json:"parentJobId"`
		}
		return json.Unmarshal(e.Data(), &d) == nil && d.Terminal && (d.ParentJobID == nil || *d.ParentJobID == "")
	}
	return false
}

// ext returns an extension's value in its string form, "" when absent.
func ext(e event.Event, name string) string {
	v, ok := e.Extensions()[name]
	if !ok {
		return ""
	}
	s, err := types.Format(v)
	if err != nil {
		return ""
	}
	return s
}
