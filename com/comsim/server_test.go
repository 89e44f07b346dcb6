package comsim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestRateLimitHeaders: every API answer carries ratelimit-limit,
// -remaining and -reset; over the budget COM answers 429 with them; the
// window resets.
func TestRateLimitHeaders(t *testing.T) {
	clk := newFakeClock()
	_, c := newSim(t, Options{Clock: clk.Now, Faults: Faults{RateLimit: 3, RateWindow: 10 * time.Second}})
	cases := []struct {
		advance   time.Duration
		status    int
		remaining string
		reset     string
	}{
		{0, 200, "2", "10"},
		{time.Second, 200, "1", "9"},
		{time.Second, 200, "0", "8"},
		{time.Second, 429, "0", "7"},
		{8 * time.Second, 200, "2", "10"}, // a new window
	}
	for i, tc := range cases {
		clk.Advance(tc.advance)
		code, h, body := c.do("GET", "/compute-ops-mgmt/v1/jobs", nil)
		if code != tc.status || h.Get("ratelimit-limit") != "3" || h.Get("ratelimit-remaining") != tc.remaining || h.Get("ratelimit-reset") != tc.reset {
			t.Fatalf("call %d: %d limit=%s remaining=%s reset=%s, want %d 3 %s %s", i, code,
				h.Get("ratelimit-limit"), h.Get("ratelimit-remaining"), h.Get("ratelimit-reset"), tc.status, tc.remaining, tc.reset)
		}
		if code == 429 && body["httpStatusCode"] != 429.0 {
			t.Fatalf("429 without COM body: %v", body)
		}
	}
	// Unlimited still reports headers; 401 and 404-with-body answers too.
	_, c2 := newSim(t, Options{})
	for _, path := range []string{"/compute-ops-mgmt/v1/jobs", "/compute-ops-mgmt/v1/jobs/nope"} {
		_, h, _ := c2.do("GET", path, nil)
		if h.Get("ratelimit-limit") != fmt.Sprint(UnlimitedRate) || h.Get("ratelimit-remaining") == "" || h.Get("ratelimit-reset") == "" {
			t.Fatalf("%s: headers %v", path, h)
		}
	}
}

