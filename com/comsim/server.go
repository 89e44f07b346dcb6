// Package comsim is a simulator of HPE Compute Ops Management's jobs API,
// faithful enough that passing against it means something (think LocalStack
// for COM). Nobody can test against the real COM in CI; this is what
// comjobs' tests, demo and `comjobs sim` talk to instead. It is used like
// net/http/httptest:
//
//	sim := comsim.NewServer(comsim.Options{})
//	defer sim.Close()
//	// base URL sim.URL(), token URL sim.TokenURL(), credentials
//	// sim.ClientID() / sim.ClientSecret().
//
// Routes (all under the base URL):
//
//	POST /token (also /authorization/v2/oauth2/{workspace}/token, /as/token.oauth2)
//	POST, GET  /compute-ops-mgmt/v1/jobs          GET, PATCH /compute-ops-mgmt/v1/jobs/{id}
//	POST, GET  /compute-ops-mgmt/v1beta3/jobs     GET /compute-ops-mgmt/v1beta3/jobs/{id}
//	GET        /compute-ops-mgmt/v1beta2/jobs     GET /compute-ops-mgmt/v1beta2/jobs/{id}
//	POST, GET  /compute-ops-mgmt/v1beta1/webhooks GET, DELETE /compute-ops-mgmt/v1beta1/webhooks/{id}
//
// Anything else answers a bare 404 (no COM body), as a wrong base URL would.
// API answers carry ratelimit-limit/-remaining/-reset headers; a missing,
// unknown or expired bearer token gets 401; Tenant-Acid is accepted.
// Refusals carry COM's error body {httpStatusCode, errorCode
// "HPE-GL-COMPUTE_OPS-0<status>001", message, debugId, errorDetails}:
// 400 for bad JSON, an unknown template id, a resource type the template
// does not take, parameters that fail the template's JSON Schema (the
// message names the field), a bad filter, sort, offset or limit (0..1000);
// 404 for an unknown resource or job; 409 for PATCH on an ended job.
//
// Jobs move PENDING → RUNNING → COMPLETE/SUCCESS on the Timing given,
// lazily: every call first applies the steps that are due, each stamped
// with the time it was due, so state does not depend on who looked when.
// Every change bumps generation by one and moves updatedAt (microseconds,
// strictly increasing across all jobs, so "updatedAt gt <last seen>" never
// misses a change). A job waits in PENDING (status "Queued behind other
// running jobs") while another job is RUNNING or STALLED on its resource. A
// group job runs a child job per device (its "devices" parameter, which must
// name members, or every member of the group), each a job of the same
// template on that server with parentJobId set; the group job ends
// COMPLETE after its last child, FAILURE if any child failed or was
// deleted.
//
// Scenarios need no code: a job on a resource whose id contains STALL ends
// STALLED (until PATCHed), FAIL ends COMPLETE/FAILURE, ERROR ends
// ERROR/FAILURE, APPROVAL waits in APPROVAL_PENDING before it runs.
// DefaultInventory has such servers (ServerStall, ServerFail, ServerError,
// ServerApproval). Script and ScriptJob set any path; SetState and DeleteJob
// drive jobs by hand.
//
// Lists answer {count, offset, total, items} in creation order unless a
// sort is given; the default page is DefaultListLimit; select is accepted
// and ignored (bodies are whole). PATCH {"state":"ERROR"|"COMPLETE"} ends a
// job with resultCode FAILURE or SUCCESS respectively (or the resultCode
// the body names).
//
// The simulator shares no code with the client in package com; it imports
// only com's template catalog, which describes COM rather than the client.
package comsim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"time"
)

// Default credentials of the token endpoint.
const (
	DefaultClientID     = "comsim-client"
	DefaultClientSecret = "comsim-secret"
)

// Timing sets how long jobs spend in each state. Zero fields take the
// defaults (fast, so a demo finishes in seconds); use a tiny duration such
// as time.Nanosecond for "at once".
type Timing struct {
	PendingFor  time.Duration // default 200ms
	RunFor      time.Duration // default 500ms
	ApprovalFor time.Duration // APPROVAL scenario; default 1s
}

