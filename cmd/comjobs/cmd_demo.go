package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/cenats"
	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/com/comsim"
	"github.com/comjobs/comjobs/consumer"
	"github.com/comjobs/comjobs/publisher"
	"github.com/comjobs/comjobs/schemas"
	"github.com/comjobs/comjobs/tracker"
)

// demoSource is the CloudEvent source of the demo's requests.
const demoSource = "//demo.comjobs.local/pipelines/datacenter-ops"

// demoCase is one request of the demo with the end it must reach.
type demoCase struct {
	name string
	id   string
	req  schemas.Request
	// raw, when set, is published as is (for invalid requests the
	// publisher would refuse locally): subject, headers and body.
	rawSubject string
	rawHeaders nats.Header
	rawBody    []byte
	// duplicateOf names an earlier case with the same identity.
	duplicateOf string

	wantOutcome string // submitted, rejected, duplicate
	wantState   string // final state of the job
	wantResult  string // final resultCode ("" for none)
	wantReason  string // rejection reason
	endByHand   bool   // STALLED: end it with PATCH once seen
	wantSeen    string // a state that must be observed on the way (APPROVAL_PENDING, STALLED)
}

// demoCases builds the batch: every template of the catalog on a resource of
// the simulator's inventory, the scenario servers, a duplicate and invalid
// requests.
func demoCases(run string) []*demoCase {
	fleet := comsim.FleetServers()
	params := map[string]map[string]any{
		"server-firmware-update":                 {"bundle_id": "de600c7f01e29f793f26ad91b31d96ce"},
		"server-firmware-download":               {"bundle_id": "de600c7f01e29f793f26ad91b31d96ce"},
		"group-firmware-compliance":              {"devices": []any{comsim.DefaultServer1, comsim.DefaultServer2}},
		"group-internal-storage-configuration":   {"devices": []any{comsim.DefaultServer1}},
		"group-apply-server-setting":             {"redfish_subsystem": "BIOS"},
		"group-apply-oneview-server-templates":   {"targetApplianceIds": []any{comsim.DefaultAppliance}},
		"group-apply-oneview-appliance-settings": {"targetApplianceIds": []any{comsim.DefaultAppliance}},
		"settings-update-oneview-server-template": {"templatesData": []any{map[string]any{
			"applianceId": comsim.DefaultAppliance, "templateId": "3f1a2b7c-1111-4c2d-9e8f-0a1b2c3d4e5f"}}},
		"appliance-firmware-update": {"applianceFirmwareId": "7d2c9a1e-4b6f-4e0a-8c3d-5f7e9b1a2c4d"},
		"carbon-footprint-report":   {"reportType": "CARBON_FOOTPRINT"},
	}
	resourceFor := map[string]string{
		com.ResourceGroup:            comsim.DefaultGroup,
		com.ResourceSetting:          comsim.DefaultSetting,
		com.ResourceOneViewAppliance: comsim.DefaultAppliance,
		com.ResourceFilter:           comsim.DefaultFilter,
	}
	var cases []*demoCase
	n := 0
	id := func() string { n++; return fmt.Sprintf("demo-%s-%03d", run, n) }
	servers := 0
	for _, t := range com.Templates() {
		rid := resourceFor[t.ResourceType]
		if t.ResourceType == com.ResourceServer {
			rid = fleet[servers%len(fleet)]
			servers++
		}
		c := &demoCase{name: t.Slug, id: id(), wantOutcome: "submitted", wantState: schemas.StateComplete, wantResult: schemas.ResultSuccess,
			req: schemas.Request{Template: t.Name, Resource: &schemas.Resource{Type: t.ResourceType, ID: rid}, Data: params[t.Slug],
				Labels: map[string]string{"ticket": fmt.Sprintf("CHG-%04d", 1000+n)}}}
		cases = append(cases, c)
	}
	scen := func(name, tmpl, server, state, result, seen string, byHand bool) *demoCase {
		return &demoCase{name: name, id: id(), wantOutcome: "submitted", wantState: state, wantResult: result, wantSeen: seen, endByHand: byHand,
			req: schemas.Request{Template: tmpl, Resource: &schemas.Resource{Type: com.ResourceServer, ID: server}, Data: params[tmpl],
				Labels: map[string]string{"scenario": name}}}
	}
	cases = append(cases,
		scen("scenario/failure", "server-firmware-update", comsim.ServerFail, schemas.StateComplete, schemas.ResultFailure, "", false),
		scen("scenario/error", "server-restart", comsim.ServerError, schemas.StateError, schemas.ResultFailure, "", false),
		scen("scenario/stalled", "server-ilo-firmware-update", comsim.ServerStall, schemas.StateError, schemas.ResultFailure, schemas.StateStalled, true),
		scen("scenario/approval", "server-power-off", comsim.ServerApproval, schemas.StateComplete, schemas.ResultSuccess, schemas.StateApprovalPending, false),
		&demoCase{name: "scenario/group-with-failed-child", id: id(), wantOutcome: "submitted", wantState: schemas.StateComplete, wantResult: schemas.ResultFailure,
			req: schemas.Request{Template: "group-firmware-update", Resource: &schemas.Resource{Type: com.ResourceGroup, ID: comsim.MixedGroup}}},
	)
	first := cases[0]
	cases = append(cases, &demoCase{name: "duplicate/" + first.name, id: first.id, req: first.req, duplicateOf: first.name, wantOutcome: "duplicate"})

	// Invalid requests, published raw as an upstream system might.
	raw := func(name, slug, reason string, body string, mut func(h nats.Header)) *demoCase {
		c := &demoCase{name: name, id: id(), wantOutcome: "rejected", wantReason: reason, rawSubject: schemas.RequestSubject(slug), rawBody: []byte(body)}
		c.rawHeaders = nats.Header{
			"ce-specversion": {"1.0"}, "ce-id": {c.id}, "ce-source": {demoSource},
			"ce-type": {schemas.TypeRequested}, "content-type": {"application/json"},
		}
		if mut != nil {
			mut(c.rawHeaders)
		}
		return c
	}
	s1 := fleet[0]
	cases = append(cases,
		raw("invalid/missing-bundle-id", "server-firmware-update", schemas.ReasonInvalidData,
			`{"template":"Server Firmware Update","resource":{"type":"compute-ops-mgmt/server","id":"`+s1+`"}}`, nil),
		raw("invalid/batch-size-too-big", "group-apply-server-setting", schemas.ReasonInvalidData,
			`{"template":"group-apply-server-setting","resource":{"type":"compute-ops-mgmt/group","id":"`+comsim.DefaultGroup+`"},"data":{"redfish_subsystem":"BIOS","batch_size":50}}`, nil),
		raw("invalid/unknown-template", "server-power-cycle", schemas.ReasonUnknownTemplate,
			`{"template":"Server Power Cycle","resource":{"type":"compute-ops-mgmt/server","id":"`+s1+`"}}`, nil),
		raw("invalid/server-template-on-group", "server-power-off", schemas.ReasonResourceTypeMismatch,
			`{"template":"Server Power Off","resource":{"type":"compute-ops-mgmt/group","id":"`+comsim.DefaultGroup+`"}}`, nil),
		raw("invalid/not-json", "server-power-on", schemas.ReasonInvalidEvent, `{"template": "Server Power On", `, nil),
		raw("invalid/path-traversal", "server-power-off", schemas.ReasonInvalidEvent,
			`{"template":"Server Power Off","resource":{"type":"compute-ops-mgmt/server","id":"../../jobs"}}`, nil),
		raw("invalid/expired", "server-power-on", schemas.ReasonExpired,
			`{"template":"Server Power On","resource":{"type":"compute-ops-mgmt/server","id":"`+s1+`"},"expiresAt":"2020-01-01T00:00:00Z"}`, nil),
		raw("rejected-by-com/unknown-server", "server-power-on", schemas.ReasonCOMRejected,
			`{"template":"Server Power On","resource":{"type":"compute-ops-mgmt/server","id":"000000-000+NOSUCHSERVER"}}`, nil),
	)
	return cases
}

