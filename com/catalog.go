package com

import (
	"encoding/json"
	"time"
)

// Resource types of the catalog (v1 form).
const (
	ResourceServer           = "compute-ops-mgmt/server"
	ResourceGroup            = "compute-ops-mgmt/group"
	ResourceSetting          = "compute-ops-mgmt/setting"
	ResourceOneViewAppliance = "compute-ops-mgmt/oneview-appliance"
	ResourceFilter           = "compute-ops-mgmt/filter"
)

// Template is one job template of the compiled-in catalog.
type Template struct {
	ID           string // durable UUID, the same in every region
	Name         string // display name, e.g. "Server Power Off"
	Slug         string // kebab case, e.g. "server-power-off"
	CamelName    string // e.g. "ServerPowerOff"
	Description  string
	ResourceType string // canonical v1 resource type
	// Params is the JSON Schema (draft 2020-12) of the job's parameters.
	Params json.RawMessage
	// Required lists the required parameters, from the seed's table.
	Required []string
	// Deprecated is non-empty for templates HPE has removed, saying why.
	Deprecated string
	// ExpectedDuration is how long a job of this template usually takes;
	// the tracker derives poll intervals and overdue thresholds from it.
	ExpectedDuration time.Duration
}