func (t Timing) withDefaults() Timing {
	if t.PendingFor <= 0 {
		t.PendingFor = 200 * time.Millisecond
	}
	if t.RunFor <= 0 {
		t.RunFor = 500 * time.Millisecond
	}
	if t.ApprovalFor <= 0 {
		t.ApprovalFor = time.Second
	}
	return t
}

// Options configure a Server. The zero value is a working simulator.
type Options struct {
	Inventory *Inventory // nil: DefaultInventory()
	Timing    Timing
	Faults    Faults
	// Seed seeds every random draw (faults, webhook shuffling).
	Seed int64
	// TokenLifetime is the life of issued tokens (expires_in); default 15m,
	// as GreenLake's.
	TokenLifetime time.Duration
	// ClientID and ClientSecret are the accepted credentials; defaults
	// DefaultClientID and DefaultClientSecret.
	ClientID, ClientSecret string
	// ListLag hides a new job from list results for this long (GET by id
	// sees it at once), as real list endpoints lag.
	ListLag time.Duration
	// Clock replaces time.Now for job times, token expiry and rate windows.
	Clock func() time.Time
	// ShuffleWebhooks delivers webhook events out of order and now and then
	// twice, as COM may.
	ShuffleWebhooks bool
	// HTTPClient sends webhook calls; default a client with a 5s timeout.
	HTTPClient *http.Client
	Logger     *slog.Logger
}

// Server is the simulator. It is an http.Handler; NewServer also listens.
// All methods are safe for concurrent use.
type Server struct {
	logger       *slog.Logger
	clock        func() time.Time
	inv          *Inventory
	store        *store
	tokens       *tokens
	faults       *faults
	hooks        *webhooks
	tokenLife    time.Duration
	clientID     string
	clientSecret string
	listLag      time.Duration
	mux          *http.ServeMux
	schemas      sync.Map // template id → *jsonschema.Schema

	callsMu sync.Mutex
	calls   map[string]int
	callsV  map[string]int

	// Set by NewServer / Serve.
	mu      sync.Mutex
	url     string
	httpSrv *http.Server
	serveWG sync.WaitGroup
}

var _ http.Handler = (*Server)(nil)

// New returns a simulator that serves on whatever listener its caller uses.
// Call Close when done: it stops the webhook goroutines.
func New(opts Options) *Server {
	s := &Server{
		logger:       opts.Logger,
		clock:        opts.Clock,
		inv:          opts.Inventory,
		tokens:       newTokens(),
		faults:       newFaults(opts.Faults, opts.Seed),
		tokenLife:    opts.TokenLifetime,
		clientID:     opts.ClientID,
		clientSecret: opts.ClientSecret,
		listLag:      opts.ListLag,
		mux:          http.NewServeMux(),
		calls:        make(map[string]int),
		callsV:       make(map[string]int),
	}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	s.logger = s.logger.With("component", "comsim")
	if s.clock == nil {
		s.clock = time.Now
	}
	if s.inv == nil {
		s.inv = DefaultInventory()
	}
	if s.tokenLife <= 0 {
		s.tokenLife = 15 * time.Minute
	}
	if s.clientID == "" {
		s.clientID = DefaultClientID
	}
	if s.clientSecret == "" {
		s.clientSecret = DefaultClientSecret
	}
	s.store = newStore(opts.Timing.withDefaults(), s.inv)
	s.hooks = newWebhooks(s, opts)
	s.store.onChange = s.hooks.jobChanged
	s.routes()
	return s
}

// NewServer returns a simulator listening on a random port of 127.0.0.1,
// like httptest.NewServer. Close stops it.
func NewServer(opts Options) *Server {
	s := New(opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(fmt.Sprintf("comsim: listen: %v", err))
	}
	s.start(ln)
	return s
}

