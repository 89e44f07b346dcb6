package com

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// API versions the client speaks.
const (
	// APIv1 is the current jobs API and the default.
	APIv1 = "v1"
	// APIv1beta3 creates and reads jobs through the seed's v1beta3 routes.
	APIv1beta3 = "v1beta3"
	// APIv1beta2 reads jobs through v1beta2 (no resultCode) and, as the
	// seed describes, creates them through v1beta3.
	APIv1beta2 = "v1beta2"
)

// Defaults of Config.
const (
	DefaultTimeout        = 30 * time.Second
	DefaultMaxRetries     = 3
	DefaultRatePerMinute  = 100
	DefaultRateBurst      = 10
	DefaultRetryBaseDelay = 250 * time.Millisecond
)

// maxBody bounds an answer body (a page of 1000 jobs is a few MB).
const maxBody = 32 << 20

// Config configures a Client. Zero values take the documented defaults.
type Config struct {
	// BaseURL is the COM region, e.g. https://us-west.api.greenlake.hpe.com:
	// an absolute http(s) URL without credentials, query or fragment. Every
	// request URL is this plus a fixed path and path-escaped ids.
	BaseURL string
	// TokenURL is the OAuth2 client-credentials token endpoint (absolute http(s)).
	TokenURL     string
	ClientID     string
	ClientSecret string
	// APIVersion is "v1" (default), "v1beta3" or "v1beta2".
	APIVersion string
	// TenantACID, when set, is sent as the Tenant-Acid header (MSP tenants).
	TenantACID string
	// Timeout bounds each HTTP exchange (token calls included), not the
	// whole of a retried call. Default 30s.
	Timeout time.Duration
	// MaxRetries is how often Get, List and End retry a transient failure.
	// 0 means 3; negative means never. Create is never retried.
	MaxRetries int
	// RetryBaseDelay is the first retry's delay, doubled per retry with
	// jitter and capped at 10s. Default 250ms.
	RetryBaseDelay time.Duration
	// RatePerMinute and RateBurst configure the default in-process limiter
	// (100 a minute, bursts of 10; a negative RatePerMinute means no rate,
	// though 429 pauses still apply). COM's budget is per API client: when
	// several processes share credentials, split it between them here or
	// give every client the same shared Limiter (WithLimiter).
	RatePerMinute int
	RateBurst     int
}

// Option changes an optional part of a Client.
type Option func(*Client)

// WithLimiter makes the client pace its calls through l instead of an
// in-process RateLimiter built from Config.RatePerMinute and RateBurst.
func WithLimiter(l Limiter) Option { return func(c *Client) { c.limiter = l } }

// Client calls the COM jobs API. It is safe for concurrent use. Every method
// returns errors as *Error (use KindOf, IsTransient, IsRejected, IsConfig,
// IsNotFound); none holds a token or the client secret.
type Client struct {
	cfg     Config
	base    string // scheme://host[/path], no trailing slash
	hc      *http.Client
	logger  *slog.Logger
	metrics *metrics
	limiter Limiter
	tokens  *tokenSource

	mu        sync.Mutex
	remaining int
	reset     time.Time
	quotaSeen bool
	// fault is the outcome of the last call when it says COM cannot be
	// used (no answer at all, or a configuration fault); nil after any
	// call COM answered normally.
	fault error
}

