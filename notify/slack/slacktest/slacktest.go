// Package slacktest is a recording Slack Web API server for tests, in the
// manner of net/http/httptest: it listens on 127.0.0.1, speaks
// chat.postMessage, chat.update, conversations.history,
// conversations.replies, auth.test and an incoming-webhook path the way
// Slack does (form or JSON bodies, {"ok":false,"error":...} answers, 429
// with Retry-After), and records every message it accepted.
//
// It refuses what Slack refuses: unknown tokens (invalid_auth), unknown
// channels (channel_not_found), over-limit blocks (invalid_blocks,
// msg_too_long), and more than one message per second per channel (429,
// error "ratelimited"), plus a configurable share of random 429s.
package slacktest

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Options configure a Server. Zero values take the defaults.
type Options struct {
	// Tokens are the valid bot tokens (default {"xoxb-test-token"}).
	Tokens []string
	// Channels are the known channels, by name ("#ops" or "ops") or id
	// ("C0123"); each gets an id (default {"#general"}).
	Channels []string
	// WebhookPath is the incoming webhook's path (default
	// "/services/T000/B000/XXXXSECRET").
	WebhookPath string
	// WebhookChannel is where webhook posts land (default the first channel).
	WebhookChannel string
	// MinInterval is the least time between two messages to one channel
	// (default 950ms: Slack's one per second, less some network jitter;
	// negative disables the check).
	MinInterval time.Duration
	// Rate429 is the share of posts answered 429 at random; Seed seeds it.
	Rate429 float64
	Seed    uint64
}

// Message is a message the server accepted.
type Message struct {
	Channel  string // channel id
	TS       string
	ThreadTS string
	Text     string
	Blocks   json.RawMessage
	Metadata *Metadata
	Webhook  bool
}

// Metadata is a message's metadata as posted.
type Metadata struct {
	EventType    string         `json:"event_type"`
	EventPayload map[string]any `json:"event_payload"`
}

// Update is an accepted chat.update.
type Update struct {
	Channel, TS, Text string
	Blocks            json.RawMessage
}

// Server is the test server. Its methods are safe for concurrent use.
type Server struct {
	opts Options
	srv  *http.Server
	ln   net.Listener

	mu       sync.Mutex
	tokens   map[string]bool
	ids      map[string]string // name or id -> id
	last     map[string]time.Time
	rnd      *rand.Rand
	seq      int64
	messages []Message
	updates  []Update
	calls    map[string]int
}

// NewServer starts a server on 127.0.0.1:0. Close it when done.
func NewServer(opts Options) *Server {
	if len(opts.Tokens) == 0 {
		opts.Tokens = []string{"xoxb-test-token"}
	}
	if len(opts.Channels) == 0 {
		opts.Channels = []string{"#general"}
	}
	if opts.WebhookPath == "" {
		opts.WebhookPath = "/services/T000/B000/XXXXSECRET"
	}
	if opts.MinInterval == 0 {
		opts.MinInterval = 950 * time.Millisecond
	}
	s := &Server{
		opts: opts, tokens: map[string]bool{}, ids: map[string]string{}, last: map[string]time.Time{},
		rnd: rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x5eed)), calls: map[string]int{},
	}
	for _, t := range opts.Tokens {
		s.tokens[t] = true
	}
	for i, c := range opts.Channels {
		name := strings.TrimPrefix(c, "#")
		id := name
		if !isID(name) {
			id = fmt.Sprintf("C%08d", i+1)
		}
		s.ids[name], s.ids["#"+name], s.ids[id] = id, id, id
	}
	if s.opts.WebhookChannel == "" {
		s.opts.WebhookChannel = opts.Channels[0]
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(fmt.Sprintf("slacktest: listen: %v", err))
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/api/{method}", s.api)
	mux.HandleFunc(opts.WebhookPath, s.webhook)
	s.ln = ln
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return s
}

