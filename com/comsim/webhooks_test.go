package comsim

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// receiver is a webhook destination for tests.
type receiver struct {
	mu       sync.Mutex
	echo     bool // answer the handshake correctly
	failPOST bool
	events   []map[string]any
	headers  []http.Header
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	switch r.Method {
	case http.MethodGet:
		v := r.Header.Get("x-compute-ops-mgmt-verification-challenge")
		if !rc.echo || v == "" {
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, `{"verification":"wrong"}`)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"verification": v})
	case http.MethodPost:
		if rc.failPOST {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		var m map[string]any
		_ = json.NewDecoder(r.Body).Decode(&m)
		rc.events = append(rc.events, m)
		rc.headers = append(rc.headers, r.Header.Clone())
		w.WriteHeader(http.StatusNoContent)
	}
}

func (rc *receiver) snapshot() []map[string]any {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]map[string]any(nil), rc.events...)
}

func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestWebhookHandshake: registration runs COM's verification handshake; a
// verified webhook gets every job state change as the job's v1 body, with
// its headers; a failed handshake leaves it disabled; ten failed deliveries
// in a row disable it.
func TestWebhookHandshake(t *testing.T) {
	t.Run("verified destination gets state changes", func(t *testing.T) {
		for _, shuffle := range []bool{false, true} {
			sim, c := newSim(t, Options{Timing: fast, ShuffleWebhooks: shuffle, Seed: 3})
			rc := &receiver{echo: true}
			dest := httptest.NewServer(rc)
			t.Cleanup(dest.Close)
			code, _, hook := c.on(t).do("POST", "/compute-ops-mgmt/v1beta1/webhooks", map[string]any{
				"name": "jobs", "destination": dest.URL, "state": "ENABLED",
				"eventFilter": "type eq 'compute-ops/job'", "headers": map[string]string{"X-Auth": "hunter2"},
			})
			if code != http.StatusCreated || hook["state"] != "ENABLED" {
				t.Fatalf("register: %d %v", code, hook)
			}
			if _, echoed := hook["headers"]; echoed {
				t.Errorf("header values echoed: %v", hook)
			}
			id := c.on(t).create(tPowerOff, server, DefaultServer1, nil)["id"].(string)
			// Nobody polls: the simulator moves the job and pushes its changes.
			poll(t, "PENDING, RUNNING and COMPLETE events", func() bool {
				seen := map[string]bool{}
				for _, e := range rc.snapshot() {
					if e["id"] == id {
						seen[e["state"].(string)] = true
					}
				}
				return seen["PENDING"] && seen["RUNNING"] && seen["COMPLETE"]
			})
			rc.mu.Lock()
			for i, e := range rc.events {
				if e["resourceUri"] != "/compute-ops-mgmt/v1/jobs/"+id || e["generation"] == nil || e["jobTemplate"] != tPowerOff {
					t.Errorf("event %d is not a full v1 job body: %v", i, e)
				}
				if rc.headers[i].Get("X-Auth") != "hunter2" {
					t.Errorf("event %d without the registered header", i)
				}
			}
			rc.mu.Unlock()
			if hs := sim.Webhooks(); len(hs) != 1 || !hs[0].Verified || hs[0].Delivered == 0 {
				t.Errorf("webhooks %+v", hs)
			}
		}
	})
	t.Run("failed handshake disables", func(t *testing.T) {
		sim, c := newSim(t, Options{Timing: fast})
		dest := httptest.NewServer(&receiver{echo: false})
		t.Cleanup(dest.Close)
		code, _, hook := c.on(t).do("POST", "/compute-ops-mgmt/v1beta1/webhooks", map[string]any{"name": "bad", "destination": dest.URL})
		if code != http.StatusCreated || hook["state"] != "DISABLED" || hook["stateReason"] == "" {
			t.Fatalf("register: %d %v", code, hook)
		}
		if err := sim.RegisterWebhook(dest.URL, nil); err == nil {
			t.Fatal("RegisterWebhook with a failing handshake: no error")
		}
		if err := sim.RegisterWebhook("ftp://x", nil); err == nil {
			t.Fatal("RegisterWebhook with a non-http destination: no error")
		}
	})
	t.Run("ten failures in a row disable", func(t *testing.T) {
		sim, c := newSim(t, Options{Timing: fast})
		rc := &receiver{echo: true, failPOST: true}
		dest := httptest.NewServer(rc)
		t.Cleanup(dest.Close)
		if err := sim.RegisterWebhook(dest.URL, nil); err != nil {
			t.Fatal(err)
		}
		for _, s := range FleetServers()[:4] { // 4 jobs × 3 changes ≥ 10
			c.on(t).create(tPowerOff, server, s, nil)
		}
		poll(t, "the webhook to be disabled", func() bool {
			hs := sim.Webhooks()
			return hs[0].State == WebhookDisabled && hs[0].Failures == maxWebhookFailures
		})
	})
}
