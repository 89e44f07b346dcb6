package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/cenats"
	"github.com/comjobs/comjobs/com/comsim"
	"github.com/comjobs/comjobs/natsrv"
	"github.com/comjobs/comjobs/notify/slack/slacktest"
	"github.com/comjobs/comjobs/requestcases"
	"github.com/comjobs/comjobs/schemas"
	"github.com/comjobs/comjobs/topology"
)

// binPath is the comjobs binary TestMain builds for the end-to-end tests.
var binPath string

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	dir, err := os.MkdirTemp("", "comjobs-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binPath = filepath.Join(dir, "comjobs")
	gobin, err := exec.LookPath("go")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: the go command is needed to build the binary:", err)
		return 1
	}
	build := exec.Command(gobin, "build", "-o", binPath, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: go build:", err)
		return 1
	}
	return m.Run()
}

// shutdownBound is COMJOBS_SHUTDOWN_TIMEOUT in the end-to-end tests; a
// process gets this plus closeGrace (NATS drain, simulator and listener
// close) to exit after SIGTERM.
const (
	shutdownBound = 10 * time.Second
	closeGrace    = 10 * time.Second
)

// stack is what the service under test talks to: an embedded NATS server
// with the topology in place, the COM simulator and a recording Slack.
type stack struct {
	nats        *natsrv.Server
	nc          *nats.Conn
	js          jetstream.JetStream
	sim         *comsim.Server
	slack       *slacktest.Server
	slackToken  string
	comSecret   string
	slackChanID string
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func newStack(t *testing.T, ctx context.Context, simOpts comsim.Options) *stack {
	t.Helper()
	s := &stack{
		slackToken: "xoxb-e2e-" + randomHex(t, 12),
		comSecret:  "com-e2e-" + randomHex(t, 12),
	}
	var err error
	s.nats, err = natsrv.Start(natsrv.Options{Name: "e2e", Host: "127.0.0.1", Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatalf("natsrv: %v", err)
	}
	t.Cleanup(s.nats.Stop)
	s.nc, err = nats.Connect(s.nats.ClientURL())
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(s.nc.Close)
	s.js, err = jetstream.New(s.nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := topology.Ensure(ctx, s.js, topology.Options{Replicas: 1}); err != nil {
		t.Fatalf("topology: %v", err)
	}
	simOpts.ClientID = "e2e-client"
	simOpts.ClientSecret = s.comSecret
	s.sim = comsim.NewServer(simOpts)
	t.Cleanup(s.sim.Close)
	// The binary paces channels at COMJOBS_SLACK_CHANNEL_INTERVAL (100ms
	// here, 1s by default, as Slack); the server refuses anything faster.
	s.slack = slacktest.NewServer(slacktest.Options{Tokens: []string{s.slackToken}, Channels: []string{"#comjobs"}, MinInterval: 100 * time.Millisecond})
	t.Cleanup(s.slack.Close)
	s.slackChanID = s.slack.ChannelID("#comjobs")
	return s
}

// env is the environment of a `comjobs run` against the stack: the test
// process's own COMJOBS_ variables are dropped.
func (s *stack) env(t *testing.T, httpAddr string, extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envPrefix+"_") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"COMJOBS_NATS_URL="+s.nats.ClientURL(),
		"COMJOBS_COM_BASE_URL="+s.sim.URL(),
		"COMJOBS_COM_TOKEN_URL="+s.sim.TokenURL(),
		"COMJOBS_COM_CLIENT_ID=e2e-client",
		"COMJOBS_COM_CLIENT_SECRET="+s.comSecret,
		"COMJOBS_COM_RATE_PER_MINUTE=100000",
		"COMJOBS_SLACK_TOKEN="+s.slackToken,
		"COMJOBS_SLACK_API_URL="+s.slack.URL(),
		"COMJOBS_SLACK_CHANNEL=#comjobs",
		"COMJOBS_SLACK_CHANNEL_INTERVAL=100ms",
		"COMJOBS_HTTP_ADDR="+httpAddr,
		"COMJOBS_POLL_INTERVAL=200ms",
		"COMJOBS_SHUTDOWN_TIMEOUT="+shutdownBound.String(),
		"COMJOBS_LOG_LEVEL=info",
		"COMJOBS_DATA_DIR="+t.TempDir(),
	)
	return append(env, extra...)
}

// secrets are the values no output may contain.
func (s *stack) secrets() []string { return []string{s.slackToken, s.comSecret} }

// syncBuffer is an io.Writer safe for a child process's output pipes and
// concurrent readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// proc is a running comjobs binary.
type proc struct {
	name           string
	cmd            *exec.Cmd
	stdout, stderr *syncBuffer
	httpAddr       string
	exited         chan struct{}
	waitErr        error
}

// freeAddr finds a free loopback port for the process's HTTP listener.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// startProc runs `comjobs run` against the stack and waits for /readyz.
func startProc(t *testing.T, ctx context.Context, s *stack, name string, extraEnv ...string) *proc {
	t.Helper()
	p := &proc{name: name, stdout: &syncBuffer{}, stderr: &syncBuffer{}, httpAddr: freeAddr(t), exited: make(chan struct{})}
	p.cmd = exec.Command(binPath, "run")
	p.cmd.Env = s.env(t, p.httpAddr, extraEnv...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("%s: start: %v", name, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("%s stderr (tail):\n%s", name, tail(p.stderr.String(), 200))
		}
	})
	p.waitReady(t, ctx)
	return p
}

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

