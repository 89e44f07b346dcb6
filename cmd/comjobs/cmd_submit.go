package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/comjobs/comjobs/publisher"
	"github.com/comjobs/comjobs/schemas"
)

// Exit codes of `comjobs submit --wait`; with several requests the worst wins.
const (
	exitSuccess  = 0
	exitFailure  = 10 // COMPLETE with resultCode FAILURE
	exitErrored  = 11 // ERROR or LOST
	exitStalled  = 12 // STALLED: needs a person
	exitRejected = 13 // rejected, locally or by comjobs
	exitTimeout  = 14 // no end within --timeout
)

// multiFlag collects a repeatable flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// submission is one request to publish, with its outcome.
type submission struct {
	Line    int    `json:"line,omitempty"`
	Source  string `json:"source"`
	ID      string `json:"id"`
	Key     string `json:"key"`
	Subject string `json:"subject,omitempty"`
	Dup     bool   `json:"duplicate"`
	JobID   string `json:"jobId,omitempty"`
	State   string `json:"state,omitempty"`
	Result  string `json:"resultCode,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	Outcome string `json:"outcome"`
	req     schemas.Request
}

func cmdSubmit(ctx context.Context, env *Env, args []string) error {
	fs := newFlags(env, "submit", "submit --template T --resource TYPE:ID|URI [--param k=v]... [--label k=v]... [--channel C] [--wait] | submit --file requests.jsonl [--wait]")
	tmpl := fs.String("template", "", "template: display name, slug or id")
	resource := fs.String("resource", "", "resource as type:id (compute-ops-mgmt/server:ID, or server:ID) or as a URI (/compute-ops-mgmt/v1beta2/servers/ID)")
	var params, labels multiFlag
	fs.Var(&params, "param", "job parameter key=value (value parsed as JSON when it is JSON); repeatable")
	fs.Var(&labels, "label", "label key=value; repeatable")
	channel := fs.String("channel", "", "Slack channel for this request's notifications")
	source := fs.String("source", defaultSource(), "CloudEvent source: who asks")
	id := fs.String("id", "", "CloudEvent id (default: random); the same source and id never create a second job")
	expiresIn := fs.Duration("expires-in", 0, "do not submit after this long (sets expiresAt)")
	file := fs.String("file", "", "JSON Lines file of requests (each a request's data, optionally with \"id\" and \"source\"); - for stdin")
	wait := fs.Bool("wait", false, "follow each job until it ends; the exit code tells the outcome")
	timeout := fs.Duration("timeout", 30*time.Minute, "with --wait: give up after this long")
	asJSON := fs.Bool("json", false, "machine-readable output: one JSON object per request")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var subs []*submission
	if *file != "" {
		var err error
		if subs, err = readRequests(*file, *source); err != nil {
			return &exitError{code: 2, err: err}
		}
	} else {
		if *tmpl == "" || *resource == "" {
			return &exitError{code: 2, err: errors.New("submit: --template and --resource are required (or --file)")}
		}
		r := schemas.Request{Template: *tmpl}
		if strings.HasPrefix(*resource, "/") || strings.Contains(*resource, "://") {
			r.ResourceURI = *resource
		} else {
			typ, rid, ok := strings.Cut(*resource, ":")
			if !ok {
				return &exitError{code: 2, err: fmt.Errorf("submit: --resource wants type:id or a URI, got %q", *resource)}
			}
			if !strings.Contains(typ, "/") {
				typ = "compute-ops-mgmt/" + typ
			}
			r.Resource = &schemas.Resource{Type: typ, ID: rid}
		}
		if len(params) > 0 {
			r.Data = map[string]any{}
			for _, p := range params {
				k, v, ok := strings.Cut(p, "=")
				if !ok {
					return &exitError{code: 2, err: fmt.Errorf("submit: --param wants key=value, got %q", p)}
				}
				var jv any
				if json.Unmarshal([]byte(v), &jv) == nil {
					r.Data[k] = jv
				} else {
					r.Data[k] = v
				}
			}
		}
		for _, l := range labels {
			k, v, ok := strings.Cut(l, "=")
			if !ok {
				return &exitError{code: 2, err: fmt.Errorf("submit: --label wants key=value, got %q", l)}
			}
			if r.Labels == nil {
				r.Labels = map[string]string{}
			}
			r.Labels[k] = v
		}
		if *channel != "" {
			r.Notify = &schemas.Notify{SlackChannel: *channel}
		}
		if *expiresIn > 0 {
			t := time.Now().Add(*expiresIn).UTC()
			r.ExpiresAt = &t
		}
		rid := *id
		if rid == "" {
			rid = newID()
		}
		subs = append(subs, &submission{Source: *source, ID: rid, req: r})
	}

	in, err := connect(ctx, env)
	if err != nil {
		return err
	}
	defer in.Close()
	v, err := schemas.NewValidator()
	if err != nil {
		return err
	}
	pub := publisher.New(in.js, env.Logger, publisher.WithValidator(v))
	bar := newProgress(env.Stderr, len(subs), !*asJSON && len(subs) > 1)
	for _, s := range subs {
		e, err := publisher.NewRequest(s.Source, s.ID, s.req)
		if err == nil {
			var res publisher.SubmitResult
			res, err = pub.Submit(ctx, e)
			s.Key, s.Subject, s.Dup = res.Key, res.Subject, res.Duplicate
		}
		var rej *schemas.Rejection
		switch {
		case errors.As(err, &rej):
			s.Outcome, s.Reason, s.Message = "rejected", rej.Reason, rej.Message
		case err != nil:
			return fmt.Errorf("submit %s: %w", s.ID, err)
		case s.Dup:
			s.Outcome = "duplicate"
		default:
			s.Outcome = "queued"
		}
		bar.step()
	}
	bar.done()

	if *wait {
		wctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		var wg sync.WaitGroup
		for _, s := range subs {
			if s.Outcome == "rejected" {
				continue
			}
			wg.Add(1)
			go func(s *submission) {
				defer wg.Done()
				follow(wctx, env, pub, s, !*asJSON && len(subs) == 1)
			}(s)
		}
		wg.Wait()
	}
	code := exitSuccess
	counts := map[string]int{}
	for _, s := range subs {
		if *asJSON {
			b, _ := json.Marshal(s)
			fmt.Fprintln(env.Stdout, string(b))
		} else {
			fmt.Fprintln(env.Stdout, s.describe())
		}
		counts[s.Outcome]++
		code = max(code, s.exitCode(*wait))
	}
	if !*asJSON && len(subs) > 1 {
		fmt.Fprintf(env.Stdout, "\n%d requests:", len(subs))
		for _, o := range []string{"success", "queued", "duplicate", "failure", "error", "stalled", "rejected", "timeout"} {
			if counts[o] > 0 {
				fmt.Fprintf(env.Stdout, " %d %s", counts[o], o)
			}
		}
		fmt.Fprintln(env.Stdout)
	}
	if code != exitSuccess {
		return &exitError{code: code}
	}
	return nil
}

// follow waits for the request's end, stopping early at STALLED.
func follow(ctx context.Context, env *Env, pub *publisher.Publisher, s *submission, live bool) {
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex
	last, err := pub.Wait(fctx, s.Source, s.ID, func(e event.Event) {
		if live {
			fmt.Fprintln(env.Stderr, describeEvent(e))
		}
		var d schemas.JobEvent
		if e.Type() == schemas.TypeSubmitted || e.Type() == schemas.TypeStateChanged {
			if json.Unmarshal(e.Data(), &d) == nil && d.ParentJobID == nil {
				mu.Lock()
				s.JobID, s.State = d.JobID, d.State
				mu.Unlock()
				if d.State == schemas.StateStalled {
					cancel()
				}
			}
		}
	})
	mu.Lock()
	defer mu.Unlock()
	if err != nil {
		if s.State == schemas.StateStalled {
			s.Outcome = "stalled"
		} else {
			s.Outcome = "timeout"
		}
		return
	}
	switch last.Type() {
	case schemas.TypeRejected:
		var r schemas.Rejected
		_ = json.Unmarshal(last.Data(), &r)
		s.Outcome, s.Reason, s.Message = "rejected", r.Reason, r.Message
	default:
		var d schemas.JobEvent
		_ = json.Unmarshal(last.Data(), &d)
		s.JobID, s.State, s.Result = d.JobID, d.State, deref(d.ResultCode)
		switch {
		case d.State == schemas.StateComplete && s.Result != schemas.ResultFailure:
			s.Outcome = "success"
		case d.State == schemas.StateComplete:
			s.Outcome = "failure"
		default:
			s.Outcome = "error"
		}
	}
}

func (s *submission) exitCode(waited bool) int {
	switch s.Outcome {
	case "rejected":
		return exitRejected
	case "failure":
		return exitFailure
	case "error":
		return exitErrored
	case "stalled":
		return exitStalled
	case "timeout":
		return exitTimeout
	}
	return exitSuccess
}

func (s *submission) describe() string {
	who := s.ID
	if s.Line > 0 {
		who = fmt.Sprintf("line %d (%s)", s.Line, s.ID)
	}
	switch s.Outcome {
	case "rejected":
		return fmt.Sprintf("%s: REJECTED (%s) %s", who, s.Reason, s.Message)
	case "duplicate":
		return fmt.Sprintf("%s: duplicate of an earlier request (key %s): nothing new queued", who, short(s.Key))
	case "queued":
		return fmt.Sprintf("%s: queued on %s (key %s)", who, s.Subject, short(s.Key))
	case "timeout":
		return fmt.Sprintf("%s: no end within the timeout (job %s, last state %s)", who, orDash(s.JobID), orDash(s.State))
	default:
		res := s.State
		if s.Result != "" {
			res += "/" + s.Result
		}
		return fmt.Sprintf("%s: %s — job %s %s", who, strings.ToUpper(s.Outcome), s.JobID, res)
	}
}

func short(k string) string {
	if len(k) > 12 {
		return k[:12]
	}
	return k
}

// readRequests reads a JSON Lines file: each line a request's data, with
// optional "id" and "source" members (default: a random id, and source).
func readRequests(path, source string) ([]*submission, error) {
	var r io.Reader
	if path == "-" {
		r = os.Stdin
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("submit: %w", err)
		}
		defer f.Close()
		r = f
	}
	var subs []*submission
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var wrap struct {
			ID     string `json:"id"`
			Source string `json:"source"`
			schemas.Request
		}
		dec := json.NewDecoder(strings.NewReader(line))
		if err := dec.Decode(&wrap); err != nil {
			return nil, fmt.Errorf("submit: %s line %d: %v", path, n, err)
		}
		s := &submission{Line: n, Source: wrap.Source, ID: wrap.ID, req: wrap.Request}
		if s.Source == "" {
			s.Source = source
		}
		if s.ID == "" {
			s.ID = newID()
		}
		subs = append(subs, s)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("submit: %s: %w", path, err)
	}
	if len(subs) == 0 {
		return nil, fmt.Errorf("submit: %s holds no request", path)
	}
	return subs, nil
}

func defaultSource() string {
	u := "unknown"
	if cu, err := user.Current(); err == nil {
		u = cu.Username
	}
	h, _ := os.Hostname()
	return "comjobs-cli://" + u + "@" + h
}

// newID returns a random UUID (version 4).
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// progress draws a bar on a terminal; elsewhere it stays silent.
type progress struct {
	w     io.Writer
	total int
	n     int
	on    bool
}

func newProgress(w io.Writer, total int, want bool) *progress {
	on := false
	if f, ok := w.(*os.File); ok && want {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			on = true
		}
	}
	return &progress{w: w, total: total, on: on}
}

func (p *progress) step() {
	p.n++
	if !p.on {
		return
	}
	const width = 30
	filled := p.n * width / p.total
	fmt.Fprintf(p.w, "\r[%s%s] %d/%d", strings.Repeat("#", filled), strings.Repeat(" ", width-filled), p.n, p.total)
}

func (p *progress) done() {
	if p.on {
		fmt.Fprintln(p.w)
	}
}
