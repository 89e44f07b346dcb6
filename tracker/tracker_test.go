package tracker_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/com/comsim"
	"github.com/comjobs/comjobs/schemas"
	"github.com/comjobs/comjobs/tracker"
)

func fastConfig(instance string) tracker.Config {
	return tracker.Config{
		Instance: instance, PollInterval: 80 * time.Millisecond, ListMargin: time.Second,
		MaxInterval: 200 * time.Millisecond, CheckFactor: 3,
	}
}

// TestScenarios runs every scenario of the simulator through a tracker in
// each API version and checks each job's events against its history.
func TestScenarios(t *testing.T) {
	for _, version := range []string{"v1", "v1beta3", "v1beta2"} {
		t.Run(version, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, version, comsim.Options{})
			e.start(fastConfig("a"), nil)
			fleet := comsim.FleetServers()
			type job struct {
				name, id, want string
			}
			jobs := []*job{
				{name: "success", want: schemas.StateComplete},
				{name: "failure", want: schemas.StateComplete},
				{name: "error", want: schemas.StateError},
				{name: "stalled then ended", want: schemas.StateError},
				{name: "approval", want: schemas.StateComplete},
				{name: "group", want: schemas.StateComplete},
				{name: "lost", want: schemas.StateLost},
			}
			jobs[0].id = e.submit("server-power-off", com.ResourceServer, fleet[0])
			jobs[1].id = e.submit("server-power-off", com.ResourceServer, comsim.ServerFail)
			jobs[2].id = e.submit("server-restart", com.ResourceServer, comsim.ServerError)
			jobs[3].id = e.submit("server-inventory", com.ResourceServer, comsim.ServerStall)
			jobs[4].id = e.submit("server-power-on", com.ResourceServer, comsim.ServerApproval)
			jobs[5].id = e.submit("group-os-installation", com.ResourceGroup, comsim.DefaultGroup)
			// A job COM forgets: scripted to stay RUNNING, then deleted.
			e.sim.Script(fleet[1], []comsim.Step{{State: comsim.StatePending, For: 50 * time.Millisecond}, {State: comsim.StateRunning}})
			jobs[6].id = e.submit("server-power-on", com.ResourceServer, fleet[1])

			waitFor(t, "STALLED published", func() bool { return e.lastState(jobs[3].id) == schemas.StateStalled })
			if _, err := tracker.EndJob(e.ctx, e.com, jobs[3].id, "error", "stuck in test"); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "lost job seen running", func() bool { return e.lastState(jobs[6].id) == schemas.StateRunning })
			lostRec, _ := e.sim.Job(jobs[6].id)
			if !e.sim.DeleteJob(jobs[6].id) {
				t.Fatal("lost job not in simulator")
			}
			for _, j := range jobs {
				waitFor(t, j.name+" ends "+j.want, func() bool { return e.lastState(j.id) == j.want })
			}
			// Children of the group job are tracked too.
			var children []comsim.JobRecord
			for _, r := range e.sim.Jobs() {
				if r.ParentJobID == jobs[5].id {
					children = append(children, r)
				}
			}
			if len(children) == 0 {
				t.Fatal("group job has no children in the simulator")
			}
			for _, c := range children {
				waitFor(t, "child "+c.ID+" ends", func() bool { return schemas.IsTerminal(e.lastState(c.ID)) })
			}
			time.Sleep(3 * 80 * time.Millisecond) // a few more cycles: nothing more may appear
			byJob := stateEvents(e.events())
			for _, j := range jobs {
				rec, ok := e.sim.Job(j.id)
				if j.want == schemas.StateLost {
					rec, ok = lostRec, true
				}
				if !ok {
					t.Fatalf("%s: job %s not in simulator", j.name, j.id)
				}
				t.Run(j.name, func(t *testing.T) { checkJob(t, byJob[j.id], rec, j.want) })
			}
			for _, c := range children {
				rec, _ := e.sim.Job(c.ID)
				checkJob(t, byJob[c.ID], rec, rec.History[len(rec.History)-1].State)
			}
			if got := e.events(); len(got) == 0 || !strings.HasPrefix(got[0].Subject, "comjobs.events.") {
				t.Errorf("unexpected events %v", got)
			}
		})
	}
}

// TestRecordKeys checks that any job id maps to a distinct, valid KV key.
func TestRecordKeys(t *testing.T) {
	for _, tc := range []struct{ name, id, want string }{
		{"uuid", "0b7c6d5e-4f3a-4b2c-9d1e-8f7a6b5c4d3e", "0b7c6d5e-4f3a-4b2c-9d1e-8f7a6b5c4d3e"},
		{"plus and dot", "a+b.c", "a=2Bb=2Ec"},
		{"escape char", "a=b", "a=3Db"},
		{"slash and space", "a/b c", "a=2Fb=20c"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tracker.Key(tc.id); got != tc.want {
				t.Errorf("Key(%q) = %q, want %q", tc.id, got, tc.want)
			}
		})
	}
	_ = fmt.Sprint
}
