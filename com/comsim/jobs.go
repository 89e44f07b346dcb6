package comsim

import (
	"container/heap"
	"crypto/rand"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/comjobs/comjobs/com"
)

// Job states and result codes, as COM spells them.
const (
	StatePending         = "PENDING"
	StateApprovalPending = "APPROVAL_PENDING"
	StateRunning         = "RUNNING"
	StateStalled         = "STALLED"
	StateError           = "ERROR"
	StateComplete        = "COMPLETE"
	ResultSuccess        = "SUCCESS"
	ResultFailure        = "FAILURE"
)

// Step is one leg of a job's path: the job enters State (with ResultCode
// and Status; an empty Status gets COM's usual text) and stays For before
// the next step. The last step holds for ever unless it is terminal
// (COMPLETE or ERROR). Entering RUNNING or STALLED waits while another job
// holds the same resource (the job stays PENDING, "queued").
type Step struct {
	State      string
	ResultCode string
	Status     string
	For        time.Duration
}

// StateChange is one change of a job, as recorded by the simulator. Every
// change bumps Generation by one; At is the job's new updatedAt.
type StateChange struct {
	State      string
	ResultCode string // "" for null
	Status     string
	Generation int64
	At         time.Time
}

// JobRecord is what the simulator knows of one job. Params must not be
// modified.
type JobRecord struct {
	ID           string
	TemplateID   string
	Name         string
	ResourceType string // v1 form
	ResourceID   string
	ParentJobID  string // "" for none
	Params       map[string]any
	CreatedAt    time.Time
	UpdatedAt    time.Time
	State        string
	ResultCode   string // "" for null
	Status       string
	Generation   int64
	// History holds every change, the creation first. Nil in the records
	// the HTTP layer renders.
	History []StateChange
}

// Terminal reports whether the job has ended (COMPLETE or ERROR).
func (r JobRecord) Terminal() bool { return terminal(r.State) }

func terminal(state string) bool { return state == StateComplete || state == StateError }

// occupies reports whether a job in state holds its resource, so that other
// jobs on it wait.
func occupies(state string) bool { return state == StateRunning || state == StateStalled }

func defaultStatus(state, result string) string {
	switch state {
	case StatePending:
		return "Pending"
	case StateApprovalPending:
		return "Waiting for approval"
	case StateRunning:
		return "Running"
	case StateStalled:
		return "Stalled: not making progress"
	case StateError:
		return "Error"
	case StateComplete:
		if result == ResultFailure {
			return "Failed"
		}
		return "Complete"
	}
	return state
}

// statusQueued is the status of a PENDING job waiting for its resource.
const statusQueued = "Queued behind other running jobs"

// job is the simulator's state of one job. Guarded by store.mu.
type job struct {
	id, templateID, name    string
	resType, resID          string
	parentID                string
	params                  map[string]any
	createdAt, updatedAt    time.Time
	state, resultCode       string
	status                  string
	generation              int64
	history                 []StateChange
	seq                     int64 // creation order
	plan                    []Step
	step                    int
	timerSeq                uint64 // a timer is live only if it carries this
	waiting                 bool   // queued for its resource
	deleted                 bool
	parent                  *job
	devices                 []string // group jobs: one child per device
	spawned                 bool
	openChildren            int
	childFailed, endCounted bool
}

// timer is a scheduled step of a job.
type timer struct {
	at  time.Time
	seq uint64
	ord int64 // tie-break: scheduling order
	j   *job
}

type timerHeap []timer

func (h timerHeap) Len() int { return len(h) }
func (h timerHeap) Less(a, b int) bool {
	if !h[a].at.Equal(h[b].at) {
		return h[a].at.Before(h[b].at)
	}
	return h[a].ord < h[b].ord
}
func (h timerHeap) Swap(a, b int) { h[a], h[b] = h[b], h[a] }
func (h *timerHeap) Push(x any)   { *h = append(*h, x.(timer)) }
func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	*h = old[:len(old)-1]
	return t
}

// resState is who holds a resource and who waits for it.
type resState struct {
	active  *job
	waiting []*job
}

