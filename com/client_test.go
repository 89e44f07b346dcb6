package com_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/comjobs/comjobs/com"
)

const (
	testClientID = "comjobs-test-client"
	testSecret   = "s3cr3t-CLIENT-SECRET-value"
	tokenPrefix  = "tok-BEARER-VALUE-"
)

// fakeCOM is a small COM of our own over real HTTP: a client-credentials
// token endpoint and whatever API handler a test gives it. It records every
// API request.
type fakeCOM struct {
	t   *testing.T
	srv *httptest.Server

	tokenCalls atomic.Int32
	// expiresIn is the token life it announces; 0 omits expires_in.
	expiresIn atomic.Int32
	// tokenStatus, when non-zero, is the token endpoint's answer status.
	tokenStatus atomic.Int32

	mu       sync.Mutex
	api      http.HandlerFunc
	requests []recorded
}

type recorded struct {
	Method, Path, RawPath, Query, Auth, Tenant, ContentType, Body string
}

func newFakeCOM(t *testing.T, api http.HandlerFunc) *fakeCOM {
	f := &fakeCOM{t: t, api: api}
	f.expiresIn.Store(3600)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /token", f.token)
	mux.HandleFunc("/compute-ops-mgmt/", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.requests = append(f.requests, recorded{r.Method, r.URL.Path, r.URL.RawPath, r.URL.RawQuery, r.Header.Get("Authorization"),
			r.Header.Get("Tenant-Acid"), r.Header.Get("Content-Type"), string(body)})
		api := f.api
		f.mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(body))
		api(w, r)
	})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeCOM) token(w http.ResponseWriter, r *http.Request) {
	n := f.tokenCalls.Add(1)
	if st := f.tokenStatus.Load(); st != 0 {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(int(st))
		// A hostile endpoint echoing the form, secret included.
		_ = r.ParseForm()
		fmt.Fprintf(w, `{"error":"invalid_client","error_description":"bad secret %s"}`, r.Form.Get("client_secret"))
		return
	}
	if err := r.ParseForm(); err != nil || r.Form.Get("grant_type") != "client_credentials" ||
		r.Form.Get("client_id") != testClientID || r.Form.Get("client_secret") != testSecret {
		http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
		return
	}
	ans := map[string]any{"access_token": fmt.Sprintf("%s%d", tokenPrefix, n), "token_type": "Bearer"}
	if e := f.expiresIn.Load(); e != 0 {
		ans["expires_in"] = e
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(ans)
}

func (f *fakeCOM) recorded() []recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recorded(nil), f.requests...)
}

// logBuffer is a goroutine-safe log sink.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type clientOpts struct {
	cfg  func(*com.Config)
	reg  prometheus.Registerer
	opts []com.Option
}

func (f *fakeCOM) client(t *testing.T, o clientOpts) (*com.Client, *logBuffer) {
	t.Helper()
	cfg := com.Config{
		BaseURL: f.srv.URL, TokenURL: f.srv.URL + "/token", ClientID: testClientID, ClientSecret: testSecret,
		Timeout: 2 * time.Second, RetryBaseDelay: time.Millisecond, RatePerMinute: -1,
	}
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	logs := &logBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, err := com.NewClient(cfg, f.srv.Client(), logger, o.reg, o.opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c, logs
}

func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	io.WriteString(w, body)
}

