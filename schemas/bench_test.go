package schemas_test

import (
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/comjobs/comjobs/cenats"
	"github.com/comjobs/comjobs/schemas"
)

// BenchmarkDecodeValidateRequest is the consumer's hot path: decode a
// binary-mode request from NATS headers and validate it.
func BenchmarkDecodeValidateRequest(b *testing.B) {
	v, err := schemas.NewValidator()
	if err != nil {
		b.Fatal(err)
	}
	h := nats.Header{
		"ce-specversion": {"1.0"}, "ce-id": {"a700bc19-bafe-6860-44f8-5bd63f658226"},
		"ce-source": {"//ci.example.net/pipelines/datacenter-ops"}, "ce-type": {schemas.TypeRequested},
		"content-type": {"application/json"}, "ce-time": {"2026-12-01T09:30:00Z"},
	}
	body := []byte(`{"template":"Group Apply Server Setting","resourceUri":"/compute-ops-mgmt/v1beta2/groups/8a3a2a46-0102-48e2-bdd9-a29ee6909860","data":{"redfish_subsystem":"BIOS","batch_size":5},"labels":{"ticket":"CHG-1"}}`)
	b.ReportAllocs()
	for b.Loop() {
		e, err := cenats.Decode(h, body, cenats.DecodeOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := v.ValidateRequest("comjobs.requests.group-apply-server-setting", e); err != nil {
			b.Fatal(err)
		}
	}
}
