package tracker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/publisher"
	"github.com/comjobs/comjobs/schemas"
)

// observation is one sighting of a job: its body from COM, or its absence
// (lost: COM answered 404 with its error body).
type observation struct {
	job  *com.Job
	lost bool
	at   time.Time
}

// observe feeds one observation of job id through the state machine: it is
// the only way records change after creation. It returns an error wrapping
// ErrNotTracked for a job without a record.
func (t *Tracker) observe(ctx context.Context, id string, obs observation) error {
	return t.update(ctx, id, func(rec *Record) bool {
		changed := t.apply(rec, obs)
		return t.checkOverdue(rec, obs.at) || changed
	})
}

// apply folds obs into rec, appending a state-changed event to the outbox
// when the state changed (or on the first observation). It reports whether
// rec changed. Stale observations (generation not newer) change nothing.
func (t *Tracker) apply(rec *Record, obs observation) bool {
	if rec.Terminal {
		return false
	}
	j := obs.job
	if obs.lost {
		j = &com.Job{
			ID: rec.JobID, State: schemas.StateLost, Generation: rec.Generation + 1,
			Status: "COM no longer knows this job", UpdatedAt: rec.UpdatedAt,
		}
	}
	if j == nil || (rec.Observed && j.Generation <= rec.Generation) {
		return false
	}
	var prev *string
	if rec.Observed {
		p := rec.State
		prev = &p
	}
	stateChanged := !rec.Observed || j.State != rec.State

	if rec.JobURI == "" {
		rec.JobURI = j.URI
	}
	if rec.ParentJobID == "" {
		rec.ParentJobID = j.ParentJobID
	}
	if rec.Template.ID == "" && j.TemplateID != "" {
		rec.Template = templateRef(j)
	}
	if rec.Resource.ID == "" && j.ResourceID != "" {
		rec.Resource = schemas.Resource{Type: j.ResourceType, ID: j.ResourceID}
	}
	if rec.CreatedAt.IsZero() {
		rec.CreatedAt = j.CreatedAt
	}
	rec.Observed = true
	rec.State = j.State
	rec.ResultCode = j.ResultCode
	rec.Status = j.Status
	rec.StatusDetails = j.StatusDetails
	rec.Generation = j.Generation
	if !j.UpdatedAt.IsZero() {
		rec.UpdatedAt = j.UpdatedAt
	}
	rec.ObservedAt = obs.at
	if !stateChanged {
		return true
	}
	rec.StateSince = obs.at
	rec.Terminal = schemas.IsTerminal(j.State)
	if !j.UpdatedAt.IsZero() && !obs.lost {
		t.m.latency.Observe(max(0, obs.at.Sub(j.UpdatedAt).Seconds()))
	}
	ev := t.jobEvent(rec, prev)
	data, _ := json.Marshal(ev) // a JobEvent always marshals
	rec.Outbox = append(rec.Outbox, Pending{
		ID:      fmt.Sprintf("%s/%d", rec.JobID, rec.Generation),
		Subject: schemas.StateSubject(rec.State, rec.Template.Slug),
		Type:    schemas.TypeStateChanged,
		Data:    data,
	})
	return true
}

// activeStates are the states a job can be overdue in.
var activeStates = []string{schemas.StatePending, schemas.StateApprovalPending, schemas.StateRunning}

// checkOverdue appends one overdue event per newly passed threshold and
// reports whether it did.
func (t *Tracker) checkOverdue(rec *Record, now time.Time) bool {
	ths := t.dueThresholds(rec, now)
	for _, th := range ths {
		since := overdueSince(rec)
		data, _ := json.Marshal(schemas.Overdue{JobEvent: t.jobEvent(rec, nil), Threshold: th.String(), Since: since})
		rec.OverdueSent = append(rec.OverdueSent, th.String())
		rec.Outbox = append(rec.Outbox, Pending{
			ID:      fmt.Sprintf("%s/overdue/%s", rec.JobID, th),
			Subject: schemas.OverdueSubject(rec.Template.Slug),
			Type:    schemas.TypeOverdue,
			Data:    data,
		})
	}
	return len(ths) > 0
}

// dueThresholds are the thresholds rec passed by now and did not announce.
func (t *Tracker) dueThresholds(rec *Record, now time.Time) []time.Duration {
	if rec.Terminal || !rec.Observed || !slices.Contains(activeStates, rec.State) {
		return nil
	}
	age := now.Sub(overdueSince(rec))
	var out []time.Duration
	for _, th := range t.cfg.thresholds(rec.Template.Slug) {
		if age >= th && !slices.Contains(rec.OverdueSent, th.String()) {
			out = append(out, th)
		}
	}
	return out
}

