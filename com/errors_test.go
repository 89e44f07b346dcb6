package com_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/comjobs/comjobs/com"
)

const comErrorBody = `{"httpStatusCode": %d, "errorCode": "HPE-GL-COMPUTE_OPS-0500001", "message": "resource not usable", "debugId": "dbg-42", "errorDetails": []}`

func TestErrorClassification(t *testing.T) {
	tests := []struct {
		name        string
		status      int
		contentType string
		body        string
		header      map[string]string
		kind        com.Kind
		errorCode   string
		msgHas      string
		retryAfter  time.Duration
		getCalls    int // GET calls made with MaxRetries 2
	}{
		{"400 COM body", 400, "application/json", strings.Replace(comErrorBody, "%d", "400", 1), nil, com.KindRejected, "HPE-GL-COMPUTE_OPS-0500001", "resource not usable", 0, 1},
		{"404 COM body", 404, "application/json", strings.Replace(comErrorBody, "%d", "404", 1), nil, com.KindRejected, "HPE-GL-COMPUTE_OPS-0500001", "", 0, 1},
		{"409 COM body", 409, "application/json", strings.Replace(comErrorBody, "%d", "409", 1), nil, com.KindRejected, "HPE-GL-COMPUTE_OPS-0500001", "", 0, 1},
		{"422 COM body", 422, "application/json", strings.Replace(comErrorBody, "%d", "422", 1), nil, com.KindRejected, "HPE-GL-COMPUTE_OPS-0500001", "", 0, 1},
		{"404 gateway JSON without errorCode", 404, "application/json", `{"message":"no Route matched with those values"}`, nil, com.KindConfig, "", "base URL", 0, 1},
		{"404 HTML", 404, "text/html", "<html><body><h1>404 Not Found</h1></body></html>", nil, com.KindConfig, "", "text/html", 0, 1},
		{"404 empty", 404, "", "", nil, com.KindConfig, "", "empty body", 0, 1},
		{"403", 403, "application/json", strings.Replace(comErrorBody, "%d", "403", 1), nil, com.KindConfig, "HPE-GL-COMPUTE_OPS-0500001", "", 0, 1},
		{"410 sunset route", 410, "text/plain", "gone", nil, com.KindConfig, "", "410", 0, 1},
		{"400 HTML still clear", 400, "text/html", "<html>Bad Request</html>", nil, com.KindRejected, "", "<html>Bad Request</html>", 0, 1},
		{"500 HTML", 500, "text/html", "<html>" + strings.Repeat("x", 500) + "</html>", nil, com.KindTransient, "", "text/html", 0, 3},
		{"502 empty", 502, "", "", nil, com.KindTransient, "", "empty body", 0, 3},
		{"503 COM body", 503, "application/json", strings.Replace(comErrorBody, "%d", "503", 1), nil, com.KindTransient, "HPE-GL-COMPUTE_OPS-0500001", "", 0, 3},
		{"429 ratelimit-reset", 429, "application/json", `{"message":"Too many requests"}`, map[string]string{"ratelimit-reset": "0.05", "ratelimit-remaining": "0"}, com.KindTransient, "", "", 50 * time.Millisecond, 3},
		{"429 X-RateLimit-Reset upper case", 429, "", "", map[string]string{"X-RATELIMIT-RESET": "0.05"}, com.KindTransient, "", "", 50 * time.Millisecond, 3},
		{"500 with the window's ratelimit-reset is no pause", 500, "", "", map[string]string{"ratelimit-reset": "45", "ratelimit-remaining": "80"}, com.KindTransient, "", "", 0, 3},
		{"503 Retry-After is honoured", 503, "", "", map[string]string{"Retry-After": "0.02", "ratelimit-reset": "45"}, com.KindTransient, "", "", 20 * time.Millisecond, 3},
		{"429 Retry-After wins", 429, "", "", map[string]string{"Retry-After": "0.02", "ratelimit-reset": "9"}, com.KindTransient, "", "", 20 * time.Millisecond, 3},
		{"body with control characters", 400, "text/plain", "line1\r\nX-Evil: 1\x00\x1b[31m", nil, com.KindRejected, "", "line1  X-Evil: 1", 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeCOM(t, func(w http.ResponseWriter, r *http.Request) {
				for k, v := range tt.header {
					w.Header()[k] = []string{v} // exact case on the wire
				}
				if tt.contentType != "" {
					w.Header().Set("Content-Type", tt.contentType)
				}
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			})
			c, _ := f.client(t, clientOpts{cfg: func(c *com.Config) { c.MaxRetries = 2 }})
			_, err := c.Get(context.Background(), "job-1")
			var e *com.Error
			if !errors.As(err, &e) {
				t.Fatalf("err %T %v is not *com.Error", err, err)
			}
			if e.Kind != tt.kind || e.StatusCode != tt.status || e.ErrorCode != tt.errorCode || !strings.Contains(e.Error(), tt.msgHas) {
				t.Errorf("got %s (kind %v, code %q)", e, e.Kind, e.ErrorCode)
			}
			if tt.errorCode != "" && e.DebugID != "dbg-42" {
				t.Errorf("debugId %q", e.DebugID)
			}
			if e.RetryAfter != tt.retryAfter {
				t.Errorf("RetryAfter %v, want %v", e.RetryAfter, tt.retryAfter)
			}
			if len(e.Message) > 260 {
				t.Errorf("message not truncated: %d bytes", len(e.Message))
			}
			if strings.ContainsAny(e.Error(), "\r\n\x00\x1b") {
				t.Errorf("control characters in %q", e.Error())
			}
			if n := len(f.recorded()); n != tt.getCalls {
				t.Errorf("GET made %d calls, want %d", n, tt.getCalls)
			}
			if com.IsNotFound(err) != (tt.status == 404 && tt.kind == com.KindRejected) {
				t.Errorf("IsNotFound = %v", com.IsNotFound(err))
			}
		})
	}
}

