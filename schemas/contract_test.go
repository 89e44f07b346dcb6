package schemas_test

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/comjobs/comjobs/schemas"
)

func ptr[T any](v T) *T { return &v }

var (
	t0  = time.Date(2026, 12, 1, 9, 30, 0, 0, time.UTC)
	job = schemas.JobEvent{
		JobID: "3ab4e1b8-6b06-4b8a-b1a1-0c8b8e0b9b11", JobURI: "/compute-ops-mgmt/v1/jobs/3ab4e1b8-6b06-4b8a-b1a1-0c8b8e0b9b11",
		ParentJobID:   ptr("parent-1"),
		Template:      schemas.TemplateRef{ID: "d0c13b58-748c-461f-9a61-c0c5c71f1bb4", Name: "Server Power Off", Slug: "server-power-off"},
		Resource:      schemas.Resource{Type: "compute-ops-mgmt/server", ID: "875765-S01+1M512501AB"},
		PreviousState: ptr("RUNNING"), State: "COMPLETE", ResultCode: ptr("SUCCESS"), Status: "Power off complete",
		StatusDetails: json.RawMessage(`{"message":"ok"}`), Terminal: true, Generation: 7,
		CreatedAt: t0, UpdatedAt: t0.Add(time.Minute), ObservedAt: t0.Add(2 * time.Minute),
		Labels: map[string]string{"ticket": "CHG-1"}, Notify: &schemas.Notify{SlackChannel: "#ops"},
	}
	firstObservation = schemas.JobEvent{
		JobID: "j2", JobURI: "/compute-ops-mgmt/v1/jobs/j2", State: "PENDING",
		Template:  schemas.TemplateRef{ID: "x", Name: "Server Power On", Slug: "server-power-on"},
		Resource:  schemas.Resource{Type: "compute-ops-mgmt/server", ID: "s"},
		CreatedAt: t0, UpdatedAt: t0, ObservedAt: t0,
	}
	rejected = schemas.Rejected{
		Reason: schemas.ReasonCOMRejected, Message: "COM: resource not found", Field: "data.resourceUri",
		Template: &schemas.TemplateRef{ID: "x", Name: "Server Power On", Slug: "server-power-on"},
		Resource: &schemas.Resource{Type: "compute-ops-mgmt/server", ID: "s"},
		Subject:  "comjobs.requests.server-power-on", StreamSeq: 42,
		COMError: &schemas.COMError{HTTPStatusCode: 404, ErrorCode: "HPE_GL_ERROR_NOT_FOUND", Message: "not found", DebugID: "d"},
		Labels:   map[string]string{"a": "b"}, Notify: &schemas.Notify{SlackChannel: "#ops"}, RejectedAt: t0,
	}
	request = schemas.Request{
		Template: "Server Power Off", Resource: &schemas.Resource{Type: "compute-ops-mgmt/server", ID: "s"},
		Data: map[string]any{"x": 1}, Notify: &schemas.Notify{SlackChannel: "#ops"}, Labels: map[string]string{"a": "b"},
		ExpiresAt: ptr(t0),
	}
)