// demoJob is what the event stream said about one job.
type demoJob struct {
	id      string
	parent  string
	states  []string
	final   string
	result  string
	request string
}

// demoWatch follows the events stream and keeps what it says per request.
type demoWatch struct {
	mu        sync.Mutex
	submitted map[string]string // request id → job id
	rejected  map[string]string // request id → reason
	jobs      map[string]*demoJob
	events    int
	changed   chan struct{}
}

func (w *demoWatch) observe(e event.Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.events++
	rid := ext(e, schemas.ExtRequestID)
	switch e.Type() {
	case schemas.TypeSubmitted:
		var d schemas.JobEvent
		if json.Unmarshal(e.Data(), &d) == nil {
			w.submitted[rid] = d.JobID
		}
	case schemas.TypeRejected:
		var d schemas.Rejected
		if json.Unmarshal(e.Data(), &d) == nil {
			w.rejected[rid] = d.Reason
		}
	case schemas.TypeStateChanged:
		var d schemas.JobEvent
		if json.Unmarshal(e.Data(), &d) != nil {
			return
		}
		j := w.jobs[d.JobID]
		if j == nil {
			j = &demoJob{id: d.JobID, request: rid}
			if d.ParentJobID != nil {
				j.parent = *d.ParentJobID
			}
			w.jobs[d.JobID] = j
		}
		j.states = append(j.states, d.State)
		if d.Terminal {
			j.final, j.result = d.State, deref(d.ResultCode)
		}
	}
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

func cmdDemo(ctx context.Context, env *Env, args []string) error {
	fs := newFlags(env, "demo", "demo [--timeout 60s] [--quiet]")
	timeout := fs.Duration("timeout", 60*time.Second, "fail unless every request reaches its expected end within this")
	quiet := fs.Bool("quiet", false, "do not print the notifications as they are posted")
	keep := fs.Bool("keep", false, "keep the demo's data directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "comjobs-demo-")
	if err != nil {
		return err
	}
	if !*keep {
		defer os.RemoveAll(dir)
	}
	cfg := env.Config
	cfg.NATSURL, cfg.COMBaseURL, cfg.DataDir = "", "", dir
	cfg.SlackToken, cfg.SlackWebhookURL = "", ""
	cfg.HTTPAddr, cfg.NATSListen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.PollInterval = 250 * time.Millisecond
	cfg.ShutdownTimeout = 15 * time.Second
	denv := *env
	denv.Config = cfg
	// The demo's own narration goes to stdout; the service logs only errors
	// (rejections, which it logs as warnings, are in the summary anyway).
	if cfg.LogLevel == "info" {
		denv.Logger = newLogger(env.Stderr, cfg.LogFormat, "error")
	}
	var notes io.Writer = env.Stdout
	if *quiet {
		notes = io.Discard
	}
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	start := time.Now()
	svc, err := startService(sctx, &denv, map[string]bool{roleConsumer: true, roleTracker: true, roleNotifier: true}, serviceOptions{
		infra:   infraOptions{embedNATS: true, simulate: true, needCOM: true, simOptions: comsim.Options{Seed: 1}},
		console: notes,
	})
	if err != nil {
		return err
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- svc.Wait() }()
	in := svc.in
	fmt.Fprintf(env.Stdout, "comjobs demo: embedded NATS at %s, COM simulator at %s, console notifications\n\n", in.nc.ConnectedUrl(), in.sim.URL())

	res, runErr := runDemo(sctx, env.Stdout, in, *timeout)
	stop()
	if err := <-waitErr; err != nil && runErr == nil {
		runErr = fmt.Errorf("shutdown: %w", err)
	}
	if res != nil {
		res.print(env.Stdout, time.Since(start))
	}
	if runErr != nil {
		return &exitError{code: 1, err: fmt.Errorf("demo failed: %w", runErr)}
	}
	return nil
}

// demoResult is the summary of a demo run.
type demoResult struct {
	rows     [][]string
	failures []string
	simJobs  int
	events   int
	dlq      int
	notified int
}

func runDemo(ctx context.Context, out io.Writer, in *infra, timeout time.Duration) (*demoResult, error) {
	run := time.Now().UTC().Format("150405")
	cases := demoCases(run)
	w := &demoWatch{submitted: map[string]string{}, rejected: map[string]string{}, jobs: map[string]*demoJob{}, changed: make(chan struct{}, 1)}

	oc, err := in.js.OrderedConsumer(ctx, schemas.StreamEvents, jetstream.OrderedConsumerConfig{FilterSubjects: []string{schemas.SubjectEvents + ".>"}})
	if err != nil {
		return nil, fmt.Errorf("follow events: %w", err)
	}
	cc, err := oc.Consume(func(m jetstream.Msg) {
		if e, err := cenats.Decode(m.Headers(), m.Data(), cenats.DecodeOptions{MaxSize: 1 << 20}); err == nil {
			w.observe(e)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("follow events: %w", err)
	}
	defer cc.Stop()

	v, err := schemas.NewValidator()
	if err != nil {
		return nil, err
	}
	pub := publisher.New(in.js, in.logger, publisher.WithValidator(v))
	fmt.Fprintf(out, "publishing %d requests (%d templates, scenarios, a duplicate, invalid ones)...\n\n", len(cases), len(com.Templates()))
	for _, c := range cases {
		if c.rawSubject != "" {
			msg := &nats.Msg{Subject: c.rawSubject, Header: c.rawHeaders, Data: c.rawBody}
			msg.Header.Set(jetstream.MsgIDHeader, schemas.RequestKey(demoSource, c.id))
			if _, err := in.js.PublishMsg(ctx, msg); err != nil {
				return nil, fmt.Errorf("publish %s: %w", c.name, err)
			}
			continue
		}
		e, err := publisher.NewRequest(demoSource, c.id, c.req)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c.name, err)
		}
		if _, err := pub.Submit(ctx, e); err != nil {
			return nil, fmt.Errorf("submit %s: %w", c.name, err)
		}
	}

	deadline := time.After(timeout)
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	ended := map[string]bool{}
	for {
		pending := demoPending(w, cases, in, ctx, ended)
		if len(pending) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return demoSummarize(ctx, w, cases, in), ctx.Err()
		case <-deadline:
			res := demoSummarize(ctx, w, cases, in)
			return res, fmt.Errorf("not every request reached its end within %s: waiting for %s", timeout, strings.Join(pending, ", "))
		case <-w.changed:
		case <-tick.C:
			fmt.Fprintf(out, "… %d of %d requests at their end, %d events so far\n", len(cases)-len(pending), len(cases), w.eventCount())
		}
	}
	res := demoSummarize(ctx, w, cases, in)
	if len(res.failures) > 0 {
		return res, fmt.Errorf("%d request(s) did not end as expected", len(res.failures))
	}
	return res, nil
}

func (w *demoWatch) eventCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.events
}

