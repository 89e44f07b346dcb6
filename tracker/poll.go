package tracker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/com"
)

// watermarkKey keeps the v1 list watermark in the control bucket, so a new
// lease holder resumes where the last one stopped.
const watermarkKey = "tracker.watermark"

// listLimit is the page size of v1 list calls (COM's maximum).
const listLimit = 1000

// pollState is the lease holder's schedule; it lives as long as the lease.
type pollState struct {
	nextDue  map[string]time.Time // job id -> next read on its own
	nextList time.Time
}

// poll runs poll cycles until ctx ends (the lease was lost or Run is ending).
func (t *Tracker) poll(ctx context.Context) {
	t.initWatermark(ctx)
	p := &pollState{nextDue: make(map[string]time.Time)}
	tick := time.NewTicker(max(t.cfg.PollInterval/4, time.Millisecond))
	defer tick.Stop()
	for {
		if !t.paused() {
			t.cycle(ctx, p)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// v1 reports whether COM lists jobs by updatedAt (the v1 API).
func (t *Tracker) v1() bool { return t.com.APIVersion() == "v1" }

// listInterval is the v1 list cycle's interval.
func (t *Tracker) listInterval() time.Duration {
	if t.cfg.WebhookSecret != "" {
		return 3 * t.cfg.PollInterval
	}
	return t.cfg.PollInterval
}

// readInterval is how often a job of slug is read on its own.
func (t *Tracker) readInterval(slug string) time.Duration {
	iv := t.cfg.interval(slug)
	if t.v1() {
		iv *= time.Duration(t.cfg.CheckFactor)
	}
	return iv
}

// cycle is one tick of the lease holder: a list call when due (v1), per-job
// reads when due, overdue checks, and outboxes left by a crashed writer.
func (t *Tracker) cycle(ctx context.Context, p *pollState) {
	now := t.clock.Now()
	if t.v1() && !now.Before(p.nextList) {
		start := time.Now()
		if err := t.listCycle(ctx, p); err != nil && ctx.Err() == nil {
			t.log.Warn("list cycle failed", "err", err)
		}
		t.m.cycle.Observe(time.Since(start).Seconds())
		p.nextList = now.Add(jitter(t.listInterval()))
	}
	snap := t.snapshot()
	t.gaugeStates(snap)
	var reads, touches []string
	for id, c := range snap {
		switch {
		case len(c.rec.Outbox) > 0 && now.Sub(c.rec.ObservedAt) > t.cfg.PollInterval:
			touches = append(touches, id) // a writer died before publishing
		case len(t.dueThresholds(&c.rec, now)) > 0:
			touches = append(touches, id)
		}
		if c.rec.Terminal {
			delete(p.nextDue, id)
			continue
		}
		next, ok := p.nextDue[id]
		switch {
		case !ok:
			p.nextDue[id] = now.Add(jitter(t.readInterval(c.rec.Template.Slug)))
		case !now.Before(next):
			reads = append(reads, id)
			p.nextDue[id] = now.Add(jitter(t.readInterval(c.rec.Template.Slug)))
		}
	}
	for id := range p.nextDue {
		if _, ok := snap[id]; !ok {
			delete(p.nextDue, id)
		}
	}
	t.parallel(ctx, touches, func(ctx context.Context, id string) {
		err := t.update(ctx, id, func(rec *Record) bool { return t.checkOverdue(rec, t.clock.Now()) })
		if err != nil && ctx.Err() == nil {
			t.log.Warn("overdue check failed", "job", id, "err", err)
		}
	})
	t.parallel(ctx, reads, func(ctx context.Context, id string) {
		if !t.paused() {
			t.read(ctx, id)
		}
	})
}

// parallel runs fn for each id on at most Workers goroutines and waits.
func (t *Tracker) parallel(ctx context.Context, ids []string, fn func(context.Context, string)) {
	sem := make(chan struct{}, t.cfg.Workers)
	var wg sync.WaitGroup
	for _, id := range ids {
		select {
		case <-ctx.Done():
		case sem <- struct{}{}:
			wg.Go(func() {
				defer func() { <-sem }()
				fn(ctx, id)
			})
			continue
		}
		break
	}
	wg.Wait()
}

// read reads one job from COM and observes it; a 404 with COM's body makes
// it LOST. For a group job in the older API versions it also looks for
// child jobs, which only v1 lists show by themselves.
func (t *Tracker) read(ctx context.Context, id string) {
	job, err := t.com.Get(ctx, id)
	t.countCall("get", err)
	at := t.clock.Now()
	switch {
	case com.IsNotFound(err):
		t.log.Warn("job no longer known to COM", "job", id)
		err = t.observe(ctx, id, observation{lost: true, at: at})
	case err != nil:
		t.slowDown(err)
	default:
		err = t.observe(ctx, id, observation{job: job, at: at})
		if err == nil && !t.v1() && job.ResourceType == com.ResourceGroup {
			err = t.findChildren(ctx, id)
		}
	}
	if err != nil && ctx.Err() == nil {
		t.log.Warn("reading job failed", "job", id, "err", err)
	}
}

// findChildren tracks the children of tracked group job parent.
func (t *Tracker) findChildren(ctx context.Context, parent string) error {
	return t.walk(ctx, com.ListOptions{Filter: fmt.Sprintf("parentJobId eq '%s'", parent)}, func(j *com.Job) {
		t.considerLogged(ctx, j)
	})
}

// walk lists every page of opts, handing each job to fn on a worker.
func (t *Tracker) walk(ctx context.Context, opts com.ListOptions, fn func(*com.Job)) error {
	opts.Limit = listLimit
	for offset := 0; ; {
		opts.Offset = offset
		page, err := t.com.List(ctx, opts)
		t.countCall("list", err)
		if err != nil {
			t.slowDown(err)
			return fmt.Errorf("list jobs (%s, offset %d): %w", opts.Filter, offset, err)
		}
		byID := make(map[string]*com.Job, len(page.Items))
		ids := make([]string, 0, len(page.Items))
		for i := range page.Items {
			j := &page.Items[i]
			if _, dup := byID[j.ID]; !dup {
				ids = append(ids, j.ID)
			}
			byID[j.ID] = j
		}
		t.parallel(ctx, ids, func(ctx context.Context, id string) { fn(byID[id]) })
		offset += len(page.Items)
		if len(page.Items) < opts.Limit || offset >= page.Total {
			return ctx.Err()
		}
	}
}

// consider observes j if it is tracked, or adopts it if its parent is;
// other jobs are ignored (nil).
func (t *Tracker) consider(ctx context.Context, j *com.Job) error {
	at := t.clock.Now()
	c, ok := t.lookup(j.ID)
	var err error
	switch {
	case ok && (c.rec.Terminal || c.rec.Observed && j.Generation <= c.rec.Generation && len(c.rec.Outbox) == 0):
		return nil // nothing new
	case ok:
		err = t.observe(ctx, j.ID, observation{job: j, at: at})
	case j.ParentJobID != "":
		parent, ok := t.lookup(j.ParentJobID)
		if !ok {
			return nil
		}
		err = t.adopt(ctx, parent.rec, j)
	default:
		return nil
	}
	if errors.Is(err, ErrNotTracked) {
		return nil
	}
	return err
}

// considerLogged is consider for poll paths, where a failure is retried by
// the next cycle.
func (t *Tracker) considerLogged(ctx context.Context, j *com.Job) {
	if err := t.consider(ctx, j); err != nil && ctx.Err() == nil {
		t.log.Warn("observing job failed", "job", j.ID, "err", err)
	}
}

// listCycle is the v1 poll: the jobs updated since the watermark (minus
// ListMargin), oldest first, every page.
func (t *Tracker) listCycle(ctx context.Context, p *pollState) error {
	t.mu.Lock()
	wm := t.watermark
	t.wmLowered = false
	t.mu.Unlock()
	since := wm.Add(-t.cfg.ListMargin).UTC()
	newWM := wm
	var seenMu sync.Mutex
	now := t.clock.Now()
	var seen []string
	err := t.walk(ctx, com.ListOptions{
		Filter: "updatedAt gt " + since.Format(time.RFC3339Nano),
		Sort:   "updatedAt asc",
	}, func(j *com.Job) {
		seenMu.Lock()
		if j.UpdatedAt.After(newWM) {
			newWM = j.UpdatedAt
		}
		seen = append(seen, j.ID)
		seenMu.Unlock()
		t.considerLogged(ctx, j)
	})
	for _, id := range seen {
		if c, ok := t.lookup(id); ok {
			p.nextDue[id] = now.Add(jitter(t.readInterval(c.rec.Template.Slug)))
		}
	}
	if err != nil {
		return err
	}
	t.mu.Lock()
	if !t.wmLowered {
		t.watermark = newWM
	}
	wm = t.watermark
	t.mu.Unlock()
	if _, err := t.ctl.Put(ctx, watermarkKey, []byte(wm.UTC().Format(time.RFC3339Nano))); err != nil {
		return fmt.Errorf("store watermark: %w", err)
	}
	return nil
}

// initWatermark sets the watermark when the lease is gained: the stored one,
// moved back to the oldest last update of a job still in flight (at most a
// day back: older ones are found by their own reads), or now.
func (t *Tracker) initWatermark(ctx context.Context) {
	now := t.clock.Now()
	wm := now.Add(-t.cfg.ListMargin)
	if e, err := t.ctl.Get(ctx, watermarkKey); err == nil {
		if stored, err := time.Parse(time.RFC3339Nano, string(e.Value())); err == nil {
			wm = stored
		}
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.log.Warn("reading watermark", "err", err)
	}
	floor := now.Add(-24 * time.Hour)
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.cache {
		u := c.rec.UpdatedAt
		if !c.rec.Terminal && !u.IsZero() && u.Before(wm) {
			wm = u
		}
	}
	if wm.Before(floor) {
		wm = floor
	}
	t.watermark = wm
	t.log.Info("polling from watermark", "watermark", wm, "apiVersion", t.com.APIVersion())
}

// countCall counts one COM call by route and outcome.
func (t *Tracker) countCall(route string, err error) {
	status := "200"
	var ce *com.Error
	switch {
	case err == nil:
	case errors.As(err, &ce) && ce.StatusCode != 0:
		status = strconv.Itoa(ce.StatusCode)
	default:
		status = "error"
	}
	t.m.calls.WithLabelValues(route, status).Inc()
}