// TestGoTypesMatchSchemas encodes Go values of every data type, validates
// them against their schema, and checks that the JSON field names of each
// fully populated value are exactly the schema's properties.
func TestGoTypesMatchSchemas(t *testing.T) {
	v, err := schemas.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		eventType string
		value     any
		full      bool // every field set: its keys must equal the schema's properties
	}{
		{"requested", schemas.TypeRequested, request, false}, // resourceUri and resource are exclusive
		{"requested with URI", schemas.TypeRequested, schemas.Request{Template: "t", ResourceURI: "/compute-ops-mgmt/v1beta2/servers/s"}, false},
		{"submitted", schemas.TypeSubmitted, job, true},
		{"state-changed", schemas.TypeStateChanged, job, true},
		{"first observation", schemas.TypeStateChanged, firstObservation, false},
		{"overdue", schemas.TypeOverdue, schemas.Overdue{JobEvent: job, Threshold: "10m0s", Since: t0}, true},
		{"rejected", schemas.TypeRejected, rejected, true},
		{"rejected minimal", schemas.TypeRejected, schemas.Rejected{Reason: schemas.ReasonInvalidEvent, Message: "m", Subject: "s", RejectedAt: t0}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := json.Marshal(tt.value)
			if err != nil {
				t.Fatal(err)
			}
			if err := v.ValidateData(tt.eventType, b); err != nil {
				t.Fatalf("%s does not match its schema: %v\n%s", tt.name, err, b)
			}
			if !tt.full {
				return
			}
			var got map[string]json.RawMessage
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			doc, err := schemas.SchemaJSON(tt.eventType)
			if err != nil {
				t.Fatal(err)
			}
			var sch struct {
				Properties map[string]json.RawMessage `json:"properties"`
			}
			if err := json.Unmarshal(doc, &sch); err != nil {
				t.Fatal(err)
			}
			if g, w := keys(got), keys(sch.Properties); g != w {
				t.Errorf("Go fields %s\nschema properties %s", g, w)
			}
		})
	}
	// The request type's fields, resourceUri included, are the schema's.
	b, _ := json.Marshal(request)
	var got map[string]json.RawMessage
	_ = json.Unmarshal(b, &got)
	got["resourceUri"] = nil
	doc, _ := schemas.SchemaJSON(schemas.TypeRequested)
	var sch struct {
		Properties map[string]json.RawMessage `json:"properties"`
	}
	_ = json.Unmarshal(doc, &sch)
	if g, w := keys(got), keys(sch.Properties); g != w {
		t.Errorf("Request fields %s\nschema properties %s", g, w)
	}
}

func keys[V any](m map[string]V) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return strings.Join(ks, ",")
}

func TestValidateDataRejects(t *testing.T) {
	v, err := schemas.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, eventType, data, want string
	}{
		{"state missing", schemas.TypeStateChanged, `{"jobId":"j"}`, "data.createdAt: required"},
		{"bad reason", schemas.TypeRejected, `{"reason":"nope","message":"m","subject":"s","rejectedAt":"2026-12-01T09:30:00Z"}`, "data.reason: must be one of"},
		{"bad time", schemas.TypeRejected, `{"reason":"expired","message":"m","subject":"s","rejectedAt":"noon"}`, "data.rejectedAt: must be a valid date-time"},
		{"not an object", schemas.TypeSubmitted, `"x"`, "data: must be a JSON object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := v.ValidateData(tt.eventType, []byte(tt.data))
			var rej *schemas.Rejection
			if !errors.As(err, &rej) || !strings.HasPrefix(rej.Message, tt.want) {
				t.Fatalf("err = %v, want message prefix %q", err, tt.want)
			}
		})
	}
	if err := v.ValidateData("com.example.unknown", []byte(`{}`)); err == nil {
		t.Error("unknown event type accepted")
	}
}

// TestSchemaFiles checks the embedded files are the ones in json/, each with
// the $id its constant names.
func TestSchemaFiles(t *testing.T) {
	for _, typ := range []string{schemas.TypeRequested, schemas.TypeSubmitted, schemas.TypeRejected, schemas.TypeStateChanged, schemas.TypeOverdue} {
		id, ok := schemas.DataSchema(typ)
		if !ok {
			t.Fatalf("no data schema for %s", typ)
		}
		name := strings.TrimPrefix(id, schemas.SchemaBase)
		embedded, err := fs.ReadFile(schemas.Files(), name)
		if err != nil {
			t.Fatal(err)
		}
		onDisk, err := os.ReadFile(filepath.Join("json", name))
		if err != nil {
			t.Fatal(err)
		}
		if string(embedded) != string(onDisk) {
			t.Errorf("%s: embedded copy differs", name)
		}
		var doc struct {
			ID     string `json:"$id"`
			Schema string `json:"$schema"`
		}
		if err := json.Unmarshal(onDisk, &doc); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if doc.ID != id || doc.Schema != "https://json-schema.org/draft/2020-12/schema" {
			t.Errorf("%s: $id %q $schema %q", name, doc.ID, doc.Schema)
		}
	}
}