func (p *proc) waitReady(t *testing.T, ctx context.Context) {
	t.Helper()
	url := "http://" + p.httpAddr + "/readyz"
	hc := &http.Client{Timeout: 2 * time.Second}
	var last string
	for {
		select {
		case <-p.exited:
			t.Fatalf("%s exited before it was ready (%v); stderr:\n%s", p.name, p.waitErr, tail(p.stderr.String(), 40))
		case <-ctx.Done():
			t.Fatalf("%s not ready: %s", p.name, last)
		case <-time.After(50 * time.Millisecond):
		}
		resp, err := hc.Get(url)
		if err != nil {
			last = err.Error()
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return
		}
		last = fmt.Sprintf("%d %s", resp.StatusCode, body)
	}
}

// terminate sends SIGTERM and expects a clean exit (0) within the bound.
func (p *proc) terminate(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("%s: SIGTERM: %v", p.name, err)
	}
	select {
	case <-p.exited:
	case <-time.After(shutdownBound + closeGrace):
		t.Fatalf("%s did not exit within %s of SIGTERM; stderr:\n%s", p.name, shutdownBound+closeGrace, tail(p.stderr.String(), 40))
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("%s exited %d after SIGTERM, want 0; stderr:\n%s", p.name, code, tail(p.stderr.String(), 40))
	}
}

// checkNoSecrets fails if any output holds a secret.
func checkNoSecrets(t *testing.T, what, out string, secrets []string) {
	t.Helper()
	for _, s := range secrets {
		if s != "" && strings.Contains(out, s) {
			t.Errorf("%s contains a secret (%.8s…)", what, s)
		}
	}
}

// rejection is a rejected event's data and, when the event names its
// request, the request key.
type rejection struct {
	schemas.Rejected
	key string
}

// eventLog follows COMJOBS_EVENTS and indexes what it says.
type eventLog struct {
	mu        sync.Mutex
	submitted map[string][]string    // request key → job ids (one per submitted event)
	rejected  map[uint64][]rejection // stream sequence of the request → its rejections
	terminal  map[string]string      // job id → terminal state
	changed   chan struct{}
}

func watchEvents(t *testing.T, ctx context.Context, js jetstream.JetStream) *eventLog {
	t.Helper()
	l := &eventLog{submitted: map[string][]string{}, rejected: map[uint64][]rejection{}, terminal: map[string]string{}, changed: make(chan struct{}, 1)}
	oc, err := js.OrderedConsumer(ctx, schemas.StreamEvents, jetstream.OrderedConsumerConfig{FilterSubjects: []string{schemas.SubjectEvents + ".>"}})
	if err != nil {
		t.Fatalf("follow events: %v", err)
	}
	cc, err := oc.Consume(func(m jetstream.Msg) {
		e, err := cenats.Decode(m.Headers(), m.Data(), cenats.DecodeOptions{MaxSize: 1 << 20})
		if err != nil {
			t.Errorf("undecodable event on %s: %v", m.Subject(), err)
			return
		}
		l.observe(t, e)
	})
	if err != nil {
		t.Fatalf("follow events: %v", err)
	}
	t.Cleanup(cc.Stop)
	return l
}