// demoPending lists the cases not yet at their end (events and
// notifications both), ending STALLED jobs by hand on the way.
func demoPending(w *demoWatch, cases []*demoCase, in *infra, ctx context.Context, ended map[string]bool) []string {
	notified := demoNotified(ctx, in)
	w.mu.Lock()
	defer w.mu.Unlock()
	var pending []string
	for _, c := range cases {
		switch c.wantOutcome {
		case "duplicate":
			continue
		case "rejected":
			if _, ok := w.rejected[c.id]; !ok || !hasKind(notified[schemas.RequestKey(demoSource, c.id)], "rejected") {
				pending = append(pending, c.name)
			}
			continue
		}
		jid, ok := w.submitted[c.id]
		if !ok {
			pending = append(pending, c.name)
			continue
		}
		j := w.jobs[jid]
		if c.endByHand && j != nil && len(j.states) > 0 && j.states[len(j.states)-1] == schemas.StateStalled && !ended[jid] {
			ended[jid] = true
			if _, err := tracker.EndJob(ctx, in.com, jid, schemas.StateError, "demo: ended by hand after STALLED"); err != nil {
				in.logger.Warn("demo: end stalled job", "job", jid, "err", err)
				ended[jid] = false
			}
		}
		if j == nil || j.final == "" || len(notified[jid]) == 0 || !hasKind(notified[jid], "terminal") {
			pending = append(pending, c.name)
		}
	}
	return pending
}