// start serves on ln in an owned goroutine; the channel gets Serve's
// error (nil after Close or Shutdown) when it returns.
func (s *Server) start(ln net.Listener) (*http.Server, <-chan error) {
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	s.mu.Lock()
	s.url = "http://" + ln.Addr().String()
	s.httpSrv = srv
	s.mu.Unlock()
	done := make(chan error, 1)
	s.serveWG.Add(1)
	go func() {
		defer s.serveWG.Done()
		err := srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		if err != nil {
			s.logger.Error("serve", "err", err)
		}
		done <- err
	}()
	return srv, done
}

// Serve serves on ln until ctx ends, then shuts down (waiting up to 5s for
// calls in flight) and stops the webhook goroutines. URL is valid once it
// has been called. It returns early with the error if serving fails.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv, done := s.start(ln)
	select {
	case err := <-done:
		s.Close()
		if err != nil {
			return fmt.Errorf("comsim: serve: %w", err)
		}
		return nil
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	s.Close()
	if err != nil {
		return fmt.Errorf("comsim: shutdown: %w", err)
	}
	return nil
}

// ListenAndServe listens on addr (e.g. "127.0.0.1:8080" or ":0") and serves
// until ctx ends; see Serve.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("comsim: listen on %s: %w", addr, err)
	}
	return s.Serve(ctx, ln)
}

// URL is the base URL of the API (the COM region URL), "" before the server
// listens.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.url
}

// TokenURL is the URL of the token endpoint.
func (s *Server) TokenURL() string { return s.URL() + "/token" }

// Close stops listening (if it does), drops open connections and stops the
// webhook goroutines, waiting for them. It may be called more than once.
func (s *Server) Close() {
	s.mu.Lock()
	srv := s.httpSrv
	s.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
	s.serveWG.Wait()
	s.hooks.close()
}

// Inventory returns the simulator's inventory (live: changes apply).
func (s *Server) Inventory() *Inventory { return s.inv }

// SetFaults replaces the faults from the next call on (the rate window and
// the random sequence go on).
func (s *Server) SetFaults(f Faults) { s.faults.set(f) }

func (s *Server) now() time.Time { return s.clock() }

// route is one API route: its counting key and API version.
type route struct {
	key     string // e.g. "GET /jobs/{id}"
	version string // e.g. "v1beta3"; "" for the token endpoint
}

// routes registers every route. Paths not registered answer a plain 404
// with no COM body, as a wrong base URL would.
func (s *Server) routes() {
	tok := func(pattern string) {
		s.mux.Handle(pattern, s.counted(route{key: "POST /token"}, http.HandlerFunc(s.handleToken)))
	}
	tok("POST /token")
	tok("POST /authorization/v2/oauth2/{workspace}/token")
	tok("POST /as/token.oauth2")
	api := func(method, version, path string, h http.HandlerFunc) {
		r := route{key: method + " " + path, version: version}
		s.mux.Handle(method+" /compute-ops-mgmt/"+version+path, s.counted(r, s.api(r, h)))
	}
	for _, v := range []string{"v1", "v1beta3"} {
		api("POST", v, "/jobs", s.handleCreate(v))
	}
	for _, v := range []string{"v1", "v1beta3", "v1beta2"} {
		api("GET", v, "/jobs", s.handleList(v))
		api("GET", v, "/jobs/{id}", s.handleGet(v))
	}
	api("PATCH", "v1", "/jobs/{id}", s.handlePatch)
	api("POST", "v1beta1", "/webhooks", s.handleWebhookCreate)
	api("GET", "v1beta1", "/webhooks", s.handleWebhookList)
	api("GET", "v1beta1", "/webhooks/{id}", s.handleWebhookGet)
	api("DELETE", "v1beta1", "/webhooks/{id}", s.handleWebhookDelete)
}

// ServeHTTP serves the simulator's routes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if _, pattern := s.mux.Handler(r); pattern == "" {
		s.count(route{key: "unknown"})
	}
	s.mux.ServeHTTP(w, r)
}

func (s *Server) counted(rt route, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.count(rt)
		s.logger.Debug("call", "route", rt.key, "version", rt.version)
		h.ServeHTTP(w, r)
	})
}

