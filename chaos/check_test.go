package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/comjobs/comjobs/cenats"
	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/com/comsim"
	"github.com/comjobs/comjobs/consumer"
	"github.com/comjobs/comjobs/notify/slack/slacktest"
	"github.com/comjobs/comjobs/requestcases"
	"github.com/comjobs/comjobs/schemas"
)

// checkInput is the final record of a run.
type checkInput struct {
	valid      []validRequest
	hostile    []requestcases.Case
	hostileSeq []uint64
	events     []evRec
	sim        []comsim.JobRecord
	slack      []slacktest.Message
	dlq        []consumer.DeadLetter
	ended      map[string]bool
	// queued holds the requests still in COMJOBS_REQUESTS after the run
	// (request id → stream sequence): not lost, but not done either.
	queued map[string]uint64
}

// report is the figures of a run.
type report struct {
	requests, hostile          int
	republished                int
	faults                     []fault
	published, settled         time.Duration
	duration                   time.Duration
	jobs, children             int
	duplicates, losses, orphan int
	unfinished                 int
	events                     map[string]int
	dupObservations, dupSubmit int
	slackKinds                 map[string]int
	stalledEpisodes            int
	dlq                        int
	simCalls, slackCalls       map[string]int
	goroutines                 [2]int
}

// queuedRequests returns the requests still in COMJOBS_REQUESTS, by
// request id.
func queuedRequests(ctx context.Context, js jetstream.JetStream) (map[string]uint64, error) {
	s, err := js.Stream(ctx, schemas.StreamRequests)
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	if info.State.Msgs == 0 {
		return out, nil
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return out, fmt.Errorf("get request %d: %w", seq, err)
		}
		if e, err := cenats.Decode(nats.Header(m.Header), m.Data, cenats.DecodeOptions{MaxSize: 1 << 20}); err == nil {
			out[e.ID()] = seq
		}
	}
	return out, nil
}

func listDLQ(ctx context.Context, js jetstream.JetStream) ([]consumer.DeadLetter, error) {
	return consumer.ListDLQ(ctx, js)
}

// notification reads a Slack message's comjobs metadata: job id and kind.
func notification(m slacktest.Message) (job, kind string) {
	if m.Metadata == nil || m.Metadata.EventType != "comjobs_notification" {
		return "", ""
	}
	return fmt.Sprint(m.Metadata.EventPayload["job_id"]), fmt.Sprint(m.Metadata.EventPayload["kind"])
}