// NewClient validates cfg, applies its defaults and returns a Client that
// sends every request (token calls included) through hc. logger may be nil
// (nothing is logged); reg may be nil (metrics go to a private registry).
// The error names the bad Config field.
func NewClient(cfg Config, hc *http.Client, logger *slog.Logger, reg prometheus.Registerer, opts ...Option) (*Client, error) {
	if hc == nil {
		return nil, errors.New("com: NewClient needs an *http.Client")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if cfg.APIVersion == "" {
		cfg.APIVersion = APIv1
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxRetries == 0 {
		cfg.MaxRetries = DefaultMaxRetries
	}
	if cfg.MaxRetries < 0 {
		cfg.MaxRetries = 0
	}
	if cfg.RetryBaseDelay == 0 {
		cfg.RetryBaseDelay = DefaultRetryBaseDelay
	}
	if cfg.RatePerMinute == 0 {
		cfg.RatePerMinute = DefaultRatePerMinute
	}
	if cfg.RateBurst == 0 {
		cfg.RateBurst = DefaultRateBurst
	}
	base, err := checkURL("BaseURL", cfg.BaseURL)
	if err != nil {
		return nil, err
	}
	if _, err := checkURL("TokenURL", cfg.TokenURL); err != nil {
		return nil, err
	}
	switch {
	case cfg.APIVersion != APIv1 && cfg.APIVersion != APIv1beta3 && cfg.APIVersion != APIv1beta2:
		return nil, fmt.Errorf("com: Config.APIVersion %q: want v1, v1beta3 or v1beta2", cfg.APIVersion)
	case cfg.ClientID == "":
		return nil, errors.New("com: Config.ClientID is empty")
	case cfg.ClientSecret == "":
		return nil, errors.New("com: Config.ClientSecret is empty")
	case cfg.Timeout < 0:
		return nil, errors.New("com: Config.Timeout is negative")
	case strings.ContainsAny(cfg.TenantACID, "\r\n"):
		return nil, errors.New("com: Config.TenantACID holds a line break")
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("com: register metrics: %w", err)
	}
	logger = logger.With("component", "com")
	c := &Client{
		cfg:     cfg,
		base:    base,
		hc:      hc,
		logger:  logger,
		metrics: m,
		tokens:  newTokenSource(cfg, hc, logger, m),
	}
	for _, o := range opts {
		o(c)
	}
	if c.limiter == nil {
		c.limiter = NewRateLimiter(cfg.RatePerMinute, cfg.RateBurst)
	}
	return c, nil
}

// checkURL accepts an absolute http(s) URL without userinfo, query or
// fragment and returns it without a trailing slash.
func checkURL(field, raw string) (string, error) {
	u, err := url.Parse(raw)
	switch {
	case raw == "":
		return "", fmt.Errorf("com: Config.%s is empty", field)
	case err != nil:
		return "", fmt.Errorf("com: Config.%s: %w", field, err)
	case u.Scheme != "http" && u.Scheme != "https", u.Host == "":
		return "", fmt.Errorf("com: Config.%s %q: want an absolute http or https URL", field, raw)
	case u.User != nil:
		return "", fmt.Errorf("com: Config.%s: credentials in the URL are refused", field)
	case u.RawQuery != "" || u.Fragment != "" || strings.HasSuffix(raw, "?") || strings.HasSuffix(raw, "#"):
		return "", fmt.Errorf("com: Config.%s %q: query or fragment refused", field, raw)
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// APIVersion returns the API version the client speaks: v1, v1beta3 or v1beta2.
func (c *Client) APIVersion() string { return c.cfg.APIVersion }

// Remaining returns the rate-limit quota COM last reported: calls left and
// when the window resets. ok is false until an answer carried the headers.
func (c *Client) Remaining() (remaining int, reset time.Time, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.remaining, c.reset, c.quotaSeen
}

// createVersion is the version of the create route: v1beta2 has none, so
// it creates through v1beta3.
func (c *Client) createVersion() string {
	if c.cfg.APIVersion == APIv1beta2 {
		return APIv1beta3
	}
	return c.cfg.APIVersion
}

func jobsPath(version string) string { return "/compute-ops-mgmt/" + version + "/jobs" }

func jobPath(version, id string) string { return jobsPath(version) + "/" + url.PathEscape(id) }

// Create creates a job and returns it as COM answered. In v1 it POSTs
// {jobTemplate, resourceType, resourceId, jobParams} to /compute-ops-mgmt/v1/jobs;
// in v1beta3 and v1beta2 it POSTs {jobTemplateUri, resourceUri, data} (URIs
// in the seed's v1beta2 form) to /compute-ops-mgmt/v1beta3/jobs.
//
// Create is never retried (COM has no idempotency key): after a transient
// error the job may or may not exist, and only the caller can find out. The
// one exception is a 401, answered before COM did anything: the token is
// renewed and the POST sent once more. A request with an unsafe template or
// resource id, or an unknown resource type, fails with KindRejected before
// anything is sent.
func (c *Client) Create(ctx context.Context, r CreateRequest) (*Job, error) {
	const op = "create job"
	reject := func(msg string, err error) error {
		return &Error{Kind: KindRejected, Op: op, Message: msg, Err: err}
	}
	if err := ValidID(r.TemplateID); err != nil {
		return nil, reject("bad template id", err)
	}
	if err := ValidID(r.ResourceID); err != nil {
		return nil, reject("bad resource id", err)
	}
	rt, ok := CanonicalResourceType(r.ResourceType)
	if !ok {
		return nil, reject(fmt.Sprintf("unknown resource type %q", printable(r.ResourceType)), nil)
	}
	params := r.Params
	if params == nil {
		params = map[string]any{}
	}
	var payload any
	if c.createVersion() == APIv1 {
		payload = struct {
			JobTemplate  string         `json:"jobTemplate"`
			ResourceType string         `json:"resourceType"`
			ResourceID   string         `json:"resourceId"`
			JobParams    map[string]any `json:"jobParams"`
		}{r.TemplateID, rt, r.ResourceID, params}
	} else {
		payload = struct {
			JobTemplateURI string         `json:"jobTemplateUri"`
			ResourceURI    string         `json:"resourceUri"`
			Data           map[string]any `json:"data"`
		}{"/compute-ops-mgmt/v1beta2/job-templates/" + url.PathEscape(r.TemplateID), ResourceURI(APIv1beta2, rt, r.ResourceID), params}
	}
	body, err := json.Marshal(payload)
	if err != nil {
		return nil, reject("parameters are not JSON", err)
	}
	answer, err := c.do(ctx, call{
		op: op, method: http.MethodPost, route: routeJobs,
		path: jobsPath(c.createVersion()), body: body, contentType: "application/json",
	})
	if err != nil {
		return nil, err
	}
	return c.decodeJob(op, answer)
}

// Get reads one job through the configured version's route. A job COM does
// not know is a KindRejected 404 (IsNotFound). An unsafe id fails with
// KindRejected before anything is sent. Transient failures are retried.
func (c *Client) Get(ctx context.Context, id string) (*Job, error) {
	if err := ValidID(id); err != nil {
		return nil, &Error{Kind: KindRejected, Op: "get job", Message: "bad job id", Err: err}
	}
	op := "get job " + id
	answer, err := c.do(ctx, call{
		op: op, method: http.MethodGet, route: routeJob,
		path: jobPath(c.cfg.APIVersion, id), retry: true,
	})
	if err != nil {
		return nil, err
	}
	return c.decodeJob(op, answer)
}

// List reads one page of jobs through the configured version's route.
// Options outside COM's ranges (Limit 0..1000, Offset >= 0) fail with
// KindRejected before anything is sent. Transient failures are retried.
func (c *Client) List(ctx context.Context, opts ListOptions) (*Page, error) {
	const op = "list jobs"
	if opts.Limit < 0 || opts.Limit > 1000 || opts.Offset < 0 {
		return nil, &Error{Kind: KindRejected, Op: op, Message: fmt.Sprintf("limit %d or offset %d out of range (limit 0..1000, offset >= 0)", opts.Limit, opts.Offset)}
	}
	q := url.Values{}
	if opts.Filter != "" {
		q.Set("filter", opts.Filter)
	}
	if opts.Sort != "" {
		q.Set("sort", opts.Sort)
	}
	if opts.Select != "" {
		q.Set("select", opts.Select)
	}
	if opts.Limit > 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	if opts.Offset > 0 {
		q.Set("offset", strconv.Itoa(opts.Offset))
	}
	var at time.Time
	answer, err := c.do(ctx, call{
		op: op, method: http.MethodGet, route: routeJobs,
		path: jobsPath(c.cfg.APIVersion), query: q, retry: true, serverTime: &at,
	})
	if err != nil {
		return nil, err
	}
	p, err := decodePage(answer)
	if err != nil {
		return nil, &Error{Kind: KindTransient, Op: op, Message: "COM's answer did not decode", Err: err}
	}
	p.ServerTime = at
	return p, nil
}

// ListAllPageSize is the page size ListAll asks for when opts.Limit is 0.
const ListAllPageSize = 1000

// ListAll calls fn for every job matching opts, walking pages by offset
// from opts.Offset until COM's total is reached or a page comes back short
// or empty. It stops at the first error, from COM or from fn (returned
// wrapped). Jobs created or changed during the walk may be seen twice or
// missed, as with any offset paging: sort by a stable key to limit that.
func (c *Client) ListAll(ctx context.Context, opts ListOptions, fn func(*Job) error) error {
	if opts.Limit == 0 {
		opts.Limit = ListAllPageSize
	}
	for {
		if err := ctx.Err(); err != nil {
			return &Error{Kind: KindTransient, Op: "list jobs", Message: "cancelled", Err: err}
		}
		p, err := c.List(ctx, opts)
		if err != nil {
			return err
		}
		for i := range p.Items {
			if err := fn(&p.Items[i]); err != nil {
				return fmt.Errorf("list jobs: %w", err)
			}
		}
		opts.Offset += len(p.Items)
		if len(p.Items) == 0 || len(p.Items) < opts.Limit || (p.Total > 0 && opts.Offset >= p.Total) {
			return nil
		}
	}
}

// End ends a job by hand, setting its state to "ERROR" or "COMPLETE" with a
// merge-patch PATCH, and returns the job as COM answered (or as a following
// Get reads it, if the answer had no body). Only the v1 route documents
// PATCH, so End uses /compute-ops-mgmt/v1/jobs/{id} whatever APIVersion says:
// the sunset v1beta* routes never had it. Any other state, or an unsafe id,
// fails with KindRejected before anything is sent. Transient failures are
// retried (setting a state is idempotent).
func (c *Client) End(ctx context.Context, id, state string) (*Job, error) {
	if err := ValidID(id); err != nil {
		return nil, &Error{Kind: KindRejected, Op: "end job", Message: "bad job id", Err: err}
	}
	op := "end job " + id
	if state != "ERROR" && state != "COMPLETE" {
		return nil, &Error{Kind: KindRejected, Op: op, Message: fmt.Sprintf("state %q: want ERROR or COMPLETE", printable(state))}
	}
	body, _ := json.Marshal(map[string]string{"state": state})
	answer, err := c.do(ctx, call{
		op: op, method: http.MethodPatch, route: routeJob,
		path: jobPath(APIv1, id), body: body, contentType: "application/merge-patch+json", retry: true,
	})
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(answer)) == 0 {
		return c.Get(ctx, id)
	}
	return c.decodeJob(op, answer)
}

func (c *Client) decodeJob(op string, body []byte) (*Job, error) {
	j, err := DecodeJob(body)
	if err != nil {
		return nil, &Error{Kind: KindTransient, Op: op, Message: "COM's answer did not decode: " + describeBody("", body, c.tokens.secrets()...), Err: err}
	}
	return j, nil
}

// call is one logical request.
type call struct {
	op, method, route string
	path              string // escaped, appended to the base URL
	query             url.Values
	body              []byte
	contentType       string
	retry             bool // retry transient failures (never for POST)
	// serverTime, when set, receives the Date header of the 2xx answer
	// (zero when absent or unparseable).
	serverTime *time.Time
}

// maxRetryDelay caps one retry delay.
const maxRetryDelay = 10 * time.Second

// Reachable reports whether COM looked usable on the last call: nil until
// a call fails, nil again after any call COM answered (even with a 4xx
// about the request or a 429), and the error when the last call got no
// answer or hit a configuration fault (401 after renewal, 403, wrong base
// URL). It makes no call itself, so /readyz probes cost no COM quota.
func (c *Client) Reachable() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fault
}

func (c *Client) noteOutcome(err error) {
	var e *Error
	var fault error
	if errors.As(err, &e) && (e.Kind == KindConfig || (e.Kind == KindTransient && e.StatusCode == 0)) {
		fault = err
	}
	if err != nil && errors.Is(err, context.Canceled) {
		return
	}
	c.mu.Lock()
	c.fault = fault
	c.mu.Unlock()
}

// do runs c with its retries and returns the 2xx body.
func (c *Client) do(ctx context.Context, cl call) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		body, err := c.attempt(ctx, cl)
		c.noteOutcome(err)
		if err == nil {
			return body, nil
		}
		if !cl.retry || attempt >= c.cfg.MaxRetries || !IsTransient(err) || ctx.Err() != nil {
			return nil, err
		}
		d := min(c.cfg.RetryBaseDelay<<attempt, maxRetryDelay)
		d = d/2 + rand.N(d) // jitter in [d/2, 3d/2)
		c.logger.WarnContext(ctx, "retrying COM call", "op", cl.op, "attempt", attempt+1, "delay", d, "err", err)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
	}
}