func (s *Server) count(rt route) {
	s.callsMu.Lock()
	defer s.callsMu.Unlock()
	s.calls[rt.key]++
	if rt.version != "" {
		s.callsV[rt.version+" "+rt.key]++
	}
}

// Calls returns how many calls a route got since the start or ResetCalls.
// Routes are counted whatever the API version, by method and path
// template: "POST /jobs", "GET /jobs", "GET /jobs/{id}", "PATCH /jobs/{id}",
// "POST /token", "POST /webhooks", ...; "unknown" counts calls to paths
// the simulator does not serve. Faulted calls count: they were made.
func (s *Server) Calls(route string) int {
	s.callsMu.Lock()
	defer s.callsMu.Unlock()
	return s.calls[route]
}

// CallCounts returns a copy of every count Calls reports.
func (s *Server) CallCounts() map[string]int {
	s.callsMu.Lock()
	defer s.callsMu.Unlock()
	out := make(map[string]int, len(s.calls))
	for k, v := range s.calls {
		out[k] = v
	}
	return out
}

// CallCountsByVersion returns the API calls counted per version, keyed
// like "v1beta3 GET /jobs/{id}" (the token endpoint is not in it). The
// values sum to the API part of CallCounts.
func (s *Server) CallCountsByVersion() map[string]int {
	s.callsMu.Lock()
	defer s.callsMu.Unlock()
	out := make(map[string]int, len(s.callsV))
	for k, v := range s.callsV {
		out[k] = v
	}
	return out
}

// ResetCalls sets every count to zero.
func (s *Server) ResetCalls() {
	s.callsMu.Lock()
	defer s.callsMu.Unlock()
	clear(s.calls)
	clear(s.callsV)
}

// api wraps an API route: rate-limit headers and budget, faults, bearer
// check. Tenant-Acid is accepted and ignored.
func (s *Server) api(rt route, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		fk, delay, rs := s.faults.draw(s.now())
		hd := w.Header()
		hd.Set("ratelimit-limit", strconv.Itoa(rs.limit))
		hd.Set("ratelimit-remaining", strconv.Itoa(rs.remaining))
		hd.Set("ratelimit-reset", strconv.Itoa(int((rs.reset+time.Second-1)/time.Second)))
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
		switch fk {
		case fault429:
			writeCOMError(w, http.StatusTooManyRequests, "API rate limit exceeded", nil)
			return
		case fault500:
			writeCOMError(w, http.StatusInternalServerError, "internal server error", nil)
			return
		case fault502:
			hd.Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusBadGateway)
			_, _ = w.Write([]byte("<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>\n"))
			return
		case fault503:
			writeCOMError(w, http.StatusServiceUnavailable, "service temporarily unavailable", nil)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
		serve := func(w http.ResponseWriter) {
			if !s.authorized(r) {
				writeCOMError(w, http.StatusUnauthorized, "missing, invalid or expired bearer token", nil)
				return
			}
			h(w, r)
		}
		if fk == faultDrop {
			// The call takes effect; its answer is lost with the connection.
			serve(httptest.NewRecorder())
			if hj, ok := w.(http.Hijacker); ok {
				if conn, _, err := hj.Hijack(); err == nil {
					_ = conn.Close()
					return
				}
			}
			panic(http.ErrAbortHandler)
		}
		serve(w)
	}
}

// comError is COM's error body.
type comError struct {
	HTTPStatusCode int    `json:"httpStatusCode"`
	ErrorCode      string `json:"errorCode"`
	Message        string `json:"message"`
	DebugID        string `json:"debugId"`
	ErrorDetails   []any  `json:"errorDetails"`
}

// errorCode is the COM error code the simulator gives a status.
func errorCode(status int) string { return fmt.Sprintf("HPE-GL-COMPUTE_OPS-0%d001", status) }

func writeCOMError(w http.ResponseWriter, status int, msg string, details []any) {
	if details == nil {
		details = []any{}
	}
	writeJSON(w, status, comError{
		HTTPStatusCode: status,
		ErrorCode:      errorCode(status),
		Message:        msg,
		DebugID:        newID(),
		ErrorDetails:   details,
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encode: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