func hasKind(kinds []string, k string) bool {
	for _, x := range kinds {
		if x == k {
			return true
		}
	}
	return false
}

// demoNotified reads what the notifier recorded as posted: job id (or
// request) → kinds.
func demoNotified(ctx context.Context, in *infra) map[string][]string {
	out := map[string][]string{}
	kv, err := in.js.KeyValue(ctx, schemas.BucketNotified)
	if err != nil {
		return out
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return out
	}
	for k := range lister.Keys() {
		e, err := kv.Get(ctx, k)
		if err != nil {
			continue
		}
		var r struct {
			JobID  string `json:"jobId"`
			Kind   string `json:"kind"`
			Posted bool   `json:"posted"`
		}
		if json.Unmarshal(e.Value(), &r) == nil && r.Posted {
			out[r.JobID] = append(out[r.JobID], r.Kind)
		}
	}
	order := map[string]int{"submitted": 0, "running": 1, "overdue": 2, "stalled": 3, "stalled-reminder": 4, "stalled-resolved": 5, "terminal": 6, "rejected": 7}
	for _, kinds := range out {
		sort.SliceStable(kinds, func(i, j int) bool { return order[kinds[i]] < order[kinds[j]] })
	}
	return out
}

func demoSummarize(ctx context.Context, w *demoWatch, cases []*demoCase, in *infra) *demoResult {
	notified := demoNotified(ctx, in)
	dlq, _ := consumer.ListDLQ(ctx, in.js)
	dlqReasons := map[string]string{}
	for _, d := range dlq {
		dlqReasons[d.RequestKey] = d.Reason
	}
	// The simulator's own records: top-level jobs per (template, resource).
	simJobs := in.sim.Jobs()
	top := 0
	for _, j := range simJobs {
		if j.ParentJobID == "" {
			top++
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	res := &demoResult{simJobs: top, events: w.events, dlq: len(dlq)}
	for _, c := range cases {
		key := schemas.RequestKey(demoSource, c.id)
		row := []string{c.name, "-", "-", "-", "-", "ok"}
		fail := func(why string) {
			row[5] = "FAIL: " + why
			res.failures = append(res.failures, c.name+": "+why)
		}
		switch c.wantOutcome {
		case "duplicate":
			row[2] = "duplicate"
			n := 0
			for _, cc := range cases {
				if cc.id == c.id && w.submitted[cc.id] != "" {
					n++
				}
			}
			row[1] = w.submitted[c.id]
			if n == 0 {
				fail("the original was not submitted")
			}
		case "rejected":
			reason := w.rejected[c.id]
			row[2] = "rejected: " + orDash(reason)
			row[3] = "no job"
			row[4] = strings.Join(notified[key], ",")
			if reason != c.wantReason {
				fail(fmt.Sprintf("want reason %s, got %q", c.wantReason, reason))
			} else if dlqReasons[key] != c.wantReason {
				fail(fmt.Sprintf("dead letter reason %q", dlqReasons[key]))
			}
		default:
			jid := w.submitted[c.id]
			row[1] = orDash(jid)
			j := w.jobs[jid]
			if j == nil {
				fail("no job events")
				break
			}
			got := j.final
			if j.result != "" {
				got += "/" + j.result
			}
			row[2] = strings.Join(j.states, "→")
			if rec, ok := in.sim.Job(jid); ok && len(rec.History) > 0 {
				last := rec.History[len(rec.History)-1]
				row[3] = last.State
				if last.ResultCode != "" {
					row[3] += "/" + last.ResultCode
				}
			} else {
				row[3] = "unknown to COM"
			}
			row[4] = strings.Join(notified[jid], ",")
			want := c.wantState
			if c.wantResult != "" {
				want += "/" + c.wantResult
			}
			switch {
			case got != want:
				fail("want " + want + ", events say " + orDash(got))
			case row[3] != want:
				fail("want " + want + ", simulator says " + row[3])
			case c.wantSeen != "" && !hasKind(j.states, c.wantSeen):
				fail(c.wantSeen + " was never published")
			case !hasKind(notified[jid], "terminal"):
				fail("no terminal notification")
			}
		}
		res.rows = append(res.rows, row)
	}
	for _, kinds := range notified {
		res.notified += len(kinds)
	}
	want := 0
	for _, c := range cases {
		if c.wantOutcome == "submitted" {
			want++
		}
	}
	if top != want {
		res.failures = append(res.failures, fmt.Sprintf("simulator holds %d top-level jobs, want exactly %d (one per valid request)", top, want))
	}
	return res
}

func (r *demoResult) print(w io.Writer, took time.Duration) {
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REQUEST\tCOM JOB\tPUBLISHED STATES (events)\tCOM SAYS (simulator)\tNOTIFIED\tCHECK")
	for _, row := range r.rows {
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	tw.Flush()
	fmt.Fprintf(w, "\n%d requests, %d COM jobs created (one per valid request), %d events read back, %d dead letters, %d notifications; %s\n",
		len(r.rows), r.simJobs, r.events, r.dlq, r.notified, took.Round(100*time.Millisecond))
	if len(r.failures) == 0 {
		fmt.Fprintln(w, "every request reached its expected end ✔")
		return
	}
	fmt.Fprintln(w, "NOT as expected:")
	for _, f := range r.failures {
		fmt.Fprintln(w, "  -", f)
	}
}