// TestErrorBodies: COM's refusals carry its error body with the right
// status; paths COM does not serve answer a bare 404.
func TestErrorBodies(t *testing.T) {
	clk := newFakeClock()
	_, c := newSim(t, Options{Timing: slow, Clock: clk.Now})
	ended := c.create(tPowerOff, server, ServerError, nil)["id"].(string)
	clk.Advance(time.Hour)
	v1 := func(tmpl, typ, id string, params any) map[string]any {
		return map[string]any{"jobTemplate": tmpl, "resourceType": typ, "resourceId": id, "jobParams": params}
	}
	cases := []struct {
		name, method, path string
		body               any
		raw                string
		status             int
		mention            string // the message must name this
	}{
		{"unknown template", "POST", "/compute-ops-mgmt/v1/jobs", v1("00000000-0000-0000-0000-000000000000", server, DefaultServer1, nil), "", 400, "00000000"},
		{"template by name is not an id", "POST", "/compute-ops-mgmt/v1/jobs", v1("Server Power Off", server, DefaultServer1, nil), "", 400, "Server Power Off"},
		{"missing template", "POST", "/compute-ops-mgmt/v1/jobs", v1("", server, DefaultServer1, nil), "", 400, "jobTemplate"},
		{"unknown resource", "POST", "/compute-ops-mgmt/v1/jobs", v1(tPowerOff, server, "000000-000+NOSUCHSERVER", nil), "", 404, "NOSUCHSERVER"},
		{"resource type mismatch", "POST", "/compute-ops-mgmt/v1/jobs", v1(tPowerOff, group, DefaultGroup, nil), "", 400, group},
		{"unknown resource type", "POST", "/compute-ops-mgmt/v1/jobs", v1(tPowerOff, "compute-ops-mgmt/toaster", "x", nil), "", 400, "toaster"},
		{"missing required param", "POST", "/compute-ops-mgmt/v1/jobs", v1(tFirmwareUpdate, server, DefaultServer1, nil), "", 400, "bundle_id"},
		{"param out of enum", "POST", "/compute-ops-mgmt/v1/jobs", v1(tGroupSetting, group, DefaultGroup, map[string]any{"redfish_subsystem": "UEFI"}), "", 400, "redfish_subsystem"},
		{"param out of range", "POST", "/compute-ops-mgmt/v1/jobs", v1(tGroupSetting, group, DefaultGroup, map[string]any{"redfish_subsystem": "BIOS", "batch_size": 21}), "", 400, "batch_size"},
		{"device not in group", "POST", "/compute-ops-mgmt/v1/jobs", v1(tGroupCompliance, group, DefaultGroup, map[string]any{"devices": []string{ServerFail}}), "", 400, "devices"},
		{"not json", "POST", "/compute-ops-mgmt/v1/jobs", nil, "{nope", 400, "not a valid job"},
		{"v1beta3 bad template uri", "POST", "/compute-ops-mgmt/v1beta3/jobs", map[string]any{"jobTemplateUri": "d0c13b58", "resourceUri": "/compute-ops-mgmt/v1beta2/servers/" + DefaultServer1}, "", 400, "jobTemplateUri"},
		{"v1beta3 bad resource uri", "POST", "/compute-ops-mgmt/v1beta3/jobs", map[string]any{"jobTemplateUri": "/compute-ops-mgmt/v1beta2/job-templates/" + tPowerOff, "resourceUri": "/compute-ops-mgmt/v1beta2/toasters/1"}, "", 400, "resourceUri"},
		{"v1beta3 unknown resource", "POST", "/compute-ops-mgmt/v1beta3/jobs", map[string]any{"jobTemplateUri": "/compute-ops-mgmt/v1beta2/job-templates/" + tPowerOff, "resourceUri": "/compute-ops-mgmt/v1beta2/servers/NOPE"}, "", 404, "NOPE"},
		{"v1beta3 bad data", "POST", "/compute-ops-mgmt/v1beta3/jobs", map[string]any{"jobTemplateUri": "/compute-ops-mgmt/v1beta2/job-templates/" + tFirmwareUpdate, "resourceUri": "/compute-ops-mgmt/v1beta2/servers/" + DefaultServer1, "data": map[string]any{"bundle_id": 7}}, "", 400, "data.bundle_id"},
		{"unknown job", "GET", "/compute-ops-mgmt/v1/jobs/4e1c0c36-0000-4000-8000-000000000000", nil, "", 404, "not found"},
		{"unknown job v1beta2", "GET", "/compute-ops-mgmt/v1beta2/jobs/nope", nil, "", 404, "not found"},
		{"patch ended job", "PATCH", "/compute-ops-mgmt/v1/jobs/" + ended, map[string]any{"state": "COMPLETE"}, "", 409, "ERROR"},
		{"patch unknown job", "PATCH", "/compute-ops-mgmt/v1/jobs/nope", map[string]any{"state": "COMPLETE"}, "", 404, "not found"},
		{"patch bad state", "PATCH", "/compute-ops-mgmt/v1/jobs/" + ended, map[string]any{"state": "RUNNING"}, "", 400, "RUNNING"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var code int
			var body map[string]any
			if tc.raw != "" {
				code, body = c.on(t).raw(tc.method, tc.path, tc.raw)
			} else {
				code, _, body = c.on(t).do(tc.method, tc.path, tc.body)
			}
			if code != tc.status {
				t.Fatalf("status %d, want %d: %v", code, tc.status, body)
			}
			if body["httpStatusCode"] != float64(tc.status) || body["debugId"] == "" || body["errorDetails"] == nil ||
				!strings.HasPrefix(fmt.Sprint(body["errorCode"]), "HPE-GL-COMPUTE_OPS-") {
				t.Fatalf("not a COM error body: %v", body)
			}
			if !strings.Contains(fmt.Sprint(body["message"]), tc.mention) {
				t.Fatalf("message %q does not name %q", body["message"], tc.mention)
			}
		})
	}
	// A path COM does not serve (a wrong base URL) answers 404 with no COM body.
	for _, path := range []string{"/compute-ops-mgmt/v2/jobs", "/api/jobs", "/"} {
		code, _, body := c.do("GET", path, nil)
		if code != http.StatusNotFound || body != nil {
			t.Fatalf("%s: %d %v, want a bare 404", path, code, body)
		}
	}
	if n := c.sim.Calls("unknown"); n != 3 {
		t.Errorf("unknown-route calls %d, want 3", n)
	}
}