func TestCreateIsNeverRetried(t *testing.T) {
	tests := []struct {
		name string
		api  http.HandlerFunc
	}{
		{"503", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 503, `{}`) }},
		{"429", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "0.01")
			w.WriteHeader(429)
		}},
		{"connection dropped", hangUp},
		{"timeout", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }},
		{"201 with HTML", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(201); io.WriteString(w, "<html>ok</html>") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeCOM(t, tt.api)
			c, _ := f.client(t, clientOpts{cfg: func(c *com.Config) { c.Timeout = 100 * time.Millisecond }})
			_, err := c.Create(context.Background(), com.CreateRequest{TemplateID: "t", ResourceType: com.ResourceServer, ResourceID: "s"})
			if !com.IsTransient(err) {
				t.Fatalf("err %v, want transient", err)
			}
			if n := len(f.recorded()); n != 1 {
				t.Fatalf("POST sent %d times", n)
			}
		})
	}
}

// hangUp drops the connection without an answer.
func hangUp(w http.ResponseWriter, r *http.Request) {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err == nil {
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.SetLinger(0) // RST, not FIN
		}
		conn.Close()
	}
}

func TestTransportFailures(t *testing.T) {
	tests := []struct {
		name   string
		api    http.HandlerFunc
		msgHas string
	}{
		{"timeout", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }, "timed out"},
		{"reset", hangUp, ""},
		{"truncated body", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "100")
			w.WriteHeader(200)
			io.WriteString(w, `{"id":`)
			w.(http.Flusher).Flush()
			hangUp(w, r)
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeCOM(t, tt.api)
			c, _ := f.client(t, clientOpts{cfg: func(c *com.Config) { c.Timeout = 100 * time.Millisecond; c.MaxRetries = 1 }})
			_, err := c.Get(context.Background(), "job-1")
			if !com.IsTransient(err) || !strings.Contains(err.Error(), tt.msgHas) {
				t.Fatalf("err %v, want transient containing %q", err, tt.msgHas)
			}
			// net/http itself may resend a GET once on a reused connection
			// that dies before answering; the client adds one retry.
			if n := len(f.recorded()); n < 2 || n > 4 {
				t.Errorf("GET sent %d times, want 2 (one retry, maybe doubled by net/http)", n)
			}
		})
	}
	t.Run("nothing listening", func(t *testing.T) {
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := l.Addr().String()
		l.Close()
		f := newFakeCOM(t, nil)
		c, err := com.NewClient(com.Config{BaseURL: "http://" + addr, TokenURL: f.srv.URL + "/token", ClientID: testClientID, ClientSecret: testSecret,
			MaxRetries: -1}, f.srv.Client(), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Get(context.Background(), "j"); !com.IsTransient(err) {
			t.Fatalf("err %v, want transient", err)
		}
	})
	t.Run("caller cancels", func(t *testing.T) {
		f := newFakeCOM(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
		c, _ := f.client(t, clientOpts{})
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			for len(f.recorded()) == 0 {
				time.Sleep(time.Millisecond)
			}
			cancel()
		}()
		_, err := c.Get(ctx, "j")
		if !errors.Is(err, context.Canceled) || len(f.recorded()) != 1 {
			t.Fatalf("err %v after %d calls; want context.Canceled and no retry", err, len(f.recorded()))
		}
	})
}

