package cenats

import (
	"testing"
)

func BenchmarkEncodeEvent(b *testing.B) {
	e := newEvent(b, "055665f0-fbb3-e84e-0ef1-52125425b7b2", "comjobs/tracker", "job 123", map[string]string{
		"requestid": "a700bc19-bafe-6860-44f8-5bd63f658226", "requestsource": "//ci.example.net/pipelines/datacenter-ops",
	}, []byte(`{"jobId":"123","state":"RUNNING","terminal":false}`))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Encode("comjobs.events.running.server-power-off", e); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeEvent(b *testing.B) {
	e := newEvent(b, "055665f0-fbb3-e84e-0ef1-52125425b7b2", "//ci.example.net/pipelines/datacenter-ops", "", nil,
		[]byte(`{"template":"Server Power Off","resourceUri":"/compute-ops-mgmt/v1beta2/servers/875765-S01+1M512501AB","data":{}}`))
	msg, err := Encode("comjobs.requests.server-power-off", e)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(msg.Header, msg.Data, DecodeOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}