func extString(e event.Event, name string) string {
	v, ok := e.Extensions()[name]
	if !ok {
		return ""
	}
	return fmt.Sprint(v)
}

func (l *eventLog) observe(t *testing.T, e event.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch e.Type() {
	case schemas.TypeSubmitted:
		var d schemas.JobEvent
		if err := json.Unmarshal(e.Data(), &d); err != nil {
			t.Errorf("submitted event data: %v", err)
			return
		}
		key := schemas.RequestKey(extString(e, schemas.ExtRequestSource), extString(e, schemas.ExtRequestID))
		l.submitted[key] = append(l.submitted[key], d.JobID)
	case schemas.TypeRejected:
		var d schemas.Rejected
		if err := json.Unmarshal(e.Data(), &d); err != nil {
			t.Errorf("rejected event data: %v", err)
			return
		}
		r := rejection{Rejected: d}
		if id := extString(e, schemas.ExtRequestID); id != "" {
			r.key = schemas.RequestKey(extString(e, schemas.ExtRequestSource), id)
		}
		l.rejected[d.StreamSeq] = append(l.rejected[d.StreamSeq], r)
	case schemas.TypeStateChanged:
		var d schemas.JobEvent
		if err := json.Unmarshal(e.Data(), &d); err != nil {
			t.Errorf("state-changed event data: %v", err)
			return
		}
		if d.Terminal {
			l.terminal[d.JobID] = d.State
		}
	}
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

// waitFor polls cond (called with the log locked) until it returns "" or
// the context ends; cond says what it is still waiting for.
func (l *eventLog) waitFor(t *testing.T, ctx context.Context, cond func() string) {
	t.Helper()
	if missing := poll(ctx, l.changed, func() string {
		l.mu.Lock()
		defer l.mu.Unlock()
		return cond()
	}); missing != "" {
		t.Fatalf("gave up waiting: %s", missing)
	}
}

// poll calls cond on every wake-up and every 100ms until it returns "" or
// the context ends; cond says what it is still waiting for, and poll
// returns what was still missing at the end ("" for nothing).
func poll(ctx context.Context, wake <-chan struct{}, cond func() string) string {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		missing := cond()
		if missing == "" {
			return ""
		}
		select {
		case <-ctx.Done():
			return missing
		case <-wake:
		case <-tick.C:
		}
	}
}

// requestCase is one line of requests.jsonl and what publishing it gave.
type requestCase struct {
	requestcases.Case
	key string // request key, "" when the message names no id or source
	seq uint64 // stream sequence (0 for a duplicate the stream dropped)
}

// loadCases reads the shared cases when the workspace has them, else the
// package's copy.
func loadCases(t *testing.T) ([]*requestCase, string) {
	t.Helper()
	path := requestcases.SharedOr(filepath.Join("testdata", "cases.jsonl"))
	cs, err := requestcases.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	cases := make([]*requestCase, len(cs))
	for i, c := range cs {
		cases[i] = &requestCase{Case: c}
	}
	return cases, path
}

// message builds the NATS message of a case and its request key (from the
// ce- headers, or the body in structured mode).
func (c *requestCase) message() (*nats.Msg, string) {
	m := c.Msg()
	source, id := c.Identity()
	if id == "" || source == "" {
		return m, ""
	}
	key := schemas.RequestKey(source, id)
	m.Header.Set(jetstream.MsgIDHeader, key)
	return m, key
}

// deadLetters reads every message of COMJOBS_DLQ: original stream
// sequence → reasons from the Comjobs-Dlq-Reason header.
func deadLetters(t *testing.T, ctx context.Context, js jetstream.JetStream) map[uint64][]string {
	t.Helper()
	st, err := js.Stream(ctx, schemas.StreamDLQ)
	if err != nil {
		t.Fatalf("DLQ stream: %v", err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatalf("DLQ stream: %v", err)
	}
	out := map[uint64][]string{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			continue // deleted
		}
		s, _ := strconv.ParseUint(m.Header.Get("Comjobs-Dlq-Stream-Seq"), 10, 64)
		out[s] = append(out[s], m.Header.Get("Comjobs-Dlq-Reason"))
	}
	return out
}