func isID(s string) bool {
	if len(s) < 2 || (s[0] != 'C' && s[0] != 'G' && s[0] != 'D') {
		return false
	}
	for _, r := range s[1:] {
		if !(r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// URL is the Web API base, like https://slack.com/api/ (with the slash).
func (s *Server) URL() string { return "http://" + s.ln.Addr().String() + "/api/" }

// WebhookURL is the incoming webhook's URL.
func (s *Server) WebhookURL() string { return "http://" + s.ln.Addr().String() + s.opts.WebhookPath }

// ChannelID returns the id of a known channel name or id ("" if unknown).
func (s *Server) ChannelID(nameOrID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ids[nameOrID]
}

// Close stops the server.
func (s *Server) Close() { _ = s.srv.Close() }

// SetRate429 changes the share of random 429 answers.
func (s *Server) SetRate429(r float64) {
	s.mu.Lock()
	s.opts.Rate429 = r
	s.mu.Unlock()
}

// SetTokens replaces the valid tokens (revoke or restore one).
func (s *Server) SetTokens(tokens ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens = map[string]bool{}
	for _, t := range tokens {
		s.tokens[t] = true
	}
}

// Messages returns the accepted messages (bot and webhook) in order.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// Webhooks returns the messages accepted through the incoming webhook.
func (s *Server) Webhooks() []Message {
	var out []Message
	for _, m := range s.Messages() {
		if m.Webhook {
			out = append(out, m)
		}
	}
	return out
}

// Updates returns the accepted chat.update calls in order.
func (s *Server) Updates() []Update {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Update(nil), s.updates...)
}

// Calls returns how often each method was called (any answer), e.g.
// Calls()["chat.postMessage"], and "webhook".
func (s *Server) Calls() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for k, v := range s.calls {
		out[k] = v
	}
	return out
}

// params reads form or JSON bodies (and the query) into one map; JSON
// values that are not strings are kept as their JSON text.
func params(r *http.Request) (url.Values, error) {
	v := url.Values{}
	for k, vs := range r.URL.Query() {
		v[k] = vs
	}
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	body, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	if err != nil {
		return nil, err
	}
	switch ct {
	case "application/json":
		var m map[string]json.RawMessage
		if err := json.Unmarshal(body, &m); err != nil {
			return nil, err
		}
		for k, raw := range m {
			var str string
			if json.Unmarshal(raw, &str) == nil {
				v.Set(k, str)
			} else {
				v.Set(k, string(raw))
			}
		}
	default:
		f, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, err
		}
		for k, vs := range f {
			v[k] = vs
		}
	}
	if a := r.Header.Get("Authorization"); strings.HasPrefix(a, "Bearer ") && v.Get("token") == "" {
		v.Set("token", strings.TrimPrefix(a, "Bearer "))
	}
	return v, nil
}

