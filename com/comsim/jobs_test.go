package comsim

import (
	"net/http"
	"sync"
	"testing"
	"time"
)

// fakeClock is a hand-driven clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

var slow = Timing{PendingFor: time.Second, RunFor: 10 * time.Second, ApprovalFor: 5 * time.Second}

func states(r JobRecord) []string {
	var out []string
	for _, h := range r.History {
		if len(out) == 0 || out[len(out)-1] != h.State {
			out = append(out, h.State)
		}
	}
	return out
}

func mustJob(t *testing.T, sim *Server, id string) JobRecord {
	t.Helper()
	r, ok := sim.Job(id)
	if !ok {
		t.Fatalf("job %s missing", id)
	}
	return r
}

// TestQueueingPerResource: a job stays PENDING ("queued behind other
// running jobs") while another job runs on the same resource, and starts
// when that one ends; jobs on other resources do not wait.
func TestQueueingPerResource(t *testing.T) {
	clk := newFakeClock()
	sim, c := newSim(t, Options{Timing: slow, Clock: clk.Now})
	a := c.create(tPowerOff, server, DefaultServer1, nil)["id"].(string)
	b := c.create(tPowerOff, server, DefaultServer1, nil)["id"].(string)
	other := c.create(tPowerOff, server, DefaultServer2, nil)["id"].(string)

	clk.Advance(slow.PendingFor)
	if s := mustJob(t, sim, a).State; s != StateRunning {
		t.Fatalf("first job %s, want RUNNING", s)
	}
	rb := mustJob(t, sim, b)
	if rb.State != StatePending || rb.Status != statusQueued {
		t.Fatalf("second job %s %q, want PENDING %q", rb.State, rb.Status, statusQueued)
	}
	if s := mustJob(t, sim, other).State; s != StateRunning {
		t.Fatalf("job on another server %s, want RUNNING", s)
	}

	clk.Advance(slow.RunFor)
	ra, rb := mustJob(t, sim, a), mustJob(t, sim, b)
	if ra.State != StateComplete || rb.State != StateRunning {
		t.Fatalf("after first ends: first %s, second %s", ra.State, rb.State)
	}
	if !rb.History[len(rb.History)-1].At.After(ra.UpdatedAt) {
		t.Errorf("second started at %v, not after first ended at %v", rb.UpdatedAt, ra.UpdatedAt)
	}
	clk.Advance(slow.RunFor)
	if s := mustJob(t, sim, b).State; s != StateComplete {
		t.Fatalf("second job %s, want COMPLETE", s)
	}
	// A stalled job holds its resource until ended by hand.
	st := c.create(tPowerOff, server, ServerStall, nil)["id"].(string)
	behind := c.create(tPowerOff, server, ServerStall, nil)["id"].(string)
	clk.Advance(slow.PendingFor + slow.RunFor + time.Hour)
	if s := mustJob(t, sim, st).State; s != StateStalled {
		t.Fatalf("stall job %s", s)
	}
	if s := mustJob(t, sim, behind).State; s != StatePending {
		t.Fatalf("job behind a stalled one %s, want PENDING", s)
	}
	if code, _, _ := c.do("PATCH", "/compute-ops-mgmt/v1/jobs/"+st, map[string]any{"state": "ERROR"}); code != http.StatusOK {
		t.Fatalf("patch: %d", code)
	}
	if s := mustJob(t, sim, behind).State; s != StateRunning {
		t.Fatalf("job behind an ended stalled one %s, want RUNNING", s)
	}
}

