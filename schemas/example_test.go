package schemas_test

import (
	"errors"
	"fmt"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/comjobs/comjobs/schemas"
)

func ExampleValidator_ValidateRequest() {
	v, err := schemas.NewValidator()
	if err != nil {
		panic(err)
	}
	e := event.New()
	e.SetID("change-1234")
	e.SetSource("//ci.example.net/pipelines/ops")
	e.SetType(schemas.TypeRequested)
	_ = e.SetData(event.ApplicationJSON, map[string]any{
		"template":    "Group Apply Server Setting",
		"resourceUri": "/compute-ops-mgmt/v1beta2/groups/8a3a2a46-0102-48e2-bdd9-a29ee6909860",
		"data":        map[string]any{"redfish_subsystem": "BIOS", "batch_size": 5},
	})
	res, err := v.ValidateRequest("comjobs.requests.group-apply-server-setting", e)
	if err != nil {
		panic(err)
	}
	fmt.Println(res.Template.Name, res.Resource.Type, res.Resource.ID)

	_ = e.SetData(event.ApplicationJSON, map[string]any{
		"template":    "Group Apply Server Setting",
		"resourceUri": "/compute-ops-mgmt/v1beta2/groups/8a3a2a46-0102-48e2-bdd9-a29ee6909860",
		"data":        map[string]any{"redfish_subsystem": "BIOS", "batch_size": 50},
	})
	_, err = v.ValidateRequest("comjobs.requests.group-apply-server-setting", e)
	var rej *schemas.Rejection
	if errors.As(err, &rej) {
		fmt.Println(rej.Reason, "|", rej.Field, "|", rej.Message)
	}
	// Output:
	// Group Apply Server Setting compute-ops-mgmt/group 8a3a2a46-0102-48e2-bdd9-a29ee6909860
	// invalid-data | data.batch_size | data.batch_size: must be <= 20
}

func ExampleRequestKey() {
	fmt.Println(schemas.RequestKey("//ci.example.net/pipelines/ops", "change-1234"))
	// Output:
	// 1940474fdd3074c2d6a1b08d151f2fafcbf28724ddf8b13254e99c9ca599d4a8
}

func ExampleSlug() {
	fmt.Println(schemas.Slug("Server Power Off"))
	fmt.Println(schemas.Slug("GroupFirmwareCompliance"))
	fmt.Println(schemas.Slug("FirmwareUpdate.New"))
	// Output:
	// server-power-off
	// group-firmware-compliance
	// firmware-update-new
}
