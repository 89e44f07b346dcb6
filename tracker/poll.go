package tracker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
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

// checkBatch is how many jobs one v1 check call asks for ("id in (...)"),
// which keeps its URL near 2 KB.
const checkBatch = 50

// pollState is the lease holder's list schedule; it lives as long as the
// lease. The per-job schedule is in the index (entry.checkAt).
type pollState struct {
	nextList time.Time
}

// poll runs poll cycles until ctx ends (the lease was lost or Run is ending).
func (t *Tracker) poll(ctx context.Context) {
	t.initWatermark(ctx)
	t.resetSchedule()
	p := &pollState{}
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

// cycle is one tick of the lease holder: overdue checks and outboxes left
// by a crashed writer; in v1 mode, when due, a list call and one batch of
// per-job checks; in the older modes, the per-job reads that are due.
func (t *Tracker) cycle(ctx context.Context, p *pollState) {
	now := t.clock.Now()
	listing := t.v1() && !now.Before(p.nextList)
	var start time.Time
	if listing {
		start = time.Now()
		if err := t.listCycle(ctx); err != nil && ctx.Err() == nil {
			t.log.Warn("list cycle failed", "err", err)
		}
		p.nextList = now.Add(jitter(t.listInterval()))
	}
	t.gaugeStates()
	budget := -1 // every due read
	switch {
	case listing:
		budget = checkBatch
	case t.v1():
		budget = 0
	}
	touches, reads := t.due(now, budget)
	t.parallel(ctx, touches, func(ctx context.Context, id string) {
		err := t.update(ctx, id, func(rec *Record) bool { return t.checkOverdue(rec, t.clock.Now()) })
		if err != nil && ctx.Err() == nil {
			t.log.Warn("overdue check failed", "job", id, "err", err)
		}
	})
	if t.v1() {
		if len(reads) > 0 && !t.paused() {
			t.check(ctx, reads)
		}
	} else {
		t.parallel(ctx, reads, func(ctx context.Context, id string) {
			if !t.paused() {
				t.read(ctx, id)
			}
		})
	}
	if listing {
		t.m.cycle.Observe(time.Since(start).Seconds())
	}
}

// due walks the index at now: the jobs to touch (an overdue threshold
// passed, or an outbox was left behind) and, up to budget of them (all when
// budget < 0), the jobs whose own read is due, longest due first, each
// rescheduled. Jobs seen for the first time are scheduled.
func (t *Tracker) due(now time.Time, budget int) (touches, reads []string) {
	type dueRead struct {
		id string
		at time.Time
	}
	var ready []dueRead
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, e := range t.index {
		if (!e.stuckAt.IsZero() && now.After(e.stuckAt)) || (!e.overdueAt.IsZero() && !now.Before(e.overdueAt)) {
			touches = append(touches, id)
		}
		switch {
		case e.terminal:
		case e.checkAt.IsZero():
			e.checkAt = now.Add(jitter(t.readInterval(e.slug)))
			t.index[id] = e
		case budget != 0 && !now.Before(e.checkAt):
			ready = append(ready, dueRead{id, e.checkAt})
		}
	}
	if budget >= 0 && len(ready) > budget {
		slices.SortFunc(ready, func(a, b dueRead) int { return a.at.Compare(b.at) })
		ready = ready[:budget]
	}
	for _, r := range ready {
		e := t.index[r.id]
		e.checkAt = now.Add(jitter(t.readInterval(e.slug)))
		t.index[r.id] = e
		reads = append(reads, r.id)
	}
	return touches, reads
}

// resetSchedule forgets every job's next read, so a new lease holder
// spreads them out afresh.
func (t *Tracker) resetSchedule() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, e := range t.index {
		if !e.checkAt.IsZero() {
			e.checkAt = time.Time{}
			t.index[id] = e
		}
	}
}

// seen reschedules the own read of the tracked jobs among ids, just
// observed in a list.
func (t *Tracker) seen(ids []string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, id := range ids {
		if e, ok := t.index[id]; ok && !e.terminal {
			e.checkAt = now.Add(jitter(t.readInterval(e.slug)))
			t.index[id] = e
		}
	}
}

