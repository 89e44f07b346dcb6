package schemas

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// TestJobEventCheckAgreesWithSchema holds JobEvent.Check to the JSON
// Schema's verdict on the events' data: hand-picked edge cases, then
// random events drawn from alphabets that hit each rule. An event that
// encoding/json refuses must fail Check too.
func TestJobEventCheckAgreesWithSchema(t *testing.T) {
	v, err := NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	base := func() JobEvent {
		p := "RUNNING"
		at := time.Date(2026, 12, 3, 10, 0, 0, 123, time.UTC)
		return JobEvent{JobID: "j-1", JobURI: "/compute-ops-mgmt/v1/jobs/j-1", PreviousState: &p,
			Template: TemplateRef{ID: "t", Name: "Server Power On", Slug: "server-power-on"},
			Resource: Resource{Type: "compute-ops-mgmt/server", ID: "s"}, State: "COMPLETE", Status: "ok",
			Generation: 3, CreatedAt: at, UpdatedAt: at, ObservedAt: at,
			Labels: map[string]string{"a": "b"}, Notify: &Notify{SlackChannel: "C1"}}
	}
	cases := map[string]func(*JobEvent){
		"valid":               func(*JobEvent) {},
		"zero value times":    func(e *JobEvent) { e.CreatedAt, e.UpdatedAt, e.ObservedAt = time.Time{}, time.Time{}, time.Time{} },
		"empty job id":        func(e *JobEvent) { e.JobID = "" },
		"empty state":         func(e *JobEvent) { e.State = "" },
		"unknown state":       func(e *JobEvent) { e.State = "SOMETHING_NEW" },
		"empty slug":          func(e *JobEvent) { e.Template.Slug = "" },
		"upper-case slug":     func(e *JobEvent) { e.Template.Slug = "Server-power-on" },
		"slug with a space":   func(e *JobEvent) { e.Template.Slug = "server power" },
		"slug with a newline": func(e *JobEvent) { e.Template.Slug = "server\n" },
		"non-ASCII slug":      func(e *JobEvent) { e.Template.Slug = "serveur-é" },
		"negative generation": func(e *JobEvent) { e.Generation = -1 },
		"year 9999":           func(e *JobEvent) { e.UpdatedAt = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC) },
		"year 10000":          func(e *JobEvent) { e.UpdatedAt = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) },
		"year -1":             func(e *JobEvent) { e.CreatedAt = time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC) },
		"offset zone":         func(e *JobEvent) { e.ObservedAt = e.ObservedAt.In(time.FixedZone("x", 5*3600+1800)) },
		"null optional fields": func(e *JobEvent) {
			e.PreviousState, e.ParentJobID, e.ResultCode, e.Labels, e.Notify = nil, nil, nil, nil, nil
		},
		"status details object":   func(e *JobEvent) { e.StatusDetails = json.RawMessage(`{"k":[1,2]}`) },
		"status details not JSON": func(e *JobEvent) { e.StatusDetails = json.RawMessage(`{`) },
		"zone offset 24h":         func(e *JobEvent) { e.CreatedAt = e.CreatedAt.In(time.FixedZone("", 24*3600)) },
		"zone offset -24h":        func(e *JobEvent) { e.UpdatedAt = e.UpdatedAt.In(time.FixedZone("", -24*3600)) },
		"zone offset 23:59:59":    func(e *JobEvent) { e.UpdatedAt = e.UpdatedAt.In(time.FixedZone("", 24*3600-1)) },
		"empty strings allowed":   func(e *JobEvent) { e.JobURI, e.Status, e.Template.ID, e.Resource.ID = "", "", "", "" },
	}
	for name, mutate := range cases {
		e := base()
		mutate(&e)
		agree(t, v, name, &e)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func(alphabet string, n int) string {
		r := []rune(alphabet)
		b := make([]rune, rng.IntN(n+1))
		for i := range b {
			b[i] = r[rng.IntN(len(r))]
		}
		return string(b)
	}
	for i := range 3000 {
		e := base()
		e.JobID = pick("ab1-_ é", 3)
		e.State = pick("RUNG_ x", 3)
		e.Template.Slug = pick("az09-A _é\t", 4)
		e.Generation = int64(rng.IntN(7)) - 3
		e.CreatedAt = time.Date(rng.IntN(20002)-10001, 1, 1, 0, 0, 0, 0, time.UTC)
		e.ObservedAt = e.ObservedAt.In(time.FixedZone("", rng.IntN(4*24*3600)-2*24*3600))
		agree(t, v, fmt.Sprintf("random %d", i), &e)
	}
}

func agree(t *testing.T, v *Validator, name string, e *JobEvent) {
	t.Helper()
	checkErr := e.Check()
	b, err := json.Marshal(e)
	if err != nil {
		if checkErr == nil {
			t.Errorf("%s: encoding/json refuses it (%v) but Check passed it", name, err)
		}
		return
	}
	for _, typ := range []string{TypeSubmitted, TypeStateChanged} {
		schemaErr := v.ValidateData(typ, b)
		if (checkErr == nil) != (schemaErr == nil) {
			t.Errorf("%s as %s: Check says %v, the schema says %v\n%s", name, typ, checkErr, schemaErr, b)
		}
	}
}