// slackKind returns a recorded message's job id and kind from its metadata.
func slackKind(m slacktest.Message) (jobID, kind string) {
	if m.Metadata == nil {
		return "", ""
	}
	return fmt.Sprint(m.Metadata.EventPayload["job_id"]), fmt.Sprint(m.Metadata.EventPayload["kind"])
}

// TestEndToEndCases runs the built binary as a separate process against an
// embedded NATS server, the COM simulator and a recording Slack, publishes
// every request case through NATS and checks each expected outcome, the
// dead letters and the Slack messages, then stops it with SIGTERM.
func TestEndToEndCases(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()
	s := newStack(t, ctx, comsim.Options{Seed: 7, Timing: comsim.Timing{PendingFor: 20 * time.Millisecond, RunFor: 50 * time.Millisecond, ApprovalFor: 100 * time.Millisecond}})
	events := watchEvents(t, ctx, s.js)
	p := startProc(t, ctx, s, "comjobs run")

	cases, path := loadCases(t)
	t.Logf("replaying %d cases from %s", len(cases), path)
	var submitted, rejected []*requestCase
	for _, c := range cases {
		m, key := c.message()
		c.key = key
		ack, err := s.js.PublishMsg(ctx, m)
		if err != nil {
			t.Fatalf("%s: publish: %v", c.Name, err)
		}
		if !ack.Duplicate {
			c.seq = ack.Sequence
		}
		switch c.Expect.Outcome {
		case "submitted":
			if key == "" {
				t.Fatalf("%s: a valid request without id and source", c.Name)
			}
			submitted = append(submitted, c)
		case "rejected":
			rejected = append(rejected, c)
		case "duplicate":
		default:
			t.Fatalf("%s: unknown outcome %q", c.Name, c.Expect.Outcome)
		}
	}

	// Every valid request: a submitted event and a terminal state; every
	// invalid one: a rejected event.
	events.waitFor(t, ctx, func() string {
		for _, c := range submitted {
			jobs := events.submitted[c.key]
			if len(jobs) == 0 {
				return c.Name + ": no submitted event"
			}
			if _, ok := events.terminal[jobs[0]]; !ok {
				return c.Name + ": job " + jobs[0] + " has no terminal state-changed event"
			}
		}
		for _, c := range rejected {
			if len(events.rejected[c.seq]) == 0 {
				return c.Name + ": no rejected event"
			}
		}
		return ""
	})
	// Every dead letter and every Slack message.
	wantSlack := func() string {
		terminal, rej := map[string]int{}, 0
		for _, m := range s.slack.Messages() {
			switch job, kind := slackKind(m); kind {
			case "terminal":
				terminal[job]++
			case "rejected":
				rej++
			}
		}
		events.mu.Lock()
		defer events.mu.Unlock()
		for _, c := range submitted {
			if jobs := events.submitted[c.key]; terminal[jobs[0]] == 0 {
				return c.Name + ": no terminal Slack message for job " + jobs[0]
			}
		}
		if rej < len(rejected) {
			return fmt.Sprintf("%d rejected Slack messages of %d", rej, len(rejected))
		}
		return ""
	}
	wantDLQ := func() string {
		dlq := deadLetters(t, ctx, s.js)
		for _, c := range rejected {
			if len(dlq[c.seq]) == 0 {
				return c.Name + ": no dead letter"
			}
		}
		return ""
	}
	// The notifier posts one message a second to a channel (Slack's
	// limit), so this takes about as many seconds as there are messages.
	// Not fatal: the exact checks below say what is wrong.
	wctx, wcancel := context.WithTimeout(ctx, 75*time.Second)
	missing := poll(wctx, nil, func() string {
		if m := wantDLQ(); m != "" {
			return m
		}
		return wantSlack()
	})
	wcancel()
	if missing != "" {
		t.Errorf("gave up waiting: %s", missing)
	}

	p.terminate(t)

	// Everything is settled: check exactly.
	events.mu.Lock()
	defer events.mu.Unlock()
	jobOwner := map[string]string{}
	for _, c := range submitted {
		jobs := events.submitted[c.key]
		if len(jobs) != 1 {
			t.Errorf("%s: %d submitted events (jobs %v), want 1", c.Name, len(jobs), jobs)
		}
		jid := jobs[0]
		if other, ok := jobOwner[jid]; ok {
			t.Errorf("%s: job %s was also submitted for %s", c.Name, jid, other)
		}
		jobOwner[jid] = c.Name
		rec, ok := s.sim.Job(jid)
		switch {
		case !ok:
			t.Errorf("%s: job %s unknown to the simulator", c.Name, jid)
		case rec.ParentJobID != "":
			t.Errorf("%s: job %s is a child job", c.Name, jid)
		case !rec.Terminal() || rec.State != events.terminal[jid]:
			t.Errorf("%s: the simulator says %s, the events %s", c.Name, rec.State, events.terminal[jid])
		}
		if c.seq != 0 && len(events.rejected[c.seq]) != 0 {
			t.Errorf("%s: also rejected: %+v", c.Name, events.rejected[c.seq])
		}
	}
	dlq := deadLetters(t, ctx, s.js)
	for _, c := range rejected {
		rs := events.rejected[c.seq]
		if len(rs) != 1 || rs[0].Reason != c.Expect.Reason {
			t.Errorf("%s: rejected events %+v, want one with reason %s", c.Name, rs, c.Expect.Reason)
		}
		if d := dlq[c.seq]; len(d) != 1 || d[0] != c.Expect.Reason {
			t.Errorf("%s: dead letter reasons %v, want [%s]", c.Name, d, c.Expect.Reason)
		}
	}
	top := 0
	for _, j := range s.sim.Jobs() {
		if j.ParentJobID == "" {
			top++
		}
	}
	if top != len(submitted) {
		t.Errorf("the simulator holds %d top-level jobs, want %d (one per valid request; duplicates create none)", top, len(submitted))
	}

	// Slack: one terminal message per top-level job, one per rejected
	// request, all in #comjobs, none holding a secret.
	terminal, rejectedMsgs := map[string]int{}, map[string]int{}
	for _, m := range s.slack.Messages() {
		if m.Channel != s.slackChanID {
			t.Errorf("Slack message in channel %s, want #comjobs (%s): %.80q", m.Channel, s.slackChanID, m.Text)
		}
		checkNoSecrets(t, "a Slack message", m.Text+string(m.Blocks), s.secrets())
		switch job, kind := slackKind(m); kind {
		case "terminal":
			terminal[job]++
		case "rejected":
			rejectedMsgs[job]++
		}
	}
	for jid, name := range jobOwner {
		if terminal[jid] != 1 {
			var about []string
			for _, m := range s.slack.Messages() {
				if job, kind := slackKind(m); job == jid {
					about = append(about, kind)
				}
			}
			t.Errorf("%s: %d terminal Slack messages for job %s, want 1 (messages about it: %v)", name, terminal[jid], jid, about)
		}
	}
	// A rejection that names its request is announced under its request
	// key; the others (no usable ce-id) each get a message of their own.
	n, named := 0, map[string]bool{}
	for _, c := range rejected {
		rs := events.rejected[c.seq]
		if len(rs) == 0 || rs[0].key == "" {
			continue
		}
		named[rs[0].key] = true
		if rejectedMsgs[rs[0].key] != 1 {
			t.Errorf("%s: %d rejected Slack messages for request %s, want 1", c.Name, rejectedMsgs[rs[0].key], rs[0].key)
		}
	}
	for key, c := range rejectedMsgs {
		n += c
		if c != 1 && !named[key] {
			t.Errorf("%d rejected Slack messages for %s, want 1", c, key)
		}
	}
	if n != len(rejected) {
		t.Errorf("%d rejected Slack messages, want %d (one per rejected request)", n, len(rejected))
	}
	checkNoSecrets(t, "stderr", p.stderr.String(), s.secrets())
	checkNoSecrets(t, "stdout", p.stdout.String(), s.secrets())
}