// check verifies every promise against the final record, request by
// request and job by job, and returns the figures. Each failure names the
// request or job.
func check(t *testing.T, in checkInput) *report {
	t.Helper()
	rep := &report{events: map[string]int{}, slackKinds: map[string]int{}}
	const maxReports = 20
	failures := map[string]int{}
	fail := func(kind, format string, args ...any) {
		failures[kind]++
		if failures[kind] <= maxReports {
			t.Errorf(kind+": "+format, args...)
		}
	}
	defer func() {
		for k, n := range failures {
			if n > maxReports {
				t.Errorf("%s: %d more", k, n-maxReports)
			}
		}
	}()

	simJobs := map[string]comsim.JobRecord{}
	for _, j := range in.sim {
		simJobs[j.ID] = j
		if j.ParentJobID == "" {
			rep.jobs++
		} else {
			rep.children++
		}
	}

	// Events: decode, group.
	submitted := map[string][]string{} // request id → job ids, one per submitted event
	states := map[string][]schemas.JobEvent{}
	rejectedBySeq := map[uint64][]string{}
	for _, e := range in.events {
		if e.err != nil {
			fail("undecodable event", "seq %d: %v", e.seq, e.err)
			continue
		}
		rep.events[e.typ]++
		switch e.typ {
		case schemas.TypeSubmitted:
			if e.reqSrc != upstreamSource {
				fail("submitted event of an unknown source", "seq %d: requestsource %q", e.seq, e.reqSrc)
			}
			submitted[e.reqID] = append(submitted[e.reqID], e.job.JobID)
		case schemas.TypeStateChanged:
			states[e.job.JobID] = append(states[e.job.JobID], e.job)
		case schemas.TypeRejected:
			rejectedBySeq[e.rej.StreamSeq] = append(rejectedBySeq[e.rej.StreamSeq], e.rej.Reason)
		}
	}

	// Exactly one COM job per valid request.
	owner := map[string]string{} // job id → request id
	for _, v := range in.valid {
		jobs := submitted[v.id]
		distinct := map[string]bool{}
		for _, j := range jobs {
			distinct[j] = true
		}
		switch {
		case len(distinct) == 0:
			if seq, ok := in.queued[v.id]; ok {
				rep.unfinished++
				fail("unfinished request", "%s (%s): still queued at stream sequence %d when the run ended", v.id, v.scenario, seq)
				continue
			}
			rep.losses++
			fail("lost request", "%s (%s): no submitted event, and no longer queued", v.id, v.scenario)
			continue
		case len(distinct) > 1:
			rep.duplicates += len(distinct) - 1
			fail("duplicate jobs", "%s: submitted as %v", v.id, jobs)
		case len(jobs) > 1:
			rep.dupSubmit += len(jobs) - 1
			fail("submitted event published twice", "%s: %v", v.id, jobs)
		}
		tmpl, _ := com.Lookup(v.req.Template)
		for j := range distinct {
			owner[j] = v.id
			rec, ok := simJobs[j]
			if !ok {
				fail("submitted job unknown to COM", "%s: job %s", v.id, j)
				continue
			}
			if rec.ParentJobID != "" || rec.TemplateID != tmpl.ID {
				fail("submitted job is not the request's", "%s: job %s has template %s parent %q, want %s", v.id, j, rec.TemplateID, rec.ParentJobID, tmpl.ID)
			}
		}
	}
	for _, j := range in.sim {
		if j.ParentJobID == "" && owner[j.ID] == "" {
			rep.orphan++
			fail("COM job of no request (a duplicate)", "job %s template %s resource %s created %s", j.ID, j.TemplateID, j.ResourceID, j.CreatedAt.Format(time.RFC3339Nano))
		}
	}
	if rep.jobs != len(in.valid) {
		fail("COM job count", "COM holds %d top-level jobs, want exactly %d (one per valid request)", rep.jobs, len(in.valid))
	}

	// Per job: published states an in-order subsequence of the history,
	// ending in the real final state; no observation twice; one terminal
	// message; one STALLED alert per STALLED episode.
	terminalMsgs := map[string]int{}
	stalledMsgs := map[string]int{}
	for _, m := range in.slack {
		job, kind := notification(m)
		if kind == "" {
			rep.slackKinds["(no metadata)"]++
			continue
		}
		rep.slackKinds[kind]++
		switch kind {
		case "terminal":
			terminalMsgs[job]++
		case "stalled":
			stalledMsgs[job]++
		}
		if kind != "rejected" {
			if _, ok := simJobs[job]; !ok {
				fail("Slack message about an unknown job", "%s message for job %q", kind, job)
			}
		}
	}
	for _, j := range in.sim {
		evs := states[j.ID]
		byGen := map[int64]comsim.StateChange{}
		episodes := 0
		for i, h := range j.History {
			byGen[h.Generation] = h
			if h.State == comsim.StateStalled && (i == 0 || j.History[i-1].State != comsim.StateStalled) {
				episodes++
			}
		}
		rep.stalledEpisodes += episodes
		if len(evs) == 0 {
			fail("job without events", "job %s (request %s)", j.ID, owner[j.ID])
			continue
		}
		seen := map[int64]bool{}
		last := int64(-1)
		for _, e := range evs {
			if seen[e.Generation] {
				rep.dupObservations++
				fail("observation published twice", "job %s generation %d (%s)", j.ID, e.Generation, e.State)
				continue
			}
			seen[e.Generation] = true
			if e.Generation <= last {
				fail("events out of order", "job %s: generation %d after %d", j.ID, e.Generation, last)
			}
			last = e.Generation
			h, ok := byGen[e.Generation]
			if !ok {
				fail("observation not in COM's history", "job %s generation %d %s", j.ID, e.Generation, e.State)
				continue
			}
			if h.State != e.State || h.ResultCode != deref(e.ResultCode) {
				fail("observation differs from COM's history", "job %s generation %d: published %s/%s, COM had %s/%s", j.ID, e.Generation, e.State, deref(e.ResultCode), h.State, h.ResultCode)
			}
		}
		final := j.History[len(j.History)-1]
		end := evs[len(evs)-1]
		if !end.Terminal || end.Generation != final.Generation || end.State != final.State || deref(end.ResultCode) != final.ResultCode {
			fail("wrong final state", "job %s: last published %s/%s gen %d terminal %v, COM ended %s/%s gen %d", j.ID, end.State, deref(end.ResultCode), end.Generation, end.Terminal, final.State, final.ResultCode, final.Generation)
		}
		if n := terminalMsgs[j.ID]; n != 1 {
			fail("terminal Slack messages", "job %s: %d, want 1", j.ID, n)
		}
		if n := stalledMsgs[j.ID]; n != episodes {
			fail("STALLED alerts", "job %s: %d alerts for %d STALLED episodes", j.ID, n, episodes)
		}
		if episodes > 0 && !in.ended[j.ID] {
			fail("STALLED job not ended by hand", "job %s", j.ID)
		}
	}
	for id := range states {
		if _, ok := simJobs[id]; !ok {
			fail("events about a job COM never had", "job %s", id)
		}
	}

	// Exactly the hostile requests rejected and dead-lettered, each with
	// its reason.
	dlqBySeq := map[uint64][]string{}
	for _, d := range in.dlq {
		rep.dlq++
		if d.Role != "consumer" {
			fail("dead letter of another role", "%s/%s seq %d: %s", d.Role, d.Reason, d.StreamSeq, d.Message)
			continue
		}
		dlqBySeq[d.StreamSeq] = append(dlqBySeq[d.StreamSeq], d.Reason)
	}
	hostileSeqs := map[uint64]bool{}
	for i, c := range in.hostile {
		seq := in.hostileSeq[i]
		hostileSeqs[seq] = true
		if got := rejectedBySeq[seq]; len(got) != 1 || got[0] != c.Expect.Reason {
			fail("hostile request's rejected events", "%s (seq %d): %v, want [%s]", c.Name, seq, got, c.Expect.Reason)
		}
		if got := dlqBySeq[seq]; len(got) != 1 || got[0] != c.Expect.Reason {
			fail("hostile request's dead letters", "%s (seq %d): %v, want [%s]", c.Name, seq, got, c.Expect.Reason)
		}
	}
	for seq, reasons := range rejectedBySeq {
		if !hostileSeqs[seq] {
			fail("valid request rejected", "seq %d: %v", seq, reasons)
		}
	}
	for seq, reasons := range dlqBySeq {
		if !hostileSeqs[seq] {
			fail("valid request dead-lettered", "seq %d: %v", seq, reasons)
		}
	}
	return rep
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// print writes the figures to the test log and, with -v, to stdout.
func (r *report) print(t *testing.T) {
	var b strings.Builder
	fmt.Fprintf(&b, "\n==== chaos run figures ====\n")
	fmt.Fprintf(&b, "requests:            %d valid (%d republished raw), %d hostile\n", r.requests, r.republished, r.hostile)
	kinds := map[string]int{}
	for _, f := range r.faults {
		kinds[f.kind]++
	}
	var ks []string
	for k, n := range kinds {
		ks = append(ks, fmt.Sprintf("%s ×%d", k, n))
	}
	sort.Strings(ks)
	fmt.Fprintf(&b, "faults injected:     %d (%s)\n", len(r.faults), strings.Join(ks, ", "))
	fmt.Fprintf(&b, "COM faults:          429 10%%, 5xx 5%%, slow 5%% (+200ms), dropped answers 2%%; calls %s\n", fmtCounts(r.simCalls))
	fmt.Fprintf(&b, "Slack calls:         %s (429 share 5%% + 1 msg/s/channel)\n", fmtCounts(r.slackCalls))
	fmt.Fprintf(&b, "COM jobs created:    %d top-level (want %d), %d child jobs\n", r.jobs, r.requests, r.children)
	fmt.Fprintf(&b, "duplicates:          %d (COM jobs of no request: %d; submitted twice: %d; observations published twice: %d)\n", r.duplicates, r.orphan, r.dupSubmit, r.dupObservations)
	fmt.Fprintf(&b, "losses:              %d (unfinished, still queued at the end: %d)\n", r.losses, r.unfinished)
	fmt.Fprintf(&b, "events:              %s\n", fmtCounts(r.events))
	fmt.Fprintf(&b, "STALLED episodes:    %d\n", r.stalledEpisodes)
	fmt.Fprintf(&b, "Slack messages:      %s\n", fmtCounts(r.slackKinds))
	fmt.Fprintf(&b, "dead letters:        %d\n", r.dlq)
	fmt.Fprintf(&b, "goroutines:          %d before, %d after shutdown\n", r.goroutines[0], r.goroutines[1])
	fmt.Fprintf(&b, "duration:            %s (published by %s, settled by %s)\n", r.duration.Round(time.Millisecond), r.published.Round(time.Millisecond), r.settled.Round(time.Millisecond))
	for _, f := range r.faults {
		fmt.Fprintf(&b, "  %8s  %-20s %s\n", f.at.Round(time.Millisecond), f.kind, f.what)
	}
	t.Log(b.String())
	if testing.Verbose() {
		fmt.Fprint(os.Stdout, b.String())
	}
}

func fmtCounts(m map[string]int) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var parts []string
	for _, k := range ks {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}