// check reads the v1 jobs ids (at most checkBatch) with one list call
// "id in (...)"; a job the answer lacks is read on its own, so a 404 makes
// it LOST. Ids a filter literal cannot carry are read on their own too.
func (t *Tracker) check(ctx context.Context, ids []string) {
	var quoted, alone []string
	for _, id := range ids {
		if strings.ContainsAny(id, "'\\") {
			alone = append(alone, id)
			continue
		}
		quoted = append(quoted, "'"+id+"'")
	}
	if len(quoted) > 0 {
		found := make(map[string]bool, len(quoted))
		var mu sync.Mutex
		err := t.walk(ctx, com.ListOptions{Filter: "id in (" + strings.Join(quoted, ",") + ")"}, func(j *com.Job) {
			mu.Lock()
			found[j.ID] = true
			mu.Unlock()
			t.considerLogged(ctx, j)
		})
		if err != nil {
			if ctx.Err() == nil {
				t.log.Warn("checking jobs failed", "jobs", len(quoted), "err", err)
			}
			return
		}
		for _, id := range ids {
			if !found[id] && !slices.Contains(alone, id) {
				alone = append(alone, id)
			}
		}
	}
	t.parallel(ctx, alone, func(ctx context.Context, id string) {
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
	return t.walkPages(ctx, opts, func(*com.Page) {}, fn)
}

// walkPages is walk that also hands each page to onPage, in order, before
// its jobs.
func (t *Tracker) walkPages(ctx context.Context, opts com.ListOptions, onPage func(*com.Page), fn func(*com.Job)) error {
	opts.Limit = t.pageSize
	for {
		page, err := t.listPage(ctx, opts, onPage, fn)
		if err != nil {
			return err
		}
		opts.Offset += len(page.Items)
		if len(page.Items) < opts.Limit || opts.Offset >= page.Total {
			return ctx.Err()
		}
	}
}

// listPage lists one page of opts and hands it to onPage, then each of its
// jobs to fn on a worker (a job twice on the page once).
func (t *Tracker) listPage(ctx context.Context, opts com.ListOptions, onPage func(*com.Page), fn func(*com.Job)) (*com.Page, error) {
	page, err := t.com.List(ctx, opts)
	t.countCall("list", err)
	if err != nil {
		t.slowDown(err)
		return nil, fmt.Errorf("list jobs (%s, offset %d): %w", opts.Filter, opts.Offset, err)
	}
	onPage(page)
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
	return page, nil
}

// walkUpdated lists every job updated after since, oldest first, like
// walkPages but paging by key: each next page asks for the jobs updated at
// or after the newest of the last page, so a job changing during the walk,
// which moves to its end, cannot shift another job past a page boundary
// unseen, as paging by offset would. The jobs at the seam come twice (the
// state machine ignores the copy). A page whose jobs all carry the same
// updatedAt, or that does not get past since, is followed by offset.
func (t *Tracker) walkUpdated(ctx context.Context, since time.Time, onPage func(*com.Page), fn func(*com.Job)) error {
	opts := com.ListOptions{Sort: "updatedAt asc", Limit: t.pageSize}
	op := "gt"
	for {
		opts.Filter = "updatedAt " + op + " " + since.UTC().Format(time.RFC3339Nano)
		page, err := t.listPage(ctx, opts, onPage, fn)
		if err != nil {
			return err
		}
		n := len(page.Items)
		if n < opts.Limit || opts.Offset+n >= page.Total {
			return ctx.Err()
		}
		if last := page.Items[n-1].UpdatedAt; page.Items[0].UpdatedAt.Before(last) && last.After(since) {
			since, op, opts.Offset = last, "ge", 0
		} else {
			opts.Offset += n
		}
	}
}

// consider observes j if it is tracked, or adopts it if its parent is;
// other jobs are ignored (nil).
func (t *Tracker) consider(ctx context.Context, j *com.Job) error {
	at := t.clock.Now()
	e, ok := t.lookup(j.ID)
	var err error
	switch {
	case ok && (e.terminal || e.observed && j.Generation <= e.generation && e.stuckAt.IsZero()):
		return nil // nothing new
	case ok:
		err = t.observe(ctx, j.ID, observation{job: j, at: at})
	case j.ParentJobID != "":
		if _, ok := t.lookup(j.ParentJobID); !ok {
			return nil
		}
		var parent *Record
		if parent, _, err = getRecord(ctx, t.kv, j.ParentJobID); err == nil {
			err = t.adopt(ctx, *parent, j)
		}
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
// ListMargin), oldest first, every page. A job whose observation failed
// keeps the watermark from passing it for a while, so the next cycles see
// it again.
// After a complete walk the
// watermark moves to the newest updatedAt seen or, when COM dated its first
// answer later, to that date: every change COM stamped before it was
// listable by then, save the lag ListMargin covers, so a cycle without
// changes lists only the margin's window instead of whatever changed within
// ListMargin of the last change ever seen.
func (t *Tracker) listCycle(ctx context.Context) error {
	t.mu.Lock()
	wm := t.watermark
	t.wmLowered = false
	t.mu.Unlock()
	since := wm.Add(-t.cfg.ListMargin).UTC()
	newWM := wm
	var (
		seenMu sync.Mutex
		seen   []string
	)
	now := t.clock.Now()
	var serverTime time.Time
	var failed time.Time // the oldest updatedAt of a job whose observation failed
	err := t.walkUpdated(ctx, since, func(p *com.Page) {
		if serverTime.IsZero() {
			serverTime = p.ServerTime
		}
	}, func(j *com.Job) {
		err := t.consider(ctx, j)
		if err != nil && ctx.Err() == nil {
			t.log.Warn("observing job failed", "job", j.ID, "err", err)
		}
		seenMu.Lock()
		defer seenMu.Unlock()
		if j.UpdatedAt.After(newWM) {
			newWM = j.UpdatedAt
		}
		if err != nil && (failed.IsZero() || j.UpdatedAt.Before(failed)) {
			failed = j.UpdatedAt
		}
		seen = append(seen, j.ID)
	})
	t.seen(seen, now)
	if err != nil {
		return err
	}
	if serverTime.After(newWM) {
		newWM = serverTime
	}
	if !failed.IsZero() {
		// The next list must show that job again; one that keeps failing
		// holds the watermark back for ten list intervals at most (its own
		// check reads it later).
		hold := failed.Add(t.cfg.ListMargin - time.Microsecond)
		if floor := newWM.Add(-10 * t.listInterval()); hold.Before(floor) {
			hold = floor
		}
		if hold.Before(newWM) {
			newWM = hold
		}
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
	for _, e := range t.index {
		if !e.terminal && !e.updatedAt.IsZero() && e.updatedAt.Before(wm) {
			wm = e.updatedAt
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
