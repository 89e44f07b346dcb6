package comsim

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// Webhook states, as COM spells them.
const (
	WebhookEnabled  = "ENABLED"
	WebhookDisabled = "DISABLED"
)

// maxWebhookFailures is how many failed deliveries in a row disable a
// webhook, as at COM.
const maxWebhookFailures = 10

// Webhook is a registered destination, as the simulator records it.
type Webhook struct {
	ID          string
	Name        string
	Destination string
	State       string // WebhookEnabled or WebhookDisabled
	// StateReason says why a webhook is disabled.
	StateReason string
	EventFilter string
	Headers     map[string]string
	// Verified is true once the destination answered the handshake.
	Verified bool
	// Failures counts failed deliveries in a row; Delivered all successes.
	Failures  int
	Delivered int
}

// webhookEvent is one POST to make.
type webhookEvent struct {
	hookID string
	body   []byte
}

// webhooks registers destinations and delivers job state changes to them
// from one goroutine, started with the first enabled webhook and stopped by
// Server.Close. That goroutine also moves jobs along on a ticker, so events
// flow without anyone polling.
type webhooks struct {
	s       *Server
	client  *http.Client
	shuffle bool

	mu      sync.Mutex
	hooks   map[string]*Webhook
	order   []string
	queue   []webhookEvent
	started bool
	closed  bool
	wake    chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

func newWebhooks(s *Server, opts Options) *webhooks {
	c := opts.HTTPClient
	if c == nil {
		c = &http.Client{Timeout: 5 * time.Second}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &webhooks{
		s: s, client: c, shuffle: opts.ShuffleWebhooks,
		hooks: make(map[string]*Webhook), wake: make(chan struct{}, 1),
		ctx: ctx, cancel: cancel,
	}
}

// jobChanged queues an event for every enabled webhook. Called with the
// store locked; it never blocks.
func (w *webhooks) jobChanged(rec JobRecord) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var body []byte
	for _, id := range w.order {
		h := w.hooks[id]
		if h.State != WebhookEnabled {
			continue
		}
		if body == nil {
			b, err := json.Marshal(renderJob("v1", rec))
			if err != nil {
				return
			}
			body = b
		}
		w.queue = append(w.queue, webhookEvent{hookID: id, body: body})
	}
	if body != nil {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// register records a webhook and, if it is to be enabled, runs the
// verification handshake; a failed handshake leaves it disabled and is
// returned.
func (w *webhooks) register(name, dest, state, filter string, headers map[string]string) (Webhook, error) {
	u, err := url.Parse(dest)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return Webhook{}, fmt.Errorf("destination must be an absolute http(s) URL")
	}
	if state == "" {
		state = WebhookEnabled
	}
	if state != WebhookEnabled && state != WebhookDisabled {
		return Webhook{}, fmt.Errorf("state must be ENABLED or DISABLED, got %q", state)
	}
	h := &Webhook{ID: newID(), Name: name, Destination: dest, State: WebhookDisabled, EventFilter: filter, Headers: maps.Clone(headers)}
	var herr error
	if state == WebhookEnabled {
		if herr = w.handshake(dest, headers); herr == nil {
			h.State, h.Verified = WebhookEnabled, true
		} else {
			h.StateReason = "verification failed: " + herr.Error()
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.hooks[h.ID] = h
	w.order = append(w.order, h.ID)
	if h.State == WebhookEnabled && !w.started && !w.closed {
		w.started = true
		w.wg.Add(1)
		go w.run()
	}
	return w.copyOf(h), herr
}

func (w *webhooks) copyOf(h *Webhook) Webhook {
	c := *h
	c.Headers = maps.Clone(h.Headers)
	return c
}

// handshake does COM's verification: GET the destination with a challenge
// header; it must answer 200 {"verification": "<challenge>"}.
func (w *webhooks) handshake(dest string, headers map[string]string) error {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	challenge := hex.EncodeToString(b)
	ctx, cancel := context.WithTimeout(w.ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, dest, nil)
	if err != nil {
		return fmt.Errorf("build handshake: %w", err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	req.Header.Set("x-compute-ops-mgmt-verification-challenge", challenge)
	resp, err := w.client.Do(req)
	if err != nil {
		return fmt.Errorf("handshake: %w", withoutURL(err))
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("handshake: destination answered %d", resp.StatusCode)
	}
	var ans struct {
		Verification string `json:"verification"`
	}
	if err := json.Unmarshal(body, &ans); err != nil || ans.Verification != challenge {
		return fmt.Errorf("handshake: destination did not echo the challenge")
	}
	return nil
}

// run moves jobs along and delivers events until close.
func (w *webhooks) run() {
	defer w.wg.Done()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-tick.C:
			st := w.s.store
			st.mu.Lock()
			st.advance(w.s.now())
			st.mu.Unlock()
		case <-w.wake:
		}
		w.deliverQueued()
	}
}

func (w *webhooks) deliverQueued() {
	w.mu.Lock()
	batch := w.queue
	w.queue = nil
	w.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	if w.shuffle {
		// Out of order, and now and then twice, as COM does not promise order.
		var out []webhookEvent
		for _, e := range batch {
			out = append(out, e)
			if w.s.faults.float() < 0.25 {
				out = append(out, e)
			}
		}
		for i := len(out) - 1; i > 0; i-- {
			k := int(w.s.faults.float() * float64(i+1))
			out[i], out[k] = out[k], out[i]
		}
		batch = out
	}
	for _, e := range batch {
		if w.ctx.Err() != nil {
			return
		}
		w.mu.Lock()
		h, ok := w.hooks[e.hookID]
		var dest string
		var headers map[string]string
		if ok && h.State == WebhookEnabled {
			dest, headers = h.Destination, maps.Clone(h.Headers)
		}
		w.mu.Unlock()
		if dest == "" {
			continue
		}
		err := w.post(dest, headers, e.body)
		w.mu.Lock()
		if err != nil {
			h.Failures++
			if h.Failures >= maxWebhookFailures {
				h.State, h.StateReason = WebhookDisabled, fmt.Sprintf("%d deliveries failed in a row", h.Failures)
			}
			w.s.logger.Debug("webhook delivery failed", "webhook", h.ID, "err", err)
		} else {
			h.Failures = 0
			h.Delivered++
		}
		w.mu.Unlock()
	}
}

func (w *webhooks) post(dest string, headers map[string]string, body []byte) error {
	ctx, cancel := context.WithTimeout(w.ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, dest, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("build delivery: %w", err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.client.Do(req)
	if err != nil {
		return fmt.Errorf("deliver: %w", withoutURL(err))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("deliver: destination answered %d", resp.StatusCode)
	}
	return nil
}

// withoutURL strips the destination URL from a transport error: it may
// hold a secret, and is never logged.
func withoutURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func (w *webhooks) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.cancel()
	w.wg.Wait()
}

func (w *webhooks) list() []Webhook {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]Webhook, 0, len(w.order))
	for _, id := range w.order {
		out = append(out, w.copyOf(w.hooks[id]))
	}
	return out
}

// RegisterWebhook registers a destination for job state changes, as POST
// /compute-ops-mgmt/v1beta1/webhooks does, handshake included. An error
// means the destination failed the handshake (the webhook is kept,
// disabled) or is not an http(s) URL. Each state change is then POSTed to
// it as the job's full v1 body, with headers added.
func (s *Server) RegisterWebhook(dest string, headers map[string]string) error {
	_, err := s.hooks.register("comsim", dest, WebhookEnabled, "type eq 'compute-ops/job'", headers)
	if err != nil {
		return fmt.Errorf("comsim: register webhook: %w", err)
	}
	return nil
}

// Webhooks lists the registered webhooks in registration order.
func (s *Server) Webhooks() []Webhook { return s.hooks.list() }

// webhookBody is a webhook as the API answers it; header values are not
// echoed (they may hold secrets).
func webhookBody(h Webhook) map[string]any {
	names := make([]string, 0, len(h.Headers))
	for k := range h.Headers {
		names = append(names, k)
	}
	return map[string]any{
		"id": h.ID, "type": "compute-ops-mgmt/webhook",
		"resourceUri": "/compute-ops-mgmt/v1beta1/webhooks/" + h.ID,
		"name":        h.Name, "destination": h.Destination, "state": h.State,
		"stateReason": h.StateReason, "eventFilter": h.EventFilter, "headerNames": names,
	}
}

func (s *Server) handleWebhookCreate(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Name        string            `json:"name"`
		Destination string            `json:"destination"`
		State       string            `json:"state"`
		EventFilter string            `json:"eventFilter"`
		Headers     map[string]string `json:"headers"`
	}
	if err := decodeBody(r, &body); err != nil {
		writeCOMError(w, http.StatusBadRequest, "request body is not a valid webhook: "+err.Error(), nil)
		return
	}
	if body.Name == "" || body.Destination == "" {
		writeCOMError(w, http.StatusBadRequest, "name and destination are required", nil)
		return
	}
	h, err := s.hooks.register(body.Name, body.Destination, body.State, body.EventFilter, body.Headers)
	if h.ID == "" {
		writeCOMError(w, http.StatusBadRequest, err.Error(), nil)
		return
	}
	writeJSON(w, http.StatusCreated, webhookBody(h))
}

func (s *Server) handleWebhookList(w http.ResponseWriter, r *http.Request) {
	hs := s.hooks.list()
	items := make([]any, len(hs))
	for i, h := range hs {
		items[i] = webhookBody(h)
	}
	writeJSON(w, http.StatusOK, map[string]any{"count": len(items), "offset": 0, "total": len(items), "items": items})
}

func (s *Server) handleWebhookGet(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	for _, h := range s.hooks.list() {
		if h.ID == id {
			writeJSON(w, http.StatusOK, webhookBody(h))
			return
		}
	}
	writeCOMError(w, http.StatusNotFound, fmt.Sprintf("webhook %q not found", id), nil)
}

func (s *Server) handleWebhookDelete(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.hooks.mu.Lock()
	_, ok := s.hooks.hooks[id]
	if ok {
		delete(s.hooks.hooks, id)
		for i, x := range s.hooks.order {
			if x == id {
				s.hooks.order = append(s.hooks.order[:i], s.hooks.order[i+1:]...)
				break
			}
		}
	}
	s.hooks.mu.Unlock()
	if !ok {
		writeCOMError(w, http.StatusNotFound, fmt.Sprintf("webhook %q not found", id), nil)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