// logEntry records that job j reached generation gen at time at; the log is
// in time order, so a list with "updatedAt gt X" starts by binary search.
type logEntry struct {
	at  time.Time
	j   *job
	gen int64
}

// store holds every job and moves them along their paths. Jobs move lazily:
// every call first applies the steps that are due at its "now", each
// stamped with the time it was due (kept strictly increasing), so that
// state is the same whether or not anyone looked in between.
type store struct {
	mu       sync.Mutex
	timing   Timing
	inv      *Inventory
	byID     map[string]*job
	order    []*job // creation order, deleted ones skipped (compacted now and then)
	nDeleted int
	res      map[string]*resState
	timers   timerHeap
	nTimers  int64
	log      []logEntry
	last     time.Time // last stamp given
	seq      int64
	scripts  map[string][]Step // by resource id or template id
	// onChange is called (under mu, must not block) when a job's state
	// changes, with the job as it is now.
	onChange func(JobRecord)
}

func newStore(t Timing, inv *Inventory) *store {
	return &store{
		timing:  t,
		inv:     inv,
		byID:    make(map[string]*job),
		res:     make(map[string]*resState),
		scripts: make(map[string][]Step),
	}
}

// createSpec is a validated request to create a job.
type createSpec struct {
	templ   *com.Template
	resType string
	resID   string
	params  map[string]any
	devices []string // group jobs: the children to run
}

func newID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// stamp turns a due time into a job timestamp: microsecond precision (as
// COM's bodies carry) and strictly after every earlier stamp, so that
// "updatedAt gt <last seen>" never misses a change.
func (st *store) stamp(at time.Time) time.Time {
	t := at.UTC().Truncate(time.Microsecond)
	if !t.After(st.last) {
		t = st.last.Add(time.Microsecond)
	}
	st.last = t
	return t
}

// create adds a job at now and returns it as recorded.
func (st *store) create(spec createSpec, now time.Time) JobRecord {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.advance(now)
	j := st.createLocked(spec, nil, now)
	return snapshot(j, false)
}

func (st *store) createLocked(spec createSpec, parent *job, at time.Time) *job {
	st.seq++
	j := &job{
		id:         newID(),
		templateID: spec.templ.ID,
		name:       spec.templ.CamelName,
		resType:    spec.resType,
		resID:      spec.resID,
		params:     spec.params,
		seq:        st.seq,
		parent:     parent,
		devices:    spec.devices,
	}
	if parent != nil {
		j.parentID = parent.id
	}
	j.plan = st.planFor(j)
	first := j.plan[0]
	stamp := st.stamp(at)
	j.createdAt, j.updatedAt, j.generation = stamp, stamp, 1
	j.state, j.resultCode = first.State, first.ResultCode
	j.status = first.Status
	if j.status == "" {
		j.status = defaultStatus(first.State, first.ResultCode)
	}
	j.history = []StateChange{{State: j.state, ResultCode: j.resultCode, Status: j.status, Generation: 1, At: stamp}}
	st.byID[j.id] = j
	st.order = append(st.order, j)
	st.log = append(st.log, logEntry{at: stamp, j: j, gen: 1})
	if st.onChange != nil {
		st.onChange(snapshot(j, false))
	}
	st.afterEnter(j, at)
	return j
}

// planFor picks a job's path: a script for its resource, then one for its
// template, then the scenario its resource id names, then the usual path.
func (st *store) planFor(j *job) []Step {
	if s, ok := st.scripts[j.resID]; ok {
		j.devices = nil
		return s
	}
	if s, ok := st.scripts[j.templateID]; ok && j.parent == nil {
		j.devices = nil
		return s
	}
	t := st.timing
	pending := Step{State: StatePending, For: t.PendingFor}
	running := Step{State: StateRunning, For: t.RunFor}
	if len(j.devices) > 0 {
		// The group job runs while its children do; it ends when they all have.
		return []Step{pending, {State: StateRunning}}
	}
	switch scenarioOf(j.resID) {
	case "STALL":
		return []Step{pending, running, {State: StateStalled}}
	case "FAIL":
		return []Step{pending, running, {State: StateComplete, ResultCode: ResultFailure}}
	case "ERROR":
		return []Step{pending, running, {State: StateError, ResultCode: ResultFailure}}
	case "APPROVAL":
		return []Step{{State: StateApprovalPending, For: t.ApprovalFor}, running, {State: StateComplete, ResultCode: ResultSuccess}}
	}
	return []Step{pending, running, {State: StateComplete, ResultCode: ResultSuccess}}
}

