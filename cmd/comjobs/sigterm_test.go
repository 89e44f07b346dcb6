package main

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/com/comsim"
	"github.com/comjobs/comjobs/schemas"
)

// TestSIGTERMMidBatchLosesNothing stops the binary with SIGTERM while a
// batch of requests is being submitted to a slow COM, starts another
// process, and checks that every request got exactly one COM job.
func TestSIGTERMMidBatchLosesNothing(t *testing.T) {
	t.Parallel()
	const total = 200
	ctx, cancel := context.WithTimeout(context.Background(), 80*time.Second)
	defer cancel()
	s := newStack(t, ctx, comsim.Options{
		Seed:   11,
		Timing: comsim.Timing{PendingFor: 20 * time.Millisecond, RunFor: 50 * time.Millisecond},
		Faults: comsim.Faults{RateSlow: 0.5, SlowBy: 300 * time.Millisecond},
	})
	events := watchEvents(t, ctx, s.js)
	// Fewer workers than the default, so that the batch outlasts the
	// moment of the SIGTERM.
	first := startProc(t, ctx, s, "first comjobs run", "COMJOBS_WORKERS=8")

	const source = "//e2e.comjobs.test/sigterm"
	templates := []string{"Server Power Off", "server-power-on", "server-restart", "Server Cold Boot"}
	fleet := comsim.FleetServers()
	keys := make([]string, total)
	for i := range total {
		id := fmt.Sprintf("sigterm-%03d", i)
		tmpl := templates[i%len(templates)]
		t2, ok := com.Lookup(tmpl)
		if !ok {
			t.Fatalf("template %q not in the catalog", tmpl)
		}
		body, err := json.Marshal(schemas.Request{Template: tmpl, Resource: &schemas.Resource{Type: com.ResourceServer, ID: fleet[i%len(fleet)]}})
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = schemas.RequestKey(source, id)
		m := nats.NewMsg(schemas.RequestSubject(t2.Slug))
		m.Header["ce-specversion"] = []string{"1.0"}
		m.Header["ce-id"] = []string{id}
		m.Header["ce-source"] = []string{source}
		m.Header["ce-type"] = []string{schemas.TypeRequested}
		m.Header["content-type"] = []string{"application/json"}
		m.Header.Set(jetstream.MsgIDHeader, keys[i])
		m.Data = body
		if _, err := s.js.PublishMsg(ctx, m); err != nil {
			t.Fatalf("publish %s: %v", id, err)
		}
	}
	submittedCount := func() string {
		n := 0
		for _, k := range keys {
			if len(events.submitted[k]) > 0 {
				n++
			}
		}
		if n < total {
			return fmt.Sprintf("%d of %d requests submitted", n, total)
		}
		return ""
	}

	// SIGTERM once about a third is submitted.
	events.waitFor(t, ctx, func() string {
		n := 0
		for _, k := range keys {
			if len(events.submitted[k]) > 0 {
				n++
			}
		}
		if n < total/3 {
			return fmt.Sprintf("only %d of %d submitted before SIGTERM", n, total)
		}
		return ""
	})
	first.terminate(t)
	events.mu.Lock()
	t.Logf("at exit of the first process: %s", submittedCount())
	events.mu.Unlock()

	second := startProc(t, ctx, s, "second comjobs run")
	events.waitFor(t, ctx, submittedCount)
	second.terminate(t)

	events.mu.Lock()
	defer events.mu.Unlock()
	owner := map[string]int{}
	for i, k := range keys {
		jobs := events.submitted[k]
		distinct := map[string]bool{}
		for _, j := range jobs {
			distinct[j] = true
		}
		if len(distinct) != 1 {
			t.Errorf("request %d: submitted events name jobs %v, want exactly one job", i, jobs)
		}
		for j := range distinct {
			if o, ok := owner[j]; ok {
				t.Errorf("job %s submitted for requests %d and %d", j, o, i)
			}
			owner[j] = i
			if rec, ok := s.sim.Job(j); !ok || rec.ParentJobID != "" {
				t.Errorf("request %d: job %s is not a top-level job of the simulator", i, j)
			}
		}
	}
	top := 0
	for _, j := range s.sim.Jobs() {
		if j.ParentJobID == "" {
			top++
		}
	}
	if top != total || len(owner) != total {
		t.Errorf("the simulator holds %d top-level jobs and the events name %d, want %d: a request was lost or submitted twice", top, len(owner), total)
	}
	for _, p := range []*proc{first, second} {
		checkNoSecrets(t, p.name+" stderr", p.stderr.String(), s.secrets())
	}
}
