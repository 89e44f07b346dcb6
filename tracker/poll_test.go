package tracker_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/com/comsim"
	"github.com/comjobs/comjobs/schemas"
	"github.com/comjobs/comjobs/tracker"
)

// bulk creates n jobs of template slug straight in the simulator (no HTTP,
// not counted), each on a resource of its own named prefix-<i>, and
// announces them as the consumer would.
func (e *env) bulk(n int, slug, prefix string) []string {
	e.t.Helper()
	tpl, _ := com.Lookup(slug)
	ids := make([]string, 0, n)
	for i := range n {
		res := fmt.Sprintf("%s-%05d", prefix, i)
		e.sim.Inventory().Add(com.ResourceServer, res)
		r, err := e.sim.Submit(com.CreateRequest{TemplateID: tpl.ID, ResourceType: com.ResourceServer, ResourceID: res})
		if err != nil {
			e.t.Fatal(err)
		}
		e.publishSubmittedAsync(&com.Job{ID: r.ID, TemplateID: r.TemplateID, ResourceType: r.ResourceType, ResourceID: r.ResourceID,
			State: r.State, Generation: r.Generation, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt}, tpl)
		ids = append(ids, r.ID)
	}
	if err := e.pub.Flush(e.ctx); err != nil {
		e.t.Fatal(err)
	}
	return ids
}

// cycleCount is how many v1 list cycles the tracker registered on reg ran.
func cycleCount(reg *prometheus.Registry) uint64 {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "comjobs_tracker_poll_cycle_seconds" {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	return 0
}

// callsOver counts the simulator's job calls (list and get) while act runs
// and at least cycles more list cycles end, and how many cycles ended.
func (e *env) callsOver(reg *prometheus.Registry, cycles uint64, act func()) (lists, gets int, ran uint64) {
	e.t.Helper()
	c0 := cycleCount(reg)
	e.sim.ResetCalls()
	act()
	c1 := cycleCount(reg)
	waitFor(e.t, "poll cycles", func() bool { return cycleCount(reg) >= c1+cycles })
	calls := e.sim.CallCounts()
	return calls["GET /jobs"], calls["GET /jobs/{id}"], cycleCount(reg) - c0
}

// TestChecksBatched: in v1 mode the per-job checks ask for many jobs with
// one list call; only the jobs missing from its answer are read on their
// own, and those COM forgot become LOST.
func TestChecksBatched(t *testing.T) {
	e := newEnv(t, "v1", comsim.Options{Timing: comsim.Timing{PendingFor: time.Hour, RunFor: time.Hour, ApprovalFor: time.Hour}})
	reg := prometheus.NewRegistry()
	cfg := fastConfig("checks")
	cfg.PollInterval = 100 * time.Millisecond
	cfg.MaxInterval = 100 * time.Millisecond
	cfg.CheckFactor = 2 // every job is checked every 200 ms: more than a batch a cycle
	e.start(cfg, reg)
	ids := e.bulk(300, "server-inventory", "CHECK")
	waitFor(t, "all jobs observed", func() bool { return gauge(reg, "comjobs_tracker_jobs", "PENDING") >= float64(len(ids)) })

	gone := ids[:7]
	lists, gets, cycles := e.callsOver(reg, 3, func() {
		for _, id := range gone {
			if !e.sim.DeleteJob(id) {
				t.Fatalf("job %s not in the simulator", id)
			}
		}
		waitFor(t, "deleted jobs LOST", func() bool { return gauge(reg, "comjobs_tracker_jobs", schemas.StateLost) >= float64(len(gone)) })
	})
	t.Logf("%d list and %d get calls over %d cycles", lists, gets, cycles)
	// One list and at most one check call a cycle; a job is read on its
	// own only when a check's answer lacks it (at most twice: the index
	// may not know it ended before the next check).
	if lists > 2*int(cycles)+2 || gets < len(gone) || gets > 2*len(gone) {
		t.Errorf("%d list and %d get calls over %d cycles for %d jobs, %d deleted", lists, gets, cycles, len(ids), len(gone))
	}
	byJob := stateEvents(e.events())
	for _, id := range gone {
		if evs := byJob[id]; len(evs) != 2 || evs[1].Data.State != schemas.StateLost {
			t.Errorf("job %s: events %+v, want PENDING then LOST", id, evs)
		}
	}
	if got := gauge(reg, "comjobs_tracker_jobs", schemas.StatePending); got != float64(len(ids)-len(gone)) {
		t.Errorf("%v jobs PENDING, want %d", got, len(ids)-len(gone))
	}
}

// gatedCOM is the simulator's client with a gate the test can close to
// hold the tracker's list calls, and a hook run on each list answer before
// the tracker sees it.
type gatedCOM struct {
	*com.Client
	gate sync.RWMutex // held by the test: list calls wait
	mu   sync.Mutex
	hook func(com.ListOptions, *com.Page)
}

func (g *gatedCOM) List(ctx context.Context, opts com.ListOptions) (*com.Page, error) {
	g.gate.RLock()
	p, err := g.Client.List(ctx, opts)
	g.gate.RUnlock()
	g.mu.Lock()
	hook := g.hook
	g.mu.Unlock()
	if err == nil && hook != nil {
		hook(opts, p)
	}
	return p, err
}

// TestListWalkSurvivesChanges: a job changing while the tracker walks the
// pages of a list (it moves to the end of the list) does not push another
// job past a page boundary unseen.
func TestListWalkSurvivesChanges(t *testing.T) {
	e := newEnv(t, "v1", comsim.Options{Timing: comsim.Timing{PendingFor: time.Hour, RunFor: time.Hour, ApprovalFor: time.Hour}})
	reg := prometheus.NewRegistry()
	cfg := fastConfig("walk")
	cfg.PollInterval = 100 * time.Millisecond
	cfg.ListMargin = 200 * time.Millisecond
	cfg.CheckFactor = 1000 // no per-job checks: only lists find changes
	g := &gatedCOM{Client: e.com}
	e.startWith(cfg, reg, g, func(tr *tracker.Tracker) { tracker.SetPageSize(tr, 10) })
	ids := e.bulk(25, "server-inventory", "WALK")
	waitFor(t, "all jobs observed", func() bool { return gauge(reg, "comjobs_tracker_jobs", "PENDING") >= float64(len(ids)) })

	// Every job starts running while the tracker cannot list; by the time
	// it can, the changes are older than ListMargin (and the second the
	// Date header may be early), so one walk of three pages must find all.
	g.gate.Lock()
	for _, id := range ids {
		if err := e.sim.SetState(id, comsim.StateRunning, ""); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(cfg.ListMargin + time.Second + cfg.PollInterval)
	var once sync.Once
	moved := ""
	g.mu.Lock()
	g.hook = func(opts com.ListOptions, p *com.Page) {
		if !strings.HasPrefix(opts.Filter, "updatedAt") || len(p.Items) < 10 {
			return
		}
		once.Do(func() {
			// A job on the first page ends before the second is asked for.
			moved = p.Items[0].ID
			if err := e.sim.SetState(moved, comsim.StateComplete, comsim.ResultSuccess); err != nil {
				t.Error(err)
			}
		})
	}
	g.mu.Unlock()
	g.gate.Unlock()

	waitFor(t, "every job seen running", func() bool {
		byJob := stateEvents(e.events())
		for _, id := range ids {
			if evs := byJob[id]; len(evs) < 2 || evs[1].Data.State != schemas.StateRunning {
				return false
			}
		}
		return true
	})
	waitFor(t, "the job that moved seen complete", func() bool { return e.lastState(moved) == schemas.StateComplete })
}
