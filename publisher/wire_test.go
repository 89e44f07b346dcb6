package publisher_test

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/comjobs/comjobs/cenats"
	"github.com/comjobs/comjobs/publisher"
	"github.com/comjobs/comjobs/schemas"
)

var update = flag.Bool("update", false, "rewrite the golden wire examples in testdata/wire")

// wireExamples are one event of each type, as comjobs puts them on NATS.
func wireExamples(t *testing.T) map[string]struct {
	subject, msgID string
	e              event.Event
} {
	t.Helper()
	at := time.Date(2026, 12, 1, 9, 30, 0, 0, time.UTC)
	source, id := "//ci.example.net/pipelines/ops", "change-1234"
	ref := publisher.RequestRef{ID: id, Source: source, TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
	tpl := schemas.TemplateRef{ID: "d0c13b58-748c-461f-9a61-c0c5c71f1bb4", Name: "Server Power Off", Slug: "server-power-off"}
	res := schemas.Resource{Type: "compute-ops-mgmt/server", ID: "875765-S01+1M512501AB"}
	running, success := "RUNNING", schemas.ResultSuccess
	job := schemas.JobEvent{
		JobID: "5b0a4c1e-2f1d-4e7a-9c3b-8d6e0f1a2b3c", JobURI: "/compute-ops-mgmt/v1/jobs/5b0a4c1e-2f1d-4e7a-9c3b-8d6e0f1a2b3c",
		Template: tpl, Resource: res, State: schemas.StatePending, Status: "Job created", Generation: 1,
		CreatedAt: at, UpdatedAt: at, ObservedAt: at, Labels: map[string]string{"ticket": "CHG-1234"},
		Notify: &schemas.Notify{SlackChannel: "#dc-ops"},
	}
	done := job
	done.PreviousState, done.State, done.ResultCode, done.Status, done.Terminal, done.Generation = &running, schemas.StateComplete, &success, "Power off complete", true, 4
	done.UpdatedAt, done.ObservedAt = at.Add(3*time.Minute), at.Add(3*time.Minute+2*time.Second)
	overdue := schemas.Overdue{JobEvent: job, Threshold: "15m0s", Since: at}
	overdue.State, overdue.PreviousState, overdue.Generation = running, nil, 2
	rejected := schemas.Rejected{
		Reason: schemas.ReasonInvalidData, Message: "data.bundle_id: required", Field: "data.bundle_id",
		Template: &schemas.TemplateRef{ID: "fd54a96c-cabc-42e3-aee3-374a2d009dba", Name: "Server Firmware Update", Slug: "server-firmware-update"},
		Resource: &res, Subject: "comjobs.requests.server-firmware-update", StreamSeq: 17, RejectedAt: at,
	}

	req, err := publisher.NewRequest(source, id, schemas.Request{
		Template: "Server Power Off", ResourceURI: "/compute-ops-mgmt/v1beta2/servers/875765-S01+1M512501AB",
		Labels: map[string]string{"ticket": "CHG-1234"}, Notify: &schemas.Notify{SlackChannel: "#dc-ops"},
	})
	if err != nil {
		t.Fatal(err)
	}
	req.SetTime(at)
	out := map[string]struct {
		subject, msgID string
		e              event.Event
	}{
		"requested": {schemas.RequestSubject("server-power-off"), schemas.RequestKey(source, id), req},
	}
	key := schemas.RequestKey(source, id)
	// Ids and subjects as the consumer and tracker set them: the event id is
	// also the Nats-Msg-Id; ce-subject is the COM job id (the request key for
	// a rejection, which has no job).
	add := func(name, typ, src, evID, ceSubject, subject string, data any) {
		e, err := publisher.NewEvent(typ, src, evID, ceSubject, data, ref)
		if err != nil {
			t.Fatal(err)
		}
		e.SetTime(at)
		out[name] = struct {
			subject, msgID string
			e              event.Event
		}{subject, evID, e}
	}
	add("submitted", schemas.TypeSubmitted, "comjobs/consumer", key+"/submitted", job.JobID, schemas.SubmittedSubject("server-power-off"), job)
	add("state-changed", schemas.TypeStateChanged, "comjobs/tracker", job.JobID+"/4", job.JobID, schemas.StateSubject(schemas.StateComplete, "server-power-off"), done)
	add("overdue", schemas.TypeOverdue, "comjobs/tracker", job.JobID+"/overdue/15m0s", job.JobID, schemas.OverdueSubject("server-power-off"), overdue)
	add("rejected", schemas.TypeRejected, "comjobs/consumer", key+"/rejected", key, schemas.RejectedSubject("server-firmware-update"), rejected)
	return out
}

// render writes a message as `nats sub` shows it: subject, headers sorted,
// a blank line, the body (JSON indented for reading).
func render(subject, msgID string, e event.Event) (string, error) {
	msg, err := cenats.Encode(subject, e)
	if err != nil {
		return "", err
	}
	msg.Header.Set("Nats-Msg-Id", msgID)
	var b strings.Builder
	fmt.Fprintf(&b, "subject: %s\n", subject)
	names := make([]string, 0, len(msg.Header))
	for k := range msg.Header {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(&b, "%s: %s\n", k, msg.Header.Get(k))
	}
	var body any
	if err := json.Unmarshal(msg.Data, &body); err != nil {
		return "", err
	}
	pretty, err := json.MarshalIndent(body, "", "  ")
	if err != nil {
		return "", err
	}
	fmt.Fprintf(&b, "\n%s\n", pretty)
	return b.String(), nil
}

// TestWireExamples keeps testdata/wire/<type>.txt — one event of each type
// exactly as encoded, for the README — in step with the code, and checks
// each example passes the schemas. Run with -update to rewrite them.
func TestWireExamples(t *testing.T) {
	v, err := schemas.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	for name, ex := range wireExamples(t) {
		t.Run(name, func(t *testing.T) {
			if err := v.ValidateData(ex.e.Type(), ex.e.Data()); err != nil {
				t.Fatalf("example off schema: %v", err)
			}
			got, err := render(ex.subject, ex.msgID, ex.e)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", "wire", name+".txt")
			if *update {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update)", err)
			}
			if got != string(want) {
				t.Errorf("%s is stale; run go test ./publisher -run TestWireExamples -update\n got:\n%s", path, got)
			}
		})
	}
}
