package schemas_test

import (
	"errors"
	"testing"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/comjobs/comjobs/schemas"
)

// FuzzValidateRequest checks that ValidateRequest never panics and that
// every refusal is a *Rejection with a reason and a message.
func FuzzValidateRequest(f *testing.F) {
	v, err := schemas.NewValidator(schemas.WithClock(caseClock))
	if err != nil {
		f.Fatal(err)
	}
	f.Add("comjobs.requests.server-power-off", []byte(`{"template":"Server Power Off","resourceUri":"/compute-ops-mgmt/v1beta2/servers/875765-S01+1M512501AB"}`))
	f.Add("comjobs.requests.group-apply-server-setting", []byte(`{"template":"group-apply-server-setting","resource":{"type":"compute-ops-mgmt/group","id":"g"},"data":{"redfish_subsystem":"BIOS","batch_size":1e400}}`))
	f.Add("", []byte(`{"template":"x","resource":{"type":"compute-ops-mgmt/oneview-appliances","id":"../a"},"expiresAt":"2026-13-01T00:00:00Z"}`))
	f.Add("comjobs.requests.", []byte(`[{"template":null}]`))
	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		e := event.New()
		e.SetID("fuzz")
		e.SetSource("//fuzz")
		e.SetType(schemas.TypeRequested)
		e.DataEncoded = data
		res, err := v.ValidateRequest(subject, e)
		if err == nil {
			if res == nil || res.Template == nil || res.Params == nil {
				t.Fatalf("accepted with incomplete resolution %+v", res)
			}
			return
		}
		var rej *schemas.Rejection
		if !errors.As(err, &rej) || rej.Reason == "" || rej.Message == "" {
			t.Fatalf("refusal is not a complete rejection: %#v", err)
		}
	})
}
