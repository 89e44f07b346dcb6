package com_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/schemas"
)

func TestCatalogRows(t *testing.T) {
	ts := com.Templates()
	if len(ts) != 25 {
		t.Fatalf("catalog has %d templates, want 23 seed rows + 2 downloads", len(ts))
	}
	seen := map[string]string{}
	for _, tpl := range ts {
		t.Run(tpl.Slug, func(t *testing.T) {
			// DESIGN.md and the request cases spell slugs from the display
			// name word by word ("server-ilo-firmware-update").
			if want := schemas.Slug(strings.ToLower(tpl.Name)); tpl.Slug != want {
				t.Errorf("slug %q, want %q", tpl.Slug, want)
			}
			if got := schemas.Slug(tpl.CamelName); !strings.EqualFold(strings.ReplaceAll(got, "-", ""), strings.ReplaceAll(tpl.Slug, "-", "")) {
				t.Errorf("CamelName %q does not spell slug %q", tpl.CamelName, tpl.Slug)
			}
			if c, ok := com.CanonicalResourceType(tpl.ResourceType); !ok || c != tpl.ResourceType {
				t.Errorf("resource type %q is not canonical", tpl.ResourceType)
			}
			if tpl.ExpectedDuration <= 0 || tpl.Description == "" || len(tpl.ID) != 36 {
				t.Errorf("incomplete row: %+v", tpl)
			}
			var sch struct {
				Required   []string       `json:"required"`
				Properties map[string]any `json:"properties"`
				Additional bool           `json:"additionalProperties"`
			}
			if err := json.Unmarshal(tpl.Params, &sch); err != nil {
				t.Fatalf("params schema is not JSON: %v", err)
			}
			if fmt.Sprint(sch.Required) != fmt.Sprint(tpl.Required) {
				t.Errorf("schema required %v, Required %v", sch.Required, tpl.Required)
			}
			for _, r := range sch.Required {
				if _, ok := sch.Properties[r]; !ok {
					t.Errorf("required %q has no property", r)
				}
			}
			if !sch.Additional {
				t.Errorf("additionalProperties must be true")
			}
			compileParams(t, tpl)
		})
		for _, k := range []string{tpl.ID, tpl.Name, tpl.Slug, tpl.CamelName} {
			k = strings.ToLower(k)
			if other, dup := seen[k]; dup && other != tpl.ID {
				t.Errorf("name %q used by %s and %s", k, other, tpl.ID)
			}
			seen[k] = tpl.ID
		}
	}
}

func TestCatalogIsACopy(t *testing.T) {
	ts := com.Templates()
	ts[0].Name = "changed"
	ts[0].Params[0] = 'x'
	tpl, _ := com.Lookup(ts[0].ID)
	tpl.Required = append(tpl.Required, "x")
	again, _ := com.Lookup(ts[0].ID)
	if again.Name == "changed" || again.Params[0] == 'x' || len(again.Required) != 0 {
		t.Fatalf("catalog changed through a returned copy: %+v", again)
	}
}

func TestLookup(t *testing.T) {
	tests := []struct {
		name, in, wantID string
	}{
		{"display name", "Server Power Off", "d0c13b58-748c-461f-9a61-c0c5c71f1bb4"},
		{"slug", "server-power-on", "0cbb2377-1834-488d-840c-d5bf788c34fb"},
		{"uuid", "30110551-cad6-4069-95b8-dbce9bbd8525", "30110551-cad6-4069-95b8-dbce9bbd8525"},
		{"uuid upper case", "30110551-CAD6-4069-95B8-DBCE9BBD8525", "30110551-cad6-4069-95b8-dbce9bbd8525"},
		{"camel", "GroupFirmwareCompliance", "23b8ba2a-6c46-4223-b028-919382c7dcac"},
		{"camel any case", "groupfirmwarecompliance", "23b8ba2a-6c46-4223-b028-919382c7dcac"},
		{"display name any case and spaces", "  server iLO FIRMWARE update\t", "94caa4ef-9ff8-4805-9e97-18a09e673b66"},
		{"ilo slug", "server-ilo-firmware-update", "94caa4ef-9ff8-4805-9e97-18a09e673b66"},
		{"deprecated still found", "carbon-footprint-report", "b0001d36-6490-48ac-93af-a87adfb997ed"},
		{"download", "Group Firmware Download", "a17a7aa9-4540-4c21-bbf2-31af4ff65e98"},
		{"unknown", "Server Power Cycle", ""},
		{"empty", "", ""},
		{"slug with spaces inside", "server power-off", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tpl, ok := com.Lookup(tt.in)
			if tt.wantID == "" {
				if ok {
					t.Fatalf("Lookup(%q) found %s", tt.in, tpl.ID)
				}
				return
			}
			if !ok || tpl.ID != tt.wantID {
				t.Fatalf("Lookup(%q) = %v, %v; want %s", tt.in, tpl, ok, tt.wantID)
			}
		})
	}
	if tpl, _ := com.Lookup("Carbon Footprint Report"); tpl.Deprecated == "" {
		t.Error("Carbon Footprint Report must say it is deprecated")
	}
	if tpl, _ := com.Lookup("Refresh OneView appliance settings"); tpl.ResourceType != com.ResourceOneViewAppliance {
		t.Errorf("refresh appliance type %q, want canonical %q", tpl.ResourceType, com.ResourceOneViewAppliance)
	}
}

func compileParams(t *testing.T, tpl com.Template) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(tpl.Params))
	if err != nil {
		t.Fatalf("params of %s: %v", tpl.Name, err)
	}
	c := jsonschema.NewCompiler()
	url := "urn:comjobs:params:" + tpl.Slug
	if err := c.AddResource(url, doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile(url)
	if err != nil {
		t.Fatalf("params of %s do not compile: %v", tpl.Name, err)
	}
	return s
}