// raw sends a body as is.
func (c *apiClient) raw(method, path, body string) (int, map[string]any) {
	c.t.Helper()
	req, _ := http.NewRequest(method, c.sim.URL()+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

// TestTokenExpiry: tokens live TokenLifetime (expires_in says so), expired
// or unknown ones get 401, ExpireTokens ends them early, bad credentials are
// refused.
func TestTokenExpiry(t *testing.T) {
	clk := newFakeClock()
	sim, c := newSim(t, Options{Clock: clk.Now, TokenLifetime: time.Minute, ClientID: "id1", ClientSecret: "s3cret"})
	c.token = ""
	post := func(form url.Values, user, pass string) (int, map[string]any) {
		req, _ := http.NewRequest("POST", sim.TokenURL(), strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	cc := url.Values{"grant_type": {"client_credentials"}}
	withCreds := url.Values{"grant_type": {"client_credentials"}, "client_id": {"id1"}, "client_secret": {"s3cret"}}
	for _, tc := range []struct {
		name       string
		form       url.Values
		user, pass string
		status     int
	}{
		{"form credentials", withCreds, "", "", 200},
		{"basic auth", cc, "id1", "s3cret", 200},
		{"wrong secret", url.Values{"grant_type": {"client_credentials"}, "client_id": {"id1"}, "client_secret": {"nope"}}, "", "", 401},
		{"wrong basic", cc, "id1", "nope", 401},
		{"no credentials", cc, "", "", 401},
		{"wrong grant", url.Values{"grant_type": {"password"}, "client_id": {"id1"}, "client_secret": {"s3cret"}}, "", "", 400},
	} {
		code, body := post(tc.form, tc.user, tc.pass)
		if code != tc.status {
			t.Fatalf("%s: %d %v", tc.name, code, body)
		}
		if code == 200 && (body["token_type"] != "Bearer" || body["expires_in"] != 60.0 || body["access_token"] == "") {
			t.Fatalf("%s: token answer %v", tc.name, body)
		}
		if code != 200 && body["error"] == nil {
			t.Fatalf("%s: no OAuth error body: %v", tc.name, body)
		}
	}
	if code, _, _ := c.do("GET", "/compute-ops-mgmt/v1/jobs", nil); code != 401 {
		t.Fatalf("no token: %d", code)
	}
	c.token = "forged"
	if code, _, _ := c.do("GET", "/compute-ops-mgmt/v1/jobs", nil); code != 401 {
		t.Fatalf("forged token: %d", code)
	}
	_, body := post(withCreds, "", "")
	c.token = body["access_token"].(string)
	if code, _, _ := c.do("GET", "/compute-ops-mgmt/v1/jobs", nil); code != 200 {
		t.Fatalf("fresh token: %d", code)
	}
	clk.Advance(61 * time.Second)
	if code, _, _ := c.do("GET", "/compute-ops-mgmt/v1/jobs", nil); code != 401 {
		t.Fatalf("expired token: %d", code)
	}
	_, body = post(withCreds, "", "")
	c.token = body["access_token"].(string)
	if code, _, _ := c.do("GET", "/compute-ops-mgmt/v1/jobs", nil); code != 200 {
		t.Fatalf("renewed token: %d", code)
	}
	sim.ExpireTokens()
	if code, _, _ := c.do("GET", "/compute-ops-mgmt/v1/jobs", nil); code != 401 {
		t.Fatalf("token after ExpireTokens: %d", code)
	}
	if sim.Calls("POST /token") != 9 {
		t.Errorf("token calls %d, want 9", sim.Calls("POST /token"))
	}
}

// TestFaultsSeeded: the same seed gives the same faults for the same calls;
// drops still take effect; slow answers are slow; SetFaults applies at once.
func TestFaultsSeeded(t *testing.T) {
	f := Faults{Rate429: 0.2, Rate5xx: 0.2}
	run := func(seed int64) []int {
		_, c := newSim(t, Options{Seed: seed, Faults: f})
		var codes []int
		for range 40 {
			code, h, body := c.do("GET", "/compute-ops-mgmt/v1/jobs", nil)
			if h.Get("ratelimit-remaining") == "" {
				t.Fatalf("%d without rate-limit headers", code)
			}
			if code == 502 && body != nil {
				t.Fatalf("502 with a JSON body: the gateway answer is HTML")
			}
			codes = append(codes, code)
		}
		return codes
	}
	a, b, other := run(7), run(7), run(8)
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatalf("same seed, different faults:\n%v\n%v", a, b)
	}
	if fmt.Sprint(a) == fmt.Sprint(other) {
		t.Fatalf("different seeds, same faults: %v", a)
	}
	kinds := map[int]bool{}
	for _, c := range a {
		kinds[c] = true
	}
	if !kinds[200] || !kinds[429] || !(kinds[500] || kinds[502] || kinds[503]) {
		t.Fatalf("40 calls at 20%%/20%% did not meet every kind: %v", a)
	}

	sim, c := newSim(t, Options{Faults: Faults{RateDrop: 1}})
	_, err := http.Post(sim.URL()+"/compute-ops-mgmt/v1/jobs", "application/json", bytes.NewReader(nil))
	if err == nil {
		t.Fatal("dropped call got an answer")
	}
	req, _ := http.NewRequest("POST", sim.URL()+"/compute-ops-mgmt/v1/jobs", strings.NewReader(
		`{"jobTemplate":"`+tPowerOff+`","resourceType":"`+server+`","resourceId":"`+DefaultServer1+`"}`))
	req.Header.Set("Authorization", "Bearer "+c.token)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatal("dropped create got an answer")
	}
	if n := len(sim.Jobs()); n != 1 {
		t.Fatalf("a dropped create made %d jobs, want 1 (it takes effect)", n)
	}
	sim.SetFaults(Faults{RateSlow: 1, SlowBy: time.Minute})
	hc := &http.Client{Timeout: 100 * time.Millisecond}
	req, _ = http.NewRequest("GET", sim.URL()+"/compute-ops-mgmt/v1/jobs", nil)
	req.Header.Set("Authorization", "Bearer "+c.token)
	_, err = hc.Do(req)
	var ne interface{ Timeout() bool }
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("slow answer: %v, want a client timeout", err)
	}
	sim.SetFaults(Faults{})
	if code, _, _ := c.do("GET", "/compute-ops-mgmt/v1/jobs", nil); code != 200 {
		t.Fatalf("after SetFaults(Faults{}): %d", code)
	}
}

// TestConcurrentUse: many callers at once, over HTTP and the Go API.
func TestConcurrentUse(t *testing.T) {
	sim, c := newSim(t, Options{Timing: Timing{PendingFor: time.Millisecond, RunFor: 2 * time.Millisecond}})
	fleet := FleetServers()
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for w := range 8 {
		wg.Go(func() {
			hc := &http.Client{}
			for i := range 20 {
				body := fmt.Sprintf(`{"jobTemplate":%q,"resourceType":%q,"resourceId":%q}`, tPowerOff, server, fleet[(w+i)%len(fleet)])
				req, _ := http.NewRequest("POST", sim.URL()+"/compute-ops-mgmt/v1/jobs", strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+c.token)
				resp, err := hc.Do(req)
				if err != nil {
					errs <- err
					return
				}
				var job map[string]any
				_ = json.NewDecoder(resp.Body).Decode(&job)
				resp.Body.Close()
				id, _ := job["id"].(string)
				for _, path := range []string{"/compute-ops-mgmt/v1/jobs/" + id, "/compute-ops-mgmt/v1beta2/jobs?filter=" + qe("state ne 'COMPLETE'")} {
					req, _ := http.NewRequest("GET", sim.URL()+path, nil)
					req.Header.Set("Authorization", "Bearer "+c.token)
					if resp, err := hc.Do(req); err == nil {
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
				}
				if i%5 == 0 {
					_ = sim.SetState(id, StateError, ResultFailure)
					_ = sim.Jobs()
					_ = sim.CallCounts()
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := len(sim.Jobs()); n != 160 {
		t.Fatalf("%d jobs, want 160", n)
	}
	if sim.Calls("POST /jobs") != 160 || sim.CallCountsByVersion()["v1beta2 GET /jobs"] != 160 {
		t.Fatalf("counts %v %v", sim.CallCounts(), sim.CallCountsByVersion())
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		done := 0
		for _, j := range sim.Jobs() {
			if j.Terminal() {
				done++
			}
		}
		if done == 160 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of 160 jobs ended", done)
		}
		time.Sleep(5 * time.Millisecond)
	}
	sim.ResetCalls()
	if len(sim.CallCounts()) != 0 {
		t.Fatal("ResetCalls left counts")
	}
}

// TestVersionBodies: v1beta3 creates from URIs and answers with the seed's
// fields; v1beta2 has no resultCode; v1 has the notes' fields.
func TestVersionBodies(t *testing.T) {
	clk := newFakeClock()
	_, c := newSim(t, Options{Timing: slow, Clock: clk.Now})
	code, h, job := c.do("POST", "/compute-ops-mgmt/v1beta3/jobs", map[string]any{
		"jobTemplateUri": "/compute-ops-mgmt/v1beta2/job-templates/" + tGroupCompliance,
		"resourceUri":    "/compute-ops-mgmt/v1beta2/groups/" + DefaultGroup,
		"data":           map[string]any{"devices": []string{DefaultServer1, DefaultServer2}},
	})
	if code != http.StatusCreated {
		t.Fatalf("v1beta3 create: %d %v", code, job)
	}
	id := job["id"].(string)
	if h.Get("Location") != "/compute-ops-mgmt/v1beta3/jobs/"+id {
		t.Errorf("Location %q", h.Get("Location"))
	}
	clk.Advance(24 * time.Hour)
	groupURI := "/compute-ops-mgmt/v1beta2/groups/" + DefaultGroup
	want := map[string]map[string]any{
		"v1beta3": {"resourceUri": "/compute-ops-mgmt/v1beta3/jobs/" + id, "displayName": "GroupFirmwareCompliance",
			"jobTemplateUri": "/compute-ops-mgmt/v1beta2/job-templates/" + tGroupCompliance, "associatedResourceUri": groupURI,
			"state": "COMPLETE", "resultCode": "SUCCESS", "status": "Complete", "type": "compute-ops-mgmt/job"},
		"v1beta2": {"resourceUri": "/compute-ops-mgmt/v1beta2/jobs/" + id, "associatedResourceUri": groupURI, "state": "COMPLETE"},
		"v1":      {"resourceUri": "/compute-ops-mgmt/v1/jobs/" + id, "jobTemplate": tGroupCompliance, "state": "COMPLETE", "resultCode": "SUCCESS"},
	}
	for v, fields := range want {
		code, _, body := c.do("GET", "/compute-ops-mgmt/"+v+"/jobs/"+id, nil)
		if code != 200 {
			t.Fatalf("%s get: %d", v, code)
		}
		for k, w := range fields {
			if body[k] != w {
				t.Errorf("%s %s = %v, want %v", v, k, body[k], w)
			}
		}
		if _, has := body["resultCode"]; v == "v1beta2" && has {
			t.Errorf("v1beta2 body has resultCode")
		}
		if v != "v1" {
			res := body["resource"].(map[string]any)
			if res["resourceUri"] != groupURI || res["type"] != "groups" {
				t.Errorf("%s resource %v", v, res)
			}
			if _, err := time.Parse("2006-01-02T15:04:05.000000-07:00", body["createdAt"].(string)); err != nil || !strings.HasSuffix(body["createdAt"].(string), "+00:00") {
				t.Errorf("%s createdAt %v not in COM's form", v, body["createdAt"])
			}
		}
	}
	if code, _, _ := c.do("POST", "/compute-ops-mgmt/v1beta2/jobs", map[string]any{}); code != http.StatusMethodNotAllowed {
		t.Errorf("v1beta2 POST: %d, want 405", code)
	}
	// Tenant-Acid is accepted.
	req, _ := http.NewRequest("GET", c.sim.URL()+"/compute-ops-mgmt/v1/jobs", nil)
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Tenant-Acid", "tenant-1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("Tenant-Acid: %v %v", err, resp)
	}
	resp.Body.Close()
}
