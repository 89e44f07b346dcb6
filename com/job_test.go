package com_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/comjobs/comjobs/com"
)

const (
	seedV1beta3Job = `{
"id": "2b8540fc-f275-48bb-ae4b-bf9a42b6cc91", "parentJobId": null, "type": "compute-ops-mgmt/job",
"resourceUri": "/compute-ops-mgmt/v1beta3/jobs/2b8540fc-f275-48bb-ae4b-bf9a42b6cc91",
"createdAt": "2022-08-04T18:52:26.278608+00:00", "updatedAt": "2022-08-04T18:54:09.903588+00:00",
"displayName": "GroupFirmwareCompliance", "name": "GroupFirmwareCompliance",
"jobTemplateUri": "/compute-ops-mgmt/v1beta2/job-templates/23b8ba2a-6c46-4223-b028-919382c7dcac",
"associatedResourceUri": "/compute-ops-mgmt/v1beta2/groups/8a3a2a46-0102-48e2-bdd9-a29ee6909860",
"resource": {"resourceUri": "/compute-ops-mgmt/v1beta2/groups/8a3a2a46-0102-48e2-bdd9-a29ee6909860", "type": "groups"},
"data": {}, "state": "COMPLETE", "resultCode": "SUCCESS", "status": "Complete", "statusDetails": {}, "generation": 6}`
	seedV1beta2Job = `{
"id": "2b8540fc-f275-48bb-ae4b-bf9a42b6cc91", "parentJobId": null, "type": "compute-ops-mgmt/job",
"resourceUri": "/compute-ops-mgmt/v1beta2/jobs/2b8540fc-f275-48bb-ae4b-bf9a42b6cc91",
"createdAt": "2022-08-04T18:52:26.278608+00:00", "updatedAt": "2022-08-04T18:54:09.903588+00:00",
"displayName": "GroupFirmwareCompliance", "name": "GroupFirmwareCompliance",
"jobTemplateUri": "/compute-ops-mgmt/v1beta2/job-templates/23b8ba2a-6c46-4223-b028-919382c7dcac",
"associatedResourceUri": "/compute-ops-mgmt/v1beta2/groups/8a3a2a46-0102-48e2-bdd9-a29ee6909860",
"resource": {"resourceUri": "/compute-ops-mgmt/v1beta2/groups/8a3a2a46-0102-48e2-bdd9-a29ee6909860", "type": "groups"},
"data": {}, "state": "COMPLETE", "status": "Complete", "statusDetails": {}, "generation": 6}`
	v1Job = `{"id": "7f1c0d2e-1111-4a5b-9c8d-0e1f2a3b4c5d", "parentJobId": "5e4d3c2b-0000-4a5b-9c8d-0e1f2a3b4c5d",
"type": "compute-ops-mgmt/job", "resourceUri": "/compute-ops-mgmt/v1/jobs/7f1c0d2e-1111-4a5b-9c8d-0e1f2a3b4c5d",
"createdAt": "2025-06-01T10:00:00Z", "updatedAt": "2025-06-01T10:05:00.5Z", "name": "FirmwareUpdate.New",
"jobTemplate": "fd54a96c-cabc-42e3-aee3-374a2d009dba",
"resource": {"type": "compute-ops-mgmt/server", "id": "875765-S01+1M512501AB"},
"jobParams": {"bundle_id": "x"}, "state": "RUNNING", "resultCode": null, "status": "Updating",
"statusDetails": {"percent": 40}, "results": null, "generation": 3, "somethingNew": [1, 2]}`
)