// TestGenerationOnlyGrows: every change bumps generation by one and moves
// updatedAt forward, the same in every API version.
func TestGenerationOnlyGrows(t *testing.T) {
	clk := newFakeClock()
	sim, c := newSim(t, Options{Timing: slow, Clock: clk.Now})
	id := c.create(tPowerOff, server, DefaultServer1, nil)["id"].(string)
	c.create(tPowerOff, server, DefaultServer1, nil) // queued behind: status change
	lastGen := 0.0
	lastUpdated := ""
	for range 6 {
		for _, v := range []string{"v1", "v1beta3", "v1beta2"} {
			_, _, body := c.do("GET", "/compute-ops-mgmt/"+v+"/jobs/"+id, nil)
			g := body["generation"].(float64)
			u := body["updatedAt"].(string)
			if g < lastGen || (g == lastGen && u != lastUpdated) || (g > lastGen && u <= lastUpdated) {
				t.Fatalf("%s: generation %v updatedAt %s after %v %s", v, g, u, lastGen, lastUpdated)
			}
			lastGen, lastUpdated = g, u
		}
		clk.Advance(slow.RunFor / 2)
	}
	if lastGen != 3 {
		t.Errorf("final generation %v, want 3 (PENDING, RUNNING, COMPLETE)", lastGen)
	}
	for _, r := range sim.Jobs() {
		for i, h := range r.History {
			if h.Generation != int64(i+1) {
				t.Errorf("job %s change %d has generation %d", r.ID, i, h.Generation)
			}
			if i > 0 && !h.At.After(r.History[i-1].At) {
				t.Errorf("job %s change %d at %v, not after %v", r.ID, i, h.At, r.History[i-1].At)
			}
		}
	}
}

// TestScenarios: resource ids naming STALL, FAIL, ERROR or APPROVAL drive
// their jobs' paths.
func TestScenarios(t *testing.T) {
	clk := newFakeClock()
	sim, c := newSim(t, Options{Timing: slow, Clock: clk.Now})
	cases := []struct {
		name, server string
		path         []string
		result       string
	}{
		{"ordinary", DefaultServer1, []string{"PENDING", "RUNNING", "COMPLETE"}, "SUCCESS"},
		{"stall", ServerStall, []string{"PENDING", "RUNNING", "STALLED"}, ""},
		{"fail", ServerFail, []string{"PENDING", "RUNNING", "COMPLETE"}, "FAILURE"},
		{"error", ServerError, []string{"PENDING", "RUNNING", "ERROR"}, "FAILURE"},
		{"approval", ServerApproval, []string{"APPROVAL_PENDING", "RUNNING", "COMPLETE"}, "SUCCESS"},
	}
	ids := map[string]string{}
	for _, tc := range cases {
		ids[tc.name] = c.create(tPowerOff, server, tc.server, nil)["id"].(string)
	}
	clk.Advance(24 * time.Hour)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := mustJob(t, sim, ids[tc.name])
			if got := states(r); !equal(got, tc.path) {
				t.Errorf("path %v, want %v", got, tc.path)
			}
			if r.ResultCode != tc.result {
				t.Errorf("resultCode %q, want %q", r.ResultCode, tc.result)
			}
		})
	}
	// STALLED stays until PATCHed; PATCH ends it and a second PATCH is refused.
	id := ids["stall"]
	code, _, body := c.do("PATCH", "/compute-ops-mgmt/v1/jobs/"+id, map[string]any{"state": "COMPLETE"})
	if code != http.StatusOK || body["state"] != "COMPLETE" || body["resultCode"] != "SUCCESS" {
		t.Fatalf("patch stalled: %d %v", code, body)
	}
	if code, _, _ := c.do("PATCH", "/compute-ops-mgmt/v1/jobs/"+id, map[string]any{"state": "ERROR"}); code != http.StatusConflict {
		t.Fatalf("patch ended job: %d, want 409", code)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestGroupChildren: a group job runs a child job per device, linked by
// parentJobId, and ends after them, FAILURE if any child failed.
func TestGroupChildren(t *testing.T) {
	clk := newFakeClock()
	sim, c := newSim(t, Options{Timing: slow, Clock: clk.Now})
	cases := []struct {
		name, group, template string
		params                map[string]any
		children              []string
		result                string
	}{
		{"members", DefaultGroup, tGroupFirmware, nil, []string{DefaultServer1, DefaultServer2}, "SUCCESS"},
		{"devices param", DefaultGroup, tGroupCompliance, map[string]any{"devices": []string{DefaultServer2}}, []string{DefaultServer2}, "SUCCESS"},
		{"one child fails", MixedGroup, tGroupSetting, map[string]any{"redfish_subsystem": "BIOS"}, []string{FleetServers()[0], ServerFail}, "FAILURE"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := c.on(t)
			parent := c.create(tc.template, group, tc.group, tc.params)["id"].(string)
			clk.Advance(24 * time.Hour)
			p := mustJob(t, sim, parent)
			if p.State != StateComplete || p.ResultCode != tc.result {
				t.Fatalf("parent %s/%s, want COMPLETE/%s", p.State, p.ResultCode, tc.result)
			}
			code, _, list := c.do("GET", "/compute-ops-mgmt/v1/jobs?filter="+qe("parentJobId eq '"+parent+"'")+"&sort="+qe("resource/id asc"), nil)
			if code != http.StatusOK {
				t.Fatalf("list children: %d", code)
			}
			items := list["items"].([]any)
			var got []string
			for _, it := range items {
				m := it.(map[string]any)
				got = append(got, m["resource"].(map[string]any)["id"].(string))
				ch := mustJob(t, sim, m["id"].(string))
				if ch.ResourceType != server || ch.ParentJobID != parent || !ch.UpdatedAt.Before(p.UpdatedAt) {
					t.Errorf("child %+v of parent ended %v", ch, p.UpdatedAt)
				}
			}
			want := append([]string(nil), tc.children...)
			sortStrings(want)
			if !equal(got, want) {
				t.Errorf("children on %v, want %v", got, want)
			}
		})
	}
}