func reply(w http.ResponseWriter, status int, body map[string]any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

func fail(w http.ResponseWriter, code string) {
	reply(w, http.StatusOK, map[string]any{"ok": false, "error": code})
}

func ratelimited(w http.ResponseWriter) {
	w.Header().Set("Retry-After", "1")
	reply(w, http.StatusTooManyRequests, map[string]any{"ok": false, "error": "ratelimited"})
}

func (s *Server) api(w http.ResponseWriter, r *http.Request) {
	method := r.PathValue("method")
	s.mu.Lock()
	s.calls[method]++
	s.mu.Unlock()
	if r.Method != http.MethodPost && r.Method != http.MethodGet {
		fail(w, "invalid_request")
		return
	}
	v, err := params(r)
	if err != nil {
		fail(w, "invalid_form_data")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if v.Get("token") == "" {
		fail(w, "not_authed")
		return
	}
	if !s.tokens[v.Get("token")] {
		fail(w, "invalid_auth")
		return
	}
	switch method {
	case "auth.test":
		reply(w, http.StatusOK, map[string]any{"ok": true, "url": "https://comjobs-test.slack.com/", "team": "comjobs", "user": "comjobs", "team_id": "T000", "user_id": "U000", "bot_id": "B000"})
	case "chat.postMessage":
		s.post(w, v)
	case "chat.update":
		s.update(w, v)
	case "conversations.history", "conversations.replies":
		s.history(w, v, method == "conversations.replies")
	default:
		fail(w, "unknown_method")
	}
}

// post handles chat.postMessage; s.mu is held.
func (s *Server) post(w http.ResponseWriter, v url.Values) {
	id, ok := s.ids[v.Get("channel")]
	if !ok {
		fail(w, "channel_not_found")
		return
	}
	blocks := json.RawMessage(v.Get("blocks"))
	if code := s.checkMessage(v.Get("text"), blocks); code != "" {
		fail(w, code)
		return
	}
	var md *Metadata
	if raw := v.Get("metadata"); raw != "" {
		md = &Metadata{}
		if err := json.Unmarshal([]byte(raw), md); err != nil {
			fail(w, "invalid_metadata_format")
			return
		}
	}
	if s.limited(id) {
		w.Header().Set("Retry-After", "1")
		ratelimited(w)
		return
	}
	thread := v.Get("thread_ts")
	if thread != "" && !s.hasTS(id, thread) {
		fail(w, "thread_not_found")
		return
	}
	m := Message{Channel: id, TS: s.nextTS(), ThreadTS: thread, Text: v.Get("text"), Blocks: blocks, Metadata: md}
	s.messages = append(s.messages, m)
	reply(w, http.StatusOK, map[string]any{"ok": true, "channel": id, "ts": m.TS, "message": map[string]any{"text": m.Text, "ts": m.TS}})
}

// limited applies the per-channel pace and the random 429 share; s.mu is held.
func (s *Server) limited(id string) bool {
	now := time.Now()
	if s.opts.Rate429 > 0 && s.rnd.Float64() < s.opts.Rate429 {
		return true
	}
	if s.opts.MinInterval > 0 && now.Sub(s.last[id]) < s.opts.MinInterval {
		return true
	}
	s.last[id] = now
	return false
}

func (s *Server) hasTS(channel, ts string) bool {
	for _, m := range s.messages {
		if m.Channel == channel && m.TS == ts {
			return true
		}
	}
	return false
}

func (s *Server) nextTS() string {
	s.seq++
	return fmt.Sprintf("%d.%06d", 1700000000+s.seq, s.seq)
}

func (s *Server) update(w http.ResponseWriter, v url.Values) {
	id, ok := s.ids[v.Get("channel")]
	if !ok {
		fail(w, "channel_not_found")
		return
	}
	ts := v.Get("ts")
	if !s.hasTS(id, ts) {
		fail(w, "message_not_found")
		return
	}
	blocks := json.RawMessage(v.Get("blocks"))
	if code := s.checkMessage(v.Get("text"), blocks); code != "" {
		fail(w, code)
		return
	}
	s.updates = append(s.updates, Update{Channel: id, TS: ts, Text: v.Get("text"), Blocks: blocks})
	for i := range s.messages {
		if s.messages[i].Channel == id && s.messages[i].TS == ts {
			s.messages[i].Text, s.messages[i].Blocks = v.Get("text"), blocks
		}
	}
	reply(w, http.StatusOK, map[string]any{"ok": true, "channel": id, "ts": ts, "text": v.Get("text")})
}

// history answers conversations.history (top-level messages, newest first)
// or conversations.replies (the thread, oldest first). Metadata is included
// only with include_all_metadata=1.
func (s *Server) history(w http.ResponseWriter, v url.Values, replies bool) {
	id, ok := s.ids[v.Get("channel")]
	if !ok {
		fail(w, "channel_not_found")
		return
	}
	withMD := v.Get("include_all_metadata") == "1" || v.Get("include_all_metadata") == "true"
	thread := v.Get("ts")
	var out []map[string]any
	for _, m := range s.messages {
		if m.Channel != id {
			continue
		}
		if replies && m.TS != thread && m.ThreadTS != thread {
			continue
		}
		if !replies && m.ThreadTS != "" {
			continue
		}
		e := map[string]any{"type": "message", "ts": m.TS, "text": m.Text}
		if m.ThreadTS != "" {
			e["thread_ts"] = m.ThreadTS
		}
		if withMD && m.Metadata != nil {
			e["metadata"] = m.Metadata
		}
		out = append(out, e)
	}
	if replies && len(out) == 0 {
		fail(w, "thread_not_found")
		return
	}
	if !replies {
		sort.SliceStable(out, func(i, j int) bool { return out[i]["ts"].(string) > out[j]["ts"].(string) })
	}
	limit, _ := strconv.Atoi(v.Get("limit"))
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	offset, _ := strconv.Atoi(v.Get("cursor"))
	if offset > len(out) {
		offset = len(out)
	}
	page := out[offset:]
	more := false
	if len(page) > limit {
		page, more = page[:limit], true
	}
	body := map[string]any{"ok": true, "messages": page, "has_more": more}
	if more {
		body["response_metadata"] = map[string]any{"next_cursor": strconv.Itoa(offset + limit)}
	}
	reply(w, http.StatusOK, body)
}

func (s *Server) webhook(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.calls["webhook"]++
	s.mu.Unlock()
	var body struct {
		Text   string          `json:"text"`
		Blocks json.RawMessage `json:"blocks"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 4<<20)).Decode(&body); err != nil {
		http.Error(w, "invalid_payload", http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if code := s.checkMessage(body.Text, body.Blocks); code != "" {
		http.Error(w, code, http.StatusBadRequest)
		return
	}
	id := s.ids[s.opts.WebhookChannel]
	if s.limited(id) {
		w.Header().Set("Retry-After", "1")
		http.Error(w, "rate_limited", http.StatusTooManyRequests)
		return
	}
	s.messages = append(s.messages, Message{Channel: id, Text: body.Text, Blocks: body.Blocks, Webhook: true, TS: s.nextTS()})
	_, _ = io.WriteString(w, "ok")
}

// checkMessage returns Slack's error code for an unacceptable message.
func (s *Server) checkMessage(text string, blocks json.RawMessage) string {
	if utf8.RuneCountInString(text) > 40000 {
		return "msg_too_long"
	}
	if len(blocks) == 0 || string(blocks) == "null" {
		if text == "" {
			return "no_text"
		}
		return ""
	}
	if err := CheckBlocks(blocks); err != nil {
		return "invalid_blocks"
	}
	return ""
}