func TestDecodeJob(t *testing.T) {
	success := "SUCCESS"
	tests := []struct {
		name    string
		body    string
		want    com.Job // Raw and StatusDetails are checked separately
		wantErr bool
	}{
		{"seed v1beta3", seedV1beta3Job, com.Job{
			ID: "2b8540fc-f275-48bb-ae4b-bf9a42b6cc91", Name: "GroupFirmwareCompliance",
			TemplateID: "23b8ba2a-6c46-4223-b028-919382c7dcac", ResourceType: com.ResourceGroup,
			ResourceID: "8a3a2a46-0102-48e2-bdd9-a29ee6909860", URI: "/compute-ops-mgmt/v1beta3/jobs/2b8540fc-f275-48bb-ae4b-bf9a42b6cc91",
			State: "COMPLETE", ResultCode: &success, Status: "Complete", Generation: 6,
			CreatedAt: time.Date(2022, 8, 4, 18, 52, 26, 278608000, time.UTC), UpdatedAt: time.Date(2022, 8, 4, 18, 54, 9, 903588000, time.UTC),
		}, false},
		{"a key given twice keeps its last non-null value", `{"id":"j1","state":"RUNNING","state":null,"generation":7,"generation":null}`,
			com.Job{ID: "j1", State: "RUNNING", Generation: 7}, false},
		{"seed v1beta2 has no resultCode", seedV1beta2Job, com.Job{
			ID: "2b8540fc-f275-48bb-ae4b-bf9a42b6cc91", Name: "GroupFirmwareCompliance",
			TemplateID: "23b8ba2a-6c46-4223-b028-919382c7dcac", ResourceType: com.ResourceGroup,
			ResourceID: "8a3a2a46-0102-48e2-bdd9-a29ee6909860", URI: "/compute-ops-mgmt/v1beta2/jobs/2b8540fc-f275-48bb-ae4b-bf9a42b6cc91",
			State: "COMPLETE", Status: "Complete", Generation: 6,
			CreatedAt: time.Date(2022, 8, 4, 18, 52, 26, 278608000, time.UTC), UpdatedAt: time.Date(2022, 8, 4, 18, 54, 9, 903588000, time.UTC),
		}, false},
		{"v1", v1Job, com.Job{
			ID: "7f1c0d2e-1111-4a5b-9c8d-0e1f2a3b4c5d", ParentJobID: "5e4d3c2b-0000-4a5b-9c8d-0e1f2a3b4c5d", Name: "FirmwareUpdate.New",
			TemplateID: "fd54a96c-cabc-42e3-aee3-374a2d009dba", ResourceType: com.ResourceServer, ResourceID: "875765-S01+1M512501AB",
			URI: "/compute-ops-mgmt/v1/jobs/7f1c0d2e-1111-4a5b-9c8d-0e1f2a3b4c5d", State: "RUNNING", Status: "Updating", Generation: 3,
			CreatedAt: time.Date(2025, 6, 1, 10, 0, 0, 0, time.UTC), UpdatedAt: time.Date(2025, 6, 1, 10, 5, 0, 500000000, time.UTC),
		}, false},
		{"unknown state carried", `{"id": "a", "state": "HALTED"}`, com.Job{ID: "a", State: "HALTED"}, false},
		{"plural appliance type made canonical", `{"id": "a", "resource": {"type": "compute-ops-mgmt/oneview-appliances", "id": "oneview+x"}}`,
			com.Job{ID: "a", ResourceType: com.ResourceOneViewAppliance, ResourceID: "oneview+x"}, false},
		{"unknown resource type carried", `{"id": "a", "resource": {"type": "compute-ops-mgmt/rack", "id": "r1"}}`,
			com.Job{ID: "a", ResourceType: "compute-ops-mgmt/rack", ResourceID: "r1"}, false},
		{"unsafe resource URI ignored", `{"id": "a", "associatedResourceUri": "https://x.example/compute-ops-mgmt/v1beta2/servers/s"}`, com.Job{ID: "a"}, false},
		{"bad timestamp left zero", `{"id": "a", "createdAt": "yesterday"}`, com.Job{ID: "a"}, false},
		{"no id", `{"state": "RUNNING"}`, com.Job{}, true},
		{"empty id", `{"id": ""}`, com.Job{}, true},
		{"id not a string", `{"id": 5}`, com.Job{}, true},
		{"generation not a number", `{"id": "a", "generation": "6"}`, com.Job{}, true},
		{"array", `[]`, com.Job{}, true},
		{"html", `<html><body>Bad gateway</body></html>`, com.Job{}, true},
		{"empty", ``, com.Job{}, true},
		{"trailing garbage", `{"id": "a"} {"id": "b"}`, com.Job{}, true},
		{"trailing bracket", `{"id": "a"}]`, com.Job{}, true},
		{"trailing brace", `{"id": "a"}}`, com.Job{}, true},
		{"trailing newline", "{\"id\": \"a\"}\n", com.Job{ID: "a"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := com.DecodeJob([]byte(tt.body))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("DecodeJob = %+v, want error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !json.Valid(got.Raw) {
				t.Errorf("Raw is not the JSON body: %q", got.Raw)
			}
			g := *got
			g.Raw, g.StatusDetails = nil, nil
			if (g.ResultCode == nil) != (tt.want.ResultCode == nil) || (g.ResultCode != nil && *g.ResultCode != *tt.want.ResultCode) {
				t.Errorf("ResultCode = %v, want %v", g.ResultCode, tt.want.ResultCode)
			}
			g.ResultCode, tt.want.ResultCode = nil, nil
			if !g.CreatedAt.Equal(tt.want.CreatedAt) || !g.UpdatedAt.Equal(tt.want.UpdatedAt) {
				t.Errorf("times %v %v, want %v %v", g.CreatedAt, g.UpdatedAt, tt.want.CreatedAt, tt.want.UpdatedAt)
			}
			g.CreatedAt, g.UpdatedAt, tt.want.CreatedAt, tt.want.UpdatedAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
			if gs, ws := jsonOf(t, g), jsonOf(t, tt.want); gs != ws {
				t.Errorf("DecodeJob =\n%s\nwant\n%s", gs, ws)
			}
		})
	}
	j, _ := com.DecodeJob([]byte(v1Job))
	if string(j.StatusDetails) != `{"percent": 40}` {
		t.Errorf("StatusDetails = %s", j.StatusDetails)
	}
	var raw map[string]any
	if err := json.Unmarshal(j.Raw, &raw); err != nil || raw["somethingNew"] == nil {
		t.Errorf("Raw lost unknown fields: %s", j.Raw)
	}
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// FuzzDecodeJob checks DecodeJob never panics and that what it accepts has
// an id and keeps its body.
func FuzzDecodeJob(f *testing.F) {
	for _, s := range []string{seedV1beta3Job, seedV1beta2Job, v1Job, `{"id":"a"}`, `{"id":"a","resource":{"resourceUri":"/compute-ops-mgmt/v1beta2/servers/%2F"}}`,
		`{"id":"a","jobTemplateUri":"/"}`, `{"id":"a","resultCode":null,"generation":1e3}`, `null`, `{}`, `<html>`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		j, err := com.DecodeJob(body)
		if err != nil {
			return
		}
		if j.ID == "" || len(j.Raw) == 0 {
			t.Fatalf("accepted a job without id or body: %+v", j)
		}
		if j.ResourceID != "" && com.ValidID(j.ResourceID) != nil && j.ResourceType == "" {
			t.Fatalf("resource id %q without type", j.ResourceID)
		}
	})
}

// BenchmarkDecodeJob decodes a v1 job answer, as the consumer does for
// every create and the tracker for every job a list returns.
func BenchmarkDecodeJob(b *testing.B) {
	body := []byte(v1Job)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := com.DecodeJob(body); err != nil {
			b.Fatal(err)
		}
	}
}