// defaultPause is how long a 429 without any reset header pauses callers.
const defaultPause = time.Second

// attempt makes one call, renewing the token and repeating once on a 401.
func (c *Client) attempt(ctx context.Context, cl call) ([]byte, error) {
	renewed := false
	for {
		if err := c.limiter.Wait(ctx); err != nil {
			return nil, &Error{Kind: KindTransient, Op: cl.op, Message: "waiting for the rate limiter", Err: err}
		}
		tok, err := c.tokens.token(ctx)
		if err != nil {
			var e *Error
			if errors.As(err, &e) {
				e.Op = cl.op + ": " + e.Op
			}
			return nil, err
		}
		resp, body, err := c.send(ctx, cl, tok)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode >= 200 && resp.StatusCode < 300 {
			if cl.serverTime != nil {
				*cl.serverTime, _ = http.ParseTime(resp.Header.Get("Date"))
			}
			return body, nil
		}
		if resp.StatusCode == http.StatusUnauthorized && !renewed {
			renewed = true
			c.logger.InfoContext(ctx, "COM refused the token; renewing it once", "op", cl.op)
			c.tokens.invalidate(ctx, tok)
			continue
		}
		now := time.Now()
		e := classifyResponse(cl.op, resp, body, now, append(c.tokens.secrets(), tok)...)
		if resp.StatusCode == http.StatusTooManyRequests || (e.Kind == KindTransient && e.RetryAfter > 0) {
			pause := e.RetryAfter
			if pause <= 0 {
				pause = defaultPause
			}
			c.limiter.Backoff(now.Add(pause))
			c.logger.WarnContext(ctx, "COM asked callers to wait", "op", cl.op, "status", resp.StatusCode, "pause", pause)
		}
		return nil, e
	}
}