func TestRefusedIDs(t *testing.T) {
	bad := []string{"", "../../jobs", "a/b", "a%2Fb", "a%2fb", "..", "a?x=1", "a#f", "https://attacker.example.org/x", "a\x00", "a\nb", `a\b`, "a b"}
	f := newFakeCOM(t, func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, `{"id":"x"}`) })
	c, _ := f.client(t, clientOpts{})
	ctx := context.Background()
	for _, id := range bad {
		t.Run(id, func(t *testing.T) {
			calls := map[string]func() error{
				"get": func() error { _, err := c.Get(ctx, id); return err },
				"end": func() error { _, err := c.End(ctx, id, "ERROR"); return err },
				"create resource": func() error {
					_, err := c.Create(ctx, com.CreateRequest{TemplateID: "t", ResourceType: com.ResourceServer, ResourceID: id})
					return err
				},
				"create template": func() error {
					_, err := c.Create(ctx, com.CreateRequest{TemplateID: id, ResourceType: com.ResourceServer, ResourceID: "s"})
					return err
				},
			}
			for name, call := range calls {
				if err := call(); !com.IsRejected(err) {
					t.Errorf("%s: err %v, want rejected", name, err)
				}
			}
		})
	}
	if _, err := c.Create(ctx, com.CreateRequest{TemplateID: "t", ResourceType: "compute-ops-mgmt/job", ResourceID: "s"}); !com.IsRejected(err) {
		t.Errorf("unknown resource type: %v", err)
	}
	if n := len(f.recorded()); n != 0 {
		t.Fatalf("%d requests reached COM", n)
	}
	if f.tokenCalls.Load() != 0 {
		t.Fatalf("token fetched for refused requests")
	}
}

func TestRateLimitPacing(t *testing.T) {
	var calls atomic.Int32
	var first429 atomic.Int64
	f := newFakeCOM(t, func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			first429.Store(time.Now().UnixNano())
			w.Header().Set("ratelimit-remaining", "0")
			w.Header().Set("ratelimit-reset", "0.3")
			writeJSON(w, 429, `{"message":"Too many requests"}`)
			return
		}
		w.Header().Set("x-ratelimit-remaining", "99")
		w.Header().Set("x-ratelimit-reset", "60")
		writeJSON(w, 200, `{"id":"j"}`)
	})
	limiter := com.NewRateLimiter(0, 1)
	c1, _ := f.client(t, clientOpts{opts: []com.Option{com.WithLimiter(limiter)}, cfg: func(c *com.Config) { c.MaxRetries = -1 }})
	c2, _ := f.client(t, clientOpts{opts: []com.Option{com.WithLimiter(limiter)}})
	if _, err := c1.Get(context.Background(), "j"); !com.IsTransient(err) {
		t.Fatalf("first call: %v", err)
	}
	if rem, _, ok := c1.Remaining(); !ok || rem != 0 {
		t.Errorf("Remaining = %d, %v", rem, ok)
	}
	// Another client sharing the limiter must wait out the reset.
	if _, err := c2.Get(context.Background(), "j"); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(time.Unix(0, first429.Load())); waited < 300*time.Millisecond {
		t.Errorf("second call came %v after the 429, before its reset", waited)
	}
	rem, reset, ok := c2.Remaining()
	if !ok || rem != 99 || time.Until(reset) < 50*time.Second {
		t.Errorf("Remaining = %d, %v, %v", rem, reset, ok)
	}
}

func TestRateLimiterBackoff(t *testing.T) {
	l := com.NewRateLimiter(0, 1)
	until := time.Now().Add(50 * time.Millisecond)
	l.Backoff(until)
	l.Backoff(time.Now()) // an earlier time does not shorten the pause
	if err := l.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if time.Now().Before(until) {
		t.Fatal("Wait returned before the backoff ended")
	}
	l.Backoff(time.Now().Add(time.Hour))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := l.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait = %v, want the context's error", err)
	}
}
