package com_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/comjobs/comjobs/com"
)

func okJob(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, `{"id":"j"}`) }

func TestTokenCachedAndRenewedBeforeExpiry(t *testing.T) {
	f := newFakeCOM(t, okJob)
	f.expiresIn.Store(1) // renewed once within a quarter second of expiry
	c, _ := f.client(t, clientOpts{})
	ctx := context.Background()
	for range 3 {
		if _, err := c.Get(ctx, "j"); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.tokenCalls.Load(); n != 1 {
		t.Fatalf("%d token calls for 3 requests, want 1 (cached)", n)
	}
	deadline := time.Now().Add(3 * time.Second)
	for f.tokenCalls.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("token never renewed")
		}
		time.Sleep(50 * time.Millisecond)
		if _, err := c.Get(ctx, "j"); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range f.recorded() {
		if !strings.HasPrefix(r.Auth, "Bearer "+tokenPrefix) {
			t.Fatalf("request without a bearer token: %+v", r)
		}
	}
}

func TestTokenWithoutExpiresInIsNotEternal(t *testing.T) {
	f := newFakeCOM(t, okJob)
	f.expiresIn.Store(0)
	reg := prometheus.NewRegistry()
	c, logs := f.client(t, clientOpts{reg: reg})
	if _, err := c.Get(context.Background(), "j"); err != nil {
		t.Fatal(err)
	}
	// The client says how long it gives the token: the default life.
	if !strings.Contains(logs.String(), "expires_in="+com.DefaultTokenLife.String()) {
		t.Fatalf("token life not the %v default; logs:\n%s", com.DefaultTokenLife, logs)
	}
	if got := metricValues(t, reg)["com_token_renewals_total"]; got != 1 {
		t.Errorf("com_token_renewals_total = %v", got)
	}
}

// metricValues gathers reg into "name{label=value,...}" → value, labels
// sorted by name as Gather returns them; unlabelled series are just "name".
func metricValues(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			var labels []string
			for _, lp := range m.GetLabel() {
				labels = append(labels, lp.GetName()+"="+lp.GetValue())
			}
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			out[key] = value(m)
		}
	}
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return 0
}

func TestUnauthorizedRenewsOnce(t *testing.T) {
	tests := []struct {
		name          string
		refuse        func(auth string) bool // answer 401 to this token
		wantErr       bool
		wantAPICalls  int
		wantTokenCall int32
	}{
		{"expired token renewed and call repeated", func(a string) bool { return a == "Bearer "+tokenPrefix+"1" }, false, 2, 2},
		{"refused twice is a configuration fault", func(string) bool { return true }, true, 2, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeCOM(t, func(w http.ResponseWriter, r *http.Request) {
				if tt.refuse(r.Header.Get("Authorization")) {
					writeJSON(w, 401, `{"httpStatusCode":401,"errorCode":"HPE-GL-401","message":"token expired"}`)
					return
				}
				writeJSON(w, 201, `{"id":"j"}`)
			})
			c, _ := f.client(t, clientOpts{})
			// A POST too: a 401 means COM did nothing, so one repeat is safe.
			_, err := c.Create(context.Background(), com.CreateRequest{TemplateID: "t", ResourceType: com.ResourceServer, ResourceID: "s"})
			if tt.wantErr != (err != nil) || (tt.wantErr && !com.IsConfig(err)) {
				t.Fatalf("err = %v", err)
			}
			if n := len(f.recorded()); n != tt.wantAPICalls {
				t.Errorf("%d API calls, want %d", n, tt.wantAPICalls)
			}
			if n := f.tokenCalls.Load(); n != tt.wantTokenCall {
				t.Errorf("%d token calls, want %d", n, tt.wantTokenCall)
			}
		})
	}
}

func TestTokenEndpointFailures(t *testing.T) {
	tests := []struct {
		name   string
		status int32
		kind   com.Kind
	}{
		{"bad credentials", 401, com.KindConfig},
		{"bad request", 400, com.KindConfig},
		{"endpoint down", 503, com.KindTransient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeCOM(t, okJob)
			f.tokenStatus.Store(tt.status)
			c, _ := f.client(t, clientOpts{cfg: func(c *com.Config) { c.MaxRetries = -1 }})
			_, err := c.Get(context.Background(), "j")
			if com.KindOf(err) != tt.kind {
				t.Fatalf("err = %v, want %v", err, tt.kind)
			}
			if len(f.recorded()) != 0 {
				t.Error("API called without a token")
			}
		})
	}
}

