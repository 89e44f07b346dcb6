package comsim

import (
	"context"
	"encoding/json"
	"github.com/comjobs/comjobs/com"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

// apiClient is a bare HTTP caller for tests: it speaks COM's wire format
// directly, so the simulator is tested without the com client.
type apiClient struct {
	t     *testing.T
	sim   *Server
	token string
}

func newSim(t *testing.T, opts Options) (*Server, *apiClient) {
	t.Helper()
	if opts.TokenLifetime == 0 {
		opts.TokenLifetime = 10000 * time.Hour // fake clocks jump far
	}
	sim := NewServer(opts)
	t.Cleanup(sim.Close)
	c := &apiClient{t: t, sim: sim}
	c.token = c.getToken(DefaultClientID, DefaultClientSecret)
	return sim, c
}

// on returns the client reporting to t (for subtests).
func (c *apiClient) on(t *testing.T) *apiClient {
	cc := *c
	cc.t = t
	return &cc
}

func (c *apiClient) getToken(id, secret string) string {
	c.t.Helper()
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {id}, "client_secret": {secret}}
	resp, err := http.PostForm(c.sim.TokenURL(), form)
	if err != nil {
		c.t.Fatalf("token: %v", err)
	}
	defer resp.Body.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		ExpiresIn   int    `json:"expires_in"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil {
		c.t.Fatalf("token body: %v", err)
	}
	return tok.AccessToken
}

// do calls the API and returns status, headers and the decoded JSON body
// (nil if the body is not JSON).
func (c *apiClient) do(method, path string, body any) (int, http.Header, map[string]any) {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			c.t.Fatal(err)
		}
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequest(method, c.sim.URL()+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if json.Unmarshal(raw, &m) != nil {
		m = nil
	}
	return resp.StatusCode, resp.Header, m
}

func (c *apiClient) create(templateID, resType, resID string, params map[string]any) map[string]any {
	c.t.Helper()
	code, _, body := c.do("POST", "/compute-ops-mgmt/v1/jobs", map[string]any{
		"jobTemplate": templateID, "resourceType": resType, "resourceId": resID, "jobParams": params,
	})
	if code != http.StatusCreated {
		c.t.Fatalf("create %s on %s: %d %v", templateID, resID, code, body)
	}
	return body
}

// waitFor polls GET until the job is in state, or fails after a deadline.
func (c *apiClient) waitFor(id, state string) map[string]any {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, _, body := c.do("GET", "/compute-ops-mgmt/v1/jobs/"+id, nil)
		if code == http.StatusOK && body["state"] == state {
			return body
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("job %s never reached %s; last %d %v", id, state, code, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

const (
	tPowerOff        = "d0c13b58-748c-461f-9a61-c0c5c71f1bb4"
	tFirmwareUpdate  = "fd54a96c-cabc-42e3-aee3-374a2d009dba"
	tGroupCompliance = "23b8ba2a-6c46-4223-b028-919382c7dcac"
	tGroupSetting    = "beff07ce-f36d-4699-9ac3-f872dcd63133"
	tGroupFirmware   = "91159b5e-9eeb-11ec-a9da-00155dc0a0c0"
	server           = "compute-ops-mgmt/server"
	group            = "compute-ops-mgmt/group"
)

var fast = Timing{PendingFor: 5 * time.Millisecond, RunFor: 10 * time.Millisecond, ApprovalFor: 10 * time.Millisecond}

func TestCreateGetListV1(t *testing.T) {
	_, c := newSim(t, Options{Timing: fast})
	job := c.create(tPowerOff, server, DefaultServer1, nil)
	id := job["id"].(string)
	for k, want := range map[string]any{
		"type": "compute-ops-mgmt/job", "state": "PENDING", "resultCode": nil, "status": "Pending",
		"jobTemplate": tPowerOff, "name": "ServerPowerOff", "generation": 1.0, "parentJobId": nil,
		"resourceUri": "/compute-ops-mgmt/v1/jobs/" + id,
	} {
		if job[k] != want {
			t.Errorf("%s = %v, want %v", k, job[k], want)
		}
	}
	if res := job["resource"].(map[string]any); res["id"] != DefaultServer1 || res["type"] != server {
		t.Errorf("resource = %v", res)
	}
	done := c.waitFor(id, "COMPLETE")
	if done["resultCode"] != "SUCCESS" || done["status"] != "Complete" {
		t.Errorf("ended %v/%v", done["resultCode"], done["status"])
	}
	code, _, list := c.do("GET", "/compute-ops-mgmt/v1/jobs?filter="+url.QueryEscape("id eq '"+id+"'"), nil)
	if code != 200 || list["total"] != 1.0 || list["count"] != 1.0 || list["offset"] != 0.0 {
		t.Fatalf("list: %d %v", code, list)
	}
}

func qe(s string) string { return url.QueryEscape(s) }

func sortStrings(s []string) { slices.Sort(s) }

func comCreate(templateID, resType, resID string) com.CreateRequest {
	return com.CreateRequest{TemplateID: templateID, ResourceType: resType, ResourceID: resID}
}

func contextWithCancel(t *testing.T) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return ctx, cancel
}
