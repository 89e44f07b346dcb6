package tracker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/cenats"
	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/schemas"
)

// handleTimeout bounds the handling of one submitted event, including during
// shutdown, when in-flight messages are finished rather than dropped.
const handleTimeout = 30 * time.Second

// consume reads comjobs.job.submitted events from the tracker durable and
// starts tracking each job. On ctx end it drains: messages already fetched
// are handled and acked before it returns.
func (t *Tracker) consume(ctx context.Context) error {
	cons, err := t.js.Consumer(ctx, schemas.StreamEvents, schemas.DurableTracker)
	if err != nil {
		return fmt.Errorf("tracker: durable %s on %s (run `comjobs setup`): %w", schemas.DurableTracker, schemas.StreamEvents, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(4 * t.cfg.Workers))
	if err != nil {
		return fmt.Errorf("tracker: consume %s: %w", schemas.DurableTracker, err)
	}
	defer it.Stop()
	t.consuming.Store(true)
	defer t.consuming.Store(false)
	stop := context.AfterFunc(ctx, it.Drain)
	defer stop()

	msgs := make(chan jetstream.Msg)
	var wg sync.WaitGroup
	for range t.cfg.Workers {
		wg.Go(func() {
			for m := range msgs {
				hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), handleTimeout)
				t.handleSubmitted(hctx, m)
				cancel()
			}
		})
	}
	defer wg.Wait()
	defer close(msgs)
	for {
		m, err := it.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			return nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			t.log.Warn("reading submitted events", "err", err)
			continue
		}
		msgs <- m
	}
}

// handleSubmitted starts tracking the job of one submitted event and acks it
// once the record exists and the job's first state was published.
func (t *Tracker) handleSubmitted(ctx context.Context, m jetstream.Msg) {
	log := t.log.With("subject", m.Subject())
	e, err := cenats.Decode(m.Headers(), m.Data(), cenats.DecodeOptions{MaxSize: 64 << 10})
	if err != nil {
		log.Error("undecodable submitted event dropped", "err", err)
		_ = m.Term()
		return
	}
	if e.Type() != schemas.TypeSubmitted {
		log.Warn("event of another type on the submitted subject ignored", "type", e.Type(), "id", e.ID())
		_ = m.Ack()
		return
	}
	var d schemas.JobEvent
	if err := json.Unmarshal(e.Data(), &d); err != nil || d.JobID == "" {
		log.Error("submitted event without a job dropped", "id", e.ID(), "err", err)
		_ = m.Term()
		return
	}
	ext := func(name string) string {
		v, _ := e.Extensions()[name].(string)
		return v
	}
	rec := Record{
		JobID: d.JobID, JobURI: d.JobURI, Template: d.Template, Resource: d.Resource,
		Labels: d.Labels, Notify: d.Notify,
		Request:   RequestRef{ID: ext(schemas.ExtRequestID), Source: ext(schemas.ExtRequestSource), TraceParent: ext(schemas.ExtTraceParent)},
		CreatedAt: d.CreatedAt, UpdatedAt: d.UpdatedAt, TrackedAt: t.clock.Now(),
	}
	if d.ParentJobID != nil {
		rec.ParentJobID = *d.ParentJobID
	}
	job := &com.Job{
		ID: d.JobID, ParentJobID: rec.ParentJobID, TemplateID: d.Template.ID, Name: d.Template.Name,
		ResourceType: d.Resource.Type, ResourceID: d.Resource.ID, URI: d.JobURI,
		State: d.State, ResultCode: d.ResultCode, Status: d.Status, StatusDetails: d.StatusDetails,
		Generation: d.Generation, CreatedAt: d.CreatedAt, UpdatedAt: d.UpdatedAt,
	}
	if err := t.track(ctx, rec, job); err != nil {
		log.Warn("tracking submitted job failed, will retry", "job", d.JobID, "err", err)
		_ = m.NakWithDelay(time.Second)
		return
	}
	if rec.ParentJobID == "" && rec.Resource.Type == com.ResourceGroup {
		// While COM rate-limits the tracker, or after a failed list, the
		// event comes back later (backing off by its deliveries) rather
		// than adding calls to a spent budget.
		retry := time.Second
		if md, err := m.Metadata(); err == nil {
			retry = min(time.Second<<min(md.NumDelivered, 6), time.Minute)
		}
		if t.paused() {
			_ = m.NakWithDelay(retry)
			return
		}
		if err := t.adoptChildren(ctx, rec); err != nil {
			log.Warn("adopting the group job's children failed, will retry", "job", d.JobID, "err", err, "in", retry)
			_ = m.NakWithDelay(retry)
			return
		}
	}
	if err := m.Ack(); err != nil {
		log.Warn("ack submitted event", "job", d.JobID, "err", err)
	}
}

// track creates rec unless the job is tracked already, then feeds job (its
// state as first seen) through the state machine. A new record is written
// with the observation already applied, saving a round of reads and writes.
func (t *Tracker) track(ctx context.Context, rec Record, job *com.Job) error {
	obs := observation{job: job, at: t.clock.Now()}
	if job.State == "" {
		obs.job = nil
	}
	mu := t.lockFor(rec.JobID)
	mu.Lock()
	t.apply(&rec, obs)
	t.checkOverdue(&rec, obs.at)
	data, err := json.Marshal(rec)
	if err != nil {
		mu.Unlock()
		return fmt.Errorf("encode record of job %s: %w", rec.JobID, err)
	}
	rev, err := t.kv.Create(ctx, Key(rec.JobID), data)
	switch {
	case err == nil:
		defer mu.Unlock()
		if len(rec.Outbox) == 0 {
			return nil
		}
		return t.flush(ctx, &rec, rev)
	case errors.Is(err, jetstream.ErrKeyExists):
		mu.Unlock()
		if obs.job == nil {
			return nil
		}
		return t.observe(ctx, rec.JobID, obs)
	default:
		mu.Unlock()
		return fmt.Errorf("create record of job %s: %w", rec.JobID, err)
	}
}

// adoptChildren tracks the children COM has already started for group job
// parent, once parent is tracked. The polls skip a child whose parent is
// not tracked yet, and one that ended by then is not listed again unless
// the poller's watermark moves back for the parent (which a change of
// poller can lose); adopting them here does not depend on the poller.
// Children started later are adopted by the polls. One list call per
// group job.
func (t *Tracker) adoptChildren(ctx context.Context, parent Record) error {
	var (
		mu   sync.Mutex
		errs []error
	)
	err := t.walk(ctx, com.ListOptions{Filter: fmt.Sprintf("parentJobId eq '%s'", parent.JobID)}, func(j *com.Job) {
		if j.ParentJobID != parent.JobID {
			return
		}
		if err := t.adopt(ctx, parent, j); err != nil && !errors.Is(err, ErrNotTracked) {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
	})
	return errors.Join(append(errs, err)...)
}

// adopt starts tracking child, a job whose parent is tracked: it inherits the
// parent's request, labels and notification routing.
func (t *Tracker) adopt(ctx context.Context, parent Record, child *com.Job) error {
	rec := Record{
		JobID: child.ID, JobURI: child.URI, ParentJobID: child.ParentJobID,
		Template: templateRef(child),
		Resource: schemas.Resource{Type: child.ResourceType, ID: child.ResourceID},
		Labels:   parent.Labels, Notify: parent.Notify, Request: parent.Request,
		CreatedAt: child.CreatedAt, UpdatedAt: child.UpdatedAt, TrackedAt: t.clock.Now(),
	}
	t.log.Info("tracking child job", "job", child.ID, "parent", parent.JobID)
	return t.track(ctx, rec, child)
}