// send makes one HTTP exchange under the per-call timeout and returns the
// answer with its body read and closed. Errors are *Error.
func (c *Client) send(ctx context.Context, cl call, tok string) (*http.Response, []byte, error) {
	callCtx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	u := c.base + cl.path
	if len(cl.query) > 0 {
		u += "?" + cl.query.Encode()
	}
	var rd io.Reader
	if cl.body != nil {
		rd = bytes.NewReader(cl.body)
	}
	req, err := http.NewRequestWithContext(callCtx, cl.method, u, rd)
	if err != nil {
		return nil, nil, &Error{Kind: KindConfig, Op: cl.op, Message: "cannot build the request", Err: err}
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "comjobs")
	if cl.contentType != "" {
		req.Header.Set("Content-Type", cl.contentType)
	}
	if c.cfg.TenantACID != "" {
		req.Header.Set("Tenant-Acid", c.cfg.TenantACID)
	}
	start := time.Now()
	resp, err := c.hc.Do(req)
	if err != nil {
		c.metrics.observe(cl.route, cl.method, "error", time.Since(start))
		kind, msg := classifyTransport(ctx, err)
		c.logger.DebugContext(ctx, "COM call failed", "op", cl.op, "route", cl.route, "method", cl.method, "err", err)
		return nil, nil, &Error{Kind: kind, Op: cl.op, Message: msg, Err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	d := time.Since(start)
	c.metrics.observe(cl.route, cl.method, strconv.Itoa(resp.StatusCode), d)
	c.noteQuota(resp.Header, start)
	c.logger.DebugContext(ctx, "COM call", "op", cl.op, "route", cl.route, "method", cl.method, "status", resp.StatusCode, "duration", d)
	if err != nil {
		kind, msg := classifyTransport(ctx, err)
		return nil, nil, &Error{Kind: kind, Op: cl.op, StatusCode: resp.StatusCode, Message: msg + " while reading the answer", Err: err}
	}
	if len(body) > maxBody {
		return nil, nil, &Error{Kind: KindTransient, Op: cl.op, StatusCode: resp.StatusCode, Message: fmt.Sprintf("answer larger than %d bytes", maxBody)}
	}
	return resp, body, nil
}

// noteQuota records the rate-limit headers of an answer.
func (c *Client) noteQuota(h http.Header, at time.Time) {
	n, ok := remainingHeader(h)
	if !ok {
		return
	}
	c.metrics.remaining.Set(float64(n))
	c.mu.Lock()
	c.remaining, c.reset, c.quotaSeen = n, at.Add(resetIn(h, at)), true
	c.mu.Unlock()
}