func TestParamsSchemas(t *testing.T) {
	tests := []struct {
		name, template, params string
		valid                  bool
	}{
		{"power off takes nothing", "Server Power Off", `{}`, true},
		{"unknown params pass through", "Server Power Off", `{"someFutureFlag": true}`, true},
		{"bundle required", "Server Firmware Update", `{}`, false},
		{"bundle empty", "Server Firmware Update", `{"bundle_id": ""}`, false},
		{"bundle given", "Server Firmware Update", `{"bundle_id": "de600c7f01e29f793f26ad91b31d96ce", "downgrade": true}`, true},
		{"reboot timeout in enum", "Server Firmware Update", `{"bundle_id": "b", "wait_for_power_off_or_reboot_timeout": 12}`, true},
		{"reboot timeout off enum", "Server Firmware Update", `{"bundle_id": "b", "wait_for_power_off_or_reboot_timeout": 3}`, false},
		{"downgrade not bool", "Server Firmware Update", `{"bundle_id": "b", "downgrade": "yes"}`, false},
		{"redfish BIOS", "Group Apply Server Setting", `{"redfish_subsystem": "BIOS"}`, true},
		{"redfish ILO_SETTINGS", "Group Apply Server Setting", `{"redfish_subsystem": "ILO_SETTINGS", "batch_size": 20}`, true},
		{"redfish UEFI", "Group Apply Server Setting", `{"redfish_subsystem": "UEFI"}`, false},
		{"redfish missing", "Group Apply Server Setting", `{}`, false},
		{"batch size 0", "Group Apply Server Setting", `{"redfish_subsystem": "BIOS", "batch_size": 0}`, false},
		{"batch size 21", "Group Apply Server Setting", `{"redfish_subsystem": "BIOS", "batch_size": 21}`, false},
		{"os timeout 59", "Group OS Installation", `{"osCompletionTimeoutMin": 59}`, false},
		{"os timeout 720", "Group OS Installation", `{"osCompletionTimeoutMin": 720}`, true},
		{"os timeout 721", "Group OS Installation", `{"osCompletionTimeoutMin": 721}`, false},
		{"compliance devices", "Group Firmware Compliance", `{"devices": ["875765-S01+1M512501AB"]}`, true},
		{"compliance no devices", "Group Firmware Compliance", `{}`, false},
		{"compliance empty devices", "Group Firmware Compliance", `{"devices": []}`, false},
		{"compliance devices not strings", "Group Firmware Compliance", `{"devices": [1]}`, false},
		{"group firmware update empty", "Group Firmware Update", `{}`, true},
		{"target appliances", "Group Apply OneView Server Templates", `{"targetApplianceIds": ["oneview+5c1b2f6e-7a43-4a8e-9d0c-2f1e6b3a9c71"]}`, true},
		{"target appliances missing", "Group Apply OneView appliance settings", `{}`, false},
		{"templatesData objects", "Settings Update OneView Server Template", `{"templatesData": [{"applianceId": "a"}]}`, true},
		{"templatesData strings", "Settings Update OneView Server Template", `{"templatesData": ["a"]}`, false},
		{"appliance firmware", "Appliance Firmware Update", `{"applianceFirmwareId": "7d2c"}`, true},
		{"appliance firmware missing", "Appliance Firmware Update", `{}`, false},
		{"carbon report type", "Carbon Footprint Report", `{"reportType": "CARBON_FOOTPRINT"}`, true},
		{"carbon other type", "Carbon Footprint Report", `{"reportType": "ENERGY"}`, false},
		{"server download needs bundle", "Server Firmware Download", `{}`, false},
		{"group download bundle optional", "Group Firmware Download", `{}`, true},
		{"not an object", "Server Power Off", `[]`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tpl, ok := com.Lookup(tt.template)
			if !ok {
				t.Fatalf("no template %q", tt.template)
			}
			inst, err := jsonschema.UnmarshalJSON(strings.NewReader(tt.params))
			if err != nil {
				t.Fatal(err)
			}
			err = compileParams(t, *tpl).Validate(inst)
			if (err == nil) != tt.valid {
				t.Fatalf("valid=%v, err=%v", tt.valid, err)
			}
		})
	}
}

// TestSharedCases checks the catalog against the shared request cases when
// they exist: every template they name resolves (except the unknown-template
// case), with the slug their subject uses.
func TestSharedCases(t *testing.T) {
	f, err := os.Open("../../shared/cases/requests.jsonl")
	if os.IsNotExist(err) {
		t.Log("no shared cases beside the module; catalog rows are covered by TestCatalogRows")
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var c struct {
			Name    string `json:"name"`
			Subject string `json:"subject"`
			Data    struct {
				Template string `json:"template"`
			} `json:"data"`
			Expect struct {
				Outcome string `json:"outcome"`
				Reason  string `json:"reason"`
			} `json:"expect"`
		}
		if json.Unmarshal(sc.Bytes(), &c) != nil || c.Data.Template == "" {
			continue
		}
		tpl, ok := com.Lookup(c.Data.Template)
		if c.Expect.Reason == "unknown-template" {
			if ok {
				t.Errorf("%s: %q should be unknown", c.Name, c.Data.Template)
			}
			continue
		}
		if !ok {
			t.Errorf("%s: template %q not found", c.Name, c.Data.Template)
			continue
		}
		if want := "comjobs.requests." + tpl.Slug; c.Expect.Outcome == "submitted" && c.Subject != want {
			t.Errorf("%s: subject %q, catalog slug gives %q", c.Name, c.Subject, want)
		}
	}
}