// TestSecretsNeverLeak forces every kind of failure, with a COM and a token
// endpoint that echo credentials back, and checks that neither the client
// secret nor any token appears in an error or in the debug log.
func TestSecretsNeverLeak(t *testing.T) {
	echo := func(status int, contentType string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", contentType)
			w.WriteHeader(status)
			auth := r.Header.Get("Authorization")
			if contentType == "application/json" {
				fmt.Fprintf(w, `{"errorCode":"E-%s","message":"bad token %s secret %s","debugId":"%s"}`, auth, auth, testSecret, auth)
				return
			}
			fmt.Fprintf(w, "<html>%s %s</html>", auth, testSecret)
		}
	}
	tests := []struct {
		name        string
		api         http.HandlerFunc
		tokenStatus int32
	}{
		{"COM error body echoing token", echo(400, "application/json"), 0},
		{"HTML echoing token", echo(502, "text/html"), 0},
		{"401 twice echoing token", echo(401, "application/json"), 0},
		{"404 gateway echoing", echo(404, "text/plain"), 0},
		{"200 garbage echoing", echo(200, "text/html"), 0},
		{"token endpoint echoing the secret", okJob, 401},
		{"token endpoint 500 echoing the secret", okJob, 500},
		{"timeout", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeCOM(t, tt.api)
			f.tokenStatus.Store(tt.tokenStatus)
			c, logs := f.client(t, clientOpts{cfg: func(c *com.Config) { c.Timeout = 100 * time.Millisecond; c.MaxRetries = 1 }})
			ctx := context.Background()
			var errs []error
			_, err := c.Get(ctx, "j")
			errs = append(errs, err)
			_, err = c.Create(ctx, com.CreateRequest{TemplateID: "t", ResourceType: com.ResourceServer, ResourceID: "s"})
			errs = append(errs, err)
			_, err = c.End(ctx, "j", "ERROR")
			errs = append(errs, err)
			errs = append(errs, c.ListAll(ctx, com.ListOptions{}, func(*com.Job) error { return nil }))
			for _, err := range errs {
				if err == nil {
					t.Fatal("no error forced")
				}
				var e *com.Error
				if !errors.As(err, &e) {
					t.Fatalf("%T is not *com.Error", err)
				}
				text := fmt.Sprintf("%v %+v %#v", err, e, e)
				if strings.Contains(text, testSecret) || strings.Contains(text, tokenPrefix) {
					t.Errorf("secret or token in error: %s", text)
				}
			}
			if l := logs.String(); strings.Contains(l, testSecret) || strings.Contains(l, tokenPrefix) {
				t.Errorf("secret or token in logs:\n%s", l)
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	f := newFakeCOM(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("RateLimit-Remaining", "42")
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/jobs") {
			writeJSON(w, 200, `{"count":0,"offset":0,"total":0,"items":[]}`)
			return
		}
		writeJSON(w, 200, `{"id":"875765-S01+1M512501AB"}`)
	})
	reg := prometheus.NewRegistry()
	c, _ := f.client(t, clientOpts{reg: reg})
	// A second client on the same registry shares the collectors.
	c2, _ := f.client(t, clientOpts{reg: reg})
	ctx := context.Background()
	if _, err := c.Get(ctx, "875765-S01+1M512501AB"); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.List(ctx, com.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	got := metricValues(t, reg)
	want := map[string]float64{
		"com_ratelimit_remaining":                                   42,
		"com_requests_total{code=200,method=GET,route=/jobs}":       1,
		"com_requests_total{code=200,method=GET,route=/jobs/{id}}":  1,
		"com_requests_total{code=200,method=POST,route=/token}":     2,
		"com_request_duration_seconds{method=GET,route=/jobs}":      1,
		"com_request_duration_seconds{method=GET,route=/jobs/{id}}": 1,
		"com_request_duration_seconds{method=POST,route=/token}":    2,
		"com_token_renewals_total":                                  2,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("series %v, want %v", got, want)
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if s := mf.String(); strings.Contains(s, "875765") {
			t.Errorf("raw id in metric labels: %s", s)
		}
	}
}