// TestDeletedChildFailsParent: a child COM lost counts as failed.
func TestDeletedChildFailsParent(t *testing.T) {
	clk := newFakeClock()
	sim, c := newSim(t, Options{Timing: slow, Clock: clk.Now})
	parent := c.create(tGroupFirmware, group, DefaultGroup, nil)["id"].(string)
	clk.Advance(slow.PendingFor)
	var children []string
	for _, j := range sim.Jobs() {
		if j.ParentJobID == parent {
			children = append(children, j.ID)
		}
	}
	if len(children) != 2 {
		t.Fatalf("%d children, want 2", len(children))
	}
	sim.DeleteJob(children[0])
	clk.Advance(24 * time.Hour)
	if p := mustJob(t, sim, parent); p.State != StateComplete || p.ResultCode != ResultFailure {
		t.Fatalf("parent %s/%s, want COMPLETE/FAILURE", p.State, p.ResultCode)
	}
}

// TestScript: a scripted path replaces the usual one; SetState and
// DeleteJob drive jobs by hand.
func TestScript(t *testing.T) {
	clk := newFakeClock()
	sim, c := newSim(t, Options{Timing: slow, Clock: clk.Now})
	sim.Script(DefaultServer2, []Step{
		{State: StatePending, For: time.Second},
		{State: StateRunning, Status: "Flashing", For: time.Minute},
		{State: "HALTED", For: time.Minute},
		{State: StateComplete, ResultCode: ResultFailure},
	})
	id := c.create(tPowerOff, server, DefaultServer2, nil)["id"].(string)
	clk.Advance(time.Hour)
	r := mustJob(t, sim, id)
	if got := states(r); !equal(got, []string{"PENDING", "RUNNING", "HALTED", "COMPLETE"}) || r.History[1].Status != "Flashing" {
		t.Fatalf("scripted path %v %+v", got, r.History)
	}
	id2 := c.create(tPowerOff, server, DefaultServer1, nil)["id"].(string)
	if err := sim.ScriptJob(id2, []Step{{State: StateRunning, For: time.Second}, {State: StateError}}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Minute)
	if s := mustJob(t, sim, id2).State; s != StateError {
		t.Fatalf("ScriptJob: %s", s)
	}
	if err := sim.SetState(id2, StateRunning, ""); err != nil {
		t.Fatal(err)
	}
	if s := mustJob(t, sim, id2).State; s != StateRunning {
		t.Fatalf("SetState: %s", s)
	}
	if !sim.DeleteJob(id2) {
		t.Fatal("DeleteJob: not found")
	}
	if code, _, body := c.do("GET", "/compute-ops-mgmt/v1/jobs/"+id2, nil); code != http.StatusNotFound || body["errorCode"] == nil {
		t.Fatalf("deleted job: %d %v", code, body)
	}
	if err := sim.SetState("nope", StateError, ""); err == nil {
		t.Fatal("SetState of unknown job: no error")
	}
}
