package tracker_test

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/com/comsim"
	"github.com/comjobs/comjobs/schemas"
	"github.com/comjobs/comjobs/tracker"
)

// TestQueriesAndEnd checks GetTracked, ListTracked and EndJob's refusals.
func TestQueriesAndEnd(t *testing.T) {
	e := newEnv(t, "v1", comsim.Options{})
	e.start(fastConfig("a"), nil)
	id := e.submit("server-power-off", com.ResourceServer, comsim.FleetServers()[6])
	waitFor(t, "job ended", func() bool { return e.lastState(id) == schemas.StateComplete })

	rec, err := tracker.GetTracked(e.ctx, e.js, id)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "outbox emptied", func() bool {
		rec, err = tracker.GetTracked(e.ctx, e.js, id)
		return err == nil && len(rec.Outbox) == 0
	})
	if !rec.Terminal || rec.State != schemas.StateComplete || rec.Template.Slug != "server-power-off" ||
		rec.Request.ID == "" || rec.Labels["team"] != "test" || rec.Notify == nil {
		t.Errorf("record %+v", rec)
	}
	if _, err := tracker.GetTracked(e.ctx, e.js, "no-such-job"); !errors.Is(err, tracker.ErrNotTracked) {
		t.Errorf("GetTracked(unknown) = %v, want ErrNotTracked", err)
	}
	all, err := tracker.ListTracked(e.ctx, e.js)
	if err != nil || len(all) != 1 || all[0].JobID != id {
		t.Errorf("ListTracked = %v, %v", all, err)
	}

	for _, tc := range []struct{ name, id, state, reason string }{
		{"bad state", id, "RUNNING", "x"},
		{"no reason", id, "ERROR", " "},
		{"bad id", "a/../b", "ERROR", "x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.sim.Calls("PATCH /jobs/{id}")
			if _, err := tracker.EndJob(e.ctx, e.com, tc.id, tc.state, tc.reason); err == nil {
				t.Error("EndJob accepted it")
			}
			if e.sim.Calls("PATCH /jobs/{id}") != before {
				t.Error("EndJob called COM anyway")
			}
		})
	}
}

// TestRateLimited runs per-job polling against a small real budget: COM's
// 429s pause the tracker, and every job still ends with its events once.
func TestRateLimited(t *testing.T) {
	e := newEnv(t, "v1beta3", comsim.Options{})
	// A client that does not retry, so 429s reach the tracker.
	c, err := com.NewClient(com.Config{
		BaseURL: e.sim.URL(), TokenURL: e.sim.TokenURL(), APIVersion: "v1beta3",
		ClientID: comsim.DefaultClientID, ClientSecret: comsim.DefaultClientSecret,
		MaxRetries: -1, RatePerMinute: 1_000_000, RateBurst: 10_000,
	}, &http.Client{}, e.log, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	e.com = c
	reg := prometheus.NewRegistry()
	e.start(fastConfig("a"), reg)
	var ids []string
	for _, s := range comsim.FleetServers()[:4] {
		ids = append(ids, e.submit("server-power-on", com.ResourceServer, s))
	}
	e.sim.SetFaults(comsim.Faults{RateLimit: 4, RateWindow: 500 * time.Millisecond})
	waitFor(t, "all jobs ended", e.allEnded(ids))
	e.checkAll(ids)
	if got := counter(reg, "comjobs_tracker_com_calls_total", "429"); got == 0 {
		t.Error("no 429 counted")
	}
}

// counter sums a counter's series carrying label value.
func counter(reg *prometheus.Registry, name, label string) float64 {
	var sum float64
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}