func TestNewClientValidates(t *testing.T) {
	good := com.Config{BaseURL: "https://us-west.api.greenlake.hpe.com", TokenURL: "https://sso.example/token", ClientID: "id", ClientSecret: "s"}
	tests := []struct {
		name  string
		edit  func(*com.Config)
		field string // "" means valid
	}{
		{"defaults", func(*com.Config) {}, ""},
		{"v1beta2", func(c *com.Config) { c.APIVersion = "v1beta2" }, ""},
		{"base path allowed", func(c *com.Config) { c.BaseURL = "http://127.0.0.1:8080/prefix/" }, ""},
		{"unknown version", func(c *com.Config) { c.APIVersion = "v2" }, "APIVersion"},
		{"relative base", func(c *com.Config) { c.BaseURL = "/compute" }, "BaseURL"},
		{"ftp base", func(c *com.Config) { c.BaseURL = "ftp://x.example" }, "BaseURL"},
		{"base with credentials", func(c *com.Config) { c.BaseURL = "https://u:p@x.example" }, "BaseURL"},
		{"base with query", func(c *com.Config) { c.BaseURL = "https://x.example/?a=1" }, "BaseURL"},
		{"empty base", func(c *com.Config) { c.BaseURL = "" }, "BaseURL"},
		{"bad token URL", func(c *com.Config) { c.TokenURL = "token" }, "TokenURL"},
		{"no client id", func(c *com.Config) { c.ClientID = "" }, "ClientID"},
		{"no secret", func(c *com.Config) { c.ClientSecret = "" }, "ClientSecret"},
		{"tenant with newline", func(c *com.Config) { c.TenantACID = "a\r\nX: y" }, "TenantACID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.edit(&cfg)
			c, err := com.NewClient(cfg, &http.Client{}, nil, nil)
			if tt.field == "" {
				if err != nil {
					t.Fatal(err)
				}
				if cfg.APIVersion == "" && c.APIVersion() != "v1" {
					t.Errorf("default version %q", c.APIVersion())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("err = %v, want one naming %s", err, tt.field)
			}
		})
	}
	if _, err := com.NewClient(good, nil, nil, nil); err == nil {
		t.Error("nil http.Client accepted")
	}
}