func (st *store) resOf(j *job) *resState {
	k := j.resType + "\x00" + j.resID
	r := st.res[k]
	if r == nil {
		r = &resState{}
		st.res[k] = r
	}
	return r
}

func (st *store) schedule(j *job, at time.Time) {
	j.timerSeq++
	st.nTimers++
	heap.Push(&st.timers, timer{at: at, seq: j.timerSeq, ord: st.nTimers, j: j})
}

// advance applies every step due at or before now, in time order.
func (st *store) advance(now time.Time) {
	for len(st.timers) > 0 && !st.timers[0].at.After(now) {
		e := heap.Pop(&st.timers).(timer)
		if e.j.deleted || e.j.timerSeq != e.seq {
			continue
		}
		st.next(e.j, e.at)
	}
	if len(st.log) > 4*len(st.byID)+4096 {
		live := st.log[:0:0]
		for _, e := range st.log {
			if !e.j.deleted && e.j.generation == e.gen {
				live = append(live, e)
			}
		}
		st.log = live
	}
}

// next moves j to its next step at time at, or queues it behind the job
// holding its resource.
func (st *store) next(j *job, at time.Time) {
	idx := j.step + 1
	if idx >= len(j.plan) {
		return
	}
	if occupies(j.plan[idx].State) && !occupies(j.state) {
		r := st.resOf(j)
		if r.active != nil && r.active != j {
			if !j.waiting {
				j.waiting = true
				r.waiting = append(r.waiting, j)
				st.change(j, j.state, j.resultCode, statusQueued, at)
			}
			return
		}
	}
	j.step = idx
	s := j.plan[idx]
	status := s.Status
	if status == "" {
		status = defaultStatus(s.State, s.ResultCode)
	}
	j.waiting = false
	st.change(j, s.State, s.ResultCode, status, at)
	st.afterEnter(j, at)
}

// afterEnter does what follows entering the current step: hold or release
// the resource, start a group's children, schedule the next step, tell the
// parent of an end.
func (st *store) afterEnter(j *job, at time.Time) {
	st.occupancy(j, at)
	if len(j.devices) > 0 && j.state == StateRunning && !j.spawned {
		j.spawned = true
		for _, d := range j.devices {
			j.openChildren++
			st.createLocked(createSpec{
				templ:   &com.Template{ID: j.templateID, CamelName: j.name},
				resType: com.ResourceServer,
				resID:   d,
				params:  j.params,
			}, j, at)
		}
	}
	if terminal(j.state) {
		st.ended(j, at)
		return
	}
	if j.step < len(j.plan)-1 {
		st.schedule(j, at.Add(j.plan[j.step].For))
	}
}

func (st *store) occupancy(j *job, at time.Time) {
	r := st.resOf(j)
	switch {
	case occupies(j.state):
		r.active = j
	case r.active == j:
		r.active = nil
		st.release(r, at)
	}
}

// release starts the first job queued for a freed resource.
func (st *store) release(r *resState, at time.Time) {
	for len(r.waiting) > 0 && r.active == nil {
		w := r.waiting[0]
		r.waiting = r.waiting[1:]
		if w.deleted || !w.waiting {
			continue
		}
		w.waiting = false
		st.next(w, at)
	}
}

// ended handles a job reaching a terminal state: no more timers, and its
// parent learns of it.
func (st *store) ended(j *job, at time.Time) {
	j.timerSeq++
	st.childDone(j, j.state == StateError || j.resultCode == ResultFailure, at)
}

