package com_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/com/comsim"
)

// These tests run the client against the COM simulator over real HTTP.

func newSim(t *testing.T, opts comsim.Options) *comsim.Server {
	t.Helper()
	if opts.Timing == (comsim.Timing{}) {
		opts.Timing = comsim.Timing{PendingFor: time.Millisecond, RunFor: 5 * time.Millisecond, ApprovalFor: time.Millisecond}
	}
	sim := comsim.NewServer(opts)
	t.Cleanup(sim.Close)
	return sim
}

func simClient(t *testing.T, sim *comsim.Server, edit func(*com.Config)) (*com.Client, *logBuffer) {
	t.Helper()
	cfg := com.Config{
		BaseURL: sim.URL(), TokenURL: sim.TokenURL(),
		ClientID: comsim.DefaultClientID, ClientSecret: comsim.DefaultClientSecret,
		Timeout: 2 * time.Second, RetryBaseDelay: time.Millisecond, RatePerMinute: -1,
	}
	if edit != nil {
		edit(&cfg)
	}
	logs := &logBuffer{}
	c, err := com.NewClient(cfg, &http.Client{}, slogTo(logs), nil)
	if err != nil {
		t.Fatal(err)
	}
	return c, logs
}

// waitFor polls Get until the job is terminal, or fails the test at the deadline.
func waitFor(t *testing.T, c *com.Client, id string, done func(*com.Job) bool) *com.Job {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		j, err := c.Get(context.Background(), id)
		if err != nil {
			t.Fatalf("get %s: %v", id, err)
		}
		if done(j) {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s still %s", id, j.State)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func terminal(j *com.Job) bool { return j.State == "COMPLETE" || j.State == "ERROR" }

func TestSimEachAPIVersion(t *testing.T) {
	for _, version := range []string{"v1", "v1beta3", "v1beta2"} {
		t.Run(version, func(t *testing.T) {
			sim := newSim(t, comsim.Options{})
			c, _ := simClient(t, sim, func(cfg *com.Config) { cfg.APIVersion = version })
			ctx := context.Background()
			tpl, _ := com.Lookup("Group Firmware Compliance")
			j, err := c.Create(ctx, com.CreateRequest{TemplateID: tpl.ID, ResourceType: com.ResourceGroup, ResourceID: comsim.DefaultGroup,
				Params: map[string]any{"devices": []string{comsim.DefaultServer1}}})
			if err != nil {
				t.Fatal(err)
			}
			if j.TemplateID != tpl.ID || j.ResourceType != com.ResourceGroup || j.ResourceID != comsim.DefaultGroup || j.Generation < 1 {
				t.Errorf("created %+v", j)
			}
			j = waitFor(t, c, j.ID, terminal)
			if j.State != "COMPLETE" {
				t.Errorf("state %s", j.State)
			}
			// v1beta2 has no resultCode: nothing is derived.
			if version == "v1beta2" {
				if j.ResultCode != nil {
					t.Errorf("v1beta2 resultCode %q", *j.ResultCode)
				}
			} else if j.ResultCode == nil || *j.ResultCode != "SUCCESS" {
				t.Errorf("resultCode %v", j.ResultCode)
			}
			if !strings.Contains(j.URI, "/"+version+"/jobs/") {
				t.Errorf("URI %q", j.URI)
			}
			byVersion := sim.CallCountsByVersion()
			create := "v1"
			if version != "v1" {
				create = "v1beta3"
			}
			if byVersion[create+" POST /jobs"] != 1 || byVersion[version+" GET /jobs/{id}"] == 0 {
				t.Errorf("calls %v", byVersion)
			}
		})
	}
}

func TestSimEndStalledJob(t *testing.T) {
	sim := newSim(t, comsim.Options{})
	c, _ := simClient(t, sim, func(cfg *com.Config) { cfg.APIVersion = "v1beta3" })
	tpl, _ := com.Lookup("server-restart")
	j, err := c.Create(context.Background(), com.CreateRequest{TemplateID: tpl.ID, ResourceType: com.ResourceServer, ResourceID: comsim.ServerStall})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, c, j.ID, func(j *com.Job) bool { return j.State == "STALLED" })
	ended, err := c.End(context.Background(), j.ID, "ERROR")
	if err != nil || ended.State != "ERROR" {
		t.Fatalf("End = %+v, %v", ended, err)
	}
	if sim.Calls("PATCH /jobs/{id}") != 1 {
		t.Errorf("calls %v", sim.CallCounts())
	}
}

func TestSimRejections(t *testing.T) {
	sim := newSim(t, comsim.Options{})
	c, _ := simClient(t, sim, nil)
	ctx := context.Background()
	fw, _ := com.Lookup("Server Firmware Update")
	tests := []struct {
		name string
		req  com.CreateRequest
	}{
		{"unknown server", com.CreateRequest{TemplateID: fw.ID, ResourceType: com.ResourceServer, ResourceID: "000000-000+NOSUCHSERVER", Params: map[string]any{"bundle_id": "b"}}},
		{"missing bundle_id", com.CreateRequest{TemplateID: fw.ID, ResourceType: com.ResourceServer, ResourceID: comsim.DefaultServer1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.Create(ctx, tt.req)
			var e *com.Error
			if !errors.As(err, &e) || e.Kind != com.KindRejected || e.ErrorCode == "" || e.Message == "" {
				t.Fatalf("err %v, want rejected with COM's errorCode and message", err)
			}
		})
	}
	if _, err := c.Get(ctx, "no-such-job"); !com.IsNotFound(err) {
		t.Errorf("unknown job: %v, want not found", err)
	}
	// A wrong base URL path gets the simulator's plain 404: configuration.
	bad, _ := simClient(t, sim, func(cfg *com.Config) { cfg.BaseURL = sim.URL() + "/wrong-region" })
	if _, err := bad.Get(ctx, "j"); !com.IsConfig(err) {
		t.Errorf("wrong base URL: %v, want configuration fault", err)
	}
	wrong, _ := simClient(t, sim, func(cfg *com.Config) { cfg.ClientSecret = "not-the-secret" })
	if _, err := wrong.Get(ctx, "j"); !com.IsConfig(err) {
		t.Errorf("bad credentials: %v, want configuration fault", err)
	}
}

func TestSimPaging(t *testing.T) {
	sim := newSim(t, comsim.Options{})
	tpl, _ := com.Lookup("Server Inventory")
	for range 25 {
		if _, err := sim.Submit(com.CreateRequest{TemplateID: tpl.ID, ResourceType: com.ResourceServer, ResourceID: comsim.DefaultServer1}); err != nil {
			t.Fatal(err)
		}
	}
	for _, version := range []string{"v1", "v1beta3", "v1beta2"} {
		t.Run(version, func(t *testing.T) {
			sim.ResetCalls()
			c, _ := simClient(t, sim, func(cfg *com.Config) { cfg.APIVersion = version })
			seen := map[string]bool{}
			err := c.ListAll(context.Background(), com.ListOptions{Limit: 10, Sort: "createdAt asc", Filter: "resource/id eq '" + comsim.DefaultServer1 + "'"},
				func(j *com.Job) error {
					if seen[j.ID] {
						t.Errorf("job %s twice", j.ID)
					}
					seen[j.ID] = true
					return nil
				})
			if err != nil {
				t.Fatal(err)
			}
			if len(seen) != 25 {
				t.Errorf("saw %d jobs, want 25", len(seen))
			}
			if n := sim.Calls("GET /jobs"); n != 3 {
				t.Errorf("%d list calls, want 3", n)
			}
		})
	}
}

func TestSimTokenExpiryAndRenewal(t *testing.T) {
	t.Run("renewed before expiry", func(t *testing.T) {
		sim := newSim(t, comsim.Options{TokenLifetime: time.Second})
		c, _ := simClient(t, sim, nil)
		deadline := time.Now().Add(4 * time.Second)
		for sim.Calls("POST /token") < 2 {
			if _, err := c.Get(context.Background(), "x"); !com.IsNotFound(err) {
				t.Fatalf("get: %v", err)
			}
			if time.Now().After(deadline) {
				t.Fatal("token never renewed")
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	t.Run("early expiry: one renewal on 401", func(t *testing.T) {
		sim := newSim(t, comsim.Options{})
		c, _ := simClient(t, sim, nil)
		if _, err := c.Get(context.Background(), "x"); !com.IsNotFound(err) {
			t.Fatal(err)
		}
		sim.ExpireTokens()
		if _, err := c.Get(context.Background(), "x"); !com.IsNotFound(err) {
			t.Fatalf("after expiry: %v", err)
		}
		if n := sim.Calls("POST /token"); n != 2 {
			t.Errorf("%d token calls, want 2", n)
		}
		if n := sim.Calls("GET /jobs/{id}"); n != 3 {
			t.Errorf("%d GET calls, want 3 (one repeated after the 401)", n)
		}
	})
}

func TestSimRateLimitPacing(t *testing.T) {
	sim := newSim(t, comsim.Options{Faults: comsim.Faults{RateLimit: 3, RateWindow: time.Second}})
	c, _ := simClient(t, sim, nil)
	start := time.Now()
	for i := range 5 {
		if _, err := c.Get(context.Background(), "x"); !com.IsNotFound(err) {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	// Three calls fit the window; the fourth meets a 429 and everyone waits
	// for the reset (reported in whole seconds) before calling again.
	if time.Since(start) < 900*time.Millisecond {
		t.Error("calls were not paced by the 429's reset")
	}
	if n := sim.Calls("GET /jobs/{id}"); n != 6 {
		t.Errorf("%d calls, want 6 (5 + one refused)", n)
	}
	if _, _, ok := c.Remaining(); !ok {
		t.Error("no quota read from the headers")
	}
}

func TestSimFaultClassification(t *testing.T) {
	tests := []struct {
		name   string
		faults comsim.Faults
		kind   com.Kind
		msgHas string
	}{
		{"5xx", comsim.Faults{Rate5xx: 1}, com.KindTransient, "HTTP 5"},
		{"429", comsim.Faults{Rate429: 1}, com.KindTransient, "HTTP 429"},
		{"slow answer times out", comsim.Faults{RateSlow: 1, SlowBy: 5 * time.Second}, com.KindTransient, "timed out"},
		{"dropped connection", comsim.Faults{RateDrop: 1}, com.KindTransient, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sim := newSim(t, comsim.Options{Faults: tt.faults, Seed: 7})
			c, _ := simClient(t, sim, func(cfg *com.Config) { cfg.MaxRetries = -1; cfg.Timeout = 200 * time.Millisecond })
			_, err := c.Get(context.Background(), "x")
			if com.KindOf(err) != tt.kind || !strings.Contains(err.Error(), tt.msgHas) {
				t.Fatalf("err %v, want %v containing %q", err, tt.kind, tt.msgHas)
			}
		})
	}
	t.Run("dropped create leaves the job behind, unretried", func(t *testing.T) {
		sim := newSim(t, comsim.Options{Faults: comsim.Faults{RateDrop: 1}})
		c, _ := simClient(t, sim, nil)
		tpl, _ := com.Lookup("Server Power On")
		_, err := c.Create(context.Background(), com.CreateRequest{TemplateID: tpl.ID, ResourceType: com.ResourceServer, ResourceID: comsim.DefaultServer2})
		if !com.IsTransient(err) {
			t.Fatalf("err %v", err)
		}
		if n := sim.Calls("POST /jobs"); n != 1 {
			t.Errorf("POST sent %d times", n)
		}
		if n := len(sim.Jobs()); n != 1 {
			t.Errorf("%d jobs exist, want 1 (the caller must reconcile)", n)
		}
	})
}