func TestCreateBodies(t *testing.T) {
	tests := []struct {
		version, wantPath, wantBody string
	}{
		{"v1", "/compute-ops-mgmt/v1/jobs",
			`{"jobTemplate":"1c4ac4be-8eeb-49f2-a86a-fd8c9182616c","resourceType":"compute-ops-mgmt/oneview-appliance","resourceId":"oneview+5c1b2f6e-7a43-4a8e-9d0c-2f1e6b3a9c71","jobParams":{"applianceFirmwareId":"f1"}}`},
		{"v1beta3", "/compute-ops-mgmt/v1beta3/jobs",
			`{"jobTemplateUri":"/compute-ops-mgmt/v1beta2/job-templates/1c4ac4be-8eeb-49f2-a86a-fd8c9182616c","resourceUri":"/compute-ops-mgmt/v1beta2/oneview-appliances/oneview+5c1b2f6e-7a43-4a8e-9d0c-2f1e6b3a9c71","data":{"applianceFirmwareId":"f1"}}`},
		{"v1beta2", "/compute-ops-mgmt/v1beta3/jobs",
			`{"jobTemplateUri":"/compute-ops-mgmt/v1beta2/job-templates/1c4ac4be-8eeb-49f2-a86a-fd8c9182616c","resourceUri":"/compute-ops-mgmt/v1beta2/oneview-appliances/oneview+5c1b2f6e-7a43-4a8e-9d0c-2f1e6b3a9c71","data":{"applianceFirmwareId":"f1"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.version, func(t *testing.T) {
			f := newFakeCOM(t, func(w http.ResponseWriter, r *http.Request) {
				writeJSON(w, http.StatusCreated, `{"id":"j1","state":"PENDING","resultCode":null,"generation":1,
					"resource":{"type":"compute-ops-mgmt/oneview-appliance","id":"oneview+5c1b2f6e-7a43-4a8e-9d0c-2f1e6b3a9c71"}}`)
			})
			c, _ := f.client(t, clientOpts{cfg: func(c *com.Config) { c.APIVersion = tt.version; c.TenantACID = "acid-1" }})
			j, err := c.Create(context.Background(), com.CreateRequest{
				TemplateID: "1c4ac4be-8eeb-49f2-a86a-fd8c9182616c", ResourceType: "compute-ops-mgmt/oneview-appliances",
				ResourceID: "oneview+5c1b2f6e-7a43-4a8e-9d0c-2f1e6b3a9c71", Params: map[string]any{"applianceFirmwareId": "f1"},
			})
			if err != nil {
				t.Fatal(err)
			}
			if j.ID != "j1" || j.State != "PENDING" || j.ResultCode != nil {
				t.Errorf("job %+v", j)
			}
			reqs := f.recorded()
			if len(reqs) != 1 {
				t.Fatalf("%d requests", len(reqs))
			}
			r := reqs[0]
			if r.Method != "POST" || r.Path != tt.wantPath || r.Body != tt.wantBody || r.ContentType != "application/json" ||
				r.Auth != "Bearer "+tokenPrefix+"1" || r.Tenant != "acid-1" {
				t.Errorf("request %+v", r)
			}
		})
	}
}

func TestCreateNilParamsSendsEmptyObject(t *testing.T) {
	f := newFakeCOM(t, func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 201, `{"id":"j1"}`) })
	c, _ := f.client(t, clientOpts{})
	if _, err := c.Create(context.Background(), com.CreateRequest{TemplateID: "t", ResourceType: com.ResourceServer, ResourceID: "s"}); err != nil {
		t.Fatal(err)
	}
	if b := f.recorded()[0].Body; !strings.Contains(b, `"jobParams":{}`) {
		t.Errorf("body %s", b)
	}
}

func TestGetAndEndRoutes(t *testing.T) {
	tests := []struct{ version, getPath string }{
		{"v1", "/compute-ops-mgmt/v1/jobs/j+1"},
		{"v1beta3", "/compute-ops-mgmt/v1beta3/jobs/j+1"},
		{"v1beta2", "/compute-ops-mgmt/v1beta2/jobs/j+1"},
	}
	for _, tt := range tests {
		t.Run(tt.version, func(t *testing.T) {
			f := newFakeCOM(t, func(w http.ResponseWriter, r *http.Request) {
				state := "RUNNING"
				if r.Method == http.MethodPatch {
					var p map[string]string
					_ = json.NewDecoder(r.Body).Decode(&p)
					state = p["state"]
				}
				writeJSON(w, 200, `{"id":"j+1","state":"`+state+`"}`)
			})
			c, _ := f.client(t, clientOpts{cfg: func(c *com.Config) { c.APIVersion = tt.version }})
			j, err := c.Get(context.Background(), "j+1")
			if err != nil || j.State != "RUNNING" {
				t.Fatalf("Get = %+v, %v", j, err)
			}
			j, err = c.End(context.Background(), "j+1", "ERROR")
			if err != nil || j.State != "ERROR" {
				t.Fatalf("End = %+v, %v", j, err)
			}
			reqs := f.recorded()
			if reqs[0].Method != "GET" || reqs[0].Path != tt.getPath {
				t.Errorf("get %+v", reqs[0])
			}
			// End always uses the v1 route: the only one documenting PATCH.
			if reqs[1].Method != "PATCH" || reqs[1].Path != "/compute-ops-mgmt/v1/jobs/j+1" ||
				reqs[1].ContentType != "application/merge-patch+json" || reqs[1].Body != `{"state":"ERROR"}` {
				t.Errorf("end %+v", reqs[1])
			}
		})
	}
}

func TestEndRefusesOtherStates(t *testing.T) {
	f := newFakeCOM(t, func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, `{"id":"j"}`) })
	c, _ := f.client(t, clientOpts{})
	for _, st := range []string{"RUNNING", "complete", ""} {
		if _, err := c.End(context.Background(), "j", st); !com.IsRejected(err) {
			t.Errorf("End(%q) = %v, want rejected", st, err)
		}
	}
	if n := len(f.recorded()); n != 0 {
		t.Errorf("%d requests sent", n)
	}
}

// pagedJobs serves n jobs with COM's paging envelope.
func pagedJobs(n int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		var limit, offset int
		fmt.Sscan(q.Get("limit"), &limit)
		fmt.Sscan(q.Get("offset"), &offset)
		if limit == 0 {
			limit = 100
		}
		var items []string
		for i := offset; i < n && i < offset+limit; i++ {
			items = append(items, fmt.Sprintf(`{"id":"job-%03d","state":"COMPLETE"}`, i))
		}
		writeJSON(w, 200, fmt.Sprintf(`{"count":%d,"offset":%d,"total":%d,"items":[%s]}`, len(items), offset, n, strings.Join(items, ",")))
	}
}

func TestListQuery(t *testing.T) {
	f := newFakeCOM(t, pagedJobs(3))
	c, _ := f.client(t, clientOpts{})
	p, err := c.List(context.Background(), com.ListOptions{Filter: "resource/id eq '875765-S01+1M512501AB'", Sort: "updatedAt desc", Select: "id,state", Limit: 2, Offset: 1})
	if err != nil {
		t.Fatal(err)
	}
	if p.Total != 3 || p.Count != 2 || p.Offset != 1 || len(p.Items) != 2 || p.Items[0].ID != "job-001" {
		t.Errorf("page %+v", p)
	}
	q := f.recorded()[0].Query
	for _, want := range []string{"filter=resource%2Fid+eq+%27875765-S01%2B1M512501AB%27", "sort=updatedAt+desc", "select=id%2Cstate", "limit=2", "offset=1"} {
		if !strings.Contains(q, want) {
			t.Errorf("query %q lacks %q", q, want)
		}
	}
	for _, bad := range []com.ListOptions{{Limit: 1001}, {Limit: -1}, {Offset: -1}} {
		if _, err := c.List(context.Background(), bad); !com.IsRejected(err) {
			t.Errorf("List(%+v) = %v, want rejected", bad, err)
		}
	}
}

func TestListAll(t *testing.T) {
	tests := []struct {
		name      string
		jobs      int
		limit     int
		wantCalls int
	}{
		{"several pages ending short", 25, 10, 3},
		{"exact multiple stops at total", 20, 10, 2},
		{"empty", 0, 10, 1},
		{"default page size", 5, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeCOM(t, pagedJobs(tt.jobs))
			c, _ := f.client(t, clientOpts{})
			var ids []string
			err := c.ListAll(context.Background(), com.ListOptions{Limit: tt.limit}, func(j *com.Job) error {
				ids = append(ids, j.ID)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(ids) != tt.jobs {
				t.Errorf("saw %d jobs, want %d", len(ids), tt.jobs)
			}
			for i, id := range ids {
				if want := fmt.Sprintf("job-%03d", i); id != want {
					t.Fatalf("job %d is %s", i, id)
				}
			}
			if n := len(f.recorded()); n != tt.wantCalls {
				t.Errorf("%d calls, want %d", n, tt.wantCalls)
			}
		})
	}
	t.Run("callback error stops the walk", func(t *testing.T) {
		f := newFakeCOM(t, pagedJobs(25))
		c, _ := f.client(t, clientOpts{})
		stop := fmt.Errorf("enough")
		err := c.ListAll(context.Background(), com.ListOptions{Limit: 10}, func(j *com.Job) error { return stop })
		if err == nil || !strings.Contains(err.Error(), "enough") || len(f.recorded()) != 1 {
			t.Fatalf("err %v after %d calls", err, len(f.recorded()))
		}
	})
}

func slogTo(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestReachable(t *testing.T) {
	var refuse atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"access_token":"tok","token_type":"Bearer","expires_in":900}`)
			return
		}
		if refuse.Load() {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"count":0,"offset":0,"total":0,"items":[]}`)
	}))
	defer srv.Close()
	c, err := com.NewClient(com.Config{BaseURL: srv.URL, TokenURL: srv.URL + "/token", ClientID: "id", ClientSecret: "s3cret"}, srv.Client(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.Reachable(); err != nil {
		t.Fatalf("before any call: %v", err)
	}
	if _, err := c.List(ctx, com.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Reachable(); err != nil {
		t.Fatalf("after a good call: %v", err)
	}
	refuse.Store(true)
	if _, err := c.List(ctx, com.ListOptions{}); !com.IsConfig(err) {
		t.Fatalf("403: want a configuration fault, got %v", err)
	}
	if err := c.Reachable(); !com.IsConfig(err) {
		t.Fatalf("after a 403: want the configuration fault, got %v", err)
	}
	refuse.Store(false)
	if _, err := c.List(ctx, com.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Reachable(); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
}

func TestListServerTime(t *testing.T) {
	tests := []struct {
		name string
		date string // "" sends no Date header
		want time.Time
	}{
		{"Date header", "Tue, 03 Jun 2025 10:04:05 GMT", time.Date(2025, 6, 3, 10, 4, 5, 0, time.UTC)},
		{"no Date header", "", time.Time{}},
		{"unparseable Date header", "yesterday", time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeCOM(t, func(w http.ResponseWriter, r *http.Request) {
				// Setting the key to nil keeps net/http from adding its own Date.
				w.Header()["Date"] = nil
				if tt.date != "" {
					w.Header().Set("Date", tt.date)
				}
				writeJSON(w, http.StatusOK, `{"count":0,"offset":0,"total":0,"items":[]}`)
			})
			c, _ := f.client(t, clientOpts{})
			p, err := c.List(context.Background(), com.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !p.ServerTime.Equal(tt.want) {
				t.Errorf("ServerTime %v, want %v", p.ServerTime, tt.want)
			}
		})
	}
}