// childDone counts a child of a group job as done (once); the parent ends
// when its last child has, COMPLETE/FAILURE if any failed.
func (st *store) childDone(j *job, failed bool, at time.Time) {
	p := j.parent
	if p == nil || j.endCounted {
		return
	}
	j.endCounted = true
	p.openChildren--
	if failed {
		p.childFailed = true
	}
	if p.openChildren == 0 && !p.deleted && !terminal(p.state) {
		rc := ResultSuccess
		if p.childFailed {
			rc = ResultFailure
		}
		st.force(p, StateComplete, rc, at)
	}
}

// force puts j in state now, dropping the rest of its path.
func (st *store) force(j *job, state, result string, at time.Time) {
	j.plan = []Step{{State: state, ResultCode: result}}
	j.step = 0
	j.waiting = false
	j.timerSeq++
	st.change(j, state, result, defaultStatus(state, result), at)
	st.occupancy(j, at)
	if terminal(state) {
		st.ended(j, at)
	}
}

// change records a change of j; nothing happens if nothing changes.
func (st *store) change(j *job, state, result, status string, at time.Time) {
	if j.state == state && j.resultCode == result && j.status == status {
		return
	}
	prev := j.state
	stamp := st.stamp(at)
	j.generation++
	j.updatedAt = stamp
	j.state, j.resultCode, j.status = state, result, status
	j.history = append(j.history, StateChange{State: state, ResultCode: result, Status: status, Generation: j.generation, At: stamp})
	st.log = append(st.log, logEntry{at: stamp, j: j, gen: j.generation})
	if prev != state && st.onChange != nil {
		st.onChange(snapshot(j, false))
	}
}

func snapshot(j *job, history bool) JobRecord {
	r := JobRecord{
		ID: j.id, TemplateID: j.templateID, Name: j.name,
		ResourceType: j.resType, ResourceID: j.resID, ParentJobID: j.parentID,
		Params: j.params, CreatedAt: j.createdAt, UpdatedAt: j.updatedAt,
		State: j.state, ResultCode: j.resultCode, Status: j.status, Generation: j.generation,
	}
	if history {
		r.Params = maps.Clone(j.params)
		r.History = slices.Clone(j.history)
	}
	return r
}

func (st *store) get(id string, now time.Time) (JobRecord, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.advance(now)
	j, ok := st.byID[id]
	if !ok {
		return JobRecord{}, false
	}
	return snapshot(j, false), true
}

// errTerminal is PATCH on a job that has already ended (409).
var errTerminal = fmt.Errorf("job already ended")

// end ends a job by hand (PATCH); refuses a job that has ended.
func (st *store) end(id, state, result string, now time.Time) (JobRecord, bool, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.advance(now)
	j, ok := st.byID[id]
	if !ok {
		return JobRecord{}, false, nil
	}
	if terminal(j.state) {
		return snapshot(j, false), true, errTerminal
	}
	st.force(j, state, result, now)
	return snapshot(j, false), true, nil
}

// sortKey is one key of a list's sort.
type sortKey struct {
	field string
	desc  bool
}

// listQuery is a validated list request.
type listQuery struct {
	filter *compiledFilter
	sort   []sortKey
	offset int
	limit  int
	lag    time.Duration
}

// list answers a list query at now: the total matching and one page.
func (st *store) list(q listQuery, now time.Time) (int, []JobRecord) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.advance(now)
	cutoff := now.Add(-q.lag)
	visible := func(j *job) bool {
		return !j.deleted && (q.lag <= 0 || !j.createdAt.After(cutoff)) && q.filter.match(j)
	}
	var matched []*job
	if b := q.filter.updatedAfter; !b.IsZero() {
		i := sort.Search(len(st.log), func(i int) bool {
			if q.filter.inclusive {
				return !st.log[i].at.Before(b)
			}
			return st.log[i].at.After(b)
		})
		for _, e := range st.log[i:] {
			if e.j.generation == e.gen && visible(e.j) {
				matched = append(matched, e.j)
			}
		}
		slices.SortFunc(matched, func(a, b *job) int { return int(a.seq - b.seq) })
	} else {
		for _, j := range st.order {
			if visible(j) {
				matched = append(matched, j)
			}
		}
	}
	if len(q.sort) > 0 {
		sort.SliceStable(matched, func(a, b int) bool {
			for _, k := range q.sort {
				c, _ := compare(fieldOf(matched[a], k.field), fieldOf(matched[b], k.field))
				if c == 0 {
					continue
				}
				return (c < 0) != k.desc
			}
			return false
		})
	}
	total := len(matched)
	lo := min(q.offset, total)
	hi := min(lo+q.limit, total)
	out := make([]JobRecord, 0, hi-lo)
	for _, j := range matched[lo:hi] {
		out = append(out, snapshot(j, false))
	}
	return total, out
}