// nextOverdue is when rec passes its next threshold not yet announced; zero
// when none is left or rec cannot be overdue.
func (t *Tracker) nextOverdue(rec *Record) time.Time {
	if rec.Terminal || !rec.Observed || !slices.Contains(activeStates, rec.State) {
		return time.Time{}
	}
	since := overdueSince(rec)
	var next time.Time
	for _, th := range t.cfg.thresholds(rec.Template.Slug) {
		if slices.Contains(rec.OverdueSent, th.String()) {
			continue
		}
		if at := since.Add(th); next.IsZero() || at.Before(next) {
			next = at
		}
	}
	return next
}

// overdueSince is when the job started counting against its expected duration.
func overdueSince(rec *Record) time.Time {
	if !rec.CreatedAt.IsZero() {
		return rec.CreatedAt
	}
	return rec.TrackedAt
}

func templateRef(j *com.Job) schemas.TemplateRef {
	if tpl, ok := com.Lookup(j.TemplateID); ok {
		return schemas.TemplateRef{ID: tpl.ID, Name: tpl.Name, Slug: tpl.Slug}
	}
	return schemas.TemplateRef{ID: j.TemplateID, Name: j.Name, Slug: schemas.Slug(j.Name)}
}

func (t *Tracker) jobEvent(rec *Record, prev *string) schemas.JobEvent {
	var parent *string
	if rec.ParentJobID != "" {
		p := rec.ParentJobID
		parent = &p
	}
	return schemas.JobEvent{
		JobID: rec.JobID, JobURI: rec.JobURI, ParentJobID: parent,
		Template: rec.Template, Resource: rec.Resource,
		PreviousState: prev, State: rec.State, ResultCode: rec.ResultCode,
		Status: rec.Status, StatusDetails: rec.StatusDetails,
		Terminal: schemas.IsTerminal(rec.State), Generation: rec.Generation,
		CreatedAt: rec.CreatedAt, UpdatedAt: rec.UpdatedAt, ObservedAt: rec.ObservedAt,
		Labels: rec.Labels, Notify: rec.Notify,
	}
}

// update applies mutate to the record of job id with compare-and-set,
// retrying on conflicts, then publishes the record's outbox. mutate may run
// several times and must only change the record it is given; it reports
// whether the record changed.
func (t *Tracker) update(ctx context.Context, id string, mutate func(*Record) bool) error {
	mu := t.lockFor(id)
	mu.Lock()
	defer mu.Unlock()
	for attempt := 0; ; attempt++ {
		rec, rev, err := getRecord(ctx, t.kv, id)
		if err != nil {
			return err
		}
		if mutate(rec) {
			data, err := json.Marshal(rec)
			if err != nil {
				return fmt.Errorf("encode record of job %s: %w", id, err)
			}
			rev, err = t.kv.Update(ctx, Key(id), data, rev)
			if errors.Is(err, jetstream.ErrKeyRevisionMismatch) && attempt < 20 {
				continue // another replica wrote first: look again
			}
			if err != nil {
				return fmt.Errorf("write record of job %s: %w", id, err)
			}
		}
		if len(rec.Outbox) == 0 {
			return nil
		}
		return t.flush(ctx, rec, rev)
	}
}

// flush publishes rec's outbox in order, then removes what it published from
// the stored record. A copy published twice carries the same Nats-Msg-Id and
// is dropped by the stream.
func (t *Tracker) flush(ctx context.Context, rec *Record, rev uint64) error {
	done := make(map[string]bool, len(rec.Outbox))
	for _, p := range rec.Outbox {
		e, err := publisher.NewEvent(p.Type, Source, p.ID, rec.JobID, p.Data, publisher.RequestRef{
			ID: rec.Request.ID, Source: rec.Request.Source, TraceParent: rec.Request.TraceParent,
		})
		if err != nil {
			return fmt.Errorf("build event %s: %w", p.ID, err)
		}
		res, err := t.pub.Publish(ctx, p.Subject, e, p.ID)
		if err != nil {
			return fmt.Errorf("publish event %s: %w", p.ID, err)
		}
		if !res.Duplicate {
			t.m.published.WithLabelValues(p.Type).Inc()
		}
		t.log.Debug("event published", "id", p.ID, "subject", p.Subject, "duplicate", res.Duplicate)
		done[p.ID] = true
	}
	for attempt := 0; attempt < 20; attempt++ {
		rest := slices.DeleteFunc(slices.Clone(rec.Outbox), func(p Pending) bool { return done[p.ID] })
		if len(rest) == len(rec.Outbox) {
			return nil
		}
		rec.Outbox = rest
		data, err := json.Marshal(rec)
		if err != nil {
			return fmt.Errorf("encode record of job %s: %w", rec.JobID, err)
		}
		_, err = t.kv.Update(ctx, Key(rec.JobID), data, rev)
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return fmt.Errorf("clear outbox of job %s: %w", rec.JobID, err)
		}
		rec, rev, err = getRecord(ctx, t.kv, rec.JobID)
		if err != nil {
			return err
		}
	}
	return fmt.Errorf("clear outbox of job %s: too many concurrent writers", rec.JobID)
}