// Jobs returns every job the simulator holds, in creation order, with
// their histories. Steps due by now are applied first.
func (s *Server) Jobs() []JobRecord {
	st := s.store
	st.mu.Lock()
	defer st.mu.Unlock()
	st.advance(s.now())
	out := make([]JobRecord, 0, len(st.byID))
	for _, j := range st.order {
		if !j.deleted {
			out = append(out, snapshot(j, true))
		}
	}
	return out
}

// Job returns one job with its history.
func (s *Server) Job(id string) (JobRecord, bool) {
	st := s.store
	st.mu.Lock()
	defer st.mu.Unlock()
	st.advance(s.now())
	j, ok := st.byID[id]
	if !ok {
		return JobRecord{}, false
	}
	return snapshot(j, true), true
}

// Script sets the path of every job created from now on whose resource id
// (or, failing that, template id) is key; for a group job, a script
// replaces its children. Steps must not be empty. Script(key, nil) removes
// the script.
func (s *Server) Script(key string, steps []Step) {
	st := s.store
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(steps) == 0 {
		delete(st.scripts, key)
		return
	}
	st.scripts[key] = slices.Clone(steps)
}

// ScriptJob replaces the rest of an existing job's path: it enters
// steps[0] now and goes on from there.
func (s *Server) ScriptJob(id string, steps []Step) error {
	if len(steps) == 0 {
		return fmt.Errorf("script job %s: no steps", id)
	}
	st := s.store
	st.mu.Lock()
	defer st.mu.Unlock()
	now := s.now()
	st.advance(now)
	j, ok := st.byID[id]
	if !ok {
		return fmt.Errorf("script job %s: no such job", id)
	}
	j.plan = append([]Step{{State: j.state, ResultCode: j.resultCode, Status: j.status}}, steps...)
	j.step = 0
	j.timerSeq++
	j.waiting = false
	st.next(j, now)
	return nil
}

// SetState drives a job by hand: it enters state with result (""
// for null) now, and stays there (the rest of its path is dropped).
// Unlike PATCH it may change an ended job.
func (s *Server) SetState(id, state, result string) error {
	st := s.store
	st.mu.Lock()
	defer st.mu.Unlock()
	now := s.now()
	st.advance(now)
	j, ok := st.byID[id]
	if !ok {
		return fmt.Errorf("set state of job %s: no such job", id)
	}
	st.force(j, state, result, now)
	return nil
}

// DeleteJob forgets a job, as if COM had lost it: GET answers 404 and lists
// leave it out, and the job's resource is free. A deleted child counts as a
// failed one for its group job. It reports whether the job existed.
func (s *Server) DeleteJob(id string) bool {
	st := s.store
	st.mu.Lock()
	defer st.mu.Unlock()
	now := s.now()
	st.advance(now)
	j, ok := st.byID[id]
	if !ok {
		return false
	}
	j.deleted = true
	j.timerSeq++
	delete(st.byID, id)
	st.nDeleted++
	if r := st.resOf(j); r.active == j {
		r.active = nil
		st.release(r, now)
	}
	st.childDone(j, true, now)
	if st.nDeleted > len(st.order)/2 {
		st.order = slices.DeleteFunc(st.order, func(j *job) bool { return j.deleted })
		st.nDeleted = 0
	}
	return true
}
